"""An independent, from-the-spec reference for foreign checkpoints (tests only).

A straightforward timm-style ViT forward (fused qkv, timm's 5-D reshape), and each method's
subnet rule written out on the raw checkpoint tensors: HydraViT's first k heads, Scala's
block slicing with Isolated Activation, SuperViT's per-size pos_embed and token pruning.
Nothing here calls slimvit code, so a shared mistake cannot hide."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_vit(*, embed: int, depth: int, classes: int = 10, patch: int = 8, img: int = 32,
               mlp_ratio: float = 4.0, distilled: bool = False, seed: int = 0) -> dict[str, Tensor]:
    """A timm `VisionTransformer` state dict with non-trivial values everywhere."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, std: float = 0.1, mean: float = 0.0) -> Tensor:
        return mean + std * torch.randn(*shape, generator=g)

    hidden, n_prefix = int(embed * mlp_ratio), 2 if distilled else 1
    sd = {"patch_embed.proj.weight": r(embed, 3, patch, patch), "patch_embed.proj.bias": r(embed),
          "cls_token": r(1, 1, embed), "pos_embed": r(1, n_prefix + (img // patch) ** 2, embed)}
    if distilled:
        sd["dist_token"] = r(1, 1, embed)
    for i in range(depth):
        p = f"blocks.{i}."
        sd |= {p + "norm1.weight": r(embed, mean=1.0), p + "norm1.bias": r(embed),
               p + "attn.qkv.weight": r(3 * embed, embed), p + "attn.qkv.bias": r(3 * embed),
               p + "attn.proj.weight": r(embed, embed), p + "attn.proj.bias": r(embed),
               p + "norm2.weight": r(embed, mean=1.0), p + "norm2.bias": r(embed),
               p + "mlp.fc1.weight": r(hidden, embed), p + "mlp.fc1.bias": r(hidden),
               p + "mlp.fc2.weight": r(embed, hidden), p + "mlp.fc2.bias": r(embed)}
    sd |= {"norm.weight": r(embed, mean=1.0), "norm.bias": r(embed),
           "head.weight": r(classes, embed), "head.bias": r(classes)}
    if distilled:
        sd |= {"head_dist.weight": r(classes, embed), "head_dist.bias": r(classes)}
    return sd


def vit_forward(w: dict[str, Tensor], x: Tensor, *, num_heads: int, eps: float = 1e-6,
                scale: float | None = None, prune: dict[int, float] | None = None) -> Tensor:
    """timm's ViT forward on the weights ``w`` (already a subnet's own size).

    Args:
        scale: attention scale; default 1/sqrt(head dim of ``w``).
        prune: {block: keep rate}: after that block's attention residual keep the ceil(rate*N)
            patch tokens (N counting CLS) CLS attends to most, averaged over heads (SuperViT).
    """
    n_prefix = 2 if "dist_token" in w else 1
    patch = w["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    B, _, C = x.shape
    prefix = [w["cls_token"]] + ([w["dist_token"]] if n_prefix == 2 else [])
    x = torch.cat([t.expand(B, -1, -1) for t in prefix] + [x], dim=1) + w["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    hd = C // num_heads
    scale = hd ** -0.5 if scale is None else scale
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (C,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
        N = h.shape[1]
        qkv = F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = x + F.linear(h, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        if prune and i in prune:
            keep = min(N - n_prefix, math.ceil(prune[i] * N))
            if keep < N - n_prefix:
                rank = attn[:, :, 0, n_prefix:].mean(dim=1)
                idx = rank.topk(keep, dim=1).indices.sort(dim=1).values
                kept = torch.stack([x[b, n_prefix:][idx[b]] for b in range(B)])
                x = torch.cat([x[:, :n_prefix], kept], dim=1)
        h = F.layer_norm(x, (C,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
        h = F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
    x = F.layer_norm(x, (C,), w["norm.weight"], w["norm.bias"], eps)
    logits = F.linear(x[:, 0], w["head.weight"], w["head.bias"])
    if n_prefix == 2:
        logits = (logits + F.linear(x[:, 1], w["head_dist.weight"], w["head_dist.bias"])) / 2
    return logits


def hydravit_subnet(sd: dict[str, Tensor], k: int, head_dim: int) -> dict[str, Tensor]:
    """HydraViT's k-head subnet: the first p = k*head_dim channels of every tensor; qkv rows
    [0:p], [D:D+p], [2D:2D+p]; MLP hidden the first 4p... (mlp_ratio * p) units."""
    D = sd["patch_embed.proj.weight"].shape[0]
    p = k * head_dim
    ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] // D
    out = {}
    for name, t in sd.items():
        if name.endswith("attn.qkv.weight"):
            out[name] = torch.cat([t[j * D:j * D + p, :p] for j in range(3)])
        elif name.endswith("attn.qkv.bias"):
            out[name] = torch.cat([t[j * D:j * D + p] for j in range(3)])
        elif name.endswith("mlp.fc1.weight"):
            out[name] = t[:ratio * p, :p]
        elif name.endswith("mlp.fc1.bias"):
            out[name] = t[:ratio * p]
        elif name.endswith("mlp.fc2.weight"):
            out[name] = t[:p, :ratio * p]
        elif name.endswith("proj.weight") and name.startswith("blocks"):
            out[name] = t[:p, :p]
        elif name in ("head.weight", "head_dist.weight"):
            out[name] = t[:, :p]
        elif name in ("head.bias", "head_dist.bias"):
            out[name] = t
        elif name == "patch_embed.proj.weight":
            out[name] = t[:p]
        else:  # tokens, pos_embed, norms, biases of width D
            out[name] = t[..., :p]
    return out


def scala_subnet(sd: dict[str, Tensor], r: float, smallest: float = 0.25) -> dict[str, Tensor]:
    """Scala's width-r subnet: d = int(r*D), hidden int(r*4D); the smallest ratio and 1.0 take
    the first channels, other ratios the last; qkv as one block W[:3d, :d] / W[-3d:, -d:]."""
    D = sd["patch_embed.proj.weight"].shape[0]
    H4 = sd["blocks.0.mlp.fc1.weight"].shape[0]
    d, h = int(r * D), int(r * H4)
    first = math.isclose(r, smallest) or math.isclose(r, 1.0)

    def s(n: int) -> slice:
        return slice(0, n) if first else slice(-n, None)

    out = {}
    for name, t in sd.items():
        if name.endswith("attn.qkv.weight"):
            out[name] = t[s(3 * d), s(d)]
        elif name.endswith("attn.qkv.bias"):
            out[name] = t[s(3 * d)]
        elif name.endswith("mlp.fc1.weight"):
            out[name] = t[s(h), s(d)]
        elif name.endswith("mlp.fc1.bias"):
            out[name] = t[s(h)]
        elif name.endswith("mlp.fc2.weight"):
            out[name] = t[s(d), s(h)]
        elif name.endswith("proj.weight") and name.startswith("blocks"):
            out[name] = t[s(d), s(d)]
        elif name in ("head.weight", "head_dist.weight"):
            out[name] = t[:, s(d)]
        elif name in ("head.bias", "head_dist.bias"):
            out[name] = t  # the head bias stays full
        elif name == "patch_embed.proj.weight":
            out[name] = t[s(d)]
        else:
            out[name] = t[..., s(d)]
    return out


def supervit_blocks(depth: int) -> tuple[int, ...]:
    """Blocks 3, 6, 9 of a 12-block SuperViT, scaled to other depths."""
    return tuple(depth * i // 4 for i in (1, 2, 3))
