"""The `slimvit` command line. Each command parses its flags and calls one library function."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from exporter.errors import SlimvitError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Turn one slimmable ViT into the validated, switchable bundle a phone app ships.")
console = Console(stderr=True)
# Tables stay readable when piped (rich would squeeze them into 80 columns).
out_console = Console(width=None if sys.stdout.isatty() else 160)

CheckpointArg = Annotated[Path, typer.Argument(help="Checkpoint file (.safetensors, .pth, .pt, .bin).")]
FormatOpt = Annotated[str, typer.Option("--checkpoint-format", help="auto, or a checkpoint format name.")]
HeadsOpt = Annotated[int | None, typer.Option("--num-heads", help="Override the inferred head count.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Load the EMA weights of a training checkpoint.")]
SlicingOpt = Annotated[str | None, typer.Option("--slicing", help="heads (HydraViT) or ratio (Scala).")]
WidthsOpt = Annotated[str, typer.Option("--widths", help="Width ratios of the full embed dim.")]
KeepOpt = Annotated[str, typer.Option("--keep-rates", help="Token keep rates.")]
ResOpt = Annotated[str | None, typer.Option("--resolutions", help="Input sizes (default: the model's).")]


@contextmanager
def progress_bar(total: int, what: str) -> Iterator[Any]:
    """A rich progress bar; yields a callback that advances it with a description."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(what, total=total)
        first = [True]

        def step(desc: str) -> None:
            if not first[0]:
                bar.advance(task)
            first[0] = False
            bar.update(task, description=f"{what}: {desc}")

        yield step
        bar.update(task, completed=total, description=f"{what}: done")


def _load(checkpoint: Path, checkpoint_format: str, num_heads: int | None, slicing: str | None,
          ema: bool = False):
    from exporter.api import load

    loaded = load(checkpoint, checkpoint_format, num_heads=num_heads, slicing=slicing,
                  warn=lambda m: console.print(f"[yellow]warning:[/] {m}"), **({"ema": True} if ema else {}))
    how = (" (detected from its keys)" if checkpoint_format == "auto" else "") + (", EMA weights" if ema else "")
    console.print(f"loaded {checkpoint.name} as [bold]{loaded.source_format}[/]{how}: "
                  f"embed {loaded.model.cfg.embed_dim}, depth {loaded.model.cfg.depth}, "
                  f"heads {loaded.model.cfg.num_heads}, slicing {loaded.model.cfg.slicing}")
    return loaded


def _grid(widths: str, keep_rates: str, resolutions: str | None):
    from exporter.config import VariantGrid, parse_floats, parse_ints

    return VariantGrid(parse_floats(widths, "--widths"), parse_floats(keep_rates, "--keep-rates"),
                       parse_ints(resolutions, "--resolutions") if resolutions else None)


def variant_table(manifest: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    for col in ("variant", "embed", "heads", "keep", "res", "params", "MMACs", "artifact", "KB",
                "max diff", "top-1"):
        table.add_column(col, justify="left" if col in ("variant", "artifact") else "right")
    for v in manifest["variants"]:
        for i, a in enumerate(v["artifacts"] or [None]):
            head = [v["id"], str(v["embed_dim"]), str(v["num_heads"]), f"{v['keep_rate']:g}",
                    str(v["resolution"]), f"{v['params']:,}", f"{v['macs'] / 1e6:.2f}"]
            if i:
                head = [""] * len(head)
            if a is None:
                table.add_row(*head, "-", "", "", "")
                continue
            acc = a.get("accuracy", {}).get("top1")
            table.add_row(*head, f"{a['format']} {a['precision']}", f"{a['bytes'] / 1024:.0f}",
                          f"{a['validation']['max_abs_diff']:.1e}",
                          "-" if acc is None else f"{100 * acc:.1f}%")
    return table


@app.command()
def variants(checkpoint: CheckpointArg, widths: WidthsOpt = "0.25,0.5,1.0",
             keep_rates: KeepOpt = "1.0,0.7,0.5", resolutions: ResOpt = None,
             checkpoint_format: FormatOpt = "auto", num_heads: HeadsOpt = None,
             slicing: SlicingOpt = None, ema: EmaOpt = False) -> None:
    """Print the variant grid of a checkpoint with dims, params and MACs."""
    from exporter.api import describe_variants

    loaded = _load(checkpoint, checkpoint_format, num_heads, slicing, ema)
    rows = describe_variants(loaded.model, _grid(widths, keep_rates, resolutions))
    table = Table(title=f"{len(rows)} variants of {checkpoint.name}")
    for col in rows[0]:
        table.add_column(col, justify="left" if col == "id" else "right")
    for r in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in r.values()))
    out_console.print(table)


@app.command()
def export(checkpoint: CheckpointArg,
           out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
           widths: WidthsOpt = "0.25,0.5,1.0", keep_rates: KeepOpt = "1.0,0.7,0.5",
           resolutions: ResOpt = None,
           formats: Annotated[str, typer.Option("--formats", help="Export formats.")] = "onnx",
           checkpoint_format: FormatOpt = "auto", num_heads: HeadsOpt = None,
           slicing: SlicingOpt = None, ema: EmaOpt = False,
           eval_data: Annotated[str | None, typer.Option(
               "--eval-data", help="'builtin' to measure held-out accuracy on the digits set.")] = None,
           ) -> None:
    """Export every variant of the grid as validated artifacts plus manifest.json."""
    from exporter.api import export_checkpoint_bundle

    loaded = _load(checkpoint, checkpoint_format, num_heads, slicing, ema)
    grid = _grid(widths, keep_rates, resolutions)
    fmt_list = [f.strip() for f in formats.split(",") if f.strip()]
    n = len(grid.subnets(loaded.model.cfg)) * len(fmt_list)
    with progress_bar(n, "export") as step:
        manifest = export_checkpoint_bundle(loaded, grid, out, fmt_list, eval_data, progress=step)
    out_console.print(variant_table(manifest, f"bundle {out}"))


@app.command()
def demo(out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
         epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 60) -> None:
    """Train a slimmable ViT on the built-in digits set, export and evaluate every variant."""
    import dataclasses

    from exporter.demo import DEMO_GRID, DEMO_MODEL, DEMO_TRAIN, run_demo

    train = dataclasses.replace(DEMO_TRAIN, epochs=epochs)
    n_art = len(DEMO_GRID.subnets(DEMO_MODEL))
    with progress_bar(train.epochs, "train") as step:
        result = run_demo(out, train, progress=None,
                          log=lambda r: step(f"epoch {r['epoch']} loss {r['loss']:.3f}"))
    del n_art
    out_console.print(variant_table(result.manifest, f"bundle {result.bundle}"))
    console.print(f"checkpoint: {result.checkpoint}\nbundle:     {result.bundle}/manifest.json")


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
        manifest = profile_bundle(bundle, names, threads, runs, warmup, device_id, progress=step)
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


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except SlimvitError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.print("aborted")
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
