"""The static ViT an extracted variant becomes: plain modules at the subnet's own size, every
shape fixed, no tensor of rank > 4, the attention scale folded into the q weights.

This is what gets exported; it knows nothing about slimming."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exporter.nn.tokens import attention, prune_tokens, slim_tokens


@dataclass(frozen=True)
class LayerDims:
    """The attention and MLP sizes of one block of a non-uniform (searched) structure."""

    num_heads: int
    head_dim: int
    mlp_hidden: int


@dataclass(frozen=True)
class StaticSpec:
    """Every dimension of one static graph.

    ``layers`` gives each block its own heads/head dim/MLP hidden (ViT-Slim); when None every
    block has the uniform ``num_heads``/``head_dim``/``mlp_hidden``. ``token_positions`` keeps
    only those patch positions of the input grid (ViT-Slim's token mask), in that order.
    """

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
    token_reducer: str = "topk"  # "tsm": SiT's Token Slimming Module where keeps is set
    tsm_hidden: int = 0
    layers: tuple[LayerDims, ...] | None = None
    token_positions: tuple[int, ...] | None = None

    @property
    def grid_tokens(self) -> int:
        """Patches the convolution produces."""
        return (self.resolution // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block."""
        n = self.grid_tokens if self.token_positions is None else len(self.token_positions)
        return n + self.num_prefix_tokens

    def layer(self, i: int) -> LayerDims:
        if self.layers is not None:
            return self.layers[i]
        return LayerDims(self.num_heads, self.head_dim, self.mlp_hidden)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class StaticAttention(nn.Module):
    def __init__(self, spec: StaticSpec, dims: LayerDims) -> None:
        super().__init__()
        self.num_heads, self.head_dim = dims.num_heads, dims.head_dim
        d = dims.num_heads * dims.head_dim
        self.qkv = nn.Linear(spec.embed_dim, 3 * d, bias=spec.qkv_bias)  # q rows pre-scaled
        self.proj = nn.Linear(d, spec.embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, N, C = x.shape
        d = self.num_heads * self.head_dim  # == C unless the structure is non-uniform
        qkv = self.qkv(x).view(B, N, 3 * self.num_heads, self.head_dim).transpose(1, 2)  # (B, 3H, N, hd)
        q, k, v = qkv.chunk(3, dim=1)  # each (B, H, N, hd)
        out, attn = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, d)), attn  # (B, N, C)


class StaticTokenSlimming(nn.Module):
    """SiT's TSM at one keep count: LayerNorm -> MLP -> softmax over tokens -> matmul."""

    def __init__(self, spec: StaticSpec, n_keep: int) -> None:
        super().__init__()
        self.n_prefix = spec.num_prefix_tokens
        self.norm = nn.LayerNorm(spec.embed_dim, eps=spec.ln_eps)
        self.fc1 = nn.Linear(spec.embed_dim, spec.tsm_hidden)
        self.fc2 = nn.Linear(spec.tsm_hidden, n_keep)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc2(F.gelu(self.fc1(self.norm(x[:, self.n_prefix:]))))  # (B, N-p, k)
        return slim_tokens(x, logits, self.n_prefix)[0]


class StaticMlp(nn.Module):
    """timm's ``Mlp`` at one hidden size: fc1 -> GELU -> fc2."""

    def __init__(self, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class StaticPatchEmbed(nn.Module):
    """timm's ``PatchEmbed``: one strided conv (``proj``), flattened to (B, tokens, C)."""

    def __init__(self, spec: StaticSpec) -> None:
        super().__init__()
        self.proj = nn.Conv2d(spec.in_chans, spec.embed_dim, spec.patch_size, stride=spec.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class StaticBlock(nn.Module):
    def __init__(self, spec: StaticSpec, n_keep: int | None, dims: LayerDims | None = None) -> None:
        super().__init__()
        dims = dims or spec.layer(0)
        self.n_keep, self.n_prefix, self.fuse = n_keep, spec.num_prefix_tokens, spec.fuse_tokens
        self.norm1 = nn.LayerNorm(spec.embed_dim, eps=spec.ln_eps)
        self.attn = StaticAttention(spec, dims)
        self.norm2 = nn.LayerNorm(spec.embed_dim, eps=spec.ln_eps)
        self.mlp = StaticMlp(spec.embed_dim, dims.mlp_hidden)
        use_tsm = n_keep is not None and spec.token_reducer == "tsm"
        self.tsm = StaticTokenSlimming(spec, n_keep) if use_tsm else None

    def forward(self, x: Tensor) -> Tensor:
        h, attn = self.attn(self.norm1(x))
        x = x + h
        if self.tsm is not None:
            x = self.tsm(x)
        elif self.n_keep is not None:
            x = prune_tokens(x, attn, self.n_keep, self.n_prefix, self.fuse)
        return x + self.mlp(self.norm2(x))


class StaticViT(nn.Module):
    """A plain ViT for exactly one input size; input (B, C, R, R), output logits (B, classes).

    Submodules carry timm's names (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``,
    ``norm``, ``head``), so its state dict reads like a timm ViT's, with two folds: the q rows of
    ``qkv`` are pre-scaled, and ``prefix`` is the cls (+ dist) token plus its position."""

    def __init__(self, spec: StaticSpec) -> None:
        super().__init__()
        self.spec = spec
        self.patch_embed = StaticPatchEmbed(spec)
        # cls (+ dist) token with its position already added: one constant per prefix token.
        self.prefix = nn.Parameter(torch.zeros(1, spec.num_prefix_tokens, spec.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_tokens - spec.num_prefix_tokens, spec.embed_dim))
        self.blocks = nn.ModuleList(StaticBlock(spec, k, spec.layer(i)) for i, k in enumerate(spec.keeps))
        self.norm = nn.LayerNorm(spec.embed_dim, eps=spec.ln_eps)
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)
        self.head_dist = nn.Linear(spec.embed_dim, spec.num_classes) if spec.distilled else None
        if spec.token_positions is None:
            self.select = None
        else:  # kept patch positions as a constant one-hot matmul: static, and no gather op
            select = torch.zeros(len(spec.token_positions), spec.grid_tokens)
            select[torch.arange(len(spec.token_positions)), torch.tensor(spec.token_positions)] = 1.0
            self.register_buffer("select", select, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # (B, g*g, C)
        if self.select is not None:
            x = self.select @ x  # (B, n, C): the kept positions
        x = x + self.pos_embed
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, C)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        logits = self.head(x[:, 0])
        if self.head_dist is not None:
            logits = (logits + self.head_dist(x[:, 1])) / 2
        return logits
