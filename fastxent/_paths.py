"""Where fastxent keeps files between runs: one per-user cache directory.

Nothing is ever written inside the installed package: a folder left there outlives
``pip uninstall`` and can shadow another install of fastxent.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """fastxent's cache directory (not created here): ``$FASTXENT_CACHE_DIR`` if set,
    else ``$XDG_CACHE_HOME/fastxent``, else ``~/.cache/fastxent``.

    >>> import os
    >>> os.environ["FASTXENT_CACHE_DIR"] = "/tmp/fx-cache"
    >>> str(cache_dir())
    '/tmp/fx-cache'
    >>> del os.environ["FASTXENT_CACHE_DIR"]
    """
    explicit = os.environ.get("FASTXENT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastxent"


def numba_cache_root() -> Path:
    """Where the Numba backend's compiled kernels go (one subdirectory per version of
    its sources): ``<cache_dir()>/numba``; when only ``NUMBA_CACHE_DIR`` is set (the
    user's choice for every Numba cache), ``$NUMBA_CACHE_DIR/fastxent``.

    >>> import os
    >>> os.environ["FASTXENT_CACHE_DIR"] = "/tmp/fx-cache"
    >>> str(numba_cache_root())
    '/tmp/fx-cache/numba'
    >>> del os.environ["FASTXENT_CACHE_DIR"]
    """
    numba_dir = os.environ.get("NUMBA_CACHE_DIR")
    if numba_dir and not os.environ.get("FASTXENT_CACHE_DIR"):
        return Path(numba_dir) / "fastxent"
    return cache_dir() / "numba"
