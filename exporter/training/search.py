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
   checkpoint metadata (`NonUniformViT` in `exporter.nn.searched`, `save_searched` in `exporter.checkpoints`).

Data: the built-in digits training split, or a folder / ``.npz`` read as calibration reads it;
without labels the task loss is the KL to the unpruned model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calibration.data import Preprocess, digits
from calibration.sources import load_calibration
from exporter.checkpoints import load_model, save_searched
from exporter.errors import ConfigError
from exporter.nn.config import Variant, ViTConfig
from exporter.nn.cost import mac_count
from exporter.nn.model import Gates, SlimmableViT
from exporter.nn.searched import NonUniformViT, Structure, extract_structure, full_macs, structure_spec
from exporter.training.loop import fit

__all__ = ["Masks", "NonUniformViT", "SearchConfig", "SearchData", "SearchResult", "Structure",
           "extract_structure", "learn_masks", "masked_forward", "run_search",
           "save_searched", "search", "search_data", "structure_at", "structure_for_budget"]


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
    """The full model at ``img_size`` with the masks applied (`Gates`, through the model's own
    forward): head dims mask q and v, units mask the GELU output, positions scale the patch
    tokens. ``positions`` instead keeps only those patches (hard selection)."""
    s = model.subnet(Variant(1.0, 1.0, model.cfg.img_size))
    gates = Gates(masks.attn, masks.mlp, masks.tokens if positions is None else None,
                  None if positions is None else tuple(positions))
    return model.forward_head(model.features(x, s, gates=gates).tokens, s)


@dataclass(frozen=True)
class SearchData:
    """Model inputs at ``img_size`` (already preprocessed) and their labels (None: the task
    loss is the KL to the unpruned model)."""

    name: str
    inputs: Tensor  # (N, C, R, R)
    labels: Tensor | None

    def batches(self, size: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor | None]]:
        order = torch.randperm(len(self.inputs), generator=gen)
        for i in range(0, len(order), size):
            idx = order[i:i + size]
            yield self.inputs[idx], None if self.labels is None else self.labels[idx]


def search_data(dataset: str | Path, pre: Preprocess, resolution: int, limit: int = 0) -> SearchData:
    """``builtin`` (the digits training split) or a directory / ``.npz`` as calibration reads
    them (labels from ImageFolder class folders or the npz's ``y``); ``limit`` > 0 keeps the
    first ``limit`` samples.

    Raises:
        CalibrationError: a missing or empty source, wrong shape, channels or value range.
    """

    source = load_calibration(dataset, pre, samples=10 ** 9, seed=0)
    n = limit or len(source)
    x = torch.from_numpy(source.inputs(pre, resolution))[:n]
    y = None if source.labels is None else torch.as_tensor(source.labels, dtype=torch.long)[:n]
    return SearchData(str(dataset), x, y)


def _task_loss(logits: Tensor, y: Tensor | None, teacher: nn.Module, x: Tensor) -> Tensor:
    """Cross-entropy with labels, plus (or, without labels, only) the KL to the teacher."""
    with torch.no_grad():
        target = teacher(x).log_softmax(-1)
    loss = F.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")
    return loss if y is None else loss + F.cross_entropy(logits, y)


def learn_masks(model: SlimmableViT, data: SearchData, cfg: SearchConfig,
                log: Callable[[dict], None] | None = None) -> Masks:
    """Train soft masks and the weights of ``model`` (in place) with cross-entropy (KL to the
    model as it was, without labels) plus an L1 penalty on the masks; returns the masks."""
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    masks = Masks(model.cfg)
    gen = torch.Generator().manual_seed(cfg.seed)

    def loss(batch: tuple[Tensor, Tensor | None]) -> Tensor:
        x, y = batch
        logits = masked_forward(model, masks, x)
        task = F.cross_entropy(logits, y) if y is not None else _task_loss(logits, None, teacher, x)
        return task + cfg.l1 * masks.l1()

    def with_l1(record: dict) -> None:
        if log:
            log({**record, "mask_l1": float(masks.l1().detach())})

    model.train()
    fit([{"params": list(model.parameters()), "lr": cfg.lr},
         {"params": list(masks.parameters()), "lr": cfg.mask_lr, "weight_decay": 0.0}],
        cfg.search_epochs, lambda: data.batches(cfg.batch_size, gen), loss, with_l1, "search")
    model.eval()
    return masks


def finetune(net: nn.Module, teacher: SlimmableViT, data: SearchData, cfg: SearchConfig,
             log: Callable[[dict], None] | None = None) -> None:
    """Briefly re-train the pruned model: cross-entropy + KL to the unpruned model."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    teacher.eval()
    net.train()
    fit([{"params": list(net.parameters()), "lr": cfg.lr * 2, "weight_decay": 0.05}], cfg.finetune_epochs,
        lambda: data.batches(cfg.batch_size, gen), lambda b: _task_loss(net(b[0]), b[1], teacher, b[0]),
        log, "finetune")
    net.eval()


def search(model: SlimmableViT, data: SearchData, cfg: SearchConfig = SearchConfig(),
           log: Callable[[dict], None] | None = None) -> NonUniformViT:
    """Learn masks, pick the structure for ``cfg.budget_macs``, extract and fine-tune it.

    ``model`` is not changed (the masks are learned on a copy).

    Raises:
        ConfigError: the budget is below the smallest structure.
    """
    torch.manual_seed(cfg.seed)
    work = copy.deepcopy(model)
    masks = learn_masks(work, data, cfg, log)
    st = structure_for_budget(masks, model.cfg, cfg.budget_macs)
    searched = NonUniformViT(model.cfg, st, cfg.budget_macs)
    searched.net.load_state_dict(extract_structure(work, st).state_dict())
    finetune(searched.net, model, data, cfg, log)
    return searched.eval()


@dataclass(frozen=True)
class SearchResult:
    checkpoint: Path
    model: NonUniformViT
    macs_fraction: float
    top1: float | None  # held-out digits top-1 (builtin data only)


def run_search(checkpoint: str | Path, budget_macs: float, out: str | Path,
               dataset: str | Path = "builtin", cfg: SearchConfig | None = None, limit: int = 0,
               log: Callable[[dict], None] | None = None) -> SearchResult:
    """`slimvit search`: load any checkpoint, search a structure for the budget on the data,
    write ``out/<name>_slim.safetensors``.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ConfigError: a bad budget, a searched checkpoint, or a budget below the smallest structure.
        CalibrationError: unreadable data.
    """

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be a sample count >= 0 (0: all), but got {limit!r}")
    cfg = dataclasses.replace(cfg or SearchConfig(), budget_macs=budget_macs)
    loaded = load_model(checkpoint)
    if not isinstance(loaded.model, SlimmableViT):
        raise ConfigError(f"{checkpoint} is already a searched structure; search its source model")
    model = loaded.model
    data = search_data(dataset, loaded.preprocess, model.cfg.img_size, limit)
    searched = search(model, data, cfg, log)
    path = save_searched(searched, Path(out) / f"{loaded.name}_slim.safetensors", loaded.labels,
                         loaded.preprocess)
    top1 = None
    if str(dataset) == "builtin" and model.cfg.num_classes == 10:
        test = digits("test")
        with torch.no_grad():
            pred = searched(loaded.preprocess(test.images, model.cfg.img_size)).argmax(1)
        top1 = float((pred.numpy() == test.labels).mean())
    return SearchResult(path, searched, searched.macs_fraction, top1)
