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
def progress_bars(*stages: tuple[int, str]) -> Iterator[list[Any]]:
    """Rich progress bars, one per ``(total, what)`` stage, in one live display; yields one
    callback per stage that advances its bar and shows a description."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        steps, tasks, started = [], [], set()
        for total, what in stages:
            task = bar.add_task(what, total=total)
            tasks.append((task, total, what))

            def step(desc: str, task: Any = task, what: str = what) -> None:
                if task in started:  # a call announces the next item: the previous one is done
                    bar.advance(task)
                started.add(task)
                bar.update(task, description=f"{what}: {desc}")

            steps.append(step)
        yield steps
        for task, total, what in tasks:
            bar.update(task, completed=total, description=f"{what}: done")


@contextmanager
def progress_bar(total: int, what: str) -> Iterator[Any]:
    """A rich progress bar; yields a callback that advances it with a description."""
    with progress_bars((total, what)) as (step,):
        yield step


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
                          _max_diff(a["validation"]),
                          "-" if acc is None else f"{100 * acc:.1f}%")
    return table


def _max_diff(validation: dict[str, Any]) -> str:
    """The max abs diff, or 'checked' for an artifact validated without running (Core ML off macOS)."""
    diff = validation.get("max_abs_diff")
    return "checked" if diff is None else f"{diff:.1e}"


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
           precisions: Annotated[str, typer.Option(
               "--precisions", help="fp32,fp16,int8,int8-dynamic,int8-weights,palettized")] = "fp32",
           calibration: Annotated[str | None, typer.Option(
               "--calibration", help="builtin, an image directory or an .npz with normalized x.")] = None,
           calibration_samples: Annotated[int, typer.Option("--calibration-samples")] = 128,
           calibration_method: Annotated[str, typer.Option(
               "--calibration-method", help="minmax, entropy or percentile.")] = "minmax",
           max_drop: Annotated[float, typer.Option(
               "--max-drop", help="Allowed top-1 drop vs FP32 in p.p.; over it: retry, then leave out.")] = 1.0,
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

    loaded = _load(checkpoint, checkpoint_format, num_heads, slicing, ema)
    grid = _grid(widths, keep_rates, resolutions)
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
                cache_dir=cache_dir)
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


@app.command()
def verify(bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
           public_key: Annotated[Path | None, typer.Option(
               "--public-key", help="Ed25519 public key (PEM); manifest.sig must verify.")] = None,
           min_bundle_version: Annotated[int | None, typer.Option(
               "--min-bundle-version", help="Newest bundle_version seen before; older is a rollback.")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
           ) -> None:
    """Check a bundle as an app must before loading it; exit 1 listing every problem."""
    import json

    from exporter.verify import verify_bundle

    report = verify_bundle(bundle, public_key, min_bundle_version=min_bundle_version)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for w in report.warnings:
            console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        for p in report.problems:
            console.print(f"[red]problem:[/] {p}", highlight=False, soft_wrap=True)
        signed = {None: "signature not checked", True: "signature valid", False: "signature INVALID"}
        verdict = "[green]ok[/]" if report.ok else f"[red]FAILED ({len(report.problems)} problem(s))[/]"
        console.print(f"{bundle}: {verdict}: {report.artifacts} file(s) checked, bundle_version "
                      f"{report.bundle_version}, {signed[report.signed]}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def sign(bundle: Annotated[Path, typer.Argument(help="Bundle directory (must verify first).")],
         key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM).")],
         expires: Annotated[str | None, typer.Option(
             "--expires", help="Expiry written into the manifest: 30d, 12h or an ISO 8601 time.")] = None,
         bundle_version: Annotated[int | None, typer.Option(
             "--bundle-version", help="New bundle_version written into the manifest.")] = None,
         ) -> None:
    """Sign a bundle's manifest with Ed25519 (writes manifest.sig)."""
    from exporter.signing import sign_bundle

    path = sign_bundle(bundle, key, expires=expires, bundle_version=bundle_version)
    console.print(f"signed: {path}")


