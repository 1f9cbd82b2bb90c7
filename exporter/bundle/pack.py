"""`slimvit pack` / `unpack`: a bundle as one file that stores each distinct weight byte once.

Files are grouped by the artifact they belong to, per format and precision (everything else,
manifest, schema, policy vectors, signature, is one ``meta`` group). In each group the largest
file (the widest variant) is stored raw as the group's base blob; every other file is a copy/insert
op stream against the base and the literal bytes of the files before it, all op streams of the
group in one DEFLATE blob (docs/bundle-format.md, "Packed bundles", for the measurements behind
this choice). Byte-identical files share one op stream.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, did_you_mean
from exporter.manifest import MANIFEST_NAME
from exporter.bundle.pack_match import SourceIndex, match
from exporter.bundle.packfile import (CODEC_DEFLATE, CODEC_RAW, PackedFile, PackError, PackLimits, PackReader,
                                      varint, write_pack, zigzag)
from exporter.bundle.verify import check_bundle
from exporter.fileio import atomic_write_bytes
from exporter.manifest import read_manifest

META = ("meta", "")


@dataclass(frozen=True)
class Selection:
    """Which artifacts a pack or an unpack takes; None means all."""

    formats: frozenset[str] | None = None
    precisions: frozenset[str] | None = None
    variants: frozenset[str] | None = None

    @classmethod
    def parse(cls, formats: str | None = None, precisions: str | None = None,
              variants: str | None = None) -> Selection:
        def split(text: str | None, flag: str) -> frozenset[str] | None:
            if text is None:
                return None
            items = frozenset(x.strip() for x in text.split(",") if x.strip())
            if not items:
                raise ConfigError(f"{flag} is empty; give comma-separated names")
            return items
        return cls(split(formats, "--formats"), split(precisions, "--precisions"), split(variants, "--variants"))

    def artifacts(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        """The manifest's artifacts (each with its variant ``id``) this selection takes.

        Raises:
            ConfigError: a name the manifest does not have, or nothing selected.
        """
        arts = [dict(a, variant=v["id"]) for v in manifest.get("variants", []) for a in v.get("artifacts", [])]
        for have, want, flag in ((sorted({a["format"] for a in arts}), self.formats, "--formats"),
                                 (sorted({a["precision"] for a in arts}), self.precisions, "--precisions"),
                                 (sorted({a["variant"] for a in arts}), self.variants, "--variants")):
            for name in sorted(want or ()):
                if name not in have:
                    raise ConfigError(f'{flag}: "{name}" is not in this bundle (it has {", ".join(have)})'
                                      f"{did_you_mean(name, have)}")
        chosen = [a for a in arts if (self.formats is None or a["format"] in self.formats)
                  and (self.precisions is None or a["precision"] in self.precisions)
                  and (self.variants is None or a["variant"] in self.variants)]
        if not chosen:
            raise ConfigError("the filters select no artifact; drop or widen --formats/--precisions/--variants")
        return chosen


@dataclass
class GroupStats:
    files: int = 0
    bytes: int = 0
    largest: int = 0
    packed: int = 0


@dataclass
class PackStats:
    """What went into a pack, per (format, precision) group and in total."""

    groups: dict[tuple[str, str], GroupStats] = field(default_factory=dict)
    pack_bytes: int = 0

    @property
    def bundle_bytes(self) -> int:
        return sum(g.bytes for g in self.groups.values())


class _Builder:
    def __init__(self, compress_base: bool) -> None:
        self.blobs: list[tuple[int, bytes, int]] = []
        self.files: list[PackedFile] = []
        self.by_hash: dict[str, PackedFile] = {}
        self.compress_base = compress_base
        self.stats = PackStats()

    def add_group(self, key: tuple[str, str], members: list[tuple[str, bytes]]) -> None:
        g = self.stats.groups.setdefault(key, GroupStats())
        members = sorted(members, key=lambda m: (-len(m[1]), m[0]))
        base = members[0][1] if key != META and members else b""
        base_index = len(self.blobs) if base else -1
        ops_index = base_index + 1 if base else len(self.blobs)
        ops = bytearray()
        for path, data in members:
            g.files, g.bytes, g.largest = g.files + 1, g.bytes + len(data), max(g.largest, len(data))
            digest = hashlib.sha256(data).hexdigest()
            same = self.by_hash.get(digest)
            if same is not None and same.size == len(data):
                self.files.append(PackedFile(path, len(data), digest, same.ops_blob, same.ops_offset, same.ops_len))
                continue
            start = len(ops)
            if base and data is base:
                ops += varint(len(data) << 1 | 1) + varint(base_index) + varint(0)
            else:
                _encode(data, base, bytes(ops), ops, base_index, ops_index)
            f = PackedFile(path, len(data), digest, ops_index, start, len(ops) - start)
            self.files.append(f)
            self.by_hash[digest] = f
        if base:
            self._add_blob(base, self.compress_base)
        self._add_blob(bytes(ops), True)
        g.packed += sum(len(b[1]) for b in self.blobs[(base_index if base else ops_index):])

    def _add_blob(self, data: bytes, compress: bool) -> None:
        if compress and data:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            z = c.compress(data) + c.flush()
            if len(z) < len(data):
                self.blobs.append((CODEC_DEFLATE, z, len(data)))
                return
        self.blobs.append((CODEC_RAW, data, len(data)))


def _encode(data: bytes, base: bytes, literals: bytes, ops: bytearray, base_index: int, ops_index: int) -> None:
    """Append the op stream of ``data`` against ``base`` + ``literals`` (the op blob so far)."""
    copies = match(SourceIndex(base + literals), data) if base or literals else []
    pos, prev_end = 0, 0
    for t0, n, s0 in copies:
        if s0 < len(base) < s0 + n:  # do not straddle the two blobs
            n = len(base) - s0
        if t0 > pos:
            ops += varint((t0 - pos) << 1) + data[pos:t0]
        blob, off = (base_index, s0) if s0 < len(base) else (ops_index, s0 - len(base))
        ops += varint(n << 1 | 1) + varint(blob) + varint(zigzag(off - prev_end))
        prev_end, pos = off + n, t0 + n
    if pos < len(data):
        ops += varint((len(data) - pos) << 1) + data[pos:]


def bundle_files(bundle: Path) -> list[str]:
    """Every regular file under the bundle, as sorted relative POSIX paths.

    Raises:
        ConfigError: a symlink or special file (a bundle holds neither).
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(bundle):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise ConfigError(f"{p}: a symlink or special file; a bundle holds regular files only")
            if stat.S_ISREG(st.st_mode):
                out.append(p.relative_to(bundle).as_posix())
    return sorted(out)


