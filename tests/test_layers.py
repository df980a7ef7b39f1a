"""Imports only point down: public API -> validate -> plan -> kernel arguments ->
kernels -> reductions.

Every module of the package has a layer below; a module may import only modules of
lower layers (so there is no import cycle either). Imports are read from the source
with ``ast``, including those inside functions, so a lazy import cannot hide an
upward call. A new module must be given its layer here.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import fastxent

PACKAGE = pathlib.Path(fastxent.__file__).parent

#: Lowest first. Modules in one layer may not import each other, except inside a
#: package listed in SAME_LAYER_PACKAGES (the files of one backend).
LAYERS = [
    ["_version", "_paths", "_constants"],
    ["_reduce", "_layout", "_calibration"],
    ["backends._common", "backends._constants"],
    ["backends.numpy_backend", "backends._cython_ext", "backends._numba"],
    ["backends.numba_backend", "backends.cython_backend"],
    ["backends"],
    ["_config", "_interop"],
    ["_validate", "_threads"],
    ["_execute"],
    ["_dispatch"],
    ["_fastcall"],
    ["_api"],
    ["_classes", "_introspect", "_metrics", "keras", "torch"],
    ["evaluate", "linear"],
    ["dask", "_measure", "bench"],
    ["_bench_llm"],
    ["_bench_cli"],
    ["cli"],
    ["__main__", ""],
]
SAME_LAYER_PACKAGES = ("backends._numba",)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources():
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            yield path


def _rank(module: str) -> int:
    """The layer of ``module`` (a name relative to the package), or of the nearest
    enclosing package that has one."""
    name = module
    while name not in RANK and "." in name:
        name = name.rsplit(".", 1)[0]
    if name not in RANK:
        raise KeyError(module)
    return RANK[name]


def _is_module(rel: str) -> bool:
    base = PACKAGE / rel.replace(".", "/") if rel else PACKAGE
    return base.is_dir() or base.with_suffix(".py").exists() or base.with_suffix(".pyx").exists()


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """The package's modules that ``path`` imports (names relative to the package)."""
    return _imports_in(path.read_text(), module, path.name == "__init__.py", cython=path.suffix == ".pyx")


def _imports_in(text: str, module: str, is_package: bool, cython: bool = False) -> set[str]:
    if cython:  # keep the Python-syntax import lines of a .pyx (cimport counts as import)
        lines = [line.strip() for line in text.splitlines() if line.lstrip().startswith(("import ", "from "))]
        text = "\n".join(line.replace(" cimport ", " import ") for line in lines)
    here = module.split(".") if module else []
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(["fastxent", *base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            candidates = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in candidates:
            if name == "fastxent" or name.startswith("fastxent."):
                rel = name[len("fastxent."):] if name != "fastxent" else ""
                if _is_module(rel):
                    found.add(rel)
    found.discard(module)
    return found


def _upward(module: str, imported: set[str]) -> list[str]:
    rank = _rank(module)
    upward = []
    for name in sorted(imported):
        if any(module.startswith(p) and name.startswith(p) for p in SAME_LAYER_PACKAGES):
            continue  # the files of one backend package
        if module.startswith(name + ".") or (name == "" and module):
            continue  # a module's own (parent) package: loaded first anyway, not a call upward
        if _rank(name) >= rank:
            upward.append(f"{name or 'fastxent'} (layer {_rank(name)})")
    return upward


def test_every_module_has_a_layer():
    missing = []
    for path in _sources():
        module = _module_name(path)
        try:
            _rank(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    module = _module_name(path)
    upward = _upward(module, _imports(path, module))
    assert not upward, f"{module} (layer {_rank(module)}) imports {upward}"


def test_the_checker_sees_a_lazy_upward_import():
    source = (PACKAGE / "backends" / "numpy_backend.py").read_text()
    lazy = source + "\n\ndef _late():\n    from .. import _api\n    import fastxent._dispatch\n"
    assert _upward("backends.numpy_backend", _imports_in(source, "backends.numpy_backend", False)) == []
    found = _upward("backends.numpy_backend", _imports_in(lazy, "backends.numpy_backend", False))
    assert found == [f"_api (layer {_rank('_api')})", f"_dispatch (layer {_rank('_dispatch')})"]
