"""`slimvit pack` and `unpack`: a bundle as one file that holds each weight byte once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exporter.commands.common import app, console, out_console
from exporter.bundle.pack import Selection
from exporter.bundle.pack import pack_bundle
from exporter.bundle.unpack import unpack as unpack_pack

FormatsOpt = Annotated[str | None, typer.Option("--formats", help="Only these formats (comma-separated).")]
PrecisionsOpt = Annotated[str | None, typer.Option("--precisions", help="Only these precisions.")]
VariantsOpt = Annotated[str | None, typer.Option("--variants", help="Only these variant ids.")]


@app.command()
def pack(bundle: Annotated[Path, typer.Argument(help="Bundle directory (must verify).")],
         out: Annotated[Path, typer.Option("--out", help="Pack file to write (e.g. bundle.svpack).")],
         formats: FormatsOpt = None, precisions: PrecisionsOpt = None, variants: VariantsOpt = None) -> None:
    """Write a bundle as one pack file: each distinct weight byte once, every file rebuilt exactly."""
    from rich.table import Table

    stats = pack_bundle(bundle, out, Selection.parse(formats, precisions, variants))
    table = Table("format", "precision", "files", "bytes", "largest", "packed", "packed / largest")
    for (fmt, prec), g in sorted(stats.groups.items()):
        table.add_row(fmt, prec or "-", str(g.files), _mib(g.bytes), _mib(g.largest), _mib(g.packed),
                      f"{g.packed / max(g.largest, 1):.3f}")
    out_console.print(table)
    out_console.print(f"{out}: {_mib(stats.pack_bytes)} for {_mib(stats.bundle_bytes)} of files "
                      f"({stats.bundle_bytes / max(stats.pack_bytes, 1):.1f}x smaller)", highlight=False)


@app.command()
def unpack(pack_file: Annotated[Path, typer.Argument(metavar="PACK", help="Pack file.")],
           out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
           formats: FormatsOpt = None, precisions: PrecisionsOpt = None, variants: VariantsOpt = None) -> None:
    """Rebuild a bundle (or the chosen artifacts of it) from a pack, each file checked."""
    paths = unpack_pack(pack_file, out, Selection.parse(formats, precisions, variants))
    console.print(f"unpacked {len(paths)} file(s) into {out}", highlight=False)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"
