"""What every export format provides. One small class per backend, registered by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn


class ExportFormat(ABC):
    """One backend. Subclasses set the class constants and implement `export` and `run`.

    Attributes:
        name: the stable name used in the CLI and the manifest (``onnx``).
        suffix: file (or directory) suffix of an artifact.
        atol: absolute tolerance of the FP32 artifact against PyTorch logits.
        can_run: whether `run` works on this host (Core ML cannot run off macOS).
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    atol: ClassVar[float] = 1e-4
    can_run: ClassVar[bool] = True

    @abstractmethod
    def export(self, module: nn.Module, example: np.ndarray, path: Path,
               metadata: Mapping[str, str]) -> None:
        """Write the artifact of ``module`` (a static variant, eval mode) to ``path``."""

    @abstractmethod
    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact on a batch (N, C, H, W) one sample at a time; return (N, classes)."""

    def runtime_version(self) -> str:
        """Name and version of what `run` uses, recorded with every validation."""
        return self.name
