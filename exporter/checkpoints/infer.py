"""The architecture of a timm-layout ViT, read from its tensor shapes alone."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from exporter.errors import CheckpointError, ConfigError
from exporter.nn.config import ViTConfig

DEFAULT_HEAD_DIM = 64  # DeiT / HydraViT heads; --num-heads overrides
REQUIRED = ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight",
            "blocks.0.mlp.fc1.weight", "head.weight")


def require(tensors: dict[str, torch.Tensor], keys: tuple[str, ...], path: Path, fmt: str) -> None:
    missing = [k for k in keys if k not in tensors]
    if missing:
        found = ", ".join(sorted(tensors)[:8]) + (" ..." if len(tensors) > 8 else "")
        raise CheckpointError(f"{path}: missing keys for a {fmt} ViT: {', '.join(missing)} "
                              f"(found {len(tensors)} keys: {found})")


def _shape_error(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: shapes fit no ViT: {what}")


def grid_of(pos: torch.Tensor, n_prefix: int, dim: int, path: Path, name: str) -> int:
    """Side of the square patch grid a (1, prefix + g*g, D) pos_embed is sized for."""
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != dim:
        raise _shape_error(path, f"{name} is {tuple(pos.shape)}, expected (1, tokens, {dim})")
    n = pos.shape[1] - n_prefix
    g = math.isqrt(max(n, 0))
    if n <= 0 or g * g != n:
        raise _shape_error(path, f"{name} has {pos.shape[1]} tokens; {n_prefix} prefix token(s) "
                                 f"plus a square grid of patches expected")
    return g


def default_heads(dim: int, num_heads: int | None, path: Path) -> int:
    if num_heads is not None:
        if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads:
            raise ConfigError(f"--num-heads {num_heads} does not divide the embed dim {dim}; "
                              f"choose a divisor of {dim}")
        return num_heads
    if dim % DEFAULT_HEAD_DIM:
        raise ConfigError(f"{path}: embed dim {dim} is not a multiple of {DEFAULT_HEAD_DIM}, so the "
                          f"head count cannot be inferred; pass --num-heads")
    return dim // DEFAULT_HEAD_DIM


def infer_config(tensors: dict[str, torch.Tensor], path: Path, fmt: str, *,
                 num_heads: int | None = None, pos_key: str = "pos_embed",
                 **fixed: Any) -> ViTConfig:
    """Embed dim, depth, MLP ratio, patch size, classes and resolution from tensor shapes.

    Args:
        tensors: the state dict in timm names.
        path, fmt: for messages.
        num_heads: overrides the default embed_dim / 64.
        pos_key: the pos_embed that fixes ``img_size``.
        fixed: further `ViTConfig` fields decided by the format (slicing, ln_eps, ...).

    Raises:
        CheckpointError: a required key is missing or the shapes fit no ViT.
        ConfigError: the head count does not divide the embed dim.
    """
    require(tensors, (*REQUIRED, pos_key), path, fmt)
    pw = tensors["patch_embed.proj.weight"]
    if pw.ndim != 4 or pw.shape[2] != pw.shape[3]:
        raise _shape_error(path, f"patch_embed.proj.weight is {tuple(pw.shape)}, expected "
                                 f"(D, C, p, p)")
    dim, in_chans, patch = int(pw.shape[0]), int(pw.shape[1]), int(pw.shape[2])
    blocks = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1
    if blocks != set(range(depth)):
        raise _shape_error(path, f"blocks {sorted(set(range(depth)) - blocks)} are missing")
    qkv = tensors["blocks.0.attn.qkv.weight"]
    if tuple(qkv.shape) != (3 * dim, dim):
        raise _shape_error(path, f"blocks.0.attn.qkv.weight is {tuple(qkv.shape)}, expected "
                                 f"({3 * dim}, {dim}) for embed dim {dim}")
    fc1 = tensors["blocks.0.mlp.fc1.weight"]
    if fc1.ndim != 2 or fc1.shape[1] != dim:
        raise _shape_error(path, f"blocks.0.mlp.fc1.weight is {tuple(fc1.shape)}, expected (hidden, {dim})")
    head = tensors["head.weight"]
    if head.ndim != 2 or head.shape[1] != dim:
        raise _shape_error(path, f"head.weight is {tuple(head.shape)}, expected (classes, {dim})")
    distilled = "dist_token" in tensors
    n_prefix = 2 if distilled else 1
    grid = grid_of(tensors[pos_key], n_prefix, dim, path, pos_key)
    heads = default_heads(dim, num_heads, path)
    cfg = ViTConfig(img_size=grid * patch, patch_size=patch, in_chans=in_chans,
                     num_classes=int(head.shape[0]), embed_dim=dim, depth=depth, num_heads=heads,
                     mlp_ratio=fc1.shape[0] / dim, qkv_bias="blocks.0.attn.qkv.bias" in tensors,
                     distilled=distilled, **fixed)
    if cfg.mlp_hidden != fc1.shape[0]:
        raise _shape_error(path, f"MLP hidden {fc1.shape[0]} is no ratio of the embed dim {dim} "
                                 f"slimvit can represent")
    return cfg
