"""The loss of predictions stored in ``.npy`` files of any size (``fastxent eval``).

The files are memory-mapped one chunk of rows at a time: each chunk is mapped, read
and unmapped, so the file pages the process holds (which count in its resident
memory while mapped) stay within the ``memory`` budget. Chunks are cut along the
first axis. Every chunk's per-row float64 terms are summed into the same blocks of
``_reduce.BLOCK_ROWS`` rows, aligned to the global row index, that one in-memory
call forms, so the result has the same bits as that call whatever the chunk size.

>>> import os, tempfile, numpy as np, fastxent
>>> from fastxent.evaluate import evaluate_files
>>> folder = tempfile.TemporaryDirectory()
>>> labels, logits = os.path.join(folder.name, "labels.npy"), os.path.join(folder.name, "logits.npy")
>>> rng = np.random.default_rng(0)
>>> np.save(logits, rng.standard_normal((100_000, 10)).astype(np.float32))
>>> np.save(labels, rng.integers(0, 10, 100_000))
>>> result = evaluate_files("sparse", labels, logits, from_logits=True, memory="8MiB")
>>> result.rows, result.chunks > 1
(100000, True)
>>> in_memory = fastxent.sparse_categorical_crossentropy(np.load(labels), np.load(logits), from_logits=True)
>>> result.loss.tobytes() == in_memory.tobytes()
True
>>> folder.cleanup()

The pieces that validate a call from shapes alone (:func:`check_call`), compute a
chunk's per-row terms (:func:`row_terms`) and place chunk-relative positions in error
messages (:func:`shift_positions`) are shared with :mod:`fastxent.dask`.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import _api, _reduce
from ._dispatch import Plan, make_plan
from ._validate import REDUCTIONS, Problem, build_problem
from ._execute import kernel_calls
from ._metrics import probability_ranks
from .backends import numba_backend
from .backends.numpy_backend import BLOCK_ELEMENTS

KINDS = ("binary", "categorical", "sparse")
DEFAULT_MEMORY = 512 << 20

#: Bytes per row of float64 work arrays beside the mapped data: the kernel's per-row
#: losses, their products with the sample weights, row weights and masks.
_WORK_BYTES_PER_ROW = 48
#: Room for small allocations beside the NumPy kernels' block temporaries (about 8
#: float64 arrays of max(BLOCK_ELEMENTS, C) values): reduction temporaries, headers.
_FIXED_BYTES = 2 << 20

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}  # fmt: skip


def parse_memory(value) -> int:
    """A memory budget in bytes from an int or a string such as ``"512MiB"``.

    Suffixes: ``KiB``/``MiB``/``GiB``/``TiB`` and the single letters ``K``/``M``/``G``/``T``
    are powers of 1024 (as ``docker --memory``); ``kB``/``MB``/``GB``/``TB`` are powers of
    1000. Case is ignored.

    >>> parse_memory("512MiB"), parse_memory("1.5g"), parse_memory("2GB"), parse_memory(4096)
    (536870912, 1610612736, 2000000000, 4096)
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number, unit = int(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"memory: expected a size such as 512MiB, 2GB or a number of bytes, got {value!r}"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size < 1:
        raise ValueError(f"memory: expected a positive size, got {value!r}")
    return size


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- .npy files


@dataclass(frozen=True)
class NpyFile:
    """The header of a C-ordered ``.npy`` file: where its data starts and what it holds."""

    name: str  # the argument it was given as: "y_true", "y_pred" or "sample_weight"
    path: str
    shape: tuple
    dtype: np.dtype
    offset: int  # bytes before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def index_bytes(self) -> int:
        """Bytes of one index of the first axis."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def error(self, message: str) -> str:
        return f"{self.name} ({self.path}): {message}"


def open_npy(path, name: str) -> NpyFile:
    """Read and check the header of the ``.npy`` file at ``path`` (argument ``name``).

    Raises FileNotFoundError, or ValueError for a file that is not a ``.npy`` file, is
    truncated, holds Python objects or is Fortran-ordered.
    """
    path = os.fspath(path)
    where = f"{name} ({path})"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: expected an existing .npy file, got a path that does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{where}: expected a .npy file, got a directory")
    with open(path, "rb") as fh:
        start = fh.read(len(np.lib.format.MAGIC_PREFIX))
        if start != np.lib.format.MAGIC_PREFIX:
            what = "a .npz archive (extract the array with np.load(path)[name])" if start.startswith(b"PK") else (
                f"a file that starts with {start!r}" if start else "an empty file")  # fmt: skip
            raise ValueError(f"{where}: expected a .npy file (written by np.save), got {what}")
        fh.seek(0)
        try:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh, max_header_size=1 << 20)
        except ValueError as exc:
            raise ValueError(f"{where}: expected a readable .npy header, got an error reading it: {exc}") from None
        offset = fh.tell()
    f = NpyFile(name, path, tuple(shape), np.dtype(dtype), offset)
    if f.dtype.hasobject:
        raise ValueError(f.error(f"expected numbers, got dtype {f.dtype} (pickled objects cannot be memory-mapped)"))
    if fortran and len(f.shape) > 1:
        raise ValueError(f.error(
            "expected a C-ordered array (eval streams it along its first axis), got a Fortran-ordered one; "
            "rewrite it with np.save(path, np.ascontiguousarray(array))"))  # fmt: skip
    size = os.path.getsize(path)
    if size < f.offset + f.nbytes:
        raise ValueError(f.error(
            f"expected {f.nbytes:,} bytes of data after the header (shape {f.shape}, dtype {f.dtype}), "
            f"got {size - f.offset:,}: the file is truncated"))  # fmt: skip
    return f


#: Bytes per read-ahead request of :meth:`_Reader.prefetch`.
_PREFETCH_PIECE = 4 << 20


class _Reader:
    """Maps chunks of a :class:`NpyFile`'s first axis, one at a time."""

    def __init__(self, f: NpyFile):
        self.file = f
        self._fh = open(f.path, "rb")

    def close(self) -> None:
        self._fh.close()

    def _range(self, start: int, stop: int) -> tuple[int, int]:
        return self.file.offset + start * self.file.index_bytes, (stop - start) * self.file.index_bytes

    def prefetch(self, start: int, stop: int) -> None:
        """Have the OS read a later chunk into its page cache (not our memory), asynchronously.

        One call reads at most one read-ahead window (Linux caps ``WILLNEED`` at the
        device's read-ahead size), so the range is asked for in window-sized pieces.
        """
        begin, length = self._range(start, stop)
        if not hasattr(os, "posix_fadvise"):
            return
        for offset in range(begin, begin + length, _PREFETCH_PIECE):
            os.posix_fadvise(self._fh.fileno(), offset, min(_PREFETCH_PIECE, begin + length - offset),
                             os.POSIX_FADV_WILLNEED)  # fmt: skip

    def map(self, start: int, stop: int):
        """Indices ``start:stop`` of the first axis as a read-only array, and its map."""
        f = self.file
        shape = (stop - start,) + f.shape[1:]
        begin, length = self._range(start, stop)
        if length == 0:
            return None, np.empty(shape, f.dtype)
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(self._fh.fileno(), begin - aligned + length, access=mmap.ACCESS_READ, offset=aligned)
        array = np.frombuffer(mm, dtype=f.dtype, count=math.prod(shape), offset=begin - aligned)
        return mm, array.reshape(shape)


def _unmap(mm) -> None:
    """Unmap now, so the chunk's pages leave our resident memory before the next is read."""
    if mm is None:
        return
    try:
        mm.close()
    except BufferError:  # a view is still alive (e.g. held by a traceback): the GC unmaps it
        pass


# --------------------------------------------------------------------------- shared with fastxent.dask


def check_call(kind: str, y_true, y_pred, sample_weight, options: dict) -> tuple[Problem, Plan]:
    """Validate a call from its arrays' shapes and dtypes alone, and plan it.

    ``y_true`` and ``y_pred`` are ``(shape, dtype)`` pairs; ``sample_weight`` is None,
    a scalar or a ``(shape, dtype)`` pair. Zero-stride stand-ins of those shapes go
    through the library's own validation, so shapes, dtypes and options get the
    library's messages (with the full shapes) without reading a value. The plan is
    the one the in-memory call would run; chunks run its backend so that the per-row
    losses are those of that call. Label values and probabilities are checked when
    each chunk runs.
    """
    if kind not in KINDS:
        raise ValueError(f"loss: expected one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    role = "labels" if kind == "sparse" else "targets"
    sw = _stand_in(*sample_weight, "weights") if isinstance(sample_weight, tuple) else sample_weight
    opts = dict(options, return_grad=False, grad_out=None)
    problem = build_problem(kind, _stand_in(*y_true, role), _stand_in(*y_pred, "y_pred"), sample_weight=sw, **opts)
    return problem, make_plan(problem)


def _stand_in(shape, dtype, role: str) -> np.ndarray:
    """A zero-stride array of ``shape`` in the dtype validation would turn ``dtype`` into.

    Converting dtypes (integer predictions, byte-swapped or float labels, non-float64
    weights) are replaced by what they become, so that validation never allocates an
    array of the full size; other dtypes are kept, to get the library's TypeError.
    """
    dt = np.dtype(dtype)
    if dt.kind in "fiub" and dt.itemsize <= 8:
        dt = dt.newbyteorder("=")
        if (role == "y_pred" and dt.kind in "iub") or role == "weights":
            dt = np.dtype(np.float64)
        elif role == "labels" and dt.kind == "f":
            dt = np.dtype(np.int64)  # whether each value is integral is checked per chunk
    return np.broadcast_to(np.zeros((), dt), shape)


def chunk_options(problem: Problem, plan: Plan, options: dict, reduction: str) -> dict:
    """Options of a chunk's call: the checked ones, on the whole call's backend."""
    opts = dict(options, reduction=reduction, backend=plan.backend, return_grad=False, grad_out=None)
    opts["axis"] = problem.axis if problem.axis is not None else options.get("axis")
    return opts


@dataclass
class RowTerms:
    """A chunk's contribution to a reduction, one float64 value per row (C order)."""

    numerator: np.ndarray  # s_i * l_i
    weight: np.ndarray | None  # v_i * s_i * c_i, for weighted_mean
    count: int  # rows that are not ignored


def row_terms(problem: Problem, weighted: bool, loss_rows=None) -> RowTerms:
    """The per-row terms whose block sums make up ``_reduce.Partial`` (from the
    kernel's ``loss_rows`` when the caller has them already).

    The products are those :func:`fastxent._reduce.block_sums` forms, row for row,
    so summing them in the global blocks gives the bits of one call.
    """
    count, _ = _reduce.denominator_parts(problem)
    if loss_rows is None:
        loss_rows = _api.row_losses(problem)
    sw = problem.sample_weight
    numerator = loss_rows if sw is None else loss_rows * sw
    weight = row_weights(problem) if weighted else None
    return RowTerms(numerator.reshape(-1), weight, count)


def row_weights(problem: Problem) -> np.ndarray:
    """``v_i * s_i * c_i`` per row (C order): the terms of weighted_mean's denominator.

    Needs no predictions: only labels or targets, weights and the layout.
    """
    rows = _reduce.row_weights(problem)
    sw = problem.sample_weight
    return (rows if sw is None else rows * sw).reshape(-1)


_POSITION = re.compile(r"at position \(([-0-9, ]*)\)")


def shift_positions(message: str, *offsets: tuple) -> str:
    """Turn the chunk-relative ``at position (...)`` of a library message into a global one.

    ``offsets`` are the chunk's starting indices, one tuple per shape a position may
    refer to (``y_pred``'s, the per-sample shape); the one whose length matches is added.
    """

    def shift(match):
        pos = [int(v) for v in match.group(1).split(",") if v.strip()]
        for off in offsets:
            if len(off) == len(pos):
                pos = [p + o for p, o in zip(pos, off)]
                break
        inside = ", ".join(map(str, pos)) + ("," if len(pos) == 1 else "")
        return f"at position ({inside})"

    return _POSITION.sub(shift, message)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate_files` computed, and how fast."""

    loss: np.floating | None  # the reduced loss (None with reduction="none": see out)
    kind: str
    from_logits: bool
    reduction: str
    rows: int  # samples, i.e. rows of the per-sample loss
    valid_rows: int  # rows that are not ignored
    bytes: int  # bytes of the input files' data (y_true, y_pred, sample_weight)
    seconds: float
    chunks: int
    chunk_size: int  # indices of the first axis per chunk
    memory: int  # the budget, in bytes
    plan: Plan  # the whole call's plan (each chunk runs its backend)
    out: str | None = None  # the per-sample losses' file, for reduction="none"
    metrics: dict | None = None  # with metrics=: name -> value (loss, accuracy, topK, perplexity)
    compile_seconds: float = 0.0  # a JIT backend's first compilation, outside ``seconds``

    @property
    def throughput(self) -> float:
        """Input bytes per second, in GB/s (10^9 bytes)."""
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
            "loss": None if self.loss is None else float(self.loss),
            "dtype": None if self.loss is None else str(self.loss.dtype),
            "loss_kind": self.kind,
            "from_logits": self.from_logits,
            "reduction": self.reduction,
            "rows": self.rows,
            "valid_rows": self.valid_rows,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "throughput_gb_s": self.throughput,
            "chunks": self.chunks,
            "chunk_size": self.chunk_size,
            "memory": self.memory,
            "plan": {"backend": self.plan.backend, "kernel": self.plan.kernel,
                     "threads": self.plan.threads, "reason": self.plan.reason},  # fmt: skip
            "out": self.out,
            "metrics": self.metrics,
            "compile_seconds": self.compile_seconds,
        }

    def __str__(self) -> str:
        what = f"{self.kind} cross-entropy ({'logits' if self.from_logits else 'probabilities'}, {self.reduction})"
        value = f"wrote {self.rows:,} losses to {self.out}" if self.loss is None else str(self.loss)
        text = (
            f"{what}: {value} over {self.rows:,} rows; {_decimal_bytes(self.bytes)} in {self.seconds:.2f} s "
            f"({self.throughput:.2f} GB/s), {self.chunks} chunk(s), "
            f"{self.plan.backend}.{self.plan.kernel} with {self.plan.threads} thread(s)"
        )
        if self.compile_seconds:
            text += f" (plus {self.compile_seconds:.1f} s compiling or loading the Numba kernel)"
        if self.metrics:
            text += "\n" + ", ".join(f"{k} {v:.6g}" for k, v in self.metrics.items())
        return text


def _decimal_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------- evaluation


def evaluate_files(
    loss: str,
    y_true,
    y_pred,
    *,
    from_logits=False,
    label_smoothing=0.0,
    ignore_index=None,
    class_weight=None,
    pos_weight=None,
    sample_weight=None,
    axis=-1,
    reduction="mean",
    epsilon=1e-7,
    backend="auto",
    threads=None,
    memory=DEFAULT_MEMORY,
    out=None,
    progress=None,
    metrics=None,
) -> EvalResult:
    """The loss of ``.npy`` files of any size, streamed through memory maps in chunks.

    Parameters
    ----------
    loss : {"binary", "categorical", "sparse"}
    y_true, y_pred : path-like
        C-ordered ``.npy`` files, as ``np.save`` writes them, of the shapes and dtypes
        the in-memory loss takes. Chunks are cut along the first axis, which must not
        be the class axis.
    sample_weight : None, a number, or the path of a ``.npy`` file of the per-sample shape
    memory : int or str
        Budget for the data held at once: the mapped chunk of every file plus work
        arrays (e.g. ``"512MiB"``, the default; see :func:`parse_memory`). The
        interpreter's own memory comes on top.
    out : path-like, optional
        With ``reduction="none"`` (only then, and then required): where to write the
        per-sample losses, as a ``.npy`` file written chunk by chunk.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` before the first chunk and after
        each one, and as ``progress(0, total_bytes, note)`` when a JIT backend compiles
        its kernel first (that time is left out of ``seconds`` and the throughput).
    metrics : sequence of str, optional
        Sparse only: any of ``"loss"``, ``"accuracy"``, ``"topK"`` (e.g. ``"top5"``) and
        ``"perplexity"``, computed in the same pass (see ``fastxent.sparse_metrics``)
        and returned in ``EvalResult.metrics``.

    The other options are those of the in-memory losses (``class_weight`` and
    ``ignore_index`` for categorical/sparse, ``pos_weight`` for binary). The result
    has the bits of the in-memory call on the loaded arrays, for any ``memory``.

    Returns
    -------
    EvalResult

    Raises
    ------
    FileNotFoundError, ValueError, TypeError, RuntimeError
        With the library's messages; those about a file start with its argument name
        and path, e.g. ``y_pred (logits.npy): ...``. Shapes, dtypes and options are
        checked before any work; label values and probabilities when their chunk is
        read, with their position in the file.
    """
    t0 = time.perf_counter()
    _check_options_apply(loss, class_weight=class_weight, pos_weight=pos_weight, ignore_index=ignore_index)
    wanted = parse_metrics(metrics, loss)
    budget = parse_memory(memory)
    files = {"y_true": open_npy(y_true, "y_true"), "y_pred": open_npy(y_pred, "y_pred")}
    if sample_weight is not None and not _is_number(sample_weight):
        files["sample_weight"] = open_npy(sample_weight, "sample_weight")
        if files["sample_weight"].shape == ():  # one weight for every sample: nothing to stream
            sample_weight = np.load(files.pop("sample_weight").path)
    options = dict(from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, reduction=reduction,
                   epsilon=epsilon, backend=backend, threads=threads)  # fmt: skip
    if loss == "binary":
        options["pos_weight"] = pos_weight
    else:
        options["class_weight"] = class_weight
    if loss == "sparse":
        options["ignore_index"] = ignore_index
    if wanted and from_logits:
        options["want_rank"] = True  # the kernel ranks each label in the loss pass
    try:
        sw_spec = files["sample_weight"] if "sample_weight" in files else sample_weight
        problem, plan = check_call(loss, _spec(files["y_true"]), _spec(files["y_pred"]), _spec(sw_spec), options)
        red = REDUCTIONS[reduction]
        _check_out(red, out)
        stream = _Stream(loss, files, problem, plan, options, budget, red, wanted)
        return stream.run(t0, out, progress)
    except (ValueError, TypeError) as exc:
        raise _name_file(exc, files) from None


METRICS = ("loss", "accuracy", "perplexity")  # and "topK" for any K >= 1


def parse_metrics(metrics, loss: str) -> tuple:
    """The metric names asked for, checked: ``()`` for None."""
    if metrics is None:
        return ()
    names = tuple(m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip())
    if names and loss != "sparse":
        raise ValueError(f"metrics: accuracy, top-k and perplexity need integer labels (loss 'sparse'), got loss {loss!r}")
    for name in names:
        if name not in METRICS and not re.fullmatch(r"top[1-9][0-9]*", name):
            raise ValueError(f"metrics: expected names among loss, accuracy, topK (e.g. top5), perplexity, got {name!r}")
    return names


_APPLIES_TO = {"class_weight": ("categorical", "sparse"), "pos_weight": ("binary",), "ignore_index": ("sparse",)}


def _check_options_apply(loss: str, **given) -> None:
    """Options of one loss given to another raise, as the in-memory functions would."""
    for name, value in given.items():
        if value is not None and loss not in _APPLIES_TO[name]:
            losses = " or ".join(map(repr, _APPLIES_TO[name]))
            raise TypeError(f"{name}: expected only with loss {losses}, got loss {loss!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) or (
        isinstance(value, np.ndarray) and value.ndim == 0)  # fmt: skip


def _spec(f):
    return f if f is None or _is_number(f) else (f.shape, f.dtype)


def _check_out(reduction: str, out) -> None:
    if reduction == "none" and out is None:
        raise ValueError(
            "reduction: 'none' gives one loss per sample, which eval writes to the .npy file given as out "
            "(--out FILE.npy on the command line); otherwise use reduction 'mean', 'sum' or 'weighted_mean'"
        )
    if reduction != "none" and out is not None:
        raise ValueError(f"out: expected only with reduction 'none' (per-sample losses), got reduction {reduction!r}")


def _name_file(exc: Exception, files: dict) -> Exception:
    """``exc``, its message about a file started with the file's path (``y_true (labels.npy): ...``)."""
    message = str(exc)
    for name, f in files.items():
        if message.startswith(f"{name}: "):
            return type(exc)(f.error(message[len(name) + 2 :]))
    return exc


class _Stream:
    """The chunk loop of one :func:`evaluate_files` call."""

    def __init__(self, kind, files, problem: Problem, plan: Plan, options, budget: int, reduction: str,
                 metrics: tuple = ()):  # fmt: skip
        self.kind, self.files, self.problem, self.plan, self.reduction = kind, files, problem, plan, reduction
        self.options = chunk_options(problem, plan, options, "none" if reduction == "none" else "sum")
        self.metrics = metrics
        self.top = sorted({1} | {int(m[3:]) for m in metrics if m.startswith("top")})
        x = files["y_pred"]
        if problem.axis == 0 or x.shape == ():
            raise ValueError(
                f"axis: eval streams y_pred along its first axis, which must not be the class axis; "
                f"got class axis 0 of y_pred's shape {x.shape} (save the array with the class axis last)"
            )
        self.length = x.shape[0]
        self.rows_per_index = math.prod(problem.layout.sample_shape[1:])
        self.sample_ndim = len(problem.layout.sample_shape)
        self.chunk_size = self._chunk_size(budget)
        self.budget = budget
        # Elementwise binary of a 1-D y_pred: pos_weight has one value per element.
        pw = options.get("pos_weight")
        self.slice_pos_weight = problem.layout.virtual and len(x.shape) == 1 and np.ndim(pw) == 1 and np.size(pw) > 1
        # The gather-log reads one value per row: reading ahead whole chunks would waste I/O.
        self.whole_rows = not (kind == "sparse" and not problem.from_logits and problem.label_smoothing == 0)

    def _chunk_size(self, budget: int) -> int:
        """Indices of the first axis per chunk: as many as the budget holds."""
        p, x, r = self.problem, self.files["y_pred"], self.rows_per_index
        per_index = sum(f.index_bytes for f in self.files.values()) + r * _WORK_BYTES_PER_ROW
        per_index += r * _conversion_bytes(self.kind, self.files, p.n_classes if not p.layout.virtual else 1)
        per_index = max(1, per_index)
        fixed = _FIXED_BYTES + 64 * max(BLOCK_ELEMENTS, p.n_classes)
        if budget < fixed + per_index:
            raise ValueError(
                f"memory: expected at least {format_bytes(fixed + per_index)} to hold one index of y_pred's first "
                f"axis ({x.index_bytes:,} bytes of y_pred, {r:,} row(s)) with the other files and work space, "
                f"got {format_bytes(budget)}"
            )
        size = (budget - fixed) // per_index
        # Whole blocks of rows per chunk when the budget allows: nothing to carry over.
        step = _reduce.BLOCK_ROWS // math.gcd(r, _reduce.BLOCK_ROWS) if r else 1
        if size > step:
            size -= size % step
        return max(1, min(size, max(1, self.length)))

    def run(self, t0: float, out, progress) -> EvalResult:
        readers, writer = {}, None
        numerator, weight = _reduce.BlockSums(), _reduce.BlockSums()
        weighted = self.reduction == "weighted_mean"
        count, chunks, done = 0, 0, 0
        hits = _Hits(self.top) if self.metrics else None
        total = sum(f.nbytes for f in self.files.values())
        # Read-ahead of the next two chunks (into the OS page cache, which is not ours)
        # runs on its own thread, so that the disk reads while the kernel computes; two,
        # so that a slow read does not stall the kernel. The gather-log reads one value
        # per row: no read-ahead.
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastxent-prefetch") if self.whole_rows else None
        try:
            readers = {name: _Reader(f) for name, f in self.files.items()}
            if progress is not None:
                progress(0, total)
            compile_seconds = self._compile(readers, total, progress)
            if out is not None:
                writer = _NpyWriter(out, self.problem.layout.sample_shape, self.problem.result_dtype)
            for start in range(0, self.length, self.chunk_size):
                stop = min(self.length, start + self.chunk_size)
                if ahead is not None:
                    for reader in readers.values():
                        if start == 0:
                            ahead.submit(reader.prefetch, start, stop)
                        ahead.submit(reader.prefetch, stop, min(self.length, stop + 2 * self.chunk_size))
                maps = [reader.map(start, stop) for reader in readers.values()]
                arrays = dict(zip(readers, (array for _, array in maps)))
                try:
                    problem = self._chunk_problem(arrays, start, stop)
                    arrays.clear()
                    if writer is not None:
                        writer.write(_api.run(problem))
                    else:
                        outputs = _api.row_outputs(problem) if hits else None
                        terms = row_terms(problem, weighted, None if outputs is None else outputs.loss)
                        if hits:
                            hits.add(problem, outputs)
                        numerator.add(terms.numerator)
                        if weighted:
                            weight.add(terms.weight)
                        count += terms.count
                    del problem
                except ValueError as exc:
                    raise ValueError(shift_positions(str(exc), *self._offsets(start))) from None
                finally:
                    arrays.clear()
                    mms = [mm for mm, _ in maps]
                    del maps
                    for mm in mms:
                        _unmap(mm)
                chunks += 1
                done += sum(f.index_bytes for f in self.files.values()) * (stop - start)
                if progress is not None:
                    progress(done, total)
            if writer is not None:
                writer.finish()
        finally:
            if ahead is not None:
                ahead.shutdown(wait=True, cancel_futures=True)  # before the files close
            for reader in readers.values():
                reader.close()
            if writer is not None:
                writer.abort()
        value = None
        if writer is None:
            part = _reduce.Partial(numerator.result(), count, weight.result() if weighted else None)
            value = _reduce.finish(part, self.reduction, self.problem.result_dtype)
        rows = self.problem.n_rows
        found = None
        if hits:
            mean = _reduce.finish(_reduce.Partial(numerator.result(), count, None), "mean", np.dtype(np.float64))
            found = hits.metrics(self.metrics, float(mean))
        return EvalResult(
            loss=value, kind=self.kind, from_logits=self.problem.from_logits, reduction=self.reduction,
            rows=rows, valid_rows=count if writer is None else rows, bytes=total,
            seconds=time.perf_counter() - t0 - compile_seconds, compile_seconds=compile_seconds, chunks=chunks, chunk_size=self.chunk_size, memory=self.budget,
            plan=self.plan, out=None if writer is None else os.fspath(out), metrics=found,
        )  # fmt: skip

    def _compile(self, readers: dict, total: int, progress) -> float:
        """Run a JIT backend's kernel once on the first indices (up to a block of rows:
        a one-row call may take another of its paths), so that compiling it is said
        (``progress`` note, and the library's log) and timed on its own: seconds."""
        if self.plan.backend != "numba" or self.length == 0:
            return 0.0
        stop = max(1, min(self.chunk_size, _reduce.BLOCK_ROWS // max(1, self.rows_per_index)))
        maps = [reader.map(0, stop) for reader in readers.values()]
        problem = None
        try:
            problem = self._chunk_problem(dict(zip(readers, (a for _, a in maps))), 0, stop)
            hint = numba_backend.compiling_hint(kernel_calls(problem, "numba"))
            if hint is None:
                return 0.0
            if progress is not None:
                progress(0, total, hint)
            start = time.perf_counter()
            _api.row_outputs(problem)  # (a bad value raises again, with its position, in the loop)
            return time.perf_counter() - start
        except ValueError:
            return 0.0
        finally:
            del problem
            mms = [mm for mm, _ in maps]
            del maps
            for mm in mms:
                _unmap(mm)

    def _offsets(self, start: int) -> tuple:
        """Where a chunk starts, in y_pred's indices and in the per-sample indices."""
        ndim = len(self.files["y_pred"].shape)
        return (start,) + (0,) * (ndim - 1), (start,) + (0,) * (self.sample_ndim - 1)

    def _chunk_problem(self, arrays: dict, start: int, stop: int) -> Problem:
        opts = dict(self.options)
        if "sample_weight" in arrays:
            opts["sample_weight"] = arrays["sample_weight"]
        elif self.problem.sample_weight is not None:
            opts["sample_weight"] = self.problem.sample_weight  # a scalar
        if self.slice_pos_weight:
            opts["pos_weight"] = np.asarray(opts["pos_weight"])[start:stop]
        return build_problem(self.kind, arrays["y_true"], arrays["y_pred"], **opts)


class _Hits:
    """Running (sample-weighted) counts of labels ranked below each k, over chunks."""

    def __init__(self, ks: list):
        self.ks = ks
        self.hits = dict.fromkeys(ks, 0.0)
        self.total = 0.0

    def add(self, problem: Problem, outputs) -> None:
        rank = outputs.rank if outputs.rank is not None else probability_ranks(problem)
        counted = rank >= 0
        sw = problem.sample_weight
        weights = np.ones(rank.shape) if sw is None else np.broadcast_to(np.asarray(sw, dtype=np.float64), rank.shape)
        self.total += float(np.sum(np.where(counted, weights, 0.0)))
        for k in self.ks:
            self.hits[k] += float(np.sum(np.where(counted & (rank < k), weights, 0.0)))

    def metrics(self, names: tuple, mean_loss: float) -> dict:
        share = {k: (0.0 if self.total == 0 else v / self.total) for k, v in self.hits.items()}
        found = {}
        for name in names:
            if name == "loss":
                found[name] = mean_loss
            elif name == "accuracy":
                found[name] = share[1]
            elif name == "perplexity":
                found[name] = math.exp(mean_loss) if mean_loss < 709.0 else math.inf
            else:
                found[name] = share[int(name[3:])]
        return found


def _conversion_bytes(kind: str, files: dict, classes: int) -> int:
    """Bytes per row of the copies validation makes of a chunk (converted dtypes)."""
    total = 0
    x = files["y_pred"].dtype
    if x.kind in "iub":
        total += 8 * classes
    elif not x.isnative:
        total += x.itemsize * classes
    t = files["y_true"].dtype
    if kind == "sparse":
        total += 25 if t.kind == "f" else (0 if t.isnative else t.itemsize)  # integral check, int64 copy
    elif not t.isnative:
        total += t.itemsize * classes
    if "sample_weight" in files and files["sample_weight"].dtype != np.float64:
        total += 8
    return total


class _NpyWriter:
    """Writes a C-ordered ``.npy`` file chunk by chunk, under a temporary name until done."""

    def __init__(self, path, shape: tuple, dtype: np.dtype):
        self.path = os.fspath(path)
        self.partial = self.path + ".partial"
        try:
            self._fh = open(self.partial, "wb")
        except OSError as exc:
            raise ValueError(f"out ({self.path}): expected a writable path, got {exc.strerror.lower()}") from None
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_1_0(self._fh, header)
        self._done = False

    def write(self, values: np.ndarray) -> None:
        self._fh.write(np.ascontiguousarray(values).data)

    def finish(self) -> None:
        self._fh.close()
        os.replace(self.partial, self.path)
        self._done = True

    def abort(self) -> None:
        """Remove the partial file of a run that failed (nothing after :meth:`finish`)."""
        if not self._done:
            self._fh.close()
            os.remove(self.partial)
            self._done = True
