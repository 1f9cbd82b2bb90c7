"""The format registry: the one list of export formats the CLI, the manifest and the tests read."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from exporter.convert.formats.base import ExportFormat
from exporter.convert.formats.coreml import CoreMLFormat
from exporter.convert.formats.executorch import ExecuTorchFormat
from exporter.convert.formats.onnx import OnnxFormat
from exporter.convert.formats.tflite import TFLiteFormat
from exporter.errors import check_choice

FORMATS: dict[str, type[ExportFormat]] = {
    OnnxFormat.name: OnnxFormat,
    TFLiteFormat.name: TFLiteFormat,
    CoreMLFormat.name: CoreMLFormat,
    ExecuTorchFormat.name: ExecuTorchFormat,
}
# Artifacts that are directories (Core ML packages): copied whole and hashed with sha256_tree.
DIRECTORY_SUFFIXES = tuple(f.suffix for f in FORMATS.values() if f.directory)


def get_format(name: str, **options: Any) -> ExportFormat:
    """Instantiate a registered format by name, with a did-you-mean for unknown names.

    ``options`` go to the format's constructor (``layout="NHWC"`` for tflite,
    ``deployment_target="iOS16"`` for coreml)."""
    check_choice("format", name, FORMATS)
    return FORMATS[name](**options)


def configure_formats(formats: Sequence[str | ExportFormat], nhwc: bool = False,
                      **options: Any) -> list[ExportFormat]:
    """Format instances for ``formats`` (names, or instances already configured, kept as they
    are), without repeats. Each named format gets the ``options`` its constructor takes
    (``deployment_target`` only reaches coreml), and ``nhwc`` asks every format that offers
    an NHWC input for it."""
    out: dict[str, ExportFormat] = {}
    for f in formats:
        if isinstance(f, ExportFormat):
            out.setdefault(f.name, f)
            continue
        check_choice("format", f, FORMATS)
        cls = FORMATS[f]
        takes = inspect.signature(cls.__init__).parameters
        opts = {k: v for k, v in options.items() if k in takes}
        if nhwc and "NHWC" in cls.layouts:
            opts["layout"] = "NHWC"
        out.setdefault(f, cls(**opts))
    return list(out.values())


__all__ = ["DIRECTORY_SUFFIXES", "FORMATS", "ExportFormat", "configure_formats", "get_format"]
