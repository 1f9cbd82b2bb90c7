"""Shared-scale int8 (`int8-dynamic-shared`, `int8-shared`): every width's int8 weights are the
slice of one per-channel quantization of the slimmable model, checked here against the slicing
rules themselves (HydraViT heads, Scala's contiguous qkv block with last-channel intermediate
widths) and against ONNX Runtime's own quantization of the full width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporter.bundle.export import export_bundle
from exporter.bundle.pack import Selection, build_pack
from exporter.bundle.pack import read_manifest_entries
from exporter.checkpoints.load import LoadedModel
from exporter.convert.quantize.pipeline import QuantizeOptions
from exporter.convert.quantize.registry import precision_names
from exporter.manifest import read_manifest
from exporter.nn.config import VariantGrid
from exporter.nn.model import channel_index, qkv_rows
from tests.conftest import tiny_model

SLICINGS = {"heads": (dict(), (0.5, 1.0)),
            "ratio": (dict(slicing="ratio", min_ratio=0.25, ln_eps=1e-5), (0.25, 0.5, 1.0))}


@pytest.fixture(scope="module", params=sorted(SLICINGS))
def exported(request, tmp_path_factory) -> tuple[Path, object]:
    overrides, widths = SLICINGS[request.param]
    model = tiny_model(depth=2, **overrides)
    out = tmp_path_factory.mktemp(f"shared-{request.param}") / "bundle"
    loaded = LoadedModel(model, "tiny", "slimvit", [str(i) for i in range(10)])
    with torch.no_grad():
        export_bundle(loaded, VariantGrid(widths=widths, keep_rates=(1.0,), resolutions=(32,)), out,
                      quantize=QuantizeOptions(precisions=("fp32", "int8-dynamic", "int8-dynamic-shared"),
                                                  max_drop=1.0))  # random weights: top-1 is noise
    return out, model


def _int8_weights(path: Path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    return [numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith("_quantized")
            and t.data_type == onnx.TensorProto.INT8]


def _expected_slice(model, s, wide: np.ndarray) -> np.ndarray:
    """The narrow [in, out] int8 weight a wide one gives under the model's own slicing rules."""
    cfg = model.cfg
    D, H = cfg.embed_dim, cfg.mlp_hidden
    emb = np.arange(D)[channel_index(D, s.embed_dim, s.channels)]
    hid = np.arange(H)[channel_index(H, s.mlp_hidden, s.channels)]
    rows, cols = {(D, 3 * D): (emb, np.arange(3 * D)[qkv_rows(cfg, s)]), (D, D): (emb, emb),
                  (D, H): (emb, hid), (H, D): (hid, emb),
                  (D, cfg.num_classes): (emb, np.arange(cfg.num_classes))}[wide.shape]
    return wide[np.ix_(rows, cols)]


def test_the_precision_is_offered_by_the_registry():
    assert {"int8-dynamic-shared", "int8-shared"} <= set(precision_names("onnx"))
    assert "int8-dynamic-shared" in precision_names("tflite")
    assert "int8-shared" not in precision_names("tflite")  # static TFLite int8: not offered


def test_every_width_holds_a_slice_of_the_one_int8_copy(exported):
    out, model = exported
    manifest = read_manifest(out)
    assert not [e for e in manifest["calibration"]["excluded"] if e["precision"] == "int8-dynamic-shared"]
    arts = {(a["variant"], a["precision"]): a for a in read_manifest_entries(out)}
    ids = sorted({v for v, _ in arts}, key=lambda i: int(i.split("_")[0][1:]))
    wide_id = ids[-1]
    wide = _int8_weights(out / arts[(wide_id, "int8-dynamic-shared")]["path"])
    own = _int8_weights(out / arts[(wide_id, "int8-dynamic")]["path"])
    # At full width the shared weights are ORT's own per-channel quantization (the attention scale
    # folded into the q rows may move a value by one step where it rounds differently).
    same = np.mean([np.mean(a == b) for a, b in zip(wide, own, strict=True)])
    assert same > 0.99, same
    for v in manifest["variants"]:
        if v["id"] == wide_id:
            continue
        s = model.subnet(_variant_of(v))
        narrow = _int8_weights(out / arts[(v["id"], "int8-dynamic-shared")]["path"])
        assert len(narrow) == len(wide) > 0
        for n, w in zip(narrow, wide, strict=True):
            np.testing.assert_array_equal(n, _expected_slice(model, s, w))
        # while per-variant int8 of the same width is not a slice (its own channel ranges)
        own_narrow = _int8_weights(out / arts[(v["id"], "int8-dynamic")]["path"])
        assert any(not np.array_equal(n, _expected_slice(model, s, w)) for n, w in zip(own_narrow, own, strict=True))
        entry = arts[(v["id"], "int8-dynamic-shared")]
        assert entry["validation"]["agreement"] >= 0.8 and "shared-scale" in entry["quantization"]["scheme"]


def _variant_of(v):
    from exporter.nn.config import Variant

    return Variant(width=v["width"], keep_rate=v["keep_rate"], resolution=v["resolution"])


def test_the_shared_group_packs_smaller_than_per_variant_int8(exported):
    out, _ = exported
    _, stats = build_pack(out, Selection.parse(formats="onnx").artifacts(read_manifest(out)))
    shared, own = stats.groups[("onnx", "int8-dynamic-shared")], stats.groups[("onnx", "int8-dynamic")]
    assert shared.packed / shared.largest < own.packed / own.largest
    assert shared.packed / shared.largest < 1.15, shared


def _tflite_int8(path: Path) -> list[np.ndarray]:
    from exporter.convert.quantize.tflite_share import _array, _model

    m = _model(path.read_bytes())
    return [_array(m, t, np.int8) for t in m.subgraphs[0].tensors
            if t.type == 9 and t.quantization is not None and t.quantization.scale is not None
            and len(t.quantization.scale) > 1]


def test_tflite_int8_dynamic_shared_slices_the_folded_weights(tmp_path):
    """LiteRT folds each LayerNorm's gamma into qkv / fc1; the shared weights are quantized after
    the same fold, so the narrow width's int8 FULLY_CONNECTED weights ([out, in]) are still slices."""
    model = tiny_model(depth=2)
    loaded = LoadedModel(model, "tiny", "slimvit", [str(i) for i in range(10)])
    out = tmp_path / "bundle"
    with torch.no_grad():
        export_bundle(loaded, VariantGrid(widths=(0.5, 1.0), keep_rates=(1.0,), resolutions=(32,)), out,
                      formats=("tflite",), quantize=QuantizeOptions(
                          precisions=("fp32", "int8-dynamic-shared"), max_drop=1.0))
    arts = {(a["variant"], a["precision"]): a for a in read_manifest_entries(out)}
    ids = sorted({v for v, _ in arts}, key=lambda i: int(i.split("_")[0][1:]))
    narrow = _tflite_int8(out / arts[(ids[0], "int8-dynamic-shared")]["path"])
    wide = _tflite_int8(out / arts[(ids[-1], "int8-dynamic-shared")]["path"])
    s = model.subnet(_variant_of(next(v for v in read_manifest(out)["variants"] if v["id"] == ids[0])))
    fc = [(n, w) for n, w in zip(narrow, wide, strict=True) if n.ndim == 2]
    assert len(fc) >= 4 * 2 + 1  # qkv, proj, fc1, fc2 per block, and the head
    for n, w in fc:  # TFLite holds [out, in]: the ONNX rule on the transpose
        np.testing.assert_array_equal(n.T, _expected_slice(model, s, np.ascontiguousarray(w.T)))
