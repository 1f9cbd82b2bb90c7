"""The slimmable ViT: timm's `VisionTransformer` parameter names and shapes, with a forward
that runs any subnet (width x keep rate x resolution) by slicing the full weights.

Read top to bottom: slicing rules -> Attention -> MLP -> Block -> model (the token ops both the
slimmable and the static model run are in `exporter.nn.tokens`).
Shapes: B batch, N tokens, D full embed dim, d subnet embed dim, H heads, hd head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exporter.errors import ConfigError
from exporter.nn.config import Subnet, Variant, VariantGrid, ViTConfig, block_keeps, resolve
from exporter.nn.tokens import attention, prune_tokens, slim_tokens

# --------------------------------------------------------------------------- slicing rules


def channel_index(full: int, n: int, channels: str) -> slice:
    """First or last ``n`` of ``full`` channels (Scala's Isolated Activation uses the last)."""
    return slice(0, n) if channels == "first" else slice(full - n, full)


def qkv_rows(cfg: ViTConfig, s: Subnet) -> Tensor | slice:
    """Rows of the fused ``[q | k | v]`` weight that a subnet uses.

    HydraViT (`heads`): the first d rows of each of q, k and v.
    Scala (`ratio`): one contiguous block of 3d rows, first or last.
    """
    D, d = cfg.embed_dim, s.embed_dim
    if cfg.slicing == "heads":
        return torch.cat([torch.arange(i * D, i * D + d) for i in range(3)])
    return channel_index(3 * D, 3 * d, s.channels)


def resample_pos_embed(pos: Tensor, n_prefix: int, new_grid: int) -> Tensor:
    """Bicubic resize of the patch part of a (1, P+g*g, D) pos_embed to a new grid size."""
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    old = math.isqrt(grid.shape[1])
    if old == new_grid:
        return pos
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False,
                         antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)  # (1, g'*g', D)
    return torch.cat([prefix, grid], dim=1)


