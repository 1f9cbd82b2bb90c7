"""SuperViT: ``{'model': state_dict}`` with one learned pos_embed per input size
(``pos_embed_list.{i}``, sizes 128/160/192/224 with 16 px patches). The largest size becomes
``img_size`` and ``pos_embed``, the others ``pos_embed_res.<size>``; tokens are pruned in
blocks 3, 6, 9 keeping ceil(rate * N) patch tokens, N counting CLS."""

from __future__ import annotations

import re
from typing import Any

from exporter.checkpoints.base import CheckpointFormat, finish, has_vit_keys, inner, pick_weights, strip_ddp
from exporter.checkpoints.infer import grid_of, infer_config, require
from exporter.checkpoints.loaded import LoadedModel
from exporter.checkpoints.reading import Container
from exporter.errors import CheckpointError

NAME = "supervit"
POS_LIST = re.compile(r"pos_embed_list\.(\d+)$")


def _has_pos_list(sd: Any) -> bool:
    return isinstance(sd, dict) and any(isinstance(k, str) and POS_LIST.match(k) for k in sd)


def matches(c: Container) -> bool:
    sd = strip_ddp(c.obj if has_vit_keys(strip_ddp(c.obj)) else inner(c, "model"))
    return has_vit_keys(sd) and _has_pos_list(sd)


def load(c: Container, *, num_heads: int | None = None, ema: bool = False, **_: Any) -> LoadedModel:
    sd = dict(pick_weights(c, ("model",), ("model_ema",), ema, NAME))
    require(sd, ("patch_embed.proj.weight", "pos_embed_list.0"), c.path, NAME)
    dim, patch = sd["patch_embed.proj.weight"].shape[0], sd["patch_embed.proj.weight"].shape[-1]
    n_prefix = 2 if "dist_token" in sd else 1
    by_size = {}
    for key in sorted((k for k in sd if POS_LIST.match(k)), key=lambda k: int(k.rsplit(".", 1)[1])):
        size = grid_of(sd[key], n_prefix, dim, c.path, key) * patch
        if size in by_size:
            raise CheckpointError(f"{c.path}: shapes fit no ViT: {key} and {by_size[size]} are both "
                                  f"sized for {size} px")
        by_size[size] = key
    # SuperViT's forward only reads the per-size list; a leftover plain pos_embed is unused.
    sd.pop("pos_embed", None)
    top = max(by_size)
    for size, key in by_size.items():
        sd["pos_embed" if size == top else f"pos_embed_res.{size}"] = sd.pop(key)
    cfg = infer_config(sd, c.path, NAME, num_heads=num_heads, slicing="heads",
                       extra_resolutions=tuple(s for s in by_size if s != top), keep_rule="supervit")
    return finish(c, cfg, sd, NAME)


FORMAT = CheckpointFormat(
    NAME, "{'model': ViT state dict with pos_embed_list.0..N, one pos_embed per input size}",
    matches, load)
