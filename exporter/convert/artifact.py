"""`Artifact`: one validated file (or directory) of a bundle and everything the manifest says
about it. The one place that turns a path into its manifest entry (path, sha256, bytes); the
export stage, the precisions loop and the artifact cache all pass these around."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.fileio import sha256_path, tree_bytes

# Optional manifest keys, in the order they are written after the required ones.
_OPTIONAL = ("accuracy", "quantization", "delegation")


@dataclass(frozen=True)
class Artifact:
    """One entry of a variant's ``artifacts`` list (manifest.schema.json).

    Attributes:
        format: registered format name (``onnx``).
        precision: registered precision name (``fp32``, ``int8``...).
        path: the artifact's path relative to the bundle root, with ``/``.
        sha256: `exporter.fileio.sha256_path` of the placed artifact.
        bytes: its size (every file of a directory artifact).
        validation: how it was checked against PyTorch.
        accuracy: held-out top-1 and agreement, where measured.
        quantization: scheme, calibration and ops kept in float, for precisions beyond fp32.
        delegation: how much a CPU delegate runs, for formats that report it.
    """

    format: str
    precision: str
    path: str
    sha256: str
    bytes: int
    validation: dict[str, Any]
    accuracy: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    delegation: dict[str, Any] | None = None

    @classmethod
    def placed(cls, root: Path, rel: Path | str, format: str, precision: str,
               validation: dict[str, Any], **optional: Any) -> Artifact:
        """The entry of the artifact already placed at ``root / rel``: hashed and sized there."""
        target = Path(root) / rel
        return cls(format, precision, Path(rel).as_posix(), sha256_path(target), tree_bytes(target),
                   validation, **optional)

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> Artifact:
        """Back from `to_manifest` (the artifact cache stores entries as JSON)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in fields})

    def with_accuracy(self, accuracy: dict[str, Any]) -> Artifact:
        return dataclasses.replace(self, accuracy=accuracy)

    def to_manifest(self) -> dict[str, Any]:
        out = {"format": self.format, "precision": self.precision, "path": self.path,
               "sha256": self.sha256, "bytes": self.bytes, "validation": self.validation}
        out.update({k: v for k in _OPTIONAL if (v := getattr(self, k)) is not None})
        return out


__all__ = ["Artifact"]
