"""What every foreign checkpoint format provides, and the one way each becomes a `LoadedModel`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calibration.data import Preprocess
from exporter.checkpoints.loaded import LoadedModel, load_tensors
from exporter.checkpoints.reading import Container, pick_state_dict, read_container
from exporter.errors import CheckpointError
from exporter.nn.config import ViTConfig
from exporter.nn.model import SlimmableViT

# timm / DeiT / HydraViT / Scala / SuperViT all train with ImageNet's statistics.
IMAGENET = Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")


@dataclass(frozen=True)
class CheckpointFormat:
    """One foreign checkpoint format.

    Attributes:
        name: the ``--checkpoint-format`` value.
        expects: what a file of this format holds, for error messages.
        matches: whether a read container looks like this format (auto-detection).
        load: (container, options) -> LoadedModel.
    """

    name: str
    expects: str
    matches: Callable[[Container], bool]
    load: Callable[..., LoadedModel]

    def loader(self, path: Path, container: Container | None = None, **options: Any) -> LoadedModel:
        """The `LOADERS` entry: read the file unless auto-detection already did."""
        return self.load(container or read_container(Path(path)), **options)


def finish(c: Container, cfg: ViTConfig, tensors: dict[str, torch.Tensor], fmt: str) -> LoadedModel:
    """Build the slimmable model of ``cfg`` and copy ``tensors`` (SlimmableViT names) into it."""
    # Not built on the meta device: its one-time set-up costs a one-shot CLI process more
    # (~0.4 s CPU, ~30 MB) than the random init it would skip (~0.1 s for DeiT-S).
    model = SlimmableViT(cfg)
    load_tensors(model, tensors, c.path)
    return LoadedModel(model.eval(), c.path.stem, fmt, [str(i) for i in range(cfg.num_classes)],
                       IMAGENET)


def has_vit_keys(tensors: Any) -> bool:
    return isinstance(tensors, dict) and "patch_embed.proj.weight" in tensors


def inner(c: Container, key: str) -> Any:
    """``c.obj[key]`` if the container is a mapping holding it, else None."""
    return c.obj.get(key) if isinstance(c.obj, dict) else None


def strip_ddp(sd: Any) -> Any:
    if isinstance(sd, dict) and sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def pick_weights(c: Container, main: tuple[str, ...], ema_keys: tuple[str, ...], ema: bool,
                 fmt: str) -> dict[str, torch.Tensor]:
    """The model weights, or with ``ema`` the EMA weights, of a training checkpoint.

    Raises:
        CheckpointError: ``ema`` was asked for but the file has no EMA weights.
    """
    if ema:
        if not any(inner(c, k) is not None for k in ema_keys):
            found = ", ".join(c.top_keys()[:12]) or "a flat state dict"
            raise CheckpointError(f"{c.path}: --ema asks for EMA weights, but the file has no "
                                  f"{' / '.join(repr(k) for k in ema_keys)} (found {found}); leave out --ema")
        return pick_state_dict(c, ema_keys, fmt)[0]
    return pick_state_dict(c, main, fmt)[0]
