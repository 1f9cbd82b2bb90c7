"""ONNX: `torch.onnx.export(dynamo=True)` into one self-contained file, run by ONNX Runtime."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import torch
from torch import nn

from exporter.convert.formats.base import ExportFormat, in_range, quiet
from exporter.convert.onnx_graph import fuse_attention, narrow_tokens
from exporter.measure.worker import ort_session

INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"


class OnnxFormat(ExportFormat):
    name: ClassVar[str] = "onnx"
    suffix: ClassVar[str] = ".onnx"
    atol: ClassVar[float] = 1e-4
    deterministic: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("onnx", "onnxruntime")
    opset: ClassVar[int] = 20
    # ONNX Runtime graph passes (exporter/convert/onnx_graph.py, docs/quantization.md): one
    # com.microsoft.Attention node per block, and the network's tail on the head's token only;
    # benchmarks turn them off to measure what they buy
    graph_passes: ClassVar[bool] = True
    # The oldest runtime the apps ship: onnxruntime >= 1.18 (opset 21, IR 10); 17 is the oldest we export.
    app_opsets: ClassVar[tuple[int, int]] = (17, 21)
    app_ir_versions: ClassVar[tuple[int, int]] = (8, 10)

    @classmethod
    def runtime_problems(cls, path: Path) -> list[str]:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf raises its own DecodeError
            return [f"not a readable ONNX model ({type(e).__name__})"]
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is None:
            return ["ONNX model imports no default opset"]
        return (in_range("ONNX opset", opset, cls.app_opsets)
                + in_range("ONNX IR version", model.ir_version, cls.app_ir_versions))

    def export(self, module: nn.Module, example: np.ndarray, path: Path,
               metadata: Mapping[str, str]) -> None:
        x = torch.from_numpy(example)
        with quiet():
            program = torch.onnx.export(
                module, (x,), dynamo=True, external_data=False, opset_version=self.opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )
        model = program.model_proto
        _strip_export_noise(model)
        if self.graph_passes:
            narrow_tokens(model)  # first: shape inference does not know the contrib Attention
            fuse_attention(model)
        for key, value in sorted(metadata.items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        path.write_bytes(model.SerializeToString(deterministic=True))

    def read_metadata(self, path: Path) -> dict[str, str]:
        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}

    def session(self, path: Path, threads: int = 1):  # -> onnxruntime.InferenceSession
        return ort_session(path, threads)

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        sess = self.session(path)
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: inputs[i:i + 1]})[0] for i in range(len(inputs))])

    def runtime_version(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"


def _strip_export_noise(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (source names, stack traces): it makes files
    bigger and tells an app nothing."""
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        del value.metadata_props[:]
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.doc_string = ""

