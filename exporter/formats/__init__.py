"""The format registry: the one list of export formats the CLI, the manifest and the tests read."""

from __future__ import annotations

from typing import Any

from exporter.errors import check_choice
from exporter.formats.base import ExportFormat
from exporter.formats.coreml import CoreMLFormat
from exporter.formats.executorch import ExecuTorchFormat
from exporter.formats.onnx import OnnxFormat
from exporter.formats.tflite import TFLiteFormat

FORMATS: dict[str, type[ExportFormat]] = {
    OnnxFormat.name: OnnxFormat,
    TFLiteFormat.name: TFLiteFormat,
    CoreMLFormat.name: CoreMLFormat,
    ExecuTorchFormat.name: ExecuTorchFormat,
}


def get_format(name: str, **options: Any) -> ExportFormat:
    """Instantiate a registered format by name, with a did-you-mean for unknown names.

    ``options`` go to the format's constructor (``layout="NHWC"`` for tflite,
    ``deployment_target="iOS16"`` for coreml)."""
    check_choice("format", name, FORMATS)
    return FORMATS[name](**options)


__all__ = ["FORMATS", "ExportFormat", "get_format"]
