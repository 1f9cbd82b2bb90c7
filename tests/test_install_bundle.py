"""Installing a bundle into the demo apps: verified first, the app's format only, atomic."""

import json

import pytest

from exporter.bundle.install import install_bundle
from exporter.bundle.verify import BundleError
from exporter.fileio import sha256_file
from tests.profiled_bundle import exported_bundle


@pytest.fixture
def bundle():
    """The shared tiny ONNX + TFLite bundle of the profiling tests (built once per run)."""
    return exported_bundle()


def test_android_gets_the_manifest_and_only_tflite_artifacts(bundle, tmp_path):
    dest = install_bundle(bundle, "android", root=tmp_path)
    manifest = json.loads((dest / "manifest.json").read_text())
    tflite = [a for v in manifest["variants"] for a in v["artifacts"] if a["format"] == "tflite"]
    assert tflite
    for a in tflite:
        assert sha256_file(dest / a["path"]) == a["sha256"]
    assert not list(dest.rglob("*.onnx"))
    assert (dest / "manifest.schema.json").exists()
    assert (tmp_path / "android_demo/app/src/main/assets/sample.png").stat().st_size > 0


def test_a_tampered_bundle_is_not_installed(bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    victim = next(bad.rglob("*.tflite"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        install_bundle(bad, "android", root=tmp_path / "app")
    assert not (tmp_path / "app").exists()


def test_ios_needs_coreml_artifacts(bundle, tmp_path):
    with pytest.raises(Exception, match="no coreml artifacts"):
        install_bundle(bundle, "ios", root=tmp_path)


def test_install_packed_writes_only_the_chosen_tflite_artifacts(bundle, tmp_path):
    from exporter.bundle.install import install_packed
    from exporter.bundle.packfile import PackReader

    out = install_packed(bundle, "android", root=tmp_path, precisions="fp32")
    assert out == tmp_path / "android_demo/app/src/main/assets/bundle.svpack"
    reader = PackReader.open(out)
    paths = [f.path for f in reader.files]
    assert "manifest.json" in paths and any(p.endswith(".tflite") for p in paths)
    assert not [p for p in paths if p.endswith(".onnx")]
    manifest = json.loads(reader.read("manifest.json"))
    for a in (a for v in manifest["variants"] for a in v["artifacts"] if a["format"] == "tflite"):
        assert reader.by_path[a["path"]].sha256 == a["sha256"]


def test_install_packed_into_the_users_own_app(bundle, tmp_path):
    from exporter.errors import ConfigError
    from exporter.bundle.install import install_packed

    out = install_packed(bundle, "android", root=tmp_path / "repo", dest=tmp_path / "myapp/assets")
    assert out == tmp_path / "myapp/assets/bundle.svpack" and out.stat().st_size > 0
    assert not (tmp_path / "repo").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        install_packed(bundle, "android", dest=tmp_path / "file")
    with pytest.raises(ConfigError, match='"w99_k100_r32" is not in this bundle'):
        install_packed(bundle, "android", root=tmp_path, variants="w99_k100_r32")
    with pytest.raises(ConfigError, match="no coreml artifacts"):
        install_packed(bundle, "ios", root=tmp_path)


def test_cli_install_with_dest_and_filters(bundle, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cmd = [sys.executable, "-m", "exporter.cli", "bundle", "install-android", str(bundle)]
    r = subprocess.run([*cmd, "--dest", str(tmp_path / "app"), "--precisions", "fp32"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "app" / "bundle.svpack").stat().st_size > 0 and "bundle.svpack" in r.stdout
    r = subprocess.run([*cmd, "--unpacked", "--dest", str(tmp_path / "x")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--unpacked" in r.stderr
    assert not (tmp_path / "x").exists()
