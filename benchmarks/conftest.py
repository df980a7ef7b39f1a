"""pytest-benchmark settings for the fastxent suite (see benchmarks/README.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
