"""What a variant grid turns into on a given model, said out loud: requested widths snap to
what the slicing can build (whole heads for `heads`, whole channels per head for `ratio`), two
requests can land on one subnet, and keep rates compound over the prune blocks."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.nn.config import Subnet, Variant, VariantGrid, ViTConfig, resolve


@dataclass(frozen=True)
class WidthSnap:
    """One requested width and the subnet width it becomes."""

    asked: float
    got: float
    embed_dim: int
    num_heads: int


def width_snaps(cfg: ViTConfig, grid: VariantGrid) -> list[WidthSnap]:
    """Each requested width (in the order given) and what it resolves to on ``cfg``."""
    out = []
    for w in grid.widths:
        s = resolve(cfg, Variant(w, 1.0, None))
        out.append(WidthSnap(w, s.width, s.embed_dim, s.num_heads))
    return out


def width_notes(cfg: ViTConfig, grid: VariantGrid) -> tuple[list[str], list[str]]:
    """``(info, warnings)``: the mapping asked -> got when any width snapped, and a warning per
    group of requested widths that collapse into one subnet."""
    snaps = width_snaps(cfg, grid)
    info, warnings = [], []
    if any(abs(s.asked - s.got) > 1e-9 for s in snaps):
        unit = "heads" if cfg.slicing == "heads" else "channels"
        info.append(f"widths snap to whole {unit} ({cfg.slicing} slicing, {cfg.num_heads} heads, embed "
                    f"{cfg.embed_dim}): " + ", ".join(
                        f"{s.asked:g} -> {s.got:.4g} (embed {s.embed_dim}, {s.num_heads} heads)" for s in snaps))
    groups: dict[int, list[float]] = {}
    for s in snaps:
        groups.setdefault(s.embed_dim, []).append(s.asked)
    for dim, asked in groups.items():
        if len(asked) > 1:
            all_ = "both" if len(asked) == 2 else "all"
            warnings.append(f"widths {', '.join(f'{a:g}' for a in asked)} {all_} give embed {dim}: one variant "
                            f"instead of {len(asked)}; pick widths that differ by at least "
                            f"{1 / cfg.num_heads:.3g} ({'one head' if cfg.slicing == 'heads' else 'a step'})")
    return info, warnings


def token_stages(cfg: ViTConfig, s: Subnet) -> str:
    """Tokens entering the first block and after each prune, e.g. ``17>9>5`` (CLS included).

    Keep rates compound: keep 0.7 at three prune blocks leaves about 0.7**3 = 34% of the patches.
    """
    stages: list[int] = []
    for n in s.tokens:
        if not stages or n != stages[-1]:
            stages.append(n)
    del cfg
    return ">".join(str(n) for n in stages)
