"""TFLite (LiteRT): `litert_torch.convert` straight from PyTorch (no TensorFlow), run by the LiteRT
interpreter (`ai-edge-litert`). Metadata goes into the flatbuffer's own `metadata` entries.

The input is NCHW like every other format; ``layout="NHWC"`` puts a permute in front of the graph
so an app can feed camera frames (H, W, C) without transposing them itself."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from exporter.convert.formats.base import ExportFormat, converter_error, quiet
from exporter.convert.formats.delegation import tflite_delegation
from exporter.errors import ValidationError
from exporter.gate.files import dumps_strict

INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
METADATA_NAME = "slimvit"  # JSON object of every slimvit.* key
LABELS_NAME = "slimvit.labels"  # one label per line, the labels.txt convention


class NHWCInput(nn.Module):
    """Takes (B, H, W, C) and hands (B, C, H, W) to the wrapped static variant."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.permute(0, 3, 1, 2))


class TFLiteFormat(ExportFormat):
    name: ClassVar[str] = "tflite"
    suffix: ClassVar[str] = ".tflite"
    atol: ClassVar[float] = 1e-4
    deterministic: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("litert_torch", "ai_edge_litert")
    layouts: ClassVar[tuple[str, ...]] = ("NCHW", "NHWC")
    cli_options: ClassVar[tuple[str, ...]] = ("--nhwc",)
    app_schema_version: ClassVar[int] = 3  # the TFLite schema the apps' LiteRT reads

    @classmethod
    def runtime_problems(cls, path: Path) -> list[str]:
        with open(path, "rb") as f:
            head = f.read(64 << 10)
        if len(head) < 8 or head[4:8] != b"TFL3":
            return ["not a TFLite flatbuffer (no TFL3 identifier)"]
        # Model.version is field 0 of the root table: root offset -> table -> vtable -> field.
        table = int.from_bytes(head[0:4], "little")
        vtable = table - int.from_bytes(head[table:table + 4], "little", signed=True)
        off = int.from_bytes(head[vtable + 4:vtable + 6], "little")
        version = int.from_bytes(head[table + off:table + off + 4], "little") if off else 0
        if version != cls.app_schema_version:
            return [f"TFLite schema version {version}, the apps read {cls.app_schema_version}"]
        return []

    def export(self, module: nn.Module, example: np.ndarray, path: Path,
               metadata: Mapping[str, str]) -> None:
        with quiet():  # its import logs from C++
            import litert_torch

        x = torch.from_numpy(example)
        if self.layout == "NHWC":
            module, x = NHWCInput(module).eval(), x.permute(0, 2, 3, 1).contiguous()
        try:
            with quiet():
                content = litert_torch.convert(module, (x,)).model_content()
        except Exception as e:  # the converter raises many types; name the op for the user
            raise converter_error(self.name, metadata, e) from e
        data = finish_flatbuffer(content, metadata)
        custom = graph_info(data).custom_ops
        if custom:
            raise converter_error(self.name, metadata, RuntimeError(
                f"ops {sorted(custom)} are not TFLite builtins (they would need the Flex delegate)"))
        path.write_bytes(data)

    def interpreter(self, path: Path, threads: int = 1):  # -> ai_edge_litert Interpreter
        from ai_edge_litert.interpreter import Interpreter

        with quiet():  # "Created TensorFlow Lite XNNPACK delegate" from C++
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
        return it

    def read_metadata(self, path: Path) -> dict[str, str]:
        return read_metadata(path)

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        it = self.interpreter(path)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        if self.layout == "NHWC":
            inputs = inputs.transpose(0, 2, 3, 1)
        rows = []
        for i in range(len(inputs)):
            it.set_tensor(inp["index"], np.ascontiguousarray(inputs[i:i + 1]))
            it.invoke()
            rows.append(it.get_tensor(out["index"]).copy())
        return np.concatenate(rows)

    def delegation(self, path: Path) -> dict:
        return tflite_delegation(path)

    def runtime_version(self) -> str:
        import importlib.metadata

        return f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"


