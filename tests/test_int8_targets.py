"""INT8 targets: the setting, what it changes in the ONNX recipe, the manifest record, and the
warning `slimvit profile` gives on a host without the target's int8 unit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporter.errors import ConfigError
from exporter.convert.quantize import QuantizeOptions, get_precision
from exporter.convert.quantize.targets import (
    DEFAULT_TARGET, TARGETS, check_target, host_cpu_flags, host_has_unit, target_warnings,
)

X86_VNNI = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
ARM_DOTPROD = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimddp\n"
ARM_OLD = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n"


def test_targets_are_a_registry_with_a_phone_default_and_named_errors():
    assert list(TARGETS) == ["arm-dotprod", "x86-vnni", "x86-avx2", "portable"]
    assert DEFAULT_TARGET == "arm-dotprod" and QuantizeOptions().int8_target == "arm-dotprod"
    assert check_target("x86-vnni") == "x86-vnni"
    with pytest.raises(ConfigError, match='"--int8-target" must be one of .*did you mean "x86-vnni"'):
        check_target("x86-vni")
    for bad in ("", "[/x]", "ARM-DOTPROD"):
        with pytest.raises(ConfigError):
            QuantizeOptions(int8_target=bad)
    # only units that add u8 x s8 pairs in saturating 16 bits get 7-bit weights
    assert {n for n, t in TARGETS.items() if t.ort_reduce_range} == {"x86-avx2", "portable"}
    assert TARGETS["arm-dotprod"].ort_activations == "int8"


@pytest.mark.parametrize("cpuinfo, has", [
    (X86_VNNI, {"arm-dotprod": False, "x86-vnni": True, "x86-avx2": True, "portable": True}),
    (X86_AVX2, {"arm-dotprod": False, "x86-vnni": False, "x86-avx2": True, "portable": True}),
    (ARM_DOTPROD, {"arm-dotprod": True, "x86-vnni": False, "x86-avx2": False, "portable": True}),
    (ARM_OLD, {"arm-dotprod": False, "x86-vnni": False, "x86-avx2": False, "portable": True}),
])
def test_host_flags_from_cpuinfo_decide_whether_the_unit_is_there(cpuinfo, has):
    flags = host_cpu_flags(cpuinfo)
    assert {name: host_has_unit(name, flags) for name in TARGETS} == has
    assert host_cpu_flags("garbage\n\x00") is None and host_has_unit("x86-vnni", None) is None
    assert host_has_unit("portable", None) is True


def _manifest(*targets):
    arts = [{"format": "onnx", "precision": "fp32", "path": "a"}]
    arts += [{"format": "onnx", "precision": "int8", "path": f"{i}",
              "quantization": {"scheme": "s", "target": t}} for i, t in enumerate(targets)]
    return {"variants": [{"id": "v", "artifacts": arts}]}


def test_profile_warning_names_the_target_and_the_missing_unit():
    (line,) = target_warnings(_manifest("arm-dotprod", "arm-dotprod"), host_cpu_flags(X86_VNNI))
    assert "arm-dotprod" in line and "asimddp" in line and "none of" in line
    assert target_warnings(_manifest("x86-vnni"), host_cpu_flags(X86_VNNI)) == []
    assert target_warnings(_manifest("portable"), None) == []
    (line,) = target_warnings(_manifest("x86-vnni"), None)
    assert "cannot read this host's CPU flags" in line
    assert target_warnings(_manifest(), host_cpu_flags(ARM_OLD)) == []  # no int8 artifact: no warning
    # a hand-edited manifest with an unknown target is not trusted as a target name
    assert target_warnings(_manifest("[/x]"), host_cpu_flags(ARM_OLD)) == []


def _weights_and_activations(path):
    """int8 weight ranges and the activation QuantizeLinear zero-point types of a QDQ model
    (QAttention inputs apart: ONNX Runtime's CPU kernel reads only uint8 there)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    w = [numpy_helper.to_array(t) for t in inits.values() if t.data_type == onnx.TensorProto.INT8
         and len(t.dims) == 2]
    qatt = [n for n in model.graph.node if n.op_type == "QAttention"]
    assert qatt and all(inits[n.input[6]].data_type == onnx.TensorProto.UINT8 for n in qatt)
    to_qatt = {n.input[0] for n in qatt}
    zp_types = {inits[n.input[2]].data_type for n in model.graph.node
                if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
                and n.output[0] not in to_qatt}
    return w, zp_types