def _group_of(path: str, owners: dict[str, tuple[str, str] | None]) -> tuple[str, str] | None:
    """The (format, precision) of the artifact ``path`` belongs to, META, or None (not selected)."""
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        prefix = "/".join(parts[:i])
        if prefix in owners:
            return owners[prefix]
    return META


def pack_bundle(bundle: str | Path, out: str | Path, selection: Selection = Selection(), *,
                compress_base: bool = False) -> PackStats:
    """Write BUNDLE (or the selected artifacts of it, with every non-artifact file) as one pack.

    Args:
        bundle: a bundle directory; it must pass `verify_bundle`.
        out: the pack file to write (atomically).
        selection: formats / precisions / variants to include.
        compress_base: DEFLATE each group's base blob too (smaller, but rebuilding any file of the
            group then inflates the whole base; off by default, docs/bundle-format.md).

    Raises:
        BundleError: the bundle fails verification.
        ConfigError: bad filters, or an output path that is a directory.
    """
    root = Path(bundle)
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the pack file to write (e.g. bundle.svpack)")
    if root.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} is inside the bundle {root}; write the pack outside it")
    check_bundle(root)
    chosen = selection.artifacts(read_manifest(root))
    data = build_pack(root, chosen, compress_base=compress_base)
    atomic_write_bytes(out, data[0])
    return data[1]


def build_pack(root: Path, chosen: list[dict[str, Any]], *, compress_base: bool = False) -> tuple[bytes, PackStats]:
    """The pack bytes of ``root`` with the artifacts ``chosen`` (manifest entries) and every other file."""
    manifest = read_manifest_entries(root)
    owners: dict[str, tuple[str, str] | None] = {a["path"]: None for a in manifest}
    owners.update({a["path"]: (a["format"], a["precision"]) for a in chosen})
    groups: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for rel in bundle_files(root):
        key = _group_of(rel, owners)
        if key is not None:
            groups.setdefault(key, []).append((rel, (root / rel).read_bytes()))
    builder = _Builder(compress_base)
    for key in sorted(groups, key=lambda k: (k != META, k)):
        builder.add_group(key, groups[key])
    # "largest" is the largest artifact (a directory artifact counts all its files), not file.
    for key, g in builder.stats.groups.items():
        if key != META:
            g.largest = max(a["bytes"] for a in chosen if (a["format"], a["precision"]) == key)
    data = write_pack(builder.blobs, builder.files)
    builder.stats.pack_bytes = len(data)
    return data, builder.stats


def read_manifest_entries(root: Path) -> list[dict[str, Any]]:
    return [dict(a, variant=v["id"]) for v in read_manifest(root)["variants"] for a in v["artifacts"]]


def pack_artifacts(reader: PackReader, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's artifacts that the pack holds (a directory artifact: any file under it)."""
    paths = {f.path for f in reader.files}
    arts = [dict(a, variant=v["id"]) for v in manifest["variants"] for a in v["artifacts"]]
    return [a for a in arts if a["path"] in paths or any(p.startswith(a["path"] + "/") for p in paths)]


def files_of(reader: PackReader, artifact_path: str) -> list[str]:
    return sorted(f.path for f in reader.files if f.path == artifact_path or f.path.startswith(artifact_path + "/"))


def iter_selected(reader: PackReader, manifest: dict[str, Any], selection: Selection) -> Iterable[str]:
    """Paths of the pack's files an unpack with ``selection`` writes: every non-artifact file and
    the files of the selected artifacts the pack holds."""
    arts = [a["path"] for v in manifest["variants"] for a in v["artifacts"]]
    held = pack_artifacts(reader, manifest)
    chosen = {a["path"] for a in selection.artifacts({"variants": [
        {"id": a["variant"], "artifacts": [a]} for a in held]})} if held else set()
    for f in reader.files:
        owner = next((a for a in arts if f.path == a or f.path.startswith(a + "/")), None)
        if owner is None or owner in chosen:
            yield f.path


__all__ = ["PackError", "PackLimits", "PackReader", "PackStats", "Selection", "build_pack", "pack_bundle",
           "MANIFEST_NAME"]
