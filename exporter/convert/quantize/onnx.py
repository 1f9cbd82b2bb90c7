"""ONNX precisions: fp16 (float16 weights and math, float32 I/O), int8 (static QDQ, per-channel
weights, calibrated activations) and int8-dynamic (int8 weights, activations quantized at run
time). Quantization starts from ONNX Runtime's pre-processing (shape inference and graph
optimizations such as MatMul+Add -> Gemm), which lets more ops take the int8 path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from exporter.convert.formats.base import quiet
from exporter.convert.quantize.registry import Precision, QuantJob, register

# Op types ONNX Runtime's QDQ quantizer would quantize that a retry keeps in float. Softmax and
# Gelu have no QDQ kernel on CPU, so they stay float in every case.
_SENSITIVE_TYPES = {"layernorm": "LayerNormalization", "softmax": "Softmax", "gelu": "Gelu"}
_QDQ_TYPES = ("Conv", "Gemm", "MatMul", "LayerNormalization", "Reshape", "Transpose", "Slice",
              "Split", "Gather", "GatherElements", "TopK", "Unsqueeze", "Squeeze", "Flatten")
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
    nodes = list(model.graph.node)
    weighted = [n for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")
                and any(i in weights for i in n.input)]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names: list[str] = []
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
    block = ["LayerNormalization"] if "layernorm" in job.float_ops else []
    with quiet():
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=block or None)
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


def quantize_int8(job: QuantJob) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if job.calibration is None:
        raise ValueError("static int8 needs calibration inputs")
    with tempfile.TemporaryDirectory() as work:
        pre = _prepared(job.fp32_path, Path(work))
        model = onnx.load(str(pre))
        ops = [t for t in _QDQ_TYPES if t not in {_SENSITIVE_TYPES.get(k) for k in job.float_ops}]
        exclude = _float_nodes(model, job.float_ops)
        out = Path(work) / "int8.onnx"
        with quiet():
            quantize_static(
                str(pre), str(out), _Reader(model.graph.input[0].name, job.calibration),
                # U8 activations / S8 weights, with 7-bit weights (reduce_range): x86 CPUs
                # without VNNI multiply u8 x s8 pairs with a saturating 16-bit add
                # (vpmaddubsw), which cost up to 12 p.p. top-1 on the demo's 1-head width;
                # 7-bit weights cannot saturate, and cost nothing measurable on ARM or VNNI.
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=ops, nodes_to_exclude=exclude,
                calibrate_method=getattr(CalibrationMethod, _METHODS[job.method]),
                # one sample per calibration run: a moving average of per-sample ranges is
                # narrower than the data and clips (demo mean drop 0.60 p.p. vs 0.19 global)
                extra_options={"CalibMovingAverage": False},
            )
        _finish(out, job, "int8")


def quantize_int8_dynamic(job: QuantJob) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as work:
        pre = _prepared(job.fp32_path, Path(work))
        exclude = _float_nodes(onnx.load(str(pre)), job.float_ops)
        out = Path(work) / "dyn.onnx"
        with quiet():
            # 7-bit weights for the same x86 saturation as static int8 (demo worst drop 4.74 -> 0.28)
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=exclude)
        _finish(out, job, "int8-dynamic")



FP16 = register(Precision("fp16", "onnx", "float16 weights and math, float32 input/output",
                          calibrated=False, min_agreement=0.97, quantize=quantize_fp16))
INT8 = register(Precision("int8", "onnx", "static QDQ int8: per-channel symmetric 7-bit-range int8 "
                          "weights (reduce_range), uint8 activations with calibrated ranges",
                          calibrated=True,
                          min_agreement=0.8, quantize=quantize_int8))
INT8_DYNAMIC = register(Precision("int8-dynamic", "onnx", "per-channel 7-bit-range int8 weights of "
                                  "MatMul/Gemm (reduce_range), activations quantized per run", calibrated=False,
                                  min_agreement=0.8, quantize=quantize_int8_dynamic))
