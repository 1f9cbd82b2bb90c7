"""What every export format provides. One small class per backend, registered by name."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn

from exporter.errors import ExportError, check_choice


class ExportFormat(ABC):
    """One backend. Subclasses set the class constants and implement `export` and `run`.

    Attributes:
        name: the stable name used in the CLI and the manifest (``onnx``).
        suffix: file (or directory) suffix of an artifact.
        atol: absolute tolerance of the FP32 artifact against PyTorch logits.
        can_run: whether `run` works on this host (Core ML cannot run off macOS); where it does
            not, `check` validates the artifact without running it.
        layouts: input layouts the format can export; the first is the default.
        directory: whether an artifact is a directory (hashed with ``sha256_tree``), not a file.
        cli_options: the `slimvit export` options that only this format reads.
        deterministic: whether the same module and metadata always give the same bytes.
        requires: the Python modules its converter needs (an extra may be missing).
        demo_precisions: the precisions `slimvit demo` exports in this format; None: every
            registered one. For formats whose programs take long to convert.
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    directory: ClassVar[bool] = False
    cli_options: ClassVar[tuple[str, ...]] = ()
    deterministic: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    atol: ClassVar[float] = 1e-4
    can_run: ClassVar[bool] = True
    layouts: ClassVar[tuple[str, ...]] = ("NCHW",)
    demo_precisions: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, layout: str | None = None) -> None:
        self.layout = check_choice(f"{self.name} input layout", layout or self.layouts[0], self.layouts)

    @classmethod
    def available(cls) -> bool:
        """Whether the converter's modules are installed here."""
        return all(importlib.util.find_spec(m) is not None for m in cls.requires)

    @abstractmethod
    def export(self, module: nn.Module, example: np.ndarray, path: Path,
               metadata: Mapping[str, str]) -> None:
        """Write the artifact of ``module`` (a static variant, eval mode) to ``path``."""

    @abstractmethod
    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact on a batch (N, C, H, W) one sample at a time; return (N, classes)."""

    @abstractmethod
    def read_metadata(self, path: Path) -> dict[str, str]:
        """The string metadata `export` wrote into the artifact (``slimvit.*`` keys)."""

    def runtime_version(self) -> str:
        """Name and version of what `run` uses, recorded with every validation."""
        return self.name

    @classmethod
    def runtime_problems(cls, path: Path) -> list[str]:
        """Whether the artifact needs a newer runtime than the apps ship (docs/security.md), read
        from its header without the converter; `slimvit verify` reports each as a problem."""
        return []

    def delegation(self, path: Path) -> dict | None:
        """How much of the artifact a CPU delegate runs (`exporter.convert.formats.delegation`), for
        formats that have one; recorded in the manifest under the artifact."""
        return None

    def check(self, path: Path, module: nn.Module, example: np.ndarray) -> list[str]:
        """Validate an artifact without running it (for hosts where `can_run` is false).

        Returns:
            What was checked, one short phrase each (recorded in the manifest).

        Raises:
            ValidationError: listing every problem found.
        """
        raise NotImplementedError(f"{self.name} artifacts can only be validated by running them")


def in_range(what: str, value: int, lo_hi: tuple[int, int]) -> list[str]:
    """One problem when ``value`` is outside what the apps' runtimes load."""
    lo, hi = lo_hi
    if lo <= value <= hi:
        return []
    return [f"{what} {value} is outside {lo}..{hi}, what the apps' runtimes load (docs/security.md)"]


def converter_error(fmt: str, metadata: Mapping[str, str], error: BaseException) -> ExportError:
    """An `ExportError` that names the format, the variant and (when the message shows it) the op."""
    text = str(error).strip() or type(error).__name__
    op = _op_name(text)
    variant = metadata.get("slimvit.variant_id", "the variant")
    first = text.splitlines()[0][:300]
    what = f"op '{op}'" if op else "the graph"
    return ExportError(f"{variant}: the {fmt} converter cannot handle {what}: {first}")


_OP_PATTERNS = (r"Unsupported fx node (\w+)", r"aten[.:]+(\w+)",
                r"op(?:eration)? ['\"`]?([\w.:]+)['\"`]?", r"ops \[['\"]?([\w.:]+)")


def _op_name(text: str) -> str | None:
    for pattern in _OP_PATTERNS:
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Converters print progress bars, warn about untested versions and log from C++ (straight to
    file descriptors 1 and 2); keep the CLI readable. Errors still propagate as exceptions."""
    for name in ("torch.onnx", "coremltools", "absl", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()  # ORT's quantization tools log through the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO()), _fd_silenced(1), _fd_silenced(2)):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _fd_silenced(fd: int) -> Iterator[None]:
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
