"""SiT: the Token Slimming Module extracts exactly, counts right, exports with no top-k or
gather through every format, and dense distillation trains it."""

import itertools
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from calibration.data import Preprocess
from exporter.checkpoints import LoadedModel, save_checkpoint
from exporter.convert.formats import get_format
from exporter.errors import ConfigError
from exporter.nn.config import Variant, VariantGrid, ViTConfig, resolve
from exporter.nn.cost import mac_count, param_count
from exporter.nn.extract import extract_variant, static_spec
from exporter.training import RECIPES, TrainConfig, train
from exporter.training.sit import student_from_teacher, token_reconstruction
from tests.conftest import TINY, tiny_model
from tests.onnx_graph import int64_data_values, tensor_types

SETTINGS = {
    "hydravit-tsm": dict(token_reducer="tsm"),
    "scala-tsm-distilled": dict(token_reducer="tsm", slicing="ratio", distilled=True, extra_resolutions=(24,)),
}
GATHER_OPS = {"GATHER", "GATHER_ND", "TOPK_V2"}


@pytest.mark.parametrize("setting", SETTINGS)
def test_tsm_variant_equals_the_slimmable_model_and_counts_match_torch(setting):
    model = tiny_model(**SETTINGS[setting])
    x = torch.randn(2, 3, 32, 32)
    worst = 0.0
    for w, k, r in itertools.product((0.25, 0.5, 1.0), (1.0, 0.7, 0.5), (32, 24)):
        v = Variant(w, k, r)
        static = extract_variant(model, v)
        xr = torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear")
        with torch.no_grad():
            worst = max(worst, (static(xr) - model(xr, v)).abs().max().item())
        if k == 1.0 or (w, r) not in ((1.0, 32), (0.5, 24)):
            continue  # the counters are slow; count the slimming variants of two sizes
        spec = static_spec(model, resolve(model.cfg, v))
        assert param_count(spec) == sum(p.numel() for p in static.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            static(xr[:1])
        assert 2 * mac_count(spec) == counter.get_total_flops()
    assert worst <= 1e-5


def test_tsm_shares_weights_over_keep_rates_and_differs_from_topk_only_when_slimming():
    tsm = tiny_model(token_reducer="tsm")
    topk = tiny_model()
    topk.load_state_dict({k: v for k, v in tsm.state_dict().items() if ".tsm." not in k})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tsm(x, Variant(1.0, 1.0)), topk(x, Variant(1.0, 1.0)))
        assert (tsm(x, Variant(1.0, 0.5)) - topk(x, Variant(1.0, 0.5))).abs().max() > 1e-3
    a, b = extract_variant(tsm, Variant(1.0, 0.7)), extract_variant(tsm, Variant(1.0, 0.5))
    # Block 1 (the first prune block) slims 17 tokens to 12 at keep 0.7 and to 9 at keep 0.5:
    # the first output slots of one module.
    assert a.blocks[1].tsm.fc2.weight.shape == (12, 32) and b.blocks[1].tsm.fc2.weight.shape == (9, 32)
    assert torch.equal(a.blocks[1].tsm.fc2.weight[:9], b.blocks[1].tsm.fc2.weight)
    with pytest.raises(ConfigError, match="fuse_tokens"):
        ViTConfig(**TINY, token_reducer="tsm", fuse_tokens=True)
    with pytest.raises(ConfigError, match="token_reducer"):
        ViTConfig(**TINY, token_reducer="topq")


def test_onnx_graph_has_no_topk_or_gather_and_no_int64_data(tmp_path):
    model = tiny_model(token_reducer="tsm")
    static = extract_variant(model, Variant(0.5, 0.5, 32))
    path = tmp_path / "tsm.onnx"
    example = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    get_format("onnx").export(static, example, path, {"slimvit.variant_id": "x"})
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert not set(ops) & {"TopK", "GatherElements", "GatherND"}, ops
    # The one Gather is the classifier's pick of the CLS token (x[:, 0], a constant index).
    [cls_pick] = [n for n in proto.graph.node if n.op_type == "Gather"]
    consts = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    assert cls_pick.input[1] in consts
    assert not int64_data_values(path)
    assert max(len(d) for _, d in tensor_types(path).values()) <= 4
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), Variant(0.5, 0.5, 32)).numpy()
    assert np.abs(get_format("onnx").run(path, x) - want).max() <= 1e-5


