"""`verify_bundle`: a real exported bundle passes; every kind of tampering is caught, and a bundle
with several problems gets all of them listed."""

from __future__ import annotations

import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import onnx
import pytest

from exporter.bundle.verify import BundleError, Limits, check_bundle, verify_bundle
from exporter.fileio import sha256_file
from tests.conftest import first_artifact, flip_byte, manifest_of, rewrite


@pytest.fixture
def bundle(real_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(real_bundle, tmp_path / "b", symlinks=True))


def truncate(b):
    p = first_artifact(b)
    p.write_bytes(p.read_bytes()[:-100])
    return "bytes but the manifest says"


def dotdot_path(b):
    rewrite(b, lambda m: m["variants"][0]["artifacts"][0].update(path="../outside.onnx"))
    return "'..'"


def absolute_path(b):
    rewrite(b, lambda m: m["variants"][0]["artifacts"][0].update(path="/etc/passwd"))
    return "absolute path"


def backslash_path(b):
    rewrite(b, lambda m: m["variants"][0]["artifacts"][0].update(path="onnx\\..\\..\\x.onnx"))
    return "backslash"


def symlinked_artifact(b):
    p = first_artifact(b)
    real = b.parent / "elsewhere.onnx"
    shutil.move(p, real)
    p.symlink_to(real)  # same bytes, same hash: only the link gives it away
    return "is a symlink"


def symlinked_directory(b):
    (b / "onnx").rename(b.parent / "onnx_real")
    (b / "onnx").symlink_to(b.parent / "onnx_real")
    return "onnx is a symlink"


def stray_symlink(b):
    (b / "extra").symlink_to("/etc/passwd")
    return "extra is a symlink"


def wrong_size(b):
    rewrite(b, lambda m: m["variants"][0]["artifacts"][0].update(bytes=12345))
    return "but the manifest says 12345"


def missing_artifact(b):
    first_artifact(b).unlink()
    return "missing from the bundle"


def schema_break(b):
    rewrite(b, lambda m: m.pop("labels"))
    return "'labels' is a required property"


def wrong_type(b):
    rewrite(b, lambda m: m["variants"][0].update(params="many"))
    return "schema: variants/0/params"


def unknown_major(b):
    rewrite(b, lambda m: m.update(schema_version="2.0"))
    return "reads major version 1 only"


def expired(b):
    rewrite(b, lambda m: m.update(expires="2020-01-01T00:00:00Z"))
    return "bundle expired at 2020-01-01"


def expiry_without_zone(b):
    rewrite(b, lambda m: m.update(expires="2999-01-01T00:00:00"))
    return "with a time zone"


def manifest_not_json(b):
    (b / "manifest.json").write_bytes(b'{"schema_version": "1.0", ')
    return "is not valid JSON"


def manifest_nested(b):
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    return "nests arrays/objects deeper than 64 levels"


def manifest_not_object(b):
    (b / "manifest.json").write_text("[1, 2]")
    return "must hold a JSON object"


def manifest_missing(b):
    (b / "manifest.json").unlink()
    return "manifest.json is missing"


def manifest_symlink(b):
    (b / "manifest.json").rename(b.parent / "m.json")
    (b / "manifest.json").symlink_to(b.parent / "m.json")
    return "not a regular file"


def manifest_oversize(b):
    rewrite(b, lambda m: m["model"]["config"].update(padding="x" * (5 << 20)))
    return "over the 4194304 cap"


def duplicate_path(b):
    def dup(m):
        m["variants"][1]["artifacts"][0].update(m["variants"][0]["artifacts"][0])
    rewrite(b, dup)
    return "listed twice"


def control_file_path(b):
    rewrite(b, lambda m: m["variants"][0]["artifacts"][0].update(path="manifest.json"))
    return "control file"


def newer_opset(b):
    """A consistent bundle (hash and size match) whose ONNX needs a newer runtime than apps ship."""
    p = first_artifact(b)
    model = onnx.load(str(p))
    model.opset_import[0].version = 30
    p.write_bytes(model.SerializeToString())
    rewrite(b, lambda m: m["variants"][0]["artifacts"][0].update(sha256=sha256_file(p),
                                                                  bytes=p.stat().st_size))
    return "ONNX opset 30 is outside"


