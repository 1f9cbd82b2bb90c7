"""Extraction: a fresh plain module, physically smaller, numerically equal to the slimmable model."""

import copy
import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from exporter.nn.config import Variant, resolve
from exporter.nn.cost import mac_count, param_count
from exporter.nn.extract import extract_variant, static_spec
from exporter.nn.model import SlimmableViT
from tests.conftest import tiny_model

SETTINGS = {
    "hydravit": dict(slicing="heads"),
    "scala": dict(slicing="ratio", min_ratio=0.25, ln_eps=1e-5),
    "supervit": dict(slicing="heads", extra_resolutions=(24,)),
    "evit-fused-distilled": dict(slicing="ratio", keep_rule="evit", fuse_tokens=True, distilled=True),
}
WIDTHS, KEEPS, RESOLUTIONS = (0.25, 0.5, 0.75, 1.0), (1.0, 0.7, 0.5), (32, 24, 16)


@pytest.mark.parametrize("setting", SETTINGS)
def test_extracted_variant_equals_slimmable_model_over_the_grid(setting):
    model = tiny_model(**SETTINGS[setting])
    x = torch.randn(3, 3, 32, 32)
    worst = 0.0
    for w, k, r in itertools.product(WIDTHS, KEEPS, RESOLUTIONS):
        v = Variant(w, k, r)
        static = extract_variant(model, v)
        xr = torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear")
        with torch.no_grad():
            diff = (static(xr) - model(xr, v)).abs().max().item()
        worst = max(worst, diff)
    assert worst <= 1e-5, f"{setting}: max abs diff {worst}"


def test_extraction_is_physically_smaller_plain_and_leaves_the_source_alone(model):
    before = copy.deepcopy(model.state_dict())
    static = extract_variant(model, Variant(0.5, 0.5, 32))
    full = sum(p.numel() for p in model.parameters())
    small = sum(p.numel() for p in static.parameters())
    assert small < 0.3 * full
    # No elastic modules, no shared storage with the source.
    assert not any(isinstance(m, SlimmableViT) for m in static.modules())
    src_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in src_ptrs for p in static.parameters())
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_heads_subnet_weights_are_the_first_channels(model):
    static = extract_variant(model, Variant(0.5))  # 2 of 4 heads -> 32 of 64 channels
    w = model.blocks[0].attn.qkv.weight
    got = static.blocks[0].attn.qkv.weight
    D, d = 64, 32
    assert got.shape == (3 * d, d)
    # k and v rows are plain slices; q rows carry the folded scale 1/sqrt(full head dim 16).
    assert torch.equal(got[d:2 * d], w[D:D + d, :d])
    assert torch.equal(got[2 * d:], w[2 * D:2 * D + d, :d])
    assert torch.allclose(got[:d], w[:d, :d] * 16 ** -0.5)


def test_ratio_intermediate_width_uses_last_channels():
    model = tiny_model(slicing="ratio")
    static = extract_variant(model, Variant(0.5))
    assert torch.equal(static.blocks[1].mlp.fc1.bias, model.blocks[1].mlp.fc1.bias[-128:])
    assert torch.equal(static.blocks[1].attn.qkv.weight[32:], model.blocks[1].attn.qkv.weight[-64:, -32:])
    assert torch.equal(static.head.bias, model.head.bias)  # head bias stays full


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("v", [Variant(1.0, 1.0, 32), Variant(0.5, 0.5, 32), Variant(0.25, 0.7, 24)])
def test_params_and_macs_match_torch_counters(setting, v):
    model = tiny_model(**SETTINGS[setting])
    s = resolve(model.cfg, v)
    static = extract_variant(model, s)
    spec = static_spec(model, s)
    assert param_count(spec) == sum(p.numel() for p in static.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        static(torch.randn(1, 3, v.resolution, v.resolution))
    assert 2 * mac_count(spec) == counter.get_total_flops()


def test_macs_match_published_hydravit_figures():
    """HydraViT's analytic GMACs for k = 3, 6, 12 heads at 224 px: 1.25, 4.6, 17.56."""
    from exporter.nn.config import ViTConfig

    model = SlimmableViT(ViTConfig(embed_dim=768, num_heads=12, depth=12))
    got = [round(mac_count(static_spec(model, resolve(model.cfg, Variant(k / 12)))) / 1e9, 2)
           for k in (3, 6, 12)]
    assert got == [1.25, 4.6, 17.56]
