"""`slimvit search`: ViT-Slim's search for a non-uniform structure within a MAC budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exporter.commands.common import CheckpointArg, app, console, out_console
from exporter.gate.outputs import check_out_dir
from exporter.training.search import SearchConfig, run_search


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
    check_out_dir(out, "search", inputs=(checkpoint, dataset if dataset != "builtin" else None))

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
