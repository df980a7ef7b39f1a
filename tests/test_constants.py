"""One copy of the kernels' constants: ``fastxent/_constants.py``.

The C kernels read it through the header ``setup.py`` generates from it
(``_csrc/fx_constants.h``), the Numba kernels import it, and neither keeps a copy
of a coefficient of its own: the header in the build tree must say what the module
says, bit for bit, the Numba globals must hold the module's values, and the kernel
sources must hold no long float literal (a hand copy) outside the module.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
import pytest

from fastxent import _reduce
from fastxent import _constants as K

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ROOT / "fastxent" / "backends"
HEADER = BACKENDS / "_csrc" / "fx_constants.h"

needs_header = pytest.mark.skipif(not HEADER.exists(), reason="no source-tree build (no generated header)")


def _parse_c_literal(text: str):
    """(value, is float32, is unsigned) of one macro's literal, written plainly
    here: parentheses, hex floats and integers with their suffixes."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if re.fullmatch(r"-?(0x[0-9A-Fa-f]+|[0-9]+)u?", text):
        return int(text.rstrip("u"), 0), False, text.endswith("u")
    match = re.fullmatch(r"(-?0x[0-9a-f]+(?:\.[0-9a-f]*)?p[-+]?[0-9]+)(f?)", text)
    assert match, f"not an exact (hex) literal: {text!r}"
    return float.fromhex(match.group(1)), match.group(2) == "f", False


def _header_macros(text: str) -> dict:
    macros = {}
    for line in text.splitlines():
        match = re.fullmatch(r"#define FX_(\w+) (.+?)(?: /\* .* \*/)?", line)
        if match and match.group(1) != "CONSTANTS_H":
            macros[match.group(1)] = _parse_c_literal(match.group(2))
    return macros


@needs_header
def test_the_build_tree_header_is_the_module_rendered():
    """The header the extension was compiled with is what setup.py would write now:
    a stale header (the module edited, the extension not rebuilt) fails here."""
    assert HEADER.read_text() == K.c_header()


@needs_header
def test_every_macro_holds_the_module_value_bit_for_bit():
    macros = _header_macros(HEADER.read_text())
    assert sorted(macros) == sorted(K.names())
    for name, (value, is_f32, unsigned) in macros.items():
        want = getattr(K, name)
        assert type(value) is type(want) and value == want, name
        if isinstance(want, float):
            assert np.float64(value).tobytes() == np.float64(want).tobytes(), name  # -0.0 too
            assert is_f32 == name.endswith("_F32"), name
        else:
            assert unsigned == ("_BITS" in name), name


def test_float32_constants_are_float32_values():
    for name in K.names():
        value = getattr(K, name)
        if name.endswith("_F32") and isinstance(value, float):
            assert float(np.float32(value)) == value, f"{name} = {value.hex()} is not a float32"


def test_bit_patterns_are_those_of_their_floats():
    assert np.uint32(K.EXP_SHIFT_BITS_F32).view(np.float32) == K.EXP_SHIFT_F32
    assert np.uint64(K.EXP_SHIFT_BITS).view(np.float64) == K.EXP_SHIFT
    assert np.uint32(K.LOG_SQRT_HALF_BITS_F32).view(np.float32) == np.float32(np.sqrt(0.5))
    assert np.uint64(K.LOG_SQRT_HALF_BITS).view(np.float64) == np.sqrt(0.5)


def test_reduction_constants_hold_what_their_comments_say():
    """Independent values: ln 2 split exactly, log2(e), the Taylor coefficients 1/k!."""
    import math

    assert K.LN2_HI + K.LN2_LO == math.log(2)
    assert float(np.float32(K.LN2_HI_F32 + K.LN2_LO_F32)) == K.LN2_F32 == float(np.float32(math.log(2)))
    assert float(np.float32(1 / math.log(2))) == K.LOG2E_F32 and K.LOG2E == 1 / math.log(2)
    for k in range(2, 14):
        assert getattr(K, f"EXP_C{k}") == 1 / math.factorial(k)
    assert K.EXP_SHIFT_BIASED_F32 == K.EXP_SHIFT_F32 + 127


