"""``fastxent.dask``: lazy losses over dask arrays with the in-memory call's bits."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import fastxent  # noqa: E402
import fastxent.dask as fxd  # noqa: E402
from fastxent import _reduce  # noqa: E402

N = 3 * _reduce.BLOCK_ROWS + 555  # not a whole number of blocks
C = 6
CLASS_WEIGHT = np.linspace(0.5, 2.0, C)

LOSSES = {
    "sparse": (fastxent.sparse_categorical_crossentropy, fxd.sparse_categorical_crossentropy,
               dict(from_logits=True, ignore_index=-1, class_weight=CLASS_WEIGHT, label_smoothing=0.1)),
    "categorical": (fastxent.categorical_crossentropy, fxd.categorical_crossentropy,
                    dict(from_logits=True, class_weight=CLASS_WEIGHT)),
    "binary": (fastxent.binary_crossentropy, fxd.binary_crossentropy,
               dict(from_logits=True, pos_weight=np.arange(1.0, C + 1))),
}  # fmt: skip


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    z = rng.standard_normal((N, C)).astype(np.float32)
    labels = rng.integers(0, C, N)
    labels[::7] = -1
    return {
        "z": z,
        "sparse": labels,
        "categorical": np.eye(C, dtype=np.float32)[np.where(labels < 0, 0, labels)],
        "binary": rng.random((N, C)) < 0.4,
        "sw": rng.random(N),
    }


def same_bits(a, b) -> bool:
    return type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype and (
        np.asarray(a).tobytes() == np.asarray(b).tobytes())  # fmt: skip


def lazy_call(kind, data, reduction, row_chunks, sample_weight=True):
    _, fn, options = LOSSES[kind]
    t = data[kind]
    y_true = da.from_array(t, chunks=(row_chunks,) + t.shape[1:])
    y_pred = da.from_array(data["z"], chunks=(row_chunks, C))
    sw = da.from_array(data["sw"], chunks=4321) if sample_weight else None  # chunked differently on purpose
    return fn(y_true, y_pred, sample_weight=sw, reduction=reduction, **options)


def expected(kind, data, reduction, sample_weight=True):
    fn, _, options = LOSSES[kind]
    return fn(data[kind], data["z"], sample_weight=data["sw"] if sample_weight else None, reduction=reduction,
              **options)  # fmt: skip


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "weighted_mean", "none"])
@pytest.mark.parametrize("row_chunks", [10_000, 2 * _reduce.BLOCK_ROWS, N], ids=["unaligned", "blocks", "one"])
def test_threaded_scheduler_gives_the_in_memory_bits(data, kind, reduction, row_chunks):
    lazy = lazy_call(kind, data, reduction, row_chunks)
    got = lazy.compute()  # the default scheduler for dask arrays: threads
    assert same_bits(got, expected(kind, data, reduction))
    if reduction == "none":
        assert lazy.chunks[0] == da.from_array(data["z"], chunks=(row_chunks, C)).chunks[0]
    else:
        assert lazy.shape == () and lazy.dtype == np.float32


def test_images_chunked_along_several_axes(rng):
    """(N, C, H, W) with axis=1, chunked along N and H; labels and weights chunked otherwise."""
    x = rng.standard_normal((40, 5, 24, 9)).astype(np.float32)
    y = rng.integers(0, 5, (40, 24, 9))
    w = rng.random((40, 24, 9))
    for reduction in ("mean", "weighted_mean", "none"):
        options = dict(from_logits=True, axis=1, class_weight=[1.0, 2.0, 3.0, 4.0, 5.0], reduction=reduction)
        got = fxd.sparse_categorical_crossentropy(
            da.from_array(y, chunks=(7, 5, 4)), da.from_array(x, chunks=(9, 5, 10, 9)),
            sample_weight=da.from_array(w, chunks=(13, 24, 9)), **options).compute()  # fmt: skip
        assert same_bits(got, fastxent.sparse_categorical_crossentropy(y, x, sample_weight=w, **options))


def test_elementwise_binary_with_per_label_pos_weight(rng):
    """axis=None: any chunking, pos_weight sliced to each chunk of the last axis."""
    p = rng.random((300, 70)).astype(np.float32)
    y = rng.random((300, 70)) < 0.5
    pw = rng.random(70) + 0.5
    for reduction in ("mean", "none"):
        got = fxd.binary_crossentropy(da.from_array(y, chunks=(50, 20)), da.from_array(p, chunks=(64, 30)),
                                      axis=None, pos_weight=pw, reduction=reduction).compute()  # fmt: skip
        assert same_bits(got, fastxent.binary_crossentropy(y, p, axis=None, pos_weight=pw, reduction=reduction))


def test_numpy_inputs_and_scalar_weights(data):
    got = fxd.sparse_categorical_crossentropy(data["sparse"], data["z"], from_logits=True, ignore_index=-1,
                                              sample_weight=0.25).compute()  # fmt: skip
    ref = fastxent.sparse_categorical_crossentropy(data["sparse"], data["z"], from_logits=True, ignore_index=-1,
                                                   sample_weight=0.25)  # fmt: skip
    assert same_bits(got, ref)


@pytest.mark.parametrize("kind", LOSSES)
def test_chunks_along_the_class_axis_are_merged_with_a_warning(data, kind):
    with pytest.warns(da.PerformanceWarning, match="chunked along its class axis 1 \\(2 chunks\\)"):
        lazy = _class_chunked(kind, data)
    assert same_bits(lazy.compute(), expected(kind, data, "mean"))


def _class_chunked(kind, data):
    _, fn, options = LOSSES[kind]
    t = data[kind]
    y_true = da.from_array(t, chunks=(9000,) + ((3,) if t.ndim == 2 else ()))
    return fn(y_true, da.from_array(data["z"], chunks=(9000, 3)), sample_weight=data["sw"], **options)


def test_nothing_is_computed_before_compute(data):
    calls = []
    lock = threading.Lock()

    def record(block):
        with lock:
            calls.append(block.shape)
        return block

    # meta: dask would otherwise call record() on an empty block to learn the output type
    y_pred = da.from_array(data["z"], chunks=(10_000, C)).map_blocks(record, meta=np.empty((0, 0), np.float32))
    y_true = da.from_array(data["sparse"], chunks=10_000)
    for reduction in ("mean", "weighted_mean", "none"):
        lazy = fxd.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True, ignore_index=-1,
                                                   reduction=reduction)  # fmt: skip
        assert calls == [] and isinstance(lazy, da.Array)
    assert lazy.compute().shape == (N,)
    assert len(calls) == len(y_pred.chunks[0])


def test_bad_inputs_raise_when_the_graph_is_built(data):
    y_pred = da.from_array(data["z"], chunks=(10_000, C))
    with pytest.raises(ValueError, match=r"y_true: expected labels of shape \(49707,\)"):
        fxd.sparse_categorical_crossentropy(da.zeros(N - 1, dtype=int), y_pred)
    with pytest.raises(ValueError, match="label_smoothing: expected a number in"):
        fxd.sparse_categorical_crossentropy(data["sparse"], y_pred, label_smoothing=3.0)
    with pytest.raises(TypeError, match="y_true: expected integer class labels"):
        fxd.sparse_categorical_crossentropy(da.from_array(np.array(["a"] * N)), y_pred)
    unknown = y_pred[y_pred[:, 0] > 0]  # unknown chunk sizes
    with pytest.raises(ValueError, match=r"y_pred: expected known chunk sizes.*compute_chunk_sizes"):
        fxd.sparse_categorical_crossentropy(da.zeros(N, dtype=int), unknown)


def test_bad_values_raise_at_compute_with_their_position_in_the_whole_array(data):
    labels = data["sparse"].copy()
    labels[N - 5] = 99
    lazy = fxd.sparse_categorical_crossentropy(da.from_array(labels, chunks=10_000),
                                               da.from_array(data["z"], chunks=(10_000, C)), from_logits=True,
                                               ignore_index=-1)  # fmt: skip
    with pytest.raises(ValueError) as got:
        lazy.compute()
    with pytest.raises(ValueError) as ref:
        fastxent.sparse_categorical_crossentropy(labels, data["z"], from_logits=True, ignore_index=-1)
    assert str(got.value) == str(ref.value) and f"at position ({N - 5},)" in str(ref.value)


def test_importing_fastxent_does_not_import_dask():
    code = "import sys, fastxent, fastxent.evaluate; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- dask.distributed


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a busy port for the dashboard
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize("kind", LOSSES)
def test_a_process_cluster_gives_the_in_memory_bits(cluster_client, data, kind):
    lazies = [lazy_call(kind, data, reduction, 10_000) for reduction in ("mean", "weighted_mean", "none")]
    results = cluster_client.compute(lazies, sync=True)
    for reduction, got in zip(("mean", "weighted_mean", "none"), results):
        assert same_bits(got, expected(kind, data, reduction)), reduction
