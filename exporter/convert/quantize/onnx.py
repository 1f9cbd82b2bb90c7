"""ONNX precisions: fp16 (float16 weights and math, float32 I/O), int8 (static QDQ on the
weighted layers, calibrated activations) and int8-dynamic (int8 weights, activations quantized
at run time). Quantization starts from ONNX Runtime's pre-processing (shape inference and graph
optimizations such as MatMul+Add -> Gemm), which lets more ops take the int8 path.

Where the time goes (ORT profiler, DeiT-Ti shape, 1 thread; docs/quantization.md): the weighted
layers (Gemm) are ~64% of FP32 time and run ~3.7x faster in int8. Everything else ONNX Runtime's
CPU kernels make *slower* in int8 at ViT shapes: the two attention MatMuls (QLinearMatMul /
MatMulIntegerToFloat plus the QuantizeLinear they need cost more than the float MatMuls),
Softmax (QLinearSoftmax ~4x the float op), and QDQ pairs around LayerNorm and data movement
(Reshape/Transpose/Split) only add QuantizeLinear/DequantizeLinear passes. So int8 quantizes the
inputs of the weighted layers only and lets each Gemm write float (no requantize + dequantize
pair per layer); the target CPU (`exporter.convert.quantize.targets`) picks S8S8 or U8S8 and whether
weights are 7-bit.
The fused attention of the FP32 export (`exporter.convert.onnx_graph`) becomes QAttention: an int8
qkv projection with the attention itself in float, the same split as above.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from exporter.convert.formats.base import quiet
from exporter.convert.onnx_graph import (
    add_attention_probes, half_cast_initializers, is_probe, probes_to_qattention,
)
from exporter.convert.quantize.onnx_share import share_weights
from exporter.convert.quantize.registry import Precision, QuantJob, register
from exporter.convert.quantize.targets import TARGETS

# Ops whose inputs int8 quantizes: the weighted layers. Attention MatMuls (activation x
# activation) are excluded by node below; Softmax, Gelu and LayerNorm stay float.
_QDQ_TYPES = ("Conv", "Gemm", "MatMul")
# Layers that write float: a requantized output would be dequantized again by the float op after it.
_FLOAT_OUTPUT_TYPES = ["Gemm", "MatMul"]
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _prepared(src: Path, work: Path) -> Path:
    """ONNX Runtime's recommended pre-processing: symbolic shape inference + optimizations."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "pre.onnx"
    with quiet():
        quant_pre_process(str(src), str(out))
    return out


def _finish(src: Path, job: QuantJob, precision: str) -> None:
    """Re-attach metadata (quantizers drop some) and write deterministically."""
    model = onnx.load(str(src))
    del model.metadata_props[:]
    for key, value in sorted({**job.metadata, "slimvit.precision": precision}.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    job.out.write_bytes(model.SerializeToString(deterministic=True))


def _float_nodes(model: onnx.ModelProto, kinds: tuple[str, ...]) -> list[str]:
    """Nodes to leave unquantized so each sensitive kind stays in float end to end.

    Softmax and Gelu have no QDQ kernel, but the ops around them would still quantize their
    inputs/outputs: for softmax the two attention MatMuls (activation x activation), for gelu
    the layer that consumes its output (fc2). first/last are the patch embedding and the head.
    """
    weights = {t.name for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if not is_probe(n.name)]
    weighted = [n for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")
                and any(i in weights for i in n.input)]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # attention MatMuls (activation x activation) always stay float: int8 is slower there
    names: list[str] = [n.name for n in nodes if n.op_type == "MatMul" and not any(i in weights for i in n.input)]
    if "softmax" in kinds:
        names += [n.name for n in nodes if n.op_type == "MatMul" and not any(i in weights for i in n.input)]
    if "gelu" in kinds:
        for g in (n for n in nodes if n.op_type == "Gelu"):
            frontier = list(g.output)
            while frontier:  # follow reshapes to the layer that reads the GELU output
                for c in consumers.get(frontier.pop(), []):
                    if c.op_type in ("Reshape", "Transpose"):
                        frontier += list(c.output)
                    else:
                        names.append(c.name)
    if "first" in kinds and weighted:
        names.append(weighted[0].name)
    if "last" in kinds and weighted:
        names.append(weighted[-1].name)
    return list(dict.fromkeys(names))


def quantize_fp16(job: QuantJob) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(job.fp32_path))
    # LayerNorm statistics overflow/underflow in fp16 on some inputs: keep them in float32.
    # ONNX Runtime's CPU Attention kernel is float32 only: it stays float32, its weights fp16.
    block = ["Attention", *(["LayerNormalization"] if "layernorm" in job.float_ops else [])]
    with quiet():
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    half_cast_initializers(half)
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work) / "fp16.onnx"
        onnx.save(half, str(tmp))
        _finish(tmp, job, "fp16")