def not_onnx(b):
    p = first_artifact(b)
    p.write_bytes(b"\xff" * 64)
    rewrite(b, lambda m: m["variants"][0]["artifacts"][0].update(sha256=sha256_file(p), bytes=64))
    return "not a readable ONNX model"


def policy_vectors_edited(b):
    p = b / manifest_of(b)["policy_vectors"]["path"]
    p.write_text(p.read_text().replace("cases", "casez", 1))
    return "policy_vectors (policy_vectors.json): sha256"


TAMPERS = [flip_byte, truncate, dotdot_path, absolute_path, backslash_path, symlinked_artifact,
           symlinked_directory, stray_symlink, wrong_size, missing_artifact, schema_break,
           wrong_type, unknown_major, expired, expiry_without_zone, manifest_not_json,
           manifest_nested, manifest_not_object, manifest_missing, manifest_symlink,
           manifest_oversize, duplicate_path, control_file_path, newer_opset, not_onnx,
           policy_vectors_edited]


def test_an_untouched_bundle_passes(real_bundle):
    report = check_bundle(real_bundle)
    assert report.ok and report.artifacts == 3 and report.bundle_version == 1  # 2 models + policy vectors
    assert report.warnings == [] and report.signed is None


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__)
def test_every_tampering_is_caught(bundle, tamper):
    expected = tamper(bundle)
    report = verify_bundle(bundle)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    with pytest.raises(BundleError, match="failed verification"):
        check_bundle(bundle)


def test_every_problem_is_listed_not_only_the_first(bundle):
    flip_byte(bundle)
    m = manifest_of(bundle)
    second = bundle / m["variants"][1]["artifacts"][0]["path"]
    second.write_bytes(second.read_bytes()[:10])
    rewrite(bundle, lambda m: m.update(expires="2020-01-01T00:00:00Z", schema_version="2.0"))
    (bundle / "stray").symlink_to("/etc/passwd")
    problems = verify_bundle(bundle).problems
    # hash; size + hash; expiry; major + the schema's pattern; symlink
    assert len(problems) == 7, problems
    assert sum("sha256" in p for p in problems) == 2
    assert sum("schema_version" in p for p in problems) == 2


def test_rollback_against_a_version_seen_before(real_bundle):
    assert verify_bundle(real_bundle, min_bundle_version=1).ok
    problems = verify_bundle(real_bundle, min_bundle_version=2).problems
    assert problems == ["bundle_version 1 is older than 2 seen before: a rollback; keep the newer bundle"]


def test_expiry_is_checked_against_the_given_time(bundle):
    rewrite(bundle, lambda m: m.update(expires="2030-06-01T00:00:00+00:00"))
    assert verify_bundle(bundle, now=datetime(2030, 5, 31, tzinfo=UTC)).ok
    assert not verify_bundle(bundle, now=datetime(2030, 6, 1, tzinfo=UTC)).ok


def test_size_caps(real_bundle):
    report = verify_bundle(real_bundle, limits=Limits(artifact_bytes=1000, bundle_bytes=10))
    assert sum("artifact cap" in p for p in report.problems) == 3  # 2 models + policy vectors
    assert any("bundle cap" in p for p in report.problems)


def test_unlisted_files_are_warnings_not_problems(bundle):
    (bundle / "notes.txt").write_text("hello")
    report = verify_bundle(bundle)
    assert report.ok and report.warnings == ["notes.txt is in no manifest entry; apps ignore it"]


def test_cli_exits_1_and_prints_every_problem(bundle, monkeypatch, capsys):
    from exporter.cli import main

    flip_byte(bundle)
    missing_artifact_of_second = bundle / manifest_of(bundle)["variants"][1]["artifacts"][0]["path"]
    missing_artifact_of_second.unlink()
    monkeypatch.setattr(sys, "argv", ["slimvit", "verify", str(bundle), "--json"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and len(report["problems"]) == 2
    assert report["artifacts"] == 2  # the intact model and the policy vectors
