"""HydraViT: a timm `CheckpointSaver` file (``state_dict``, ``state_dict_ema``, ``args`` ...).
A k-head subnet is the first 64k channels of every tensor: timm's ViT with embed 64k, k heads."""

from __future__ import annotations

from typing import Any

from exporter.checkpoints.base import CheckpointFormat, finish, inner, pick_weights
from exporter.checkpoints.infer import infer_config
from exporter.checkpoints.loaded import LoadedModel
from exporter.checkpoints.reading import Container

NAME = "hydravit"


def matches(c: Container) -> bool:
    return isinstance(inner(c, "state_dict"), dict)


def load(c: Container, *, num_heads: int | None = None, ema: bool = False, **_: Any) -> LoadedModel:
    """``ema`` picks ``state_dict_ema``; the default is ``state_dict``."""
    sd = pick_weights(c, ("state_dict",), ("state_dict_ema",), ema, NAME)
    return finish(c, infer_config(sd, c.path, NAME, num_heads=num_heads, slicing="heads"), sd, NAME)


FORMAT = CheckpointFormat(
    NAME, "a timm CheckpointSaver dict {'state_dict': ViT state dict, 'state_dict_ema': ...}",
    matches, load)
