"""The last stage of an export: the variants' `Artifact` objects -> `manifest.json` (with the
policy and its conformance vectors) in the staged bundle directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporter.bundle.plan import ExportPlan
from exporter.convert.artifact import Artifact
from exporter.convert.formats.onnx import INPUT_NAME, OUTPUT_NAME
from exporter.manifest import SCHEMA_VERSION, tool_version, write_manifest
from exporter.nn.config import Subnet
from exporter.nn.cost import mac_count, param_count
from exporter.nn.extract import static_spec
from exporter.policy.store import attach_policy


@dataclass
class VariantResult:
    """One variant's artifacts, and its precisions left out (with why)."""

    subnet: Subnet
    artifacts: list[Artifact] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)


def variant_entry(plan: ExportPlan, s: Subnet, artifacts: list[Artifact]) -> dict[str, Any]:
    """The manifest's entry of one variant: its shape, cost and artifacts."""
    model = plan.loaded.model
    spec = static_spec(model, s)
    entry = {
        "id": s.id, "width": round(s.width, 6), "embed_dim": s.embed_dim, "num_heads": s.num_heads,
        "head_dim": s.head_dim, "mlp_hidden": s.mlp_hidden, "depth": model.cfg.depth,
        "keep_rate": s.keep_rate, "resolution": s.resolution, "channels": s.channels,
        "input_shape": [1, model.cfg.in_chans, s.resolution, s.resolution], "tokens": list(s.tokens),
        "params": param_count(spec), "macs": mac_count(spec),
        "artifacts": [a.to_manifest() for a in artifacts],
    }
    structure = getattr(model, "structure", None)  # ViT-Slim's searched model: sizes per layer
    if structure is not None:
        entry["structure"] = structure.describe()
    return entry


def build_manifest(plan: ExportPlan, results: list[VariantResult]) -> dict[str, Any]:
    """The manifest of a finished export (without the policy, which `write_bundle` adds)."""
    loaded, cfg = plan.loaded, plan.loaded.model.cfg
    top = max(s.resolution for s in plan.subnets)
    runtimes = {f.name: f.runtime_version() for f in plan.formats} | {"torch": torch.__version__}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "bundle_version": plan.bundle_version,
        "created_by": {"tool": "slimvit", "version": tool_version(), "runtimes": runtimes},
        "model": {"name": loaded.name, "source_format": loaded.source_format,
                  "config": cfg.to_dict(), "weights_sha256": loaded.weights_sha256},
        "input": {"name": INPUT_NAME, "shape": [1, cfg.in_chans, top, top], "layout": "NCHW",
                  "layouts": {f.name: f.layout for f in plan.formats}, "dtype": "float32",
                  "color": "RGB", **loaded.preprocess.describe()},
        "output": {"name": OUTPUT_NAME, "shape": [1, cfg.num_classes], "kind": "logits"},
        "labels": list(loaded.labels),
        "variants": [variant_entry(plan, r.subnet, r.artifacts) for r in results],
    }
    if plan.quantize is not None:
        manifest["calibration"] = plan.quantize.describe([e for r in results for e in r.excluded])
    return manifest


def write_bundle(plan: ExportPlan, results: list[VariantResult], out: Path) -> dict[str, Any]:
    """Write the manifest, the policy and its vectors into ``out``, which already holds every
    artifact; returns the manifest."""
    manifest = build_manifest(plan, results)
    attach_policy(manifest, out, plan.policy)
    write_manifest(out, manifest)
    return manifest


__all__ = ["VariantResult", "build_manifest", "variant_entry", "write_bundle"]
