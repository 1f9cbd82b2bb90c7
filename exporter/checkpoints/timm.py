"""timm / DeiT: a plain `VisionTransformer` state dict, flat or in DeiT's ``{'model': ...}``
release wrapper. Sliced like HydraViT (first k heads) if width variants are asked for."""

from __future__ import annotations

from typing import Any

from exporter.checkpoints.base import CheckpointFormat, finish, has_vit_keys, pick_weights, strip_ddp
from exporter.checkpoints.infer import infer_config
from exporter.checkpoints.loaded import LoadedModel
from exporter.checkpoints.reading import Container, is_state_dict

NAME = "timm"


def matches(c: Container) -> bool:
    sd = strip_ddp(c.obj)
    return is_state_dict(sd) and has_vit_keys(sd) and not any(k.startswith("pos_embed_list.") for k in sd)


def load(c: Container, *, num_heads: int | None = None, ema: bool = False, **_: Any) -> LoadedModel:
    sd = pick_weights(c, ("model", "state_dict"), ("model_ema", "state_dict_ema"), ema, NAME)
    return finish(c, infer_config(sd, c.path, NAME, num_heads=num_heads, slicing="heads"), sd, NAME)


FORMAT = CheckpointFormat(
    NAME, "a flat ViT state dict (patch_embed.proj.weight, cls_token, pos_embed, blocks.N.attn.qkv.weight, "
    "head.weight ...) as .safetensors or .pth/.pt/.bin", matches, load)
