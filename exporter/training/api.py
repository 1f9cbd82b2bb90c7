"""Entry points above the loop: `train_separate` (the baseline: every width its own model) and
`run_training`, the one call behind `slimvit train`."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError
from exporter.nn.config import Variant, resolve
from exporter.training.config import TrainConfig, resolve_config
from exporter.training.loop import Progress, TrainResult, train


@dataclass
class SeparateResult:
    """``--separate``: one model per width, each trained with the run's recipe and epochs."""

    per_width: dict[int, TrainResult]  # by embed dim, widest first
    seconds: float

    @property
    def accuracies(self) -> dict[str, float]:
        return {k: v for r in self.per_width.values() for k, v in r.accuracies.items()}


def separate_config(cfg: TrainConfig, width: float) -> TrainConfig:
    """The config of the standalone model shaped like ``width``'s subnet (HydraViT: fewer heads
    of the same size; Scala: the same heads, each narrower)."""
    full = cfg.model_config(int(dict(cfg.model).get("num_classes", 1)))
    s = resolve(full, Variant(width))
    model = {**dict(cfg.model), "embed_dim": s.embed_dim, "num_heads": s.num_heads}
    return replace(cfg, widths=(1.0,), width_weights=(), model=model)


def train_separate(cfg: TrainConfig, out: str | Path | None = None,
                   progress: Progress | None = None) -> SeparateResult:
    """Train each width of ``cfg.widths`` as its own model with the same per-model budget (same
    recipe, epochs and batches, its own keep rates and resolutions). Variant ids equal the
    slimmable run's (same embed dims), so the two tables line up row by row."""
    t0 = time.time()
    results: dict[int, TrainResult] = {}
    for w in sorted(cfg.widths, reverse=True):
        wc = separate_config(cfg, w)
        dim = int(wc.model["embed_dim"])
        sub_out = Path(out) / "separate" / f"w{dim}" if out is not None else None
        results[dim] = train(wc, sub_out, progress=progress)
    return SeparateResult(results, time.time() - t0)


def run_training(config: str | Path | None = None, out: str | Path | None = None,
                 resume: str | Path | None = None, separate: bool = False,
                 progress: Progress | None = None, **overrides: Any) -> TrainResult | SeparateResult:
    """What `slimvit train` does: resolve the config (file, then non-None ``overrides``), then
    train the slimmable network, or with ``separate`` one model per width.

    Raises:
        ConfigError: bad config file, key or value (unknown keys get a did-you-mean).
        DatasetError, CheckpointError: bad data, teacher or resume state.
    """
    cfg = resolve_config(config, **overrides)
    if separate:
        if resume is not None:
            raise ConfigError("--resume continues one slimmable run; it cannot be combined with --separate")
        return train_separate(cfg, out, progress)
    return train(cfg, out, resume, progress)
