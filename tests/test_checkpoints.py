"""Foreign checkpoints (timm/DeiT, HydraViT, Scala, SuperViT): each format is built here in its
own layout, loaded, exported, and its ONNX output compared with `tests/vit_reference.py`, a
from-the-spec forward that shares no code with slimvit. Bad files fail with one clear line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from exporter.api import export_checkpoint_bundle, load
from exporter.checkpoints import CHECKPOINT_FORMATS, LOADERS, detect_format, weights_digest
from exporter.errors import CheckpointError, ConfigError
from exporter.nn.config import Variant, VariantGrid
from exporter.nn.extract import extract_variant
from tests.vit_reference import hydravit_subnet, random_vit, scala_subnet, supervit_blocks, vit_forward

ATOL = 1e-4
SLIMVIT = [sys.executable, "-m", "exporter.cli"]
MAX_DIFF: dict[str, float] = {}  # per format, printed at the end of the session (-s)


def images(res: int, n: int = 3, seed: int = 11) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, res, res)).astype(np.float32))


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.shape == list(x.shape[1:]) or inp.shape == [1, *x.shape[1:]]
    return np.concatenate([sess.run(None, {inp.name: x[i:i + 1].numpy()})[0] for i in range(len(x))])


def record(fmt: str, got: np.ndarray | torch.Tensor, want: torch.Tensor) -> float:
    diff = float(np.abs(np.asarray(got, dtype=np.float64) - want.double().numpy()).max())
    MAX_DIFF[fmt] = max(MAX_DIFF.get(fmt, 0.0), diff)
    assert diff <= ATOL, f"{fmt}: max abs diff {diff:.3g} > {ATOL}"
    return diff


def artifact(manifest: dict, out: Path, variant_id: str) -> Path:
    (entry,) = [v for v in manifest["variants"] if v["id"] == variant_id]
    return out / entry["artifacts"][0]["path"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_report():
    # On a shared, busy host two spinning threads make a tiny forward 100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if MAX_DIFF:
        print("\nmax abs diff vs the reference, per format: "
              + ", ".join(f"{k} {v:.2e}" for k, v in sorted(MAX_DIFF.items())))


# --------------------------------------------------------------------------- registry, detection


def test_registry_drives_the_allowed_formats():
    assert CHECKPOINT_FORMATS == ("auto", "slimvit", "supervit", "hydravit", "scala", "timm")
    assert set(LOADERS) == set(CHECKPOINT_FORMATS) - {"auto"}


@pytest.mark.parametrize("layout,expected", [
    ("flat", "timm"), ("deit", "scala"), ("saver", "hydravit"), ("supervit", "supervit"),
    ("supervit_flat", "supervit"),
])
def test_auto_detects_each_layout_from_its_keys(tmp_path, layout, expected):
    sd = random_vit(embed=32, depth=1)
    sv = {k: v for k, v in sd.items() if k != "pos_embed"} | {"pos_embed_list.0": sd["pos_embed"]}
    obj = {"flat": sd, "deit": {"model": sd}, "saver": {"state_dict": sd, "epoch": 3},
           "supervit": {"model": sv}, "supervit_flat": sv}[layout]
    torch.save(obj, tmp_path / "c.pth")
    assert detect_format(tmp_path / "c.pth") == expected


# --------------------------------------------------------------------------- timm / DeiT


def test_timm_state_dict_loads_the_same_from_safetensors_pth_pt_and_bin(tmp_path):
    sd = random_vit(embed=64, depth=2, seed=1)
    save_file(sd, str(tmp_path / "vit.safetensors"))
    for suffix in (".pth", ".pt", ".bin"):
        torch.save(sd, tmp_path / f"vit{suffix}")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "deit_ddp.pth")
    loaded = [load(tmp_path / f"vit{s}", num_heads=4) for s in (".safetensors", ".pth", ".pt", ".bin")]
    loaded.append(load(tmp_path / "deit_ddp.pth", "timm", num_heads=4))
    assert {x.source_format for x in loaded} == {"timm"}
    assert len({weights_digest(x.model) for x in loaded}) == 1
    cfg = loaded[0].model.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size, cfg.num_classes,
            cfg.mlp_ratio) == (64, 2, 4, 8, 32, 10, 4.0)


def test_timm_export_matches_the_reference(tmp_path):
    sd = random_vit(embed=64, depth=2, mlp_ratio=3.0, distilled=True, seed=2)
    torch.save(sd, tmp_path / "deit.pth")
    loaded = load(tmp_path / "deit.pth", num_heads=4)
    assert loaded.model.cfg.mlp_ratio == 3.0 and loaded.model.cfg.distilled
    manifest = export_checkpoint_bundle(loaded, VariantGrid((1.0,), (1.0,)), tmp_path / "b")
    x = images(32)
    record("timm", run_onnx(artifact(manifest, tmp_path / "b", "w64_k100_r32"), x),
           vit_forward(sd, x, num_heads=4))


# --------------------------------------------------------------------------- HydraViT


@pytest.fixture(scope="module")
def hydravit_ckpt(tmp_path_factory) -> tuple[Path, dict, dict]:
    sd, ema = random_vit(embed=64, depth=3, seed=3), random_vit(embed=64, depth=3, seed=4)
    path = tmp_path_factory.mktemp("hydravit") / "last.pth.tar"
    torch.save({"epoch": 299, "arch": "hydravit", "state_dict": sd, "state_dict_ema": ema,
                "args": argparse.Namespace(model="hydravit", heads=[1, 2, 3, 4]), "version": 2}, path)
    return path, sd, ema


@pytest.mark.parametrize("ema", [False, True])
def test_hydravit_k_head_subnets_are_timm_vits_of_the_first_k_heads(hydravit_ckpt, ema):
    path, sd, ema_sd = hydravit_ckpt
    loaded = load(path, num_heads=4, ema=ema)
    assert loaded.source_format == "hydravit" and loaded.model.cfg.slicing == "heads"
    weights = ema_sd if ema else sd
    x = images(32)
    for k in (1, 2, 3, 4):
        with torch.no_grad():
            got = extract_variant(loaded.model, Variant(k / 4, 1.0))(x)
        record("hydravit (torch)", got, vit_forward(hydravit_subnet(weights, k, 16), x, num_heads=k))


def test_cli_exports_hydravit_ema_weights_and_says_what_it_detected(hydravit_ckpt, tmp_path):
    path, _, ema_sd = hydravit_ckpt
    out = tmp_path / "bundle"
    r = subprocess.run([*SLIMVIT, "export", str(path), "--out", str(out), "--ema", "--num-heads", "4",
                        "--widths", "0.5", "--keep-rates", "1.0"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "as hydravit (detected from its keys), EMA weights" in " ".join(r.stderr.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["source_format"] == "hydravit"
    x = images(32)
    record("hydravit", run_onnx(artifact(manifest, out, "w32_k100_r32"), x),
           vit_forward(hydravit_subnet(ema_sd, 2, 16), x, num_heads=2))


# --------------------------------------------------------------------------- Scala


@pytest.fixture(scope="module")
def scala_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    sd = random_vit(embed=64, depth=2, distilled=True, seed=5)
    path = tmp_path_factory.mktemp("scala") / "checkpoint.pth"
    torch.save({"model": sd, "epoch": 99, "args": argparse.Namespace(smallest_ratio=0.25, largest_ratio=1.0)},
               path)
    return path, sd


def scala_reference(sd: dict, r: float, x: torch.Tensor, smallest: float = 0.25) -> torch.Tensor:
    # Four heads at every width; the scale stays 1/sqrt(full head dim 16); LayerNorm eps 1e-5.
    return vit_forward(scala_subnet(sd, r, smallest), x, num_heads=4, eps=1e-5, scale=16 ** -0.5)


def test_scala_onnx_matches_the_reference_for_first_and_last_channel_widths(scala_ckpt, tmp_path):
    path, sd = scala_ckpt
    loaded = load(path, num_heads=4)
    cfg = loaded.model.cfg
    assert (loaded.source_format, cfg.slicing, cfg.ln_eps, cfg.distilled, cfg.min_ratio) == \
        ("scala", "ratio", 1e-5, True, 0.25)
    manifest = export_checkpoint_bundle(loaded, VariantGrid((0.25, 0.5), (1.0,)), tmp_path / "b")
    assert [v["channels"] for v in manifest["variants"]] == ["last", "first"]  # 0.5, then 0.25
    x = images(32)
    for r, vid in ((0.25, "w16_k100_r32"), (0.5, "w32_k100_r32")):
        record("scala", run_onnx(artifact(manifest, tmp_path / "b", vid), x), scala_reference(sd, r, x))


def test_scala_every_width_and_the_smallest_ratio_setting(scala_ckpt, tmp_path):
    path, sd = scala_ckpt
    x = images(32)
    loaded = load(path, num_heads=4)
    for r in (0.25, 0.5, 0.75, 1.0):
        with torch.no_grad():
            got = extract_variant(loaded.model, Variant(r, 1.0))(x)
        record("scala (torch)", got, scala_reference(sd, r, x))
    # Trained with smallest ratio 0.5: 0.5 now takes the first channels.
    loaded = load(path, num_heads=4, min_ratio=0.5)
    with torch.no_grad():
        got = extract_variant(loaded.model, Variant(0.5, 1.0))(x)
    record("scala (torch)", got, scala_reference(sd, 0.5, x, smallest=0.5))


def test_scala_without_distillation(tmp_path):
    sd = random_vit(embed=64, depth=2, seed=6)
    torch.save({"model": sd}, tmp_path / "c.pth")
    loaded = load(tmp_path / "c.pth", num_heads=4)
    assert loaded.source_format == "scala" and not loaded.model.cfg.distilled
    x = images(32)
    for r in (0.25, 0.75):
        with torch.no_grad():
            got = extract_variant(loaded.model, Variant(r, 1.0))(x)
        record("scala (torch)", got, scala_reference(sd, r, x))


# --------------------------------------------------------------------------- SuperViT

SIZES = (24, 32, 40, 48)  # SuperViT's 128/160/192/224 with 16 px patches, shrunk to 8 px patches


@pytest.fixture(scope="module")
def supervit_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    sd = random_vit(embed=32, depth=12, img=48, seed=7)
    del sd["pos_embed"]
    g = torch.Generator().manual_seed(8)
    for i, size in enumerate(SIZES):
        sd[f"pos_embed_list.{i}"] = 0.1 * torch.randn(1, 1 + (size // 8) ** 2, 32, generator=g)
    path = tmp_path_factory.mktemp("supervit") / "supervit.pth"
    torch.save({"model": sd}, path)
    return path, sd


def supervit_reference(sd: dict, size: int, rate: float, x: torch.Tensor) -> torch.Tensor:
    w = {k: v for k, v in sd.items() if not k.startswith("pos_embed_list.")}
    w["pos_embed"] = sd[f"pos_embed_list.{SIZES.index(size)}"]
    prune = {b: rate for b in supervit_blocks(12)} if rate < 1 else None
    return vit_forward(w, x, num_heads=2, prune=prune)


def test_supervit_onnx_takes_each_size_directly_and_prunes_like_supervit(supervit_ckpt, tmp_path):
    path, sd = supervit_ckpt
    loaded = load(path, num_heads=2)
    cfg = loaded.model.cfg
    assert (cfg.img_size, cfg.extra_resolutions, cfg.prune_blocks, cfg.keep_rule) == \
        (48, (24, 32, 40), (3, 6, 9), "supervit")
    # A non-native size: its own pos_embed_list entry, 32x32 input taken directly.
    manifest = export_checkpoint_bundle(loaded, VariantGrid((1.0,), (0.5,), (32,)), tmp_path / "b")
    (variant,) = manifest["variants"]
    assert variant["input_shape"] == [1, 3, 32, 32]
    # 16 patches + CLS -> keep ceil(0.5*17)=9 -> ceil(0.5*10)=5 -> ceil(0.5*6)=3 (blocks 3, 6, 9)
    assert variant["tokens"] == [17] * 4 + [10] * 3 + [6] * 3 + [4] * 3
    x = images(32)
    record("supervit", run_onnx(artifact(manifest, tmp_path / "b", "w32_k50_r32"), x),
           supervit_reference(sd, 32, 0.5, x))


def test_supervit_every_size_and_keep_rate(supervit_ckpt):
    path, sd = supervit_ckpt
    loaded = load(path, num_heads=2)
    for size in SIZES:
        x = images(size)
        for rate in (1.0, 0.7, 0.5):
            with torch.no_grad():
                got = extract_variant(loaded.model, Variant(1.0, rate, size))(x)
            record("supervit (torch)", got, supervit_reference(sd, size, rate, x))


# --------------------------------------------------------------------------- bad input


class _RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write(path: Path, obj) -> Path:
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_case(name: str, tmp: Path) -> tuple[Path, dict]:
    sd = random_vit(embed=64, depth=2)
    if name == "truncated pth":
        return _truncate(_write(tmp / "c.pth", sd)), {}
    if name == "truncated safetensors":
        return _truncate(_write(tmp / "c.safetensors", sd)), {}
    if name == "not a checkpoint":
        return _write_bytes(tmp / "c.bin", b"\x00\x01 definitely not a checkpoint"), {}
    if name == "missing head":
        return _write(tmp / "c.pth", {k: v for k, v in sd.items() if k != "head.weight"}), {}
    if name == "missing block tensor":
        return _write(tmp / "c.pth", {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}), {}
    if name == "pos_embed not a square grid":
        return _write(tmp / "c.pth", sd | {"pos_embed": torch.zeros(1, 16, 64)}), {}
    if name == "qkv of the wrong size":
        return _write(tmp / "c.pth", sd | {"blocks.0.attn.qkv.weight": torch.zeros(128, 64)}), {}
    if name == "unknown layout":
        return _write(tmp / "c.pth", {"weights": {"w": torch.zeros(2)}, "optimizer": {}}), {}
    if name == "no EMA weights":
        return _write(tmp / "c.pth", {"state_dict": sd}), {"ema": True}
    if name == "EMA of a slimvit checkpoint":
        from exporter.checkpoints import save_checkpoint
        from tests.conftest import tiny_model

        return save_checkpoint(tiny_model(), tmp / "c.safetensors"), {"ema": True}
    if name == "heads do not divide":
        return _write(tmp / "c.pth", sd), {"num_heads": 5}
    if name == "heads cannot be inferred":
        return _write(tmp / "c.pth", random_vit(embed=48, depth=1)), {}
    if name == "wrong forced format":
        return _write(tmp / "c.pth", {"state_dict": sd}), {"checkpoint_format": "scala"}
    raise KeyError(name)


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case,error,message", [
    ("truncated pth", CheckpointError, "truncated or corrupt"),
    ("truncated safetensors", CheckpointError, "truncated or corrupt"),
    ("not a checkpoint", CheckpointError, "truncated or corrupt"),
    ("missing head", CheckpointError, "missing keys for a timm ViT: head.weight"),
    ("missing block tensor", CheckpointError, "missing keys: blocks.1.mlp.fc2.bias"),
    ("pos_embed not a square grid", CheckpointError, "shapes fit no ViT: pos_embed has 16 tokens"),
    ("qkv of the wrong size", CheckpointError, "shapes fit no ViT: blocks.0.attn.qkv.weight is (128, 64)"),
    ("unknown layout", CheckpointError, "found keys: weights (1 entries: w), optimizer"),
    ("no EMA weights", CheckpointError, "--ema asks for EMA weights"),
    ("EMA of a slimvit checkpoint", CheckpointError, "this is a slimvit checkpoint; leave out --ema"),
    ("heads do not divide", ConfigError, "--num-heads 5 does not divide the embed dim 64"),
    ("heads cannot be inferred", ConfigError, "pass --num-heads"),
    ("wrong forced format", CheckpointError, "no state dict for format scala"),
])
def test_bad_checkpoints_fail_with_one_clear_line(tmp_path, case, error, message):
    path, kwargs = _bad_case(case, tmp_path)
    fmt = kwargs.pop("checkpoint_format", "auto")
    with pytest.raises(error) as info:
        load(path, fmt, **kwargs)
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_unknown_layout_lists_what_each_format_expects(tmp_path):
    path, _ = _bad_case("unknown layout", tmp_path)
    with pytest.raises(CheckpointError) as info:
        load(path)
    for name in ("slimvit", "timm", "hydravit", "scala", "supervit"):
        assert f"{name}: " in str(info.value)


def test_unknown_checkpoint_format_gets_a_suggestion(tmp_path):
    path = _write(tmp_path / "c.pth", random_vit(embed=64, depth=1))
    with pytest.raises(ConfigError, match='did you mean "hydravit"'):
        load(path, "hydravitt")


def test_a_pickle_that_carries_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.pth", {"model": random_vit(embed=64, depth=1), "x": _RunsCode(marker)})
    with pytest.raises(CheckpointError, match=r"refused: the file needs arbitrary code to unpickle \(posix.system\)"):
        load(path)
    assert not marker.exists()
    # Through the CLI: one line, exit code 2, nothing written, nothing run.
    out = tmp_path / "out"
    r = subprocess.run([*SLIMVIT, "export", str(path), "--out", str(out)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == \
        [line for line in r.stderr.splitlines() if line.strip()]
    assert "refused" in r.stderr and not out.exists() and not marker.exists()


def test_widths_that_do_not_fit_ratio_slicing_fail_before_anything_is_written(tmp_path):
    # 3 heads of 16: width 0.3 gives int(0.3*48)=14 channels, which 3 heads cannot share.
    path = _write(tmp_path / "c.pth", {"model": random_vit(embed=48, depth=1)})
    loaded = load(path, num_heads=3)
    with pytest.raises(ConfigError, match="width 0.3 gives embed dim 14"):
        export_checkpoint_bundle(loaded, VariantGrid((1.0, 0.3), (1.0,)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nan_and_inf_weights_give_a_warning_naming_the_tensors(tmp_path):
    sd = random_vit(embed=64, depth=2)
    sd["blocks.1.attn.proj.weight"][0, 0] = float("nan")
    sd["pos_embed"][0, 0, 0] = float("inf")
    warnings: list[str] = []
    loaded = load(_write(tmp_path / "c.safetensors", sd), num_heads=4, warn=warnings.append)
    assert loaded.source_format == "timm"
    assert len(warnings) == 1 and "2 tensor(s) hold NaN or Inf" in warnings[0]
    assert "blocks.1.attn.proj.weight" in warnings[0] and "pos_embed" in warnings[0]
