"""Extraction: one subnet of a slimmable ViT -> a fresh, physically smaller `StaticViT`.

The source model is never mutated; every tensor of the result is a copy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exporter.nn.config import Subnet, Variant, block_keeps
from exporter.nn.model import SlimmableViT
from exporter.nn.static import StaticSpec, StaticViT


def static_spec(model: SlimmableViT, s: Subnet) -> StaticSpec:
    if getattr(model, "structure", None) is not None:  # a searched non-uniform model (ViT-Slim)
        return model.static_spec(s)
    cfg = model.cfg
    return StaticSpec(
        embed_dim=s.embed_dim, num_heads=s.num_heads, head_dim=s.head_dim, mlp_hidden=s.mlp_hidden,
        depth=cfg.depth, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
        num_classes=cfg.num_classes, resolution=s.resolution,
        num_prefix_tokens=cfg.num_prefix_tokens, keeps=block_keeps(cfg, s),
        fuse_tokens=cfg.fuse_tokens, ln_eps=cfg.ln_eps, qkv_bias=cfg.qkv_bias,
        distilled=cfg.distilled, token_reducer=cfg.token_reducer,
        tsm_hidden=s.embed_dim // 2 if cfg.token_reducer == "tsm" else 0,
    )


@torch.no_grad()
def variant_state_dict(model: SlimmableViT, s: Subnet) -> dict[str, Tensor]:
    """The weights of subnet ``s`` (`SlimmableViT.active`, the one slicing) under timm's names,
    which `StaticViT` keeps, with two folds a static graph can afford: the attention scale into
    the q rows, and the prefix tokens' positions into one constant."""
    cfg, d = model.cfg, s.embed_dim
    w = model.active(s)
    n_prefix = cfg.num_prefix_tokens
    pos = w.pop("pos_embed")
    prefix = [w.pop("cls_token")] + ([w.pop("dist_token")] if "dist_token" in w else [])
    sd: dict[str, Tensor] = {"prefix": torch.cat(prefix, dim=1) + pos[:, :n_prefix],
                             "pos_embed": pos[:, n_prefix:]}
    q_scale = torch.ones(3 * d)
    q_scale[:d] = cfg.head_dim ** -0.5  # the full model's scale, at every width
    for name, t in w.items():
        if name.endswith("attn.qkv.weight"):
            t = t * q_scale[:, None]
        elif name.endswith("attn.qkv.bias"):
            t = t * q_scale
        sd[name] = t
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def extract_variant(model: SlimmableViT, variant: Variant | Subnet) -> StaticViT:
    """Build the static, physically sliced module of one variant.

    Args:
        model: the slimmable model (left untouched).
        variant: a requested `Variant` or an already resolved `Subnet`.

    Returns:
        A new `StaticViT` in eval mode whose output equals ``model(x, variant)``.

    Raises:
        ConfigError: the variant does not fit the model (width or resolution).
    """
    s = model.subnet(variant)
    if getattr(model, "structure", None) is not None:  # a searched non-uniform model (ViT-Slim)
        return model.extract(s)
    static = StaticViT(static_spec(model, s))
    static.load_state_dict(variant_state_dict(model, s), strict=True)
    return static.eval()


class SubnetForward(nn.Module):
    """The slimmable model fixed at one subnet: the PyTorch reference an artifact of that variant
    is compared with (it runs the slimmable forward, not the extracted module)."""

    def __init__(self, model: nn.Module, s: Subnet) -> None:
        super().__init__()
        self.model, self.s = model, s

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, self.s)
