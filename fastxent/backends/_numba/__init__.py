"""Numba kernels for fastxent: the six kernels of KERNELS.md.

Importing this package imports numba; :mod:`..numba_backend` imports it on first
use only. One file per kernel family, the same stems as the C backend's:

* :mod:`.softmax` -- ``sparse_from_logits``, ``categorical_from_logits``
* :mod:`.softmax_extras` -- ``sparse_from_logits`` with z_loss, softcap, lse_out, rank_out
* :mod:`.probs` -- ``categorical_from_probs``, ``sparse_from_probs`` with label smoothing
* :mod:`.gather` -- ``sparse_from_probs`` without label smoothing (one read per row)
* :mod:`.binary` -- ``binary_from_logits``, ``binary_from_probs``

and the shared parts: :mod:`.intrinsics` (LLVM instructions), :mod:`.math` (exp,
log, clipping), :mod:`.sums` (block and pairwise sums), :mod:`.schedule` (the
claim scheduler), :mod:`.ranges` (range checks, the first bad row), :mod:`.views`
(row and column views, argument kinds), :mod:`.layout` (the Python side of a
call), :mod:`.jit` and :mod:`.cache` (compilation and the on-disk cache), and
:mod:`.kernels` (the table, running, readiness).

Each kernel's Python wrapper picks a path by layout: ``rows`` (class stride ==
itemsize for x, targets and grad_out: each row is a contiguous vector), ``cols``
(inner stride == itemsize: a block of adjacent rows is processed as vectors across
rows, e.g. (1, C, N) or (N, C, H*W)), or ``generic`` (any strides, row by row).
float16 and bfloat16 (ml_dtypes) arrays reach the kernels as one-field record
views of their bits (no copy), widened to float32 as they are read (``vcvtph2ps``;
bfloat16 by a 16-bit shift); a bfloat16 gradient buffer is written rounded to
nearest even.

Design rules: every transcendental is a polynomial of :mod:`.math` so that LLVM
vectorises the loops that call it; sums over a row are float64; one helper per
quantity is shared by the loss-only and loss+gradient loops. No function uses the
``nnan``/``ninf`` fast-math flags; only the row-reduction adds carry ``reassoc``
(``intrinsics._acc``: without it LLVM keeps an FP sum sequential and the whole loop,
exp included, stays scalar).
"""

from __future__ import annotations

from .kernels import KERNELS, compiling_hint, info, is_ready

__all__ = ["KERNELS", "compiling_hint", "info", "is_ready"]
