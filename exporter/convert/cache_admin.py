"""The artifact cache as a user sees it: where it is, how big, kept under a size limit, cleared.

The cache (``exporter/convert/cache.py``) lives where caches go: ``$SLIMVIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/slimvit/artifacts``, else ``~/.cache/slimvit/artifacts``. After each export
the least recently used entries are removed until it fits ``$SLIMVIT_CACHE_MAX_MB`` (default
2048 MB); `slimvit cache info` / `slimvit cache clear` show and empty it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import SlimvitError

MAX_ENV = "SLIMVIT_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
ENTRY_NAME = "entry.json"


class CacheError(SlimvitError):
    """A cache directory or limit the user gave is unusable."""


@dataclass(frozen=True)
class CacheUsage:
    root: Path
    entries: int
    bytes: int
    limit_bytes: int

    def describe(self) -> str:
        return (f"{self.root}: {self.entries} entries, {self.bytes / 2**20:.1f} MB "
                f"(limit {self.limit_bytes / 2**20:.0f} MB, ${MAX_ENV})")


def max_bytes() -> int:
    """The size limit from ``$SLIMVIT_CACHE_MAX_MB`` (default 2048 MB; 0 keeps nothing)."""
    raw = os.environ.get(MAX_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MB * 2**20
    try:
        mb = float(raw)
    except ValueError:
        raise CacheError(f"${MAX_ENV} must be a number of megabytes, but got {raw!r}") from None
    if not mb >= 0 or mb == float("inf"):
        raise CacheError(f"${MAX_ENV} must be a finite number >= 0, but got {raw!r}")
    return int(mb * 2**20)


def _entries(root: Path) -> list[Path]:
    """Finished entry directories (``root/ab/abcdef...``), not ones still being written."""
    if not root.is_dir():
        return []
    return [e.parent for e in root.glob(f"*/*/{ENTRY_NAME}") if not e.parent.name.startswith(".")]


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def usage(root: str | Path) -> CacheUsage:
    root = Path(root)
    entries = _entries(root)
    return CacheUsage(root, len(entries), sum(_size(e) for e in entries), max_bytes())


def prune(root: str | Path, limit: int | None = None) -> list[Path]:
    """Remove the least recently used entries (by the entry file's mtime, which a cache hit
    refreshes) until the cache fits ``limit`` bytes. Returns the removed entry directories."""
    limit = max_bytes() if limit is None else limit
    sized = [(e, _size(e), _mtime(e)) for e in _entries(Path(root))]
    total = sum(s for _, s, _ in sized)
    removed = []
    for entry, size, _ in sorted(sized, key=lambda t: t[2]):
        if total <= limit:
            break
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed


def touch(entry_dir: Path) -> None:
    """Mark an entry as used now (for least-recently-used pruning)."""
    try:
        os.utime(entry_dir / ENTRY_NAME, (time.time(), time.time()))
    except OSError:
        pass


def _mtime(entry: Path) -> float:
    try:
        return (entry / ENTRY_NAME).stat().st_mtime
    except OSError:
        return 0.0


def clear(root: str | Path) -> CacheUsage:
    """Delete every entry (and stale temporary ones); returns what was there."""
    root = Path(root)
    before = usage(root)
    if root.exists() and not root.is_dir():
        raise CacheError(f"{root} is not a directory; pass the cache directory")
    if root.is_dir():
        for shard in root.iterdir():
            if shard.is_dir() and len(shard.name) == 2:  # only what the cache itself wrote
                shutil.rmtree(shard, ignore_errors=True)
    return before
