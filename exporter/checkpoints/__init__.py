"""Foreign checkpoint formats: one small module per format. Each reads its file safely
(`reading`), infers the architecture from tensor shapes (`infer`) and maps its keys onto
`SlimmableViT`'s (timm) names; `exporter.checkpoint` registers them in `LOADERS`.

`FORMATS` is in detection order: the most specific layout first."""

from __future__ import annotations

from exporter.checkpoints import hydravit, scala, supervit, timm
from exporter.checkpoints.base import CheckpointFormat
from exporter.checkpoints.reading import Container, read_container

FORMATS: tuple[CheckpointFormat, ...] = (supervit.FORMAT, hydravit.FORMAT, scala.FORMAT, timm.FORMAT)

__all__ = ["FORMATS", "CheckpointFormat", "Container", "read_container"]