@app.command()
def keygen(key: Annotated[Path, typer.Argument(help="Private key file to create (public: KEY.pub).")]) -> None:
    """Create an Ed25519 key pair for `slimvit sign` (set $SLIMVIT_KEY_PASSPHRASE to encrypt it)."""
    from exporter.signing import generate_keypair

    private, public = generate_keypair(key)
    console.print(f"private key: {private} (keep it secret)\npublic key:  {public} (ship it in the app)")


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


@app.command()
def train(
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the checkpoint, logs and state.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="'digits' or an ImageFolder directory.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="sandwich, hydravit, scala or supervit.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML or TOML file; flags override it.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="A run folder (or its state.pt) to continue.")] = None,
    teacher: Annotated[str | None, typer.Option("--teacher", help="Checkpoint to distil from.")] = None,
    separate: Annotated[bool, typer.Option("--separate", help="Train each width as its own model.")] = False,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch size.")] = None,
    widths: Annotated[str | None, typer.Option("--widths", help="Width ratios to train.")] = None,
    keep_rates: Annotated[str | None, typer.Option("--keep-rates", help="Token keep rates to train.")] = None,
    resolutions: Annotated[str | None, typer.Option("--resolutions", help="Input sizes to train.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    token_reducer: Annotated[str | None, typer.Option(
        "--token-reducer", help="topk, or tsm (SiT's Token Slimming Module; with --recipe sit).")] = None,
) -> None:
    """Train one slimmable ViT whose every variant works (or, with --separate, one per width)."""
    from exporter.config import parse_floats, parse_ints

    if recipe == "sit" or token_reducer is not None:
        return train_sit(out, teacher, token_reducer, recipe, epochs, lr, batch_size, seed, widths, keep_rates)
    from exporter.training import SeparateResult, run_training

    overrides = dict(dataset=dataset, recipe=recipe, epochs=epochs, teacher=teacher, lr=lr,
                     batch_size=batch_size, seed=seed,
                     widths=parse_floats(widths, "--widths") if widths else None,
                     keep_rates=parse_floats(keep_rates, "--keep-rates") if keep_rates else None,
                     resolutions=parse_ints(resolutions, "--resolutions") if resolutions else None)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("train", total=None, stats="")
        last: dict[str, Any] = {}

        def progress(e: dict[str, Any]) -> None:
            if e["event"] == "epoch":
                last.update({k: v for k, v in e.items() if k.startswith("heldout_")})
                return
            held = " ".join(f"{k[8:]} {100 * v:.1f}%" for k, v in last.items())
            bar.update(task, total=e["epochs"] * e["steps"], completed=(e["epoch"] - 1) * e["steps"] + e["step"],
                       description=f"train epoch {e['epoch']}/{e['epochs']}",
                       stats=f"loss {e['loss']:.3f}  held-out {held}")

        result = run_training(config, out, resume, separate, progress, **overrides)
    runs = result.per_width.values() if isinstance(result, SeparateResult) else [result]
    accs = {k: v for r in runs for k, v in r.accuracies.items()}
    if not accs:
        return  # a data-parallel worker: rank 0 prints the table
    for r in runs:
        for note in r.notes:
            console.print(f"[yellow]data:[/] {note}", highlight=False)
    table = Table(title=f"held-out top-1 per variant ({'separate models' if separate else 'one slimmable model'}, "
                        f"{result.seconds:.1f} s)")
    table.add_column("variant")
    table.add_column("top-1", justify="right")
    for k, v in accs.items():
        table.add_row(k, f"{100 * v:.1f}%")
    out_console.print(table)
    if out is not None:
        console.print(f"checkpoint, log.jsonl, config.yaml, state.pt: {out}")


