"""ViT-Slim: searched non-uniform structures are index-selected, physically smaller, within the
MAC budget, equal to the masked model, and they save, load and export like any variant."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from calibration.data import Preprocess
from exporter.checkpoints import load_model, save_checkpoint
from exporter.errors import ConfigError
from exporter.nn.config import Variant, VariantGrid
from exporter.nn.cost import mac_count, param_count
from exporter.nn.extract import extract_variant
from exporter.nn.searched import full_macs, structure_spec
from exporter.training.search import Masks, extract_structure, masked_forward, structure_at, structure_for_budget
from tests.conftest import tiny_model


def random_masks(model, seed=0) -> Masks:
    torch.manual_seed(seed)
    masks = Masks(model.cfg)
    with torch.no_grad():
        for m in masks.parameters():
            m.copy_(torch.rand_like(m))
    return masks


def hard_masks(model, st) -> Masks:
    """0/1 masks that keep exactly the structure's dims and units."""
    masks = Masks(model.cfg)
    with torch.no_grad():
        masks.attn.zero_()
        masks.mlp.zero_()
        for i, (heads, dims, units) in enumerate(zip(st.heads, st.head_dims, st.mlp_units, strict=True)):
            for h, d in zip(heads, dims, strict=True):
                masks.attn[i, h, list(d)] = 1.0
            masks.mlp[i, list(units)] = 1.0
    return masks


@pytest.mark.parametrize("overrides", [{}, dict(slicing="ratio", distilled=True, qkv_bias=False)])
def test_structure_is_index_selected_within_budget_and_equals_the_masked_model(overrides):
    model = tiny_model(**overrides)
    st = structure_for_budget(random_masks(model), model.cfg, 0.5)
    spec = structure_spec(model.cfg, st)
    assert 0.4 * full_macs(model.cfg) <= mac_count(spec) <= 0.5 * full_macs(model.cfg)
    dims = st.layer_dims()
    assert len(set(dims)) > 1, "every layer got the same sizes"
    assert any(u != tuple(range(len(u))) for u in st.mlp_units), "MLP units are a prefix"
    assert len(st.token_positions) < 16
    static = extract_structure(model, st)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (static(x) - masked_forward(model, hard_masks(model, st), x, st.token_positions)).abs().max()
    assert diff <= 1e-5
    assert static.blocks[0].mlp.fc1.weight.shape == (dims[0].mlp_hidden, 64)  # physically smaller
    assert static.blocks[1].attn.qkv.weight.shape == (3 * dims[1].num_heads * dims[1].head_dim, 64)
    assert param_count(spec) == sum(p.numel() for p in static.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        static(x[:1])
    assert 2 * mac_count(spec) == counter.get_total_flops()


def test_unit_masks_give_the_full_model_and_thresholds_only_remove():
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (masked_forward(model, Masks(model.cfg), x) - model(x)).abs().max() <= 1e-6
    masks = random_masks(model, seed=1)
    small, large = structure_at(masks, 0.7), structure_at(masks, 0.2)
    assert mac_count(structure_spec(model.cfg, small)) < mac_count(structure_spec(model.cfg, large))
    assert set(small.token_positions) <= set(large.token_positions)


def test_a_budget_below_the_smallest_structure_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ConfigError, match="smallest structure"):
        structure_for_budget(random_masks(model), model.cfg, 0.001)


def test_search_cli_writes_a_checkpoint_that_exports_through_every_format(tmp_path):
    source = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), source)
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "search", str(source), "--budget-macs", "0.6",
                        "--out", str(tmp_path / "out"), "--limit", "96", "--search-epochs", "1",
                        "--finetune-epochs", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "out" / "tiny_slim.safetensors"  # --out: a new directory, not the input's
    assert "held-out top-1" in r.stderr and "layer" in r.stdout
    loaded = load_model(ckpt)
    model = loaded.model
    assert model.macs_fraction <= 0.6
    static = extract_variant(model, Variant())  # the exporter's path
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(static(x), model(x))
    with pytest.raises(ConfigError, match="one structure"):
        model.subnet(Variant(0.5))

    from exporter.bundle.export import export_bundle

    out = tmp_path / "bundle"
    manifest = export_bundle(loaded, VariantGrid((0.5, 1.0), (1.0, 0.5)), out, ["onnx", "tflite", "coreml"])
    [v] = manifest["variants"]  # the grid does not apply to a searched model
    assert v["id"].startswith("vitslim_m") and v["macs"] == mac_count(model.spec)
    assert [d["mlp_hidden"] for d in v["structure"]["layers"]] == [d.mlp_hidden for d in model.structure.layer_dims()]
    assert json.loads((out / "manifest.json").read_text())["variants"][0]["structure"] == v["structure"]
    by_format = {a["format"]: a for a in v["artifacts"]}
    assert set(by_format) == {"onnx", "tflite", "coreml"}
    for name in ("onnx", "tflite"):
        assert by_format[name]["validation"]["max_abs_diff"] <= 1e-4
    from exporter.convert.formats import get_format

    got = get_format("onnx").run(out / by_format["onnx"]["path"], x.numpy())
    assert np.abs(got - model(x).detach().numpy()).max() <= 1e-4


def test_a_searched_checkpoint_round_trips_bit_exactly(tmp_path):
    from exporter.checkpoints import save_searched
    from exporter.nn.searched import NonUniformViT

    model = tiny_model()
    st = structure_for_budget(random_masks(model, seed=2), model.cfg, 0.7)
    nu = NonUniformViT(model.cfg, st, 0.7)
    nu.net.load_state_dict(extract_structure(model, st).state_dict())
    pre = Preprocess((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic", 0.875)
    path = save_searched(nu.eval(), tmp_path / "s.safetensors", [str(i) for i in range(10)], pre)
    loaded = load_model(path)
    back = loaded.model
    assert back.structure == st
    assert loaded.preprocess == pre  # crop and resize survive, as for a uniform checkpoint
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), nu(x))


@pytest.mark.parametrize("key, value, says", [
    ("preprocess", "[]", '"preprocess" must be a JSON dict'),
    ("labels", "5", '"labels" must be a JSON list'),
    ("labels", json.dumps(["a", "b"]), '"labels"'),
    ("budget_macs", "nan", '"budget_macs" must be in (0, 1]'),
    ("structure", "{}", '"structure"'),
])
def test_a_searched_checkpoint_gets_every_metadata_check(tmp_path, key, value, says):
    """The structure key used to skip metadata validation: '[]' as preprocess was a traceback,
    '5' as labels loaded as the integer 5."""
    from safetensors.torch import load_file, save_file

    from exporter.checkpoints import save_searched
    from exporter.errors import CheckpointError
    from exporter.nn.searched import NonUniformViT

    model = tiny_model()
    st = structure_for_budget(random_masks(model, seed=3), model.cfg, 0.7)
    nu = NonUniformViT(model.cfg, st, 0.7)
    nu.net.load_state_dict(extract_structure(model, st).state_dict())
    good = save_searched(nu.eval(), tmp_path / "good.safetensors", [str(i) for i in range(10)], Preprocess())
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta = dict(f.metadata())
    meta[key] = value
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    assert says in str(e.value) and "\n" not in str(e.value)
