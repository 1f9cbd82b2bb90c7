"""ExecuTorch artifacts (.pte, XNNPACK delegate): parity through the ExecuTorch runtime for
slimvit, timm-style and HydraViT checkpoints at several widths and keep rates, metadata read back
from the program's constant methods, the delegation report, precisions within budget, and a
one-line error when the extra is missing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from calibration.sources import load_calibration  # noqa: E402
from exporter.api import export_checkpoint_bundle, load  # noqa: E402
from exporter.checkpoints import LoadedModel, save_checkpoint  # noqa: E402
from exporter.bundle.export import export_bundle  # noqa: E402
from exporter.convert.formats import FORMATS, get_format  # noqa: E402
from exporter.convert.formats.executorch import (  # noqa: E402
    program_operators,
    read_delegation,
    read_labels,
    read_metadata,
)
from exporter.convert.quantize import QuantizeOptions, precision_names  # noqa: E402
from exporter.convert.validate import validate_artifact  # noqa: E402
from exporter.errors import ValidationError  # noqa: E402
from exporter.manifest import SCHEMA_VERSION  # noqa: E402
from exporter.measure.report_page import render_page  # noqa: E402
from exporter.nn.config import Variant, VariantGrid  # noqa: E402
from exporter.nn.extract import extract_variant  # noqa: E402
from tests.cli_runner import assert_user_error, run_cli  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402
from tests.test_quantize import ONE, PRE, probed_model  # noqa: E402
from tests.vit_reference import hydravit_subnet, random_vit, vit_forward  # noqa: E402

ATOL = 1e-4
LABELS = ["zero [/x]", "<b>one</b>", "ĉiu", "three\ttab", "4", "5", "6", "7", "8", "9"]
PRUNED = Variant(0.5, 0.5, 32)  # token pruning in blocks 1, 2, 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A busy shared host: one torch thread, and the runtime's XNNPACK pool sized to one.
    from exporter.convert.formats.executorch import set_threads

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    set_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(res: int, n: int = 4, seed: int = 7) -> np.ndarray:
    # Inputs other than the export's example input (seed 0).
    return np.random.default_rng(seed).standard_normal((n, 3, res, res)).astype(np.float32)


def _export(model, v: Variant, path, meta: dict[str, str] | None = None):
    static = extract_variant(model, v)
    example = np.random.default_rng(0).standard_normal((1, 3, v.resolution, v.resolution)).astype(np.float32)
    get_format("executorch").export(static, example, path, meta or {"slimvit.variant_id": "x"})
    return static


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    model = tiny_model(seed=5)
    path = tmp_path_factory.mktemp("et") / "v.pte"
    meta = {"slimvit.variant_id": "w32_k50_r32", "slimvit.labels": json.dumps(LABELS),
            "slimvit.manifest_schema": SCHEMA_VERSION, "slimvit.mean": "[0.5, 0.5, 0.5]"}
    _export(model, PRUNED, path, meta)
    return model, path


def test_registry_lists_executorch_and_its_precisions():
    assert FORMATS["executorch"].suffix == ".pte"
    assert precision_names("executorch") == ["fp32", "fp16", "int8", "int8-dynamic"]


@pytest.mark.parametrize("v", [PRUNED, Variant(0.25, 0.7, 24)],
                         ids=lambda v: f"w{v.width}_k{v.keep_rate}_r{v.resolution}")
def test_runtime_matches_the_slimmable_model(v, pruned, tmp_path):
    model, path = pruned
    if v != PRUNED:
        path = tmp_path / "v.pte"
        _export(model, v, path)
    x = _inputs(v.resolution)
    got = get_format("executorch").run(path, x)
    with torch.no_grad():
        want = model(torch.from_numpy(x), v).numpy()
    assert got.shape == (4, 10)
    assert np.abs(got - want).max() <= ATOL


def test_metadata_and_labels_round_trip_through_constant_methods(pruned):
    _, path = pruned
    meta = read_metadata(path)
    assert meta["slimvit.variant_id"] == "w32_k50_r32" and meta["slimvit.manifest_schema"] == SCHEMA_VERSION
    assert json.loads(meta["slimvit.labels"]) == LABELS
    assert read_labels(path) == LABELS


def test_pruned_variant_falls_back_on_topk_and_gather_and_the_report_says_so(pruned):
    _, path = pruned
    report = read_delegation(path)
    kernels = program_operators(path)  # read from the .pte's execution plan, not the lowering
    assert report["fallback_ops"]["aten::topk"] == 3 == kernels["aten::topk.values"]
    assert report["fallback_ops"]["aten::gather"] == 3 == kernels["aten::gather.out"]
    assert report["partitions"] == kernels["<delegate>"] > 1
    assert sum(report["fallback_ops"].values()) == sum(n for k, n in kernels.items() if k != "<delegate>")
    # Every linear layer and the patch convolution are delegated: all MACs but none of the
    # pruning run in XNNPACK.
    assert report["macs"] > 0 and report["delegated_mac_share"] == 1.0
    assert report["delegated_ops"] < report["ops"]


def test_a_mismatch_is_an_error_that_lists_the_diff_and_tolerance(pruned):
    model, path = pruned
    static = extract_variant(model, PRUNED)
    with torch.no_grad():
        static.head.bias.add_(0.01)  # the reference drifts from what was exported
    with pytest.raises(ValidationError, match=r"logits: max abs diff 0\.01 > atol 0\.0001"):
        validate_artifact(get_format("executorch"), path, static, _inputs(32, n=2))


def test_timm_style_vit_exports_at_two_widths_and_keep_rates(tmp_path):
    sd = random_vit(embed=48, depth=3, seed=2)  # a ViT-Tiny shape scaled down: 3 heads of 16
    torch.save(sd, tmp_path / "vit_tiny.pth")
    loaded = load(tmp_path / "vit_tiny.pth", num_heads=3)
    out = tmp_path / "b"
    manifest = export_checkpoint_bundle(loaded, VariantGrid((1 / 3, 1.0), (1.0, 0.5)), out,
                                        formats=["executorch"])
    x = torch.from_numpy(_inputs(32, n=3, seed=11))
    fmt = get_format("executorch")
    for v in manifest["variants"]:
        (art,) = v["artifacts"]
        assert art["validation"]["max_abs_diff"] <= ATOL and art["delegation"]["partitions"] >= 1
        if v["keep_rate"] == 1.0:  # LayerNorm, expands, q/k/v split and class-token select rewritten
            assert art["delegation"]["partitions"] == 1 and art["delegation"]["fallback_ops"] == {}, v["id"]
        got = fmt.run(out / art["path"], x.numpy())
        if v["keep_rate"] == 1.0:  # against the independent timm-style reference
            k = v["num_heads"]
            want = vit_forward(hydravit_subnet(sd, k, 16), x, num_heads=k) if k < 3 else \
                vit_forward(sd, x, num_heads=3)
        else:
            with torch.no_grad():
                want = extract_variant(loaded.model, Variant(v["width"], v["keep_rate"], 32))(x)
        assert np.abs(got - want.numpy()).max() <= ATOL, v["id"]


@pytest.fixture(scope="module")
def hydravit_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hydravit")
    sd = random_vit(embed=64, depth=3, seed=3)
    ckpt = tmp / "last.pth.tar"
    torch.save({"epoch": 299, "arch": "hydravit", "state_dict": sd,
                "args": argparse.Namespace(model="hydravit", heads=[1, 2, 3, 4]), "version": 2}, ckpt)
    loaded = load(ckpt, num_heads=4)
    assert loaded.source_format == "hydravit"
    out = tmp / "b"
    manifest = export_checkpoint_bundle(loaded, VariantGrid((0.25, 0.75), (1.0, 0.7)), out,
                                        formats=["executorch"])
    return sd, loaded, out, manifest


def test_hydravit_checkpoint_exports_at_two_head_counts_and_keep_rates(hydravit_bundle):
    sd, loaded, out, manifest = hydravit_bundle
    x = torch.from_numpy(_inputs(32, n=3, seed=12))
    fmt = get_format("executorch")
    assert len(manifest["variants"]) == 4
    for v in manifest["variants"]:
        got = fmt.run(out / v["artifacts"][0]["path"], x.numpy())
        if v["keep_rate"] == 1.0:  # against the independent reference of the first k heads
            k = v["num_heads"]
            want = vit_forward(hydravit_subnet(sd, k, 16), x, num_heads=k)
        else:
            with torch.no_grad():
                want = loaded.model(x, Variant(v["width"], v["keep_rate"], 32))
        assert np.abs(got - want.numpy()).max() <= ATOL, v["id"]


def test_profile_measures_pte_artifacts_in_a_fresh_process(hydravit_bundle, tmp_path):
    import shutil

    from exporter.measure.profile import profile_bundle

    bundle = tmp_path / "b"
    shutil.copytree(hydravit_bundle[2], bundle)
    manifest = profile_bundle(bundle, ["executorch"], runs=4, warmup=1, device_id="ci-host")
    for v in manifest["variants"]:
        (lat,) = [a["latency"]["ci-host"] for a in v["artifacts"]]
        assert lat["runtime"] == "executorch" and lat["runs"] == 4 and lat["threads"] == 1
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["load_ms"] > 0 and lat["first_ms"] > 0 and lat["peak_mb"] >= 0


def test_precisions_run_in_the_runtime_within_budget_with_delegation(tmp_path):
    loaded = probed_model()
    from calibration.data import digits

    eval_set = digits("test").subset(np.arange(0, 359, 2))
    opts = QuantizeOptions(("fp16", "int8", "int8-dynamic"), load_calibration("builtin", PRE, samples=32),
                           max_drop=0.03)
    manifest = export_bundle(loaded, ONE, tmp_path, formats=("executorch", "tflite"), eval_set=eval_set,
                             quantize=opts)
    arts = {(a["format"], a["precision"]): a for a in manifest["variants"][0]["artifacts"]}
    left = {e["precision"]: e["reason"] for e in manifest["calibration"]["excluded"] if e["format"] == "executorch"}
    assert ("executorch", "int8") in arts, left  # the static int8 program keeps within budget
    fp32 = arts[("executorch", "fp32")]
    assert fp32["accuracy"]["method"].startswith("executorch")
    for (fmt, name), a in arts.items():
        assert a["delegation"]["backend"] == "XNNPACK", (fmt, name)  # every ET and TFLite artifact
        if fmt != "executorch" or name == "fp32":
            continue
        assert a["accuracy"]["method"].startswith("executorch") and a["accuracy"]["drop"] <= 0.03
        assert read_metadata(tmp_path / a["path"])["slimvit.precision"] == name
        assert a["delegation"]["delegated_mac_share"] == 1.0, (name, a["delegation"])
    assert arts[("executorch", "int8")]["bytes"] < 0.5 * fp32["bytes"]
    assert arts[("tflite", "fp32")]["delegation"]["partitions"] == 1
    assert arts[("tflite", "fp32")]["delegation"]["fallback_ops"] == {}
    # ... and `slimvit report` shows it: one row per ExecuTorch/TFLite artifact, LayerNorm named.
    from exporter.measure.report_delegation import delegation_table

    table = delegation_table(manifest)
    assert table.count("<tr>") == 1 + len(arts) and "aten::gelu ×" in table  # fp16 GELU falls back
    # LayerNorm and the copies are rewritten for XNNPACK: a dense fp32/int8 program is one partition.
    for name in ("fp32", "int8"):
        assert arts[("executorch", name)]["delegation"]["partitions"] == 1, arts[("executorch", name)]
        assert arts[("executorch", name)]["delegation"]["fallback_ops"] == {}
    assert "What runs in the XNNPACK delegate" in render_page(manifest)


def test_without_the_extra_asking_for_the_format_is_one_line_naming_it(tmp_path):
    # A meta-path hook hides executorch from this child process only.
    code = ("import sys, importlib.abc\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'executorch' or name.startswith('executorch.'): raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "import importlib.util\n"
            "importlib.util.find_spec = (lambda f: lambda n, *a: None if n.split('.')[0] == 'executorch' "
            "else f(n, *a))(importlib.util.find_spec)\n"
            "from exporter.cli import main\n"
            "sys.argv = ['slimvit', 'export', sys.argv[1], '--out', sys.argv[2],\n"
            "            '--formats', 'onnx,executorch', '--num-heads', '2',\n"
            "             '--widths', '1.0', '--keep-rates', '1.0']\n"
            "main()\n")
    sd = random_vit(embed=32, depth=2, seed=1)
    torch.save(sd, tmp_path / "vit.pth")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "vit.pth"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert 'slimvit[executorch]' in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in lines if "executorch" in ln]) >= 1 and not (tmp_path / "out").exists()


def test_verify_accepts_the_bundle_and_rejects_a_pte_of_another_schema(hydravit_bundle, tmp_path):
    from exporter.bundle.verify import check_bundle, runtime_problems

    out = hydravit_bundle[2]
    report = check_bundle(out)
    assert report.ok, report.problems
    pte = out / hydravit_bundle[3]["variants"][0]["artifacts"][0]["path"]
    assert runtime_problems(pte, "executorch") == []
    other = tmp_path / "old.pte"
    data = bytearray(pte.read_bytes())
    data[4:8] = b"ET11"
    other.write_bytes(bytes(data))
    assert runtime_problems(other, "executorch") == ["not an ExecuTorch ET12 program (identifier b'ET11')"]


def test_int8_of_a_token_pruned_variant_loads_and_runs_on_the_first_try(tmp_path):
    """The first int8 try (everything XNNPACKQuantizer takes, residual adds included) of a
    token-pruned variant: XNNPACK used to refuse it at load time ("Failed to create static
    slice node ... invalid_parameter": the slice before the Gather read int8 and wrote float)."""
    from calibration.data import digits
    from exporter.convert.quantize.executorch import quantize_int8
    from exporter.convert.quantize.registry import QuantJob

    loaded = probed_model()
    v = Variant(0.5, 0.5, 24)
    static = extract_variant(loaded.model, v).eval()
    calib = load_calibration("builtin", PRE, samples=16).inputs(PRE, v.resolution)
    out = tmp_path / "p.int8.pte"
    quantize_int8(QuantJob(tmp_path / "fp32.pte", static, calib[:1], calib, "minmax", (),
                           {"slimvit.variant_id": "w32_k50_r24"}, out))
    x = PRE(digits("test").subset(np.arange(0, 359, 8)).images, v.resolution).numpy()
    got = get_format("executorch").run(out, x)  # load_method("forward") raised before
    with torch.no_grad():
        want = static(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and np.isfinite(got).all()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.8  # the int8 precision's min_agreement
    report = read_delegation(out)
    assert report["fallback_ops"]["aten::topk"] == 3 and "aten::slice_copy" not in report["fallback_ops"]
    assert read_metadata(out)["slimvit.precision"] == "int8"


_CHILD = """
import os, sys
import numpy as np
from exporter.convert.formats import get_format
from exporter.convert.formats.executorch import read_metadata, runtime_stderr, set_threads

set_threads(1)
print(get_format("executorch").run(sys.argv[1], np.zeros((2, 3, 32, 32), np.float32)).shape)
print(read_metadata(sys.argv[1])["slimvit.variant_id"])
with runtime_stderr():  # what the runtime's C++ writes to fd 2
    os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\\n")
    os.write(2, b"[XNNCompiler.cpp:1610] a real error [/x]\\n")
"""
_RAW = """
import sys, torch
from executorch.runtime import Runtime
Runtime.get().load_program(sys.argv[1]).load_method("forward").execute([torch.zeros(1, 3, 32, 32)])
"""


def test_runtime_cpuinfo_lines_are_silenced_and_other_stderr_is_kept(pruned):
    _, path = pruned
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    raw = subprocess.run([sys.executable, "-c", _RAW, str(path)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert raw.returncode == 0 and "[cpuinfo_utils.cpp:" in raw.stderr  # what the runtime prints
    ours = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split() == ["(2,", "10)", "w32_k50_r32"]
    assert "cpuinfo_utils" not in ours.stderr
    assert "[XNNCompiler.cpp:1610] a real error [/x]" in ours.stderr
    worker = subprocess.run([sys.executable, "exporter/measure/worker.py", "--runtime", "executorch",
                             "--model", str(path), "--runs", "2", "--warmup", "1"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert worker.returncode == 0 and json.loads(worker.stdout.splitlines()[-1])["p50_ms"] > 0
    assert "cpuinfo_utils" not in worker.stderr


def test_layernorm_written_for_xnnpack_matches_torch_and_leaves_the_module_alone():
    from exporter.convert.formats.executorch_graph import XnnLayerNorm, for_xnnpack

    static = extract_variant(tiny_model(seed=2), Variant(0.5, 1.0, 32)).eval()
    swapped = for_xnnpack(static)
    norms = [m for m in static.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * len(static.blocks) + 1  # the source keeps its LayerNorms
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in swapped.modules())
    assert sum(isinstance(m, XnnLayerNorm) for m in swapped.modules()) == len(norms)
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(1, 17, 32, generator=g),
              100 + torch.randn(1, 17, 32, generator=g),  # an offset 100x the spread
              -5e4 * torch.rand(1, 17, 32, generator=g), torch.zeros(1, 17, 32)):
        for norm in norms[:2]:
            want = norm(x)
            got = XnnLayerNorm(norm)(x)
            assert torch.allclose(got, want, atol=2e-4, rtol=1e-4), (got - want).abs().max()
    x = torch.from_numpy(_inputs(32, n=2))
    with torch.no_grad():
        assert (swapped(x) - static(x)).abs().max() <= 1e-5


def test_coreml_backend_lowers_whole_and_passes_the_structural_check(tmp_path):
    # ExecuTorchFormat(backend="coreml"): one CoreMLBackend delegate covering the graph; off
    # macOS the program cannot run, so the bundle checks it structurally instead.
    from exporter.convert.formats.executorch import ExecuTorchCoreMLFormat

    loaded = LoadedModel(tiny_model(depth=2), "tiny", "slimvit", LABELS)
    out = tmp_path / "b"
    manifest = export_checkpoint_bundle(loaded, VariantGrid((1.0,), (1.0, 0.5)), out, formats=["executorch"],
                                        executorch_backend="coreml", precisions=("fp32", "fp16"))
    left = {e["precision"]: e["reason"] for e in manifest["calibration"]["excluded"]}
    assert "XNNPACK backend only, not coreml" in left["fp16"], left
    fmt = get_format("executorch", backend="coreml")
    assert isinstance(fmt, ExecuTorchCoreMLFormat) and fmt.backend == "coreml" and not fmt.deterministic
    assert get_format("executorch").can_run and type(get_format("executorch")) is FORMATS["executorch"]
    arts = {}
    for v in manifest["variants"]:
        (art,) = v["artifacts"]  # fp32 only: fp16 is left out, with why
        arts[v["keep_rate"]] = art
        if sys.platform != "darwin":
            assert not fmt.can_run
            assert "one CoreMLBackend delegate, no other calls" in art["validation"]["checks"]
        # The token pruning's TopK and Gather are in the delegate too: nothing falls back.
        assert art["delegation"]["backend"] == "CoreML" and art["delegation"]["fallback_ops"] == {}
        assert art["delegation"]["partitions"] == 1 and program_operators(out / art["path"]) == {"<delegate>": 1}
    art = arts[1.0]
    path = out / art["path"]
    assert read_metadata(path)["slimvit.labels"] == json.dumps(LABELS)
    static = extract_variant(loaded.model, Variant(1.0, 1.0, 32))
    example = np.zeros((1, 3, 32, 32), np.float32)
    assert "op set" in fmt.check(path, static, example)
    # A changed program fails: other weights than the module's, a cut file, an XNNPACK program.
    other = extract_variant(tiny_model(seed=5, depth=2), Variant(1.0, 1.0, 32))
    with pytest.raises(ValidationError, match=r"fails the program check: .*weight"):
        fmt.check(path, other, example)
    cut = tmp_path / "cut.pte"
    cut.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ValidationError, match="fails the program check"):
        fmt.check(cut, static, example)
    xnn = tmp_path / "xnn.pte"
    get_format("executorch").export(static, example, xnn, {"slimvit.labels": "[]"})
    with pytest.raises(ValidationError, match=r"delegates \['XnnpackBackend'\] != \['CoreMLBackend'\]"):
        fmt.check(xnn, static, example)


def test_coreml_backend_unknown_name_and_other_precisions(tmp_path):
    from exporter.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        get_format("executorch", backend="metal")
    assert "\n" not in str(e.value) and "ExecuTorch backend" in str(e.value)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(depth=2), ckpt)
    o = run_cli("export", str(ckpt), "--out", str(tmp_path / "o"), "--formats", "executorch",
                "--executorch-backend", "metal")
    assert_user_error(o)
    assert 'error: "ExecuTorch backend" must be one of {xnnpack, coreml}, but got "metal"' in o.error_lines
    assert not (tmp_path / "o").exists()
