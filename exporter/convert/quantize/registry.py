"""The precision registry: format -> the precisions it offers and the function that makes each.

The names (``fp16``, ``int8``, ``int8-dynamic``, ``int8-weights``, ``palettized``) are stable:
the manifest's artifact ``precision``, the CLI's ``--precisions`` and the tests all read them
from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from exporter.convert.formats import FORMATS
from exporter.errors import ConfigError, did_you_mean
from exporter.convert.quantize.targets import DEFAULT_TARGET

FP32 = "fp32"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Op kinds a retry keeps in float when the first try drops too much accuracy (each format
# maps them onto its own ops): the ones PTQ of ViTs is known to hurt, and the first/last layers.
SENSITIVE_OPS = ("softmax", "layernorm", "gelu", "first", "last")


@dataclass(frozen=True)
class QuantJob:
    """Everything one quantizer needs for one variant.

    Attributes:
        fp32_path: the validated FP32 artifact of the variant in this format.
        module: the variant's static PyTorch module (eval mode), for formats that convert again.
        example: one input (1, C, H, W) at the variant's resolution.
        calibration: that variant's own calibration inputs (N, C, H, W), or None.
        method: activation-range estimation, one of `CALIBRATION_METHODS`.
        float_ops: sensitive op kinds (of `SENSITIVE_OPS`) to keep in float.
        metadata: key/values to embed in the artifact.
        out: where to write the quantized artifact.
        layout: the artifact's input layout (``NCHW``, or ``NHWC`` for tflite); calibration
            inputs are NCHW and quantizers transpose them as needed.
        converter: the format instance the FP32 artifact was made with, so a precision that
            converts again keeps its settings (e.g. the Core ML deployment target).
        target: the int8 target CPU (`exporter.convert.quantize.targets`) the recipe is tuned for.
        reference: the slimmable model fixed at this variant (`SubnetForward`: ``.model``, ``.s``),
            for precisions that share weights across widths (shared-scale int8); None otherwise.
    """

    fp32_path: Path
    module: nn.Module
    example: np.ndarray
    calibration: np.ndarray | None
    method: str
    float_ops: tuple[str, ...]
    metadata: dict[str, str]
    out: Path
    layout: str = "NCHW"
    converter: Any = field(default=None, repr=False)  # an ExportFormat (not imported: no cycle)
    target: str = DEFAULT_TARGET
    reference: Any = field(default=None, repr=False)  # SubnetForward (nn, not imported here)


Quantizer = Callable[[QuantJob], None]
# For formats that cannot run here: logits of the same quantization simulated on this host.
Simulator = Callable[[QuantJob, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Precision:
    """One precision of one format.

    Attributes:
        name: stable name (manifest ``precision``, CLI ``--precisions``).
        format: the registered format name it belongs to.
        scheme: what the artifact holds, in words (recorded in the manifest).
        calibrated: needs calibration data (static activation ranges).
        min_agreement: the validation threshold: top-1 agreement with the FP32 PyTorch variant
            below this means a broken artifact (quantized logits are not held to an atol).
        quantize: writes the artifact for a `QuantJob`.
        simulate: set for formats that cannot run here (Core ML off macOS).
        simulation: how ``simulate`` measures, in words.
        uses_target: the recipe depends on the int8 target CPU; the manifest records it.
    """

    name: str
    format: str
    scheme: str
    calibrated: bool
    min_agreement: float
    quantize: Quantizer = field(repr=False)
    simulate: Simulator | None = field(default=None, repr=False)
    simulation: str = ""
    uses_target: bool = False


PRECISIONS: dict[str, dict[str, Precision]] = {}


def register(p: Precision) -> Precision:
    PRECISIONS.setdefault(p.format, {})[p.name] = p
    return p


def precision_names(fmt: str | None = None) -> list[str]:
    """Every registered precision name (of one format, or of all), fp32 first."""
    _load_all()
    names = [FP32]
    for f, table in PRECISIONS.items():
        if fmt is None or f == fmt:
            names += [n for n in table if n not in names]
    return names


def get_precision(fmt: str, name: str) -> Precision | None:
    """The registered precision, or None when the format does not offer it."""
    _load_all()
    return PRECISIONS.get(fmt, {}).get(name)


def check_precisions(names: Sequence[str], formats: Sequence[str]) -> list[str]:
    """Validate ``--precisions`` against the registry; returns the names, fp32 first.

    A name must exist for at least one of ``formats``; formats that lack it skip it.
    """
    valid = {n for f in formats for n in precision_names(f)}
    out = [FP32]
    for n in names:
        if n not in valid:
            offered = ", ".join(f"{f}: {'/'.join(precision_names(f))}" for f in formats)
            raise ConfigError(f'unknown precision "{n}"{did_you_mean(n, valid)}; offered: {offered}')
        if n not in out:
            out.append(n)
    return out


def check_method(method: str) -> str:
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f'"--calibration-method" must be one of {{{", ".join(CALIBRATION_METHODS)}}}, '
                          f'but got "{method}"{did_you_mean(method, CALIBRATION_METHODS)}')
    return method


def _load_all() -> None:
    """Import each registered format's quantizer module, ``exporter.convert.quantize.<format>``
    (they register themselves; a format without one offers fp32 only); cheap after the first."""
    for mod in FORMATS:
        try:
            importlib.import_module(f"exporter.convert.quantize.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"exporter.convert.quantize.{mod}":
                raise