#: Numba globals (module, name) -> the constant they must hold.
NUMBA = {
    ("math", "_E32_LO"): "EXP_CEPHES_LO_F32", ("math", "_E32_HI"): "EXP_HI_F32",
    ("math", "_E32_LOG2E"): "LOG2E_F32", ("math", "_E32_MAGIC"): "EXP_SHIFT_F32",
    ("math", "_E32_LN2_HI"): "LN2_HI_F32", ("math", "_E32_LN2_LO"): "LN2_LO_F32",
    ("math", "_E32_P0"): "EXP_CEPHES_C7_F32", ("math", "_E32_P1"): "EXP_CEPHES_C6_F32",
    ("math", "_E32_P2"): "EXP_CEPHES_C5_F32", ("math", "_E32_P3"): "EXP_CEPHES_C4_F32",
    ("math", "_E32_P4"): "EXP_CEPHES_C3_F32", ("math", "_E32_P5"): "EXP_CEPHES_C2_F32",
    ("math", "_EN32_MAGIC"): "EXP_SHIFT_BIASED_F32", ("math", "_EN32_FLUSH"): "EXP_FLUSH_F32",
    ("math", "_EN32_P2"): "EXP5_C2_F32", ("math", "_EN32_P3"): "EXP5_C3_F32",
    ("math", "_EN32_P4"): "EXP5_C4_F32", ("math", "_EN32_P5"): "EXP5_C5_F32",
    ("math", "_NEAR"): "EXP_NEAR", ("math", "_E32_LN2"): "LN2_F32",
    ("math", "_E64_LO"): "EXP_NEG_LO", ("math", "_E64_HI"): "EXP_HI",
    ("math", "_E64_LOG2E"): "LOG2E", ("math", "_E64_MAGIC"): "EXP_SHIFT",
    ("math", "_E64_LN2_HI"): "LN2_HI", ("math", "_E64_LN2_LO"): "LN2_LO",
    **{("math", f"_E64_P{k}"): f"EXP_C{k}" for k in range(2, 14)},
    **{("math", f"_L32_P{k}"): f"LOG_P{k}_F32" for k in range(9)},
    ("math", "_L32_Q1"): "LN2_LO_F32", ("math", "_L32_Q2"): "LN2_HI_F32",
    ("math", "_L32_SQRT2"): "LOG_SQRT2_F32", ("math", "_L32_TINY"): "LOG_TINY_F32",
    **{("math", f"_L64_P{k}"): f"LOG_ATANH_C{k}" for k in range(3, 22, 2)},
    ("math", "_L64_SQRT2"): "LOG_SQRT2", ("math", "_L64_TINY"): "LOG_TINY",
    **{("math", f"_L1P_P{k}"): f"LOG1P_P{k}_F32" for k in range(1, 5)},
    ("math", "_TH_SMALL"): "TANH_SMALL",
    **{("math", f"_TH32_P{k}"): f"TANH_P{k}_F32" for k in range(5)},
    **{("math", f"_TH64_P{k}"): f"TANH_P{k}" for k in range(3)},
    **{("math", f"_TH64_Q{k}"): f"TANH_Q{k}" for k in range(3)},
    ("sums", "_LEAF"): "PAIRWISE_LEAF", ("gather", "_GATHER_AHEAD"): "GATHER_AHEAD",
}


def test_numba_kernels_hold_the_module_values():
    pytest.importorskip("numba")
    for (module, name), constant in NUMBA.items():
        got = getattr(importlib.import_module(f"fastxent.backends._numba.{module}"), name)
        want = getattr(K, constant)
        assert got == want, (module, name, constant)
        if constant.endswith("_F32"):
            assert isinstance(got, np.float32), (module, name)  # float32 arithmetic in the kernels
    assert _reduce.BLOCK_ROWS == K.BLOCK_ROWS


