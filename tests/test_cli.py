"""The CLI as a user meets it: tables on success, one clear line and exit code 2 on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.checkpoints import save_checkpoint
from tests.conftest import tiny_model

SLIMVIT = [sys.executable, "-m", "exporter.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SLIMVIT, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(tiny_model(extra_resolutions=(24,)), path)
    return path


def test_variants_prints_the_grid_with_params_and_macs(ckpt):
    r = run("variants", str(ckpt), "--widths", "0.5,1.0", "--keep-rates", "1.0,0.5", "--resolutions", "32,24")
    assert r.returncode == 0, r.stderr
    assert "8 variants" in r.stdout
    assert "w32_k50_r24" in r.stdout and "214,154" in r.stdout  # full-width params (cross-checked in test_extract)


def test_export_writes_a_bundle_and_prints_the_table(ckpt, tmp_path):
    out = tmp_path / "bundle"
    r = run("export", str(ckpt), "--out", str(out), "--widths", "0.5,1.0", "--keep-rates", "1.0,0.7")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [v["id"] for v in manifest["variants"]] == ["w64_k100_r32", "w64_k70_r32", "w32_k100_r32", "w32_k70_r32"]
    assert "w32_k70_r32" in r.stdout
    # where the artifact cache is and how big, and how to empty it
    err = " ".join(r.stderr.split())
    assert "artifact cache: " in err and "entries" in err and "MB" in err and "slimvit cache clear" in err
    assert not list(tmp_path.glob(".*slimvit-cache"))  # nothing hidden beside the bundle
    assert "policy: " in err and "tiers, the front of onnx fp32 (cost = MACs until `slimvit profile`" in err


@pytest.mark.parametrize("args,message", [
    (["export", "{missing}", "--out", "{out}"], "checkpoint not found"),
    (["export", "{ckpt}", "--out", "{out}", "--widths", "0.01"], "rounds to 0 heads"),
    (["export", "{ckpt}", "--out", "{out}", "--formats", "onxx"], 'did you mean "onnx"'),
    (["export", "{ckpt}", "--out", "{out}", "--keep-rates", "1.5"], "keep rate must be in (0, 1]"),
    (["export", "{ckpt}", "--out", "{out}", "--resolutions", "30"], "multiple of the patch size"),
    (["export", "{ckpt}", "--out", "{out}", "--slicing", "heds"], 'did you mean "heads"'),
    (["export", "{garbage}", "--out", "{out}"], "truncated or corrupt"),
])
def test_user_errors_are_one_line_without_traceback(ckpt, tmp_path, args, message):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    subst = {"{ckpt}": str(ckpt), "{out}": str(tmp_path / "out"), "{missing}": str(tmp_path / "nope.pt"),
             "{garbage}": str(garbage)}
    r = run(*[subst.get(a, a) for a in args])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unknown_options_are_usage_errors_not_tracebacks():
    r = run("train", "--bogus")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "No such option: --bogus" in r.stderr
