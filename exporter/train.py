"""Kept for older imports: training now lives in `exporter.training`."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from calibration.data import ImageSet, Preprocess
from exporter.config import Subnet
from exporter.model import SlimmableViT
from exporter.training import RECIPES, TrainConfig, TrainResult, accuracy, train, train_separate

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "accuracy", "seed_everything", "subnet_accuracies",
           "train", "train_separate"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subnet_accuracies(model: SlimmableViT, data: ImageSet, pre: Preprocess,
                      subnets: Sequence[Subnet]) -> dict[str, float]:
    """Held-out top-1 of each subnet, by id."""
    return {s.id: accuracy(model, data, pre, s) for s in subnets}
