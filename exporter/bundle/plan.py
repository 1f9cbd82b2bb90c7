"""`ExportPlan`: what one export will do, checked whole before any work starts.

The export runs in three stages (docs/architecture.md, "One variant, checkpoint to manifest"):
an `ExportPlan` (the loaded model, its subnets, configured format instances, the quantization
options, the evaluation set and the policy) -> `Artifact` objects per variant
(`exporter.bundle.export`) -> the bundle writer (`exporter.bundle.writer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.data import ImageSet
from exporter.checkpoints import LoadedModel
from exporter.convert.formats import ExportFormat, configure_formats
from exporter.convert.quantize import QuantizeOptions
from exporter.errors import ConfigError
from exporter.nn.config import Subnet, VariantGrid
from exporter.policy.spec import user_policy


@dataclass(frozen=True)
class ExportPlan:
    """Everything an export needs, validated.

    Attributes:
        loaded: the slimmable model and its labels/preprocessing.
        subnets: every variant to export (``model.subnets(grid)``).
        formats: configured format instances, one per format.
        quantize: precisions beyond fp32 and their calibration, or None for fp32 only.
        eval_set: held-out images (in [0, 1]) for accuracy and validation, or None.
        policy: the user's policy overrides (merged over the default when the bundle is written).
        bundle_version: the manifest's monotonically increasing bundle version.
        keep_going: leave out an artifact that fails instead of stopping the export.
    """

    loaded: LoadedModel
    subnets: tuple[Subnet, ...]
    formats: tuple[ExportFormat, ...]
    quantize: QuantizeOptions | None = None
    eval_set: ImageSet | None = None
    policy: dict[str, Any] | None = None
    bundle_version: int = 1
    keep_going: bool = False

    @classmethod
    def build(cls, loaded: LoadedModel, grid: VariantGrid,
              formats: Sequence[str | ExportFormat] = ("onnx",), *, eval_set: ImageSet | None = None,
              quantize: QuantizeOptions | None = None,
              policy: str | Path | dict[str, Any] | None = None, bundle_version: int = 1,
              keep_going: bool = False, nhwc: bool = False) -> ExportPlan:
        """Check every input before any export work: formats, grid, policy file, evaluation set
        and precisions each fail here with one `ConfigError` line.

        ``formats`` are registered names (configured by `configure_formats`, ``nhwc`` asking
        for an NHWC input where offered) or format instances configured by the caller, e.g.
        ``CoreMLFormat(deployment_target="iOS16")``.
        """
        fmts = tuple(configure_formats(formats, nhwc=nhwc))
        if not fmts:
            raise ConfigError("no export format given; add at least one, e.g. onnx")
        user = user_policy(policy)  # a bad policy file fails before any export work
        subnets = tuple(loaded.model.subnets(grid))
        classes = loaded.model.cfg.num_classes
        if eval_set is not None and len(eval_set.class_names) not in (0, classes):
            raise ConfigError(f"evaluation set has {len(eval_set.class_names)} classes but the model "
                              f"has {classes}")
        if quantize is not None:
            quantize.check([f.name for f in fmts])
        return cls(loaded, subnets, fmts, quantize, eval_set, user, bundle_version, keep_going)


__all__ = ["ExportPlan"]
