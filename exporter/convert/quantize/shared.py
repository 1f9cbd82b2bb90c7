"""Shared-scale int8: the slimmable weights quantized once, each width taking its slice.

Per-variant int8 quantizes every variant's weights on their own: a narrow width's output channel
is the wide one's row cut to fewer inputs, so its absmax (hence its scale, hence every int8 value
of the row) differs, and the int8 bytes of two widths share nothing a pack could copy. Here the
full slimmable weights are quantized once, symmetric, per output channel (ONNX Runtime's formula:
scale = absmax / qmax, qmax 127, or 64 for 7-bit targets); a variant's int8 weight is the slice of
that one int8 tensor its float weight is of the float one, and its per-channel scale is the full
channel's scale. Activations keep whatever each quantizer does per variant (calibrated on the
variant's own inputs, or dynamic).

Where a narrow element sits in the full tensor comes from the one definition of slicing,
`SlimmableViT.active`, run on a copy of the model whose every weight holds its own flat indices:
head slicing (HydraViT: q/k/v rows at D apart), Scala's contiguous qkv block and its last-channel
intermediate widths all come out of it with no second copy of those rules. An exported float
weight is matched to its static weight by its bytes (as stored, or transposed: ONNX MatMul holds
``W.T``); the folds `variant_state_dict` applies (the attention scale in the q rows) scale whole
output channels, and are carried into that channel's scale, so the int8 bytes stay a slice.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from exporter.nn.config import Subnet
from exporter.nn.extract import STATIC_NAMES, variant_state_dict
from exporter.nn.model import SlimmableViT


class ShareError(ValueError):
    """A quantized weight that cannot be given as a slice of the shared int8 weights."""


@dataclass(frozen=True)
class WeightSlice:
    """One static weight of a subnet as elements of a slimmable parameter.

    Attributes:
        param: the slimmable model's parameter name (timm names).
        index: for each element of the static weight (its shape), the flat index in ``param``.
    """

    param: str
    index: np.ndarray


@dataclass(frozen=True)
class SharedWeights:
    """The slimmable weights (2-D and up) quantized once per output channel (dim 0)."""

    q: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    qmax: int

    @classmethod
    def build(cls, model: SlimmableViT, qmax: int) -> SharedWeights:
        q, scale, values = {}, {}, {}
        for name, p in model.named_parameters():
            if p.ndim < 2 or not name.endswith("weight"):
                continue
            w = p.detach().float().numpy()
            rows = w.reshape(len(w), -1)
            absmax = np.abs(rows).max(axis=1).astype(np.float64)
            s = absmax / qmax
            s[s < np.finfo(np.float32).tiny] = 1.0  # an all-zero channel: ORT's scale 1
            q[name] = np.clip(np.rint(rows / s[:, None]), -qmax, qmax).astype(np.int8).reshape(w.shape)
            scale[name], values[name] = s, w
        return cls(q, scale, values, qmax)


def weight_slices(model: SlimmableViT, s: Subnet) -> dict[str, WeightSlice]:
    """Every static weight (2-D and up, `StaticViT` names) of subnet ``s`` as a slice of the
    slimmable parameters, read off `SlimmableViT.active` on an index-valued copy of the model."""
    index_model = copy.deepcopy(model).double()
    params = dict(index_model.named_parameters())
    with torch.no_grad():
        for p in params.values():  # float64 holds every index below 2**53 exactly
            p.copy_(torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape))
        active = index_model.active(s)
    out = {}
    for name, t in active.items():
        if name not in params or t.ndim < 2 or not name.endswith("weight"):
            continue
        static = name
        for old, new in STATIC_NAMES.items():
            static = static.replace(old, new)
        out[static] = WeightSlice(name, t.detach().numpy().astype(np.int64))
    return out


class VariantWeights:
    """One subnet's float weights, findable by their exported bytes, and their slices."""

    def __init__(self, model: SlimmableViT, s: Subnet) -> None:
        self.slices = weight_slices(model, s)
        self.by_bytes: dict[str, tuple[str, bool]] = {}
        for name, t in variant_state_dict(model, s).items():
            if name not in self.slices:
                continue
            a = t.float().numpy()
            self.by_bytes[_key(a)] = (name, False)
            if a.ndim == 2:
                self.by_bytes[_key(np.ascontiguousarray(a.T))] = (name, True)

    def locate(self, exported: np.ndarray) -> tuple[str, np.ndarray] | None:
        """The slimmable parameter an exported float weight slices, and the flat index of each of
        its elements (in the exported layout); None for a tensor that is no weight of the subnet."""
        hit = self.by_bytes.get(_key(np.ascontiguousarray(exported, dtype=np.float32)))
        if hit is None:
            return None
        sl = self.slices[hit[0]]
        return sl.param, (sl.index.T if hit[1] else sl.index)


def _key(a: np.ndarray) -> str:
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def shared_int8(shared: SharedWeights, param: str, index: np.ndarray,
                exported: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The slice of the shared int8 weights for one exported float weight.

    Args:
        shared: the quantized slimmable weights.
        param: the parameter the weight slices; ``index`` the flat index of each element.
        exported: the float weight as the artifact holds it (folds included).

    Returns:
        (int8 weight in the exported layout, float32 scale per output channel, the channel axis).

    Raises:
        ShareError: the weight is not a per-output-channel multiple of its slice.
    """
    p_vals, q_all = shared.values[param].reshape(-1), shared.q[param].reshape(-1)
    row_size = p_vals.size // len(shared.scale[param])
    rows = index // row_size
    axis = next((a for a in range(rows.ndim)
                 if (np.moveaxis(rows, a, 0).reshape(rows.shape[a], -1)
                     == np.moveaxis(rows, a, 0).reshape(rows.shape[a], -1)[:, :1]).all()), None)
    if axis is None:
        raise ShareError(f"a weight of {param} mixes output channels along every axis")
    src = np.moveaxis(p_vals[index], axis, 0).reshape(rows.shape[axis], -1).astype(np.float64)
    dst = np.moveaxis(exported, axis, 0).reshape(rows.shape[axis], -1).astype(np.float64)
    pick = np.abs(src).argmax(axis=1)
    pivot = src[np.arange(len(src)), pick]
    factor = np.where(pivot != 0, dst[np.arange(len(dst)), pick] / np.where(pivot != 0, pivot, 1), 1.0)
    if not np.allclose(dst, src * factor[:, None], rtol=1e-5, atol=1e-6 * max(1e-12, np.abs(dst).max())):
        raise ShareError(f"a weight of {param} is not a per-channel multiple of its slice of the "
                         "slimmable weights (a fold this quantizer does not know)")
    if (factor <= 0).any():
        raise ShareError(f"a weight of {param} folds a non-positive factor into a channel")
    channel_rows = np.moveaxis(rows, axis, 0).reshape(rows.shape[axis], -1)[:, 0]
    scale = (shared.scale[param][channel_rows] * factor).astype(np.float32)
    return q_all[index], scale, axis
