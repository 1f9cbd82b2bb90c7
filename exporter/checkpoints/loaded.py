"""What a loaded checkpoint is (`LoadedModel`) and the one way tensors go into a model: the leaf
types every checkpoint format builds on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from calibration.data import Preprocess
from exporter.errors import CheckpointError
from exporter.nn.model import SlimmableViT


@dataclass
class LoadedModel:
    """A slimmable model with what an export needs to describe it."""

    model: SlimmableViT
    name: str
    source_format: str
    labels: list[str]
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.weights_sha256:
            self.weights_sha256 = weights_digest(self.model)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def warn_nonfinite(tensors: dict[str, torch.Tensor], warn: Callable[[str], None]) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        warn(f"{len(bad)} tensor(s) hold NaN or Inf: {', '.join(bad[:10])}")


def load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy tensors into ``model``; every missing, unexpected or mis-shaped key is listed."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        problems.append(f"shape mismatch: {'; '.join(shapes[:4])}")
    dtypes = sorted({f"{k}: {tensors[k].dtype}" for k in own if k in tensors
                     and not tensors[k].is_floating_point()})
    if dtypes:
        problems.append(f"weights must be floating point, but {len(dtypes)} are not "
                        f"({'; '.join(dtypes[:4])}{' ...' if len(dtypes) > 4 else ''})")
    if problems:
        raise CheckpointError(f"{path}: tensors do not fit the model config ({' | '.join(problems)})")
    model.load_state_dict({k: tensors[k].float() for k in own}, strict=True)
