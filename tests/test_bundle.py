"""Bundles: validated artifacts, a manifest that follows its JSON Schema, hashes that match."""

import hashlib
import json

import jsonschema
import pytest

from calibration.data import digits
from exporter.bundle.export import export_bundle
from exporter.manifest import ManifestError, read_manifest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from exporter.checkpoints import LoadedModel
    from exporter.nn.config import VariantGrid
    from tests.conftest import tiny_model

    out = tmp_path_factory.mktemp("bundle")
    loaded = LoadedModel(tiny_model(), "tiny", "slimvit", [str(i) for i in range(10)])
    grid = VariantGrid(widths=(0.5, 1.0), keep_rates=(1.0, 0.5), resolutions=(32, 24))
    manifest = export_bundle(loaded, grid, out, eval_set=digits("test").subset(slice(0, 40)))
    return out, manifest


def test_manifest_validates_against_the_shipped_schema(bundle):
    out, manifest = bundle
    schema = json.loads((out / "manifest.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads((out / "manifest.json").read_text()), schema)
    assert read_manifest(out) == manifest


def test_every_variant_has_a_validated_artifact_whose_hash_and_size_match(bundle):
    out, manifest = bundle
    assert len(manifest["variants"]) == 8
    for v in manifest["variants"]:
        (art,) = v["artifacts"]
        data = (out / art["path"]).read_bytes()
        assert art["sha256"] == hashlib.sha256(data).hexdigest()
        assert art["bytes"] == len(data)
        assert art["validation"]["max_abs_diff"] <= art["validation"]["atol"] == 1e-4
        assert art["validation"]["samples"] == 8  # 4 random + 4 real images
        assert 0 <= art["accuracy"]["top1"] <= 1 and art["accuracy"]["samples"] == 40
        assert art["accuracy"]["agreement"] >= 0.95  # ONNX Runtime vs PyTorch top-1
        assert v["input_shape"] == [1, 3, v["resolution"], v["resolution"]]
    assert manifest["input"]["shape"] == [1, 3, 32, 32]
    assert manifest["labels"] == [str(i) for i in range(10)]
    sizes = {v["id"]: v["artifacts"][0]["bytes"] for v in manifest["variants"]}
    assert sizes["w32_k100_r32"] < 0.4 * sizes["w64_k100_r32"]
    macs = {v["id"]: v["macs"] for v in manifest["variants"]}
    assert macs["w64_k50_r32"] < macs["w64_k100_r32"]


def test_no_temporary_files_are_left_behind(bundle):
    out, _ = bundle
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_a_damaged_manifest_is_reported_with_every_problem(bundle, tmp_path):
    out, manifest = bundle
    bad = json.loads(json.dumps(manifest))
    bad["variants"][0]["artifacts"][0]["sha256"] = "xyz"
    bad["variants"][1]["artifacts"][0]["path"] = "../escape.onnx"
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match="2 problem") as e:
        read_manifest(tmp_path)
    assert "sha256" in str(e.value) and "path" in str(e.value)
