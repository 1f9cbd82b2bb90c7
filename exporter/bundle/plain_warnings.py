"""Warnings for narrow variants of a network that was never trained slimmable.

A plain checkpoint (timm/DeiT) was trained at full width only: its narrower slices are not
smaller models but damaged ones, close to chance. slimvit exports them anyway (the graph is
right) but says so once, with what to do: train with a slimmable recipe first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.checkpoints import LoadedModel
from exporter.nn.config import VariantGrid

# Checkpoint formats trained at full width only (their narrow slices were never trained).
PLAIN_FORMATS = ("timm",)
FIX = ("train it slimmable first (`slimvit train --recipe scala --teacher CHECKPOINT --out DIR`, "
       "or --recipe hydravit/sandwich), or export --widths 1.0 only")


def plain_checkpoint_warning(loaded: LoadedModel, grid: VariantGrid) -> str | None:
    """One line when a plain checkpoint is asked for widths below 1.0; else None."""
    narrow = sorted(w for w in grid.widths if w < 1.0)
    if loaded.source_format not in PLAIN_FORMATS or not narrow:
        return None
    return (f"{loaded.name} is a plain {loaded.source_format} checkpoint, trained at full width only: "
            f"its width {', '.join(f'{w:g}' for w in narrow)} variants are slices it never learned to "
            f"use and will be near chance; {FIX}")


def accuracy_collapse_warning(manifest: Mapping[str, Any]) -> str | None:
    """One line when held-out top-1 of some variants collapsed against the best one (below half
    of it, or within 1.5x of chance); None without accuracy or without a collapse."""
    best: dict[str, float] = {}
    for v in manifest["variants"]:
        accs = [a["accuracy"]["top1"] for a in v["artifacts"]
                if a.get("precision") == "fp32" and "accuracy" in a]
        if accs:
            best[v["id"]] = max(accs)
    if len(best) < 2:
        return None
    top = max(best.values())
    chance = 1.0 / max(1, manifest.get("output", {}).get("shape", [1, 1])[-1])
    bad = sorted((acc, vid) for vid, acc in best.items() if acc < max(0.5 * top, 1.5 * chance))
    if not bad or top < 1.5 * chance:
        return None
    shown = ", ".join(f"{vid} {100 * acc:.1f}%" for acc, vid in bad[:6])
    return (f"held-out top-1 collapsed for {len(bad)} variant(s) ({shown}; best {100 * top:.1f}%, chance "
            f"{100 * chance:.1f}%): the checkpoint was likely not trained slimmable; {FIX}")
