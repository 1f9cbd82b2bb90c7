"""The token ops the slimmable and the static model both run: plain softmax attention, top-k
token pruning (EViT / SuperViT) and SiT's token slimming. Shapes: B batch, N tokens, C channels,
H heads, hd head dim, p prefix tokens."""

from __future__ import annotations

import torch
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Plain softmax attention on 4-D tensors (B, H, N, hd); q is already scaled.

    Returns the output (B, H, N, hd) and the probabilities (B, H, N, N), which token pruning
    ranks by. Written out (no fused SDPA) so every exporter sees the same rank-4 ops.
    """
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
    return attn @ v, attn


def prune_tokens(x: Tensor, attn: Tensor, n_keep: int, n_prefix: int, fuse: bool) -> Tensor:
    """Keep the ``n_keep`` patch tokens the CLS token attends to most (EViT / SuperViT).

    Args:
        x: tokens (B, N, C), prefix tokens (CLS, dist) first.
        attn: attention probabilities (B, H, N, N) of the same block.
        n_keep: patch tokens to keep (static).
        n_prefix: number of prefix tokens, never pruned.
        fuse: append the attention-weighted average of the dropped tokens as one token.
    """
    B, N, C = x.shape
    cls_attn = attn[:, :, 0, n_prefix:].mean(dim=1)  # (B, N-p)
    if fuse:
        order = cls_attn.topk(N - n_prefix, dim=1).indices  # (B, N-p) descending
        keep_idx, drop_idx = order[:, :n_keep], order[:, n_keep:]
    else:
        keep_idx = cls_attn.topk(n_keep, dim=1).indices  # (B, k)
    patches = x[:, n_prefix:]
    kept = patches.gather(1, keep_idx.unsqueeze(-1).expand(B, n_keep, C))  # (B, k, C)
    parts = [x[:, :n_prefix], kept]
    if fuse:
        n_drop = N - n_prefix - n_keep
        dropped = patches.gather(1, drop_idx.unsqueeze(-1).expand(B, n_drop, C))  # (B, m, C)
        w = cls_attn.gather(1, drop_idx).unsqueeze(-1)  # (B, m, 1)
        parts.append((dropped * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True))
    return torch.cat(parts, dim=1)


def slim_tokens(x: Tensor, logits: Tensor, n_prefix: int) -> tuple[Tensor, Tensor]:
    """SiT's token slimming: each output token is a softmax-weighted sum of the patch tokens.

    Args:
        x: tokens (B, N, C), prefix tokens first (they pass through unchanged).
        logits: the TSM's scores (B, N-p, k), one column per output token.
        n_prefix: number of prefix tokens.

    Returns:
        The tokens (B, p+k, C) and the aggregation weights (B, N-p, k). Only a softmax and a
        matmul: static shapes, no top-k, no gather.
    """
    weights = logits.softmax(dim=1)  # (B, N-p, k), a distribution over input tokens per output
    slim = weights.transpose(1, 2) @ x[:, n_prefix:]  # (B, k, C)
    return torch.cat([x[:, :n_prefix], slim], dim=1), weights
