"""Precisions: every format's quantized artifacts, calibrated per variant, measured against the
FP32 PyTorch variant, retried or left out when over budget."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from calibration.data import Preprocess, digits
from calibration.sources import load_calibration
from exporter.convert.formats import FORMATS, get_format
from exporter.demo import DEMO_PER_FORMAT
from exporter.errors import ConfigError
from exporter.bundle.export import export_bundle
from exporter.checkpoints import LoadedModel
from exporter.convert.quantize import (
    SENSITIVE_OPS,
    QuantizeOptions,
    QuantJob,
    export_precisions,
    for_variant,
    get_precision,
)
from exporter.manifest import read_manifest
from exporter.nn.config import VariantGrid
from exporter.nn.extract import SubnetForward, extract_variant
from tests.conftest import tiny_model

PRE = Preprocess()
GRID = VariantGrid(widths=(1.0,), keep_rates=(1.0,), resolutions=(32, 24))
ONE = VariantGrid(widths=(1.0,), keep_rates=(1.0,), resolutions=(24,))


def probed_model(seed: int = 0):
    """A tiny ViT whose head is a ridge-regression probe on digits (fit at 32 and 24 px), so
    predictions have real margins; no training loop (too slow for a unit test). Its random
    features are more fragile under int8 than a trained network's, so the accuracy goals are
    measured by benchmarks/bench_quant.py on the trained demo model, not asserted here."""
    model = tiny_model(seed)
    data = digits("train").subset(np.arange(600))
    s32, s24 = GRID.subnets(model.cfg)
    with torch.no_grad():
        feats = torch.cat([model.forward_features(PRE(data.images, s.resolution), s)[:, 0]
                           for s in (s32, s24)])
        f1 = torch.cat([feats, torch.ones(len(feats), 1)], 1)
        y = torch.nn.functional.one_hot(torch.from_numpy(np.tile(data.labels, 2)), 10).float()
        w = torch.linalg.solve(f1.T @ f1 + 10.0 * torch.eye(f1.shape[1]), f1.T @ y)
        model.head.weight.copy_(w[:-1].T)
        model.head.bias.copy_(w[-1])
    return LoadedModel(model, "probe", "slimvit", [str(i) for i in range(10)])


@pytest.fixture(scope="module")
def loaded():
    return probed_model()


@pytest.fixture(scope="module")
def eval_set():
    return digits("test").subset(np.arange(0, 359, 2))


@pytest.fixture(scope="module")
def onnx_bundle(loaded, eval_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    opts = QuantizeOptions(("fp16", "int8", "int8-dynamic"),
                           load_calibration("builtin", PRE, samples=64), "minmax", max_drop=0.02)
    return out, export_bundle(loaded, ONE, out, eval_set=eval_set, quantize=opts)


def test_onnx_bundle_has_every_precision_measured_against_pytorch(onnx_bundle):
    out, manifest = onnx_bundle
    assert read_manifest(out) == manifest  # validates against the schema
    cal = manifest["calibration"]
    assert {k: cal[k] for k in ("source", "samples", "seed", "method", "precisions", "max_drop")} == {
        "source": "builtin", "samples": 64, "seed": 0, "method": "minmax",
        "precisions": ["fp16", "int8", "int8-dynamic"], "max_drop": 0.02}
    (v,) = manifest["variants"]
    arts = {a["precision"]: a for a in v["artifacts"]}
    left = {e["precision"]: e["reason"] for e in cal["excluded"]}
    assert set(arts) | set(left) == {"fp32", "fp16", "int8", "int8-dynamic"} and not set(arts) & set(left)
    ref = arts["fp32"]["accuracy"]["top1"]
    assert ref > 0.3  # the probe works (chance is 0.1), so agreement is not trivially 1
    for name, a in arts.items():
        if name == "fp32":
            continue
        acc, val = a["accuracy"], a["validation"]
        assert a["path"] == f"onnx/{v['id']}.{name}.onnx"
        data = (out / a["path"]).read_bytes()
        assert a["sha256"] == hashlib.sha256(data).hexdigest() and a["bytes"] == len(data)
        assert acc["reference_top1"] == pytest.approx(ref)
        assert acc["drop"] == pytest.approx(ref - acc["top1"]) and acc["drop"] <= 0.02
        assert acc["agreement"] == val["agreement"] >= val["min_agreement"]
        assert acc["samples"] == val["samples"] == 180 and acc["method"].startswith("onnxruntime")
        assert a["quantization"]["calibrated"] == (name == "int8")
        assert a["bytes"] < 0.75 * arts["fp32"]["bytes"]
    for name, why in left.items():  # over budget twice: both tries are reported
        assert why.count("p.p. > budget 2.00 p.p.") + why.count("< 0.8 with the FP32") == 2, why
        assert "with softmax/layernorm/gelu/first/last in float:" in why
        assert not (out / f"onnx/{v['id']}.{name}.onnx").exists()
    fp16 = arts["fp16"]
    # >= 0.98: 2 of the 180 held-out images are near-ties that flip with the graph's op order
    # (the network's tail on the head token only, exporter/convert/onnx_graph.py: 0.989)
    assert fp16["validation"]["max_abs_diff"] < 0.02 and fp16["accuracy"]["agreement"] >= 0.98
    assert fp16["bytes"] < 0.6 * arts["fp32"]["bytes"]
    assert not list(out.rglob(".quant-*"))


def _job(fp32: Path, loaded, float_ops=(), out=None) -> QuantJob:
    s = ONE.subnets(loaded.model.cfg)[0]
    x = load_calibration("builtin", PRE, samples=16).inputs(PRE, 24)
    return QuantJob(fp32, extract_variant(loaded.model, s), x[:1], x, "minmax", tuple(float_ops),
                    {"slimvit.variant_id": s.id}, out)


def test_onnx_int8_is_static_qdq_per_channel_and_retry_keeps_sensitive_ops_float(onnx_bundle, loaded,
                                                                                 tmp_path):
    out, manifest = onnx_bundle
    fp32 = out / manifest["variants"][0]["artifacts"][0]["path"]
    graphs = {}
    for label, ops in (("all", ()), ("float", SENSITIVE_OPS)):
        job = _job(fp32, loaded, ops, tmp_path / f"{label}.onnx")
        get_precision("onnx", "int8").quantize(job)
        graphs[label] = onnx.load(str(job.out))
    full, kept = graphs["all"], graphs["float"]
    ops = [n.op_type for n in full.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    int8 = [t for t in full.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) >= 4 * 4  # qkv/proj/fc1/fc2 weights of every block
    scales = {t.name: t for t in full.graph.initializer}
    wq = [n for n in full.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
          {t.name for t in int8}]
    assert all(len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1 for n in wq)
    meta = {p.key: p.value for p in full.metadata_props}
    assert meta["slimvit.precision"] == "int8" and meta["slimvit.variant_id"] == "w64_k100_r24"

    def quantized_inputs(model, op_type):
        made = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return sum(any(i in made for i in n.input) for n in model.graph.node if n.op_type == op_type)

    # int8 only on the weighted layers: LayerNorm, the attention itself (QAttention runs only
    # the qkv projection in int8), softmax and GELU stay float, and no layer output is requantized
    assert quantized_inputs(full, "Gemm") >= 3 * 4 and quantized_inputs(full, "LayerNormalization") == 0
    for graph in (full, kept):
        ops = [n.op_type for n in graph.graph.node]
        assert ops.count("QAttention") == 4 and "Attention" not in ops and "Softmax" not in ops
        assert quantized_inputs(graph, "MatMul") == 0 and quantized_inputs(graph, "Gelu") == 0
        assert not [o for o in graph.graph.output if o.name != "logits"]  # no calibration probe left
        made = {o: n.op_type for n in graph.graph.node for o in n.output}
        assert not [n for n in graph.graph.node if n.op_type == "QuantizeLinear"
                    and made.get(n.input[0]) in ("Gemm", "MatMul")]
    assert quantized_inputs(kept, "Conv") == 0 and kept.ByteSize() > full.ByteSize()

    job = _job(fp32, loaded, (), tmp_path / "dyn.onnx")
    get_precision("onnx", "int8-dynamic").quantize(job)
    assert {"DynamicQuantizeLinear", "QAttention"} <= {n.op_type for n in onnx.load(str(job.out)).graph.node}


def test_each_variant_is_calibrated_and_measured_at_its_own_resolution(loaded, eval_set):
    opts = QuantizeOptions(("int8",), load_calibration("builtin", PRE, samples=16))
    for s in GRID.subnets(loaded.model.cfg):
        real = PRE(eval_set.images, s.resolution).numpy()
        vq = for_variant(opts, PRE, s.resolution, SubnetForward(loaded.model, s), real,
                         eval_set.labels, eval_set.name)
        assert vq.calibration.shape == (16, 3, s.resolution, s.resolution)
        with torch.no_grad():  # the reference is the FP32 PyTorch variant itself
            want = loaded.model(torch.from_numpy(real), s).numpy()
        np.testing.assert_array_equal(vq.data.reference_logits, want)


def test_over_budget_retries_with_sensitive_ops_in_float_then_leaves_out(onnx_bundle, loaded, eval_set,
                                                                        tmp_path):
    out, manifest = onnx_bundle
    fp32 = out / manifest["variants"][0]["artifacts"][0]["path"]
    s = ONE.subnets(loaded.model.cfg)[0]
    opts = QuantizeOptions(("int8", "int8-dynamic"), load_calibration("builtin", PRE, samples=16),
                           max_drop=0.0)
    vq = for_variant(opts, PRE, 24, SubnetForward(loaded.model, s), PRE(eval_set.images, 24).numpy(),
                     eval_set.labels, eval_set.name)
    # A zero budget: any top-1 drop at all sends a precision to the retry, then out.
    arts, left = export_precisions(get_format("onnx"), s.id, extract_variant(loaded.model, s), fp32,
                                   tmp_path, opts, vq.calibration, vq.data, {"slimvit.variant_id": s.id})
    assert len(arts) + len(left) == 2
    for a in arts:
        assert a.accuracy["drop"] <= 0 and a.quantization["float_ops"] in ([], list(SENSITIVE_OPS))
        assert (tmp_path / a.path).is_file()
    for e in left:
        assert e["variant"] == s.id and e["format"] == "onnx"
        first, second = e["reason"].split("; with softmax/layernorm/gelu/first/last in float: ")
        assert "> budget 0.00 p.p." in first + second or "agreement" in first + second
        assert not (tmp_path / f"onnx/{s.id}.{e['precision']}.onnx").exists()
    assert not list(tmp_path.rglob(".quant-*"))


def test_tflite_precisions_run_in_the_litert_interpreter(loaded, eval_set, tmp_path):
    opts = QuantizeOptions(("fp16", "int8-dynamic", "int8", "int8-xnnpack"),
                           load_calibration("builtin", PRE, samples=32), max_drop=0.03)
    manifest = export_bundle(loaded, ONE, tmp_path, formats=("tflite",), eval_set=eval_set, quantize=opts)
    arts = {a["precision"]: a for a in manifest["variants"][0]["artifacts"]}
    left = {e["precision"]: e["reason"] for e in manifest["calibration"]["excluded"]}
    assert set(arts) | set(left) == {"fp32", "fp16", "int8-dynamic", "int8", "int8-xnnpack"}, left
    assert "fp16" in arts, left
    assert all("> budget 3.00 p.p." in why or "agreement" in why for why in left.values()), left
    from exporter.convert.formats.tflite import graph_info, read_metadata

    for name in set(arts) - {"fp32"}:
        a = arts[name]
        assert a["accuracy"]["method"].startswith("ai-edge-litert") and a["accuracy"]["drop"] <= 0.03
        assert a["bytes"] < 0.6 * arts["fp32"]["bytes"]
        assert read_metadata(tmp_path / a["path"])["slimvit.precision"] == name
    assert arts["fp16"]["accuracy"]["agreement"] >= 0.99
    if "int8" in arts:
        info = graph_info(tmp_path / arts["int8"]["path"])
        assert info.inputs["pixel_values"] == ([1, 3, 24, 24], "FLOAT32")  # float I/O for apps
        assert "INT8" in info.dtypes and info.ops.get("QUANTIZE", 0) >= 1


def test_tflite_int8_stays_one_delegate_partition(loaded, tmp_path):
    """Full-integer int8 (int8-full) is cut into many XNNPACK partitions (its int8 softmax, GELU,
    LayerNorm statistics, residual adds and attention matmuls run in the interpreter); int8 and
    int8-xnnpack keep those ops in float and the whole graph in one partition, as fp32 is."""
    import collections

    from exporter.convert.formats.tflite import TFLiteFormat, graph_info

    s = ONE.subnets(loaded.model.cfg)[0]
    fp32 = tmp_path / "fp32.tflite"
    fmt = TFLiteFormat()
    fmt.export(extract_variant(loaded.model, s), np.zeros((1, 3, 24, 24), np.float32), fp32, {})
    partitions, dtypes = {}, {}
    for name in ("int8", "int8-xnnpack", "int8-full"):
        job = _job(fp32, loaded, (), tmp_path / f"{name}.tflite")
        get_precision("tflite", name).quantize(job)
        ops = collections.Counter(o["op_name"] for o in fmt.interpreter(job.out)._get_ops_details())
        partitions[name] = ops["DELEGATE"]
        dtypes[name] = graph_info(job.out).dtypes
        assert fmt.run(job.out, job.calibration).shape == (16, 10)
    ops = collections.Counter(o["op_name"] for o in fmt.interpreter(fp32)._get_ops_details())
    assert ops["DELEGATE"] == 1 and partitions["int8"] == partitions["int8-xnnpack"] == 1, partitions
    assert partitions["int8-full"] > 10, partitions
    for name in ("int8", "int8-xnnpack"):
        assert "INT8" in dtypes[name] and (tmp_path / f"{name}.tflite").stat().st_size < 0.5 * fp32.stat().st_size


def test_coreml_precisions_carry_simulated_accuracy_and_say_so(loaded, eval_set, tmp_path):
    opts = QuantizeOptions(("fp16", "int8-weights", "palettized", "int8"),
                           load_calibration("builtin", PRE, samples=8), max_drop=0.03)
    manifest = export_bundle(loaded, ONE, tmp_path, formats=("coreml",), eval_set=eval_set, quantize=opts)
    arts = {a["precision"]: a for a in manifest["variants"][0]["artifacts"]}
    left = {e["precision"]: e["reason"] for e in manifest["calibration"]["excluded"]}
    assert set(arts) | set(left) == {"fp32", "fp16", "int8-weights", "palettized", "int8"}, left
    assert {"fp16", "int8-weights"} <= set(arts), left
    for name in set(arts) - {"fp32", "int8"}:
        a = arts[name]
        assert "decompressed by coremltools" in a["accuracy"]["method"]
        assert a["accuracy"]["drop"] <= 0.03 and a["accuracy"]["agreement"] >= 0.95
        assert (tmp_path / a["path"]).is_dir() and a["path"].endswith(f".{name}.mlpackage")
    assert arts["int8-weights"]["bytes"] < 0.5 * arts["fp32"]["bytes"]
    if "palettized" in arts:
        assert arts["palettized"]["bytes"] < arts["int8-weights"]["bytes"]
    else:  # 6-bit palettes of the probe's fragile random features can exceed the budget
        assert "> budget 3.00 p.p." in left["palettized"] or "agreement" in left["palettized"]
    if "int8" in arts:  # W8A8: measured on the calibrated module it was converted from
        assert "calibrated module" in arts["int8"]["accuracy"]["method"]
        assert arts["int8"]["bytes"] < 0.5 * arts["fp32"]["bytes"]
    else:  # the probe's random features are fragile under int8 activations
        assert "agreement" in left["int8"] or "> budget 3.00 p.p." in left["int8"], left


def test_float_ops_are_a_per_op_type_override_of_the_first_try(onnx_bundle, loaded, eval_set, tmp_path):
    """--float-ops keeps those op kinds in float from the first try (recorded in the manifest and
    in each artifact's quantization); the retry adds the rest; an unknown kind is one line."""
    out, manifest = onnx_bundle
    fp32 = out / manifest["variants"][0]["artifacts"][0]["path"]
    s = ONE.subnets(loaded.model.cfg)[0]
    cal = load_calibration("builtin", PRE, samples=16)
    opts = QuantizeOptions(("int8",), cal, max_drop=1.0, float_ops=("gelu", "softmax"))
    assert opts.attempts() == (("softmax", "gelu"), SENSITIVE_OPS)
    assert opts.describe([])["float_ops"] == ["gelu", "softmax"]
    assert QuantizeOptions(("int8",), cal, float_ops=SENSITIVE_OPS).attempts() == (SENSITIVE_OPS,)
    vq = for_variant(opts, PRE, 24, SubnetForward(loaded.model, s), PRE(eval_set.images, 24).numpy(),
                     eval_set.labels, eval_set.name)
    (art,), left = export_precisions(get_format("onnx"), s.id, extract_variant(loaded.model, s), fp32,
                                     tmp_path, opts, vq.calibration, vq.data, {"slimvit.variant_id": s.id})
    assert not left and art.quantization["float_ops"] == ["softmax", "gelu"]
    with pytest.raises(ConfigError, match='did you mean "gelu"'):
        QuantizeOptions(("int8",), cal, float_ops=("gleu",))


def test_per_format_limits_the_precisions_of_one_format():
    opts = QuantizeOptions(("fp32", "fp16", "int8"), load_calibration("builtin", PRE, samples=8),
                           per_format={"executorch": ("fp32",)})
    assert opts.for_format("executorch") == ("fp32",) and opts.for_format("onnx") == ("fp32", "fp16", "int8")
    assert opts.describe([])["per_format"] == {"executorch": ["fp32"]}
    # the demo's limits come from the format registry, not from a list of its own
    assert DEMO_PER_FORMAT == {n: f.demo_precisions for n, f in FORMATS.items() if f.demo_precisions is not None}
