"""Training: recipe plans match the seeds, every recipe trains from the CLI, the config file
rules, exact resume, teacher distillation, separate training and bad data."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from calibration.data import Preprocess
from exporter.checkpoints import load_model, save_checkpoint
from exporter.errors import CheckpointError, ConfigError
from exporter.nn.config import VariantGrid, ViTConfig
from exporter.training import (
    RECIPES,
    DatasetError,
    StepContext,
    TrainConfig,
    accuracy,
    load_dataset,
    resolve_config,
    train,
    train_separate,
)
from exporter.training.loop import TeacherOutput, kl, run_members
from tests.conftest import TINY, tiny_model

# A quick run: 160 digits, batches of 32, 8 variants (2 widths x 2 keep rates x 32/24 px).
QUICK = dict(train_limit=160, batch_size=32, epochs=2, warmup_epochs=0, lr=3e-3, widths=(0.5, 1.0),
             keep_rates=(1.0, 0.5), resolutions=(32, 24), full_only_epochs=0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine spinning threads
    cost several times the CPU time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def context(recipe_cfg: ViTConfig, grid: VariantGrid, epoch: int = 5, seed: int = 0, **kw) -> StepContext:
    return StepContext(tuple(grid.subnets(recipe_cfg)), recipe_cfg, grid.widths, kw.get("weights", ()),
                       kw.get("random_subnets", 1), kw.get("full_only_epochs", 1), epoch, random.Random(seed))


HEADS = ViTConfig(**TINY, extra_resolutions=(24,))
RATIO = ViTConfig(**TINY, extra_resolutions=(24,), slicing="ratio")
GRID = VariantGrid((0.25, 0.5, 1.0), (1.0, 0.7, 0.5), (32, 24))


# --------------------------------------------------------------------------- recipe plans


def test_sandwich_plan_largest_learns_labels_smallest_and_random_distil_from_it():
    seen = Counter()
    for seed in range(200):
        plan = RECIPES["sandwich"](context(HEADS, GRID, seed=seed, random_subnets=2))
        assert [m.subnet.id for m in plan[:1]] == ["w64_k100_r32"] and plan[0].labels
        assert len(plan) == 4 and all(m.distil_from == 0 and not m.labels for m in plan[1:])
        assert plan[1].subnet.embed_dim == 16
        seen[plan[1].subnet.id] += 1
    assert len(seen) == 6  # the smallest width at every keep rate and resolution


def test_hydravit_plan_one_width_per_batch_uniform_or_weighted():
    uniform = Counter(RECIPES["hydravit"](context(HEADS, GRID, seed=s))[0].subnet.embed_dim for s in range(600))
    assert set(uniform) == {16, 32, 64} and min(uniform.values()) > 150
    weighted = Counter(RECIPES["hydravit"](context(HEADS, GRID, seed=s, weights=(0, 1, 3)))[0].subnet.embed_dim
                       for s in range(400))
    assert weighted[16] == 0 and 2.3 < weighted[64] / weighted[32] < 4
    plan = RECIPES["hydravit"](context(HEADS, GRID))
    assert len(plan) == 1 and plan[0].labels and plan[0].distil_from is None


def test_scala_plan_chain_of_four_each_distils_from_the_next_larger_after_warmup():
    grid = VariantGrid((0.25, 0.5, 0.625, 0.75, 1.0), (1.0,), (32,))
    assert [m.subnet.id for m in RECIPES["scala"](context(RATIO, grid, epoch=0))] == ["w64_k100_r32"]
    for seed in range(20):
        plan = RECIPES["scala"](context(RATIO, grid, epoch=1, seed=seed))
        dims = [m.subnet.embed_dim for m in plan]
        assert dims[0] == 64 and dims[1] in (48,) and dims[2] in (32, 40) and dims[3] == 16
        assert [m.distil_from for m in plan] == [None, 0, 1, 2] and all(m.labels for m in plan)
    assert {m.subnet.channels for m in plan} == {"first", "last"}  # Isolated Activation in the chain


def test_supervit_plan_full_token_pairs_learn_labels_kept_tokens_distil_from_their_match():
    for seed in range(30):
        plan = RECIPES["supervit"](context(HEADS, GRID, seed=seed))
        s = [m.subnet for m in plan]
        assert [(x.keep_rate, x.resolution) for x in s[:2]] == [(1.0, 32), (1.0, 24)]
        assert all(x.keep_rate < 1 for x in s[2:]) and [x.resolution for x in s[2:]] == [32, 24]
        assert [m.labels for m in plan] == [True, True, False, False]
        assert [m.distil_from for m in plan] == [None, None, 0, 1]
        assert len({x.embed_dim for x in s}) == 1
    with pytest.raises(ConfigError, match="keep rate 1.0"):
        RECIPES["supervit"](context(HEADS, VariantGrid((1.0,), (0.5,), (32,))))


def test_teacher_loss_mixes_cross_entropy_and_kl_by_teacher_weight():
    model = tiny_model().train()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    t = torch.randn(8, 10)
    s = model.subnet()
    plan = RECIPES["hydravit"](context(HEADS, VariantGrid((1.0,), (1.0,), (32,))))
    cfg = TrainConfig(teacher_weight=0.3, label_smoothing=0.0)
    loss, _ = run_members(model, plan, {32: x}, y, cfg, TeacherOutput(t), amp=False)
    with torch.no_grad():
        logits = model(x, s)
        want = 0.7 * torch.nn.functional.cross_entropy(logits, y) + 0.3 * kl(logits, t)
    assert abs(loss - float(want)) < 1e-5


# --------------------------------------------------------------------------- config


def test_config_file_then_flags_unknown_keys_get_did_you_mean(tmp_path):
    (tmp_path / "c.yaml").write_text("recipe: scala\nepochs: 7\nlr: 1e-3\nmodel: {depth: 2}\n")
    (tmp_path / "c.toml").write_text('recipe = "hydravit"\nwidths = [0.5, 1.0]\n')
    cfg = resolve_config(tmp_path / "c.yaml", epochs=3, lr=None)
    assert (cfg.recipe, cfg.epochs, cfg.lr, cfg.model_config(10).depth) == ("scala", 3, 1e-3, 2)
    assert resolve_config(tmp_path / "c.toml").widths == (0.5, 1.0)
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match='unknown training config key "epoch" \\(did you mean "epochs"'):
        resolve_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match='did you mean "embed_dim"'):
        TrainConfig(model={"embed_dims": 32})
    with pytest.raises(ConfigError, match='"recipe" must be one of .* \\(did you mean "scala"'):
        train(TrainConfig(recipe="scalla"))


# --------------------------------------------------------------------------- CLI, every recipe


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from exporter import cli as cli_mod

    monkeypatch.setattr(sys, "argv", ["slimvit", *args])
    code = 0
    try:
        cli_mod.main()
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_trains_from_the_cli(recipe, tmp_path, monkeypatch, capsys):
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in QUICK.items()}))
    out = tmp_path / "run"
    teacher = []
    if RECIPES[recipe].needs_teacher:  # sit: distils from (and starts from) a trained model
        path = save_checkpoint(tiny_model(extra_resolutions=(24,)), tmp_path / "teacher.safetensors",
                               [str(i) for i in range(10)], Preprocess())
        teacher = ["--teacher", str(path)]
    code, stdout, err = cli(monkeypatch, capsys, "train", "--config", str(tmp_path / "quick.yaml"),
                            "--recipe", recipe, "--out", str(out), *teacher)
    assert code == 0, err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1]["step"] == 10
    assert log[1]["loss"] < log[0]["loss"]
    results = json.loads((out / "results.json").read_text())
    assert len(results["heldout_accuracy"]) == 8 and "w32_k50_r24" in stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["recipe"] == recipe and saved["epochs"] == 2
    loaded = load_model(out / "model.safetensors")  # slimvit's own format: export/variants read it
    heldout = load_dataset("digits", 32).heldout
    for s in (loaded.model.subnet(), loaded.model.subnet(GRID.variants()[-1])):
        assert accuracy(loaded.model, heldout, loaded.preprocess, s) == results["heldout_accuracy"][s.id]


def test_unknown_recipe_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "train", "--recipe", "sandwhich", "--out", str(tmp_path / "o"))
    assert code == 2 and 'did you mean "sandwich"' in err and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    cfg = TrainConfig(**{**QUICK, "epochs": 3, "train_limit": 96}, ema_decay=0.9)
    whole = train(cfg, tmp_path / "whole")

    def stop_after_2(e):
        if e["event"] == "epoch" and e["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", progress=stop_after_2)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = train(cfg, tmp_path / "cut", resume=tmp_path / "cut")
    def curve(p):
        return [(r["epoch"], r["loss"]) for r in map(json.loads, (p / "log.jsonl").read_text().splitlines())]

    assert curve(tmp_path / "cut") == curve(tmp_path / "whole")  # bit-identical loss curve
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.accuracies == whole.accuracies
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)  # tensors and plain values only
    assert state["epoch"] == 3 and set(state["ema"]) == set(state["model"])


def test_resume_refuses_another_architecture_and_overwrites_nothing(tmp_path):
    cfg = TrainConfig(**{**QUICK, "epochs": 1, "train_limit": 64})
    train(cfg, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    other = TrainConfig(**{**QUICK, "epochs": 2, "train_limit": 64}, model={"embed_dim": 32})
    with pytest.raises(CheckpointError, match="another architecture .*embed_dim: saved 64 vs now 32"):
        train(other, tmp_path / "run", resume=tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(cfg, tmp_path / "run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


# --------------------------------------------------------------------------- teacher, separate


def test_teacher_checkpoint_and_separate_widths(tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    save_checkpoint(tiny_model(), teacher)
    r = train(TrainConfig(**{**QUICK, "epochs": 1}, teacher=str(teacher)))
    assert len(r.accuracies) == 8
    save_checkpoint(tiny_model(num_classes=5), tmp_path / "five.safetensors")
    with pytest.raises(ConfigError, match="predicts 5 classes but the dataset has 10"):
        train(TrainConfig(**QUICK, teacher=str(tmp_path / "five.safetensors")))
    sep = train_separate(TrainConfig(**{**QUICK, "epochs": 1}))
    assert {d: r.model.cfg.embed_dim for d, r in sep.per_width.items()} == {64: 64, 32: 32}
    assert sep.per_width[32].model.cfg.num_heads == 2  # HydraViT: fewer heads of the same size
    assert set(sep.accuracies) == {f"w{d}_k{k}_r{r}" for d in (64, 32) for k in (100, 50) for r in (32, 24)}


# --------------------------------------------------------------------------- ImageFolder


def write_image(path: Path, color, size=(12, 12), mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.clip(np.array(color)[None, None] + np.random.default_rng(len(str(path))).integers(-30, 30, (*size, 3)),
                  0, 255).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(path)


def test_image_folder_trains_and_counts_converted_images(tmp_path):
    colors = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for name, c in colors.items():
        for i in range(12):
            mode = "RGBA" if i == 0 else "RGB"
            write_image(tmp_path / "data" / name / f"{i}.png", c, (16, 16) if i == 1 else (12, 12), mode)
    r = train(TrainConfig(dataset=str(tmp_path / "data"), epochs=3, batch_size=12, warmup_epochs=0, lr=3e-3,
                          widths=(0.5, 1.0), keep_rates=(1.0,)))
    assert r.notes == ["converted 3 of 36 images to RGB",
                       "resized 36 of 36 images of 2 different sizes to 32x32"]
    assert r.labels == ["blue", "green", "red"] and min(r.accuracies.values()) == 1.0  # 6 held-out images


def test_bad_datasets_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match='did you mean "digits"'):
        load_dataset("digit", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_dataset(str(tmp_path / "empty"), 32)
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no images"):
        load_dataset(str(tmp_path / "noimg"), 32)
    write_image(tmp_path / "bad" / "a" / "0.png", (1, 2, 3))
    write_image(tmp_path / "bad" / "b" / "0.png", (1, 2, 3))
    (tmp_path / "bad" / "b" / "1.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="1 image\\(s\\) cannot be read: .*1.jpg"):
        load_dataset(str(tmp_path / "bad"), 32)