class _Reader:
    """ORT CalibrationDataReader over the variant's own inputs, one sample per run."""

    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self.name, self.inputs, self.i = name, inputs, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.inputs):
            return None
        self.i += 1
        return {self.name: self.inputs[self.i - 1: self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize_int8(job: QuantJob, shared: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if job.calibration is None:
        raise ValueError("static int8 needs calibration inputs")
    target = TARGETS[job.target]
    with tempfile.TemporaryDirectory() as work:
        pre = _prepared(job.fp32_path, Path(work))
        model = onnx.load(str(pre))
        # the quantizer has no QDQ rule for fused Attention: a probe MatMul(x, W) gets x's
        # calibrated scale and W's per-column int8 weights, then becomes QAttention
        if add_attention_probes(model):
            pre = Path(work) / "probed.onnx"
            onnx.save(model, str(pre))
        # the head always stays float: its input is one token's LayerNorm output, whose few
        # channels share one activation scale badly (demo worst drop 0.56 -> 0.28 p.p.), and it
        # is ~0.02% of the MACs at DeiT-Ti shape
        exclude = _float_nodes(model, tuple(dict.fromkeys(("last", *job.float_ops))))
        out = Path(work) / "int8.onnx"
        with quiet():
            quantize_static(
                str(pre), str(out), _Reader(model.graph.input[0].name, job.calibration),
                # S8S8 where the unit multiplies s8 x s8 (ARM sdot), U8S8 on x86 (vpdpbusd and
                # vpmaddubsw are u8 x s8). 7-bit weights only where u8 x s8 pairs are added in
                # saturating 16 bits (x86 without VNNI): that saturation cost up to 12 p.p. top-1
                # on the demo's 1-head width; on VNNI/dotprod 8-bit weights are exact.
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=target.ort_reduce_range,
                activation_type=QuantType.QInt8 if target.ort_activations == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(_QDQ_TYPES), nodes_to_exclude=exclude,
                calibrate_method=getattr(CalibrationMethod, _METHODS[job.method]),
                # one sample per calibration run: a moving average of per-sample ranges is
                # narrower than the data and clips (demo mean drop 0.60 p.p. vs 0.19 global)
                extra_options={"CalibMovingAverage": False,
                               "OpTypesToExcludeOutputQuantization": _FLOAT_OUTPUT_TYPES},
            )
        quantized = onnx.load(str(out))
        probes_to_qattention(quantized)
        onnx.save(quantized, str(out))
        if shared:
            _share(out, model, job, target.ort_reduce_range)
        _finish(out, job, "int8-shared" if shared else "int8")


def quantize_int8_dynamic(job: QuantJob, shared: bool = False) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as work:
        pre = _prepared(job.fp32_path, Path(work))
        model = onnx.load(str(pre))
        exclude = _float_nodes(model, job.float_ops)
        # quantize_dynamic first splits each Gemm G into MatMul "G_MatMul" + Add and then matches
        # nodes_to_exclude against those names: without them every Gemm was quantized anyway
        exclude += [f"{name}_MatMul" for name in exclude]
        out = Path(work) / "dyn.onnx"
        with quiet():
            # 7-bit weights only for targets whose unit saturates (x86 without VNNI: demo worst
            # drop 4.74 -> 0.28 p.p. there); activations are u8 in ORT's dynamic kernels
            # Attention -> QAttention (ONNX Runtime's own rule; its weights are always 7-bit)
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                             per_channel=True, reduce_range=TARGETS[job.target].ort_reduce_range,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
        if shared:
            _share(out, model, job, TARGETS[job.target].ort_reduce_range)
        _finish(out, job, "int8-dynamic-shared" if shared else "int8-dynamic")


def _share(path: Path, float_model: onnx.ModelProto, job: QuantJob, reduce_range: bool) -> None:
    """Swap ORT's per-variant int8 weights for slices of the slimmable model's shared ones."""
    if job.reference is None:
        raise ValueError("shared-scale int8 needs the slimmable model (export through export_bundle)")
    quantized = onnx.load(str(path))
    share_weights(quantized, float_model, job.reference.model, job.reference.s, 64 if reduce_range else 127)
    onnx.save(quantized, str(path))



FP16 = register(Precision("fp16", "onnx", "float16 weights and math, float32 input/output",
                          calibrated=False, min_agreement=0.97, quantize=quantize_fp16))
INT8 = register(Precision("int8", "onnx", "static QDQ int8 on the weighted layers: per-channel int8 "
                          "weights, calibrated int8 (arm-dotprod) or uint8 (x86) activations, float "
                          "outputs; the head, attention matmuls, softmax, GELU and LayerNorm in float; 7-bit "
                          "weights for x86-avx2/portable", calibrated=True,
                          min_agreement=0.8, quantize=quantize_int8, uses_target=True))
INT8_DYNAMIC = register(Precision("int8-dynamic", "onnx", "per-channel int8 weights of MatMul/Gemm "
                                  "(7-bit for x86-avx2/portable), activations quantized per run",
                                  calibrated=False, min_agreement=0.8, quantize=quantize_int8_dynamic,
                                  uses_target=True))
# Shared-scale int8 (exporter.convert.quantize.shared): the same recipes, but every width's int8
# weights are slices of one per-channel quantization of the slimmable model, so a pack stores
# them once (docs/quantization.md, "Shared-scale int8").
INT8_SHARED = register(Precision("int8-shared", "onnx", "static QDQ int8 as int8, with shared-scale "
                                 "weights: the slimmable weights quantized once per output channel, "
                                 "each width's int8 weights and scales a slice of them; activations "
                                 "calibrated per variant", calibrated=True, min_agreement=0.8,
                                 quantize=lambda job: quantize_int8(job, shared=True), uses_target=True))
INT8_DYNAMIC_SHARED = register(Precision("int8-dynamic-shared", "onnx", "int8-dynamic with shared-scale "
                                         "weights: the slimmable weights quantized once per output "
                                         "channel, each width's int8 weights and scales a slice of them",
                                         calibrated=False, min_agreement=0.8,
                                         quantize=lambda job: quantize_int8_dynamic(job, shared=True),
                                         uses_target=True))
