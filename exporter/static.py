"""The static ViT an extracted variant becomes: plain modules at the subnet's own size, every
shape fixed, no tensor of rank > 4, the attention scale folded into the q weights.

This is what gets exported; it knows nothing about slimming."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exporter.model import attention, prune_tokens


@dataclass(frozen=True)
class StaticSpec:
    """Every dimension of one static graph."""

    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    depth: int
    patch_size: int
    in_chans: int
    num_classes: int
    resolution: int
    num_prefix_tokens: int
    keeps: tuple[int | None, ...]  # patch tokens kept after each block's attention
    fuse_tokens: bool = False
    ln_eps: float = 1e-6
    qkv_bias: bool = True
    distilled: bool = False

    @property
    def num_tokens(self) -> int:
        return (self.resolution // self.patch_size) ** 2 + self.num_prefix_tokens

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class StaticAttention(nn.Module):
    def __init__(self, spec: StaticSpec) -> None:
        super().__init__()
        self.num_heads, self.head_dim = spec.num_heads, spec.head_dim
        d = spec.num_heads * spec.head_dim
        self.qkv = nn.Linear(spec.embed_dim, 3 * d, bias=spec.qkv_bias)  # q rows pre-scaled
        self.proj = nn.Linear(d, spec.embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3 * self.num_heads, self.head_dim).transpose(1, 2)  # (B, 3H, N, hd)
        q, k, v = qkv.chunk(3, dim=1)  # each (B, H, N, hd)
        out, attn = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C)), attn  # (B, N, C)


class StaticBlock(nn.Module):
    def __init__(self, spec: StaticSpec, n_keep: int | None) -> None:
        super().__init__()
        self.n_keep, self.n_prefix, self.fuse = n_keep, spec.num_prefix_tokens, spec.fuse_tokens
        self.norm1 = nn.LayerNorm(spec.embed_dim, eps=spec.ln_eps)
        self.attn = StaticAttention(spec)
        self.norm2 = nn.LayerNorm(spec.embed_dim, eps=spec.ln_eps)
        self.fc1 = nn.Linear(spec.embed_dim, spec.mlp_hidden)
        self.fc2 = nn.Linear(spec.mlp_hidden, spec.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        h, attn = self.attn(self.norm1(x))
        x = x + h
        if self.n_keep is not None:
            x = prune_tokens(x, attn, self.n_keep, self.n_prefix, self.fuse)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class StaticViT(nn.Module):
    """A plain ViT for exactly one input size; input (B, C, R, R), output logits (B, classes)."""

    def __init__(self, spec: StaticSpec) -> None:
        super().__init__()
        self.spec = spec
        self.patch_embed = nn.Conv2d(spec.in_chans, spec.embed_dim, spec.patch_size, stride=spec.patch_size)
        # cls (+ dist) token with its position already added: one constant per prefix token.
        self.prefix = nn.Parameter(torch.zeros(1, spec.num_prefix_tokens, spec.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_tokens - spec.num_prefix_tokens, spec.embed_dim))
        self.blocks = nn.ModuleList(StaticBlock(spec, k) for k in spec.keeps)
        self.norm = nn.LayerNorm(spec.embed_dim, eps=spec.ln_eps)
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)
        self.head_dist = nn.Linear(spec.embed_dim, spec.num_classes) if spec.distilled else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, g*g, C)
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, C)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        logits = self.head(x[:, 0])
        if self.head_dist is not None:
            logits = (logits + self.head_dist(x[:, 1])) / 2
        return logits
