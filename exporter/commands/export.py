"""`slimvit variants`, `export` and `demo`: the checkpoint to bundle commands, and their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from exporter.commands.common import (
    CheckpointArg,
    EmaOpt,
    FormatOpt,
    HeadsOpt,
    KeepOpt,
    ResOpt,
    SlicingOpt,
    WidthsOpt,
    app,
    console,
    load_checkpoint,
    out_console,
    parse_grid,
    progress_bar,
    progress_bars,
)


@app.command()
def variants(checkpoint: CheckpointArg, widths: WidthsOpt = "0.25,0.5,1.0",
             keep_rates: KeepOpt = "1.0,0.7,0.5", resolutions: ResOpt = None,
             checkpoint_format: FormatOpt = "auto", num_heads: HeadsOpt = None,
             slicing: SlicingOpt = None, ema: EmaOpt = False) -> None:
    """Print the variant grid of a checkpoint with dims, params and MACs."""
    from exporter.api import describe_variants

    loaded = load_checkpoint(checkpoint, checkpoint_format, num_heads, slicing, ema)
    rows = describe_variants(loaded.model, parse_grid(widths, keep_rates, resolutions))
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
           precisions: Annotated[str, typer.Option(
               "--precisions", help="fp32,fp16,int8,int8-dynamic,int8-xnnpack,int8-full,int8-weights,palettized")] = "fp32",
           calibration: Annotated[str | None, typer.Option(
               "--calibration", help="builtin, an image directory or an .npz with normalized x.")] = None,
           calibration_samples: Annotated[int, typer.Option("--calibration-samples")] = 128,
           calibration_method: Annotated[str, typer.Option(
               "--calibration-method", help="minmax, entropy or percentile.")] = "minmax",
           max_drop: Annotated[float, typer.Option(
               "--max-drop", help="Allowed top-1 drop vs FP32 in p.p.; over it: retry, then leave out.")] = 1.0,
           int8_target: Annotated[str, typer.Option(
               "--int8-target", help="CPU int8 recipes are tuned for: arm-dotprod (phones), x86-vnni, "
                                     "x86-avx2 or portable.")] = "arm-dotprod",
           policy: Annotated[Path | None, typer.Option(
               "--policy", help="Switching policy (JSON/YAML) merged over the default; docs/policy.md.")] = None,
           nhwc: Annotated[bool, typer.Option("--nhwc", help="TFLite input in NHWC (camera) layout.")] = False,
           keep_going: Annotated[bool, typer.Option(
               "--keep-going", help="Leave out artifacts that fail; finish the rest, list failures.")] = False,
           coreml_target: Annotated[str, typer.Option(
               "--coreml-target", help="Core ML minimum deployment target (iOS16..18, macOS13..15).")] = "iOS17",
           resume: Annotated[bool, typer.Option(
               "--resume", help="Reuse artifacts a killed or earlier export finished (artifact cache).")] = False,
           cache_dir: Annotated[Path | None, typer.Option(
               "--cache-dir", help="Artifact cache (default: .OUT.slimvit-cache beside --out).")] = None,
           ) -> None:
    """Export every variant of the grid as validated artifacts plus manifest.json."""
    from exporter.api import export_checkpoint_bundle

    loaded = load_checkpoint(checkpoint, checkpoint_format, num_heads, slicing, ema)
    grid = parse_grid(widths, keep_rates, resolutions)
    fmt_list = [f.strip() for f in formats.split(",") if f.strip()]
    n = len(grid.subnets(loaded.model.cfg)) * len(fmt_list)
    from exporter.bundle import IncompleteBundleError

    try:
        with progress_bar(n, "export") as step:
            manifest = export_checkpoint_bundle(
                loaded, grid, out, fmt_list, eval_data, progress=step, precisions=precisions,
                calibration=calibration, calibration_samples=calibration_samples,
                calibration_method=calibration_method, max_drop=max_drop / 100,
                warn=lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False), policy=policy,
                nhwc=nhwc, keep_going=keep_going, coreml_target=coreml_target, resume=resume,
                cache_dir=cache_dir, int8_target=int8_target)
    except IncompleteBundleError as e:  # --keep-going: show what was written, then the failures
        out_console.print(variant_table(e.manifest, f"bundle {out} (incomplete)"))
        for variant, fmt, why in e.failures:
            console.print(f"[red]failed:[/] {variant} {fmt}: {why}", highlight=False, soft_wrap=True)
        raise
    out_console.print(variant_table(manifest, f"bundle {out}"))
    print_precisions(manifest)


@app.command()
def demo(out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
         epochs: Annotated[int | None, typer.Option(
             "--epochs", help="Training epochs (default: the demo recipe's).")] = None) -> None:
    """Train a slimmable ViT on the built-in digits set, export and evaluate every variant."""
    import dataclasses

    from exporter.demo import DEMO_FORMATS, DEMO_GRID, DEMO_MODEL, DEMO_TRAIN, run_demo

    train = dataclasses.replace(DEMO_TRAIN, epochs=epochs or DEMO_TRAIN.epochs)
    n_art = len(DEMO_GRID.subnets(DEMO_MODEL)) * len(DEMO_FORMATS)
    with progress_bars((train.epochs, "train"), (n_art, "export")) as (step, export_step):
        result = run_demo(out, train, progress=export_step, formats=DEMO_FORMATS,
                          log=lambda r: step(f"epoch {r['epoch']} loss {r['loss']:.3f}"))
    out_console.print(variant_table(result.manifest, f"bundle {result.bundle}"))
    print_precisions(result.manifest)
    console.print(f"checkpoint: {result.checkpoint}\nbundle:     {result.bundle}/manifest.json")


def variant_table(manifest: dict[str, Any], title: str) -> Table:
    """One row per artifact of the bundle (one per variant without artifacts)."""
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
                          _max_diff(a["validation"]),
                          "-" if acc is None else f"{100 * acc:.1f}%")
    return table


def _max_diff(validation: dict[str, Any]) -> str:
    """The max abs diff, or 'checked' for an artifact validated without running (Core ML off macOS)."""
    diff = validation.get("max_abs_diff")
    return "checked" if diff is None else f"{diff:.1e}"


def precision_table(manifest: dict[str, Any]) -> Table | None:
    """Accuracy of every artifact against the FP32 PyTorch variant; None without precisions."""
    if "calibration" not in manifest:
        return None
    cal = manifest["calibration"]
    table = Table(title=f"precisions (calibration: {cal['source']}, {cal['samples']} samples, "
                        f"{cal['method']}; budget {100 * cal.get('max_drop', 0):.1f} p.p.)")
    for col in ("variant", "format", "precision", "KB", "top-1", "drop p.p.", "agreement", "float ops",
                "measured by"):
        table.add_column(col, justify="left" if col in ("variant", "format", "precision", "float ops",
                                                        "measured by") else "right")
    for v in manifest["variants"]:
        for a in v["artifacts"]:
            acc, val = a.get("accuracy", {}), a["validation"]
            agree = acc.get("agreement", val.get("agreement"))
            drop = acc.get("drop")
            table.add_row(v["id"], a["format"], a["precision"], f"{a['bytes'] / 1024:.0f}",
                          "-" if "top1" not in acc else f"{100 * acc['top1']:.1f}%",
                          "-" if drop is None else f"{100 * drop:+.2f}",
                          "-" if agree is None else f"{100 * agree:.1f}%",
                          ",".join(a.get("quantization", {}).get("float_ops", [])) or "-",
                          acc.get("method", val["method"]))
    return table


def print_precisions(manifest: dict[str, Any]) -> None:
    """The precision table, then every precision left out of the bundle and why."""
    table = precision_table(manifest)
    if table is None:
        return
    out_console.print(table)
    for e in manifest["calibration"].get("excluded", []):
        console.print(f"[yellow]left out:[/] {e['variant']} {e['format']} {e['precision']}: {e['reason']}",
                      highlight=False, soft_wrap=True)
