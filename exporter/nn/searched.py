"""A searched (ViT-Slim) structure and the physically smaller model it becomes: per-layer
heads, dims per head and MLP units chosen by index, kept patch positions; the static module,
the one-variant `NonUniformViT` that `slimvit export` takes, and its checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from exporter.errors import ConfigError
from exporter.nn.config import Subnet, Variant, VariantGrid, ViTConfig
from exporter.nn.cost import mac_count
from exporter.nn.extract import variant_state_dict
from exporter.nn.model import SlimmableViT
from exporter.nn.static import LayerDims, StaticSpec, StaticViT

# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Structure:
    """A searched structure: per layer the kept heads, the kept dims of each kept head (the
    same count within a layer), the kept MLP units; and the kept patch positions."""

    heads: tuple[tuple[int, ...], ...]
    head_dims: tuple[tuple[tuple[int, ...], ...], ...]
    mlp_units: tuple[tuple[int, ...], ...]
    token_positions: tuple[int, ...]

    def layer_dims(self) -> tuple[LayerDims, ...]:
        return tuple(LayerDims(len(h), len(d[0]), len(u))
                     for h, d, u in zip(self.heads, self.head_dims, self.mlp_units, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"heads": [list(h) for h in self.heads],
                "head_dims": [[list(d) for d in layer] for layer in self.head_dims],
                "mlp_units": [list(u) for u in self.mlp_units],
                "token_positions": list(self.token_positions)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Structure:
        return cls(tuple(tuple(h) for h in d["heads"]),
                   tuple(tuple(tuple(x) for x in layer) for layer in d["head_dims"]),
                   tuple(tuple(u) for u in d["mlp_units"]), tuple(d["token_positions"]))

    def describe(self) -> dict[str, Any]:
        """The manifest's ``structure``: sizes per layer and the kept token positions."""
        return {"method": "vitslim",
                "layers": [dataclasses.asdict(dims) for dims in self.layer_dims()],
                "token_positions": list(self.token_positions)}


