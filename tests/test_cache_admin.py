"""The artifact cache lives where caches go, says how big it is, stays under a limit, clears."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.convert.artifact import Artifact
from exporter.convert.cache import ArtifactCache, default_cache_dir
from exporter.convert.cache_admin import CacheError, clear, max_bytes, prune, usage

ROOT = Path(__file__).resolve().parents[1]


def test_default_dir_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SLIMVIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir(tmp_path / "bundle") == tmp_path / "xdg" / "slimvit" / "artifacts"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    assert default_cache_dir() == Path.home() / ".cache" / "slimvit" / "artifacts"
    monkeypatch.setenv("SLIMVIT_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def fill(root: Path, n: int, size: int) -> list[str]:
    cache = ArtifactCache(root)
    keys = []
    for i in range(n):
        f = root.parent / f"a{i}.bin"
        f.write_bytes(bytes([i]) * size)
        key = cache.key(i=i)
        cache.store(key, f, Artifact("onnx", "fp32", f.name, "x", size, {}))
        os.utime(root / key[:2] / key / "entry.json", (1000 + i, 1000 + i))  # older first
        keys.append(key)
    return keys


def test_usage_prune_least_recently_used_and_clear(tmp_path):
    root = tmp_path / "cache"
    keys = fill(root, 4, 100_000)
    u = usage(root)
    assert u.entries == 4 and 400_000 <= u.bytes < 410_000
    removed = prune(root, limit=250_000)
    assert [p.name for p in removed] == keys[:2]  # the two least recently used
    assert usage(root).entries == 2
    (root / "unrelated.txt").write_text("keep me")
    before = clear(root)
    assert before.entries == 2 and usage(root).entries == 0 and (root / "unrelated.txt").exists()


@pytest.mark.parametrize("raw,ok", [("", True), ("10", True), ("0", True), ("-1", False), ("nan", False),
                                    ("inf", False), ("lots", False)])
def test_limit_from_env_is_checked(monkeypatch, raw, ok):
    monkeypatch.setenv("SLIMVIT_CACHE_MAX_MB", raw)
    if ok:
        assert max_bytes() >= 0
    else:
        with pytest.raises(CacheError, match="SLIMVIT_CACHE_MAX_MB"):
            max_bytes()


def test_cli_cache_info_and_clear(tmp_path):
    root = tmp_path / "cache"
    fill(root, 2, 1000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLIMVIT_CACHE_DIR": str(root)}
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "cache", "info"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and f"{root}: 2 entries" in " ".join(r.stderr.split())
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "cache", "clear"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "2 entries" in " ".join(r.stderr.split()) and usage(root).entries == 0
    json.dumps(usage(root).describe())
