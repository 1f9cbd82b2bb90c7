"""The built-in default pipeline: train a small slimmable ViT on scikit-learn's digits, export
every variant to a validated bundle and measure each artifact's held-out accuracy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.data import DIGITS_LABELS, digits
from exporter import training
from exporter.bundle.export import Progress, export_bundle
from exporter.checkpoints import LoadedModel, save_checkpoint
from exporter.convert.formats import FORMATS
from exporter.convert.quantize import quantize_options
from exporter.convert.quantize.registry import precision_names
from exporter.nn.config import VariantGrid, ViTConfig
from exporter.training import TrainConfig

# 8x8 digit scans upsampled to 32 px; a 24 px variant runs on 9 instead of 16 patches.
DEMO_MODEL = ViTConfig(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=64, depth=4,
                       num_heads=4, extra_resolutions=(24,), slicing="heads")
DEMO_GRID = VariantGrid(widths=(0.25, 0.5, 1.0), keep_rates=(1.0, 0.5), resolutions=(32, 24))
# The best recipe measured on this set: scala, lr 2e-3, 50 epochs puts every variant at >= 86.6%
# held-out in 58 s on 2 cores (40 epochs: 82.5-86%; sandwich, 40 epochs: 79%; see
# benchmarks/results/training.md for scala against separately trained widths). Grid: DEMO_GRID.
DEMO_TRAIN = TrainConfig(dataset="digits", recipe="scala", epochs=50, lr=2e-3,
                         widths=DEMO_GRID.widths, keep_rates=DEMO_GRID.keep_rates,
                         resolutions=DEMO_GRID.resolutions,
                         model={k: v for k, v in DEMO_MODEL.to_dict().items() if k != "num_classes"})
# Every registered format whose converter is installed (ExecuTorch is the extra slimvit[executorch]).
DEMO_FORMATS = tuple(name for name, fmt in FORMATS.items() if fmt.available())
# Every registered precision of DEMO_FORMATS (exporter.convert.quantize), calibrated on the training split,
# except where a format keeps the demo shorter (`ExportFormat.demo_precisions`: ExecuTorch lowers
# each precision again, 13-38 CPU s per program).
DEMO_PRECISIONS = tuple(precision_names())
DEMO_PER_FORMAT = {name: fmt.demo_precisions for name, fmt in FORMATS.items() if fmt.demo_precisions is not None}


@dataclass(frozen=True)
class DemoResult:
    checkpoint: Path
    bundle: Path
    manifest: dict[str, Any]


def run_demo(out: str | Path, train: TrainConfig = DEMO_TRAIN, formats: tuple[str, ...] = DEMO_FORMATS,
             progress: Progress | None = None, log: Callable[[dict], None] | None = None,
             precisions: tuple[str, ...] = DEMO_PRECISIONS) -> DemoResult:
    """Train, save, export and evaluate; writes ``out/digits_vit.safetensors`` and ``out/bundle``.

    ``precisions`` beyond fp32 are calibrated on 128 training images (``builtin``) and measured on
    the held-out split; one over the default 1 p.p. budget is retried, then left out."""
    out = Path(out)
    trained = training.train(train, progress=(lambda e: e["event"] == "epoch" and log(e)) if log else None)
    model, pre = trained.model, trained.preprocess
    ckpt = save_checkpoint(model, out / "digits_vit.safetensors", DIGITS_LABELS, pre)
    loaded = LoadedModel(model, "digits_vit", "slimvit", DIGITS_LABELS, pre)
    quant = quantize_options(tuple(precisions), "builtin" if len(precisions) > 1 else None, pre)
    if quant is not None:
        quant = dataclasses.replace(quant, per_format={f: p for f, p in DEMO_PER_FORMAT.items() if f in formats})
    manifest = export_bundle(loaded, DEMO_GRID, out / "bundle", formats=formats,
                             eval_set=digits("test"), progress=progress, quantize=quant)
    return DemoResult(ckpt, out / "bundle", manifest)
