"""Crash-safe, resumable exports.

Two mechanisms (docs/determinism.md, "Crash safety"):

- **Staging and publishing.** An export writes its bundle into a staging directory beside the
  bundle (``.NAME.staging-PID``), manifest last, and only then swaps it with the previous
  bundle in one ``renameat2(RENAME_EXCHANGE)`` call on Linux (two renames elsewhere, recovered
  on the next run). Killed at any point before that, the previous bundle is untouched.
- **A content-addressed artifact cache.** Every validated artifact is also stored under a key
  that hashes everything that decides its bytes: the weights, the variant, the format and its
  options, the precision, the metadata embedded in it, the validation inputs and the versions
  of slimvit, torch and every converter. ``export --resume`` takes finished artifacts from the
  cache instead of converting and validating them again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from exporter.convert.artifact import Artifact
from exporter.convert.cache_admin import touch
from exporter.convert.formats import DIRECTORY_SUFFIXES
from exporter.fileio import atomic_write_json, sha256_path
from exporter.gate.files import dumps_strict

CACHE_ENV = "SLIMVIT_CACHE_DIR"
ENTRY_NAME = "entry.json"
CONTROL_FILES = ("manifest.json", "manifest.schema.json", "manifest.sig")
# Packages whose version can change an artifact's bytes: part of every cache key.
CONVERTERS = ("torch", "onnx", "onnxscript", "onnxruntime", "litert-torch", "ai-edge-litert",
              "ai-edge-quantizer", "coremltools", "slimvit")


@functools.cache
def code_digest() -> str:
    """sha256 of slimvit's own source: a code change (even without a version bump) is a miss."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]
    for pkg in ("exporter", "calibration"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    out = {"slimvit-code": code_digest()}
    for name in CONVERTERS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def default_cache_dir(bundle: Path | None = None) -> Path:
    """``$SLIMVIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/slimvit/artifacts``, else
    ``~/.cache/slimvit/artifacts`` (one cache for every bundle; keys never collide)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "slimvit" / "artifacts"


class ArtifactCache:
    """Finished, validated artifacts by content key. ``resume`` decides whether `fetch` is used;
    `store` always runs, so that a killed export can be resumed."""

    def __init__(self, root: str | Path, resume: bool = False) -> None:
        self.root, self.resume = Path(root), resume
        self.hits: list[str] = []
        self.stored: list[str] = []

    def key(self, **parts: Any) -> str:
        """sha256 over the JSON of ``parts``, the converter versions and slimvit's source."""
        doc = dumps_strict({"parts": parts, "versions": tool_versions()}, sort_keys=True, default=_plain)
        return hashlib.sha256(doc.encode()).hexdigest()

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def fetch(self, key: str, target: Path) -> Artifact | None:
        """With ``resume``: place the cached artifact at ``target`` and return it; None on a
        miss, or when the cached copy no longer matches its hash."""
        if not self.resume:
            return None
        d = self._dir(key)
        try:
            entry = json.loads((d / ENTRY_NAME).read_text())
            src, art = d / entry["file"], Artifact.from_manifest(entry["manifest"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not src.exists() or sha256_path(src) != art.sha256:
            return None  # damaged cache entry: export again
        _place(src, target)
        touch(d)
        self.hits.append(key)
        return art

    def store(self, key: str, path: Path, art: Artifact) -> None:
        """Copy a finished artifact (placed at ``path``) into the cache (atomically)."""
        tmp = self._staging(key)
        if tmp is None:
            return
        if path.is_dir():
            shutil.copytree(path, tmp / path.name)
        else:
            shutil.copy2(path, tmp / path.name)
        self._commit(key, tmp, {"file": path.name, "manifest": art.to_manifest()})

    def _staging(self, key: str) -> Path | None:
        """A fresh temporary directory for entry ``key``, or None when it is already cached."""
        d = self._dir(key)
        if (d / ENTRY_NAME).exists():
            return None
        tmp = d.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def _commit(self, key: str, tmp: Path, entry: dict[str, Any]) -> None:
        """Write the entry file last, then rename the staged directory into place."""
        atomic_write_json(tmp / ENTRY_NAME, entry)
        try:
            os.replace(tmp, self._dir(key))
        except OSError:  # another export stored the same key first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        self.stored.append(key)


    def fetch_group(self, key: str, out: Path) -> tuple[list[Artifact], list[dict[str, Any]]] | None:
        """With ``resume``: place a cached group of artifacts (a variant's quantized precisions)
        under ``out``; returns them and the precisions left out, or None."""
        if not self.resume:
            return None
        d = self._dir(key)
        try:
            doc = json.loads((d / ENTRY_NAME).read_text())
            arts = [Artifact.from_manifest(a) for a in doc["artifacts"]]
            excluded = list(doc["excluded"])
            files = [(d / "files" / a.path, out / a.path, a.sha256) for a in arts]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if not all(src.exists() and sha256_path(src) == digest for src, _, digest in files):
            return None
        for src, dst, _ in files:
            _place(src, dst)
        touch(d)
        self.hits.append(key)
        return arts, excluded

    def store_group(self, key: str, out: Path, arts: list[Artifact],
                    excluded: list[dict[str, Any]]) -> None:
        """Copy a group of finished artifacts (paths relative to ``out``) into the cache."""
        tmp = self._staging(key)
        if tmp is None:
            return
        for a in arts:
            src, dst = out / a.path, tmp / "files" / a.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
        self._commit(key, tmp, {"artifacts": [a.to_manifest() for a in arts], "excluded": excluded})


def stage_bundle(final: Path) -> Path:
    """A fresh staging directory beside ``final`` (stale ones of dead exports are removed, and
    a bundle left aside by an interrupted non-Linux swap is put back)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for p in final.parent.glob(f".{final.name}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if kind.endswith(".previous") and not final.exists():
            os.replace(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)
    stage = final.parent / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return stage


def publish_bundle(stage: Path, final: Path) -> None:
    """Make the complete bundle in ``stage`` the bundle at ``final`` in one step.

    Files of a previous bundle that its manifest does not list (a report, notes) are carried
    over; control files are not (an old signature does not sign the new manifest).
    """
    _fsync_tree(stage)  # durable before it becomes visible, whoever wrote each file
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        if final.exists():
            final.rmdir()
        os.replace(stage, final)
        return
    if not (final / "manifest.json").is_file() or Path.cwd().resolve().is_relative_to(final.resolve()):
        _merge_into(stage, final)  # no previous bundle to protect, or a swap would pull the cwd away
        return
    _carry_over(final, stage)
    if not _exchange(stage, final):
        aside = final.parent / f".{final.name}.previous-{os.getpid()}"
        os.replace(final, aside)
        os.replace(stage, final)
        stage = aside
    shutil.rmtree(stage, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _carry_over(old: Path, new: Path) -> None:
    try:
        listed = _listed_paths(json.loads((old / "manifest.json").read_text()))
    except (OSError, ValueError):
        listed = set()
    for src in sorted(old.rglob("*")):
        rel = src.relative_to(old).as_posix()
        if (src.is_dir() or src.is_symlink() or rel in CONTROL_FILES or src.name.startswith(".")
                or any(rel == p or rel.startswith(p + "/") for p in listed) or (new / rel).exists()):
            continue
        (new / rel).parent.mkdir(parents=True, exist_ok=True)
        _place(src, new / rel)


def _merge_into(stage: Path, final: Path) -> None:
    """Move the staged files into ``final`` one by one (directory artifacts whole), manifest
    last, then drop the staging directory."""
    def merge(src_dir: Path, dst_dir: Path) -> None:
        dst_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted(src_dir.iterdir(), key=lambda p: p.name == "manifest.json"):
            dst = dst_dir / src.name
            if src.is_dir() and src.suffix not in DIRECTORY_SUFFIXES:
                merge(src, dst)
                continue
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(src, dst)

    merge(stage, final)
    shutil.rmtree(stage, ignore_errors=True)


def _listed_paths(manifest: Any) -> set[str]:
    paths = {a.get("path") for v in manifest.get("variants", []) for a in v.get("artifacts", [])}
    paths.add((manifest.get("policy_vectors") or {}).get("path"))
    return {p for p in paths if isinstance(p, str)}


def _place(src: Path, dst: Path) -> None:
    """Hard-link (copy across file systems) a file or directory tree to ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=False)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tobytes"):  # numpy arrays: their hash, not their bytes
        return hashlib.sha256(obj.tobytes()).hexdigest()
    return repr(obj)