@dataclass(frozen=True)
class GraphInfo:
    """What a delegate cares about in a .tflite graph."""

    ops: dict[str, int]  # builtin op name -> count
    custom_ops: set[str]
    max_rank: int
    dtypes: set[str]  # every tensor's type, e.g. {"FLOAT32", "INT32", "BOOL"}
    inputs: dict[str, tuple[list[int], str]]  # signature name -> (shape, dtype)
    outputs: dict[str, tuple[list[int], str]]
    metadata: dict[str, bytes]


def graph_info(model: bytes | Path) -> GraphInfo:
    """Read ops, ranks, types, signature and metadata of a .tflite file (or its bytes)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    data = model.read_bytes() if isinstance(model, Path) else model
    m = fu.read_model_from_bytearray(bytearray(data))
    ops: dict[str, int] = {}
    custom: set[str] = set()
    tensors = [t for sg in m.subgraphs for t in sg.tensors]
    for sg in m.subgraphs:
        for op in sg.operators:
            code = m.operatorCodes[op.opcodeIndex]
            if code.customCode:
                custom.add(_text(code.customCode))
            else:
                name = fu.opcode_to_name(m, op.opcodeIndex)
                ops[name] = ops.get(name, 0) + 1
    main = m.subgraphs[0].tensors
    sig = m.signatureDefs[0]

    def io(items) -> dict[str, tuple[list[int], str]]:
        return {_text(t.name): ([int(d) for d in main[t.tensorIndex].shape],
                                fu.type_to_name(main[t.tensorIndex].type)) for t in items}

    return GraphInfo(
        ops=ops, custom_ops=custom, max_rank=max(len(t.shape) for t in tensors if t.shape is not None),
        dtypes={fu.type_to_name(t.type) for t in tensors}, inputs=io(sig.inputs), outputs=io(sig.outputs),
        metadata={_text(md.name): bytes(m.buffers[md.buffer].data) for md in m.metadata or []},
    )


def delegate_problems(info: GraphInfo) -> list[str]:
    """Why a GPU/NPU delegate would reject or split the graph; empty when it should take it whole."""
    problems = [f"custom op {op}" for op in sorted(info.custom_ops)]
    if info.max_rank > 4:
        problems.append(f"a tensor of rank {info.max_rank} (delegates take rank <= 4)")
    problems += [f"{t} tensors" for t in sorted(info.dtypes & {"INT64", "FLOAT64"})]
    return problems


def read_metadata(path: Path) -> dict[str, str]:
    """The slimvit metadata written into a .tflite file; raises ValidationError if it has none."""
    raw = graph_info(path).metadata.get(METADATA_NAME)
    if raw is None:
        raise ValidationError(f"{path} has no '{METADATA_NAME}' metadata entry; was it exported by slimvit?")
    return json.loads(raw.decode("utf-8"))


def finish_flatbuffer(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """Name the signature's input/output like the other formats and add our metadata entries."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(data))
    sig, tensors = m.signatureDefs[0], m.subgraphs[0].tensors
    for items, name in ((sig.inputs, INPUT_NAME), (sig.outputs, OUTPUT_NAME)):
        if len(items) != 1:
            raise ValidationError(f"expected one {name} tensor in the TFLite signature, got {len(items)}")
        items[0].name = name
        tensors[items[0].tensorIndex].name = name
    m.description = f"slimvit {metadata.get('slimvit.variant_id', '')}".strip()
    labels = json.loads(metadata["slimvit.labels"]) if "slimvit.labels" in metadata else []
    entries = {METADATA_NAME: dumps_strict(dict(sorted(metadata.items()))).encode("utf-8")}
    if labels:
        entries[LABELS_NAME] = "\n".join(labels).encode("utf-8")
    m.metadata = [md for md in m.metadata or [] if _text(md.name) not in entries]
    for key, payload in entries.items():
        buf = fb.BufferT()
        buf.data = np.frombuffer(payload, dtype=np.uint8)
        m.buffers.append(buf)
        md = fb.MetadataT()
        md.name, md.buffer = key, len(m.buffers) - 1
        m.metadata.append(md)
    return bytes(fu.convert_object_to_bytearray(m))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
