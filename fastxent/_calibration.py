"""The calibration table the dispatcher reads: its format, where it lives, how a
call maps onto it.

A calibration is a table of median kernel times per backend, *kernel family*, thread
count (1 and all cores) and work size. The dispatcher turns it into a step function
per family: for each measured size, the fastest (backend, threads). Defaults measured
on the machine kind fastxent is developed on ship with the package
(``calibration_default.json``); ``fastxent.calibrate()`` (``_measure``) re-measures on
the user's machine and saves the result in the user's cache directory
(``$XDG_CACHE_HOME/fastxent``, else ``~/.cache/fastxent``), which is read from then on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


#: Work sizes measured: elements of y_pred read (rows for the gather family). Larger
#: calls take the largest size's choice: past a few million elements every kernel
#: streams memory, and measuring there would cost seconds per point.
SIZES = tuple(4 ** k for k in range(4, 12))  # 256 .. 4,194,304
FAMILIES = ("logits", "probs", "gather", "binary")
FORMAT_VERSION = 1
_DEFAULT_FILE = Path(__file__).with_name("calibration_default.json")


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
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastxent" / "calibration.json"


class CalibrationWarning(UserWarning):
    """A calibration file exists but cannot be used (the dispatcher falls back to the
    shipped defaults); ``fastxent calibrate`` writes a new one.

    >>> import warnings, fastxent
    >>> warnings.simplefilter("error", fastxent.CalibrationWarning)  # e.g. make it fatal in CI
    >>> warnings.resetwarnings()
    """


def load() -> tuple[dict | None, str]:
    """The calibration in force and where it came from (user cache, shipped default).

    A user calibration that cannot be read is skipped with a :class:`CalibrationWarning`
    naming the file and the reason.
    """
    for path, source in ((cache_file(), "user calibration"), (_DEFAULT_FILE, "shipped defaults")):
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            _warn_unusable(path, str(exc))
            continue
        try:
            table = json.loads(text)
        except ValueError as exc:
            _warn_unusable(path, f"not valid JSON ({exc})")
            continue
        if not _well_formed(table):
            _warn_unusable(path, f"not a fastxent calibration of format version {FORMAT_VERSION}")
            continue
        return table, f"{source} ({path})"
    return None, "no calibration (built-in thresholds)"


def _well_formed(table) -> bool:
    return (isinstance(table, dict) and table.get("version") == FORMAT_VERSION
            and isinstance(table.get("sizes"), list) and isinstance(table.get("times"), dict)
            and isinstance(table.get("threads"), list) and table["threads"])  # fmt: skip


def _warn_unusable(path: Path, why: str) -> None:
    import warnings

    warnings.warn(f"fastxent: ignoring the calibration file {path}: {why}; run `fastxent calibrate` "
                  "to write a new one", CalibrationWarning, stacklevel=2)  # fmt: skip