def test_tsm_variant_exports_through_every_format_and_tflite_has_no_gather(tmp_path):
    from exporter.bundle.export import export_bundle
    from exporter.convert.formats.tflite import graph_info

    loaded = LoadedModel(tiny_model(token_reducer="tsm"), "tiny-tsm", "slimvit", [str(i) for i in range(10)])
    manifest = export_bundle(loaded, VariantGrid((1.0,), (0.5,), (32,)), tmp_path, ["onnx", "tflite", "coreml"])
    [v] = manifest["variants"]
    arts = {a["format"]: a for a in v["artifacts"]}
    assert set(arts) == {"onnx", "tflite", "coreml"}
    assert arts["onnx"]["validation"]["max_abs_diff"] <= 1e-4
    assert arts["tflite"]["validation"]["max_abs_diff"] <= 1e-4
    info = graph_info(tmp_path / arts["tflite"]["path"])
    assert not set(info.ops) & GATHER_OPS, info.ops
    assert info.ops.get("BATCH_MATMUL", 0) >= 3 + 8  # 3 token slimmings + 2 per attention
    assert (tmp_path / arts["coreml"]["path"]).is_dir()


def test_dense_distillation_targets_and_gradients():
    teacher = tiny_model()
    student = student_from_teacher(teacher)
    x = torch.randn(4, 3, 32, 32)
    full, slim = student.subnet(Variant(1.0, 1.0)), student.subnet(Variant(1.0, 0.5))
    with torch.no_grad():
        t_feats = teacher.features(x, full)
    out = student.features(x, full, track=True)
    assert out.assign is None and torch.allclose(student.forward_head(out.tokens, full),
                                                 teacher.forward_head(t_feats.tokens, full))
    assert token_reconstruction(out, t_feats, 1).item() == pytest.approx(0, abs=1e-10)
    assert token_reconstruction(out, None, 1) is None
    out = student.features(x, slim, track=True)
    assert out.tokens.shape == (4, 1 + slim.tokens[-1] - 1, 64) and out.assign.shape == (4, 3, 16)
    assert torch.allclose(out.assign.sum(-1), torch.ones(4, 3))  # each final token mixes the patches
    with torch.no_grad():
        assert torch.allclose(student.forward_head(out.tokens, slim), student(x, slim), atol=1e-6)
    token = token_reconstruction(out, t_feats, 1)
    token.backward()
    assert token > 0 and student.blocks[1].tsm.fc2.weight.grad.abs().sum() > 0


def test_sit_is_a_recipe_of_the_one_loop_and_moves_the_slimming_modules(tmp_path):
    teacher = tiny_model()
    path = save_checkpoint(teacher, tmp_path / "teacher.safetensors", [str(i) for i in range(10)], Preprocess())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    tsm0 = student_from_teacher(teacher).blocks[1].tsm.fc2.weight.detach().clone()
    assert RECIPES["sit"].needs_teacher and RECIPES["sit"].extra_losses == (token_reconstruction,)
    cfg = TrainConfig(recipe="sit", teacher=str(path), epochs=1, batch_size=32, train_limit=64,
                      widths=(1.0,), keep_rates=(1.0, 0.5), resolutions=(32,), lr=5e-4)
    result = train(cfg)
    student = result.model
    assert student.cfg.token_reducer == "tsm" and not torch.equal(student.blocks[1].tsm.fc2.weight, tsm0)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert np.isfinite(result.history[0]["loss"]) and set(result.accuracies) == {"w64_k100_r32", "w64_k50_r32"}
    with pytest.raises(ConfigError, match="--teacher CHECKPOINT"):
        train(TrainConfig(recipe="sit", epochs=1))


def test_sit_cli_needs_a_teacher_and_the_tsm_reducer(tmp_path):
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "train", "--recipe", "sit", "--token-reducer", "tsm",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--teacher CHECKPOINT" in r.stderr
    assert not list(tmp_path.iterdir())
