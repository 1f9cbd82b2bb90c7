"""Bundle verification: everything an app must check before it loads a bundle, and every
problem found listed, not only the first.

A bundle passes when its manifest is small, valid JSON and follows the schema of a known major
version; when it is not expired and not older than the last bundle the caller saw; when every
artifact sits at a relative path inside the bundle (no ``..``, no absolute path, no symlink) and
has exactly the bytes and sha256 the manifest states; when every artifact needs no newer
runtime than the apps ship (docs/security.md); and, with a public key, when ``manifest.sig`` is
a valid Ed25519 signature of the manifest's bytes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.bundle.keys import SIGNATURE_NAME, load_public_key, signature_problems
from exporter.convert.formats import FORMATS
from exporter.errors import SlimvitError
from exporter.fileio import sha256_file, sha256_tree
from exporter.gate.files import InputError, loads_strict
from exporter.manifest import MANIFEST_NAME, SCHEMA_NAME, schema_problems

KNOWN_SCHEMA_MAJOR = 1
PINNED_FILES = ("policy_vectors",)  # top-level manifest entries with a path and a sha256


class BundleError(SlimvitError):
    """A bundle failed verification; the message lists every problem."""


@dataclass(frozen=True)
class Limits:
    """Size caps: a bundle beyond them is refused before anything is parsed or hashed."""

    manifest_bytes: int = 4 << 20
    artifact_bytes: int = 2 << 30
    bundle_bytes: int = 8 << 30
    tree_files: int = 10_000  # files inside one directory artifact (.mlpackage)


@dataclass
class VerifyReport:
    """What `verify_bundle` found. ``signed`` is None when no public key was given."""

    bundle: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    artifacts: int = 0
    bundle_version: int | None = None
    signed: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "ok": self.ok, "problems": self.problems,
                "warnings": self.warnings, "artifacts": self.artifacts,
                "bundle_version": self.bundle_version, "signed": self.signed}


def verify_bundle(bundle: str | Path, public_key: str | Path | None = None, *,
                  min_bundle_version: int | None = None, now: datetime | None = None,
                  limits: Limits = Limits(), absent: Collection[str] = ()) -> VerifyReport:
    """Check a bundle the way an app must before loading it; never raises for a bad bundle.

    Args:
        bundle: the bundle directory.
        public_key: an Ed25519 public key (PEM); when given, ``manifest.sig`` must verify.
        min_bundle_version: the newest ``bundle_version`` seen before; an older one is a rollback.
        now: the time expiry is checked against (default: the current UTC time).
        limits: size caps.
        absent: artifact paths the caller knows are left out (a pack made with filters): their
            absence is no problem (the caller says so); anything else about them still is.

    Returns:
        A report whose ``problems`` lists every failed check (empty when the bundle is good).

    Raises:
        SigningError: the public key file cannot be read (a caller error, not a bundle problem).
    """
    root = Path(bundle)
    report = VerifyReport(root)
    key = None
    if public_key is not None:
        key = load_public_key(public_key)
    if not root.is_dir():
        report.problems.append(f"{root}: not a directory; a bundle is a directory with {MANIFEST_NAME}")
        return report
    raw = _read_manifest_bytes(root, limits, report.problems)
    manifest = _parse_manifest(raw, report.problems) if raw is not None else None
    if key is not None:
        sig_problems = signature_problems(root, raw, key) if raw is not None else ["not checked"]
        report.signed = not sig_problems
        report.problems += [f"signature: {p}" for p in sig_problems if raw is not None]
    elif (root / SIGNATURE_NAME).exists():
        report.warnings.append(f"{SIGNATURE_NAME} present but not checked: pass --public-key")
    if manifest is None:
        return report
    report.problems += _version_problems(manifest, min_bundle_version, now, report)
    report.problems += [f"schema: {p}" for p in schema_problems(manifest)]
    listed = _check_artifacts(root, manifest, limits, report, frozenset(absent))
    named = {a["path"] for _, a in _artifacts(manifest) if isinstance(a.get("path"), str)}
    _walk_bundle(root, listed, named, report)
    return report


def check_bundle(bundle: str | Path, public_key: str | Path | None = None, **options: Any) -> VerifyReport:
    """`verify_bundle`, raising `BundleError` (listing every problem) when the bundle is bad."""
    report = verify_bundle(bundle, public_key, **options)
    if not report.ok:
        raise BundleError(f"bundle {report.bundle} failed verification with {len(report.problems)} "
                          f"problem(s):\n  " + "\n  ".join(report.problems))
    return report


def _read_manifest_bytes(root: Path, limits: Limits, problems: list[str]) -> bytes | None:
    path = root / MANIFEST_NAME
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        problems.append(f"{MANIFEST_NAME} is missing; is {root} a slimvit bundle?")
        return None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        problems.append(f"{MANIFEST_NAME} is not a regular file (symlink or special file)")
        return None
    if st.st_size > limits.manifest_bytes:
        problems.append(f"{MANIFEST_NAME} has {st.st_size} bytes, over the {limits.manifest_bytes} cap")
        return None
    return path.read_bytes()


def _parse_manifest(raw: bytes, problems: list[str]) -> dict[str, Any] | None:
    try:  # strict: NaN/Infinity, overflowing floats, 5000-digit integers and deep nesting are problems
        manifest = loads_strict(raw, MANIFEST_NAME)
    except InputError as e:
        problems.append(str(e))
        return None
    if not isinstance(manifest, dict):
        problems.append(f"{MANIFEST_NAME} must hold a JSON object, not {type(manifest).__name__}")
        return None
    return manifest


def _version_problems(manifest: dict[str, Any], min_bundle_version: int | None,
                      now: datetime | None, report: VerifyReport) -> list[str]:
    problems = []
    sv = manifest.get("schema_version")
    m = re.fullmatch(r"(\d+)\.(\d+)", sv) if isinstance(sv, str) else None
    if m and int(m.group(1)) != KNOWN_SCHEMA_MAJOR:
        problems.append(f"schema_version {sv}: this slimvit reads major version {KNOWN_SCHEMA_MAJOR} "
                        f"only; use a slimvit that knows major {m.group(1)}")
    bv = manifest.get("bundle_version")
    if isinstance(bv, int) and not isinstance(bv, bool):
        report.bundle_version = bv
        if min_bundle_version is not None and bv < min_bundle_version:
            problems.append(f"bundle_version {bv} is older than {min_bundle_version} seen before: "
                            f"a rollback; keep the newer bundle")
    expires = manifest.get("expires")
    if expires is not None:
        when = parse_time(expires) if isinstance(expires, str) else None
        if when is None:
            problems.append(f'expires "{expires}" is not an ISO 8601 time with a time zone')
        elif when <= (now or datetime.now(UTC)):
            problems.append(f"bundle expired at {when.isoformat()}; publish a fresh one")
    return problems


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 / RFC 3339 time with a zone (``2027-01-31T00:00:00Z``), or None."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _artifacts(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, entry) of every file the manifest pins, tolerating one that failed the schema."""
    out = []
    variants = manifest.get("variants")
    for i, v in enumerate(variants if isinstance(variants, list) else []):
        arts = v.get("artifacts") if isinstance(v, dict) else None
        vid = v.get("id", i) if isinstance(v, dict) else i
        for j, a in enumerate(arts if isinstance(arts, list) else []):
            if isinstance(a, dict):
                out.append((f"variant {vid} artifact {j}", a))
    # Other files the manifest pins by hash (the policy's conformance vectors).
    for key in PINNED_FILES:
        if isinstance(manifest.get(key), dict):
            out.append((key, manifest[key]))
    return out


