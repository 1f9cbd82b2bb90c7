"""The training loop shared by every recipe: data -> recipe plan per step -> accumulated
gradients -> one optimizer step; EMA, AMP on GPU, an atomic training state every epoch, exact
resume, JSON-lines logs and the held-out accuracy of every variant at the end."""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import exporter.training.ddp as ddp
from calibration.data import ImageSet, Preprocess
from exporter.checkpoints import load_model, save_checkpoint, weights_digest
from exporter.errors import ConfigError, SlimvitError
from exporter.fileio import atomic_write_json, atomic_write_text
from exporter.gate.files import dumps_strict
from exporter.nn.config import Subnet, ViTConfig
from exporter.nn.model import Features, SlimmableViT
from exporter.training.config import TrainConfig, config_yaml
from exporter.training.data import DataSplit, augmented_inputs, load_dataset, random_shifts, translate
from exporter.training.recipes import LossTerm, Member, StepContext, get_recipe
from exporter.training.sit import student_from_teacher
from exporter.training.state import STATE_FILE, TrainState, load_state, save_state

CHECKPOINT_FILE, LOG_FILE, CONFIG_FILE, RESULTS_FILE = "model.safetensors", "log.jsonl", "config.yaml", "results.json"
Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a run produced. ``accuracies`` maps variant ids to held-out top-1 (rank 0 only)."""

    model: SlimmableViT
    labels: list[str]
    preprocess: Preprocess
    accuracies: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)
    rank_digests: list[str] = field(default_factory=list)


@torch.no_grad()
def accuracy(model: SlimmableViT, data: ImageSet, pre: Preprocess, s: Subnet, batch: int = 256) -> float:
    """Held-out top-1 of one subnet."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(data), batch):
        x = pre(data.images[i:i + batch], s.resolution).to(device)
        y = torch.from_numpy(data.labels[i:i + batch]).to(device)
        correct += int((model(x, s).argmax(1) == y).sum())
    return correct / len(data)


