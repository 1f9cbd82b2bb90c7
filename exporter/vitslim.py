"""ViT-Slim: search a non-uniform sub-structure of a trained ViT for a MAC budget, then make it
a physically smaller static model.

1. Learn soft masks (init 1) on every head's dims, every MLP hidden unit and every patch
   position, jointly with the weights, under an L1 penalty (`learn_masks`).
2. One global threshold on |mask| picks the structure; it is bisected until the analytic MACs
   meet the budget (`structure_for_budget`). Each layer keeps its own heads, dims per head and
   MLP units, chosen by index. A static graph needs one head dim per layer, so a layer keeps
   the heads with any surviving dim and, in each, its top ``round(surviving dims / heads)``.
3. Index-select the weights into a `StaticViT` with per-layer sizes (`extract_structure`),
   fine-tune it briefly against the original model, and save it with the structure in the
   checkpoint metadata (`NonUniformViT`, `save_searched`, `load_searched`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calibration.data import ImageSet, Preprocess
from exporter.config import Subnet, Variant, VariantGrid, ViTConfig
from exporter.cost import mac_count
from exporter.errors import ConfigError
from exporter.extract import variant_state_dict
from exporter.model import SlimmableViT, attention
from exporter.static import LayerDims, StaticSpec, StaticViT


@dataclass(frozen=True)
class SearchConfig:
    """Settings of a search (defaults sized for the built-in digits demo)."""

    budget_macs: float = 0.5  # fraction of the full model's MACs
    search_epochs: int = 4
    finetune_epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-4
    mask_lr: float = 2e-2
    l1: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.budget_macs <= 1:
            raise ConfigError(f'"budget_macs" is a fraction of the full model\'s MACs in (0, 1], '
                              f"but got {self.budget_macs}")
        for name in ("search_epochs", "finetune_epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f'"{name}" must be an integer >= 0, but got {getattr(self, name)!r}')
        if self.batch_size < 1 or self.lr <= 0 or self.mask_lr <= 0 or self.l1 < 0:
            raise ConfigError("batch_size, lr and mask_lr must be positive and l1 >= 0")


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


def _top(scores: Tensor, k: int) -> tuple[int, ...]:
    """Indices of the ``k`` largest scores, ascending (ties: the lower index)."""
    return tuple(sorted(int(i) for i in torch.argsort(-scores, stable=True)[:k]))


def structure_at(masks: Masks, threshold: float) -> Structure:
    """The structure kept by one global threshold on |mask| (at least one of everything)."""
    attn, mlp, tok = (m.detach().abs() for m in (masks.attn, masks.mlp, masks.tokens))
    heads, head_dims, units = [], [], []
    for layer in range(attn.shape[0]):
        a = attn[layer]  # (H, hd)
        alive = (a > threshold).sum(dim=1)  # surviving dims per head
        n_heads = max(1, int((alive > 0).sum()))
        hd = min(a.shape[1], max(1, round(int(alive.sum()) / n_heads)))
        kept = _top(a.sum(dim=1), n_heads)
        heads.append(kept)
        head_dims.append(tuple(_top(a[h], hd) for h in kept))
        units.append(_top(mlp[layer], max(1, int((mlp[layer] > threshold).sum()))))
    positions = _top(tok, max(1, int((tok > threshold).sum())))
    return Structure(tuple(heads), tuple(head_dims), tuple(units), positions)


def structure_for_budget(masks: Masks, cfg: ViTConfig, budget: float) -> Structure:
    """The structure of the lowest global threshold whose MACs are within ``budget`` (a
    fraction of the full model's).

    Raises:
        ConfigError: even the smallest structure (one of everything) exceeds the budget.
    """
    full = full_macs(cfg)
    limit = budget * full
    scores = torch.cat([m.detach().abs().flatten() for m in (masks.attn, masks.mlp, masks.tokens)])
    candidates = [-1.0, *sorted(set(scores.tolist()))]

    def macs(i: int) -> int:
        return mac_count(structure_spec(cfg, structure_at(masks, candidates[i])))

    lo, hi = 0, len(candidates) - 1
    if macs(hi) > limit:
        raise ConfigError(f"--budget-macs {budget} is below the smallest structure "
                          f"({macs(hi) / full:.3f} of the full MACs); give a larger budget")
    while lo < hi:  # MACs fall (almost) monotonically as the threshold rises
        mid = (lo + hi) // 2
        if macs(mid) <= limit:
            hi = mid
        else:
            lo = mid + 1
    while macs(lo) > limit:  # the per-layer rounding can break monotonicity by a step
        lo += 1
    return structure_at(masks, candidates[lo])


# --------------------------------------------------------------------------- mask learning


class Masks(nn.Module):
    """Soft masks: (depth, heads, head dim) on attention, (depth, hidden) on MLP units,
    (patches,) on token positions of the ``img_size`` grid."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        grid = (cfg.img_size // cfg.patch_size) ** 2
        self.attn = nn.Parameter(torch.ones(cfg.depth, cfg.num_heads, cfg.head_dim))
        self.mlp = nn.Parameter(torch.ones(cfg.depth, cfg.mlp_hidden))
        self.tokens = nn.Parameter(torch.ones(grid))

    def l1(self) -> Tensor:
        """Mean |mask| over every element: one penalty per element, whatever its group."""
        flat = torch.cat([self.attn.flatten(), self.mlp.flatten(), self.tokens])
        return flat.abs().mean()


def masked_forward(model: SlimmableViT, masks: Masks, x: Tensor,
                   positions: Sequence[int] | None = None) -> Tensor:
    """The full model at ``img_size`` with the masks applied: head dims mask q and v (a dim
    out of q drops its q.k term, out of v its output), units mask the GELU output, positions
    scale the patch tokens. ``positions`` instead keeps only those patches (hard selection)."""
    cfg = model.cfg
    s = model.subnet(Variant(1.0, 1.0, cfg.img_size))
    x = model.embed(x, s)  # (B, N, D)
    p = cfg.num_prefix_tokens
    if positions is None:
        x = torch.cat([x[:, :p], x[:, p:] * masks.tokens[None, :, None]], dim=1)
    else:
        x = torch.cat([x[:, :p], x[:, p:][:, list(positions)]], dim=1)
    H, hd = cfg.num_heads, cfg.head_dim
    for i, blk in enumerate(model.blocks):
        B, N, D = x.shape
        h = blk.norm1(x)
        qkv = blk.attn.qkv(h).view(B, N, 3 * H, hd).transpose(1, 2)  # (B, 3H, N, hd)
        q, k, v = qkv.chunk(3, dim=1)  # each (B, H, N, hd)
        m = masks.attn[i][None, :, None, :]  # (1, H, 1, hd)
        out, _ = attention(q * m * hd ** -0.5, k, v * m)
        x = x + blk.attn.proj(out.transpose(1, 2).reshape(B, N, D))
        hidden = F.gelu(blk.mlp.fc1(blk.norm2(x))) * masks.mlp[i]  # (B, N, hidden)
        x = x + blk.mlp.fc2(hidden)
    return model.forward_head(model.norm(x), s)


def _batches(data: ImageSet, pre: Preprocess, res: int, batch: int, gen: torch.Generator):
    order = torch.randperm(len(data), generator=gen)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    for i in range(0, len(data), batch):
        idx = order[i:i + batch]
        yield pre(images[idx], res), labels[idx]


def learn_masks(model: SlimmableViT, data: ImageSet, pre: Preprocess, cfg: SearchConfig,
                log: Callable[[dict], None] | None = None) -> Masks:
    """Train soft masks and the weights of ``model`` (in place) with cross-entropy plus an L1
    penalty on the masks; returns the masks."""
    masks = Masks(model.cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": cfg.lr},
                             {"params": masks.parameters(), "lr": cfg.mask_lr, "weight_decay": 0.0}])
    model.train()
    for epoch in range(cfg.search_epochs):
        t0, total, n = time.time(), 0.0, 0
        for x, y in _batches(data, pre, model.cfg.img_size, cfg.batch_size, gen):
            loss = F.cross_entropy(masked_forward(model, masks, x), y) + cfg.l1 * masks.l1()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        if log:
            log({"stage": "search", "epoch": epoch + 1, "loss": total / n,
                 "mask_l1": float(masks.l1().detach()), "seconds": time.time() - t0})
    model.eval()
    return masks


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
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = full[p + "fc1.weight"][u], full[p + "fc1.bias"][u]
        sd[p + "fc2.weight"] = full[p + "fc2.weight"][:, u]
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