# --------------------------------------------------------------------------- modules


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def active(self, s: Subnet) -> dict[str, Tensor]:
        """The subnet's weights (views of the full ones), under this module's own names."""
        ch = channel_index(self.cfg.embed_dim, s.embed_dim, s.channels)
        rows = qkv_rows(self.cfg, s)
        w = {"qkv.weight": self.qkv.weight[rows][:, ch], "proj.weight": self.proj.weight[ch, ch],
             "proj.bias": self.proj.bias[ch]}
        if self.qkv.bias is not None:
            w["qkv.bias"] = self.qkv.bias[rows]
        return w

    def forward(self, x: Tensor, s: Subnet, gate: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``gate`` (H, hd) scales each head dim of q and v (ViT-Slim's search masks)."""
        B, N, d = x.shape
        w = self.active(s)
        qkv = F.linear(x, w["qkv.weight"], w.get("qkv.bias"))  # (B, N, 3d)
        qkv = qkv.view(B, N, 3 * s.num_heads, s.head_dim).transpose(1, 2)  # (B, 3H, N, hd)
        q, k, v = qkv.chunk(3, dim=1)  # each (B, H, N, hd)
        if gate is not None:  # a dim out of q drops its q.k term, out of v its output
            q, v = q * gate[None, :, None, :], v * gate[None, :, None, :]
        # The scale stays 1/sqrt(full head dim) at every width (HydraViT: fixed head dim;
        # Scala: its sliced forward keeps the full model's scale).
        out, attn = attention(q * self.cfg.head_dim ** -0.5, k, v)
        out = out.transpose(1, 2).reshape(B, N, d)  # (B, N, d)
        return F.linear(out, w["proj.weight"], w["proj.bias"]), attn


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.embed_dim)

    def active(self, s: Subnet) -> dict[str, Tensor]:
        ch = channel_index(self.cfg.embed_dim, s.embed_dim, s.channels)
        hid = channel_index(self.cfg.mlp_hidden, s.mlp_hidden, s.channels)
        return {"fc1.weight": self.fc1.weight[hid, ch], "fc1.bias": self.fc1.bias[hid],
                "fc2.weight": self.fc2.weight[ch, hid], "fc2.bias": self.fc2.bias[ch]}

    def forward(self, x: Tensor, s: Subnet, gate: Tensor | None = None) -> Tensor:
        """``gate`` (h,) scales each hidden unit's GELU output (ViT-Slim's search masks)."""
        w = self.active(s)
        x = F.gelu(F.linear(x, w["fc1.weight"], w["fc1.bias"]))  # (B, N, h)
        if gate is not None:
            x = x * gate
        return F.linear(x, w["fc2.weight"], w["fc2.bias"])


def norm_active(norm: nn.LayerNorm, s: Subnet) -> dict[str, Tensor]:
    """A LayerNorm's weights at the subnet's width."""
    ch = channel_index(norm.weight.shape[0], s.embed_dim, s.channels)
    return {"weight": norm.weight[ch], "bias": norm.bias[ch]}


def sliced_norm(norm: nn.LayerNorm, x: Tensor, s: Subnet, eps: float) -> Tensor:
    w = norm_active(norm, s)
    return F.layer_norm(x, (s.embed_dim,), w["weight"], w["bias"], eps)


def prefixed(prefix: str, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in weights.items()}


class TokenSlimming(nn.Module):
    """SiT's Token Slimming Module: LayerNorm -> MLP -> softmax over input tokens -> weighted sum.

    The MLP scores every patch token for ``tsm_slots`` output slots; a keep rate producing k
    tokens uses the first k slots (weights ``fc2[:k]``), so one module per prune block serves
    every keep rate and resolution, the way width subnets share the first channels. The
    embed and hidden dims are sliced like the rest of the block.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.tsm_hidden)
        self.fc2 = nn.Linear(cfg.tsm_hidden, cfg.tsm_slots)

    def active(self, s: Subnet, n_keep: int) -> dict[str, Tensor]:
        """The module at the subnet's width, with its first ``n_keep`` output slots."""
        cfg = self.cfg
        if n_keep > cfg.tsm_slots:
            raise ConfigError(f"subnet {s.id} keeps {n_keep} tokens but the Token Slimming "
                              f"Modules have {cfg.tsm_slots} slots; use a resolution up to "
                              f"{cfg.resolutions[0]} or a lower keep rate")
        ch = channel_index(cfg.embed_dim, s.embed_dim, s.channels)
        hid = channel_index(cfg.tsm_hidden, s.embed_dim // 2, s.channels)
        return {**prefixed("norm.", norm_active(self.norm, s)),
                "fc1.weight": self.fc1.weight[hid, ch], "fc1.bias": self.fc1.bias[hid],
                "fc2.weight": self.fc2.weight[:n_keep, hid], "fc2.bias": self.fc2.bias[:n_keep]}

    def forward(self, x: Tensor, s: Subnet, n_keep: int) -> tuple[Tensor, Tensor]:
        cfg, w = self.cfg, self.active(s, n_keep)
        p = cfg.num_prefix_tokens
        h = F.layer_norm(x[:, p:], (s.embed_dim,), w["norm.weight"], w["norm.bias"], cfg.ln_eps)  # (B, N-p, d)
        h = F.gelu(F.linear(h, w["fc1.weight"], w["fc1.bias"]))  # (B, N-p, d/2)
        logits = F.linear(h, w["fc2.weight"], w["fc2.bias"])  # (B, N-p, k)
        return slim_tokens(x, logits, p)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, tsm: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg)
        self.tsm = TokenSlimming(cfg) if tsm else None

    def active(self, s: Subnet, n_keep: int | None) -> dict[str, Tensor]:
        """The block's weights at subnet ``s`` under timm's names (``mlp.fc1.weight``, ...)."""
        w = {**prefixed("norm1.", norm_active(self.norm1, s)), **prefixed("attn.", self.attn.active(s)),
             **prefixed("norm2.", norm_active(self.norm2, s)), **prefixed("mlp.", self.mlp.active(s))}
        if self.tsm is not None and n_keep is not None:
            w.update(prefixed("tsm.", self.tsm.active(s, n_keep)))
        return w

    def reduce(self, x: Tensor, attn: Tensor, s: Subnet, n_keep: int) -> tuple[Tensor, Tensor | None]:
        """Reduce the tokens after attention; also returns the TSM's aggregation weights."""
        if self.tsm is not None:
            return self.tsm(x, s, n_keep)
        return prune_tokens(x, attn, n_keep, self.cfg.num_prefix_tokens, self.cfg.fuse_tokens), None

    def forward(self, x: Tensor, s: Subnet, n_keep: int | None, attn_gate: Tensor | None = None,
                mlp_gate: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The block's output and, where a TSM reduced the tokens, its aggregation weights."""
        h, attn = self.attn(sliced_norm(self.norm1, x, s, self.cfg.ln_eps), s, attn_gate)
        x = x + h
        weights = None
        if n_keep is not None:
            x, weights = self.reduce(x, attn, s, n_keep)
        return x + self.mlp(sliced_norm(self.norm2, x, s, self.cfg.ln_eps), s, mlp_gate), weights


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)


@dataclass(frozen=True)
class Gates:
    """Soft masks multiplied into a forward (ViT-Slim's search, at the full subnet).

    ``attn`` (depth, H, hd) scales head dims of q and v, ``mlp`` (depth, hidden) the MLP units;
    ``tokens`` (patches,) scales the patch tokens, or ``positions`` keeps only those patches."""

    attn: Tensor
    mlp: Tensor
    tokens: Tensor | None = None
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Features:
    """The final tokens (B, N', d) after the last norm, and, when tracked, how the final patch
    tokens mix the input patches (B, k, g*g) through the Token Slimming Modules (SiT)."""

    tokens: Tensor
    assign: Tensor | None = None


class SlimmableViT(nn.Module):
    """One network, many subnets. ``forward(x, variant)`` runs the subnet; with no variant it
    runs the full model at ``img_size``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        n_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + cfg.num_prefix_tokens, D))
        # SuperViT: one learned pos_embed per extra input size.
        self.pos_embed_res = nn.ParameterDict({
            str(r): nn.Parameter(torch.zeros(1, (r // cfg.patch_size) ** 2 + cfg.num_prefix_tokens, D))
            for r in cfg.extra_resolutions
        })
        tsm = cfg.prune_blocks if cfg.token_reducer == "tsm" else ()
        self.blocks = nn.ModuleList(Block(cfg, tsm=i in tsm) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.ln_eps)
        self.head = nn.Linear(D, cfg.num_classes)
        self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.distilled else None
        self.reset_parameters()

    def subnets(self, grid: VariantGrid) -> list[Subnet]:
        """The subnets this model exports for ``grid`` (a searched model overrides it)."""
        return grid.subnets(self.cfg)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for p in [self.cls_token, self.pos_embed, *self.pos_embed_res.values()]:
            nn.init.trunc_normal_(p, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def subnet(self, variant: Variant | Subnet | None = None) -> Subnet:
        if isinstance(variant, Subnet):
            return variant
        return resolve(self.cfg, variant or Variant())

    def pos_embed_for(self, resolution: int) -> Tensor:
        """Full-width pos_embed (1, P+g*g, D) for a resolution: learned if the model has one for
        that size, else resampled from the ``img_size`` one."""
        if resolution == self.cfg.img_size:
            return self.pos_embed
        if str(resolution) in self.pos_embed_res:
            return self.pos_embed_res[str(resolution)]
        return resample_pos_embed(self.pos_embed, self.cfg.num_prefix_tokens,
                                  resolution // self.cfg.patch_size)

    def stem_active(self, s: Subnet) -> dict[str, Tensor]:
        """Patch embedding, prefix tokens and the positions of the subnet's resolution."""
        ch = channel_index(self.cfg.embed_dim, s.embed_dim, s.channels)
        w = {"patch_embed.proj.weight": self.patch_embed.proj.weight[ch],
             "patch_embed.proj.bias": self.patch_embed.proj.bias[ch],
             "cls_token": self.cls_token[..., ch], "pos_embed": self.pos_embed_for(s.resolution)[..., ch]}
        if self.dist_token is not None:
            w["dist_token"] = self.dist_token[..., ch]
        return w

    def head_active(self, s: Subnet) -> dict[str, Tensor]:
        """The final norm and the classifier(s): input columns sliced, the bias stays full."""
        ch = channel_index(self.cfg.embed_dim, s.embed_dim, s.channels)
        w = {**prefixed("norm.", norm_active(self.norm, s)), "head.weight": self.head.weight[:, ch],
             "head.bias": self.head.bias}
        if self.head_dist is not None:
            w |= {"head_dist.weight": self.head_dist.weight[:, ch], "head_dist.bias": self.head_dist.bias}
        return w

    def active(self, s: Subnet) -> dict[str, Tensor]:
        """Every weight subnet ``s`` uses, under timm's names: the one definition of slicing that
        the forward runs and `extract_variant` copies (views of the full weights, not copies)."""
        w = {**self.stem_active(s), **self.head_active(s)}
        for i, (block, n_keep) in enumerate(zip(self.blocks, block_keeps(self.cfg, s), strict=True)):
            w.update(prefixed(f"blocks.{i}.", block.active(s, n_keep)))
        return w

    def embed(self, x: Tensor, s: Subnet) -> Tensor:
        """Patch embedding, prefix tokens and positions: (B, C, R, R) -> (B, N, d)."""
        if x.shape[-2:] != (s.resolution, s.resolution):
            raise ValueError(f"subnet {s.id} expects {s.resolution}x{s.resolution} input, "
                             f"got {tuple(x.shape[-2:])}")
        w = self.stem_active(s)
        x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"],
                     stride=self.cfg.patch_size)  # (B, d, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, d)
        prefix = [w["cls_token"]] + ([w["dist_token"]] if "dist_token" in w else [])
        x = torch.cat([p.expand(x.shape[0], -1, -1) for p in prefix] + [x], dim=1)
        return x + w["pos_embed"]  # (B, N, d)

    def features(self, x: Tensor, s: Subnet, track: bool = False, gates: Gates | None = None) -> Features:
        """The one forward of the slimmable model, up to the final norm.

        ``track`` composes the TSM aggregation weights (SiT's token loss); ``gates`` applies
        ViT-Slim's soft masks (at the full subnet)."""
        cfg = self.cfg
        x = self.embed(x, s)
        p = cfg.num_prefix_tokens
        if gates is not None and gates.positions is not None:
            x = torch.cat([x[:, :p], x[:, p:][:, list(gates.positions)]], dim=1)
        elif gates is not None and gates.tokens is not None:
            x = torch.cat([x[:, :p], x[:, p:] * gates.tokens[None, :, None]], dim=1)
        assign = None
        for i, (block, n_keep) in enumerate(zip(self.blocks, block_keeps(cfg, s), strict=True)):
            x, weights = block(x, s, n_keep, None if gates is None else gates.attn[i],
                               None if gates is None else gates.mlp[i])
            if track and weights is not None:  # top-k pruning has no weights
                w = weights.transpose(1, 2)  # (B, k, N-p)
                assign = w if assign is None else w @ assign  # (B, k, g*g)
        return Features(sliced_norm(self.norm, x, s, cfg.ln_eps), assign)

    def forward_features(self, x: Tensor, s: Subnet) -> Tensor:
        return self.features(x, s).tokens

    def forward_head(self, x: Tensor, s: Subnet) -> Tensor:
        w = self.head_active(s)
        logits = F.linear(x[:, 0], w["head.weight"], w["head.bias"])
        if "head_dist.weight" in w:
            logits = (logits + F.linear(x[:, 1], w["head_dist.weight"], w["head_dist.bias"])) / 2
        return logits

    def forward(self, x: Tensor, variant: Variant | Subnet | None = None) -> Tensor:
        s = self.subnet(variant)
        return self.forward_head(self.forward_features(x, s), s)
