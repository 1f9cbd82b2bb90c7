"""`slimvit profile`, `ingest` and `report`: latency measured here or on devices, and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exporter.commands.common import app, console, out_console, progress_bar


@app.command()
def profile(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
        runtime: Annotated[str | None, typer.Option(
            "--runtime", help="Comma-separated runtimes (onnxruntime, litert); default: all installed.")] = None,
        threads: Annotated[int, typer.Option("--threads", help="Intra-op threads (0 = runtime default).")] = 1,
        runs: Annotated[int, typer.Option("--runs", help="Timed inferences per artifact.")] = 50,
        warmup: Annotated[int, typer.Option("--warmup", help="Untimed inferences after the first.")] = 5,
        device_id: Annotated[str | None, typer.Option("--device-id", help="Override the host's device id.")] = None,
        ) -> None:
    """Measure latency, load time and memory of every artifact here; write them into the manifest."""
    from exporter.profile import host_device, plan_profile, profile_bundle

    names = [r.strip() for r in runtime.split(",") if r.strip()] if runtime is not None else None
    n = len(plan_profile(bundle, names))
    with progress_bar(n, "profile") as step:
        manifest = profile_bundle(bundle, names, threads, runs, warmup, device_id, progress=step,
                                  warn=lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False))
    dev = device_id or host_device()[0]
    table = Table(title=f"latency on {dev} ({runs} runs, {threads} thread(s))")
    for col in ("variant", "artifact", "p50 ms", "p90 ms", "p99 ms", "load ms", "first ms", "peak MB", "front"):
        table.add_column(col, justify="left" if col in ("variant", "artifact") else "right")
    for v in manifest["variants"]:
        for a in v["artifacts"]:
            lat = a.get("latency", {}).get(dev)
            if lat:
                front = v["id"] in manifest["pareto"].get(dev, {}).get(a["precision"], [])
                table.add_row(v["id"], f"{a['format']} {a['precision']}", *(f"{lat[k]:.3f}" for k in (
                    "p50_ms", "p90_ms", "p99_ms", "load_ms", "first_ms")), f"{lat['peak_mb']:.1f}",
                    "yes" if front else "")
    out_console.print(table)
    _stale_signature_note(bundle)


def _stale_signature_note(bundle: Path) -> None:
    from exporter.verify import SIGNATURE_NAME

    if (bundle / SIGNATURE_NAME).exists():
        console.print(f"[yellow]warning:[/] manifest.json changed, so {SIGNATURE_NAME} no longer matches it; "
                      f"re-sign the bundle with `slimvit sign`", highlight=False)


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
    from exporter.ingest import ingest_reports

    result = ingest_reports(bundle, reports, device_id, device_name, artifact)
    for line in result.merged:
        console.print(f"merged: {line}", highlight=False)
    for line in result.skipped:
        console.print(f"[yellow]skipped:[/] {line}", highlight=False, soft_wrap=True)
    console.print(f"{len(result.merged)} merged, {len(result.skipped)} skipped"
                  + ("" if result.merged else "; manifest unchanged"))
    if result.merged:
        _stale_signature_note(bundle)


@app.command()
def report(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
        out: Annotated[Path, typer.Option("--out", help="HTML file to write; PNG charts go beside it.")] = Path(
            "report.html"),
        ) -> None:
    """Write a self-contained HTML report: variant table, accuracy vs latency/MACs, sizes."""
    from exporter.report import write_report

    result = write_report(bundle, out)
    console.print(f"report: {result.html}")
    for path in result.charts.values():
        console.print(f"chart:  {path}")