def test_onnx_recipe_follows_the_target(tmp_path):
    from exporter.nn.config import VariantGrid
    from exporter.nn.extract import extract_variant
    from exporter.convert.formats import get_format
    from exporter.convert.quantize import QuantJob
    from tests.conftest import tiny_model

    model = tiny_model()
    (s,) = VariantGrid((1.0,), (1.0,), (24,)).subnets(model.cfg)
    module = extract_variant(model, s)
    x = np.random.default_rng(0).standard_normal((8, 3, 24, 24)).astype(np.float32)
    fp32 = tmp_path / "fp32.onnx"
    get_format("onnx").export(module, x[:1], fp32, {})
    seen = {}
    for target in ("arm-dotprod", "x86-vnni", "x86-avx2"):
        job = QuantJob(fp32, module, x[:1], x, "minmax", (), {}, tmp_path / f"{target}.onnx",
                       target=target)
        get_precision("onnx", "int8").quantize(job)
        seen[target] = _weights_and_activations(job.out)
    w, zp = seen["arm-dotprod"]  # S8S8 with full 8-bit weights
    assert zp == {onnx.TensorProto.INT8} and max(int(np.abs(a).max()) for a in w) == 127
    w, zp = seen["x86-vnni"]  # U8S8 with full 8-bit weights
    assert zp == {onnx.TensorProto.UINT8} and max(int(np.abs(a).max()) for a in w) == 127
    w, zp = seen["x86-avx2"]  # U8S8 with 7-bit weights
    assert zp == {onnx.TensorProto.UINT8} and max(int(np.abs(a).max()) for a in w) <= 64


def test_cli_bad_int8_target_is_one_line_exit_2_and_writes_nothing(tmp_path):
    from exporter.checkpoints.load import save_checkpoint
    from tests.conftest import tiny_model

    ckpt = save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors")
    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "export", str(ckpt), "--out", str(out),
                        "--widths", "1.0", "--keep-rates", "1.0", "--int8-target", "x86_vnni"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and 'did you mean "x86-vnni"' in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_profile_warns_when_this_host_lacks_the_target_unit(tmp_path):
    from exporter.bundle.export import export_bundle
    from exporter.checkpoints.load import LoadedModel
    from exporter.nn.config import VariantGrid
    from exporter.manifest import read_manifest
    from exporter.measure.profile import profile_bundle
    from tests.conftest import tiny_model

    loaded = LoadedModel(tiny_model(), "tiny", "slimvit", [str(i) for i in range(10)])
    grid = VariantGrid((1.0,), (1.0,), (24,))
    expect = {}
    for target in ("arm-dotprod", "x86-vnni"):
        out = tmp_path / target
        manifest = export_bundle(loaded, grid, out, ("onnx",),
                                 quantize=QuantizeOptions(("int8-dynamic",), max_drop=1.0, int8_target=target))
        assert manifest["calibration"]["int8_target"] == target
        (art,) = [a for a in manifest["variants"][0]["artifacts"] if a["precision"] == "int8-dynamic"]
        assert art["quantization"]["target"] == target and read_manifest(out) == manifest  # schema-valid
        warnings: list[str] = []
        profile_bundle(out, ["onnxruntime"], runs=1, warmup=0, warn=warnings.append)
        expect[target] = host_has_unit(target, host_cpu_flags())
        assert len(warnings) == (0 if expect[target] else 1), warnings
        assert all(target in w for w in warnings)
