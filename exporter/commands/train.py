"""`slimvit train`: one slimmable ViT per recipe (SiT's token slimming is the recipe `sit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from exporter.commands.common import app, console, out_console, say
from exporter.errors import ConfigError, check_choice
from exporter.gate.outputs import check_out_dir
from exporter.nn.config import parse_floats, parse_ints
from exporter.training import RECIPES, SeparateResult, run_training

# SiT fine-tunes a trained teacher: its own defaults where the flags are not given.
SIT_DEFAULTS = {"widths": (1.0,), "epochs": 10, "lr": 5e-4}


@app.command()
def train(
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the checkpoint, logs and state.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="'digits' or an ImageFolder directory.")] = None,
    recipe: Annotated[str | None, typer.Option(
        "--recipe", help=f"{', '.join(RECIPES)} (sit: SiT token slimming, needs --teacher).")] = None,
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
    if out is not None:
        check_out_dir(out, "train", inputs=(config, teacher, dataset if dataset not in (None, "digits") else None))
    overrides = dict(dataset=dataset, recipe=recipe, epochs=epochs, teacher=teacher, lr=lr,
                     batch_size=batch_size, seed=seed,
                     widths=parse_floats(widths, "--widths") if widths else None,
                     keep_rates=parse_floats(keep_rates, "--keep-rates") if keep_rates else None,
                     resolutions=parse_ints(resolutions, "--resolutions") if resolutions else None)
    if token_reducer is not None:
        check_choice("token reducer", token_reducer, ("topk", "tsm"))
        if recipe != "sit":
            raise ConfigError("--token-reducer picks the SiT student's token reduction: use it with --recipe sit "
                              "(or set model.token_reducer in --config)")
        overrides["model"] = {"token_reducer": token_reducer}
    if recipe == "sit" and config is None:  # a config file's values (or omissions) are kept as they are
        overrides |= {k: v for k, v in SIT_DEFAULTS.items() if overrides.get(k) is None}
    with Progress(TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}", markup=False), TimeElapsedColumn(), console=console) as bar:
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
            say("data:", note)
    table = Table(title=f"held-out top-1 per variant ({'separate models' if separate else 'one slimmable model'}, "
                        f"{result.seconds:.1f} s)")
    table.add_column("variant")
    table.add_column("top-1", justify="right")
    for k, v in accs.items():
        table.add_row(k, f"{100 * v:.1f}%")
    out_console.print(table)
    if out is not None:
        console.print(f"checkpoint, log.jsonl, config.yaml, state.pt: {out}")
