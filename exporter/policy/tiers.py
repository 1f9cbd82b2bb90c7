"""Which variants become policy tiers: the Pareto front of what the app will run.

An app runs one format and one precision (a TFLite FP32 file on Android, a Core ML package on
iOS, ONNX in the browser), so the tiers are the front of *those* artifacts: top-1 against the
measured p50 latency on a device where the bundle has measurements for every such artifact,
and against MACs otherwise. A variant whose artifact is slower and no more accurate than
another's (top-k pruning at a tiny size, say) is never a tier. The choice is written into the
policy as ``basis`` so `profile`/`ingest` can recompute the front when new numbers arrive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.policy.pareto import pareto_front

# The format a default policy is chosen for, first present wins: the Android app (LiteRT) is the
# reference app; Core ML is next; ONNX (the web page) last. `--format` on `policy update` (or
# ``basis.format`` in a policy file) picks another.
APP_FORMATS = ("tflite", "coreml", "onnx")
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class TierBasis:
    """What the tiers are the front of: one format and precision; cost = p50 on ``device``, or
    MACs when ``device`` is None."""

    format: str | None
    precision: str | None
    device: str | None = None
    tiers: str = "front"  # "front": recomputed on new numbers; "user": kept as the user gave them

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "precision": self.precision, "device": self.device,
                "tiers": self.tiers}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TierBasis | None:
        if not d:
            return None
        return cls(d.get("format"), d.get("precision"), d.get("device"), d.get("tiers", "front"))

    @property
    def cost(self) -> str:
        return f"p50 on {self.device}" if self.device else "MACs"

    def describe(self) -> str:
        what = " ".join(x for x in (self.format, self.precision) if x) or "all artifacts"
        return f"{what}, cost = {self.cost}"


def variant_accuracy(variant: Mapping[str, Any]) -> float | None:
    """Top-1 of the variant's best FP32 artifact (any precision when no FP32 one has it)."""
    arts = [a for a in variant["artifacts"] if "accuracy" in a]
    fp32 = [a for a in arts if a["precision"] == "fp32"] or arts
    return max((a["accuracy"]["top1"] for a in fp32), default=None)


def artifact(variant: Mapping[str, Any], fmt: str | None, precision: str | None) -> Mapping[str, Any] | None:
    """The variant's artifact of that format and precision, if it has one."""
    return next((a for a in variant["artifacts"]
                 if a.get("format") == fmt and a.get("precision") == precision), None)


def _runs(manifest: Mapping[str, Any], fmt: str | None, precision: str | None) -> list[Mapping[str, Any]]:
    return [v for v in manifest["variants"] if artifact(v, fmt, precision) is not None]


def measured_device(manifest: Mapping[str, Any], fmt: str | None, precision: str | None) -> str | None:
    """A device with a p50 for every artifact of that format and precision: a phone (an ingested
    report) before this host, then by name. None when no device measured them all."""
    runs = _runs(manifest, fmt, precision)
    if not runs:
        return None
    full = set.intersection(*(set(artifact(v, fmt, precision).get("latency", {})) for v in runs))
    kinds = manifest.get("devices", {})
    return min(full, key=lambda d: (kinds.get(d, {}).get("kind") == "host", d), default=None)


def default_basis(manifest: Mapping[str, Any], fmt: str | None = None, precision: str | None = None,
                  tiers: str = "front") -> TierBasis:
    """The basis for a bundle: the given format (default: the one with artifacts for the most
    variants, tflite before coreml before onnx), FP32 unless told, the measured device if any."""
    have = {(a.get("format"), a.get("precision")) for v in manifest["variants"] for a in v["artifacts"]}
    if fmt is None:  # the app format that runs the most variants; APP_FORMATS order on ties
        cover = {f: sum(any(a.get("format") == f for a in v["artifacts"]) for v in manifest["variants"])
                 for f, _ in have}
        order = [*APP_FORMATS, *sorted({str(f) for f in cover} - set(APP_FORMATS))]
        fmt = min(cover, key=lambda f: (-cover[f], order.index(str(f))), default=None)
    if precision is None:
        precs = [p for f, p in sorted(have, key=str) if f == fmt]
        precision = DEFAULT_PRECISION if DEFAULT_PRECISION in precs or not precs else precs[0]
    return TierBasis(fmt, precision, measured_device(manifest, fmt, precision), tiers)