def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.kl_div(student.float().log_softmax(-1), teacher.float().log_softmax(-1), log_target=True,
                    reduction="batchmean")


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero over the remaining steps."""
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def epoch_rngs(seed: int, epoch: int) -> tuple[torch.Generator, random.Random]:
    """Generators for one epoch's order, augmentation and subnet draws: a function of (seed,
    epoch) only, so a resumed run draws exactly what the uninterrupted run drew."""
    s = seed * 1_000_003 + epoch
    return torch.Generator().manual_seed(s), random.Random(s)


@dataclass(frozen=True)
class TeacherOutput:
    """The external teacher on one batch: its logits, and its final tokens where a recipe's
    extra loss terms need them."""

    logits: torch.Tensor
    features: Features | None = None


def run_members(model: SlimmableViT, plan: list[Member], inputs: dict[int, torch.Tensor], y: torch.Tensor,
                cfg: TrainConfig, teacher: TeacherOutput | None, amp: bool,
                extra_losses: tuple[LossTerm, ...] = ()) -> tuple[float, int]:
    """Forward and backward every member (gradients accumulate); returns the summed loss and the
    first member's correct count. ``extra_losses`` (a recipe's) are added to every member's
    loss, weighted by ``cfg.token_weight``."""
    outs: list[torch.Tensor] = []
    total = 0.0
    teacher_logits = None if teacher is None else teacher.logits
    for m in plan:
        with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=amp):
            feats = model.features(inputs[m.subnet.resolution], m.subnet, track=bool(extra_losses))
            logits = model.forward_head(feats.tokens, m.subnet)
        loss = logits.new_zeros((), dtype=torch.float32)
        for term in extra_losses:
            extra = term(feats, None if teacher is None else teacher.features, model.cfg.num_prefix_tokens)
            if extra is not None:
                loss = loss + cfg.token_weight * extra
        if m.labels:
            ce = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if teacher_logits is not None:
                ce = (1 - cfg.teacher_weight) * ce + cfg.teacher_weight * kl(logits, teacher_logits)
            loss = loss + ce
        if m.distil_from is not None:
            loss = loss + kl(logits, outs[m.distil_from])
        loss.backward()
        outs.append(logits.detach().float())
        total += float(loss.detach())
    return total, int((outs[0].argmax(1) == y).sum())


def load_teacher(path: str | None, num_classes: int | None = None) -> tuple[SlimmableViT, Preprocess] | None:
    """The external teacher: any checkpoint format slimvit loads, run at its full width."""
    if not path:
        return None
    loaded = load_model(path)
    if num_classes is not None and loaded.model.cfg.num_classes != num_classes:
        raise ConfigError(f"teacher {path} predicts {loaded.model.cfg.num_classes} classes but the dataset "
                          f"has {num_classes}; distil from a teacher trained on the same classes")
    return loaded.model.eval().requires_grad_(False), loaded.preprocess


def fit(params: list[dict[str, Any]], epochs: int, batches: Callable[[], Iterable[Any]],
        loss_fn: Callable[[Any], torch.Tensor], log: Callable[[dict[str, Any]], None] | None = None,
        stage: str = "fit") -> None:
    """The plain single-process form of the loop, for training that is not a recipe over a
    slimmable grid (ViT-Slim's mask search and its fine-tuning): AdamW over the parameter
    groups, one optimizer step per batch of ``batches()`` (a fresh iterator each epoch), a
    line to ``log`` per epoch.

    Raises:
        DivergedError: the loss became NaN or infinite.
    """
    opt = torch.optim.AdamW(params)
    for epoch in range(epochs):
        t0, total, n = time.time(), 0.0, 0
        for batch in batches():
            loss = loss_fn(batch)
            if not math.isfinite(float(loss.detach())):
                raise DivergedError(f"{stage} diverged: the loss is {float(loss.detach())} at epoch {epoch + 1}; "
                                    "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        if log:
            log({"stage": stage, "epoch": epoch + 1, "loss": total / max(n, 1), "seconds": time.time() - t0})


class DivergedError(SlimvitError):
    """The loss became NaN or infinite: nothing after the last good epoch is kept."""


def check_out(out: Path | None, resume: str | Path | None) -> None:
    if resume is not None and out is None:
        raise ConfigError("--resume needs --out: the folder the resumed run writes to")
    if out is not None and resume is None and (out / STATE_FILE).exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume {out} to continue it, "
                          f"or choose another --out")


class Run:
    """One training run's fixed parts; `train` drives it epoch by epoch."""

    def __init__(self, cfg: TrainConfig, out: Path | None, resume: str | Path | None) -> None:
        self.cfg, self.out = cfg, out
        self.recipe = get_recipe(cfg.recipe)
        if self.recipe.needs_teacher and not cfg.teacher:
            raise ConfigError(f'recipe "{cfg.recipe}" distils from a teacher: give --teacher CHECKPOINT')
        check_out(out, resume)
        self.dist = ddp.setup()
        self.teacher = load_teacher(cfg.teacher)
        # The student: the teacher's weights in a model of its config (SiT), or a fresh model.
        self.student = None
        if self.recipe.from_teacher and self.teacher is not None:
            self.student = student_from_teacher(self.teacher[0], dict(cfg.model).get("token_reducer", "tsm"))
        probe = self.student.cfg if self.student is not None else cfg.model_config(
            int(dict(cfg.model).get("num_classes", 1)))
        self.data: DataSplit = load_dataset(cfg.dataset, max(probe.resolutions), cfg.holdout, cfg.seed,
                                            cfg.train_limit)
        classes = len(self.data.class_names)
        self.model_cfg: ViTConfig = probe if self.student is not None else cfg.model_config(classes)
        if self.teacher is not None and self.teacher[0].cfg.num_classes != classes:
            raise ConfigError(f"teacher {cfg.teacher} predicts {self.teacher[0].cfg.num_classes} classes but "
                              f"the dataset has {classes}; distil from a teacher trained on the same classes")
        self.subnets = tuple(cfg.grid(self.model_cfg).subnets(self.model_cfg))
        self.resolutions = sorted({s.resolution for s in self.subnets})
        self.recipe(self.context(10**9, random.Random(0)))  # a bad recipe/grid pairing fails now
        self.state: TrainState | None = load_state(resume, self.model_cfg) if resume is not None else None
        self.pre = Preprocess()
        self.amp = cfg.amp and self.dist.device.type == "cuda"

    def context(self, epoch: int, rng: random.Random) -> StepContext:
        c = self.cfg
        return StepContext(self.subnets, self.model_cfg, c.widths, c.width_weights, c.random_subnets,
                           c.full_only_epochs, epoch, rng)

    def teacher_output(self, raw: torch.Tensor, shifts: torch.Tensor) -> TeacherOutput | None:
        """The teacher at its full width and ``img_size`` on the batch (same shifts), with its
        final tokens when the recipe has extra loss terms."""
        if self.teacher is None:
            return None
        model, pre = self.teacher
        model = model.to(self.dist.device)
        res = model.cfg.img_size
        x = pre(raw, res)
        if self.cfg.augment_shift:
            s = torch.round(shifts.float() * res / max(self.resolutions)).long()
            x = translate(x, s[:, 0], s[:, 1])
        x = x.to(self.dist.device)
        with torch.no_grad(), torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.recipe.extra_losses and isinstance(model, SlimmableViT):
                full = model.subnet()
                feats = model.features(x, full)
                return TeacherOutput(model.forward_head(feats.tokens, full).float(), feats)
            return TeacherOutput(model(x).float())


def train(cfg: TrainConfig, out: str | Path | None = None, resume: str | Path | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train one slimmable network whose every variant of ``cfg.grid()`` works.

    Runs as one process or under ``torchrun`` (each process takes part of every global batch).
    With ``out``, writes ``config.yaml`` at the start, ``state.pt`` after every epoch (atomically),
    a line per epoch to ``log.jsonl``, and at the end ``model.safetensors`` (slimvit's format;
    EMA weights when ``ema_decay`` > 0) and ``results.json``.

    Args:
        cfg: the resolved config (`resolve_config`).
        out: output folder; None trains in memory only.
        resume: a ``state.pt`` or a run folder to continue exactly where it stopped.
        progress: called with ``{"event": "step" | "epoch", ...}`` dicts (rank 0 only).

    Raises:
        ConfigError, DatasetError, CheckpointError: bad config, data, teacher or resume state;
            raised before anything is written.
    """
    out = Path(out) if out is not None else None
    run = Run(cfg, out, resume)
    d, data = run.dist, run.data
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    model = (copy.deepcopy(run.student) if run.student is not None else SlimmableViT(run.model_cfg)).to(d.device)
    ddp.broadcast_parameters(model, d)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema_decay else {}
    start, step, history = 0, 0, []
    if run.state is not None:
        model.load_state_dict(run.state.model)
        opt.load_state_dict(run.state.optimizer)
        ema = {k: v.to(d.device) for k, v in run.state.ema.items()}
        start, step = run.state.epoch, run.state.step
        history = read_history(out, start) if out else []
    if out is not None and d.is_main:
        atomic_write_text(out / CONFIG_FILE, config_yaml(cfg, {"resolved_model": run.model_cfg.to_dict()}))
        atomic_write_text(out / LOG_FILE, "".join(dumps_strict(r) + "\n" for r in history))
    images, labels = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)
    n, B = len(data.train), min(cfg.batch_size, len(data.train))
    steps = math.ceil(n / B)
    eval_model = copy.deepcopy(model) if ema else model
    for epoch in range(start, cfg.epochs):
        t0, gen_rng = time.time(), epoch_rngs(cfg.seed, epoch)
        gen, rng = gen_rng
        order = torch.randperm(n, generator=gen)
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        for b in range(steps):
            idx = order[b * B:(b + 1) * B]
            shifts = random_shifts(len(idx), cfg.augment_shift, gen)
            plan = run.recipe(run.context(epoch, rng))
            part = ddp.shard(torch.arange(len(idx)), d)
            raw, y = images[idx[part]], labels[idx[part]].to(d.device)
            loss, correct = 0.0, 0
            if len(part):
                inputs = {r: x.to(d.device) for r, x in augmented_inputs(
                    raw, shifts[part], run.resolutions, cfg.augment_shift, run.pre).items()}
                loss, correct = run_members(model, plan, inputs, y, cfg, run.teacher_output(raw, shifts[part]),
                                            run.amp, run.recipe.extra_losses)
            share = len(part) / len(idx)
            stats = ddp.reduce_gradients(params, share, torch.tensor([loss * share, correct, len(part)],
                                                                     dtype=torch.float64), d)
            sums += stats
            if not math.isfinite(float(stats[0])):  # every rank sees the same reduced loss
                kept = (f"; {out / STATE_FILE} still holds epoch {epoch}, the last good one"
                        if out is not None and epoch > start else "")
                raise DivergedError(f"training diverged: the loss is {float(stats[0])} at epoch {epoch + 1}, "
                                    f"step {b + 1} (lr {lr_at(cfg, step, steps):.3g}){kept}; lower --lr")
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, steps)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if ema:
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        ema[k].lerp_(v, 1 - decay)
            step += 1
            if progress and d.is_main:
                progress({"event": "step", "epoch": epoch + 1, "epochs": cfg.epochs, "step": b + 1,
                          "steps": steps, "loss": float(stats[0])})
        record = {"epoch": epoch + 1, "step": step, "loss": float(sums[0]) / steps,
                  "train_acc": float(sums[1] / sums[2]), "lr": lr_at(cfg, step - 1, steps),
                  "seconds": round(time.time() - t0, 3)}
        if d.is_main:
            if ema:
                eval_model.load_state_dict(ema)
            for s in (run.subnets[0], run.subnets[-1]):
                record[f"heldout_{s.id}"] = accuracy(eval_model, data.heldout, run.pre, s)
            history.append(record)
            if out is not None:
                save_state(out / STATE_FILE, TrainState(model.state_dict(), opt.state_dict(), ema, epoch + 1,
                                                        step, run.model_cfg.to_dict(), cfg.to_dict()))
                with open(out / LOG_FILE, "a") as f:
                    f.write(dumps_strict(record) + "\n")
            if progress:
                progress({"event": "epoch", **record})
    return finish(run, model, ema, history, time.time() - t_start)


def finish(run: Run, model: SlimmableViT, ema: dict[str, torch.Tensor], history: list[dict[str, Any]],
           seconds: float) -> TrainResult:
    """Final weights, the every-rank weight check, per-variant held-out accuracy, files."""
    d, out = run.dist, run.out
    digests = ddp.all_gather_strings(weights_digest(model), d)
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel processes ended with different weights: {digests}")
    if ema:
        model.load_state_dict(ema)
    model = model.eval().cpu()
    accs: dict[str, float] = {}
    ckpt = None
    if d.is_main:
        accs = {s.id: accuracy(model, run.data.heldout, run.pre, s) for s in run.subnets}
        if out is not None:
            ckpt = save_checkpoint(model, out / CHECKPOINT_FILE, run.data.class_names, run.pre,
                                   extra={"recipe": run.cfg.recipe, "weights": "ema" if ema else "raw"})
            atomic_write_json(out / RESULTS_FILE, {
                "recipe": run.cfg.recipe, "dataset": run.cfg.dataset, "epochs": run.cfg.epochs,
                "world_size": d.world, "seconds": round(seconds, 2), "heldout_accuracy": accs,
                "heldout_samples": len(run.data.heldout), "notes": run.data.notes,
                "rank_weights_sha256": digests})
    ddp.barrier(d)
    ddp.teardown(d)
    return TrainResult(model, run.data.class_names, run.pre, accs, history, seconds, ckpt,
                       run.data.notes, digests)


def read_history(out: Path, epochs_done: int) -> list[dict[str, Any]]:
    """The log lines of the epochs a resumed state covers (later lines were never checkpointed)."""
    path = out / LOG_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= epochs_done]
