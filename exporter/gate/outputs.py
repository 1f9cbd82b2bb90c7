"""Where slimvit may write: checked before any work, so a mistyped ``--out`` never merges a bundle
into the current directory or the root, never replaces a checkpoint or a manifest, and never
writes inside the bundle it reads.

An output directory must be new, empty, or a previous output of the same command (recognised by
the files that command writes); it may not be or lie inside an input, nor lie inside a bundle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from exporter.errors import SlimvitError
from exporter.gate.files import InputError, is_bundle_path

# The files that mark a directory as a previous output of each command.
MARKERS: dict[str, tuple[str, ...]] = {
    "bundle": ("manifest.json",),
    "train": ("config.yaml", "state.pt", "model.safetensors", "log.jsonl"),
    "search": ("*_slim.safetensors",),
    "simulate": ("summary.json", "timeline.png"),
    "demo": ("digits_vit.safetensors", "bundle"),
}
WHAT = {"bundle": "a slimvit bundle", "train": "a training run", "search": "a search output",
        "simulate": "a simulation output", "demo": "a demo output"}


class OutputError(InputError):
    """An output path that would overwrite or mix with something that is not slimvit's output."""


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


def check_inputs(out: Path, inputs: Iterable[str | os.PathLike[str] | None], flag: str,
                 error: type[SlimvitError]) -> None:
    """``out`` is none of ``inputs`` and lies inside none of them."""
    target = _resolved(out)
    for given in inputs:
        if given is None or str(given) == "":
            continue
        src = _resolved(Path(given))
        if _inside(target, src):
            raise error(f"{flag} {out} is the input {given} or lies inside it; write somewhere else")


def check_out_dir(out: str | os.PathLike[str], kind: str, inputs: Iterable[str | os.PathLike[str] | None] = (),
                  flag: str = "--out", error: type[SlimvitError] = OutputError) -> Path:
    """Refuse an output directory that is not new, empty or a previous ``kind`` output."""
    raw = os.fspath(out)
    if raw == "":
        raise error(f"{flag} is empty; name a new directory")
    path = Path(raw)
    target = _resolved(path)
    if target == Path(target.anchor):
        raise error(f"{flag} {raw} is the file system root; name a new directory")
    check_inputs(path, inputs, flag, error)
    holder = is_bundle_path(target.parent)
    if holder is not None and not (kind == "bundle" and holder == target):
        raise error(f"{flag} {raw} lies inside the bundle {holder}; write outside it")
    if not os.path.lexists(path):
        return path
    if path.is_symlink() or not path.is_dir():
        raise error(f"{flag} {raw} exists and is not a directory; name a new directory")
    try:
        entries = [e for e in os.listdir(path)]
    except OSError as e:
        raise error(f"cannot list {flag} {raw}: {e.strerror}") from None
    if not entries or any(next(path.glob(m), None) is not None for m in MARKERS[kind]):
        return path
    raise error(f"{flag} {raw} is a directory that is neither empty nor {WHAT[kind]} "
                f"({len(entries)} entries such as {sorted(entries)[0]!r}); name a new directory")


def check_out_file(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None] = (),
                   flag: str = "--out", error: type[SlimvitError] = OutputError) -> Path:
    """An output file: not a directory or special file, not inside a bundle or an input."""
    raw = os.fspath(out)
    path = Path(raw)
    if raw == "" or not path.name or path.name in (".", ".."):
        raise error(f"{flag} {raw!r} names no file; give a file name such as report.html")
    check_inputs(path, inputs, flag, error)
    holder = is_bundle_path(_resolved(path).parent)
    if holder is not None:
        raise error(f"{flag} {raw} lies inside the bundle {holder}; write the report outside it")
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        raise error(f"{flag} {raw} exists and is not a regular file")
    if path.parent.exists() and not path.parent.is_dir():
        raise error(f"{flag} {raw}: {path.parent} is not a directory")
    return path
