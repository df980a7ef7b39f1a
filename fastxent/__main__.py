"""``python -m fastxent ...``: the same commands as ``fastxent ...``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
