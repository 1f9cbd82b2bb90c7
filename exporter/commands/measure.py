"""`slimvit profile`, `ingest` and `report`: latency measured here or on devices, and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exporter.bundle.keys import SIGNATURE_NAME
from exporter.commands.common import app, console, out_console, progress_bar, say
from exporter.gate.outputs import check_out_file
from exporter.manifest import read_manifest
from exporter.measure.ingest import ingest_reports
from exporter.measure.profile import host_device, plan_profile, profile_bundle
from exporter.measure.report import write_report
from exporter.measure.summary import policy_lines, skipped, summarize_device


@app.command()
def profile(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
        runtime: Annotated[str | None, typer.Option(
            "--runtime",
            help="Comma-separated runtimes (onnxruntime, litert, executorch); default: all installed.")] = None,
        threads: Annotated[int, typer.Option("--threads", help="Intra-op threads (0 = runtime default).")] = 1,
        runs: Annotated[int, typer.Option("--runs", help="Timed inferences per artifact.")] = 50,
        warmup: Annotated[int, typer.Option("--warmup", help="Untimed inferences after the first.")] = 5,
        device_id: Annotated[str | None, typer.Option("--device-id", help="Override the host's device id.")] = None,
        details: Annotated[bool, typer.Option(
            "--details", help="Also print one row per artifact (p50/p90/p99, load, first run, memory).")] = False,
        ) -> None:
    """Measure latency, load time and memory of every artifact here; write them into the manifest.

    Prints a summary per format and precision, what was not measured and why, and how the
    policy's tiers changed (they are the Pareto front of measured latency).
    """
    names = [r.strip() for r in runtime.split(",") if r.strip()] if runtime is not None else None
    jobs = plan_profile(bundle, names)
    before = read_manifest(bundle).get("policy")
    with progress_bar(len(jobs), "profile") as step:
        manifest = profile_bundle(bundle, names, threads, runs, warmup, device_id, progress=step,
                                  warn=lambda m: say("warning:", m))
    dev = device_id or host_device()[0]
    if details:
        out_console.print(_details_table(manifest, dev, runs, threads))
    table = Table(title=f"p50 latency on {dev} ({runs} runs, {threads} thread(s)); "
                        f"front = variants no other beats on both p50 and top-1")
    for col in ("format", "precision", "measured", "fastest", "slowest", "front"):
        table.add_column(col, justify="right" if col == "measured" else "left")
    for g in summarize_device(manifest, dev):
        table.add_row(g.format, g.precision, str(g.measured), f"{g.fastest[0]} {g.fastest[1]:.3f} ms",
                      f"{g.slowest[0]} {g.slowest[1]:.3f} ms",
                      f"{len(g.front)}: {', '.join(g.front)}" if g.front else "- (no top-1)")
    out_console.print(table)
    for line in skipped(manifest, sorted({j.artifact["format"] for j in jobs})):
        say("skipped:", line)
    for line in policy_lines(before, manifest):
        console.print(line, highlight=False, soft_wrap=True)
    _stale_signature_note(bundle)


def _details_table(manifest: dict, dev: str, runs: int, threads: int) -> Table:
    table = Table(title=f"latency on {dev} ({runs} runs, {threads} thread(s))")
    for col in ("variant", "artifact", "p50 ms", "p90 ms", "p99 ms", "load ms", "first ms", "peak MB"):
        table.add_column(col, justify="left" if col in ("variant", "artifact") else "right")
    for v in manifest["variants"]:
        for a in v["artifacts"]:
            lat = a.get("latency", {}).get(dev)
            if lat:
                table.add_row(v["id"], f"{a['format']} {a['precision']}", *(f"{lat[k]:.3f}" for k in (
                    "p50_ms", "p90_ms", "p99_ms", "load_ms", "first_ms")), f"{lat['peak_mb']:.1f}")
    return table


def _stale_signature_note(bundle: Path) -> None:
    if (bundle / SIGNATURE_NAME).exists():
        say("warning:", f"manifest.json changed, so {SIGNATURE_NAME} no longer matches it; "
                        f"re-sign the bundle with `slimvit sign`")


@app.command()
def ingest(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
        reports: Annotated[list[Path], typer.Argument(
            help="Device report JSON files, or benchmark_model / onnxruntime_perf_test outputs.")],
        device_id: Annotated[str | None, typer.Option(
            "--device-id", help="Device that text outputs ran on (JSON reports name their own).")] = None,
        device_name: Annotated[str | None, typer.Option("--device-name", help="Its readable name.")] = None,
        artifact: Annotated[str | None, typer.Option(
            "--artifact", help="Artifact file a single text output measured, if its name does not say.")] = None,
        ) -> None:
    """Merge device profile reports into the manifest under their device ids."""
    before = read_manifest(bundle).get("policy")
    result = ingest_reports(bundle, reports, device_id, device_name, artifact)
    for line in result.merged:
        console.print(f"merged: {line}", highlight=False)
    for line in result.skipped:
        say("skipped:", line)
    console.print(f"{len(result.merged)} merged, {len(result.skipped)} skipped"
                  + ("" if result.merged else "; manifest unchanged"))
    if result.merged:
        for line in policy_lines(before, result.manifest):
            console.print(line, highlight=False, soft_wrap=True)
        _stale_signature_note(bundle)


@app.command()
def report(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
        out: Annotated[Path, typer.Option("--out", help="HTML file to write (self-contained, works offline).")] = Path(
            "report.html"),
        ) -> None:
    """Write a self-contained HTML report: the policy (which variant runs when), accuracy vs latency
    per device and runtime, and every artifact in a filterable table."""
    check_out_file(out, inputs=(bundle,))  # never inside a bundle: not over its manifest, not beside it

    result = write_report(bundle, out)
    console.print(f"report: {result.html} ({result.bytes / 2**20:.1f} MB, opens offline)", highlight=False)
