"""Core ML W8A8 made off macOS: calibration in PyTorch (coremltools.optimize.torch), conversion
to quantize/dequantize ops, and the check that the program holds what was calibrated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from calibration.data import Preprocess, digits
from exporter.convert.formats.coreml import INPUT_NAME, OUTPUT_NAME, CoreMLFormat, program_info
from exporter.convert.quantize import SENSITIVE_OPS
from exporter.convert.quantize import coreml_w8a8 as w8a8
from exporter.nn.config import Variant
from exporter.nn.extract import extract_variant
from tests.conftest import tiny_model

PRE = Preprocess()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """32 real digits at 32 px, normalized: the calibration set of these tests."""
    return np.asarray(PRE(digits("train").subset(np.arange(32)).images, 32))


@pytest.fixture(scope="module")
def half() -> nn.Module:
    return extract_variant(tiny_model(), Variant(0.5, 0.5, 32)).eval()


@pytest.fixture(scope="module")
def calibrated(half, images):
    return w8a8.calibrated_module(half, images[:1], images)


def test_ranges_cover_every_calibration_sample(half, images, calibrated):
    # affine uint8: scale = (max - min) / 255 over all samples (the range always holds 0)
    lo, hi = min(float(images.min()), 0.0), max(float(images.max()), 0.0)
    assert w8a8.activation_scales(calibrated)[0] == pytest.approx((hi - lo) / 255, rel=1e-6)
    early = w8a8.calibrated_module(half, images[:1], images[:4])
    first, every = w8a8.activation_scales(early), w8a8.activation_scales(calibrated)
    assert sum(a < b - 1e-9 for a, b in zip(first, every, strict=True)) >= len(every) // 2


def test_fake_quantized_logits_stay_close_to_float(half, images, calibrated):
    with torch.no_grad():
        ref, out = half(torch.from_numpy(images)), calibrated(torch.from_numpy(images))
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 0.1  # quantized (not a no-op), and 8 bits keep logits within 10%
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.9


def test_each_variant_is_calibrated_on_its_own_activations(images, calibrated):
    full = w8a8.calibrated_module(extract_variant(tiny_model(), Variant(1.0, 0.5, 32)).eval(),
                                  images[:1], images)
    a, b = w8a8.activation_scales(calibrated), w8a8.activation_scales(full)
    assert a[0] == b[0]  # the same pixels enter both
    assert len(set(a[1:]) & set(b[1:])) <= 2  # past the input, each variant has its own ranges


def test_sensitive_ops_stay_in_float_on_a_retry(half, images, calibrated):
    kept = w8a8.calibrated_module(half, images[:1], images, SENSITIVE_OPS)
    assert type(kept.patch_embed.proj) is nn.Conv2d and type(kept.head) is nn.Linear  # not quantized
    assert len(w8a8.quantized_weights(kept)) == len(w8a8.quantized_weights(calibrated)) - 2
    for node in kept.graph.nodes:
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            source = node.args[0]
            assert not (source.op == "call_method" and source.target == "softmax"), node
            assert source.target is not torch.nn.functional.gelu, node
    assert len(w8a8.activation_scales(kept)) < len(w8a8.activation_scales(calibrated)) - 8


def test_program_holds_the_calibrated_quantization(half, images, calibrated, tmp_path):
    mlmodel = w8a8.convert(calibrated, images[:1], INPUT_NAME, OUTPUT_NAME)
    mlmodel.save(str(tmp_path / "w8a8.mlpackage"))
    info = program_info(tmp_path / "w8a8.mlpackage")
    assert info.spec_version >= 8  # iOS17: the quantize/dequantize ops
    assert info.inputs == {INPUT_NAME: ([1, 3, 32, 32], "fp32")}
    assert info.ops["quantize"] >= 40 and info.ops["constexpr_affine_dequantize"] >= 10
    assert info.ops["linear"] == sum(isinstance(m, nn.Linear) for m in half.modules())
    scales, weights = w8a8.activation_scales(calibrated), w8a8.quantized_weights(calibrated)
    assert len(weights) == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in half.modules())
    assert w8a8.check_program(info.consts, info.ops, scales, weights) == []
    # the check can fail: other ranges, or a weight off by one step, are found
    assert "activation scales not in the program" in w8a8.check_program(
        info.consts, info.ops, [s * 1.1 for s in scales], weights)[0]
    bad = [w.copy() for w in weights]
    bad[3].flat[0] = bad[3].flat[0] + 1 if bad[3].flat[0] < 127 else 126
    assert "1 of" in w8a8.check_program(info.consts, info.ops, scales, bad)[0]
    # int8 weights: the program is about a quarter of the fp32 parameters' bytes
    weight_bytes = sum(p.numel() * 4 for p in half.parameters())
    assert sum(v.nbytes for v in info.consts.values() if v.dtype == np.int8) < 0.3 * weight_bytes


def test_target_for_needs_ios17_and_keeps_later_targets():
    assert w8a8.target_for("iOS18") == "iOS18" and w8a8.target_for("macOS14") == "macOS14"
    for early in ("iOS16", "macOS13"):
        with pytest.raises(ValueError, match="needs .*17 or later|needs macOS14 or later"):
            w8a8.target_for(early)


def test_an_ios16_bundle_leaves_int8_out_and_keeps_its_target_for_fp16(tmp_path):
    from calibration.sources import load_calibration
    from exporter.bundle.export import export_bundle
    from exporter.checkpoints import LoadedModel
    from exporter.convert.quantize import QuantizeOptions
    from exporter.nn.config import VariantGrid

    loaded = LoadedModel(tiny_model(), "tiny", "slimvit", [str(i) for i in range(10)])
    opts = QuantizeOptions(("fp16", "int8"), load_calibration("builtin", PRE, samples=8), max_drop=1.0)
    manifest = export_bundle(loaded, VariantGrid((0.5,), (1.0,), (32,)), tmp_path,
                             formats=(CoreMLFormat(deployment_target="iOS16"),),
                             eval_set=digits("test").subset(np.arange(16)), quantize=opts)
    arts = {a["precision"]: a for a in manifest["variants"][0]["artifacts"]}
    (left,) = manifest["calibration"]["excluded"]
    assert set(arts) == {"fp32", "fp16"} and left["precision"] == "int8"
    assert "needs iOS17 or later" in left["reason"] and "iOS16" in left["reason"]
    assert {program_info(tmp_path / a["path"]).spec_version for a in arts.values()} == {7}  # iOS16