def structure_spec(cfg: ViTConfig, st: Structure) -> StaticSpec:
    """The static spec of a structure (full embed dim, img_size, no token pruning)."""
    dims = st.layer_dims()
    grid = (cfg.img_size // cfg.patch_size) ** 2
    return StaticSpec(
        embed_dim=cfg.embed_dim, num_heads=max(d.num_heads for d in dims),
        head_dim=max(d.head_dim for d in dims), mlp_hidden=max(d.mlp_hidden for d in dims),
        depth=cfg.depth, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
        num_classes=cfg.num_classes, resolution=cfg.img_size,
        num_prefix_tokens=cfg.num_prefix_tokens, keeps=(None,) * cfg.depth, ln_eps=cfg.ln_eps,
        qkv_bias=cfg.qkv_bias, distilled=cfg.distilled, layers=dims,
        # keeping every position needs no selection
        token_positions=None if st.token_positions == tuple(range(grid)) else st.token_positions)


def full_structure(cfg: ViTConfig) -> Structure:
    """Everything kept: the structure of the unpruned model."""
    heads = tuple(range(cfg.num_heads))
    dims = tuple(tuple(range(cfg.head_dim)) for _ in heads)
    return Structure((heads,) * cfg.depth, (dims,) * cfg.depth,
                     (tuple(range(cfg.mlp_hidden)),) * cfg.depth,
                     tuple(range((cfg.img_size // cfg.patch_size) ** 2)))


def full_macs(cfg: ViTConfig) -> int:
    """MACs of the unpruned model at ``img_size``, all tokens: what a budget is a fraction of."""
    return mac_count(structure_spec(cfg, full_structure(cfg)))


# --------------------------------------------------------------------------- the searched model


@torch.no_grad()
def extract_structure(model: SlimmableViT, st: Structure) -> StaticViT:
    """Index-select the weights of ``st`` from ``model`` into a fresh `StaticViT` whose output
    equals `masked_forward` with 0/1 masks of the structure and its positions."""
    cfg = model.cfg
    full = variant_state_dict(model, model.subnet(Variant(1.0, 1.0, cfg.img_size)))  # q pre-scaled
    D, hd = cfg.embed_dim, cfg.head_dim
    sd = dict(full)
    sd["pos_embed"] = full["pos_embed"][:, list(st.token_positions)]
    for i, (heads, dims, units) in enumerate(zip(st.heads, st.head_dims, st.mlp_units, strict=True)):
        p = f"blocks.{i}."
        idx = torch.tensor([h * hd + j for h, ds in zip(heads, dims, strict=True) for j in ds])
        rows = torch.cat([idx, D + idx, 2 * D + idx])
        sd[p + "attn.qkv.weight"] = full[p + "attn.qkv.weight"][rows]
        if p + "attn.qkv.bias" in full:
            sd[p + "attn.qkv.bias"] = full[p + "attn.qkv.bias"][rows]
        sd[p + "attn.proj.weight"] = full[p + "attn.proj.weight"][:, idx]
        u = torch.tensor(units)
        fc1, fc2 = p + "mlp.fc1.", p + "mlp.fc2."
        sd[fc1 + "weight"], sd[fc1 + "bias"] = full[fc1 + "weight"][u], full[fc1 + "bias"][u]
        sd[fc2 + "weight"] = full[fc2 + "weight"][:, u]
    static = StaticViT(structure_spec(cfg, st))
    static.load_state_dict({k: v.clone().contiguous() for k, v in sd.items()}, strict=True)
    return static.eval()


class NonUniformViT(nn.Module):
    """A searched model: one static structure, run and exported like a one-variant model.

    ``cfg`` is the config of the model it was searched from; only ``Variant()`` (its full
    width, all kept tokens, ``img_size``) exists, so a grid's widths and keep rates do not apply.
    """

    def __init__(self, cfg: ViTConfig, structure: Structure, budget: float) -> None:
        super().__init__()
        self.cfg, self.structure, self.budget = cfg, structure, budget
        self.net = StaticViT(structure_spec(cfg, structure))

    @property
    def spec(self) -> StaticSpec:
        return self.net.spec

    def subnet(self, variant: Variant | Subnet | None = None) -> Subnet:
        spec, cfg = self.spec, self.cfg
        own = Subnet(embed_dim=spec.embed_dim, num_heads=spec.num_heads, head_dim=spec.head_dim,
                     mlp_hidden=spec.mlp_hidden, channels="first", keep_rate=1.0,
                     resolution=cfg.img_size, width=1.0, tokens=(spec.num_tokens,) * (cfg.depth + 1),
                     name=f"vitslim_m{round(100 * self.macs_fraction)}_r{cfg.img_size}")
        if isinstance(variant, Subnet) and variant.id == own.id:
            return own
        if variant is not None and (not isinstance(variant, Variant) or variant.width != 1.0
                                    or variant.keep_rate != 1.0
                                    or variant.resolution not in (None, cfg.img_size)):
            raise ConfigError(f"a searched (ViT-Slim) model has one structure at {cfg.img_size} px; "
                              f"it has no variant {variant}")
        return own

    def subnets(self, grid: VariantGrid | None = None) -> list[Subnet]:
        """Its one subnet, whatever the grid (widths and keep rates do not apply)."""
        return [self.subnet()]

    @property
    def macs_fraction(self) -> float:
        return mac_count(self.spec) / full_macs(self.cfg)

    def static_spec(self, s: Subnet | None = None) -> StaticSpec:
        return self.spec

    def extract(self, s: Subnet | None = None) -> StaticViT:
        static = StaticViT(self.spec)
        static.load_state_dict(self.net.state_dict(), strict=True)
        return static.eval()

    def forward(self, x: Tensor, variant: Variant | Subnet | None = None) -> Tensor:
        self.subnet(variant)
        return self.net(x)
