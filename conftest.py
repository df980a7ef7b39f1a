"""Collection settings for the whole checkout.

``--doctest-modules`` imports every module under ``fastxent/``; a module built on an
optional dependency that is not installed is left out (its tests skip the same way,
through ``pytest.importorskip``), instead of failing the collection.
"""

import importlib.util

_OPTIONAL = {"fastxent/torch.py": "torch"}

collect_ignore = [path for path, module in _OPTIONAL.items() if importlib.util.find_spec(module) is None]
