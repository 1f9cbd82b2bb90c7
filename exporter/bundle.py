"""The export pipeline: slimmable model -> every variant -> validated artifacts -> manifest."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.data import ImageSet
from exporter.checkpoint import LoadedModel
from exporter.config import Subnet, VariantGrid
from exporter.cost import mac_count, param_count
from exporter.errors import ConfigError
from exporter.extract import extract_variant, static_spec
from exporter.fileio import atomic_path, sha256_file
from exporter.formats import FORMATS, ExportFormat, get_format
from exporter.formats.onnx import INPUT_NAME, OUTPUT_NAME
from exporter.manifest import SCHEMA_VERSION, write_manifest
from exporter.validate import validate_artifact

Progress = Callable[[str], None]
VALIDATION_RANDOM, VALIDATION_REAL = 4, 4


def tool_version() -> str:
    try:
        return importlib.metadata.version("slimvit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Accuracy:
    top1: float
    agreement: float
    samples: int
    dataset: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "agreement": self.agreement, "samples": self.samples,
                "dataset": self.dataset, "method": self.method}


def evaluate_artifact(fmt: ExportFormat, path: Path, reference: torch.nn.Module,
                      inputs: np.ndarray, labels: np.ndarray, dataset: str) -> Accuracy:
    """Held-out top-1 of the artifact, and its top-1 agreement with the PyTorch variant."""
    pred = fmt.run(path, inputs).argmax(axis=1)
    with torch.no_grad():
        ref = reference(torch.from_numpy(inputs)).argmax(dim=1).numpy()
    return Accuracy(float((pred == labels).mean()), float((pred == ref).mean()), len(labels),
                    dataset, fmt.runtime_version())


def variant_entry(loaded: LoadedModel, s: Subnet) -> dict[str, Any]:
    spec = static_spec(loaded.model, s)
    cfg = loaded.model.cfg
    return {
        "id": s.id, "width": round(s.width, 6), "embed_dim": s.embed_dim, "num_heads": s.num_heads,
        "head_dim": s.head_dim, "mlp_hidden": s.mlp_hidden, "depth": cfg.depth,
        "keep_rate": s.keep_rate, "resolution": s.resolution, "channels": s.channels,
        "input_shape": [1, cfg.in_chans, s.resolution, s.resolution], "tokens": list(s.tokens),
        "params": param_count(spec), "macs": mac_count(spec), "artifacts": [],
    }


def artifact_metadata(loaded: LoadedModel, s: Subnet) -> dict[str, str]:
    import json

    pre = loaded.preprocess
    return {
        "slimvit.variant_id": s.id, "slimvit.manifest_schema": SCHEMA_VERSION,
        "slimvit.labels": json.dumps(loaded.labels), "slimvit.mean": json.dumps(list(pre.mean)),
        "slimvit.std": json.dumps(list(pre.std)), "slimvit.layout": "NCHW",
        "slimvit.model": loaded.name, "slimvit.version": tool_version(),
    }


def export_variant(loaded: LoadedModel, s: Subnet, fmt: ExportFormat, out: Path,
                   real_inputs: np.ndarray | None) -> dict[str, Any]:
    """Export, validate and place one artifact; returns its manifest entry.

    The file appears at its final path only after validation passed.
    """
    module = extract_variant(loaded.model, s)
    shape = (1, loaded.model.cfg.in_chans, s.resolution, s.resolution)
    example = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    checks = [np.random.default_rng(1).standard_normal((VALIDATION_RANDOM, *shape[1:])).astype(np.float32)]
    if real_inputs is not None:
        checks.append(real_inputs[:VALIDATION_REAL])
    rel = Path(fmt.name) / f"{s.id}.fp32{fmt.suffix}"
    target = out / rel
    with atomic_path(target) as tmp:
        fmt.export(module, example, tmp, artifact_metadata(loaded, s))
        # Compare against the slimmable model itself, not only the extracted module.
        reference = _SubnetForward(loaded.model, s)
        report = validate_artifact(fmt, tmp, reference, np.concatenate(checks), what=s.id)
    return {"format": fmt.name, "precision": "fp32", "path": rel.as_posix(),
            "sha256": sha256_file(target), "bytes": target.stat().st_size,
            "validation": report.to_dict()}


class _SubnetForward(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, s: Subnet) -> None:
        super().__init__()
        self.model, self.s = model, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.s)


def export_bundle(loaded: LoadedModel, grid: VariantGrid, out: str | Path,
                  formats: Sequence[str] = ("onnx",), eval_set: ImageSet | None = None,
                  progress: Progress | None = None, bundle_version: int = 1) -> dict[str, Any]:
    """Export every variant of ``grid`` in every format into the bundle directory ``out``.

    Args:
        loaded: the slimmable model and its labels/preprocessing.
        grid: the variants to export.
        out: bundle directory (created; existing artifacts of the same names are replaced).
        formats: registered format names.
        eval_set: held-out images (in [0, 1]) for accuracy; also used in validation.
        progress: called with a short description before each artifact.
        bundle_version: the manifest's monotonically increasing bundle version.

    Returns:
        The manifest written to ``out/manifest.json``.

    Raises:
        ConfigError: an unknown format or a variant that does not fit the model.
        ValidationError: an artifact does not match PyTorch (nothing of it is left behind).
    """
    out = Path(out)
    fmts = [get_format(f) for f in dict.fromkeys(formats)]
    subnets = grid.subnets(loaded.model.cfg)
    if eval_set is not None and len(eval_set.class_names) not in (0, loaded.model.cfg.num_classes):
        raise ConfigError(f"evaluation set has {len(eval_set.class_names)} classes but the model "
                          f"has {loaded.model.cfg.num_classes}")
    model = loaded.model.eval()
    variants = []
    for s in subnets:
        entry = variant_entry(loaded, s)
        real = None
        if eval_set is not None:
            real = loaded.preprocess(eval_set.images, s.resolution).numpy()
        for fmt in fmts:
            if progress:
                progress(f"{s.id} {fmt.name}")
            art = export_variant(loaded, s, fmt, out, real)
            if eval_set is not None and fmt.can_run:
                acc = evaluate_artifact(fmt, out / art["path"], _SubnetForward(model, s), real,
                                        eval_set.labels, eval_set.name)
                art["accuracy"] = acc.to_dict()
            entry["artifacts"].append(art)
        variants.append(entry)
    cfg = model.cfg
    top = max(s.resolution for s in subnets)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "bundle_version": bundle_version,
        "created_by": {"tool": "slimvit", "version": tool_version(),
                       "runtimes": {f.name: f.runtime_version() for f in fmts} | {"torch": torch.__version__}},
        "model": {"name": loaded.name, "source_format": loaded.source_format,
                  "config": cfg.to_dict(), "weights_sha256": loaded.weights_sha256},
        "input": {"name": INPUT_NAME, "shape": [1, cfg.in_chans, top, top], "layout": "NCHW",
                  "dtype": "float32", "color": "RGB", **loaded.preprocess.describe()},
        "output": {"name": OUTPUT_NAME, "shape": [1, cfg.num_classes], "kind": "logits"},
        "labels": list(loaded.labels),
        "variants": variants,
    }
    write_manifest(out, manifest)
    return manifest


__all__ = ["FORMATS", "export_bundle", "export_variant", "evaluate_artifact", "tool_version"]
