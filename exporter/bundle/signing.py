"""Signing a bundle: checks it with `verify` first, optionally stamps expiry and bundle version
into its manifest, then writes ``manifest.sig`` (the format is described in `exporter.bundle.keys`)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from exporter.bundle.keys import SIGNATURE_NAME, SigningError, key_id, load_private_key, signed_message
from exporter.bundle.verify import check_bundle, parse_time
from exporter.fileio import atomic_write_json
from exporter.gate.files import read_capped, read_json
from exporter.gate.limits import MAX_BUNDLE_VERSION, MAX_EXPIRY_DAYS, MAX_MANIFEST_BYTES
from exporter.manifest import MANIFEST_NAME, validate_manifest


def parse_expiry(text: str, now: datetime | None = None) -> str:
    """``30d`` / ``12h`` from now, or an ISO 8601 time with a zone -> RFC 3339 UTC string."""
    now = now or datetime.now(UTC)
    unit = {"d": timedelta(days=1), "h": timedelta(hours=1)}.get(text[-1:])
    if unit is not None and text[:-1].isascii() and text[:-1].isdigit():
        if len(text) > 12 or int(text[:-1]) * unit > timedelta(days=MAX_EXPIRY_DAYS):
            raise SigningError(f'expiry "{text[:40]}" is over {MAX_EXPIRY_DAYS} days away; sign again '
                               f"before then instead")
        when = now + int(text[:-1]) * unit
    else:
        when = parse_time(text)
        if when is None:
            raise SigningError(f'expiry "{text}" must be like "30d", "12h" or "2027-01-31T00:00:00Z"')
    if when <= now:
        raise SigningError(f"expiry {when.isoformat()} is in the past")
    if when - now > timedelta(days=MAX_EXPIRY_DAYS):
        raise SigningError(f"expiry {when.isoformat()} is over {MAX_EXPIRY_DAYS} days away")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_bundle(bundle: str | Path, key: str | Path, *, expires: str | None = None,
                bundle_version: int | None = None) -> Path:
    """Sign a bundle's manifest with an Ed25519 private key; returns the ``manifest.sig`` path.

    Args:
        bundle: the bundle directory; it must pass `verify_bundle` first.
        key: the private key (PEM).
        expires: optional expiry (``30d`` or an ISO 8601 time), written into the manifest.
        bundle_version: optional new ``bundle_version``, written into the manifest.

    Raises:
        SigningError: unreadable key, bad expiry.
        BundleError: the bundle fails verification (a broken bundle is never signed).
    """
    root = Path(bundle)
    private = load_private_key(key)
    # Everything is checked before anything is written: the bundle as it is must pass verify
    # (a tampered bundle is refused with its manifest untouched), then the updated manifest.
    check_bundle(root)
    if expires is not None or bundle_version is not None:
        manifest = _updated_manifest(root, expires, bundle_version)
        atomic_write_json(root / MANIFEST_NAME, manifest)
        check_bundle(root)  # the rewritten manifest pins the same artifacts
    data = read_capped(root / MANIFEST_NAME, "manifest", MAX_MANIFEST_BYTES, SigningError)
    sig = {"format": "slimvit-signature", "version": 1, "algorithm": "ed25519",
           "key_id": key_id(private.public_key()), "manifest_sha256": hashlib.sha256(data).hexdigest(),
           "signature": base64.b64encode(private.sign(signed_message(data))).decode()}
    atomic_write_json(root / SIGNATURE_NAME, sig)
    return root / SIGNATURE_NAME


def _updated_manifest(root: Path, expires: str | None, bundle_version: int | None) -> dict[str, Any]:
    """The manifest with the new expiry / bundle version, validated; nothing is written."""
    path = root / MANIFEST_NAME
    manifest = read_json(path, "manifest", MAX_MANIFEST_BYTES, SigningError)
    if not isinstance(manifest, dict):
        raise SigningError(f"{path}: a manifest must be a JSON object")
    if expires is not None:
        manifest["expires"] = parse_expiry(expires)
    if bundle_version is not None:
        old = manifest.get("bundle_version")
        if isinstance(bundle_version, bool) or not isinstance(bundle_version, int) or \
                not 0 <= bundle_version <= MAX_BUNDLE_VERSION:
            raise SigningError(f"--bundle-version must be an integer in [0, {MAX_BUNDLE_VERSION}] (what "
                               f"JavaScript reads exactly), but got {bundle_version}")
        if isinstance(old, int) and bundle_version < old:
            raise SigningError(f"--bundle-version {bundle_version} is lower than the bundle's {old}; "
                               f"bundle versions only increase")
        manifest["bundle_version"] = bundle_version
    validate_manifest(manifest)
    return manifest
