"""The training state saved after every epoch (``state.pt`` beside the final checkpoint):
weights, optimizer, EMA, epoch/step, RNG states and the resolved configs. Only tensors and
plain values, so it loads with ``torch.load(weights_only=True)`` and runs no code."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.errors import CheckpointError
from exporter.fileio import atomic_path
from exporter.gate.files import dumps_strict
from exporter.nn.config import ViTConfig

STATE_FILE = "state.pt"


@dataclass
class TrainState:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    ema: dict[str, torch.Tensor]
    epoch: int  # epochs completed
    step: int
    model_config: dict[str, Any]
    train_config: dict[str, Any]


def rng_states() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(py[1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def restore_rng_states(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(int(v) for v in s["python"].tolist()), None))
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))


def save_state(path: Path, state: TrainState) -> None:
    """Write atomically: a crash mid-write leaves the previous epoch's state in place."""
    blob = {
        "format": "slimvit-train-state", "version": 1,
        "model": {k: v.detach().cpu() for k, v in state.model.items()},
        "optimizer": state.optimizer,
        "ema": {k: v.detach().cpu() for k, v in state.ema.items()},
        "epoch": state.epoch, "step": state.step,
        "model_config": dumps_strict(state.model_config, sort_keys=True),
        "train_config": dumps_strict(state.train_config, sort_keys=True),
        "rng": rng_states(),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def state_path(resume: str | Path) -> Path:
    """``resume`` names a state file or a run directory holding one."""
    path = Path(resume)
    return path / STATE_FILE if path.is_dir() else path


def load_state(resume: str | Path, expect: ViTConfig) -> TrainState:
    """Read a saved state and check it was trained with the same architecture as ``expect``.

    Raises:
        CheckpointError: the file is missing or unreadable, or its architecture differs.
    """
    path = state_path(resume)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no training state at {path}; pass the --out folder of an "
                              f"earlier `slimvit train` run (it holds {STATE_FILE})")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != "slimvit-train-state":
            raise ValueError("not a slimvit training state")
        saved_cfg = json.loads(blob["model_config"])
    except Exception as e:  # pickle/zip errors, missing keys: all mean "not a state we wrote"
        raise CheckpointError(f"cannot resume from {path}: not a readable slimvit training state ({e})") from None
    want = expect.to_dict()
    diff = [f"{k}: saved {saved_cfg.get(k)!r} vs now {want[k]!r}" for k in want if saved_cfg.get(k) != want[k]]
    if diff:
        raise CheckpointError(f"cannot resume from {path}: it was trained with another architecture "
                              f"({'; '.join(diff[:4])}); use the same model config or start a new --out")
    restore_rng_states(blob["rng"])
    return TrainState(blob["model"], blob["optimizer"], blob["ema"], int(blob["epoch"]), int(blob["step"]),
                      saved_cfg, json.loads(blob["train_config"]))