def finetune(net: nn.Module, teacher: SlimmableViT, data: ImageSet, pre: Preprocess, cfg: SearchConfig,
             log: Callable[[dict], None] | None = None) -> None:
    """Briefly re-train the pruned model: cross-entropy + KL to the unpruned model."""
    res = teacher.cfg.img_size
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr * 2, weight_decay=0.05)
    teacher.eval()
    for epoch in range(cfg.finetune_epochs):
        net.train()
        t0, total, n = time.time(), 0.0, 0
        for x, y in _batches(data, pre, res, cfg.batch_size, gen):
            logits = net(x)
            with torch.no_grad():
                target = teacher(x).log_softmax(-1)
            loss = F.cross_entropy(logits, y) + F.kl_div(logits.log_softmax(-1), target,
                                                         log_target=True, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        if log:
            log({"stage": "finetune", "epoch": epoch + 1, "loss": total / n, "seconds": time.time() - t0})
    net.eval()


def search(model: SlimmableViT, data: ImageSet, pre: Preprocess, cfg: SearchConfig = SearchConfig(),
           log: Callable[[dict], None] | None = None) -> NonUniformViT:
    """Learn masks, pick the structure for ``cfg.budget_macs``, extract and fine-tune it.

    ``model`` is not changed (the masks are learned on a copy).

    Raises:
        ConfigError: the budget is below the smallest structure.
    """
    import copy

    torch.manual_seed(cfg.seed)
    work = copy.deepcopy(model)
    masks = learn_masks(work, data, pre, cfg, log)
    st = structure_for_budget(masks, model.cfg, cfg.budget_macs)
    searched = NonUniformViT(model.cfg, st, cfg.budget_macs)
    searched.net.load_state_dict(extract_structure(work, st).state_dict())
    finetune(searched.net, model, data, pre, cfg, log)
    return searched.eval()


# --------------------------------------------------------------------------- checkpoints

STRUCTURE_KEY = "structure"


def save_searched(model: NonUniformViT, path: str | Path, labels: list[str], pre: Preprocess) -> Path:
    """A slimvit `.safetensors` checkpoint of the searched model, structure in its metadata."""
    from exporter.checkpoint import save_checkpoint

    extra = {STRUCTURE_KEY: json.dumps(model.structure.to_dict()), "budget_macs": str(model.budget)}
    return save_checkpoint(model, path, labels, pre, extra=extra)  # type: ignore[arg-type]


def load_searched(path: Path, tensors: dict[str, Tensor], meta: dict[str, str]) -> Any:
    """Rebuild a `NonUniformViT` from a checkpoint written by `save_searched` (called by the
    slimvit loader when the metadata has a structure)."""
    from exporter.checkpoint import LoadedModel, load_tensors
    from exporter.errors import CheckpointError

    try:
        cfg = ViTConfig.from_dict(json.loads(meta["config"]))
        st = Structure.from_dict(json.loads(meta[STRUCTURE_KEY]))
        budget = float(meta.get("budget_macs", "1"))
        labels = json.loads(meta.get("labels", "null")) or [str(i) for i in range(cfg.num_classes)]
        pre = json.loads(meta.get("preprocess", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: searched-structure metadata is damaged ({e})") from None
    model = NonUniformViT(cfg, st, budget)
    load_tensors(model, tensors, path)
    preprocess = Preprocess(tuple(pre.get("mean", (0.5,) * 3)), tuple(pre.get("std", (0.5,) * 3)),
                            pre.get("resize", "bilinear"))
    return LoadedModel(model.eval(), path.stem, "slimvit", labels, preprocess)  # type: ignore[arg-type]
