"""ONNX graph post-passes for ONNX Runtime: each block's attention as one fused node.

(Over 400 lines: the fusion, the int8 probes and the token narrowing share one chain matcher
and its shape checks; split apart they would each need it.)

The exported attention is eleven ops per block (qkv MatMul, bias Add, Reshape, Transpose,
Split, a Transpose of K, MatMul, Softmax, MatMul, Transpose, Reshape). ONNX Runtime's contrib
``com.microsoft.Attention`` does the same in one kernel that writes q, k and v straight into
the per-head layout, so the transposes, the split and three reshape passes over the tokens
disappear (DeiT-Ti shape, 1 thread: ~1.4 ms of ~23 ms in FP32). Its int8 sibling
``QAttention`` runs the qkv projection as int8 GEMMs (MLAS: AMX or VNNI) and the attention
itself in float, the same split as the unfused int8 graph.

- ``fuse_attention`` rewrites an exported FP32 graph. A block is fused only when its chain
  matches exactly (shapes, permutations, one consumer per intermediate); a block whose
  attention probabilities are read elsewhere (token pruning ranks tokens by them) stays as it
  was. The fused graph computes the same sums in the same order: it matches the unfused one
  to float rounding.
- ``add_attention_probes`` / ``probes_to_qattention`` bracket ONNX Runtime's static
  quantizer, which has no QDQ rule for ``Attention``: a probe ``MatMul(x, W)`` beside each
  Attention node lets the quantizer calibrate x and quantize W per column exactly as it does
  for every other layer; the pass then builds ``QAttention`` from the probe's quantized
  input and weight and removes the probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
PROBE_SUFFIX = "/qattention_probe"


class _Graph:
    """Producer/consumer maps and constant lookup over one graph (rebuilt after each rewrite)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.inits = {t.name: t for t in g.initializer}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(helper.get_attribute_value(node.attribute[0])) \
                if node.attribute and node.attribute[0].name == "value" else None
        return None

    def sole_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` if it has that type and ``name`` is no graph output."""
        users = self.consumers.get(name, [])
        if name in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The producer of ``name`` if it has that type and ``name`` has no other reader."""
        node = self.producer.get(name)
        if node is None or node.op_type != op_type or len(self.consumers.get(name, [])) != 1 \
                or name in self.outputs:
            return None
        return node


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class _Match:
    chain: tuple[onnx.NodeProto, ...]  # every node the fused one replaces; the last is the anchor
    x: str
    weight: str
    bias: str | None
    out: str
    num_heads: int
    width: int  # 3 * heads * head_dim columns of the qkv weight


def _match(g: _Graph, softmax: onnx.NodeProto) -> _Match | None:
    """The attention chain around one Softmax, or None when anything differs from the export."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores = g.made_by(softmax.input[0], "MatMul")
    mix = g.sole_consumer(softmax.output[0], "MatMul")
    if scores is None or mix is None or mix.input[0] != softmax.output[0]:
        return None
    k_t = g.made_by(scores.input[1], "Transpose")
    split = g.producer.get(scores.input[0])
    if k_t is None or split is None or split.op_type != "Split" or list(_attr(k_t, "perm", [])) != [0, 1, 3, 2]:
        return None
    if len(split.output) != 3 or _attr(split, "axis", 0) != 1 or list(split.output) != \
            [scores.input[0], k_t.input[0], mix.input[1]]:
        return None
    if any(len(g.consumers.get(o, [])) != 1 or o in g.outputs for o in split.output):
        return None
    if len(split.input) > 1 and split.input[1]:
        sizes = g.const(split.input[1])
        if sizes is None or len(set(sizes.tolist())) != 1:
            return None
    heads_first = g.made_by(split.input[0], "Transpose")
    if heads_first is None or list(_attr(heads_first, "perm", [])) != [0, 2, 1, 3]:
        return None
    to_heads = g.made_by(heads_first.input[0], "Reshape")
    shape = None if to_heads is None else g.const(to_heads.input[1])
    if shape is None or shape.shape != (4,) or shape[2] % 3:
        return None
    num_heads, head_dim = int(shape[2]) // 3, int(shape[3])
    bias_add = g.made_by(to_heads.input[0], "Add")
    qkv_out = to_heads.input[0] if bias_add is None else bias_add.input[0]
    bias = None
    if bias_add is not None:
        if g.const(bias_add.input[1]) is None or bias_add.input[1] not in g.inits:
            return None
        bias = bias_add.input[1]
    qkv = g.made_by(qkv_out, "MatMul")
    if qkv is None or qkv.input[1] not in g.inits:
        return None
    weight = g.inits[qkv.input[1]]
    width = 3 * num_heads * head_dim
    if len(weight.dims) != 2 or weight.dims[1] != width or \
            (bias is not None and list(g.inits[bias].dims) != [width]):
        return None
    back = g.sole_consumer(mix.output[0], "Transpose")
    merge = None if back is None else g.sole_consumer(back.output[0], "Reshape")
    if back is None or merge is None or list(_attr(back, "perm", [])) != [0, 2, 1, 3]:
        return None
    out_shape = g.const(merge.input[1])
    if out_shape is None or out_shape.shape != (3,) or int(out_shape[2]) != num_heads * head_dim:
        return None
    chain = tuple(n for n in (qkv, bias_add, to_heads, heads_first, split, k_t, scores, softmax, mix,
                              back, merge) if n is not None)
    return _Match(chain, qkv.input[0], qkv.input[1], bias, merge.output[0], num_heads, width)


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads, initializers no node reads, and the value_info of
    values no node makes any more (stale type annotations of removed intermediates)."""
    g = model.graph
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        dead_ids = {id(n) for n in dead}
        keep = [n for n in g.node if id(n) not in dead_ids]
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    keep_init = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_init)
    made = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | {i.name for i in g.input}
    keep_info = [v for v in g.value_info if v.name in made]
    del g.value_info[:]
    g.value_info.extend(keep_info)


def _replace(model: onnx.ModelProto, swaps: dict[int, onnx.NodeProto], drop: set[int]) -> None:
    """Put ``swaps[id(node)]`` where each anchor node was, remove the ``drop`` nodes."""
    nodes = [swaps.get(id(n), n) for n in model.graph.node if id(n) in swaps or id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace every matching attention chain with one ``com.microsoft.Attention`` node, in place.

    The q rows of the qkv weight come pre-scaled from the static model, so the node's
    ``scale`` is 1. A block without a qkv bias gets a zero bias (the op needs one).

    Returns:
        The number of blocks fused (0 leaves the model untouched).
    """
    g = _Graph(model)
    swaps: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        m = _match(g, softmax)
        if m is None:
            continue
        bias = m.bias
        if bias is None:
            bias = f"{m.weight}/zero_bias"
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(m.width, np.float32), bias))
        fused = helper.make_node("Attention", [m.x, m.weight, bias], [m.out], name=f"{m.chain[0].name}/attention",
                                 domain=MS_DOMAIN, num_heads=m.num_heads, scale=1.0)
        swaps[id(m.chain[-1])] = fused
        drop |= {id(n) for n in m.chain[:-1]}
    if not swaps:
        return 0
    _replace(model, swaps, drop)
    _ensure_ms_opset(model)
    _prune(model)
    return len(swaps)


def add_attention_probes(model: onnx.ModelProto) -> int:
    """Add ``MatMul(x, W)`` beside each fused Attention node as an extra graph output, in place,
    so that a static quantizer calibrates the node's input and quantizes its weight. Returns the
    number of probes."""
    count = 0
    for node in [n for n in model.graph.node if n.op_type == "Attention" and n.domain == MS_DOMAIN]:
        name = node.name + PROBE_SUFFIX
        model.graph.node.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [name], name=name))
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        count += 1
    return count


def is_probe(node_name: str) -> bool:
    return node_name.endswith(PROBE_SUFFIX)


def probes_to_qattention(model: onnx.ModelProto) -> int:
    """Turn each probed Attention node into ``QAttention`` using the probe's quantized input and
    weight, then remove the probes, in place. An Attention whose probe the quantizer left in
    float (an excluded node) stays a float Attention.

    ONNX Runtime's CPU QAttention reads uint8 input: an int8 activation (S8S8 targets) is
    requantized with its zero point moved by 128, which is the same grid, so nothing is lost.

    Returns:
        The number of Attention nodes now quantized.
    """
    g = _Graph(model)
    by_name = {n.name: n for n in model.graph.node}
    swaps: dict[int, onnx.NodeProto] = {}
    extra: list[onnx.NodeProto] = []
    for node in [n for n in model.graph.node if n.op_type == "Attention" and n.domain == MS_DOMAIN]:
        probe = by_name.get(node.name + PROBE_SUFFIX)
        if probe is None:
            continue
        dq_x, dq_w = (g.producer.get(i) for i in probe.input)
        if dq_x is None or dq_w is None or dq_x.op_type != dq_w.op_type or dq_x.op_type != "DequantizeLinear":
            continue
        if dq_w.input[0] not in g.inits or len(dq_x.input) < 3 or len(dq_w.input) < 3:
            continue
        x_q, x_scale, x_zp = dq_x.input
        zp = g.const(x_zp)
        if zp is None:
            continue
        if zp.dtype == np.int8:  # same grid in uint8: q + 128 with zero point + 128
            q = g.producer.get(x_q)
            if q is None or q.op_type != "QuantizeLinear":
                continue
            x_zp = f"{x_zp}/uint8"
            model.graph.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), x_zp))
            x_q = f"{x_q}/uint8"
            extra.append(helper.make_node("QuantizeLinear", [q.input[0], x_scale, x_zp], [x_q], name=x_q))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        swaps[id(node)] = helper.make_node(
            "QAttention", [x_q, dq_w.input[0], node.input[2], x_scale, dq_w.input[1], "", x_zp, dq_w.input[2]],
            list(node.output), name=node.name + "/quantized", domain=MS_DOMAIN, **attrs)
    probes = {o.name for o in model.graph.output if is_probe(o.name)}
    kept = [o for o in model.graph.output if o.name not in probes]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    nodes = [swaps.get(id(n), n) for n in model.graph.node] + extra
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _prune(model)
    _toposort(model)  # the quantizer put the probes' QuantizeLinear nodes at the end
    return len(swaps)


def _toposort(model: onnx.ModelProto) -> None:
    """Order nodes so each comes after the producers of its inputs (stable otherwise)."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def half_cast_initializers(model: onnx.ModelProto) -> int:
    """Store as float16 every float32 initializer that only Cast nodes read, in place.

    ONNX Runtime's float16 converter keeps nodes it must not convert (the CPU Attention kernel
    is float32 only) behind Casts but leaves some of their weights float32 in the file; the
    Casts still produce the type they name, so storing the source as float16 halves the file at
    float16 precision, which is what an fp16 artifact promises. Returns how many were halved.
    """
    g = _Graph(model)
    count = 0
    for i, t in enumerate(model.graph.initializer):
        readers = g.consumers.get(t.name, [])
        if t.data_type != onnx.TensorProto.FLOAT or not readers or any(n.op_type != "Cast" for n in readers):
            continue
        half = numpy_helper.to_array(t).astype(np.float16)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(half, t.name))
        count += 1
    return count


# ops that work on each token alone (over the last axis), so x[:, i] commutes with them
_PER_TOKEN = {"LayerNormalization", "Add", "Sub", "Mul", "Div", "Gelu", "MatMul", "Relu", "Tanh", "Erf"}


def _token_gather(node: onnx.NodeProto, g: _Graph) -> int | None:
    """The token index when ``node`` is ``Gather(x, i, axis=1)`` with a constant scalar i."""
    if node.op_type != "Gather" or _attr(node, "axis", 0) != 1:
        return None
    idx = g.const(node.input[1])
    return None if idx is None or idx.shape != () else int(idx)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value ONNX shape inference can type (standard ops only)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.input, *g.output, *g.value_info]
            if v.type.tensor_type.HasField("shape")}


def _narrowable(p: onnx.NodeProto, g: _Graph, ranks: dict[str, int]) -> bool:
    """Can ``p(x)[:, i]`` be computed as ``p(x[:, i], ...)``? Its other inputs must broadcast
    over tokens (constants of rank <= 1 or a 2-D MatMul weight), every non-constant input must
    have the output's rank (so axis 1 is the token axis in each), and its axis must be the last."""
    if p.op_type not in _PER_TOKEN or len(p.output) != 1 or ranks.get(p.output[0], 0) < 3:
        return False
    if p.op_type == "LayerNormalization" and _attr(p, "axis", -1) != -1:
        return False
    for k, name in enumerate(p.input):
        c = g.const(name)
        if c is None:
            if name and ranks.get(name) != ranks[p.output[0]]:
                return False
            continue
        if p.op_type == "MatMul" and k == 1 and c.ndim == 2:
            continue
        if c.ndim > 1:
            return False
    return not (p.op_type == "MatMul" and g.const(p.input[1]) is None)


def narrow_tokens(model: onnx.ModelProto) -> int:
    """Compute the tail of the network for the tokens the head reads only, in place.

    The head reads ``x[:, 0]`` (and ``x[:, 1]`` when distilled) after the final LayerNorm, and
    everything between the last attention and that read works per token (LayerNorm, the MLP,
    the residual adds, the attention's output projection). Moving each ``Gather(x, i, axis=1)``
    up through such ops, one at a time and only where the gathered token is all that is read
    of a tensor, leaves the last block's MLP and projection and the final LayerNorm working on
    one token instead of all of them. Per-token ops give the same numbers on one token.

    Run it before ``fuse_attention``: ONNX shape inference cannot type the contrib Attention op.

    Returns:
        How many ops now work on the gathered token only.
    """
    moved = 0
    ranks = _ranks(model)  # the narrowed ops are never gathered again: the original ranks suffice
    while True:
        g = _Graph(model)
        done = False
        for gather in [n for n in model.graph.node if n.op_type == "Gather"]:
            i = _token_gather(gather, g)
            src = gather.input[0]
            p = g.producer.get(src)
            if i is None or p is None or src in g.outputs or not _narrowable(p, g, ranks):
                continue
            readers = g.consumers.get(src, [])
            if any(_token_gather(r, g) != i for r in readers):
                continue  # someone needs the other tokens too
            new_inputs = []
            extra = []
            for name in p.input:
                if name == "" or g.const(name) is not None:
                    new_inputs.append(name)
                    continue
                # one Gather per (tensor, token): reuse the one an earlier step made
                same = [r.output[0] for r in g.consumers.get(name, []) if _token_gather(r, g) == i]
                same += [e.output[0] for e in extra if e.input[0] == name]
                if same:
                    new_inputs.append(same[0])
                    continue
                out = f"{name}/token{i}"
                extra.append(helper.make_node("Gather", [name, gather.input[1]], [out], name=out, axis=1))
                new_inputs.append(out)
            narrowed = helper.make_node(p.op_type, new_inputs, [f"{p.output[0]}/token{i}"],
                                        name=f"{p.name}/token{i}", domain=p.domain)
            narrowed.attribute.extend(p.attribute)
            for r in readers:  # every Gather of token i now reads the narrowed op
                for other in g.consumers.get(r.output[0], []):
                    for k, name in enumerate(other.input):
                        if name == r.output[0]:
                            other.input[k] = narrowed.output[0]
                for o in model.graph.output:
                    if o.name == r.output[0]:  # keep the graph output's name
                        narrowed.output[0] = r.output[0]
            drop = {id(r) for r in readers} | {id(p)}
            nodes = [n for n in model.graph.node if id(n) not in drop] + extra + [narrowed]
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            moved += 1
            done = True
            break
        if not done:
            break
    if moved:
        _prune(model)
        _toposort(model)  # the narrowed ops were appended at the end
    return moved
