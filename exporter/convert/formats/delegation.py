"""Delegation reports: how much of an artifact's graph runs in the XNNPACK delegate.

A CPU delegate only pays where it takes the work: every op it leaves out runs in the runtime's
own kernels, and every partition boundary is a hand-off. The report counts ops, partitions and
the multiply-accumulates of matrix products and convolutions (the ops that carry the MACs),
inside the delegate and outside it, and lists the op types that fall back.

ExecuTorch: read from the lowered edge program (each delegate keeps the graph it replaced).
TFLite: read from the LiteRT interpreter's execution plan after the XNNPACK delegate was
applied (the nodes left outside any DELEGATE node fall back), with MACs from the flatbuffer."""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any

from exporter.convert.formats.base import quiet


def report(backend: str, partitions: int, ops: int, fallback: dict[str, int], macs: int,
           fallback_macs: int) -> dict[str, Any]:
    """The manifest's ``delegation`` object (docs/bundle-format.md)."""
    delegated_macs = macs - fallback_macs
    return {
        "backend": backend, "partitions": partitions, "ops": ops,
        "delegated_ops": ops - sum(fallback.values()),
        "macs": macs, "delegated_macs": delegated_macs,
        "delegated_mac_share": round(delegated_macs / macs, 6) if macs else 1.0,
        "fallback_ops": dict(sorted(fallback.items())),
    }


# --- ExecuTorch ------------------------------------------------------------------------------

def edge_delegation(program: Any, backend: str = "XNNPACK") -> dict[str, Any]:
    """Delegation report of a lowered ExecuTorch edge program (an ``ExportedProgram``)."""
    gm = program.graph_module
    ops = partitions = macs = fallback_macs = 0
    fallback: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if "executorch_call_delegate" in str(node.target):
            partitions += 1
            inner = getattr(gm, node.args[0].target).original_module
            for sub in inner.graph_module.graph.nodes:
                if sub.op == "call_function" and sub.target is not operator.getitem:
                    ops += 1
                    macs += _edge_macs(sub)
            continue
        ops += 1
        name = _edge_name(node.target)
        fallback[name] = fallback.get(name, 0) + 1
        m = _edge_macs(node)
        macs += m
        fallback_macs += m
    return report(backend, partitions, ops, fallback, macs, fallback_macs)


def _edge_name(target: Any) -> str:
    """``aten::native_layer_norm`` for the edge op ``aten::native_layer_norm.default`` (overloads
    dropped: a report lists op types)."""
    name = str(getattr(target, "_name", None) or getattr(target, "__name__", None) or target)
    if "::" not in name and name.startswith("aten."):
        name = "aten::" + name[len("aten."):]
    return name.split(".")[0] if "::" in name else name


def _shape(node: Any) -> tuple[int, ...] | None:
    val = getattr(node, "meta", {}).get("val") if node is not None else None
    return tuple(int(d) for d in val.shape) if hasattr(val, "shape") else None


def _edge_macs(node: Any) -> int:
    name = _edge_name(node.target).split("::")[-1]
    out = _shape(node)
    if out is None or name not in ("linear", "mm", "addmm", "bmm", "matmul", "convolution"):
        return 0
    args = node.args
    if name == "linear":
        k = _shape(args[1])[-1]
    elif name == "addmm":
        k = _shape(args[1])[-1]
    elif name == "convolution":
        w = _shape(args[1])
        k = math.prod(w) // w[0]
    else:
        k = _shape(args[0])[-1]
    return math.prod(out) * k


# --- TFLite ----------------------------------------------------------------------------------

def tflite_delegation(path: Path) -> dict[str, Any]:
    """Delegation report of a `.tflite` under LiteRT's default XNNPACK delegate (one thread)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    sg = m.subgraphs[0]
    op_macs = [_tflite_macs(m, sg, op) for op in sg.operators]
    with quiet():
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        plan = it._get_ops_details()
    n = len(sg.operators)
    delegated = _delegated_nodes(sg, [op for op in plan if op["op_name"] == "DELEGATE"])
    fallback: dict[str, int] = {}
    fallback_macs = 0
    for i, op in enumerate(sg.operators):
        if i not in delegated:
            name = fu.opcode_to_name(m, op.opcodeIndex)
            fallback[name] = fallback.get(name, 0) + 1
            fallback_macs += op_macs[i]
    partitions = sum(op["op_name"] == "DELEGATE" for op in plan)
    return report("XNNPACK", partitions, n, fallback, sum(op_macs), fallback_macs)


def _delegated_nodes(sg: Any, delegates: list[dict[str, Any]]) -> set[int]:
    """The original nodes each DELEGATE node replaced. The interpreter does not expose its
    execution plan, but a delegate node keeps its partition's boundary tensors: walking back
    from its outputs through the original producers, stopping at its inputs, finds the nodes
    inside it."""
    producer = {int(t): i for i, op in enumerate(sg.operators) for t in op.outputs}
    inside: set[int] = set()
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while todo:
            t = todo.pop()
            if t in seen or t in stop or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            if node not in inside:
                inside.add(node)
                todo += [int(i) for i in sg.operators[node].inputs if i >= 0]
    return inside


def _tflite_macs(model: Any, sg: Any, op: Any) -> int:
    from ai_edge_litert.tools import flatbuffer_utils as fu

    name = fu.opcode_to_name(model, op.opcodeIndex)
    if name not in ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D"):
        return 0
    shape = [list(sg.tensors[i].shape) for i in op.inputs[:2]]
    out = math.prod(int(d) for d in sg.tensors[op.outputs[0]].shape)
    if name == "FULLY_CONNECTED":
        k = shape[1][-1]
    elif name == "BATCH_MATMUL":
        adj_x = bool(getattr(op.builtinOptions, "adjX", False))
        k = shape[0][-2] if adj_x else shape[0][-1]
    elif name == "CONV_2D":  # filter OHWI
        k = math.prod(shape[1][1:])
    else:  # depthwise filter 1HWO: one input channel per output
        k = shape[1][1] * shape[1][2]
    return out * int(k)