def test_numba_cache_key_covers_the_constants():
    """The drivers freeze these values into their machine code: editing the module
    must start a fresh disk cache, as editing a kernel's file does."""
    pytest.importorskip("numba")
    from fastxent.backends._numba import cache

    assert Path(K.__file__).resolve() in [p.resolve() for p in cache.hashed_sources()]


#: A float literal in code: hex (0x1.8p+3), or decimal with a fraction or an exponent.
_FLOAT = re.compile(
    r"(?<![\w.])-?(0x[0-9a-fA-F]*\.?[0-9a-fA-F]*p[-+]?\d+|\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)f?\b"
)


def _code_lines(path: Path):
    """(line number, code) of a source file with its comments and docstrings cut."""
    text = path.read_text()
    if path.suffix == ".py":
        text = re.sub(r'"""(?:.|\n)*?"""', lambda m: "\n" * m.group(0).count("\n"), text)
        text = re.sub(r"#[^\n]*", "", text)
    else:
        text = re.sub(r"/\*(?:.|\n)*?\*/", lambda m: "\n" * m.group(0).count("\n"), text)
    return enumerate(text.splitlines(), 1)


def _hand_copies(paths) -> list:
    """Float literals that look like copied constants: more than three significant
    digits, not a power of two (scalings by 2**k are the format, not a formula) and
    not a small integer (exponent biases such as 1023.0)."""
    found = []
    for path in paths:
        for lineno, line in _code_lines(path):
            for match in _FLOAT.finditer(line):
                text = match.group(1)
                value = abs(float.fromhex(text) if text.lower().startswith("0x") else float(text))
                digits = len(f"{value:.15g}".replace(".", "").replace("-", "").split("e")[0].strip("0"))
                small_integer = value == int(value) and value < 10_000
                if digits > 3 and np.frexp(value)[0] != 0.5 and not small_integer:
                    found.append(f"{path.name}:{lineno}: {text}")
    return found


def test_no_kernel_source_keeps_a_copy_of_a_constant():
    sources = sorted((BACKENDS / "_csrc").glob("*.[ch]")) + sorted((BACKENDS / "_numba").glob("*.py"))
    sources = [p for p in sources if p.name not in ("fx_constants.h", "fx_build_config.h")]
    assert _hand_copies(sources) == []


def test_the_scan_finds_a_copy(tmp_path):
    """The scan above can fail: it sees hex and decimal coefficients in code, not in comments."""
    c = tmp_path / "k.h"
    c.write_text("/* 0x1.5555p-3f 1.23456 */\nfloat y = 0x1.fffdfcp-2f * r - 1.1514610310E-1f + 0.5f;\n")
    py = tmp_path / "k.py"
    py.write_text('"""1.23456"""\nA = _F32(1.44269504088896341)  # 0.693147\nB = 2.0**23 * 0.25\n')
    assert len(_hand_copies([c, py])) == 3


def test_cython_blocks_are_the_module_block_rows():
    """The Cython driver cuts block sums at BLOCK_ROWS rows (its own enum until the
    pyx reads FX_BLOCK_ROWS): one more row than a block gives two sums, the first
    NumPy's sum of the first BLOCK_ROWS per-row losses."""
    ext = pytest.importorskip("fastxent.backends._cython_ext")
    n, c = K.BLOCK_ROWS + 1, 3
    x = np.random.default_rng(0).standard_normal((n, c, 1)).astype(np.float64)
    labels = np.zeros((n, 1), np.int64)
    none, ones = np.ones(c), np.ones((n, 1))
    rows = np.empty((n, 1))
    ext.sparse_from_logits(x, labels, none, 0.0, -1, ones, rows, None, 1)
    sums = np.full(2, np.nan)
    ext.sparse_from_logits(x, labels, none, 0.0, -1, ones, sums, None, 1, block_sums=True)
    assert sums[0] == np.sum(rows.ravel()[: K.BLOCK_ROWS]) and sums[1] == rows.ravel()[-1]
