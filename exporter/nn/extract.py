"""Extraction: one subnet of a slimmable ViT -> a fresh, physically smaller `StaticViT`.

The source model is never mutated; every tensor of the result is a copy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exporter.nn.config import Subnet, Variant, block_keeps
from exporter.nn.model import SlimmableViT, TokenSlimming, channel_index, qkv_rows
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
    """The sliced weights of subnet ``s`` under `StaticViT`'s parameter names."""
    cfg = model.cfg
    D, d = cfg.embed_dim, s.embed_dim
    ch = channel_index(D, d, s.channels)
    hid = channel_index(cfg.mlp_hidden, s.mlp_hidden, s.channels)
    rows = qkv_rows(cfg, s)
    scale = cfg.head_dim ** -0.5  # the full model's scale, folded into the q rows

    pos = model.pos_embed_for(s.resolution)[..., ch]
    prefix = [model.cls_token[..., ch]]
    if model.dist_token is not None:
        prefix.append(model.dist_token[..., ch])
    n_prefix = cfg.num_prefix_tokens
    sd: dict[str, Tensor] = {
        "patch_embed.weight": model.patch_embed.proj.weight[ch],
        "patch_embed.bias": model.patch_embed.proj.bias[ch],
        "prefix": torch.cat(prefix, dim=1) + pos[:, :n_prefix],
        "pos_embed": pos[:, n_prefix:],
        "norm.weight": model.norm.weight[ch],
        "norm.bias": model.norm.bias[ch],
        "head.weight": model.head.weight[:, ch],
        "head.bias": model.head.bias,
    }
    if model.head_dist is not None:
        sd["head_dist.weight"] = model.head_dist.weight[:, ch]
        sd["head_dist.bias"] = model.head_dist.bias
    n_keeps = block_keeps(cfg, s)
    q_scale = torch.ones(3 * d)
    q_scale[:d] = scale
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = blk.norm1.weight[ch], blk.norm1.bias[ch]
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = blk.norm2.weight[ch], blk.norm2.bias[ch]
        sd[p + "attn.qkv.weight"] = blk.attn.qkv.weight[rows][:, ch] * q_scale[:, None]
        if blk.attn.qkv.bias is not None:
            sd[p + "attn.qkv.bias"] = blk.attn.qkv.bias[rows] * q_scale
        sd[p + "attn.proj.weight"] = blk.attn.proj.weight[ch, ch]
        sd[p + "attn.proj.bias"] = blk.attn.proj.bias[ch]
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = blk.mlp.fc1.weight[hid, ch], blk.mlp.fc1.bias[hid]
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = blk.mlp.fc2.weight[ch, hid], blk.mlp.fc2.bias[ch]
        if blk.tsm is not None and n_keeps[i] is not None:
            sd.update(tsm_state_dict(blk.tsm, s, n_keeps[i], p + "tsm."))
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def tsm_state_dict(tsm: TokenSlimming, s: Subnet, n_keep: int, prefix: str) -> dict[str, Tensor]:
    """A Token Slimming Module at subnet ``s``'s width and its first ``n_keep`` output slots."""
    D = tsm.cfg.embed_dim
    ch = channel_index(D, s.embed_dim, s.channels)
    hid = channel_index(tsm.cfg.tsm_hidden, s.embed_dim // 2, s.channels)
    return {
        prefix + "norm.weight": tsm.norm.weight[ch], prefix + "norm.bias": tsm.norm.bias[ch],
        prefix + "fc1.weight": tsm.fc1.weight[hid, ch], prefix + "fc1.bias": tsm.fc1.bias[hid],
        prefix + "fc2.weight": tsm.fc2.weight[:n_keep, hid], prefix + "fc2.bias": tsm.fc2.bias[:n_keep],
    }


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
