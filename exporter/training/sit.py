"""SiT (Self-slimmed Vision Transformer): train a model whose token reduction is the Token
Slimming Module (`token_reducer="tsm"`) by dense distillation from a teacher.

Loss per trained subnet: cross-entropy + KL to the teacher's logits + token reconstruction, the
MSE between the student's final tokens and the teacher's final tokens aggregated by the
student's own (detached) slimming weights. SiT restores the full token count with a Feature
Recovery Module instead; aggregating the teacher's tokens is the same supervision with no
extra trained module, and it needs the student and teacher to share the embed dim (otherwise
the token term is left out).

Data flow: teacher checkpoint -> `student_from_teacher` (same weights, new TSMs) ->
`train_sit` -> a slimvit checkpoint whose keep-rate variants export with no top-k or gather.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from calibration.data import ImageSet, Preprocess, digits
from exporter.checkpoints import load_model, save_checkpoint
from exporter.errors import ConfigError
from exporter.nn.config import Subnet, Variant, VariantGrid, block_keeps
from exporter.nn.model import SlimmableViT, sliced_norm


@dataclass(frozen=True)
class SitConfig:
    """Settings of a SiT run (defaults sized for the built-in digits demo)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    ce_weight: float = 1.0
    kl_weight: float = 1.0
    token_weight: float = 1.0
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f'"{name}" must be an integer >= 1, but got {getattr(self, name)!r}')
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError(f'"lr" and "temperature" must be positive, got {self.lr}, {self.temperature}')
        for name in ("ce_weight", "kl_weight", "token_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f'"{name}" must be >= 0, but got {getattr(self, name)}')


@dataclass(frozen=True)
class StudentOutput:
    logits: Tensor  # (B, classes)
    tokens: Tensor  # (B, p+k, d) after the final norm
    assign: Tensor | None  # (B, k, G): how the final patch tokens mix the input patches


def student_from_teacher(teacher: SlimmableViT) -> SlimmableViT:
    """A TSM model with the teacher's weights (SiT starts from the pretrained model); the Token
    Slimming Modules are freshly initialised. The teacher is not changed."""
    if teacher.cfg.fuse_tokens:
        teacher_cfg = dataclasses.replace(teacher.cfg, fuse_tokens=False)
    else:
        teacher_cfg = teacher.cfg
    torch.manual_seed(0)
    student = SlimmableViT(dataclasses.replace(teacher_cfg, token_reducer="tsm"))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(".tsm." not in k for k in missing):
        raise ConfigError(f"teacher does not fit the student: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return student


def forward_dense(model: SlimmableViT, x: Tensor, s: Subnet) -> StudentOutput:
    """`model(x, s)` that also returns the final tokens and the composed TSM weights."""
    cfg = model.cfg
    x = model.embed(x, s)
    assign = None
    for block, n_keep in zip(model.blocks, block_keeps(cfg, s), strict=True):
        h, attn = block.attn(sliced_norm(block.norm1, x, s, cfg.ln_eps), s)
        x = x + h
        if n_keep is not None:
            x, weights = block.reduce(x, attn, s, n_keep)
            if weights is not None:  # top-k pruning has no weights; its tokens stay unmatched
                w = weights.transpose(1, 2)  # (B, k, N-p)
                assign = w if assign is None else w @ assign  # (B, k, G)
        x = x + block.mlp(sliced_norm(block.norm2, x, s, cfg.ln_eps), s)
    tokens = sliced_norm(model.norm, x, s, cfg.ln_eps)
    return StudentOutput(model.forward_head(tokens, s), tokens, assign)


def sit_loss(out: StudentOutput, teacher_logits: Tensor, teacher_tokens: Tensor, y: Tensor,
             cfg: SitConfig, n_prefix: int) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy + KL on logits + token reconstruction MSE; returns the loss and its parts."""
    ce = F.cross_entropy(out.logits, y, label_smoothing=cfg.label_smoothing)
    t = cfg.temperature
    kl = F.kl_div((out.logits / t).log_softmax(-1), (teacher_logits / t).log_softmax(-1),
                  log_target=True, reduction="batchmean") * t * t
    loss = cfg.ce_weight * ce + cfg.kl_weight * kl
    parts = {"ce": float(ce.detach()), "kl": float(kl.detach()), "token": 0.0}
    target = teacher_tokens
    if out.assign is not None:
        patches = out.assign.detach() @ teacher_tokens[:, n_prefix:]  # (B, k, D)
        target = torch.cat([teacher_tokens[:, :n_prefix], patches], dim=1)
    if out.tokens.shape == target.shape:  # not for other widths, nor for top-k pruned tokens
        mse = F.mse_loss(out.tokens, target)
        loss = loss + cfg.token_weight * mse
        parts["token"] = float(mse.detach())
    return loss, parts


def train_sit(student: SlimmableViT, teacher: SlimmableViT, data: ImageSet, grid: VariantGrid,
              pre: Preprocess, cfg: SitConfig = SitConfig(),
              log: Callable[[dict], None] | None = None) -> SlimmableViT:
    """Train ``student`` (token_reducer tsm) in place by dense distillation from ``teacher``.

    Every step trains the largest subnet and one random subnet with keep rate < 1 (so every
    Token Slimming Module learns), each against the teacher run at its full width on the same
    input. A top-k student trains the same way (the benchmark's baseline), without the token
    term where tokens were pruned. Returns the student in eval mode.

    Raises:
        ConfigError: the grid has no keep rate < 1, or the class counts differ.
    """
    if student.cfg.num_classes != teacher.cfg.num_classes:
        raise ConfigError(f"teacher predicts {teacher.cfg.num_classes} classes but the student "
                          f"{student.cfg.num_classes}; distil from a teacher of the same classes")
    subnets = grid.subnets(student.cfg)
    slimmed = [s for s in subnets if s.keep_rate < 1.0]
    if not slimmed:
        raise ConfigError("the sit recipe trains token slimming; give --keep-rates with a rate < 1")
    teacher = teacher.eval().requires_grad_(False)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    teacher_cache: dict[int, tuple[Tensor, Tensor]] = {}
    for epoch in range(cfg.epochs):
        student.train()
        t0, sums = time.time(), {"loss": 0.0, "ce": 0.0, "kl": 0.0, "token": 0.0}
        order = torch.randperm(len(data), generator=gen)
        n_steps = 0
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            y = labels[idx]
            teacher_cache.clear()
            opt.zero_grad(set_to_none=True)
            for s in (subnets[0], rng.choice(slimmed)):
                x = pre(images[idx], s.resolution)
                if s.resolution not in teacher_cache:
                    with torch.no_grad():
                        full = teacher.subnet(Variant(1.0, 1.0, s.resolution))
                        tok = teacher.forward_features(x, full)
                        teacher_cache[s.resolution] = (teacher.forward_head(tok, full), tok)
                t_logits, t_tokens = teacher_cache[s.resolution]
                loss, parts = sit_loss(forward_dense(student, x, s), t_logits, t_tokens, y, cfg,
                                       student.cfg.num_prefix_tokens)
                loss.backward()
                sums["loss"] += float(loss.detach())
                for k, v in parts.items():
                    sums[k] += v
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            n_steps += 1
        if log:
            log({"epoch": epoch + 1, **{k: v / n_steps for k, v in sums.items()},
                 "seconds": time.time() - t0})
    return student.eval()


@dataclass(frozen=True)
class SitResult:
    checkpoint: Path
    accuracies: dict[str, float]  # held-out digits top-1 per variant id


def run_sit(teacher: str | Path, out: str | Path, keep_rates: tuple[float, ...] = (1.0, 0.7, 0.5),
            widths: tuple[float, ...] = (1.0,), cfg: SitConfig = SitConfig(),
            log: Callable[[dict], None] | None = None) -> SitResult:
    """Load a teacher checkpoint, train its TSM student on the built-in digits set, save it.

    Returns:
        The student checkpoint ``out/sit_vit.safetensors`` (a slimvit checkpoint that
        `slimvit export` reads; its keep-rate variants use the Token Slimming Modules) and the
        held-out top-1 of every variant of the grid.

    Raises:
        CheckpointError: the teacher cannot be read.
        ConfigError: the teacher is not a 10-class model or the grid has no keep rate < 1.
    """
    loaded = load_model(teacher)
    if getattr(loaded.model, "structure", None) is not None or not isinstance(loaded.model, SlimmableViT):
        raise ConfigError(f"{teacher} is a searched (non-uniform) model; give a slimmable teacher")
    data = digits("train")
    if loaded.model.cfg.num_classes != len(data.class_names):
        raise ConfigError(f"the built-in digits set has 10 classes but the teacher "
                          f"{loaded.model.cfg.num_classes}; use a teacher trained on digits")
    torch.manual_seed(cfg.seed)
    student = student_from_teacher(loaded.model)
    grid = VariantGrid(widths, keep_rates, student.cfg.resolutions)
    train_sit(student, loaded.model, data, grid, loaded.preprocess, cfg, log)
    path = save_checkpoint(student, Path(out) / "sit_vit.safetensors", loaded.labels, loaded.preprocess)
    return SitResult(path, {s.id: top1(student, digits("test"), loaded.preprocess, s)
                            for s in grid.subnets(student.cfg)})


@torch.no_grad()
def top1(model: SlimmableViT, data: ImageSet, pre: Preprocess, s: Subnet) -> float:
    """Held-out top-1 of subnet ``s``."""
    pred = model.eval()(pre(data.images, s.resolution), s).argmax(1)
    return float((pred.numpy() == data.labels).mean())
