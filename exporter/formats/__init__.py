"""The format registry: the one list of export formats the CLI, the manifest and the tests read."""

from __future__ import annotations

from exporter.errors import check_choice
from exporter.formats.base import ExportFormat
from exporter.formats.onnx import OnnxFormat

FORMATS: dict[str, type[ExportFormat]] = {
    OnnxFormat.name: OnnxFormat,
}


def get_format(name: str) -> ExportFormat:
    """Instantiate a registered format by name, with a did-you-mean for unknown names."""
    check_choice("format", name, FORMATS)
    return FORMATS[name]()


__all__ = ["FORMATS", "ExportFormat", "get_format"]
