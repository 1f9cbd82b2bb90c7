"""`slimvit cache info|clear`: the artifact cache that makes `export --resume` fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exporter.commands.common import app, console
from exporter.convert.cache import default_cache_dir
from exporter.convert.cache_admin import clear, usage

cache_app = typer.Typer(no_args_is_help=True, help="The artifact cache (where, how big; clear it).")
app.add_typer(cache_app, name="cache")

CacheDirOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Cache directory (default: $SLIMVIT_CACHE_DIR, $XDG_CACHE_HOME/slimvit/artifacts "
                        "or ~/.cache/slimvit/artifacts).")]


@cache_app.command("info")
def cache_info(cache_dir: CacheDirOpt = None) -> None:
    """Where the cache is, how many entries and how big."""
    console.print(usage(cache_dir or default_cache_dir()).describe(), highlight=False)


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDirOpt = None) -> None:
    """Delete every cached artifact (bundles are not touched; the next export converts again)."""
    before = clear(cache_dir or default_cache_dir())
    console.print(f"cleared {before.root}: {before.entries} entries, {before.bytes / 2**20:.1f} MB freed",
                  highlight=False, soft_wrap=True)


def print_cache_line(cache_dir: Path | None) -> None:
    """After an export: where its artifacts were cached and how big the cache is."""
    console.print(f"artifact cache: {usage(cache_dir or default_cache_dir()).describe()}; "
                  f"`slimvit cache clear` empties it", highlight=False, soft_wrap=True)
