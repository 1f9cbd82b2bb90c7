"""Tiny models and shared fixtures: embed 32-64, depth 2-4, 32 px images keep the suite fast."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from exporter.bundle.export import export_bundle
from exporter.checkpoints import LoadedModel
from exporter.nn.config import VariantGrid, ViTConfig
from exporter.nn.model import SlimmableViT

# Under pytest-xdist (make test runs one worker per core) each worker computes on one thread.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

# Exports in tests cache their artifacts in a throwaway folder, never in the user's ~/.cache.
if "SLIMVIT_CACHE_DIR" not in os.environ:
    os.environ["SLIMVIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="slimvit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SLIMVIT_CACHE_DIR"], True)

TINY = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=64, depth=4, num_heads=4)


def tiny_model(seed: int = 0, **overrides) -> SlimmableViT:
    """A randomly initialised tiny slimmable ViT with non-trivial weights everywhere
    (biases, LayerNorm affine and tokens too, so a wrong slice cannot hide)."""
    torch.manual_seed(seed)
    model = SlimmableViT(ViTConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") or "token" in name or "pos_embed" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def model() -> SlimmableViT:
    return tiny_model()


@pytest.fixture
def loaded(model: SlimmableViT) -> LoadedModel:
    return LoadedModel(model, "tiny", "slimvit", [str(i) for i in range(10)])


@pytest.fixture
def small_grid() -> VariantGrid:
    return VariantGrid(widths=(0.5, 1.0), keep_rates=(1.0, 0.5), resolutions=(32,))


# ---------------------------------------------------------------- a real bundle, shared

def build_real_bundle() -> Path:
    """One real ONNX bundle (two tiny variants), exported once per test process: test_signing
    shares it (pytest may import this module twice, so the cache is a directory named by pid),
    and the tests copy it before they change anything."""
    tmp = Path(tempfile.gettempdir()) / f"slimvit-verify-{os.getpid()}"
    if not (tmp / "bundle" / "manifest.json").is_file():
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        loaded = LoadedModel(tiny_model(depth=2), "tiny", "slimvit", [str(i) for i in range(10)])
        grid = VariantGrid(widths=(0.5,), keep_rates=(1.0, 0.5), resolutions=(32,))
        export_bundle(loaded, grid, tmp / "bundle")
    return tmp / "bundle"


@pytest.fixture
def real_bundle() -> Path:
    return build_real_bundle()


def manifest_of(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def rewrite(b: Path, change) -> None:
    m = manifest_of(b)
    change(m)
    (b / "manifest.json").write_text(json.dumps(m, indent=2))


def first_artifact(b: Path) -> Path:
    return b / manifest_of(b)["variants"][0]["artifacts"][0]["path"]


def flip_byte(b):
    p = first_artifact(b)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    return "does not match the manifest"
