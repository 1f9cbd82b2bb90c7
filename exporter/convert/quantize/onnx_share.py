"""Shared-scale int8 for ONNX: a post-pass over ONNX Runtime's quantized model.

ORT's `quantize_dynamic` / `quantize_static` compute every weight's scale from the weight they
are given and cannot be handed int8 weights; so they run as usual, and this pass swaps each
quantized weight initializer (``X_quantized``, int8) and its per-channel ``X_scale`` for the
slice of the slimmable model's one int8 copy (`exporter.convert.quantize.shared`). Static QDQ
models also quantize the bias of a Gemm/Conv to int32 with scale ``input_scale * weight_scale``;
that bias is quantized again with the new weight scale. Activation quantization is untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from exporter.convert.quantize.shared import SharedWeights, ShareError, VariantWeights, shared_int8
from exporter.nn.config import Subnet
from exporter.nn.model import SlimmableViT

_SUFFIX = "_quantized"


def share_weights(quantized: onnx.ModelProto, float_model: onnx.ModelProto, model: SlimmableViT,
                  s: Subnet, qmax: int) -> int:
    """Rewrite ``quantized`` (in place) so that every int8 weight is the shared slice.

    Args:
        quantized: ORT's quantized model of subnet ``s``.
        float_model: the float model ORT quantized (its initializers name the float weights).
        model: the slimmable model; ``qmax`` 127, or 64 for 7-bit (reduce_range) targets.

    Returns:
        The number of weights swapped (every int8 weight of the model).

    Raises:
        ShareError: an int8 weight that is not a slice of a slimmable weight, or not symmetric.
    """
    inits = {t.name: t for t in quantized.graph.initializer}
    floats = {t.name: t for t in float_model.graph.initializer}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in quantized.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    weights = VariantWeights(model, s)
    shared = SharedWeights.build(model, qmax)
    swapped = 0
    for name, t in inits.items():
        if not name.endswith(_SUFFIX) or t.data_type != TensorProto.INT8:
            continue
        base = name[:-len(_SUFFIX)]
        scale_t, zero_t = inits.get(base + "_scale"), inits.get(base + "_zero_point")
        if base not in floats or scale_t is None or zero_t is None:
            raise ShareError(f"{base}: int8 weight without its float source, scale or zero point")
        if numpy_helper.to_array(zero_t).any():
            raise ShareError(f"{base}: asymmetric int8 weight (non-zero zero point)")
        exported = _as_quantized(numpy_helper.to_array(floats[base]), numpy_helper.to_array(t))
        hit = weights.locate(exported)
        if hit is None:
            raise ShareError(f"{base}: not one of the variant's weights (cannot find its slice)")
        q, scale, axis = shared_int8(shared, hit, exported)
        dq = next((n for n in readers.get(name, []) if n.op_type == "DequantizeLinear"), None)
        want_axis = _axis(dq, q.ndim) if dq is not None else q.ndim - 1  # MatMulInteger: per column
        if axis != want_axis or numpy_helper.to_array(scale_t).shape != scale.shape:
            raise ShareError(f"{base}: its scale runs along axis {want_axis}, its output channels "
                             f"along {axis}")
        old_scale = numpy_helper.to_array(scale_t)
        t.CopyFrom(numpy_helper.from_array(q, name))
        scale_t.CopyFrom(numpy_helper.from_array(scale, scale_t.name))
        if dq is not None:
            for layer in readers.get(dq.output[0], []):
                _requantize_bias(layer, inits, floats, producer, old_scale, scale)
        swapped += 1
    return swapped


def _as_quantized(exported: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The float weight in the layout ORT stored its int8 copy in: ORT turns a Gemm with transB
    into MatMulInteger holding ``W.T``. A square weight is told apart by the signs (int8 values
    keep the float's sign: ~100% agreement in the right layout, ~50% in the other)."""
    if exported.ndim != 2 or exported.shape[0] != exported.shape[1]:
        return exported.T if exported.ndim == 2 and q.shape == exported.shape[::-1] else exported
    def agree(a: np.ndarray) -> float:
        return float(np.mean(np.sign(a) == np.sign(q)))
    return exported.T if agree(exported.T) > agree(exported) else exported


def _axis(dq: onnx.NodeProto, ndim: int) -> int:
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    return axis + ndim if axis < 0 else axis


def _requantize_bias(layer: onnx.NodeProto, inits: dict[str, TensorProto], floats: dict[str, TensorProto],
                     producer: dict[str, onnx.NodeProto], old_scale: np.ndarray, scale: np.ndarray) -> None:
    """A static Gemm/Conv's int32 bias has scale input_scale * weight_scale: quantize it again."""
    if len(layer.input) < 3 or layer.input[2] not in producer:
        return
    bias_dq = producer[layer.input[2]]
    if bias_dq.op_type != "DequantizeLinear" or bias_dq.input[0] not in inits:
        return
    bq, bscale = inits[bias_dq.input[0]], inits.get(bias_dq.input[1])
    if bq.data_type != TensorProto.INT32 or bscale is None:
        return
    input_scale = numpy_helper.to_array(bscale).astype(np.float64) / old_scale.astype(np.float64)
    base = bias_dq.input[0][:-len(_SUFFIX)] if bias_dq.input[0].endswith(_SUFFIX) else ""
    if base in floats:
        bias = numpy_helper.to_array(floats[base]).astype(np.float64)
    else:
        bias = numpy_helper.to_array(bq).astype(np.float64) * numpy_helper.to_array(bscale)
    new_bscale = (input_scale * scale).astype(np.float32)
    limit = np.iinfo(np.int32)
    new_bq = np.clip(np.rint(bias / new_bscale), limit.min, limit.max).astype(np.int32)
    bq.CopyFrom(numpy_helper.from_array(new_bq, bq.name))
    bscale.CopyFrom(numpy_helper.from_array(new_bscale, bscale.name))
