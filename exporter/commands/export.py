"""`slimvit variants`, `export` and `demo`: the checkpoint to bundle commands, and their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from exporter.api import describe_variants, export_checkpoint_bundle, format_table
from exporter.bundle.export import IncompleteBundleError
from exporter.commands.cache import print_cache_line
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
    say,
)
from exporter.convert.formats import FORMATS
from exporter.convert.quantize.registry import SENSITIVE_OPS, precision_names
from exporter.demo import DEMO_FORMATS, DEMO_GRID, DEMO_MODEL, DEMO_TRAIN, run_demo
from exporter.gate.outputs import check_out_dir
from exporter.nn.grid_notes import width_notes


@app.command()
def variants(checkpoint: CheckpointArg, widths: WidthsOpt = "0.25,0.5,1.0",
             keep_rates: KeepOpt = "1.0,0.7,0.5", resolutions: ResOpt = None,
             checkpoint_format: FormatOpt = "auto", num_heads: HeadsOpt = None,
             slicing: SlicingOpt = None, ema: EmaOpt = False) -> None:
    """Print the variant grid of a checkpoint with dims, params and MACs."""
    loaded = load_checkpoint(checkpoint, checkpoint_format, num_heads, slicing, ema)
    grid = parse_grid(widths, keep_rates, resolutions)
    print_grid_notes(loaded.model.cfg, grid)
    rows = describe_variants(loaded.model, grid)
    table = Table(title=f"{len(rows)} variants of {checkpoint.name}; tokens: CLS + patches entering the "
                        f"first block, then after each prune (keep rates compound)")
    cols = {"id": "id", "width": "width", "embed_dim": "embed", "num_heads": "heads", "head_dim": "head dim",
            "mlp_hidden": "mlp", "keep_rate": "keep", "resolution": "res", "tokens": "tokens",
            "params": "params", "macs": "MMACs"}
    for key, col in cols.items():
        table.add_column(col, justify="left" if key in ("id", "tokens") else "right")
    for r in rows:
        cells = {**r, "width": f"{r['width']:.3g}", "keep_rate": f"{r['keep_rate']:g}",
                 "params": f"{r['params']:,}", "macs": f"{r['macs'] / 1e6:.2f}"}
        table.add_row(*(str(cells[k]) for k in cols))
    out_console.print(table)


def print_grid_notes(cfg: Any, grid: Any) -> None:
    """Say how requested widths snapped, and warn when two collapse into one variant."""
    info, warnings = width_notes(cfg, grid)
    for line in info:
        console.print(line, highlight=False, soft_wrap=True)
    for line in warnings:
        say("warning:", line)


@app.command()
def export(checkpoint: CheckpointArg,
           out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
           widths: WidthsOpt = "0.25,0.5,1.0", keep_rates: KeepOpt = "1.0,0.7,0.5",
           resolutions: ResOpt = None,
           formats: Annotated[str, typer.Option(
               "--formats", help=f"Export formats: {', '.join(FORMATS)} (slimvit formats).")] = "onnx",
           checkpoint_format: FormatOpt = "auto", num_heads: HeadsOpt = None,
           slicing: SlicingOpt = None, ema: EmaOpt = False,
           eval_data: Annotated[str | None, typer.Option(
               "--eval-data", help="Held-out data for each artifact's top-1: 'builtin' (digits), a folder "
                                   "with one sub-directory per class, or an .npz with x (normalized) and y.")] = None,
           precisions: Annotated[str, typer.Option(
               "--precisions", help=f"{','.join(precision_names())} (per format: slimvit formats).")] = "fp32",
           calibration: Annotated[str | None, typer.Option(
               "--calibration", help="builtin, an image directory or an .npz with normalized x.")] = None,
           calibration_samples: Annotated[int, typer.Option(
               "--calibration-samples", help="Images drawn (with a seed) from --calibration to set int8 "
                                             "activation ranges.")] = 128,
           calibration_method: Annotated[str, typer.Option(
               "--calibration-method", help="minmax, entropy or percentile.")] = "minmax",
           max_drop: Annotated[float, typer.Option(
               "--max-drop", help="Allowed top-1 drop vs FP32 in p.p.; over it: retry, then leave out.")] = 1.0,
           int8_target: Annotated[str, typer.Option(
               "--int8-target", help="CPU int8 recipes are tuned for: arm-dotprod (phones), x86-vnni, "
                                     "x86-avx2 or portable.")] = "arm-dotprod",
           float_ops: Annotated[str, typer.Option(
               "--float-ops", help=f"Op kinds every quantized artifact keeps in float from the first try "
                                   f"({', '.join(SENSITIVE_OPS)}); the retry adds the rest.")] = "",
           policy: Annotated[Path | None, typer.Option(
               "--policy", help="Switching policy (JSON/YAML) merged over the default; docs/policy.md.")] = None,
           nhwc: Annotated[bool, typer.Option("--nhwc", help="TFLite input in NHWC (camera) layout.")] = False,
           keep_going: Annotated[bool, typer.Option(
               "--keep-going", help="Leave out artifacts that fail; finish the rest, list failures.")] = False,
           coreml_target: Annotated[str, typer.Option(
               "--coreml-target", help="Core ML minimum deployment target (iOS16..18, macOS13..15).")] = "iOS17",
           executorch_backend: Annotated[str, typer.Option(
               "--executorch-backend", help="ExecuTorch delegate: xnnpack, or coreml (fp32 only; "
               "checked structurally off macOS).")] = "xnnpack",
           resume: Annotated[bool, typer.Option(
               "--resume", help="Reuse artifacts a killed or earlier export finished (artifact cache).")] = False,
           cache_dir: Annotated[Path | None, typer.Option(
               "--cache-dir", help="Artifact cache (default: $SLIMVIT_CACHE_DIR, else "
                            "$XDG_CACHE_HOME/slimvit/artifacts or ~/.cache/slimvit/artifacts).")] = None,
           ) -> None:
    """Export every variant of the grid as validated artifacts plus manifest.json."""
    # before any work: never "", "/", the checkpoint, a file, or a non-empty non-bundle directory
    check_out_dir(out, "bundle", inputs=(checkpoint, policy, calibration if calibration != "builtin" else None))
    loaded = load_checkpoint(checkpoint, checkpoint_format, num_heads, slicing, ema)
    grid = parse_grid(widths, keep_rates, resolutions)
    if getattr(loaded.model, "structure", None) is None:  # a searched structure has no width grid
        print_grid_notes(loaded.model.cfg, grid)
    fmt_list = [f.strip() for f in formats.split(",") if f.strip()]
    n = len(loaded.model.subnets(grid)) * len(fmt_list)
    try:
        with progress_bar(n, "export") as step:
            manifest = export_checkpoint_bundle(
                loaded, grid, out, fmt_list, eval_data, progress=step, precisions=precisions,
                calibration=calibration, calibration_samples=calibration_samples,
                calibration_method=calibration_method, max_drop=max_drop / 100,
                warn=lambda m: say("warning:", m), policy=policy,
                nhwc=nhwc, keep_going=keep_going, coreml_target=coreml_target,
                executorch_backend=executorch_backend, resume=resume,
                cache_dir=cache_dir, int8_target=int8_target, float_ops=float_ops)
    except IncompleteBundleError as e:  # --keep-going: show what was written, then the failures
        out_console.print(variant_table(e.manifest, f"bundle {out} (incomplete)"))
        for variant, fmt, why in e.failures:
            say("failed:", f"{variant} {fmt}: {why}", "red")
        raise
    out_console.print(variant_table(manifest, f"bundle {out}"))
    print_precisions(manifest)
    print_policy_line(manifest)
    print_cache_line(cache_dir)


@app.command()
def demo(out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
         epochs: Annotated[int | None, typer.Option(
             "--epochs", help="Training epochs (default: the demo recipe's).")] = None) -> None:
    """Train a slimmable ViT on the built-in digits set, export and evaluate every variant."""
    import dataclasses

    check_out_dir(out, "demo")
    # --epochs is honoured as given (the gate refuses 0 and negatives); only None means the default
    train = dataclasses.replace(DEMO_TRAIN, epochs=DEMO_TRAIN.epochs if epochs is None else epochs)
    n_art = len(DEMO_GRID.subnets(DEMO_MODEL)) * len(DEMO_FORMATS)
    with progress_bars((train.epochs, "train"), (n_art, "export")) as (step, export_step):
        result = run_demo(out, train, progress=export_step, formats=DEMO_FORMATS,
                          log=lambda r: step(f"epoch {r['epoch']} loss {r['loss']:.3f}"))
    out_console.print(variant_table(result.manifest, f"bundle {result.bundle}"))
    print_precisions(result.manifest)
    console.print(f"checkpoint: {result.checkpoint}\nbundle:     {result.bundle}/manifest.json")


@app.command()
def formats() -> None:
    """List the export formats, the precisions each offers and the options only it reads."""
    table = Table(title="export formats (slimvit export --formats ... --precisions ...)")
    for col in ("format", "suffix", "layouts", "runs here", "precisions", "options"):
        table.add_column(col)
    for r in format_table():
        table.add_row(r["format"], r["suffix"] + ("/" if r["directory"] else ""), ",".join(r["layouts"]),
                      "yes" if r["runs_here"] else "no (checked, not run)", ", ".join(r["precisions"]),
                      " ".join(r["options"]) or "-")
    out_console.print(table)


def variant_table(manifest: dict[str, Any], title: str) -> Table:
    """One row per artifact of the bundle (one per variant without artifacts)."""
    table = Table(title=title)
    for col in ("variant", "embed", "heads", "keep", "res", "params", "MMACs", "artifact", "KB",
                "max diff", "top-1"):
        table.add_column(col, justify="left" if col in ("variant", "artifact") else "right")
    table.caption = _empty_column_note(manifest)
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


def print_policy_line(manifest: dict[str, Any]) -> None:
    """Which variants the policy switches between, and what they were chosen by."""
    policy = manifest.get("policy")
    if not policy:
        return
    b = policy.get("basis") or {}
    cost = f"p50 on {b['device']}" if b.get("device") else "MACs until `slimvit profile` measures latency"
    console.print(f"policy: {len(policy['tiers'])} tiers, the front of {b.get('format')} {b.get('precision')} "
                  f"(cost = {cost}): {', '.join(policy['tiers'])}", highlight=False, soft_wrap=True)


def _empty_column_note(manifest: dict[str, Any]) -> str | None:
    """Why a column shows "-": no --eval-data, or a format this host cannot run."""
    arts = [a for v in manifest["variants"] for a in v["artifacts"]]
    if not arts or all("accuracy" in a for a in arts):
        return None
    if not any("accuracy" in a for a in arts):
        return ("top-1 \"-\": no evaluation data; pass --eval-data builtin, a folder with one "
                "sub-directory per class, or an .npz with x and y")
    missing = sorted({a["format"] for a in arts if "accuracy" not in a})
    return (f"top-1 \"-\": {', '.join(missing)} artifacts cannot run on this host (Core ML runs only on "
            f"macOS; their top-1 is measured there)")


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
        say("left out:", f"{e['variant']} {e['format']} {e['precision']}: {e['reason']}")
