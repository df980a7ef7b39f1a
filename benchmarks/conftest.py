"""pytest-benchmark settings for the fastxent suite (results and how to read them: RESULTS.md)."""

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# --doctest-modules imports every script here; the torch comparison script needs torch
# at import, and the suite must run without it (torch stays optional).
collect_ignore = [] if importlib.util.find_spec("torch") else ["torch_autograd.py"]
