"""Rebuilding a bundle from a pack: `unpack`, and `verify` / `sign` on a pack file.

A pack is trusted through its manifest: every artifact it rebuilds must have the size and sha256
the manifest states (the manifest is what `slimvit sign` signs), so a pack whose op streams and
header agree with each other but not with the manifest is refused like a tampered bundle.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError
from exporter.manifest import MANIFEST_NAME
from exporter.bundle.pack import Selection, build_pack, iter_selected, pack_artifacts
from exporter.bundle.packfile import PackError, PackLimits, PackReader
from exporter.bundle.verify import VerifyReport
from exporter.bundle.signing import sign_bundle
from exporter.bundle.verify import verify_bundle
from exporter.fileio import atomic_dir
from exporter.fileio import atomic_write_bytes


def pack_manifest(reader: PackReader) -> dict[str, Any]:
    """The manifest inside a pack, parsed.

    Raises:
        PackError: no manifest, or not a JSON object with variants.
    """
    if MANIFEST_NAME not in reader.by_path:
        raise PackError("format", f"{reader.name}: holds no {MANIFEST_NAME}; not a bundle pack")
    try:
        manifest = json.loads(reader.read(MANIFEST_NAME).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PackError("format", f"{reader.name}: its {MANIFEST_NAME} is not valid JSON "
                                  f"({type(e).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("variants"), list):
        raise PackError("format", f"{reader.name}: its {MANIFEST_NAME} has no variants list")
    return manifest


def manifest_problems(reader: PackReader, manifest: dict[str, Any]) -> list[str]:
    """Artifacts whose packed size or sha256 differs from the manifest's (file artifacts are
    checked from the header alone; directory artifacts by the tree hash of their rebuilt files)."""
    problems = []
    for art in pack_artifacts(reader, manifest):
        f = reader.by_path.get(art["path"])
        if f is not None:
            if f.sha256 != art.get("sha256") or f.size != art.get("bytes"):
                problems.append(f"{art['path']}: the pack rebuilds {f.size} bytes with sha256 {f.sha256}, "
                                f"the manifest says {art.get('bytes')} bytes, {art.get('sha256')}")
            continue
        digest, size = tree_hash(reader, art["path"])
        if digest != art.get("sha256") or size != art.get("bytes"):
            problems.append(f"{art['path']}: the pack's files hash to {digest} ({size} bytes), "
                            f"the manifest says {art.get('sha256')} ({art.get('bytes')} bytes)")
    return problems


def tree_hash(reader: PackReader, directory: str) -> tuple[str, int]:
    """`exporter.fileio.sha256_tree` of a directory artifact, computed from the pack."""
    h, total = hashlib.sha256(), 0
    prefix = directory + "/"
    for path in sorted((f.path for f in reader.files if f.path.startswith(prefix)), key=lambda p: p.encode()):
        data = reader.read(path)
        h.update(path[len(prefix):].encode("utf-8") + b"\0" + len(data).to_bytes(8, "big") + data)
        total += len(data)
    return h.hexdigest(), total


def unpack(pack: str | Path, out: str | Path, selection: Selection = Selection(), *,
           limits: PackLimits = PackLimits()) -> list[str]:
    """Rebuild the bundle of a pack (or the selected artifacts of it) into ``out``.

    Every file is rebuilt and checked (header and manifest) into a temporary directory beside
    ``out``, which replaces ``out`` only when all passed: a bad pack leaves nothing behind.

    Returns:
        The paths written, relative to ``out``.

    Raises:
        PackError: a malformed pack or a file that rebuilds other than promised.
        ConfigError: bad filters, or ``out`` is a file or a non-empty directory that is no bundle.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
        raise ConfigError(f"--out {out} exists and is not an empty directory or a bundle; pick a new path")
    reader = PackReader.open(pack, limits)
    manifest = pack_manifest(reader)
    problems = manifest_problems(reader, manifest)
    if problems:
        raise PackError("hash", f"{reader.name}: refused, {len(problems)} artifact(s) disagree with the manifest: "
                                f"{problems[0]}")
    paths = list(iter_selected(reader, manifest, selection))
    for p in paths:  # every op stream is checked before the first byte is written
        reader.ops(reader.by_path[p])
    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        for p in paths:
            data = reader.read(p)
            dest = tmp / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    return paths


def verify_pack(pack: str | Path, public_key: str | Path | None = None, **options: Any) -> VerifyReport:
    """`verify_bundle` for a pack: rebuild every file into a scratch directory and verify that
    bundle; artifacts the manifest lists but the pack leaves out (a filtered pack) are warnings."""
    report = VerifyReport(Path(pack))
    try:
        reader = PackReader.open(pack)
        manifest = pack_manifest(reader)
        report.problems += manifest_problems(reader, manifest)
    except PackError as e:
        report.problems.append(str(e))
        return report
    if report.problems:
        return report
    held = {a["path"] for a in pack_artifacts(reader, manifest)}
    left_out = [a["path"] for v in manifest["variants"] for a in v["artifacts"] if a["path"] not in held]
    with tempfile.TemporaryDirectory(prefix="slimvit-verify-pack-") as tmp:
        try:
            unpack(pack, Path(tmp) / "bundle")
        except PackError as e:
            report.problems.append(str(e))
            return report
        inner = verify_bundle(Path(tmp) / "bundle", public_key, absent=left_out, **options)
    prefix = f"({str(Path(tmp) / 'bundle')}"
    report.problems += [p.replace(str(Path(tmp) / "bundle"), str(pack)).replace(prefix, "(")
                        for p in inner.problems]
    if left_out:
        report.warnings.append(f"{len(left_out)} artifact(s) of the manifest are not in this pack (packed with "
                               f"filters); an app must not select them")
    report.warnings += inner.warnings
    report.artifacts, report.bundle_version, report.signed = inner.artifacts, inner.bundle_version, inner.signed
    return report


def sign_pack(pack: str | Path, key: str | Path, *, expires: str | None = None,
              bundle_version: int | None = None) -> Path:
    """`sign_bundle` for a pack: rebuild it, sign the manifest, write the pack again with the same
    artifacts (atomically). A pack that fails verification is never signed.

    Raises:
        PackError, BundleError, SigningError: as `unpack` and `sign_bundle`.
    """
    pack = Path(pack)
    reader = PackReader.open(pack)
    held = pack_artifacts(reader, pack_manifest(reader))
    with tempfile.TemporaryDirectory(prefix="slimvit-sign-pack-") as tmp:
        bundle = Path(tmp) / "bundle"
        unpack(pack, bundle)
        _restore_missing(reader, held, bundle)
        sign_bundle(bundle, key, expires=expires, bundle_version=bundle_version)
        data, _ = build_pack(bundle, held)
    atomic_write_bytes(pack, data)
    return pack


def _restore_missing(reader: PackReader, held: list[dict[str, Any]], bundle: Path) -> None:
    """sign_bundle verifies the whole bundle; a filtered pack lacks some artifacts, so signing is
    refused for it unless it holds every artifact of its manifest."""
    manifest = pack_manifest(reader)
    missing = [a["path"] for v in manifest["variants"] for a in v["artifacts"]
               if a["path"] not in {h["path"] for h in held}]
    if missing:
        raise ConfigError(f"{reader.name} was packed with filters ({len(missing)} artifact(s) left out, e.g. "
                          f"{missing[0]}); sign the bundle, then pack it")


__all__ = ["unpack", "verify_pack", "sign_pack", "pack_manifest"]
