"""Tiny models and shared fixtures: embed 32-64, depth 2-4, 32 px images keep the suite fast."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

from exporter.checkpoint import LoadedModel
from exporter.config import VariantGrid, ViTConfig
from exporter.model import SlimmableViT

torch.set_num_threads(min(2, os.cpu_count() or 1))

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
