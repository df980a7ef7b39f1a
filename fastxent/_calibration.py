"""The calibration tables the dispatcher reads: their format, where they live, which
one fits this host, and how a call maps onto them.

A calibration is a table of median kernel times per backend, *kernel family*, thread
count (1 and all cores) and work size, measured on one host. The dispatcher turns it
into a step function per family: for each measured size, the fastest (backend,
threads). Which backend wins depends on the CPU (vendor, instruction set) as much as
on the size, so tables measured on the kinds of hosts fastxent is developed on ship
with the package (``calibrations/<vendor>-<isa>.json``) and the dispatcher takes the
one that matches the host it runs on. ``fastxent.calibrate()`` (``_measure``)
measures the user's own machine and saves the result in the user's cache directory
(``$FASTXENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastxent``, else
``~/.cache/fastxent``), which wins from then on -- on the host it was measured on.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


#: Work sizes measured: elements of y_pred read (rows for the gather family). Larger
#: calls take the largest size's choice: past a few million elements every kernel
#: streams memory, and measuring there would cost seconds per point.
SIZES = tuple(4 ** k for k in range(4, 12))  # 256 .. 4,194,304
FAMILIES = ("logits", "probs", "gather", "binary")
FORMAT_VERSION = 1
#: The shipped tables, one per kind of host (``<vendor>-<isa>.json``).
SHIPPED_DIR = Path(__file__).with_name("calibrations")
_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def family_of(problem) -> str:
    """The kernel family of a problem, and so which row of the table applies."""
    if problem.kind == "binary":
        return "binary" if problem.from_logits else "probs"
    if problem.from_logits:
        return "logits"
    if problem.kind == "sparse" and problem.label_smoothing == 0:
        return "gather"
    return "probs"


def work_of(problem) -> int:
    """The work a call does, in the units of :data:`SIZES`: elements read, doubled
    when a gradient is written, and rows for the gather (one read per row)."""
    if family_of(problem) == "gather":
        work = problem.n_rows
    else:
        work = problem.x.size
    return 2 * work if problem.return_grad else work


def cache_file() -> Path:
    base = os.environ.get("FASTXENT_CACHE_DIR")
    if base:
        return Path(base) / "calibration.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastxent" / "calibration.json"


def cpu_vendor() -> str:
    """The CPU vendor string (``GenuineIntel``, ``AuthenticAMD``...), or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_name() -> str:
    """The CPU model as the operating system reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_name(host: dict) -> str:
    """``intel-avx512``-style name of a host description (vendor, isa)."""
    vendor = host.get("vendor", "unknown")
    return f"{_VENDORS.get(vendor, vendor.lower())}-{host.get('isa', 'unknown')}"


class CalibrationWarning(UserWarning):
    """A calibration file exists but cannot be used (the dispatcher falls back to the
    shipped defaults); ``fastxent calibrate`` writes a new one.

    >>> import warnings, fastxent
    >>> warnings.simplefilter("error", fastxent.CalibrationWarning)  # e.g. make it fatal in CI
    >>> warnings.resetwarnings()
    """


def load(host: dict) -> tuple[dict | None, str]:
    """The calibration for ``host`` (``vendor``, ``isa``, ``cores``) and where it
    came from: the user's own table if it was measured on such a host, else the
    shipped table of the same vendor and instruction set, else of the same
    instruction set, else none (the dispatcher's built-in rules).

    A user table that cannot be read, or that was measured on another kind of host,
    is skipped with a :class:`CalibrationWarning` naming it.
    """
    user = _read(cache_file())
    if user is not None:
        if _same_host(user.get("machine", {}), host, cores=True):
            return user, f"user calibration ({cache_file()})"
        _warn_unusable(cache_file(), f"measured on {_describe(user.get('machine', {}))}, not on this "
                                     f"{_describe(host)}")  # fmt: skip
    shipped = [(path, t) for path in sorted(SHIPPED_DIR.glob("*.json")) if (t := _read(path)) is not None]
    for same in (lambda m: _same_host(m, host), lambda m: m.get("isa") == host.get("isa")):
        for path, t in shipped:
            if same(t.get("machine", {})):
                kind = "for this kind of host" if _same_host(t["machine"], host) else "measured on another vendor"
                return t, f"shipped defaults {kind}: {host_name(t['machine'])} ({path.name})"
    return None, (f"no calibration for this {_describe(host)} (built-in thresholds; "
                  "`fastxent calibrate --quick` measures this machine)")  # fmt: skip


def _same_host(machine: dict, host: dict, cores: bool = False) -> bool:
    """Whether a table's ``machine`` is ``host``'s kind: vendor and instruction set
    (and core count, for a user's own table). Fields a table lacks (tables written
    before they were recorded) do not count against it."""
    keys = ("vendor", "isa", "cores") if cores else ("vendor", "isa")
    return all(machine.get(k) in (None, host.get(k)) for k in keys)


def _describe(machine: dict) -> str:
    return f"{host_name(machine)} host with {machine.get('cores', '?')} core(s)"


def _read(path: Path) -> dict | None:
    """A calibration table read from ``path``, or None (missing, or unusable: warned)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn_unusable(path, str(exc))
        return None
    try:
        table = json.loads(text)
    except ValueError as exc:
        _warn_unusable(path, f"not valid JSON ({exc})")
        return None
    if not _well_formed(table):
        _warn_unusable(path, f"not a fastxent calibration of format version {FORMAT_VERSION}")
        return None
    return table


def _well_formed(table) -> bool:
    return (isinstance(table, dict) and table.get("version") == FORMAT_VERSION
            and isinstance(table.get("sizes"), list) and isinstance(table.get("times"), dict)
            and isinstance(table.get("threads"), list) and table["threads"])  # fmt: skip


def _warn_unusable(path: Path, why: str) -> None:
    import warnings

    warnings.warn(f"fastxent: ignoring the calibration file {path}: {why}; run `fastxent calibrate` "
                  "to write a new one", CalibrationWarning, stacklevel=2)  # fmt: skip
