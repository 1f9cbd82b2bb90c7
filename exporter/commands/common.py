"""What every command shares: the `app` and its sub-apps, the consoles, progress bars,
checkpoint loading and the argument types of the checkpoint commands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from exporter.api import load
from exporter.checkpoints import CHECKPOINT_FORMATS, LoadedModel
from exporter.commands import help_format
from exporter.nn.config import VariantGrid, parse_floats, parse_ints

help_format.install()
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Turn one slimmable ViT into the validated, switchable bundle a phone app ships.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("slimvit")
        except PackageNotFoundError:  # running from a source tree that was never installed
            v = "unknown (not installed)"
        print(f"slimvit {v}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_version, is_eager=True)] = False) -> None:
    """Turn one slimmable ViT into the validated, switchable bundle a phone app ships."""


# Messages carry user data (paths, variant ids, tier names): never parse them as rich markup or
# emoji codes, so "[/x]" in a file name prints as itself instead of crashing the printer.
console = Console(stderr=True, markup=False, highlight=False, emoji=False)
# Tables stay readable when piped (rich would squeeze them into 80 columns).
out_console = Console(width=None if sys.stdout.isatty() else 160, markup=False, highlight=False, emoji=False)


def say(tag: str, message: object, style: str = "yellow") -> None:
    """One message line on stderr: a coloured ``tag`` then ``message`` as plain text."""
    console.print(Text.assemble((tag, style), " ", str(message)), soft_wrap=True)

CheckpointArg = Annotated[Path, typer.Argument(help="Checkpoint file (.safetensors, .pth, .pt, .bin).")]
FormatOpt = Annotated[str, typer.Option("--checkpoint-format", help=f"{', '.join(CHECKPOINT_FORMATS)}.")]
HeadsOpt = Annotated[int | None, typer.Option("--num-heads", help="Override the inferred head count.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Load the EMA weights of a training checkpoint.")]
SlicingOpt = Annotated[str | None, typer.Option("--slicing", help="heads (HydraViT) or ratio (Scala).")]
WidthsOpt = Annotated[str, typer.Option("--widths", help="Width ratios of the full embed dim.")]
KeepOpt = Annotated[str, typer.Option("--keep-rates", help="Token keep rates.")]
ResOpt = Annotated[str | None, typer.Option("--resolutions", help="Input sizes (default: the model's).")]

# Sub-commands; groups are listed after the commands in `slimvit --help`, in this order.
policy_app = typer.Typer(no_args_is_help=True, help="The switching policy's conformance vectors.")
app.add_typer(policy_app, name="policy")
bundle_app = typer.Typer(no_args_is_help=True, help="Install a bundle into the demo apps.")
app.add_typer(bundle_app, name="bundle")


@contextmanager
def progress_bars(*stages: tuple[int, str]) -> Iterator[list[Any]]:
    """Rich progress bars, one per ``(total, what)`` stage, in one live display; yields one
    callback per stage that advances its bar and shows a description."""
    with Progress(TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
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


def load_checkpoint(checkpoint: Path, checkpoint_format: str, num_heads: int | None, slicing: str | None,
                    ema: bool = False) -> LoadedModel:
    """Load a checkpoint for a command, printing warnings and a one-line summary of the model."""
    loaded = load(checkpoint, checkpoint_format, num_heads=num_heads, slicing=slicing,
                  warn=lambda m: say("warning:", m), **({"ema": True} if ema else {}))
    how = (" (detected from its keys)" if checkpoint_format == "auto" else "") + (", EMA weights" if ema else "")
    console.print(f"loaded {checkpoint.name} as {loaded.source_format}{how}: "
                  f"embed {loaded.model.cfg.embed_dim}, depth {loaded.model.cfg.depth}, "
                  f"heads {loaded.model.cfg.num_heads}, slicing {loaded.model.cfg.slicing}")
    return loaded


def parse_grid(widths: str, keep_rates: str, resolutions: str | None) -> VariantGrid:
    """The variant grid of the `--widths`, `--keep-rates` and `--resolutions` flags."""
    return VariantGrid(parse_floats(widths, "--widths"), parse_floats(keep_rates, "--keep-rates"),
                       parse_ints(resolutions, "--resolutions") if resolutions else None)
