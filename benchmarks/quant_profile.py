"""Helpers for bench_quant.py: the host's int8 units, interleaved wall + CPU timing, ONNX
Runtime's per-op profile, and the previous ONNX int8 recipe (for the before/after rows)."""

from __future__ import annotations

import collections
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.convert.quantize.targets import TARGETS, host_cpu_flags, host_has_unit

INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def int8_units() -> str:
    """The host's int8-relevant CPU flags and which int8 targets it serves, in words."""
    flags = host_cpu_flags()
    if flags is None:
        return "CPU flags unreadable"
    found = [f for f in INT8_FLAGS if f in flags]
    serves = [n for n in TARGETS if n != "portable" and host_has_unit(n, flags)]
    vnni = "VNNI: yes" if {"avx512_vnni", "avx_vnni"} & flags else "VNNI: no"
    return f"int8 flags: {', '.join(found) or 'none'} ({vnni}; has the unit of {', '.join(serves) or 'no target'})"


def time_interleaved(runners: dict[str, Callable[[], object]], rounds: int = 7,
                     runs: int = 6) -> dict[str, tuple[float, float]]:
    """Median wall ms and median process-CPU ms per model; models alternate every ``runs`` runs,
    so load that comes and goes hits them alike. CPU time is what the process got, which a
    shared machine disturbs less than wall time (with several threads it sums them)."""
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in runners.items():
            for _ in range(runs):
                t, c = time.perf_counter(), time.process_time()
                fn()
                cpu[name].append((time.process_time() - c) * 1e3)
                wall[name].append((time.perf_counter() - t) * 1e3)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runners}


def ort_op_profile(path: Path, x: np.ndarray, runs: int = 30) -> tuple[dict[str, float], int]:
    """ms per op type: the sum over nodes of each node's fastest run (ORT's profiler, 1 thread).

    The minimum over runs is what a node costs when nothing preempts it, so the split stays
    readable on a loaded machine. Returns ({op type: ms}, node count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x})
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"])
            op_of[e["name"]] = e["args"]["op_name"]
    by_op: collections.Counter = collections.Counter()
    for node, durs in per_node.items():
        by_op[op_of[node]] += min(durs) / 1e3
    return dict(by_op.most_common()), len(per_node)


MATMUL_OPS = {"Gemm", "QGemm", "MatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul",
              "Conv", "QLinearConv", "FusedMatMul", "FusedGemm"}


def previous_onnx_int8(fp32: Path, calib: np.ndarray, out: Path) -> None:
    """The ONNX int8 recipe before issue 21: U8S8 with 7-bit weights on every CPU, QDQ on
    LayerNorm and data-movement ops too, requantized layer outputs (kept only to measure)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader:
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            self.i += 1
            return {"pixel_values": calib[self.i - 1:self.i]} if self.i <= len(calib) else None

    ops = ["Conv", "Gemm", "MatMul", "LayerNormalization", "Reshape", "Transpose", "Slice", "Split",
           "Gather", "Unsqueeze", "Squeeze", "Flatten"]
    with tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=ops, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibMovingAverage": False})