def _check_artifacts(root: Path, manifest: dict[str, Any], limits: Limits,
                     report: VerifyReport, absent: frozenset[str] = frozenset()) -> set[str]:
    listed: set[str] = set()
    total = 0
    ids = [v.get("id") for v in manifest.get("variants", []) if isinstance(v, dict)] \
        if isinstance(manifest.get("variants"), list) else []
    for dup in sorted({str(i) for i in ids if ids.count(i) > 1}):
        report.problems.append(f"variant id {dup} appears more than once")
    for label, art in _artifacts(manifest):
        rel = art.get("path")
        problems = path_problems(root, rel)
        if problems == [MISSING] and rel in absent:
            continue  # left out on purpose (a filtered pack); a safe path, just not here
        if not problems and rel in listed:
            problems = ["listed twice"]
        if problems:
            report.problems += [f"{label} ({rel!r}): {p}" for p in problems]
            continue
        listed.add(rel)
        report.artifacts += 1
        total += _check_content(root / rel, art, limits, f"{label} ({rel})", report.problems)
    if total > limits.bundle_bytes:
        report.problems.append(f"artifacts hold {total} bytes, over the {limits.bundle_bytes} bundle cap")
    return listed


MISSING = "missing from the bundle"  # the one problem `absent` excuses


def path_problems(root: Path, rel: Any) -> list[str]:
    """Why ``rel`` is not a safe artifact path inside ``root`` (empty when it is)."""
    if not isinstance(rel, str) or not rel:
        return ["path must be a non-empty string"]
    if "\\" in rel or "\0" in rel or re.match(r"^[A-Za-z]:", rel):
        return ["path must use '/' and hold no backslash, NUL or drive letter"]
    if rel.startswith("/"):
        return ["absolute path; paths must be relative to the bundle"]
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return ["path has an empty, '.' or '..' component; it must stay inside the bundle"]
    if parts[0] in (MANIFEST_NAME, SCHEMA_NAME, SIGNATURE_NAME):
        return ["path names a bundle control file"]
    here = root
    for p in parts:
        here = here / p
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return [MISSING]
        except OSError as e:
            return [f"cannot be read ({e.strerror})"]
        if stat.S_ISLNK(st.st_mode):
            return [f"{here.relative_to(root).as_posix()} is a symlink; bundles hold no symlinks"]
    return []


