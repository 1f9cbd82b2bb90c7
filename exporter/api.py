"""The Python API: everything the CLI does, callable from code."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from calibration.data import digits
from exporter.bundle import Progress, export_bundle
from exporter.checkpoint import LoadedModel, load_model
from exporter.config import VariantGrid, ViTConfig
from exporter.cost import mac_count, param_count
from exporter.errors import ConfigError, check_choice
from exporter.extract import static_spec
from exporter.ingest import ingest_reports  # noqa: F401  (slimvit ingest)
from exporter.profile import profile_bundle  # noqa: F401  (slimvit profile)
from exporter.report import write_report  # noqa: F401  (slimvit report)
from exporter.signing import generate_keypair, sign_bundle  # noqa: F401  (slimvit keygen, sign)
from exporter.verify import check_bundle, verify_bundle  # noqa: F401  (slimvit verify)
from exporter.model import SlimmableViT

EVAL_SETS = ("builtin",)


def load(checkpoint: str | Path, checkpoint_format: str = "auto", *, num_heads: int | None = None,
         slicing: str | None = None, warn: Callable[[str], None] | None = None,
         **options: Any) -> LoadedModel:
    """Load a checkpoint of any supported format; ``slicing`` overrides the stored scheme."""
    if num_heads is not None:
        options["num_heads"] = num_heads
    loaded = load_model(checkpoint, checkpoint_format, warn=warn, **options)
    if slicing is not None and slicing != loaded.model.cfg.slicing:
        loaded = with_config(loaded, slicing=slicing)
    return loaded


def with_config(loaded: LoadedModel, **changes: Any) -> LoadedModel:
    """A copy of ``loaded`` whose config has ``changes`` (e.g. slicing); weights are shared."""
    cfg: ViTConfig = dataclasses.replace(loaded.model.cfg, **changes)
    model = SlimmableViT(cfg)
    model.load_state_dict(loaded.model.state_dict())
    return dataclasses.replace(loaded, model=model.eval())


def describe_variants(model: SlimmableViT, grid: VariantGrid) -> list[dict[str, Any]]:
    """One row per variant: id, dims, tokens, params and MACs."""
    rows = []
    searched = getattr(model, "structure", None) is not None  # ViT-Slim: its one structure
    for s in model.subnets(grid) if searched else grid.subnets(model.cfg):
        spec = static_spec(model, s)
        rows.append({"id": s.id, "width": round(s.width, 4), "embed_dim": s.embed_dim,
                     "num_heads": s.num_heads, "head_dim": s.head_dim, "mlp_hidden": s.mlp_hidden,
                     "keep_rate": s.keep_rate, "resolution": s.resolution,
                     "final_tokens": s.tokens[-1], "params": param_count(spec),
                     "macs": mac_count(spec)})
    return rows


def export_checkpoint_bundle(loaded: LoadedModel, grid: VariantGrid, out: str | Path,
                             formats: Sequence[str] = ("onnx",), eval_data: str | None = None,
                             progress: Progress | None = None, precisions: str | Sequence[str] = "fp32",
                             calibration: str | None = None, calibration_samples: int = 128,
                             calibration_method: str = "minmax", max_drop: float = 0.01,
                             warn: Callable[[str], None] | None = None,
                             policy: str | Path | dict[str, Any] | None = None, nhwc: bool = False,
                             keep_going: bool = False, coreml_target: str = "iOS17",
                             resume: bool = False, cache_dir: str | Path | None = None,
                             int8_target: str = "arm-dotprod") -> dict[str, Any]:
    """`export_bundle` with an evaluation set chosen by name (``builtin`` = digits held-out) and
    the precisions beyond fp32, calibrated on ``calibration`` (see `exporter.quantize`);
    ``coreml_target`` is the Core ML minimum deployment target; ``resume`` takes artifacts a
    killed export finished from the artifact cache (``cache_dir``); ``int8_target`` is the CPU
    int8 recipes are tuned for (`exporter.quantize.targets`)."""
    from exporter.quantize import quantize_options

    eval_set = None
    if eval_data is not None:
        check_choice("eval data", eval_data, EVAL_SETS)
        eval_set = digits("test")
        if loaded.model.cfg.num_classes != len(eval_set.class_names):
            raise ConfigError(f"--eval-data builtin has 10 classes but the model has "
                              f"{loaded.model.cfg.num_classes}; leave --eval-data out")
    if not formats:
        raise ConfigError("--formats is empty; give at least one format, e.g. onnx")
    quant = quantize_options(precisions, calibration, loaded.preprocess, calibration_samples,
                             method=calibration_method, max_drop=max_drop, warn=warn,
                             int8_target=int8_target)
    return export_bundle(loaded, grid, out, formats, eval_set=eval_set, progress=progress,
                         quantize=quant, policy=policy, nhwc=nhwc, keep_going=keep_going,
                         format_options={"coreml": {"deployment_target": coreml_target}},
                         resume=resume, cache_dir=cache_dir)