def variant_points(manifest: Mapping[str, Any], basis: TierBasis
                   ) -> list[tuple[str, float, float | None]]:
    """``(id, cost, top-1 or None)`` of every variant the app can run under ``basis``.

    Top-1 is the artifact's own; an artifact without one takes the variant's FP32 top-1.
    """
    points = []
    for v in _runs(manifest, basis.format, basis.precision):
        a = artifact(v, basis.format, basis.precision)
        cost = (float(a["latency"][basis.device]["p50_ms"]) if basis.device
                else float(v["macs"]))
        acc = a.get("accuracy", {}).get("top1")
        points.append((v["id"], cost, acc if acc is not None else variant_accuracy(v)))
    return points


def front_tiers(manifest: Mapping[str, Any], basis: TierBasis) -> list[str]:
    """The ordered tiers, cheapest first.

    The Pareto front of ``variant_points``; with no accuracy for some variant, one variant per
    distinct MAC count (cheapest first, the widest, highest-resolution one on ties, since more
    MACs usually buy accuracy). A bundle with no artifact of the basis uses every variant.
    """
    points = variant_points(manifest, basis)
    if points and all(acc is not None for _, _, acc in points):
        return pareto_front(points)  # type: ignore[arg-type]
    ids = {p[0] for p in points}
    pool = [v for v in manifest["variants"] if v["id"] in ids] or list(manifest["variants"])
    by_macs: dict[int, Mapping[str, Any]] = {}
    for v in sorted(pool, key=lambda v: (v["macs"], -v.get("width", 1.0), -v.get("resolution", 0))):
        by_macs.setdefault(v["macs"], v)
    return [v["id"] for v in by_macs.values()]


def tier_accuracy(manifest: Mapping[str, Any], basis: TierBasis, tiers: Sequence[str]) -> list[float | None]:
    """Top-1 of each tier under ``basis`` (as ``variant_points``)."""
    by_id = {v["id"]: v for v in manifest["variants"]}
    out = []
    for t in tiers:
        a = artifact(by_id[t], basis.format, basis.precision)
        acc = a.get("accuracy", {}).get("top1") if a is not None else None
        out.append(acc if acc is not None else variant_accuracy(by_id[t]))
    return out


def basis_p50(manifest: Mapping[str, Any], basis: TierBasis, tiers: Sequence[str]) -> dict[str, dict[str, float]]:
    """Measured p50 (ms) of each tier's basis artifact, by device."""
    by_id = {v["id"]: v for v in manifest["variants"]}
    p50: dict[str, dict[str, float]] = {}
    for t in tiers:
        a = artifact(by_id[t], basis.format, basis.precision) if t in by_id else None
        for dev, lat in (a or {}).get("latency", {}).items():
            p50.setdefault(dev, {})[t] = lat["p50_ms"]
    return p50


def explain_change(old: Sequence[str], new: Sequence[str], manifest: Mapping[str, Any],
                   basis: TierBasis) -> list[str]:
    """Lines that say how the tiers changed and why each dropped variant left; [] if unchanged."""
    if list(old) == list(new):
        return []
    lines = [f"policy tiers changed ({basis.describe()}): {', '.join(old)} -> {', '.join(new)}"]
    points = {pid: (cost, acc) for pid, cost, acc in variant_points(manifest, basis)}
    unit = "ms" if basis.device else "MMACs"

    def show(cost: float) -> str:
        return f"{cost:.3g} ms" if basis.device else f"{cost / 1e6:.3g} {unit}"

    for gone in [t for t in old if t not in new]:
        if gone not in points:
            lines.append(f"  {gone} left: it has no {basis.format} {basis.precision} artifact")
            continue
        cost, acc = points[gone]
        better = next((t for t in new if t in points and points[t][0] <= cost
                       and (points[t][1] or 0) >= (acc or 0)), None)
        if better is None:
            lines.append(f"  {gone} left the front")
        else:
            bc, ba = points[better]
            pct = "" if acc is None or ba is None else f", top-1 {100 * ba:.1f}% vs {100 * acc:.1f}%"
            lines.append(f"  {gone} left: {better} costs {show(bc)} vs {show(cost)}{pct}")
    for came in [t for t in new if t not in old]:
        if came in points:
            cost, acc = points[came]
            pct = "" if acc is None else f", top-1 {100 * acc:.1f}%"
            lines.append(f"  {came} joined: {show(cost)}{pct}")
    return lines
