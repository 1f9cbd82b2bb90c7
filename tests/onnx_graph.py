"""Reading an exported ONNX graph for the properties mobile delegates need."""

from __future__ import annotations

from pathlib import Path

import onnx


def tensor_types(path: Path) -> dict[str, tuple[int, list[int | str]]]:
    """Every value in the graph (inputs, outputs, intermediates) -> (elem_type, dims)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    out = {}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        out[vi.name] = (t.elem_type, dims)
    return out


def int64_data_values(path: Path) -> set[str]:
    """int64 values that are data (not shape/axis constants): the TopK index path."""
    model = onnx.load(str(path))
    const = {i.name for i in model.graph.initializer}
    const |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    types = tensor_types(path)
    return {name for name, (et, _) in types.items()
            if et == onnx.TensorProto.INT64 and name not in const}
