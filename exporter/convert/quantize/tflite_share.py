"""Shared-scale int8 for TFLite: a post-pass over ai-edge-quantizer's dynamic-range model.

ai-edge-quantizer computes every weight's scale from the float weight it sees and cannot be
handed int8 weights, so it runs as usual and this pass swaps each int8 weight buffer and its
per-channel scales for the slice of the slimmable model's one int8 copy
(`exporter.convert.quantize.shared`). The LiteRT converter folds each LayerNorm's gamma into the
FULLY_CONNECTED weights after it (qkv, fc1): those are found as a static weight times a slice of
a LayerNorm weight, and the full weight is folded the same way before it is quantized.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from exporter.convert.quantize.shared import SharedWeights, ShareError, VariantWeights, shared_int8
from exporter.nn.config import Subnet
from exporter.nn.model import SlimmableViT

_FLOAT32, _INT8 = schema.TensorType.FLOAT32, schema.TensorType.INT8


def _model(data: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(bytearray(data), 0))


def _array(m: schema.ModelT, t: schema.TensorT, dtype: type) -> np.ndarray | None:
    buf = m.buffers[t.buffer]
    if buf.data is None or not len(buf.data) or t.shape is None:
        return None
    return np.frombuffer(np.asarray(buf.data, dtype=np.uint8).tobytes(), dtype=dtype).reshape(list(t.shape))


def share_weights(quantized: bytes, fp32: bytes, model: SlimmableViT, s: Subnet, qmax: int = 127) -> bytes:
    """``quantized`` with every per-channel int8 weight replaced by its shared slice.

    Raises:
        ShareError: an int8 weight that cannot be given as a slice (or is not symmetric).
    """
    qm, fm = _model(quantized), _model(fp32)
    floats = {t.name: t for t in fm.subgraphs[0].tensors if t.type == _FLOAT32}
    weights = VariantWeights(model, s)
    shared = SharedWeights(model, qmax)
    swapped = 0
    for sg in qm.subgraphs:
        for t in sg.tensors:
            quant = t.quantization
            if t.type != _INT8 or quant is None or quant.scale is None or len(quant.scale) < 2:
                continue  # per-tensor int8 (activations) is not a weight this pass owns
            if _array(qm, t, np.int8) is None:
                continue
            src = floats.get(t.name)
            exported = _array(fm, src, np.float32) if src is not None else None
            name = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name)
            if exported is None or exported.shape != tuple(t.shape):
                raise ShareError(f"{name}: int8 weight without its float source in the fp32 model")
            if quant.zeroPoint is not None and np.any(np.asarray(quant.zeroPoint)):
                raise ShareError(f"{name}: asymmetric int8 weight (non-zero zero point)")
            where = weights.locate(exported)
            if where is None:
                raise ShareError(f"{name}: not one of the variant's weights (cannot find its slice)")
            q, scale, axis = shared_int8(shared, where, exported)
            if axis != quant.quantizedDimension or len(scale) != len(quant.scale):
                raise ShareError(f"{name}: its scale runs along axis {quant.quantizedDimension}, its "
                                 f"output channels along {axis}")
            qm.buffers[t.buffer].data = np.frombuffer(q.astype(np.int8).tobytes(), dtype=np.uint8)
            quant.scale = scale.astype(np.float32)
            swapped += 1
    if not swapped:
        raise ShareError("the quantized model holds no per-channel int8 weight to share")
    builder = flatbuffers.Builder(len(quantized) + 1024)
    builder.Finish(qm.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
