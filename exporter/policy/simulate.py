"""Replay a device trace through a bundle's policy: what ran, what it cost, how it compares.

A trace is a CSV with ``t_s,battery,charging,thermal,low_power`` (times ascending). Each row is
one engine call; its choice holds until the next row. Expected accuracy is the variant's FP32
top-1 from the manifest; latency its measured p50 on ``device`` or a MACs-proportional estimate.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.fileio import atomic_path, atomic_write_json
from exporter.gate.files import read_capped
from exporter.gate.limits import MAX_CSV_FIELD, MAX_TRACE_BYTES
from exporter.manifest import read_manifest
from exporter.policy.engine import Choice, DeviceState, Policy, PolicyError, decide, t_ms
from exporter.policy.spec import policy_of, variant_accuracy, variant_p50
from exporter.policy.tiers import TierBasis, basis_p50, default_basis

TRACE_COLUMNS = ("t_s", "battery", "charging", "thermal", "low_power")
# Latency estimate without a measurement: DeiT-Ti (1.25 GMACs) ran in about 11 ms on an
# iPhone 12 through Core ML FP32 (docs: SEEDS), i.e. 8.8 ms per GMAC.
MS_PER_GMAC = 11.0 / 1.25
_TRUE, _FALSE = ("1", "true", "yes", "y"), ("0", "false", "no", "n", "")


@dataclass(frozen=True)
class TraceRow:
    t_s: float
    battery: float
    charging: bool
    thermal: str
    low_power: bool


def read_trace(path: str | Path) -> list[TraceRow]:
    """Parse and check a trace CSV; every error names the row and column."""
    path = Path(path)
    data = read_capped(path, "trace", MAX_TRACE_BYTES, PolicyError)
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)  # bad bytes: a clear row error
    long = next((n for n, line in enumerate(lines, start=1) if len(line) > 8 * MAX_CSV_FIELD), None)
    if long is not None:
        raise PolicyError(f"trace {path.name} line {long} is over {8 * MAX_CSV_FIELD} characters; "
                          f"a trace row is t_s,battery,charging,thermal,low_power")
    try:
        return _parse_trace(path, [line for line in lines if not line.lstrip().startswith("#")])
    except csv.Error as e:
        raise PolicyError(f"trace {path.name} is not CSV ({e})") from None


def _parse_trace(path: Path, lines: list[str]) -> list[TraceRow]:
    reader = csv.DictReader(lines)
    cols = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in TRACE_COLUMNS if c not in cols]
    if missing:
        raise PolicyError(f"trace {path.name} lacks column(s) {', '.join(missing)}; a trace needs "
                          f"{','.join(TRACE_COLUMNS)} (found: {','.join(cols) or 'nothing'})")
    rows = []
    for n, raw in enumerate(reader, start=1):
        r = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        rows.append(TraceRow(_num(r, "t_s", n), _num(r, "battery", n), _bool(r, "charging", n),
                             r["thermal"], _bool(r, "low_power", n)))
    if not rows:
        raise PolicyError(f"trace {path.name} has no rows")
    for n, (a, b) in enumerate(zip(rows, rows[1:], strict=False), start=2):
        if b.t_s < a.t_s:
            raise PolicyError(f"trace {path.name} row {n}: t_s {b.t_s:g} comes after {a.t_s:g}; "
                              "sort the rows by time")
    return rows


def _num(r: Mapping[str, str], col: str, n: int) -> float:
    try:
        value = float(r[col])
    except ValueError:
        raise PolicyError(f"trace row {n}: {col} must be a number, got {r[col][:40]!r}") from None
    if not math.isfinite(value):
        raise PolicyError(f"trace row {n}: {col} must be a finite number, got {r[col][:40]!r}")
    return value


def _bool(r: Mapping[str, str], col: str, n: int) -> bool:
    v = r[col].lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise PolicyError(f"trace row {n}: {col} must be 0/1 or true/false, got {r[col]!r}")


def replay(policy: Policy, rows: Sequence[TraceRow], platform: str = "android",
           device: str | None = None) -> list[Choice]:
    """One engine call per row, each with the previous choice."""
    out: list[Choice] = []
    prev = None
    for n, r in enumerate(rows, start=1):
        try:
            prev = decide(policy, DeviceState(platform, r.thermal, r.battery, r.charging, r.low_power,
                                              device), prev, t_ms(r.t_s))
        except PolicyError as e:
            raise PolicyError(f"trace row {n}: {e}", e.code) from None
        out.append(prev)
    return out


def tier_costs(manifest: Mapping[str, Any], policy: Policy, device: str | None
               ) -> tuple[list[dict[str, Any]], str]:
    """Per tier: macs, accuracy (or None), latency_ms; and where the latencies come from.

    Latency is the measured p50 on ``device`` of the artifact the app runs (the policy's basis:
    format and precision), falling back to the fastest FP32 artifact, then a MACs estimate.
    """
    by_id = {v["id"]: v for v in manifest["variants"]}
    basis = policy_basis(manifest, policy)
    measured_p50 = basis_p50(manifest, basis, policy.tiers).get(device, {}) if device else {}
    costs, measured = [], 0
    for t in policy.tiers:
        v = by_id[t]
        p50 = measured_p50.get(t, variant_p50(v).get(device) if device else None)
        measured += p50 is not None
        costs.append({"variant": t, "macs": v["macs"], "accuracy": variant_accuracy(v),
                      "latency_ms": p50 if p50 is not None else v["macs"] / 1e9 * MS_PER_GMAC})
    estimate = f"estimated from MACs at {MS_PER_GMAC:.1f} ms/GMAC (DeiT-Ti on iPhone 12, Core ML FP32)"
    what = f"{basis.format} {basis.precision} " if measured_p50 else ""
    if measured == len(costs):
        source = f"measured p50 of {what}on {device}"
    elif measured:
        source = f"measured p50 of {what}on {device} for {measured} of {len(costs)} tiers, others {estimate}"
    else:
        source = estimate
    return costs, source


def policy_basis(manifest: Mapping[str, Any], policy: Policy) -> TierBasis:
    """The format and precision the policy's tiers were chosen for (the manifest's basis)."""
    b = TierBasis.from_dict(manifest.get("policy", {}).get("basis"))
    return b or default_basis(manifest)


def measured_device_for(manifest: Mapping[str, Any], policy: Policy) -> str | None:
    """The device whose measurements ``simulate`` uses when none is named: the policy's basis
    device, else the device that measured the most tiers."""
    basis = policy_basis(manifest, policy)
    if basis.device:
        return basis.device
    by_id = {v["id"]: v for v in manifest["variants"]}
    counts: dict[str, int] = {}
    for t in policy.tiers:
        for dev in variant_p50(by_id[t]):
            counts[dev] = counts.get(dev, 0) + 1
    return min(counts, key=lambda d: (-counts[d], d), default=None)


def _figures(tiers: Sequence[int], dts: Sequence[float], costs: Sequence[Mapping[str, Any]],
             fps: float) -> dict[str, Any]:
    total = sum(dts) or 1.0
    accs = [costs[t]["accuracy"] for t in tiers]
    return {
        "mean_accuracy": None if any(a is None for a in accs)
        else sum(a * dt for a, dt in zip(accs, dts, strict=True)) / total,
        "mean_latency_ms": sum(costs[t]["latency_ms"] * dt for t, dt in zip(tiers, dts, strict=True)) / total,
        "energy_proxy_macs": sum(costs[t]["macs"] * fps * dt for t, dt in zip(tiers, dts, strict=True)),
    }


def summarize(manifest: Mapping[str, Any], policy: Policy, rows: Sequence[TraceRow],
              choices: Sequence[Choice], device: str | None = None, fps: float = 10.0) -> dict[str, Any]:
    """The summary.json figures for a replayed trace."""
    costs, latency_source = tier_costs(manifest, policy, device)
    dts = [b.t_s - a.t_s for a, b in zip(rows, rows[1:], strict=False)] + [0.0]
    duration = rows[-1].t_s - rows[0].t_s
    tiers = [c.tier for c in choices]
    switches = sum(a != b for a, b in zip(tiers, tiers[1:], strict=False))
    per_variant = {t: 0.0 for t in policy.tiers}
    for c, dt in zip(choices, dts, strict=True):
        per_variant[c.variant] += dt
    run = _figures(tiers, dts, costs, fps)
    best = _figures([policy.best] * len(rows), dts, costs, fps)
    cheapest = _figures([0] * len(rows), dts, costs, fps)
    vs_best = {"energy_saving": 1 - run["energy_proxy_macs"] / best["energy_proxy_macs"]
               if best["energy_proxy_macs"] else 0.0,
               "accuracy_gap_pp": None if run["mean_accuracy"] is None
               else 100 * (best["mean_accuracy"] - run["mean_accuracy"])}
    return {
        "duration_s": duration, "steps": len(rows), "fps": fps, "device": device,
        "switches": switches, "switches_per_minute": switches / (duration / 60) if duration else 0.0,
        "time_per_variant_s": {k: v for k, v in per_variant.items() if v},
        "policy": run, "always_best": best, "always_cheapest": cheapest, "vs_always_best": vs_best,
        "accuracy_source": "FP32 artifact top-1 from the manifest",
        "latency_source": latency_source,
        "energy_proxy": f"MACs x inferences, at {fps:g} inferences per second",
        "rules": {r: sum(c.rule == r for c in choices) for r in dict.fromkeys(c.rule for c in choices)},
        "tiers": costs,
    }


def plot_timeline(policy: Policy, rows: Sequence[TraceRow], choices: Sequence[Choice], platform: str,
                  path: str | Path, title: str = "") -> Path:
    """A PNG of tier/variant, battery (charging shaded) and thermal level over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [(r.t_s - rows[0].t_s) / 60 for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 7), sharex=True,
                                        gridspec_kw={"height_ratios": [2, 1, 1]})
    ax1.step(t, [c.tier for c in choices], where="post", color="tab:blue")
    ax1.set_yticks(range(len(policy.tiers)), [f"{i}: {v}" for i, v in enumerate(policy.tiers)], fontsize=7)
    ax1.set_ylim(-0.5, len(policy.tiers) - 0.5)
    ax1.set_ylabel("tier")
    ax1.set_title(title or "policy replay")
    ax2.plot(t, [r.battery for r in rows], color="tab:green")
    ax2.fill_between(t, 0, 100, where=[r.charging for r in rows], step="post", alpha=0.15,
                     color="tab:orange", label="charging")
    ax2.fill_between(t, 0, 100, where=[r.low_power for r in rows], step="post", alpha=0.15,
                     color="tab:gray", label="low power")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("battery %")
    ax2.legend(loc="upper right", fontsize=7)
    levels = policy.platforms[platform]
    ax3.step(t, [levels[r.thermal] for r in rows], where="post", color="tab:red")
    ax3.set_yticks(range(len(policy.thermal_scale)), list(policy.thermal_scale), fontsize=7)
    ax3.set_ylabel("thermal")
    ax3.set_xlabel("minutes")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


