"""What `slimvit profile` tells a person: per format and precision the fastest and slowest
variant and the size of the Pareto front, what was not measured and why, and what happened to
the policy."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.measure.worker import RUNTIMES
from exporter.policy.pareto import pareto_front
from exporter.policy.tiers import TierBasis, explain_change, variant_points

# Why a format cannot be measured here, when no registered runtime runs it.
NOT_RUNNABLE = {"coreml": "Core ML runs only on Apple devices; measure it there (ios_demo, or "
                          "coremltools on macOS) and merge the report with `slimvit ingest`"}


@dataclass(frozen=True)
class GroupSummary:
    """One format and precision measured on one device."""

    format: str
    precision: str
    measured: int
    fastest: tuple[str, float]
    slowest: tuple[str, float]
    front: list[str]


def summarize_device(manifest: Mapping[str, Any], device: str) -> list[GroupSummary]:
    """Per (format, precision) with measurements on ``device``: fastest, slowest, front."""
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for v in manifest["variants"]:
        for a in v["artifacts"]:
            lat = a.get("latency", {}).get(device)
            if lat:
                groups.setdefault((a["format"], a["precision"]), []).append((v["id"], lat["p50_ms"]))
    out = []
    for (fmt, prec), rows in sorted(groups.items()):
        basis = TierBasis(fmt, prec, device)
        points = [p for p in variant_points(manifest, basis) if p[2] is not None]
        front = pareto_front(points) if len(points) == len(rows) else []  # type: ignore[arg-type]
        out.append(GroupSummary(fmt, prec, len(rows), min(rows, key=lambda r: r[1]),
                                max(rows, key=lambda r: r[1]), front))
    return out


def skipped(manifest: Mapping[str, Any], measured_formats: Sequence[str]) -> list[str]:
    """One line per format whose artifacts were not measured, with the reason."""
    counts: dict[str, int] = {}
    for v in manifest["variants"]:
        for a in v["artifacts"]:
            if a["format"] not in measured_formats:
                counts[a["format"]] = counts.get(a["format"], 0) + 1
    lines = []
    for fmt, n in sorted(counts.items()):
        runtimes = [r for r in RUNTIMES.values() if r.format == fmt]
        if not runtimes:
            why = NOT_RUNNABLE.get(fmt, f"no runtime registered for {fmt}")
        elif all(importlib.util.find_spec(r.module) is None for r in runtimes):
            why = (f"runtime {', '.join(r.name for r in runtimes)} is not installed "
                   f"(pip install {', '.join(r.module for r in runtimes)})")
        else:
            why = f"left out of --runtime (add {', '.join(r.name for r in runtimes)})"
        lines.append(f"{n} {fmt} artifact(s) not measured: {why}")
    return lines


def policy_lines(before: Mapping[str, Any] | None, manifest: Mapping[str, Any]) -> list[str]:
    """What profiling (or ingesting) did to the policy: tiers changed or kept, vectors refreshed."""
    policy = manifest.get("policy")
    if policy is None:
        return ["the bundle has no policy; `slimvit policy update BUNDLE` adds the default one"]
    basis = TierBasis.from_dict(policy.get("basis"))
    what = basis.describe() if basis else "default basis"
    old = list((before or {}).get("tiers", []))
    lines = explain_change(old, policy["tiers"], manifest, basis) if old and basis else []
    if not lines:
        lines = [f"policy tiers unchanged ({what}): {', '.join(policy['tiers'])}"]
    vectors = manifest.get("policy_vectors", {})
    lines.append(f"policy latency table and conformance vectors refreshed "
                 f"({vectors.get('path', 'policy_vectors.json')}, {vectors.get('cases', 0)} cases)")
    return lines
