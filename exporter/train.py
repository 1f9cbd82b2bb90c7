"""One-shot slimmable training. The `sandwich` recipe: per step the largest subnet learns from
the labels, the smallest and one random subnet learn from the largest (in-place distillation),
and the gradients of all three go into one optimizer step."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from calibration.data import ImageSet, Preprocess
from exporter.config import Subnet, VariantGrid
from exporter.errors import ConfigError
from exporter.model import SlimmableViT


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    seed: int = 0
    augment_shift: int = 2  # random translation in pixels at the training resolution

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f'"{name}" must be >= 1, but got {getattr(self, name)}')
        if self.lr <= 0:
            raise ConfigError(f'"lr" must be positive, but got {self.lr}')


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation of the whole batch, filling with each image's background (its
    minimum), so the digits move without gray bars appearing."""
    if max_shift <= 0:
        return x
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    fill = x.amin(dim=(2, 3), keepdim=True).expand_as(x)
    out = fill.clone()
    H, W = x.shape[-2:]
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[..., max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return out


@torch.no_grad()
def accuracy(model: SlimmableViT, data: ImageSet, pre: Preprocess, s: Subnet, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        x = pre(data.images[i:i + batch], s.resolution)
        correct += int((model(x, s).argmax(1) == torch.from_numpy(data.labels[i:i + batch])).sum())
    return correct / len(data)


def train_sandwich(model: SlimmableViT, data: ImageSet, grid: VariantGrid, pre: Preprocess,
                   cfg: TrainConfig = TrainConfig(),
                   log: Callable[[dict], None] | None = None) -> SlimmableViT:
    """Train ``model`` in place with the sandwich rule over the subnets of ``grid``.

    The largest subnet (full width, keep 1.0, largest resolution) uses cross-entropy; one
    smallest-width subnet and one random subnet per step distil from its detached logits (KL).
    Returns the model (in eval mode).
    """
    subnets = grid.subnets(model.cfg)
    largest = subnets[0]
    # The smallest width at every keep rate and resolution: one of them each step, so the
    # smallest subnets are trained at all their resolutions, not only the lowest.
    narrowest = [s for s in subnets if s.embed_dim == min(t.embed_dim for t in subnets)]
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    resolutions = sorted({s.resolution for s in subnets})
    # Augment at the native size, then resize per subnet: one pass of preprocessing per step.
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        t0, loss_sum = time.time(), 0.0
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            raw = images[idx]
            y = labels[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            by_res = {r: _shift(pre(raw, r), cfg.augment_shift * r // max(resolutions), gen)
                      for r in resolutions}
            opt.zero_grad(set_to_none=True)
            logits = model(by_res[largest.resolution], largest)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            loss.backward()
            teacher = logits.detach().log_softmax(-1)
            for s in (rng.choice(narrowest), rng.choice(subnets)):
                student = model(by_res[s.resolution], s).log_softmax(-1)
                kd = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
                kd.backward()
                loss = loss + kd.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_sum += float(loss.detach())
            step += 1
        if log:
            log({"epoch": epoch + 1, "loss": loss_sum / steps_per_epoch, "seconds": time.time() - t0,
                 "lr": lr_at(step - 1)})
    return model.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subnet_accuracies(model: SlimmableViT, data: ImageSet, pre: Preprocess,
                      subnets: Sequence[Subnet]) -> dict[str, float]:
    return {s.id: accuracy(model, data, pre, s) for s in subnets}
