"""`slimvit select`, `simulate` and `policy *`: the bundle's switching policy and its conformance vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exporter.commands.common import app, console, out_console, policy_app, say
from exporter.gate.files import dumps_strict
from exporter.gate.outputs import check_out_dir, check_out_file
from exporter.policy.simulate import simulate_bundle
from exporter.policy.spec import select
from exporter.policy.store import update_policy
from exporter.policy.vectors import check_vectors, read_vectors, write_vectors


@app.command("select")
def select_variant(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory (or its manifest.json).")],
        thermal: Annotated[str, typer.Option("--thermal", help="Thermal state name of the platform.")],
        battery: Annotated[float, typer.Option("--battery", help="Battery level in percent, 0-100.")],
        charging: Annotated[bool, typer.Option("--charging", help="Plugged in.")] = False,
        low_power: Annotated[bool, typer.Option("--low-power", help="OS low-power mode is on.")] = False,
        platform: Annotated[str, typer.Option("--platform", help="android, ios or web.")] = "android",
        device: Annotated[str | None, typer.Option("--device", help="Device id for latency budgets.")] = None,
        as_json: Annotated[bool, typer.Option(
            "--json", help='Print {"variant", "tier", "rule", "reason"} as JSON.')] = False,
        ) -> None:
    """The variant the bundle's policy picks for a device state (docs/policy.md)."""
    c = select(bundle, thermal, battery, charging, low_power, platform, device)
    if as_json:
        print(dumps_strict({"variant": c.variant, "tier": c.tier, "rule": c.rule, "reason": c.reason}))
    else:
        print(f"{c.variant}  (tier {c.tier}, rule {c.rule}: {c.reason})")


@app.command()
def simulate(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory (or its manifest.json).")],
        trace: Annotated[Path, typer.Argument(help="CSV with t_s,battery,charging,thermal,low_power.")],
        out: Annotated[Path, typer.Option("--out", help="Directory for summary.json and timeline.png.")],
        platform: Annotated[str, typer.Option("--platform", help="Platform of the trace's thermal names.")
                            ] = "android",
        device: Annotated[str | None, typer.Option(
            "--device", help="Device id for latency (default: the device the bundle has measurements of).")] = None,
        fps: Annotated[float, typer.Option("--fps", help="Inferences per second (energy proxy).")] = 10.0,
        ) -> None:
    """Replay a device trace through the bundle's policy; write summary.json and a timeline plot."""
    check_out_dir(out, "simulate", inputs=(bundle, trace))

    s = simulate_bundle(bundle, trace, out, platform, device, fps)
    run, best, cheap = s["policy"], s["always_best"], s["always_cheapest"]
    table = Table(title=f"{s['trace']}: {s['duration_s'] / 60:.1f} min, {s['switches']} switches "
                        f"({s['switches_per_minute']:.2f}/min)")
    for col in ("strategy", "mean top-1", "mean latency ms", "energy proxy (GMAC)"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, f in (("policy", run), ("always best", best), ("always cheapest", cheap)):
        acc = "-" if f["mean_accuracy"] is None else f"{100 * f['mean_accuracy']:.2f}%"
        table.add_row(name, acc, f"{f['mean_latency_ms']:.3g}", f"{f['energy_proxy_macs'] / 1e9:,.1f}")
    out_console.print(table)
    console.print(f"latency: {s['latency_source']}\nwrote {out / 'summary.json'} and {out / 'timeline.png'}")


@policy_app.command("vectors")
def policy_vectors(
        out: Annotated[Path, typer.Option("--out", help="Vectors file to write.")] = Path(
            "conformance/policy_vectors.json"),
        bundle: Annotated[Path | None, typer.Option(
            "--bundle", help="Use this bundle's policy (default: a reference policy).")] = None,
        reference: Annotated[str, typer.Option(
            "--reference", help="Reference policy without --bundle: default or custom.")] = "default",
        ) -> None:
    """Generate conformance vectors from the reference engine."""
    check_out_file(out, inputs=(bundle,))

    doc = write_vectors(out, bundle, reference)
    steps = sum(len(c["steps"]) for c in doc["cases"])
    console.print(f"{out}: {len(doc['cases'])} cases, {steps} steps, {len(doc['policy']['tiers'])} tiers")


@policy_app.command("update")
def policy_update(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
        policy: Annotated[Path | None, typer.Option(
            "--policy", help="Policy file (JSON/YAML) merged over the default.")] = None,
        fmt: Annotated[str | None, typer.Option(
            "--format", help="Format the app runs; the tiers are its Pareto front (default: tflite, "
                             "else coreml, else onnx).")] = None,
        precision: Annotated[str | None, typer.Option(
            "--precision", help="Precision the app runs (default: fp32).")] = None,
        ) -> None:
    """Recompute a bundle's policy and conformance vectors (e.g. after `slimvit profile`)."""
    p, change = update_policy(bundle, policy, fmt, precision)
    print_tier_change(change)
    basis = p.get("basis") or {}
    on = f"p50 on {basis['device']}" if basis.get("device") else "MACs"
    console.print(f"{bundle}: policy with {len(p['tiers'])} tiers ({basis.get('format')} "
                  f"{basis.get('precision')}, cost = {on}): {', '.join(p['tiers'])}", highlight=False)


def print_tier_change(change: list[str]) -> None:
    """How `profile`, `ingest` or `policy update` changed the policy's tiers, and why."""
    for line in change:
        console.print(line, highlight=False, soft_wrap=True)


@policy_app.command("check")
def policy_check(vectors: Annotated[Path, typer.Argument(help="A policy vectors JSON file.")]) -> None:
    """Replay a vectors file through the reference engine; exit 1 listing every mismatch."""
    doc = read_vectors(vectors)
    bad = check_vectors(doc)
    for b in bad:
        say("mismatch:", b, "red")
    console.print(f"{vectors}: {len(doc['cases'])} cases, {len(bad)} mismatch(es)")
    if bad:
        raise typer.Exit(1)