def simulate_bundle(bundle: str | Path, trace: str | Path, out: str | Path, platform: str = "android",
                    device: str | None = None, fps: float = 10.0) -> dict[str, Any]:
    """Replay ``trace`` through the bundle's policy; writes ``out/summary.json`` and ``out/timeline.png``.

    ``device`` None: the device the bundle has measurements of (``measured_device_for``), so
    latency is measured whenever the bundle has numbers; the summary names it.

    Raises:
        PolicyError: no policy in the manifest, a bad trace (missing columns, unsorted times,
            unknown thermal names, battery outside 0-100), or fps <= 0.
    """
    if fps <= 0:
        raise PolicyError(f"--fps must be > 0, got {fps:g}")
    manifest = read_manifest(bundle)
    policy = policy_of(manifest, str(bundle))
    rows = read_trace(trace)
    if device is None:  # the bundle's own measurements, when it has any
        device = measured_device_for(manifest, policy)
    choices = replay(policy, rows, platform, device)
    summary = {"bundle": str(bundle), "trace": Path(trace).name, "platform": platform,
               **summarize(manifest, policy, rows, choices, device, fps)}
    out = Path(out)
    atomic_write_json(out / "summary.json", summary)
    plot_timeline(policy, rows, choices, platform, out / "timeline.png",
                  f"{Path(trace).stem}: {summary['switches']} switches")
    return summary


__all__ = ["TRACE_COLUMNS", "read_trace", "replay", "simulate_bundle", "summarize"]