def _check_content(path: Path, art: dict[str, Any], limits: Limits, label: str,
                   problems: list[str]) -> int:
    """Size, hash and runtime version of one artifact; returns the bytes it holds."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        size, digest, why = _tree_digest(path, limits)
        if why:
            problems.append(f"{label}: {why}")
            return size
    elif stat.S_ISREG(st.st_mode):
        size, digest = st.st_size, None
    else:
        problems.append(f"{label}: not a regular file or directory")
        return 0
    want = art.get("bytes", size)  # policy vectors are pinned by hash only
    if size > limits.artifact_bytes:
        problems.append(f"{label}: {size} bytes, over the {limits.artifact_bytes} artifact cap")
        return size
    if want != size:
        problems.append(f"{label}: holds {size} bytes but the manifest says {want}")
    digest = digest or sha256_file(path)
    if art.get("sha256") != digest:
        problems.append(f"{label}: sha256 {digest} does not match the manifest's {art.get('sha256')}")
        return size  # a tampered file is not parsed
    problems += [f"{label}: {p}" for p in runtime_problems(path, art.get("format"))]
    return size


def _tree_digest(path: Path, limits: Limits) -> tuple[int, str | None, str | None]:
    """Bytes and documented content hash of a directory artifact, or why it cannot be trusted."""
    files, size = 0, 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                return size, None, f"{p.relative_to(path.parent).as_posix()} is a symlink; bundles hold no symlinks"
            if stat.S_ISREG(st.st_mode):
                files, size = files + 1, size + st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                return size, None, f"{p.name} is not a regular file"
        if files > limits.tree_files:
            return size, None, f"more than {limits.tree_files} files"
    return size, sha256_tree(path), None


def runtime_problems(path: Path, fmt: Any) -> list[str]:
    """Whether the artifact needs a newer runtime than the apps ship: each format's own check
    (`ExportFormat.runtime_problems`, docs/security.md); an unknown format has none."""
    cls = FORMATS.get(fmt) if isinstance(fmt, str) else None
    if cls is None:
        return []
    try:
        return cls.runtime_problems(path)
    except (OSError, ValueError, IndexError) as e:
        return [f"cannot read its {fmt} header ({e})"]


def _walk_bundle(root: Path, listed: set[str], named: set[str], report: VerifyReport) -> None:
    """Symlinks anywhere are problems; files no manifest entry names are warnings. Symlinks on an
    artifact's own path were reported with that artifact already."""
    known = {MANIFEST_NAME, SCHEMA_NAME, SIGNATURE_NAME} | listed
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(dirnames + filenames):
            rel = (rel_dir / name).as_posix()
            if os.path.islink(Path(dirpath) / name):
                if not any(k == rel or k.startswith(rel + "/") for k in named):
                    report.problems.append(f"{rel} is a symlink; bundles hold no symlinks")
            elif name in filenames and not any(rel == k or rel.startswith(k + "/") for k in known):
                report.warnings.append(f"{rel} is in no manifest entry; apps ignore it")
        dirnames[:] = [d for d in dirnames if (rel_dir / d).as_posix() not in listed]
