"""The Python API: everything the CLI does, callable from code."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from calibration.eval_sets import load_eval_set
from exporter.bundle.export import Progress, export_bundle
from exporter.bundle.keys import generate_keypair  # noqa: F401  (slimvit keygen)
from exporter.bundle.plain_warnings import accuracy_collapse_warning, plain_checkpoint_warning
from exporter.bundle.signing import sign_bundle  # noqa: F401  (slimvit sign)
from exporter.bundle.verify import check_bundle, verify_bundle  # noqa: F401  (slimvit verify)
from exporter.checkpoints import LoadedModel, load_model
from exporter.convert.formats import FORMATS, configure_formats
from exporter.convert.quantize import quantize_options
from exporter.convert.quantize.registry import precision_names
from exporter.errors import ConfigError
from exporter.measure.ingest import ingest_reports  # noqa: F401  (slimvit ingest)
from exporter.measure.profile import profile_bundle  # noqa: F401  (slimvit profile)
from exporter.measure.report import write_report  # noqa: F401  (slimvit report)
from exporter.nn.config import VariantGrid, ViTConfig
from exporter.nn.cost import mac_count, param_count
from exporter.nn.extract import static_spec
from exporter.nn.grid_notes import token_stages
from exporter.nn.model import SlimmableViT

EVAL_SETS = ("builtin", "DIR", "FILE.npz")  # what --eval-data takes (calibration/eval_sets.py)


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
    """One row per variant: id, dims, tokens (final count, and per stage as ``17>9>5``), params
    and MACs."""
    rows = []
    for s in model.subnets(grid):  # a searched (ViT-Slim) model: its one structure
        spec = static_spec(model, s)
        rows.append({"id": s.id, "width": round(s.width, 4), "embed_dim": s.embed_dim,
                     "num_heads": s.num_heads, "head_dim": s.head_dim, "mlp_hidden": s.mlp_hidden,
                     "keep_rate": s.keep_rate, "resolution": s.resolution,
                     "final_tokens": s.tokens[-1], "tokens": token_stages(model.cfg, s),
                     "params": param_count(spec),
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
                             executorch_backend: str = "xnnpack",
                             resume: bool = False, cache_dir: str | Path | None = None,
                             int8_target: str = "arm-dotprod", float_ops: str | Sequence[str] = ()) -> dict[str, Any]:
    """`export_bundle` with an evaluation set chosen by name (``builtin`` = digits held-out) and
    the precisions beyond fp32, calibrated on ``calibration`` (see `exporter.convert.quantize`);
    ``coreml_target`` is the Core ML minimum deployment target; ``executorch_backend`` the
    ExecuTorch delegate (``xnnpack`` or ``coreml``); ``resume`` takes artifacts a
    killed export finished from the artifact cache (``cache_dir``); ``int8_target`` is the CPU
    int8 recipes are tuned for (`exporter.convert.quantize.targets`); ``float_ops`` are op kinds
    every quantized artifact keeps in float from the first try."""
    eval_set = None
    if eval_data is not None:
        labels = loaded.labels or [str(i) for i in range(loaded.model.cfg.num_classes)]
        eval_set = load_eval_set(eval_data, loaded.preprocess, loaded.model.cfg.img_size, labels)
    say = warn or (lambda m: None)
    plain = plain_checkpoint_warning(loaded, grid)
    if plain:
        say(plain)
    if not formats:
        raise ConfigError("--formats is empty; give at least one format, e.g. onnx")
    quant = quantize_options(precisions, calibration, loaded.preprocess, calibration_samples,
                             method=calibration_method, max_drop=max_drop, warn=warn,
                             int8_target=int8_target,
                             float_ops=float_ops if isinstance(float_ops, str) else tuple(float_ops))
    fmts = configure_formats(formats, nhwc=nhwc, deployment_target=coreml_target,
                             backend=executorch_backend)
    manifest = export_bundle(loaded, grid, out, fmts, eval_set=eval_set, progress=progress,
                             quantize=quant, policy=policy, keep_going=keep_going,
                             resume=resume, cache_dir=cache_dir)
    collapse = accuracy_collapse_warning(manifest)
    if collapse and not plain:  # one warning about narrow widths, not two
        say(collapse)
    return manifest


def format_table() -> list[dict[str, Any]]:
    """One row per registered export format (`slimvit formats`): suffix, layouts, whether it
    runs on this host, its precisions and the export options only it reads."""
    rows = []
    for name, fmt in FORMATS.items():
        rows.append({"format": name, "suffix": fmt.suffix, "directory": fmt.directory,
                     "layouts": list(fmt.layouts), "runs_here": fmt.can_run,
                     "precisions": precision_names(name), "options": list(fmt.cli_options)})
    return rows
