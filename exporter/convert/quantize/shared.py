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
from exporter.nn.extract import variant_state_dict
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


class SharedWeights:
    """The slimmable weights quantized once per output channel (dim 0), each (parameter, fold)
    on first use. A fold is a per-input-channel factor a converter multiplied into the weight
    (LiteRT folds a LayerNorm's gamma into the next FULLY_CONNECTED): the full weight is folded
    with the full factor before it is quantized, so every width's folded slice is still a slice."""

    def __init__(self, model: SlimmableViT, qmax: int) -> None:
        self.params = {n: p.detach().float().numpy() for n, p in model.named_parameters()}
        self.qmax = qmax
        self._done: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def build(cls, model: SlimmableViT, qmax: int) -> SharedWeights:
        return cls(model, qmax)

    def get(self, param: str, fold: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(float values, int8 values, scale per output channel) of one (folded) parameter."""
        key = (param, fold)
        if key not in self._done:
            w = self.params[param]
            if fold is not None:
                w = w * self.params[fold].reshape((1, -1) + (1,) * (w.ndim - 2))
            rows = w.reshape(len(w), -1)
            absmax = np.abs(rows).max(axis=1).astype(np.float64)
            scale = absmax / self.qmax
            scale[scale < np.finfo(np.float32).tiny] = 1.0  # an all-zero channel: ORT's scale 1
            q = np.clip(np.rint(rows / scale[:, None]), -self.qmax, self.qmax).astype(np.int8).reshape(w.shape)
            self._done[key] = (w, q, scale)
        return self._done[key]


def weight_slices(model: SlimmableViT, s: Subnet) -> dict[str, WeightSlice]:
    """Every static weight (2-D and up; `StaticViT` keeps timm's names) of subnet ``s`` as a slice of the
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
        out[name] = WeightSlice(name, t.detach().numpy().astype(np.int64))  # StaticViT keeps timm's names
    return out


@dataclass(frozen=True)
class Located:
    """An exported weight found: the parameter it slices, each element's flat index in it (in
    the exported layout), and the 1-D parameter folded into its input channels, if any."""

    param: str
    index: np.ndarray
    fold: str | None = None


# Layouts an exporter may store a static weight in: as is, a 2-D transpose (ONNX MatMul holds
# W.T), a conv kernel channels-last (TFLite CONV_2D: O, H, W, I).
_LAYOUTS = {2: ((0, 1), (1, 0)), 4: ((0, 1, 2, 3), (0, 2, 3, 1))}


class VariantWeights:
    """One subnet's float weights, findable by their exported bytes, and their slices."""

    def __init__(self, model: SlimmableViT, s: Subnet) -> None:
        self.slices = weight_slices(model, s)
        self.by_bytes: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.folds = {n: p.detach().float().numpy() for n, p in model.named_parameters()
                      if p.ndim == 1 and n.endswith("weight")}
        self.param_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        for name, t in variant_state_dict(model, s).items():
            if name not in self.slices:
                continue
            a = t.float().numpy()
            self.arrays[name] = a
            for perm in _LAYOUTS.get(a.ndim, (tuple(range(a.ndim)),)):
                self.by_bytes[_key(np.ascontiguousarray(a.transpose(perm)))] = (name, perm)

    def locate(self, exported: np.ndarray) -> Located | None:
        """The slimmable parameter an exported float weight slices (None for a tensor that is no
        weight of the subnet). Found by its bytes in any known layout, else as a static weight
        times a per-input-channel factor that is a slice of a 1-D parameter (a folded LayerNorm)."""
        x = np.ascontiguousarray(exported, dtype=np.float32)
        hit = self.by_bytes.get(_key(x))
        if hit is not None:
            sl = self.slices[hit[0]]
            return Located(sl.param, sl.index.transpose(hit[1]))
        return self._folded(x)

    def _folded(self, x: np.ndarray) -> Located | None:
        for name, a in self.arrays.items():
            for perm in _LAYOUTS.get(a.ndim, ()):
                t = a.transpose(perm)
                if t.shape != x.shape or t.ndim != 2:
                    continue
                in_axis = perm.index(1)  # where the static weight's input channels went
                ok = np.abs(t) > 1e-12 * max(1e-30, float(np.abs(t).max()))
                ratio = np.where(ok, x / np.where(ok, t, 1), np.nan)
                g = np.nanmedian(ratio, axis=1 - in_axis)
                if np.isnan(g).any() or not np.allclose(x, t * np.expand_dims(g, 1 - in_axis), rtol=1e-5,
                                                        atol=1e-6 * float(np.abs(x).max())):
                    continue
                sl = self.slices[name]
                index = sl.index.transpose(perm)
                p_cols = self.param_shapes[sl.param][1]
                cols = np.moveaxis(index, in_axis, 0).reshape(index.shape[in_axis], -1)[:, 0] % p_cols
                for fold, full in self.folds.items():
                    if len(full) == p_cols and np.allclose(full[cols], g, rtol=1e-5, atol=1e-7):
                        return Located(sl.param, index, fold)
        return None


def _key(a: np.ndarray) -> str:
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def shared_int8(shared: SharedWeights, where: Located,
                exported: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The slice of the shared int8 weights for one exported float weight.

    Args:
        shared: the quantized slimmable weights.
        where: the parameter the weight slices (`VariantWeights.locate`), with its fold.
        exported: the float weight as the artifact holds it (folds included).

    Returns:
        (int8 weight in the exported layout, float32 scale per output channel, the channel axis).

    Raises:
        ShareError: the weight is not a per-output-channel multiple of its slice.
    """
    param, index = where.param, where.index
    values, q_full, scale_full = shared.get(param, where.fold)
    p_vals, q_all = values.reshape(-1), q_full.reshape(-1)
    row_size = p_vals.size // len(scale_full)
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
    scale = (scale_full[channel_rows] * factor).astype(np.float32)
    return q_all[index], scale, axis
