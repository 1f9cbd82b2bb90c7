"""What a person reads from the CLI: help without noise, --version, width snapping and token
counts said out loud, MMACs everywhere, recipes and JSON output complete."""

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.checkpoints import save_checkpoint
from exporter.nn.config import VariantGrid, ViTConfig
from exporter.nn.grid_notes import width_notes
from tests.conftest import tiny_model

SLIMVIT = [sys.executable, "-m", "exporter.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SLIMVIT, *args], capture_output=True, text=True, timeout=300,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.fixture(scope="module")
def ckpt3(tmp_path_factory) -> Path:
    """A 3-head model, where the default widths cannot be met exactly."""
    path = tmp_path_factory.mktemp("ckpt") / "three_heads.safetensors"
    save_checkpoint(tiny_model(embed_dim=48, num_heads=3), path)
    return path


@pytest.mark.parametrize("args", [["--help"], ["select", "--help"], ["export", "--help"], ["bundle", "--help"]])
def test_help_shows_no_bool_metavar_and_no_braced_usage(args):
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout and "{bundle}" not in r.stdout and "{checkpoint}" not in r.stdout


def test_usage_names_arguments_in_capitals():
    assert "select [OPTIONS] BUNDLE" in run("select", "--help").stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("slimvit ")


def test_train_recipe_help_lists_every_registered_recipe_and_sit():
    from exporter.training.recipes import RECIPES

    text = " ".join(run("train", "--help").stdout.split())
    for name in [*RECIPES, "sit"]:
        assert name in text, f"recipe {name} missing from `train --help`"


def test_calibration_samples_has_help():
    text = " ".join(run("export", "--help").stdout.split())
    assert "--calibration-samples <int> Images drawn" in text


def test_width_snapping_is_said_and_a_collapse_warned():
    cfg = ViTConfig(img_size=32, patch_size=8, num_classes=10, embed_dim=48, depth=4, num_heads=3)
    info, warn = width_notes(cfg, VariantGrid((0.5, 0.6, 1.0)))
    assert info and "0.5 -> 0.6667" in info[0] and "0.6 -> 0.6667" in info[0] and "1 -> 1 " in info[0]
    assert warn == ["widths 0.5, 0.6 both give embed 32: one variant instead of 2; pick widths that "
                    "differ by at least 0.333 (one head)"]
    assert width_notes(cfg, VariantGrid((1 / 3, 1.0))) == ([], [])


def test_variants_prints_mapping_tokens_per_stage_and_mmacs(ckpt3):
    r = run("variants", str(ckpt3), "--widths", "0.25,0.5,1.0", "--keep-rates", "1.0,0.5")
    assert r.returncode == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "0.25 -> 0.3333" in err and "0.5 -> 0.6667" in err
    assert "MMACs" in r.stdout and "0.6667" not in r.stdout
    # 32 px / 8 px patches = 16 patches + CLS; keep 0.5 prunes at the prune blocks and compounds
    assert "17>" in r.stdout


def test_select_json_has_tier_and_rule(tmp_path):
    import json

    from tests.profiled_bundle import copy_bundle

    bundle = copy_bundle(tmp_path)
    r = run("select", str(bundle), "--thermal", "none", "--battery", "15", "--json")
    got = json.loads(r.stdout)
    assert set(got) == {"variant", "tier", "rule", "reason"} and got["rule"] in ("battery", "best")
