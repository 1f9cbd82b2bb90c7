"""Crash safety and resume: `slimvit export` killed mid-run leaves the previous bundle intact and
verifying; `--resume` finishes the rest without redoing the artifacts that were done."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.bundle.verify import verify_bundle
from exporter.checkpoints import save_checkpoint
from exporter.convert.artifact import Artifact
from exporter.convert.cache import ArtifactCache, publish_bundle, stage_bundle
from exporter.fileio import sha256_file
from tests.conftest import build_real_bundle, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def copy_of_real_bundle(where: Path) -> Path:
    return Path(shutil.copytree(build_real_bundle(), where))


def artifact_paths(bundle: Path) -> list[str]:
    m = json.loads((bundle / "manifest.json").read_text())
    return [a["path"] for v in m["variants"] for a in v["artifacts"]]


def test_publish_swaps_in_the_new_bundle_and_carries_over_unlisted_files(tmp_path):
    final = copy_of_real_bundle(tmp_path / "b")
    (final / "notes.txt").write_text("kept")
    (final / "manifest.sig").write_text("{}")  # an old signature must not sign the new manifest
    stage = stage_bundle(final)
    shutil.copytree(build_real_bundle(), stage, dirs_exist_ok=True)
    m = json.loads((stage / "manifest.json").read_text())
    m["bundle_version"] = 2
    (stage / "manifest.json").write_text(json.dumps(m))
    publish_bundle(stage, final)
    assert not stage.exists() and json.loads((final / "manifest.json").read_text())["bundle_version"] == 2
    assert (final / "notes.txt").read_text() == "kept" and not (final / "manifest.sig").exists()
    assert verify_bundle(final).ok
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_publish_into_a_directory_that_is_not_a_bundle_moves_files_in(tmp_path):
    final = tmp_path / "work"
    (final / "onnx").mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"weights")
    (final / "onnx" / "old.onnx").write_bytes(b"old")
    stage = stage_bundle(final)
    shutil.copytree(build_real_bundle(), stage, dirs_exist_ok=True)
    publish_bundle(stage, final)
    assert verify_bundle(final).ok and not stage.exists()
    assert (final / "model.safetensors").read_bytes() == b"weights" and (final / "onnx" / "old.onnx").exists()


def test_staging_of_dead_exports_is_cleaned_and_a_bundle_left_aside_is_restored(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    aside = copy_of_real_bundle(tmp_path / f".b.previous-{dead}")
    (tmp_path / f".b.staging-{dead}").mkdir()
    stage = stage_bundle(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", stage.name])
    assert not aside.exists() and verify_bundle(tmp_path / "b").ok


def test_cache_keys_hits_and_damaged_entries(tmp_path):
    src = build_real_bundle()
    rel = artifact_paths(src)[0]
    entry = next(a for v in json.loads((src / "manifest.json").read_text())["variants"]
                 for a in v["artifacts"] if a["path"] == rel)
    cache = ArtifactCache(tmp_path / "cache", resume=True)
    key = cache.key(weights="w", variant="v", format="onnx", precision="fp32")
    assert key != cache.key(weights="w", variant="v", format="onnx", precision="fp16")
    assert cache.fetch(key, tmp_path / "out" / rel) is None
    cache.store(key, src / rel, Artifact.from_manifest(entry))
    assert cache.fetch(key, tmp_path / "out" / rel).to_manifest() == entry and cache.hits == [key]
    assert sha256_file(tmp_path / "out" / rel) == entry["sha256"]
    assert not ArtifactCache(tmp_path / "cache").fetch(key, tmp_path / "x")  # resume off: no reads
    cached = next((tmp_path / "cache").rglob(Path(rel).name))
    cached.write_bytes(cached.read_bytes()[:-1])  # a damaged entry is a miss, not a bad artifact
    assert cache.fetch(key, tmp_path / "again" / rel) is None


def run_export(ckpt: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "exporter.cli", "export", str(ckpt), "--out", str(out),
           "--widths", "0.5,1.0", "--keep-rates", "1.0", "--precisions", "fp32,fp16", *extra]
    # The default cache: $XDG_CACHE_HOME/slimvit/artifacts (here a folder beside --out).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(out.parent / "xdg")}
    env.pop("SLIMVIT_CACHE_DIR", None)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def cache_entries(cache: Path) -> dict[str, Path]:
    """Finished cache entries: one per FP32 artifact, one per variant's group of precisions."""
    return {p.parent.name: p.parent for p in cache.glob("*/*/entry.json")
            if not p.parent.name.startswith(".")}  # not an entry still being written


def inodes(entries: dict[str, Path]) -> dict[int, str]:
    return {f.stat().st_ino: key for key, d in entries.items() for f in d.rglob("*")
            if f.is_file() and f.name != "entry.json"}


def test_kill_mid_export_keeps_the_previous_bundle_and_resume_finishes_it(tmp_path):
    out = copy_of_real_bundle(tmp_path / "bundle")  # the previous bundle: other weights
    before = {p: (out / p).read_bytes() for p in ["manifest.json", *artifact_paths(out)]}
    ckpt = save_checkpoint(tiny_model(seed=1, depth=2), tmp_path / "new.safetensors")
    cache = tmp_path / "xdg" / "slimvit" / "artifacts"

    proc = run_export(ckpt, out)
    deadline = time.monotonic() + 240
    # Kill once the first variant is done: its FP32 artifact and its FP16 group.
    while len(cache_entries(cache)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    done = cache_entries(cache)
    assert len(done) == 2
    # The previous bundle: every byte as it was, and it verifies.
    assert {p: (out / p).read_bytes() for p in before} == before
    assert verify_bundle(out).ok

    proc = run_export(ckpt, out, "--resume")
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err.decode()[-2000:]
    report = verify_bundle(out)
    assert report.ok and report.artifacts == 5  # 2 variants x (fp32 + fp16) ONNX + policy vectors
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["name"] == "new" and len(m["variants"]) == 2
    # Artifacts finished before the kill are hard links of their cache entries (reused); the rest
    # were exported by the resumed run (the cache holds copies of those, other inodes).
    entries = cache_entries(cache)
    assert len(entries) == 4
    cached = inodes(entries)
    reused = [cached[os.stat(out / p).st_ino] for p in artifact_paths(out) if os.stat(out / p).st_ino in cached]
    assert len(reused) == 2 and set(reused) == set(done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "new.safetensors", "xdg"]


@pytest.mark.parametrize("kill_after", [0.5])
def test_kill_before_any_artifact_leaves_nothing_but_the_previous_bundle(tmp_path, kill_after):
    out = copy_of_real_bundle(tmp_path / "bundle")
    before = (out / "manifest.json").read_bytes()
    ckpt = save_checkpoint(tiny_model(seed=2, depth=2), tmp_path / "new.safetensors")
    proc = run_export(ckpt, out)
    time.sleep(kill_after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "manifest.json").read_bytes() == before and verify_bundle(out).ok
