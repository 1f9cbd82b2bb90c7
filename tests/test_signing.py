"""Ed25519 signing: a signed bundle verifies with its public key; any change after signing, another
key, a missing or damaged signature, expiry and rollback are caught."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser

from exporter.bundle.keys import (
    CONTEXT,
    SIGNATURE_NAME,
    SigningError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from exporter.bundle.signing import parse_expiry, sign_bundle
from exporter.bundle.verify import BundleError, verify_bundle
from tests.conftest import flip_byte


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "release.key")


@pytest.fixture
def signed(real_bundle, keys, tmp_path) -> Path:
    b = Path(shutil.copytree(real_bundle, tmp_path / "b"))
    sign_bundle(b, keys[0])
    return b


def test_a_signed_bundle_verifies_with_its_public_key(signed, keys):
    report = verify_bundle(signed, keys[1])
    assert report.ok and report.signed is True
    sig = json.loads((signed / SIGNATURE_NAME).read_text())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == key_id(load_public_key(keys[1]))
    assert len(base64.b64decode(sig["signature"])) == 64
    assert (keys[0].stat().st_mode & 0o777) == 0o600


def test_the_signature_covers_the_exact_manifest_bytes(signed, keys):
    """What an app does (docs/security.md): verify context + file bytes, here with OpenSSL."""
    msg = signed.parent / "msg.bin"
    msg.write_bytes(CONTEXT + (signed / "manifest.json").read_bytes())
    sig = signed.parent / "sig.bin"
    sig.write_bytes(base64.b64decode(json.loads((signed / SIGNATURE_NAME).read_text())["signature"]))
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary")
    run = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys[1]), "-rawin",
                          "-in", str(msg), "-sigfile", str(sig)], capture_output=True, text=True)
    assert run.returncode == 0 and "Signature Verified Successfully" in run.stdout


def test_whitespace_change_after_signing_is_caught(signed, keys):
    m = signed / "manifest.json"
    m.write_bytes(m.read_bytes() + b"\n")
    report = verify_bundle(signed, keys[1])
    assert report.signed is False
    assert report.problems == ["signature: Ed25519 signature does not match the manifest: the manifest "
                               "was changed after signing, or another key signed it"]


def test_re_hashed_artifact_swap_is_caught_by_the_signature(signed, keys):
    """An attacker who fixes up sha256 and bytes in the manifest still cannot re-sign it."""
    from exporter.fileio import sha256_file

    flip_byte(signed)
    m = json.loads((signed / "manifest.json").read_text())
    art = m["variants"][0]["artifacts"][0]
    art["sha256"] = sha256_file(signed / art["path"])
    (signed / "manifest.json").write_text(json.dumps(m, indent=2))
    assert verify_bundle(signed).ok  # consistent, so only the signature can tell
    report = verify_bundle(signed, keys[1])
    assert not report.ok and report.signed is False


def test_another_key_is_refused(signed, tmp_path):
    _, other_pub = generate_keypair(tmp_path / "other.key")
    problems = verify_bundle(signed, other_pub).problems
    assert len(problems) == 2
    assert "not the given key" in problems[0] and "does not match" in problems[1]


@pytest.mark.parametrize("damage", ["missing", "garbage", "not_base64", "wrong_algorithm", "symlink"])
def test_missing_or_damaged_signature_files(signed, keys, damage):
    sig = signed / SIGNATURE_NAME
    doc = json.loads(sig.read_text())
    if damage == "missing":
        sig.unlink()
    elif damage == "garbage":
        sig.write_bytes(b"\x00\xff" * 10)
    elif damage == "not_base64":
        sig.write_text(json.dumps({**doc, "signature": "!!not base64!!"}))
    elif damage == "wrong_algorithm":
        sig.write_text(json.dumps({**doc, "algorithm": "none"}))
    else:
        shutil.move(sig, signed.parent / "real.sig")
        sig.symlink_to(signed.parent / "real.sig")
    report = verify_bundle(signed, keys[1])
    assert report.signed is False and len(report.problems) >= 1
    assert all(p.startswith("signature:") or "symlink" in p for p in report.problems)


def test_unsigned_check_warns_that_a_signature_was_not_checked(signed):
    report = verify_bundle(signed)
    assert report.ok and report.signed is None
    assert report.warnings == ["manifest.sig present but not checked: pass --public-key"]


def test_expiry_and_bundle_version_are_signed_in(real_bundle, keys, tmp_path):
    b = Path(shutil.copytree(real_bundle, tmp_path / "b"))
    sign_bundle(b, keys[0], expires="30d", bundle_version=7)
    m = json.loads((b / "manifest.json").read_text())
    when = datetime.fromisoformat(m["expires"])
    assert m["bundle_version"] == 7
    assert timedelta(days=29) < when - datetime.now(UTC) <= timedelta(days=30)
    assert verify_bundle(b, keys[1], min_bundle_version=7).ok
    assert "rollback" in verify_bundle(b, keys[1], min_bundle_version=8).problems[0]
    late = verify_bundle(b, keys[1], now=when + timedelta(seconds=1))
    assert late.signed is True and "expired" in late.problems[0]
    with pytest.raises(SigningError, match="only increase"):
        sign_bundle(b, keys[0], bundle_version=6)


def test_a_broken_bundle_is_never_signed(real_bundle, keys, tmp_path):
    b = Path(shutil.copytree(real_bundle, tmp_path / "b"))
    flip_byte(b)
    with pytest.raises(BundleError, match="1 problem"):
        sign_bundle(b, keys[0])
    assert not (b / SIGNATURE_NAME).exists()


def test_keys(keys, tmp_path, monkeypatch):
    with pytest.raises(SigningError, match="refusing to overwrite"):
        generate_keypair(keys[0])
    raw = load_public_key(keys[1]).public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    (tmp_path / "raw.hex").write_text(raw.hex() + "\n")
    assert key_id(load_public_key(tmp_path / "raw.hex")) == key_id(load_public_key(keys[1]))
    for bad, match in [(b"hello", "not an Ed25519 public key"), (b"-----BEGIN PUBLIC KEY-----\nx", "PEM")]:
        (tmp_path / "bad.pub").write_bytes(bad)
        with pytest.raises(SigningError, match=match):
            load_public_key(tmp_path / "bad.pub")
    with pytest.raises(SigningError, match="not a PEM private key"):
        load_private_key(keys[1])
    with pytest.raises(SigningError, match="cannot read key"):
        load_private_key(tmp_path / "nope.key")
    monkeypatch.setenv("SLIMVIT_KEY_PASSPHRASE", "correct horse")
    enc, _ = generate_keypair(tmp_path / "enc.key")
    assert b"ENCRYPTED" in enc.read_bytes()
    load_private_key(enc)
    monkeypatch.setenv("SLIMVIT_KEY_PASSPHRASE", "wrong")
    with pytest.raises(SigningError, match="wrong passphrase"):
        load_private_key(enc)
    monkeypatch.delenv("SLIMVIT_KEY_PASSPHRASE")
    with pytest.raises(SigningError, match="SLIMVIT_KEY_PASSPHRASE"):
        load_private_key(enc)


def test_parse_expiry():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_expiry("12h", now) == "2030-01-01T12:00:00Z"
    assert parse_expiry("2030-02-01T00:00:00+01:00", now) == "2030-01-31T23:00:00Z"
    for bad in ("tomorrow", "2029-01-01T00:00:00Z", "2031-01-01"):
        with pytest.raises(SigningError):
            parse_expiry(bad, now)


def test_cli_keygen_sign_verify(real_bundle, tmp_path, monkeypatch, capsys):
    import sys

    from exporter.cli import main

    b = Path(shutil.copytree(real_bundle, tmp_path / "b"))

    def cli(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["slimvit", *args])
        try:
            main()
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    assert cli("keygen", str(tmp_path / "k")) == 0
    assert cli("sign", str(b), "--key", str(tmp_path / "k"), "--expires", "1d") == 0
    assert cli("verify", str(b), "--public-key", str(tmp_path / "k.pub")) == 0
    (b / "manifest.json").write_bytes((b / "manifest.json").read_bytes().replace(b'"tiny"', b'"tinz"'))
    assert cli("verify", str(b), "--public-key", str(tmp_path / "k.pub")) == 1
    assert cli("sign", str(b), "--key", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert "signature valid" in err and "signature INVALID" in err and "cannot read key" in err
