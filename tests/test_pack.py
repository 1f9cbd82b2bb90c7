"""`slimvit pack` / `unpack`: byte-identical round trips, the shared conformance vectors, and every
malformed or tampered pack refused with one line before anything is written."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.errors import ConfigError
from exporter.bundle.pack import Selection, build_pack, pack_bundle
from exporter.bundle.packfile import PackError, PackLimits, PackReader
from exporter.bundle.unpack import sign_pack, unpack, verify_pack

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "conformance" / "pack_vectors.json"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """Two widths x two keep rates, ONNX fp32 and int8-dynamic."""
    import torch

    from exporter.bundle.export import export_bundle
    from exporter.checkpoints.load import LoadedModel
    from exporter.nn.config import VariantGrid
    from exporter.convert.quantize.pipeline import QuantizeOptions
    from tests.conftest import tiny_model

    out = tmp_path_factory.mktemp("pack") / "bundle"
    loaded = LoadedModel(tiny_model(depth=2), "tiny", "slimvit", [str(i) for i in range(10)])
    grid = VariantGrid(widths=(0.5, 1.0), keep_rates=(1.0, 0.5), resolutions=(32,))
    with torch.no_grad():
        export_bundle(loaded, grid, out, quantize=QuantizeOptions(precisions=("fp32", "int8-dynamic")))
    return out


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_is_byte_identical_and_smaller(bundle, tmp_path):
    stats = pack_bundle(bundle, tmp_path / "b.svpack")
    written = unpack(tmp_path / "b.svpack", tmp_path / "out")
    assert files_of(tmp_path / "out") == files_of(bundle)
    assert sorted(written) == sorted(files_of(bundle))
    fp32 = stats.groups[("onnx", "fp32")]
    assert fp32.files == 4 and fp32.bytes > 2.5 * fp32.largest
    # The narrow fp32 weights are slices of the wide ones: the group costs about its largest file.
    assert fp32.packed < 1.05 * fp32.largest, fp32
    assert (tmp_path / "b.svpack").stat().st_size < 0.5 * sum(len(b) for b in files_of(bundle).values())
    report = verify_pack(tmp_path / "b.svpack")
    assert report.ok, report.problems


def test_filters_pack_and_unpack_only_the_chosen_artifacts(bundle, tmp_path):
    pack_bundle(bundle, tmp_path / "f.svpack", Selection.parse(precisions="fp32"))
    reader = PackReader.open(tmp_path / "f.svpack")
    assert not [f for f in reader.files if "int8" in f.path]
    unpack(tmp_path / "f.svpack", tmp_path / "one", Selection.parse(variants="w32_k50_r32"))
    got = files_of(tmp_path / "one")
    assert [p for p in got if p.startswith("onnx/")] == ["onnx/w32_k50_r32.fp32.onnx"]
    assert got["manifest.json"] == (bundle / "manifest.json").read_bytes()
    report = verify_pack(tmp_path / "f.svpack")
    assert report.ok and any("not in this pack" in w for w in report.warnings)
    with pytest.raises(ConfigError, match='"fp33" is not in this bundle.*did you mean "fp32"'):
        pack_bundle(bundle, tmp_path / "x.svpack", Selection.parse(precisions="fp33"))
    assert not (tmp_path / "x.svpack").exists()


def tampered_pack(bundle: Path, tmp_path: Path) -> Path:
    """A pack that is self-consistent (header hashes match) but rebuilds an artifact the manifest
    does not pin: what an attacker who cannot re-sign the manifest could ship."""
    from exporter.bundle.pack import read_manifest_entries

    copy = Path(shutil.copytree(bundle, tmp_path / "evil"))
    victim = copy / "onnx" / "w32_k100_r32.fp32.onnx"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    out = tmp_path / "evil.svpack"
    out.write_bytes(build_pack(copy, read_manifest_entries(copy))[0])
    return out


def test_a_pack_that_disagrees_with_its_manifest_is_refused(bundle, tmp_path):
    bad = tampered_pack(bundle, tmp_path)
    with pytest.raises(PackError, match="disagree with the manifest") as e:
        unpack(bad, tmp_path / "out")
    assert e.value.code == "hash" and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    report = verify_pack(bad)
    assert not report.ok and "w32_k100_r32.fp32.onnx" in report.problems[0]


def test_sign_a_pack_then_verify_it_and_refuse_a_flipped_byte(bundle, tmp_path):
    from exporter.bundle.keys import generate_keypair

    private, public = generate_keypair(tmp_path / "key")
    pack_bundle(bundle, tmp_path / "s.svpack")
    sign_pack(tmp_path / "s.svpack", private, bundle_version=7)
    report = verify_pack(tmp_path / "s.svpack", public)
    assert report.ok and report.signed and report.bundle_version == 7, report.problems
    data = bytearray((tmp_path / "s.svpack").read_bytes())
    data[-100] ^= 0xFF  # inside the last group's blobs
    (tmp_path / "flip.svpack").write_bytes(bytes(data))
    assert not verify_pack(tmp_path / "flip.svpack", public).ok
    with pytest.raises(PackError):
        unpack(tmp_path / "flip.svpack", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    pack_bundle(bundle, tmp_path / "part.svpack", Selection.parse(formats="onnx", precisions="fp32"))
    with pytest.raises(ConfigError, match="packed with filters"):
        sign_pack(tmp_path / "part.svpack", private)


def test_the_tampered_pack_is_refused_by_the_cli_with_one_line(bundle, tmp_path):
    bad = tampered_pack(bundle, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "exporter.cli"]
    r = subprocess.run([*run, "unpack", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([*run, "verify", str(bad)], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "does not match" not in r.stdout and "disagree" not in r.stderr
    (tmp_path / "file").write_text("x")
    r = subprocess.run([*run, "unpack", str(bad), "--out", str(tmp_path / "file")], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and "not an empty directory" in r.stderr and r.stderr.count("\n") == 1


def test_a_fifo_or_a_directory_is_not_a_pack(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PackError, match="not a regular file"):
        PackReader.open(tmp_path / "fifo")
    with pytest.raises(PackError, match="not a regular file"):
        PackReader.open(tmp_path)


def test_the_committed_vectors_are_what_the_generator_writes(tmp_path):
    from exporter.bundle.pack_vectors import write_vectors

    assert write_vectors(tmp_path / "v.json").read_text(encoding="utf-8") == VECTORS.read_text(encoding="utf-8")


def _cases() -> list[dict]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_conformance_vector(case, tmp_path):
    """What every port does: open, check every op stream, rebuild each file, and only then write."""
    limits = PackLimits(case["max_file_bytes"], case["max_total_bytes"])
    (tmp_path / "p.svpack").write_bytes(base64.b64decode(case["pack"]))
    try:
        reader = PackReader.open(tmp_path / "p.svpack", limits)
        for f in reader.files:
            reader.ops(f)
        got = {f.path: reader.read(f.path) for f in reader.files}
    except PackError as e:
        assert case.get("error") == e.code, f"refused as {e.code}: {e}"
        assert "\n" not in str(e)
        return
    assert "error" not in case, f"accepted a pack that must be refused ({case['error']})"
    assert {p: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in got.items()} == case["files"]
    regions = {f.path: (list(r) if (r := reader.region(f.path)) else None) for f in reader.files}
    assert regions == case["regions"]
    for path, where in regions.items():
        if where:  # served in place: aligned, and the very bytes a rebuild gives
            assert where[0] % 64 == 0 and bytes(reader.view(path)) == got[path]


def test_the_widest_artifact_opens_in_place_and_a_changed_byte_is_refused(bundle, tmp_path):
    """Each group's largest artifact is one raw blob: a runtime opens it from the mapped pack (no
    copy); the hash of those bytes is still checked unless the caller says it checked them."""
    import onnxruntime as ort

    pack_bundle(bundle, tmp_path / "b.svpack")
    reader = PackReader.open(tmp_path / "b.svpack")
    widest = max((f for f in reader.files if f.path.endswith(".fp32.onnx")), key=lambda f: f.size)
    offset, length = reader.region(widest.path)
    assert offset % 64 == 0 and length == widest.size
    view = reader.view(widest.path)
    assert view.obj is not None and bytes(view) == (bundle / widest.path).read_bytes()
    session = ort.InferenceSession(bytes(view), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[-1] == 32
    assert reader.region("manifest.json") is None  # everything else is rebuilt
    data = bytearray((tmp_path / "b.svpack").read_bytes())
    data[offset + length // 2] ^= 0x10
    (tmp_path / "bad.svpack").write_bytes(bytes(data))
    bad = PackReader.open(tmp_path / "bad.svpack")
    with pytest.raises(PackError, match="another sha256") as e:
        bad.view(widest.path)
    assert e.value.code == "hash"
    assert len(bad.view(widest.path, check_hash=False)) == length


def test_verify_excuses_only_the_absence_of_artifacts_it_is_told_are_left_out(bundle, tmp_path):
    """verify_pack tells verify_bundle which artifacts a filtered pack leaves out (no message
    matching): their absence is excused, nothing else about them or about the others."""
    from exporter.bundle.verify import verify_bundle

    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    gone = "onnx/w32_k50_r32.int8-dynamic.onnx"
    (copy / gone).unlink()
    assert not verify_bundle(copy).ok
    assert verify_bundle(copy, absent={gone}).ok
    other = copy / "onnx" / "w32_k100_r32.fp32.onnx"
    other.write_bytes(other.read_bytes()[:-1])
    report = verify_bundle(copy, absent={gone, "onnx/w32_k100_r32.fp32.onnx"})
    assert not report.ok and any("w32_k100_r32.fp32" in p for p in report.problems)


def test_random_damage_to_a_real_pack_is_refused_or_rebuilds_exactly():
    """Flip, cut or splice bytes of a real pack: the reader raises PackError (one line) or, when
    the damage missed everything it reads, rebuilds the very same files; never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = next(c for c in _cases() if c["name"].startswith("real encoder"))
    pack = base64.b64decode(good["pack"])

    @settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(pack) - 1), st.integers(0, 255)), min_size=1, max_size=4),
           st.integers(0, len(pack)))
    def damaged(edits, cut):
        data = bytearray(pack)
        for pos, value in edits:
            data[pos] = value
        data = bytes(data[:max(cut, 1)])
        try:
            reader = PackReader(data, PackLimits(1 << 20, 1 << 22))
            got = {f.path: reader.read(f.path) for f in reader.files}
        except PackError as e:
            assert "\n" not in str(e) and e.code in ("format", "truncated", "range", "cap", "path", "hash")
            return
        # A damaged path name can survive (the manifest check catches it, not the header); the
        # bytes cannot: every file rebuilt is one of the pack's true files.
        shas = {f["sha256"] for f in good["files"].values()}
        for path, d in got.items():
            assert hashlib.sha256(d).hexdigest() in shas, path

    damaged()


