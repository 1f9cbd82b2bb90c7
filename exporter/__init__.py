"""slimvit: slimmable Vision Transformers -> static, validated, switchable mobile bundles.

Data flow: checkpoint -> `SlimmableViT` -> `Variant`/`Subnet` -> `extract_variant` (a plain
`StaticViT`) -> artifacts per format -> `manifest.json`.
"""

from exporter.errors import CheckpointError, ConfigError, SlimvitError, ValidationError
from exporter.nn.config import Subnet, Variant, VariantGrid, ViTConfig, resolve
from exporter.nn.extract import extract_variant
from exporter.nn.model import SlimmableViT

__all__ = [
    "CheckpointError", "ConfigError", "SlimmableViT", "SlimvitError", "Subnet", "ValidationError",
    "Variant", "VariantGrid", "ViTConfig", "extract_variant", "resolve",
]
