"""Ed25519 signatures of bundles, through `cryptography`.

What is signed: the exact bytes of ``manifest.json`` as shipped, prefixed by a context string::

    message = b"slimvit-manifest-signature-v1\\n" + manifest_json_bytes

No JSON re-serialisation happens anywhere, so there is no canonicalisation for an app to get
wrong: the canonical form *is* the file. Apps verify the bytes they read, before parsing them.
The manifest pins every artifact by size and sha256, so one signature covers the whole bundle.
The signature lives beside the manifest in ``manifest.sig``, a small JSON object::

    {"format": "slimvit-signature", "version": 1, "algorithm": "ed25519",
     "key_id": "<first 16 hex of sha256(raw 32-byte public key)>",
     "manifest_sha256": "<hex>", "signature": "<base64 of the 64-byte signature>"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any

from exporter.errors import SlimvitError
from exporter.fileio import atomic_path, atomic_write_bytes
from exporter.gate.files import loads_strict, read_capped
from exporter.gate.limits import MAX_KEY_BYTES

SIGNATURE_NAME = "manifest.sig"
CONTEXT = b"slimvit-manifest-signature-v1\n"
PASSPHRASE_ENV = "SLIMVIT_KEY_PASSPHRASE"
MAX_SIGNATURE_BYTES = 4096


class SigningError(SlimvitError):
    """A key cannot be read or generated, or a bundle cannot be signed."""


def signed_message(manifest_bytes: bytes) -> bytes:
    """The bytes an Ed25519 signature covers: the context string, then the manifest file."""
    return CONTEXT + manifest_bytes


def generate_keypair(private_path: str | Path, public_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as PEM (private key PKCS#8, mode 0600; public key SPKI).

    The private key is encrypted when ``$SLIMVIT_KEY_PASSPHRASE`` is set. Existing files are
    never overwritten: losing a signing key strands every app that pinned it.
    """
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(private_path)
    if not private_path.name or private_path.name in (".", ".."):
        raise SigningError(f'"{private_path}" names no file; give the key file to create, e.g. release.key')
    # KEY and KEY.pub (docs/security.md): `keygen release.key` -> release.key, release.key.pub
    public_path = Path(public_path) if public_path else private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if os.path.lexists(p):  # a dangling symlink counts: writing through it is still overwriting
            raise SigningError(f"{p} exists; refusing to overwrite a key (choose another path)")
    if private_path.parent.exists() and not private_path.parent.is_dir():
        raise SigningError(f"{private_path.parent} is not a directory")
    key = Ed25519PrivateKey.generate()
    phrase = os.environ.get(PASSPHRASE_ENV)
    enc = ser.BestAvailableEncryption(phrase.encode()) if phrase else ser.NoEncryption()
    with atomic_path(private_path) as tmp:
        tmp.chmod(0o600)  # owner only, before the secret is written
        tmp.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, enc))
    atomic_write_bytes(public_path, key.public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    public_path.chmod(0o644)
    return private_path, public_path


def load_private_key(path: str | Path):  # -> Ed25519PrivateKey
    """Read an Ed25519 private key (PEM PKCS#8; passphrase from ``$SLIMVIT_KEY_PASSPHRASE``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_key_file(path)
    phrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = load_pem_private_key(data, password=phrase.encode() if phrase else None)
    except TypeError as e:  # encrypted without a passphrase, or a passphrase for a plain key
        raise SigningError(f"{path}: {e}; set ${PASSPHRASE_ENV} to the key's passphrase") from None
    except ValueError:
        raise SigningError(f"{path}: not a PEM private key, or a wrong passphrase; make one with "
                           f"`slimvit keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: a {type(key).__name__}, but slimvit signs with Ed25519 keys only")
    return key


def load_public_key(path: str | Path):  # -> Ed25519PublicKey
    """Read an Ed25519 public key: PEM (SPKI), or the raw 32 bytes as 64 hex or base64 chars."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read_key_file(path)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(data)
        except ValueError:
            raise SigningError(f"{path}: not a readable PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(f"{path}: a {type(key).__name__}, but slimvit verifies Ed25519 only")
        return key
    raw = _decode_raw(data.strip())
    if raw is None:
        raise SigningError(f"{path}: not an Ed25519 public key (PEM, or 32 bytes as hex/base64)")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(public_key: Any) -> str:
    """First 16 hex digits of sha256 of the raw public key: tells apps which pinned key to use."""
    from cryptography.hazmat.primitives import serialization as ser

    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_problems(root: Path, manifest_bytes: bytes, public_key: Any) -> list[str]:
    """Why ``manifest.sig`` is not a valid signature of ``manifest_bytes`` by ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    path = root / SIGNATURE_NAME
    if path.is_symlink() or not path.is_file():
        return [f"{SIGNATURE_NAME} is missing (or not a regular file); sign with `slimvit sign`"]
    if path.stat().st_size > MAX_SIGNATURE_BYTES:
        return [f"{SIGNATURE_NAME} is over {MAX_SIGNATURE_BYTES} bytes"]
    try:
        sig = loads_strict(read_capped(path, SIGNATURE_NAME, MAX_SIGNATURE_BYTES, SigningError), SIGNATURE_NAME,
                           SigningError)
        if not isinstance(sig, dict):
            raise ValueError("not an object")
        raw = base64.b64decode(sig.get("signature", ""), validate=True)
    except (SigningError, ValueError, TypeError, UnicodeDecodeError, RecursionError, binascii.Error) as e:
        return [f"{SIGNATURE_NAME} is unreadable ({type(e).__name__})"]
    if sig.get("algorithm") != "ed25519":
        return [f'algorithm "{sig.get("algorithm")}" is not ed25519']
    problems = []
    if sig.get("key_id") != key_id(public_key):
        problems.append(f"signed by key {sig.get('key_id')}, not the given key {key_id(public_key)}")
    try:
        public_key.verify(raw, signed_message(manifest_bytes))
    except InvalidSignature:
        problems.append("Ed25519 signature does not match the manifest: the manifest was changed "
                        "after signing, or another key signed it")
    return problems


def _read_key_file(path: str | Path) -> bytes:
    # a regular file (no FIFO, no /dev/zero), at most 64 KiB read
    if not os.path.lexists(path):
        raise SigningError(f"cannot read key {path}: no such file")
    return read_capped(path, "key", MAX_KEY_BYTES, SigningError)


def _decode_raw(text: bytes) -> bytes | None:
    """32 raw key bytes written as 64 hex digits or as base64, else None."""
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        try:
            raw = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            return None
    return raw if len(raw) == 32 else None