def with_tree_artifact(bundle: Path, tmp_path: Path, tamper: bool = False) -> Path:
    """A copy of the bundle whose manifest also pins a directory artifact (an .mlpackage-like tree,
    hashed with sha256_tree), optionally with one of its files changed after hashing."""
    from exporter.fileio import sha256_tree

    copy = Path(shutil.copytree(bundle, tmp_path / ("tampered" if tamper else "tree")))
    tree = copy / "coreml" / "w64_k100_r32.fp32.mlpackage"
    (tree / "Data" / "weights").mkdir(parents=True)
    (tree / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}')
    (tree / "Data" / "weights" / "weight.bin").write_bytes((copy / "onnx" / "w64_k100_r32.fp32.onnx").read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"][0]["artifacts"].append({**manifest["variants"][0]["artifacts"][0], "format": "coreml",
                                                 "precision": "fp32",
                                                 "path": "coreml/w64_k100_r32.fp32.mlpackage",
                                                 "sha256": sha256_tree(tree), "bytes": sum(
                                                     p.stat().st_size for p in tree.rglob("*") if p.is_file())})
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if tamper:
        (tree / "Manifest.json").write_text('{"fileFormatVersion": "9.9.9"}')
    return copy


def test_directory_artifacts_round_trip_and_a_changed_inner_file_is_refused(bundle, tmp_path):
    from exporter.bundle.pack import read_manifest_entries

    good = with_tree_artifact(bundle, tmp_path)
    (tmp_path / "t.svpack").write_bytes(build_pack(good, read_manifest_entries(good))[0])
    unpack(tmp_path / "t.svpack", tmp_path / "out")
    assert files_of(tmp_path / "out") == files_of(good)
    reader = PackReader.open(tmp_path / "t.svpack")
    weight = "coreml/w64_k100_r32.fp32.mlpackage/Data/weights/weight.bin"
    assert weight in reader.by_path  # each file of the tree is its own packed file
    bad = with_tree_artifact(bundle, tmp_path, tamper=True)
    (tmp_path / "bad.svpack").write_bytes(build_pack(bad, read_manifest_entries(bad))[0])
    with pytest.raises(PackError, match="mlpackage: the pack's files hash to"):
        unpack(tmp_path / "bad.svpack", tmp_path / "never")
    assert not (tmp_path / "never").exists()
