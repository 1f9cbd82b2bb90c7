"""Core ML artifacts: the saved ML Program checked without running it (coremltools runs models only
on macOS), fp32 compute for fp32 artifacts, the Neural Engine op rules, metadata, directory hashing,
and --keep-going with a variant the converter cannot handle."""

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import exporter.bundle.export as bundle_mod
from exporter.bundle.export import IncompleteBundleError, export_bundle
from exporter.checkpoints import LoadedModel
from exporter.convert.formats import get_format
from exporter.convert.formats.coreml import ane_fallbacks, ane_unverified, program_info
from exporter.errors import ConfigError, ExportError, ValidationError
from exporter.fileio import atomic_dir, sha256_tree
from exporter.manifest import SCHEMA_VERSION
from exporter.nn.config import Variant, VariantGrid
from exporter.nn.extract import extract_variant
from tests.conftest import tiny_model

LABELS = [f"digit {i}" for i in range(10)]
DENSE, PRUNED, BROKEN = "w32_k100_r32", "w32_k50_r32", "w32_k70_r32"
macos_only = pytest.mark.skipif(sys.platform != "darwin", reason="coremltools runs Core ML models only on macOS")


class WithErfinv(nn.Module):
    """A variant with an op the Core ML converter has no conversion for (aten.erfinv)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + 0 * torch.erfinv(torch.tanh(y) * 0.5)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=9)


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    """Three variants in Core ML with --keep-going; the keep-0.7 one cannot be converted."""
    out = tmp_path_factory.mktemp("bundle")
    loaded = LoadedModel(model, "tiny", "slimvit", LABELS)
    real_extract = bundle_mod.extract_variant
    mp = pytest.MonkeyPatch()
    mp.setattr(bundle_mod, "extract_variant",
               lambda m, s: WithErfinv(real_extract(m, s)) if s.id == BROKEN else real_extract(m, s))
    grid = VariantGrid((0.5,), (1.0, 0.5, 0.7), (32,))
    try:
        with pytest.raises(IncompleteBundleError) as info:
            export_bundle(loaded, grid, out, formats=("coreml",), keep_going=True)
    finally:
        mp.undo()
    return out, info.value


def _artifact(bundle, variant_id):
    out, error = bundle
    (art,) = [a for v in error.manifest["variants"] if v["id"] == variant_id for a in v["artifacts"]]
    return out / art["path"], art


def test_keep_going_lists_the_failure_and_leaves_it_out(bundle):
    out, error = bundle
    assert [(v, f) for v, f, _ in error.failures] == [(BROKEN, "coreml")]
    why = error.failures[0][2]
    assert "erfinv" in why and BROKEN in why  # names the op and the variant
    have = {v["id"]: [a["format"] for a in v["artifacts"]] for v in error.manifest["variants"]}
    assert have[DENSE] == have[PRUNED] == ["coreml"] and have[BROKEN] == []
    assert json.loads((out / "manifest.json").read_text()) == error.manifest
    assert sorted(p.name for p in (out / "coreml").iterdir()) == [f"{DENSE}.fp32.mlpackage",
                                                                   f"{PRUNED}.fp32.mlpackage"]
    assert "erfinv" in str(error) and "1 artifact(s) failed" in str(error)


def test_without_keep_going_the_error_names_variant_and_op(model, tmp_path):
    example = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(ExportError, match=r"w8: the coreml converter cannot handle op 'erfinv'"):
        get_format("coreml").export(WithErfinv(extract_variant(model, Variant(1.0, 1.0, 32))), example,
                                    tmp_path / "x.mlpackage", {"slimvit.variant_id": "w8"})
    assert list(tmp_path.iterdir()) == []


def test_validation_is_a_program_check_and_says_so(bundle):
    path, art = _artifact(bundle, PRUNED)
    v = art["validation"]
    if sys.platform != "darwin":
        assert v["method"].startswith("coremltools ") and v["method"].endswith("program check (not run: Linux)")
        assert "max_abs_diff" not in v
        assert v["checks"] == ["inputs", "outputs", "fp32 compute", "op set", "56 weights"]
    assert art["sha256"] == sha256_tree(path)
    assert art["bytes"] == sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("variant_id", [DENSE, PRUNED])
def test_program_io_precision_and_neural_engine_rules(bundle, variant_id):
    path, _ = _artifact(bundle, variant_id)
    info = program_info(path)
    assert info.inputs == {"pixel_values": ([1, 3, 32, 32], "fp32")}
    assert info.outputs == {"logits": ([1, 10], "fp32")}
    assert info.spec_version == 8  # iOS 17
    assert "fp16" not in info.dtypes and info.dtypes <= {"fp32", "int32", "bool"}  # no silent fp16
    assert ane_fallbacks(info) == [] and info.max_rank <= 4
    assert info.ops["softmax"] == 4 and info.ops["layer_norm"] == 9 and info.ops["conv"] == 1
    pruned = variant_id == PRUNED
    assert ane_unverified(info) == ({"topk": 3, "gather_along_axis": 3} if pruned else {})
    assert info.max_dim == 128  # the MLP hidden of a 32-wide variant


def test_the_weight_check_catches_a_changed_weight(bundle, model):
    path, _ = _artifact(bundle, PRUNED)
    static = extract_variant(model, Variant(0.5, 0.5, 32))
    example = np.zeros((1, 3, 32, 32), np.float32)
    fmt = get_format("coreml")
    assert fmt.check(path, static, example)[-1] == "56 weights"
    with torch.no_grad():
        static.blocks[2].mlp.fc1.weight[3, 5] += 1e-3
    with pytest.raises(ValidationError, match=r"weight blocks\.2\.mlp\.fc1\.weight \(128, 32\) missing or changed"):
        fmt.check(path, static, example)


def test_metadata_fields(bundle):
    path, _ = _artifact(bundle, DENSE)
    info = program_info(path)
    assert info.short_description == f"slimvit variant {DENSE} of tiny"
    assert info.version == SCHEMA_VERSION
    assert info.metadata["slimvit.variant_id"] == DENSE
    assert json.loads(info.metadata["slimvit.labels"]) == LABELS
    assert json.loads(info.metadata["slimvit.std"]) == [0.5, 0.5, 0.5]
    assert info.metadata["slimvit.precision"] == "fp32"
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert "normalized" in spec.description.input[0].shortDescription
    assert "10 classes" in spec.description.output[0].shortDescription


def test_fp16_artifacts_compute_in_fp16_and_targets_are_checked(model, tmp_path):
    static = extract_variant(model, Variant(0.5, 1.0, 32))
    example = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    fmt = get_format("coreml", deployment_target="iOS16", compute="fp16")
    path = tmp_path / "h.mlpackage"
    fmt.export(static, example, path, {"slimvit.variant_id": "h", "slimvit.precision": "fp16"})
    info = program_info(path)
    assert "fp16" in info.dtypes and info.spec_version == 7  # iOS 16
    assert fmt.check(path, static, example)[2] == "fp16 compute"
    with pytest.raises(ConfigError, match='did you mean "iOS17"'):
        get_format("coreml", deployment_target="ios17")
    with pytest.raises(ConfigError, match="Core ML compute precision"):
        get_format("coreml", compute="int3")


def test_sha256_tree_follows_the_documented_recipe(tmp_path):
    root = tmp_path / "a.mlpackage"
    (root / "Data" / "w").mkdir(parents=True)
    (root / "Manifest.json").write_bytes(b"{}")
    (root / "Data" / "w" / "weight.bin").write_bytes(b"\x00\x01\x02")
    (root / "empty").mkdir()
    h = hashlib.sha256()
    for rel, data in (("Data/w/weight.bin", b"\x00\x01\x02"), ("Manifest.json", b"{}")):
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    assert sha256_tree(root) == h.hexdigest()
    (root / "Data" / "w" / "weight.bin").write_bytes(b"\x00\x01\x03")
    assert sha256_tree(root) != h.hexdigest()


def test_atomic_dir_swaps_a_whole_directory_or_nothing(tmp_path):
    target = tmp_path / "v.mlpackage"
    with atomic_dir(target) as tmp:
        assert tmp.suffix == ".mlpackage" and not tmp.exists()  # coremltools checks the suffix
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "a.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "a.bin").write_bytes(b"half")
        raise RuntimeError("the converter failed")
    assert (target / "Data" / "a.bin").read_bytes() == b"old"
    with atomic_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "b.bin").write_bytes(b"new")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "v.mlpackage", "v.mlpackage/b.bin"]  # the old tree is gone, no temporary left


@macos_only
def test_predict_matches_the_slimmable_model(bundle, model):
    path, _ = _artifact(bundle, PRUNED)
    x = np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32)
    got = get_format("coreml").run(path, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x), Variant(0.5, 0.5, 32)).numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_packages_hold_only_the_package_format_no_converter_debug_files(bundle):
    """coremltools writes executorch_debug_handle_mapping.json beside Manifest.json; it is stripped."""
    out, _ = bundle
    packages = sorted(out.glob("coreml/*.mlpackage"))
    assert packages
    for pkg in packages:
        assert sorted(p.name for p in pkg.iterdir()) == ["Data", "Manifest.json"], pkg
        assert not list(pkg.rglob("*debug*"))


def test_strip_debug_files_keeps_the_package_and_removes_the_rest(tmp_path):
    from exporter.convert.formats.coreml import strip_debug_files

    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "executorch_debug_handle_mapping.json").write_text("{}")
    (pkg / "extra").mkdir()
    assert strip_debug_files(pkg) == ["executorch_debug_handle_mapping.json", "extra"]
    assert sorted(p.name for p in pkg.iterdir()) == ["Data", "Manifest.json"]
