"""One-shot slimmable training: `train` (one network, every variant works) and
`train_separate` (each width its own model, the baseline the seeds compare against).

Layout: `config` (TrainConfig, YAML/TOML + overrides) -> `data` (digits / ImageFolder, held-out
split, augmentation) -> `recipes` (the registry: what each step trains) -> `loop` (the loop,
EMA, AMP, evaluation) with `state` (exact resume) and `ddp` (torchrun).
"""

from exporter.training.api import SeparateResult, run_training, separate_config, train_separate
from exporter.training.config import DEFAULT_MODEL, TrainConfig, read_config_file, resolve_config
from exporter.training.data import DatasetError, DataSplit, load_dataset
from exporter.training.loop import TrainResult, accuracy, train
from exporter.training.recipes import RECIPES, Member, StepContext, get_recipe

__all__ = [
    "DEFAULT_MODEL", "DataSplit", "DatasetError", "Member", "RECIPES", "SeparateResult", "StepContext",
    "TrainConfig", "TrainResult", "accuracy", "get_recipe", "load_dataset", "read_config_file",
    "resolve_config", "run_training", "separate_config", "train", "train_separate",
]
