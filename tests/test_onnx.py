"""ONNX artifacts: parity through ONNX Runtime, determinism, mobile-friendly graph properties."""


import numpy as np
import onnx
import pytest
import torch

from exporter.convert.formats import FORMATS, get_format
from exporter.convert.validate import validate_artifact
from exporter.errors import ValidationError
from exporter.nn.config import Variant
from exporter.nn.extract import extract_variant
from tests.onnx_graph import int64_data_values, tensor_types

VARIANTS = [Variant(1.0, 1.0, 32), Variant(0.5, 0.5, 32), Variant(0.25, 0.7, 24)]


def export(model, v, path):
    static = extract_variant(model, v)
    example = np.random.default_rng(0).standard_normal((1, 3, v.resolution, v.resolution)).astype(np.float32)
    get_format("onnx").export(static, example, path, {"slimvit.variant_id": "x"})
    return static


@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: f"w{v.width}_k{v.keep_rate}_r{v.resolution}")
def test_onnx_runtime_matches_the_slimmable_model(model, tmp_path, v):
    path = tmp_path / "v.onnx"
    export(model, v, path)
    # Inputs other than the export's example input.
    x = np.random.default_rng(7).standard_normal((4, 3, v.resolution, v.resolution)).astype(np.float32)
    got = get_format("onnx").run(path, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x), v).numpy()
    assert np.abs(got - want).max() <= 1e-5



def test_graph_is_static_rank4_self_contained_and_int64_only_on_the_topk_path(model, tmp_path):
    path = tmp_path / "v.onnx"
    export(model, Variant(0.5, 0.5, 32), path)
    proto = onnx.load(str(path), load_external_data=False)
    assert not [i.name for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert list(tmp_path.iterdir()) == [path]  # no side files
    types = tensor_types(path)
    assert max(len(dims) for _, dims in types.values()) <= 4
    assert all(isinstance(d, int) and d > 0 for _, dims in types.values() for d in dims), "dynamic dim"
    assert types["pixel_values"] == (onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    assert types["logits"] == (onnx.TensorProto.FLOAT, [1, 10])
    # ONNX TopK must return int64 indices; nothing else may carry int64 data.
    ops = {o: n.op_type for n in proto.graph.node for o in n.output}
    producers = {ops.get(name) for name in int64_data_values(path)}
    assert producers <= {"TopK", "Unsqueeze", "Expand", "Slice"}, producers
    assert sum(n.op_type == "TopK" for n in proto.graph.node) == 3  # prune blocks 1, 2, 3
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["slimvit.variant_id"] == "x"


def test_a_mismatch_is_an_error_that_lists_the_diff_and_tolerance(model, tmp_path):
    path = tmp_path / "v.onnx"
    static = export(model, Variant(1.0, 1.0, 32), path)
    with torch.no_grad():
        static.head.bias.add_(0.01)  # the reference drifts from what was exported
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with pytest.raises(ValidationError, match=r"logits: max abs diff 0\.01 > atol 0\.0001"):
        validate_artifact(get_format("onnx"), path, static, x)


def test_format_registry_rejects_unknown_names_with_a_suggestion():
    assert "onnx" in FORMATS
    with pytest.raises(Exception, match='did you mean "onnx"'):
        get_format("onxx")