@app.command("select")
def select_variant(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory (or its manifest.json).")],
        thermal: Annotated[str, typer.Option("--thermal", help="Thermal state name of the platform.")],
        battery: Annotated[float, typer.Option("--battery", help="Battery level in percent, 0-100.")],
        charging: Annotated[bool, typer.Option("--charging", help="Plugged in.")] = False,
        low_power: Annotated[bool, typer.Option("--low-power", help="OS low-power mode is on.")] = False,
        platform: Annotated[str, typer.Option("--platform", help="android, ios or web.")] = "android",
        device: Annotated[str | None, typer.Option("--device", help="Device id for latency budgets.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help='Print {"variant": ID, "reason": TEXT}.')] = False,
        ) -> None:
    """The variant the bundle's policy picks for a device state (docs/policy.md)."""
    import json

    from exporter.policy_bundle import select

    c = select(bundle, thermal, battery, charging, low_power, platform, device)
    if as_json:
        print(json.dumps({"variant": c.variant, "reason": c.reason}))
    else:
        print(f"{c.variant}  (tier {c.tier}, rule {c.rule}: {c.reason})")


policy_app = typer.Typer(no_args_is_help=True, help="The switching policy's conformance vectors.")
app.add_typer(policy_app, name="policy")


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
    from exporter.policy_vectors import write_vectors

    doc = write_vectors(out, bundle, reference)
    steps = sum(len(c["steps"]) for c in doc["cases"])
    console.print(f"{out}: {len(doc['cases'])} cases, {steps} steps, {len(doc['policy']['tiers'])} tiers")


@policy_app.command("update")
def policy_update(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
        policy: Annotated[Path | None, typer.Option(
            "--policy", help="Policy file (JSON/YAML) merged over the default.")] = None,
        ) -> None:
    """Recompute a bundle's policy and conformance vectors (e.g. after `slimvit profile`)."""
    from exporter.policy_bundle import update_policy

    p = update_policy(bundle, policy)
    console.print(f"{bundle}: policy with {len(p['tiers'])} tiers: {', '.join(p['tiers'])}")


@app.command()
def simulate(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory (or its manifest.json).")],
        trace: Annotated[Path, typer.Argument(help="CSV with t_s,battery,charging,thermal,low_power.")],
        out: Annotated[Path, typer.Option("--out", help="Directory for summary.json and timeline.png.")],
        platform: Annotated[str, typer.Option("--platform", help="Platform of the trace's thermal names.")
                            ] = "android",
        device: Annotated[str | None, typer.Option("--device", help="Device id for latency.")] = None,
        fps: Annotated[float, typer.Option("--fps", help="Inferences per second (energy proxy).")] = 10.0,
        ) -> None:
    """Replay a device trace through the bundle's policy; write summary.json and a timeline plot."""
    from exporter.simulate import simulate_bundle

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


@policy_app.command("check")
def policy_check(vectors: Annotated[Path, typer.Argument(help="A policy vectors JSON file.")]) -> None:
    """Replay a vectors file through the reference engine; exit 1 listing every mismatch."""
    from exporter.policy_vectors import check_vectors, read_vectors

    doc = read_vectors(vectors)
    bad = check_vectors(doc)
    for b in bad:
        console.print(f"[red]mismatch:[/] {b}", highlight=False, soft_wrap=True)
    console.print(f"{vectors}: {len(doc['cases'])} cases, {len(bad)} mismatch(es)")
    if bad:
        raise typer.Exit(1)


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


@app.command()
def search(
    checkpoint: CheckpointArg,
    budget_macs: Annotated[float, typer.Option("--budget-macs", help="MAC budget as a fraction of the full model.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the searched checkpoint.")],
    dataset: Annotated[str, typer.Option("--dataset", help="'builtin', an image folder or an .npz.")] = "builtin",
    search_epochs: Annotated[int, typer.Option("--search-epochs", help="Epochs of mask learning.")] = 4,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Epochs of fine-tuning.")] = 4,
    limit: Annotated[int, typer.Option("--limit", help="Use only the first N samples (0: all).")] = 0,
) -> None:
    """ViT-Slim: search a non-uniform structure within a MAC budget, fine-tune it, save it."""
    from exporter.vitslim import SearchConfig, run_search

    cfg = SearchConfig(budget_macs=budget_macs, search_epochs=search_epochs, finetune_epochs=finetune_epochs)
    result = run_search(checkpoint, budget_macs, out, dataset, cfg, limit,
                        log=lambda r: console.print(f"{r['stage']} epoch {r['epoch']}: loss {r['loss']:.3f}"))
    table = Table(title=f"searched structure: {result.macs_fraction:.3f} of the full MACs")
    for col in ("layer", "heads", "head dim", "MLP hidden"):
        table.add_column(col, justify="right")
    for i, d in enumerate(result.model.structure.layer_dims()):
        table.add_row(str(i), str(d.num_heads), str(d.head_dim), str(d.mlp_hidden))
    out_console.print(table)
    kept = len(result.model.structure.token_positions)
    top1 = "" if result.top1 is None else f", held-out top-1 {100 * result.top1:.1f}%"
    console.print(f"tokens kept: {kept}{top1}\ncheckpoint: {result.checkpoint}", highlight=False)


bundle_app = typer.Typer(no_args_is_help=True, help="Install a bundle into the demo apps.")
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("install-android")
def bundle_install_android(bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
                           sample: Annotated[Path | None, typer.Option(help="Image to classify.")] = None) -> None:
    """Verify BUNDLE and copy it (TFLite artifacts) into android_demo's assets."""
    from exporter.install import install_bundle

    out_console.print(f"installed {install_bundle(bundle, 'android', sample=sample)}")


@bundle_app.command("install-ios")
def bundle_install_ios(bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
                       sample: Annotated[Path | None, typer.Option(help="Image to classify.")] = None) -> None:
    """Verify BUNDLE and copy it (Core ML artifacts) into ios_demo's resources."""
    from exporter.install import install_bundle

    out_console.print(f"installed {install_bundle(bundle, 'ios', sample=sample)}")


def train_sit(out: Path | None, teacher: str | None, token_reducer: str | None, recipe: str | None,
              epochs: int | None, lr: float | None, batch_size: int | None, seed: int | None,
              widths: str | None, keep_rates: str | None) -> None:
    """`slimvit train --recipe sit --token-reducer tsm --teacher CKPT`: SiT on the built-in digits."""
    from exporter.config import parse_floats
    from exporter.errors import ConfigError, check_choice
    from exporter.sit import SitConfig, run_sit

    check_choice("token reducer", token_reducer or "tsm", ("topk", "tsm"))
    if recipe != "sit" or token_reducer != "tsm" or not teacher or out is None:
        raise ConfigError("SiT training is --recipe sit --token-reducer tsm --teacher CHECKPOINT --out DIR "
                           f"(got recipe {recipe}, token reducer {token_reducer}, teacher {teacher}, out {out})")
    given = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    cfg = SitConfig(**{k: v for k, v in given.items() if v is not None})
    result = run_sit(teacher, out, parse_floats(keep_rates or "1.0,0.7,0.5", "--keep-rates"),
                   parse_floats(widths or "1.0", "--widths"), cfg,
                   log=lambda r: console.print(f"sit epoch {r['epoch']}: loss {r['loss']:.3f} (ce {r['ce']:.3f}, "
                                               f"kl {r['kl']:.3f}, token {r['token']:.4f})", highlight=False))
    table = Table(title="held-out top-1 per variant (SiT, Token Slimming Modules)")
    table.add_column("variant")
    table.add_column("top-1", justify="right")
    for k, v in result.accuracies.items():
        table.add_row(k, f"{100 * v:.1f}%")
    out_console.print(table)
    console.print(f"checkpoint: {result.checkpoint}", highlight=False)


# typer >= 0.24 vendors click: catch both its exception classes and click's own.
_CLICK_ERRORS = tuple({c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"}
                      | {click.exceptions.ClickException})
_EXITS = (typer.Exit, click.exceptions.Exit)
_ABORTS = (typer.Abort, click.exceptions.Abort, KeyboardInterrupt)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        # Without standalone mode click returns a `typer.Exit` code instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except SlimvitError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except _CLICK_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)
    except _ABORTS:
        console.print("aborted")
        sys.exit(130)
    except _EXITS as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
