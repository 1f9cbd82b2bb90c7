"""The training configuration: one frozen dataclass, read from a YAML or TOML file and then
overridden by flags; unknown keys get a did-you-mean; the resolved config is saved beside the
checkpoint so a run can be repeated or resumed."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, did_you_mean
from exporter.gate.files import check_plain, read_text_capped
from exporter.gate.limits import MAX_JSON_BYTES
from exporter.gate.models import TrainNumbersIn, validate
from exporter.nn.config import VariantGrid, ViTConfig

# The small ViT every built-in run starts from (8x8 digit scans upsampled to 32 px; a 24 px
# variant runs on 9 instead of 16 patches). ``model:`` keys in a config file override it.
DEFAULT_MODEL: dict[str, Any] = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=4,
                                     num_heads=4, extra_resolutions=(24,), slicing="heads")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The recipe-specific keys are read only by their
    recipe (see `exporter.training.recipes`).

    Attributes:
        dataset: ``digits`` (built in) or an ImageFolder directory.
        recipe: a name in `RECIPES`: sandwich, hydravit, scala, supervit.
        batch_size: the global batch; under DDP every process takes an equal part of it.
        warmup_epochs: linear learning-rate warm-up before the cosine decay.
        augment_shift: random per-image translation, in pixels at the largest resolution.
        ema_decay: 0 disables EMA; otherwise the final checkpoint holds the EMA weights.
        holdout: fraction of an ImageFolder kept for evaluation (digits has a fixed split).
        train_limit: use only the first N training images (0: all); for quick runs.
        widths, keep_rates, resolutions: the variant grid trained and evaluated
            (``resolutions`` empty: every resolution the model has a pos_embed for).
        width_weights: hydravit's sampling weight per width (empty: uniform).
        random_subnets: sandwich's random subnets per step besides the largest and smallest.
        full_only_epochs: scala's warm-up epochs that train the full model only.
        teacher: a checkpoint (any format slimvit loads) to distil from; ``teacher_weight`` is
            the share of the KL to the teacher in the loss of every label-trained subnet.
        token_weight: the weight of a recipe's extra loss terms (sit: token reconstruction).
        model: `ViTConfig` keys overriding `DEFAULT_MODEL` (num_classes comes from the data).
    """

    dataset: str = "digits"
    recipe: str = "sandwich"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    seed: int = 0
    augment_shift: int = 1
    ema_decay: float = 0.0
    amp: bool = True
    holdout: float = 0.2
    train_limit: int = 0
    widths: tuple[float, ...] = (0.25, 0.5, 1.0)
    keep_rates: tuple[float, ...] = (1.0, 0.7, 0.5)
    resolutions: tuple[int, ...] = ()
    width_weights: tuple[float, ...] = ()
    random_subnets: int = 1
    full_only_epochs: int = 1
    teacher: str | None = None
    teacher_weight: float = 0.5
    token_weight: float = 1.0
    model: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # strict types, finite numbers, bounds (exporter/gate/limits.py); the checks below say more
        validate(TrainNumbersIn, {k: getattr(self, k) for k in TrainNumbersIn.model_fields},
                 "training config", ConfigError)
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f'"{name}" must be an integer >= 1, but got {getattr(self, name)!r}')
        for name in ("warmup_epochs", "augment_shift", "train_limit", "random_subnets",
                     "full_only_epochs", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f'"{name}" must be an integer >= 0, but got {getattr(self, name)!r}')
        if self.lr <= 0:
            raise ConfigError(f'"lr" must be positive, but got {self.lr}')
        for name in ("ema_decay", "teacher_weight", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f'"{name}" must be in [0, 1), but got {getattr(self, name)}')
        if not 0 < self.holdout < 1:
            raise ConfigError(f'"holdout" must be in (0, 1), but got {self.holdout}')
        if self.width_weights and len(self.width_weights) != len(self.widths):
            raise ConfigError(f'"width_weights" needs one weight per width ({len(self.widths)}), '
                              f"but got {len(self.width_weights)}")
        if self.width_weights and (min(self.width_weights) < 0 or sum(self.width_weights) <= 0):
            raise ConfigError(f'"width_weights" must be >= 0 with a positive sum, but got {self.width_weights}')
        VariantGrid(self.widths, self.keep_rates, self.resolutions or None)
        unknown = [k for k in self.model if k not in MODEL_KEYS]
        if unknown:
            raise ConfigError(f'unknown model key "{unknown[0]}"{did_you_mean(unknown[0], MODEL_KEYS)}; '
                              f"valid keys: {', '.join(MODEL_KEYS)}")

    def model_config(self, num_classes: int) -> ViTConfig:
        """The `ViTConfig` this run trains: `DEFAULT_MODEL`, then ``model:`` keys."""
        given = dict(self.model)
        if "num_classes" in given and given["num_classes"] != num_classes:
            raise ConfigError(f'model "num_classes" is {given["num_classes"]} but the dataset has '
                              f"{num_classes} classes; leave num_classes out")
        return ViTConfig.from_dict({**DEFAULT_MODEL, **given, "num_classes": num_classes})

    def grid(self, model: ViTConfig) -> VariantGrid:
        """The variant grid; no ``resolutions``: every size ``model`` has a pos_embed for."""
        return VariantGrid(self.widths, self.keep_rates, self.resolutions or model.resolutions)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(self.model).items()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain mapping (a parsed file); unknown keys get a did-you-mean."""
        unknown = [k for k in d if k not in TRAIN_KEYS]
        if unknown:
            k = unknown[0]
            raise ConfigError(f'unknown training config key "{k}"{did_you_mean(k, TRAIN_KEYS)}; '
                              f"valid keys: {', '.join(TRAIN_KEYS)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            kw[k] = tuple(v) if isinstance(v, list) else v
        if kw.get("model") is None:
            kw.pop("model", None)
        elif not isinstance(kw["model"], Mapping):
            raise ConfigError(f'"model" must be a mapping of model keys, but got {kw["model"]!r}')
        for k in ("lr", "weight_decay", "ema_decay", "teacher_weight", "token_weight", "holdout",
                  "label_smoothing"):
            if isinstance(kw.get(k), int | str) and not isinstance(kw.get(k), bool):
                try:
                    kw[k] = float(kw[k])  # YAML reads "1e-3" as a string
                except ValueError:
                    raise ConfigError(f'"{k}" must be a number, but got {kw[k]!r}') from None
        return cls(**kw)


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ViTConfig) if f.name != "num_classes") + ("num_classes",)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a ``.yaml``/``.yml`` or ``.toml`` file into a mapping.

    Raises:
        ConfigError: the file is missing, has another suffix, or does not parse.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    text = read_text_capped(path, "config file", MAX_JSON_BYTES, ConfigError)
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f'config file "{path.name}" must end in .yaml, .yml or .toml')
    except ConfigError:
        raise
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError
        raise ConfigError(f"{path}: cannot parse the config file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config file must hold a mapping of keys, not {type(data).__name__}")
    return check_plain(data, f"config file {path}", ConfigError)


def resolve_config(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """The config of a run: defaults, then the file's keys, then every override that is not None."""
    data = read_config_file(config_file) if config_file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def config_yaml(cfg: TrainConfig, extra: Mapping[str, Any] | None = None) -> str:
    """The resolved config as YAML (what `save` writes beside the checkpoint)."""
    import yaml

    return yaml.safe_dump({**cfg.to_dict(), **(extra or {})}, sort_keys=False)
