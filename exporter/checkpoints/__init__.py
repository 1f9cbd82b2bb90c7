"""Checkpoints: slimvit's own format and the foreign ones (timm/DeiT, HydraViT, Scala, SuperViT),
one small module per format. Each reads its file safely (`reading`), infers the architecture from
tensor shapes (`infer`) and maps its keys onto `SlimmableViT`'s (timm) names; `load` holds the
registry (`LOADERS`, in detection order) and `load_model`, the one entry point."""

from __future__ import annotations

from exporter.checkpoints.base import CheckpointFormat
from exporter.checkpoints.load import (
                                       CHECKPOINT_FORMATS,
                                       LOADERS,
                                       detect_format,
                                       load_model,
                                       save_checkpoint,
                                       save_searched,
)
from exporter.checkpoints.loaded import LoadedModel, weights_digest
from exporter.checkpoints.reading import Container, read_container

__all__ = ["CHECKPOINT_FORMATS", "LOADERS", "CheckpointFormat", "Container", "LoadedModel", "detect_format",
           "load_model", "read_container", "save_checkpoint", "save_searched", "weights_digest"]
