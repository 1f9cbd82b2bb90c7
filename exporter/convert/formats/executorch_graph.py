"""Rewrites that keep a static ViT in one XNNPACK partition when lowered by ExecuTorch 1.4.1.

Its XNNPACK partitioner takes linear, bmm, softmax, GELU, add/sub/mul, rsqrt, slice and view,
but not LayerNorm, ``expand_copy``, ``select_copy`` or ``split_with_sizes_copy``. Each of
those left in the graph cuts the delegate: a DeiT-Ti-shaped program fell into 62 partitions,
with a tensor copy between portable kernels and XNNPACK at every cut. Two rewrites, neither
changing the model's math (parity is checked against PyTorch like every artifact):

- `for_xnnpack` swaps every ``nn.LayerNorm`` for `XnnLayerNorm`, the same normalization
  written with ops XNNPACK takes: the mean over channels is a linear layer whose weight is
  ``1/C`` (XNNPACK's mean only reduces the two inner dims of a 4-D tensor).
- `xnnpack_friendly` is an edge-dialect pass: an ``expand_copy`` that keeps its input's shape
  (batch 1: the class token, the batched matmuls) is dropped, a ``select_copy`` becomes a
  slice plus a view, and the q/k/v ``split_with_sizes_copy`` becomes one slice per output.

Token pruning's TopK/Gather (and the head mean it ranks by) stay outside XNNPACK."""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class XnnLayerNorm(nn.Module):
    """LayerNorm over the last dim from linear, sub, mul, add and rsqrt (two passes, so the
    variance is of the centred values). The float32 mean loses digits when a token's mean is
    many orders above its spread (1e5x: 1e-2 off); every artifact's parity check against
    PyTorch is what guards a real model."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        (channels,) = norm.normalized_shape
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.register_buffer("average", torch.full((1, channels), 1.0 / channels,
                                                   dtype=(norm.weight.dtype if norm.weight is not None
                                                          else torch.float32)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        centred = x - F.linear(x, self.average)  # (..., C) minus the mean, as a (C -> 1) linear
        out = centred * torch.rsqrt(F.linear(centred * centred, self.average) + self.eps)
        if self.weight is not None:
            out = out * self.weight
        return out + self.bias if self.bias is not None else out


def for_xnnpack(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every single-dim ``nn.LayerNorm`` replaced by `XnnLayerNorm`
    (the same parameters); ``module`` is not changed."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
                setattr(parent, name, XnnLayerNorm(child))
    return module


def xnnpack_friendly(gm: torch.fx.GraphModule):  # -> executorch.exir.pass_base.PassResult
    """Edge-dialect pass for `to_edge_transform_and_lower` (see the module docstring)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    aten = exir_ops.edge.aten
    graph, changed = gm.graph, False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == aten.expand_copy.default and _shape(node.args[0]) == _shape(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
        elif node.target == aten.select_copy.int:
            source, dim, index = node.args
            dim %= len(_shape(source))
            index %= _shape(source)[dim]
            with graph.inserting_before(node):
                part = _slice(graph, aten, source, dim, index, index + 1, node.meta)
                flat = graph.call_function(aten.view_copy.default, (part, list(_shape(node))))
            flat.meta = dict(node.meta)
            node.replace_all_uses_with(flat)
            graph.erase_node(node)
            changed = True
        elif node.target == aten.split_with_sizes_copy.default:
            changed |= _split_to_slices(graph, aten, node)
    if changed:
        graph.lint()
        gm.recompile()
    return PassResult(gm, changed)


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["val"].shape)


def _slice(graph: torch.fx.Graph, aten, source: torch.fx.Node, dim: int, start: int, end: int,
           meta: dict) -> torch.fx.Node:
    part = graph.call_function(aten.slice_copy.Tensor, (source, dim, start, end))
    value = source.meta["val"]
    with value.fake_mode:
        part.meta = {**meta, "val": torch.ops.aten.slice_copy.Tensor(value, dim, start, end)}
    return part


def _split_to_slices(graph: torch.fx.Graph, aten, node: torch.fx.Node) -> bool:
    source, sizes = node.args[0], list(node.args[1])
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(_shape(source))
    users = list(node.users)
    if not all(u.target == operator.getitem for u in users):
        return False
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for user in users:
        i = user.args[1]
        with graph.inserting_before(user):
            part = _slice(graph, aten, source, dim, starts[i], starts[i] + sizes[i], user.meta)
        user.replace_all_uses_with(part)
        graph.erase_node(user)
    graph.erase_node(node)
    return True
