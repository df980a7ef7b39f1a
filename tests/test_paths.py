"""Where fastxent keeps files between runs (the calibration, Numba's compiled kernels)."""

from __future__ import annotations

from fastxent import _calibration, _paths


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTXENT_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert _paths.cache_dir() == tmp_path / "home" / ".cache" / "fastxent"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _paths.cache_dir() == tmp_path / "xdg" / "fastxent"
    assert _calibration.cache_file() == tmp_path / "xdg" / "fastxent" / "calibration.json"
    assert _paths.numba_cache_root() == tmp_path / "xdg" / "fastxent" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))  # the user's choice for every Numba cache
    assert _paths.numba_cache_root() == tmp_path / "numba" / "fastxent"
    monkeypatch.setenv("FASTXENT_CACHE_DIR", str(tmp_path / "mine"))  # ours is more specific
    assert _paths.cache_dir() == tmp_path / "mine"
    assert _calibration.cache_file() == tmp_path / "mine" / "calibration.json"
    assert _paths.numba_cache_root() == tmp_path / "mine" / "numba"
    assert not any(p.exists() for p in (tmp_path / "mine", tmp_path / "xdg", tmp_path / "home"))  # nothing created
