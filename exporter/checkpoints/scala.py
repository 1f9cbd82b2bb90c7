"""Scala: DeiT's training checkpoint ``{'model': state_dict, 'args': ...}``, usually of a
distilled DeiT (``dist_token``, ``head_dist``; the prediction is the mean of both heads).

Width ratio slicing with Isolated Activation (the smallest trained ratio and 1.0 take the first
channels, every ratio in between the last), qkv sliced as one block, the full model's attention
scale and LayerNorm eps 1e-5 at every width: `SlimmableViT` with ``slicing="ratio"``."""

from __future__ import annotations

from typing import Any

from exporter.checkpoints.base import CheckpointFormat, finish, has_vit_keys, inner, pick_weights, strip_ddp
from exporter.checkpoints.infer import infer_config
from exporter.checkpoints.loaded import LoadedModel
from exporter.checkpoints.reading import Container, option_from_args

NAME = "scala"
LN_EPS = 1e-5  # Scala's sliced forward calls layer_norm without eps
DEFAULT_MIN_RATIO = 0.25


def matches(c: Container) -> bool:
    sd = strip_ddp(inner(c, "model"))
    return has_vit_keys(sd) and not any(k.startswith("pos_embed_list.") for k in sd)


def load(c: Container, *, num_heads: int | None = None, ema: bool = False,
         min_ratio: float | None = None, **_: Any) -> LoadedModel:
    """``min_ratio``: the smallest trained ratio; default the checkpoint's ``args.smallest_ratio``,
    else 0.25. ``ema`` picks ``model_ema``."""
    sd = pick_weights(c, ("model",), ("model_ema",), ema, NAME)
    s = min_ratio if min_ratio is not None else option_from_args(c, "smallest_ratio")
    cfg = infer_config(sd, c.path, NAME, num_heads=num_heads, slicing="ratio", ln_eps=LN_EPS,
                       min_ratio=float(s) if s is not None else DEFAULT_MIN_RATIO)
    return finish(c, cfg, sd, NAME)


FORMAT = CheckpointFormat(
    NAME, "DeiT's {'model': ViT state dict (with dist_token/head_dist if distilled), 'args': ...}",
    matches, load)
