"""The ONNX attention fusion: fused graphs run in ONNX Runtime and match PyTorch, blocks that
cannot be fused are left as they were, and the int8/fp16 artifacts keep the fused node."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporter.convert.formats import get_format
from exporter.convert.formats.onnx import OnnxFormat
from exporter.convert.onnx_graph import fuse_attention
from exporter.convert.quantize import QuantJob, get_precision
from exporter.nn.config import Variant
from exporter.nn.extract import extract_variant
from tests.conftest import tiny_model


class _Unfused(OnnxFormat):
    graph_passes = False


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _export(model, v: Variant, path: Path, fmt=None) -> torch.nn.Module:
    static = extract_variant(model, v)
    x = np.random.default_rng(0).standard_normal((1, 3, v.resolution, v.resolution)).astype(np.float32)
    (fmt or get_format("onnx")).export(static, x, path, {})
    return static


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False}], ids=["bias", "no-qkv-bias"])
def test_fused_graph_matches_pytorch_and_the_unfused_graph(tmp_path, overrides):
    model = tiny_model(**overrides)
    v = Variant(1.0, 1.0, 32)
    _export(model, v, tmp_path / "fused.onnx")
    _export(model, v, tmp_path / "plain.onnx", _Unfused())
    ops = _ops(tmp_path / "fused.onnx")
    assert ops.count("Attention") == model.cfg.depth
    assert "Softmax" not in ops and "Split" not in ops and ops.count("Transpose") == 1  # patch flatten
    assert len(ops) <= len(_ops(tmp_path / "plain.onnx")) - 8 * model.cfg.depth  # 10 (9 without bias) -> 1
    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    fmt = get_format("onnx")
    got, plain = fmt.run(tmp_path / "fused.onnx", x), fmt.run(tmp_path / "plain.onnx", x)
    with torch.no_grad():
        want = model(torch.from_numpy(x), v).numpy()
    assert np.abs(got - want).max() <= 1e-5 and np.abs(got - plain).max() <= 1e-6


def test_blocks_that_prune_tokens_by_attention_stay_unfused(tmp_path):
    model = tiny_model()
    _export(model, Variant(0.5, 0.5, 32), tmp_path / "v.onnx")
    ops = _ops(tmp_path / "v.onnx")
    # blocks 1-3 rank tokens by their attention probabilities: those need the Softmax output
    assert ops.count("Attention") == 1 and ops.count("Softmax") == 3 and ops.count("TopK") == 3


def test_a_chain_that_differs_anywhere_is_left_alone(tmp_path):
    model = tiny_model()
    _export(model, Variant(1.0, 1.0, 32), tmp_path / "plain.onnx", _Unfused())
    proto = onnx.load(str(tmp_path / "plain.onnx"))
    k_t = [n for n in proto.graph.node if n.op_type == "Transpose"
           and list(n.attribute[0].ints) == [0, 1, 3, 2]]
    k_t[0].attribute[0].ints[:] = [0, 1, 2, 3]  # block 0: no longer q @ k^T
    softmax = [n for n in proto.graph.node if n.op_type == "Softmax"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(softmax[1].output[0], 1, None))
    before = len(proto.graph.node)
    assert fuse_attention(proto) == model.cfg.depth - 2  # block 1's probabilities are an output
    assert len(proto.graph.node) < before
    assert fuse_attention(proto) == 0  # idempotent: nothing left to match


def _quantize(tmp_path, fp32: Path, static, precision: str, target: str) -> Path:
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    out = tmp_path / f"{precision}_{target}.onnx"
    get_precision("onnx", precision).quantize(QuantJob(fp32, static, x[:1], x, "minmax", (), {}, out,
                                                       target=target))
    return out


def test_int8_turns_attention_into_qattention_with_the_calibrated_uint8_grid(tmp_path):
    model = tiny_model()
    fp32 = tmp_path / "fp32.onnx"
    static = _export(model, Variant(1.0, 1.0, 32), fp32)
    x = np.random.default_rng(5).standard_normal((16, 3, 32, 32)).astype(np.float32)
    ref = get_format("onnx").run(fp32, x)
    outs = {}
    for target in ("x86-vnni", "arm-dotprod"):
        path = _quantize(tmp_path, fp32, static, "int8", target)
        proto = onnx.load(str(path))
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("QAttention") == model.cfg.depth and "Attention" not in ops
        assert [o.name for o in proto.graph.output] == ["logits"]  # calibration probes are gone
        inits = {t.name: t for t in proto.graph.initializer}
        for n in (n for n in proto.graph.node if n.op_type == "QAttention"):
            assert inits[n.input[6]].data_type == onnx.TensorProto.UINT8  # the CPU kernel's input type
            assert inits[n.input[1]].data_type == onnx.TensorProto.INT8
            assert numpy_helper.to_array(inits[n.input[4]]).shape == (inits[n.input[1]].dims[1],)  # per column
        outs[target] = get_format("onnx").run(path, x)
        assert (outs[target].argmax(1) == ref.argmax(1)).mean() >= 0.9
        assert np.abs(outs[target] - ref).max() < 0.1 * np.abs(ref).max()
    dyn = _quantize(tmp_path, fp32, static, "int8-dynamic", "x86-vnni")
    assert _ops(dyn).count("QAttention") == model.cfg.depth


def test_fp16_keeps_attention_in_float32_but_stores_its_weights_in_float16(tmp_path):
    model = tiny_model()
    fp32 = tmp_path / "fp32.onnx"
    static = _export(model, Variant(1.0, 1.0, 32), fp32)
    half = _quantize(tmp_path, fp32, static, "fp16", "arm-dotprod")
    proto = onnx.load(str(half))
    assert [n.op_type for n in proto.graph.node].count("Attention") == model.cfg.depth
    big_float = [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                 and np.prod(t.dims) > 64]
    assert big_float == []
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert np.abs(get_format("onnx").run(half, x) - get_format("onnx").run(fp32, x)).max() < 0.02


def test_the_tail_runs_on_the_head_token_only_and_still_matches(tmp_path):
    from tests.onnx_graph import tensor_types

    model = tiny_model()
    v = Variant(1.0, 1.0, 32)
    _export(model, v, tmp_path / "v.onnx")
    proto = onnx.load(str(tmp_path / "v.onnx"))
    types = tensor_types(tmp_path / "v.onnx")
    gelus = [n.output[0] for n in proto.graph.node if n.op_type == "Gelu"]
    norms = [n.output[0] for n in proto.graph.node if n.op_type == "LayerNormalization"]
    hidden, dim = 4 * model.cfg.embed_dim, model.cfg.embed_dim
    # the last block's MLP and the final LayerNorm see one token; every other block all 17
    assert [types[g][1] for g in gelus] == [[1, 17, hidden]] * (model.cfg.depth - 1) + [[1, hidden]]
    assert [types[n][1] for n in norms][-3:] == [[1, 17, dim], [1, dim], [1, dim]]
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), v).numpy()
    assert np.abs(get_format("onnx").run(tmp_path / "v.onnx", x) - want).max() <= 1e-5


def test_narrowing_stops_where_token_axis_or_other_readers_differ():
    from onnx import TensorProto, helper

    from exporter.convert.onnx_graph import narrow_tokens

    def graph(y_shape, extra_reader=False):
        nodes = [helper.make_node("Add", ["x", "y"], ["s"]),
                 helper.make_node("Gelu", ["s"], ["h"]),
                 helper.make_node("Gather", ["h", "zero"], ["out"], axis=1)]
        outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
        if extra_reader:  # a second reader needs every token of h
            nodes.append(helper.make_node("Relu", ["h"], ["m"]))
            outs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 4]),
                                           helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              outs, [numpy_helper.from_array(np.array(0, np.int64), "zero")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])  # Gelu: opset 20

    ok = graph([1, 5, 4])
    assert narrow_tokens(ok) == 2  # Gelu, then Add: both now read token 0 of x and y
    assert [n.op_type for n in ok.graph.node] == ["Gather", "Gather", "Add", "Gelu"]
    assert [o.name for o in ok.graph.output] == ["out"]
    assert narrow_tokens(graph([5, 4])) == 1  # y's axis 1 is not the token axis: stop at the Add
    assert narrow_tokens(graph([1, 5, 4], extra_reader=True)) == 0
