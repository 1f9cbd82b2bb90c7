"""TFLite artifacts: parity through the LiteRT interpreter, NCHW and NHWC, delegate-friendly
graphs (builtin ops, rank <= 4, no int64), metadata readable back, bundle integration."""

import json

import numpy as np
import pytest
import torch

from exporter.bundle.export import export_bundle
from exporter.checkpoints import LoadedModel
from exporter.convert.formats import FORMATS, get_format
from exporter.convert.formats.tflite import delegate_problems, graph_info, read_metadata
from exporter.errors import ConfigError
from exporter.manifest import SCHEMA_VERSION
from exporter.nn.config import Variant, VariantGrid
from exporter.nn.extract import extract_variant
from tests.conftest import tiny_model

LABELS = [f"digit {i}" for i in range(10)]
NCHW_VARIANT = Variant(0.5, 0.5, 32)  # pruned in blocks 1, 2, 3
NHWC_VARIANT = Variant(0.25, 0.7, 24)  # through the bundle, with --nhwc


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5)


@pytest.fixture(scope="module")
def nchw(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tfl") / "v.tflite"
    example = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    meta = {"slimvit.variant_id": "nchw", "slimvit.labels": json.dumps(LABELS),
            "slimvit.manifest_schema": SCHEMA_VERSION, "slimvit.mean": "[0.5, 0.5, 0.5]"}
    get_format("tflite").export(extract_variant(model, NCHW_VARIANT), example, path, meta)
    return path


@pytest.fixture(scope="module")
def nhwc_bundle(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    loaded = LoadedModel(model, "tiny", "slimvit", LABELS)
    grid = VariantGrid((NHWC_VARIANT.width,), (NHWC_VARIANT.keep_rate,), (NHWC_VARIANT.resolution,))
    manifest = export_bundle(loaded, grid, out, formats=("tflite",), nhwc=True)
    return out, manifest


def _inputs(res: int, n: int = 4, seed: int = 7) -> np.ndarray:
    # Inputs other than the export's example input.
    return np.random.default_rng(seed).standard_normal((n, 3, res, res)).astype(np.float32)


def test_nchw_interpreter_matches_the_slimmable_model(model, nchw):
    x = _inputs(32)
    got = get_format("tflite").run(nchw, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x), NCHW_VARIANT).numpy()
    assert got.shape == (4, 10)
    assert np.abs(got - want).max() <= 1e-5


def test_nhwc_artifact_takes_channels_last_and_matches(model, nhwc_bundle):
    out, manifest = nhwc_bundle
    art = manifest["variants"][0]["artifacts"][0]
    x = _inputs(24, seed=11)
    it = get_format("tflite").interpreter(out / art["path"])
    inp, res = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == [1, 24, 24, 3]
    rows = []
    for sample in x.transpose(0, 2, 3, 1):  # the app's (H, W, C) frames, fed as they are
        it.set_tensor(inp["index"], np.ascontiguousarray(sample[None]))
        it.invoke()
        rows.append(it.get_tensor(res["index"]).copy())
    with torch.no_grad():
        want = model(torch.from_numpy(x), NHWC_VARIANT).numpy()
    assert np.abs(np.concatenate(rows) - want).max() <= 1e-5
    assert art["validation"]["max_abs_diff"] <= 1e-5 and art["validation"]["method"].startswith("ai-edge-litert")


@pytest.mark.parametrize("which", ["nchw", "nhwc"])
def test_graph_is_delegate_friendly(which, nchw, nhwc_bundle):
    out, manifest = nhwc_bundle
    path = nchw if which == "nchw" else out / manifest["variants"][0]["artifacts"][0]["path"]
    info = graph_info(path)
    assert delegate_problems(info) == []
    assert not info.custom_ops and info.max_rank <= 4
    assert info.dtypes <= {"FLOAT32", "INT32", "BOOL"}, info.dtypes  # top-k indices are int32
    assert info.ops["TOPK_V2"] == 3 and info.ops["GATHER_ND"] == 3  # prune blocks 1, 2, 3
    assert info.ops["CONV_2D"] == 1 and info.ops["SOFTMAX"] == 4
    shape = [1, 3, 32, 32] if which == "nchw" else [1, 24, 24, 3]
    assert info.inputs == {"pixel_values": (shape, "FLOAT32")}
    assert info.outputs == {"logits": ([1, 10], "FLOAT32")}


def test_metadata_is_in_the_flatbuffer_and_reads_back(nchw):
    meta = read_metadata(nchw)
    assert meta["slimvit.variant_id"] == "nchw"
    assert meta["slimvit.manifest_schema"] == SCHEMA_VERSION
    assert json.loads(meta["slimvit.labels"]) == LABELS
    assert json.loads(meta["slimvit.mean"]) == [0.5, 0.5, 0.5]
    entries = graph_info(nchw).metadata
    assert entries["slimvit.labels"].decode().splitlines() == LABELS
    assert "min_runtime_version" in entries  # the converter's own entry survives


def test_bundle_records_the_nhwc_layout(nhwc_bundle):
    out, manifest = nhwc_bundle
    assert manifest["input"]["layout"] == "NCHW" and manifest["input"]["layouts"] == {"tflite": "NHWC"}
    art = manifest["variants"][0]["artifacts"][0]
    assert art["path"] == "tflite/w16_k70_r24.fp32.tflite"
    assert read_metadata(out / art["path"])["slimvit.layout"] == "NHWC"
    assert art["bytes"] == (out / art["path"]).stat().st_size
    assert [p.name for p in (out / "tflite").iterdir()] == ["w16_k70_r24.fp32.tflite"]  # no temp files



def test_registry_and_layout_choices():
    assert {"onnx", "tflite", "coreml"} <= set(FORMATS)
    assert get_format("tflite", layout="NHWC").layout == "NHWC"
    with pytest.raises(ConfigError, match='did you mean "NHWC"'):
        get_format("tflite", layout="NHCW")
    with pytest.raises(ConfigError, match='"onnx input layout" must be one of {NCHW}'):
        get_format("onnx", layout="NHWC")
