"""The one gate for what comes from outside (issue 17): a test per kind of failure a campaign of
hostile inputs found, each of which failed before the gate (exporter/gate/) existed.

1 NaN/Infinity  2 markup in messages  3 unbounded numbers  4 unbounded or blocking reads
5 destructive or half-done writes  6 coerced types  7 training guards  8 misleading messages"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from calibration.data import Preprocess
from calibration.sources import CalibrationError, load_calibration
from exporter.bundle.verify import verify_bundle
from exporter.checkpoints import load_model, save_checkpoint
from exporter.errors import CheckpointError, ConfigError, SlimvitError
from exporter.fileio import atomic_write_json
from tests.cli_runner import assert_user_error, run_cli
from tests.conftest import build_real_bundle, tiny_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gate") / "tiny.safetensors"
    save_checkpoint(tiny_model(depth=2), path)
    return path


def with_meta(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of a slimvit checkpoint with metadata entries replaced (dicts/lists as JSON)."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    for key, value in changes.items():
        if key.startswith("config."):
            cfg = json.loads(meta["config"])
            cfg[key[7:]] = value
            meta["config"] = json.dumps(cfg)
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    save_file(load_file(str(src)), str(dst), meta)
    return dst


@pytest.fixture
def bundle(tmp_path) -> Path:
    return Path(shutil.copytree(build_real_bundle(), tmp_path / "bundle"))


# --- 1. NaN and Infinity pass no gate ------------------------------------------------------------

def test_1_nan_in_checkpoint_preprocessing_is_refused(ckpt, tmp_path):
    bad = with_meta(ckpt, tmp_path / "nan.safetensors",
                    preprocess='{"mean": [NaN, 0.5, 0.5], "std": [0.5, 0.5, Infinity]}')
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(bad)


def test_1_json_written_is_strict_and_verify_and_sign_refuse_nan(bundle, tmp_path):
    with pytest.raises(SlimvitError, match="non-finite"):
        atomic_write_json(tmp_path / "x.json", {"p50_ms": float("nan")})
    assert not (tmp_path / "x.json").exists()
    text = (bundle / "manifest.json").read_text().replace('"bundle_version": 1', '"bundle_version": NaN')
    (bundle / "manifest.json").write_text(text)
    report = verify_bundle(bundle)
    assert not report.ok and any("NaN" in p for p in report.problems)
    run_cli("keygen", str(tmp_path / "k"))
    o = run_cli("sign", str(bundle), "--key", str(tmp_path / "k"))
    assert_user_error(o)
    assert not (bundle / "manifest.sig").exists()


def test_1_nan_flags_and_policy_values_are_refused(bundle, tmp_path):
    trace = "examples/traces/drain_60min.csv"
    o = run_cli("simulate", str(bundle), trace, "--out", str(tmp_path / "s"), "--fps", "nan")
    assert_user_error(o)
    assert "--fps" in o.err and not (tmp_path / "s").exists()
    (tmp_path / "p.yaml").write_text("latency:\n  budget_ms:\n    android: .nan\n")
    o = run_cli("policy", "update", str(bundle), "--policy", str(tmp_path / "p.yaml"))
    assert_user_error(o)
    assert "finite" in o.err


# --- 2. messages are text, never markup ----------------------------------------------------------

def test_2_markup_in_user_data_prints_as_itself(tmp_path):
    weird = tmp_path / "[bold]a[/bold]" / "[/x]"
    o = run_cli("select", str(weird), "--thermal", "[/red]", "--battery", "50")
    assert_user_error(o)
    assert "[/x]" in o.err and "[bold]a[/bold]" in o.err  # nothing dropped, nothing crashed
    o = run_cli("verify", str(weird))
    assert_user_error(o, codes=(1, 2))
    assert "[/x]" in o.err


# --- 3. numbers have bounds ----------------------------------------------------------------------

def test_3_huge_integers_and_sizes_are_refused(bundle, ckpt, tmp_path):
    text = (bundle / "manifest.json").read_text().replace('"bundle_version": 1', '"bundle_version": ' + "9" * 5000)
    (bundle / "manifest.json").write_text(text)
    assert not verify_bundle(bundle).ok  # a problem, not a ValueError
    with pytest.raises(CheckpointError, match="1024"):
        load_model(with_meta(ckpt, tmp_path / "big.safetensors", **{"config.img_size": 100_000}))
    o = run_cli("export", str(ckpt), "--out", str(tmp_path / "o"), "--resolutions", "100000")
    assert_user_error(o)
    for args in (["--expires", "3000000d"], ["--bundle-version", str(10**30)]):
        run_cli("keygen", str(tmp_path / "k")) if not (tmp_path / "k").exists() else None
        assert_user_error(run_cli("sign", str(build_real_bundle()), "--key", str(tmp_path / "k"), *args))
    assert_user_error(run_cli("train", "--out", str(tmp_path / "t"), "--seed", str(2**70)))


def test_3_searched_structure_is_checked_before_allocation(ckpt, tmp_path):
    huge = {"heads": [[0]] * 2, "head_dims": [[[0]]] * 2, "mlp_units": [list(range(10**6))] * 2,
            "token_positions": [0]}
    bad = with_meta(ckpt, tmp_path / "s.safetensors", structure=huge, budget_macs="0.5")
    with pytest.raises(CheckpointError, match="mlp_units"):
        load_model(bad)


def test_3_deep_headers_and_long_csv_fields_are_one_line(tmp_path, bundle):
    header = b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    (tmp_path / "deep.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="deeper"):
        load_model(tmp_path / "deep.safetensors")
    (tmp_path / "t.csv").write_text("t_s,battery,charging,thermal,low_power\n0,50,0," + "x" * 200_000 + ",0\n")
    o = run_cli("simulate", str(bundle), str(tmp_path / "t.csv"), "--out", str(tmp_path / "s"))
    assert_user_error(o)


# --- 4. reads are bounded and never block --------------------------------------------------------

def test_4_devices_and_fifos_are_refused_without_reading(tmp_path, bundle):
    os.mkfifo(tmp_path / "fifo")
    for key in ("/dev/zero", str(tmp_path / "fifo")):
        o = run_cli("sign", str(bundle), "--key", key, timeout=20)
        assert_user_error(o)
        o = run_cli("verify", str(bundle), "--public-key", key, timeout=20)
        assert_user_error(o, codes=(1, 2))
    o = run_cli("ingest", str(bundle), str(tmp_path / "fifo"), "--device-id", "d", timeout=20)
    assert_user_error(o)
    assert "FIFO" in o.err


def _npz_with_header(path: Path, shape: tuple[int, ...], payload: bytes = b"", dtype: str = "<f4") -> Path:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue() + payload)
    return path


def test_4_npz_members_are_checked_by_header(tmp_path):
    pre = Preprocess()
    claims = _npz_with_header(tmp_path / "claims.npz", (10**6, 3, 1024, 1024))  # 12 TB claimed
    with pytest.raises(CalibrationError, match="claims shape"):
        load_calibration(claims, pre)
    bomb = _npz_with_header(tmp_path / "bomb.npz", (64, 3, 512, 512), b"\0" * (64 * 3 * 512 * 512 * 4))
    with pytest.raises(CalibrationError, match="zip bomb"):
        load_calibration(bomb, pre)


def test_4_image_bombs_are_one_line(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("1", (12_000, 12_000)).save(folder / "bomb.png")  # 144 MP, a few KB on disk
    with pytest.raises(CalibrationError, match="decompression bomb|exceeds limit"):
        load_calibration(folder, Preprocess())


# --- 5. writes are safe by construction ----------------------------------------------------------

@pytest.mark.parametrize("out", ["", "/", ".", "FILE", "CKPT", "BUNDLE/sub"])
def test_5_export_out_is_checked_before_any_work(ckpt, bundle, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    target = {"FILE": str(tmp_path / "FILE"), "CKPT": str(ckpt), "BUNDLE/sub": str(bundle / "sub")}.get(out, out)
    o = run_cli("export", str(ckpt), "--out", target, "--widths", "1.0", "--keep-rates", "1.0")
    assert_user_error(o)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no bundle, no staging, no cache
    assert not (bundle / "sub").exists()


def test_5_report_never_replaces_a_manifest(bundle):
    before = (bundle / "manifest.json").read_bytes()
    for out in (bundle / "manifest.json", bundle / "report.html"):
        assert_user_error(run_cli("report", str(bundle), "--out", str(out)))
    assert (bundle / "manifest.json").read_bytes() == before and not (bundle / "report.html").exists()


def test_5_sign_checks_everything_before_writing(bundle, tmp_path):
    run_cli("keygen", str(tmp_path / "k"))
    onnx = next((bundle / "onnx").iterdir())
    onnx.write_bytes(onnx.read_bytes() + b"x")  # tampered
    before = (bundle / "manifest.json").read_bytes()
    o = run_cli("sign", str(bundle), "--key", str(tmp_path / "k"), "--expires", "30d", "--bundle-version", "9")
    assert_user_error(o)
    assert (bundle / "manifest.json").read_bytes() == before and not (bundle / "manifest.sig").exists()


def test_5_keygen_names_key_pub_and_never_overwrites(tmp_path):
    assert run_cli("keygen", str(tmp_path / "release.key")).code == 0
    assert (tmp_path / "release.key.pub").is_file() and not (tmp_path / "release.pub").exists()
    secret = (tmp_path / "release.key").read_bytes()
    for path in ("release.key", "release.key.pub"):
        assert_user_error(run_cli("keygen", str(tmp_path / path)))
    assert (tmp_path / "release.key").read_bytes() == secret
    assert run_cli("keygen", str(tmp_path / "k2.pub")).code == 0  # KEY.pub as KEY: KEY.pub.pub
    assert b"PRIVATE" in (tmp_path / "k2.pub").read_bytes() and (tmp_path / "k2.pub.pub").is_file()


def test_5_a_failed_export_leaves_no_staging_directory(ckpt, tmp_path, monkeypatch):
    import exporter.bundle.export as bundle_module
    from exporter.errors import ExportError
    from exporter.nn.config import VariantGrid

    loaded = load_model(ckpt)
    real = bundle_module.export_variant

    def fail_second(*args, **kwargs):  # the first artifact is written into staging, the next fails
        if list((tmp_path).glob(".b.staging-*/onnx/*")):
            raise ExportError("the converter failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_module, "export_variant", fail_second)
    with pytest.raises(ExportError):
        bundle_module.export_bundle(loaded, VariantGrid((1.0, 0.5), (1.0,)), tmp_path / "b")
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []
    assert not (tmp_path / "b").exists()


# --- 6. types are checked, not coerced -----------------------------------------------------------

@pytest.mark.parametrize("key,value", [("fuse_tokens", "false"), ("qkv_bias", "no"), ("prune_blocks", [1.7, 0.2]),
                                       ("ln_eps", "1e-6"), ("ln_eps", -1.0), ("depth", True)])
def test_6_config_types_are_checked(ckpt, tmp_path, key, value):
    with pytest.raises(CheckpointError, match=key):
        load_model(with_meta(ckpt, tmp_path / "t.safetensors", **{f"config.{key}": value}))


def test_6_labels_and_heads(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="one label per class"):
        load_model(with_meta(ckpt, tmp_path / "l.safetensors", labels=["a", "b"]))
    o = run_cli("variants", str(ckpt), "--num-heads", "0")
    assert_user_error(o)
    assert "--num-heads" in o.err
    with pytest.raises(CheckpointError, match="--num-heads"):
        load_model(ckpt, num_heads=2)


# --- 7. training has guards ----------------------------------------------------------------------

def test_7_learning_rate_epochs_and_limit(tmp_path):
    for args in (["train", "--lr", "inf"], ["train", "--lr", "nan"], ["demo", "--epochs", "0"],
                 ["search", "x.safetensors", "--budget-macs", "0.5", "--out", str(tmp_path / "s"), "--limit=-5"]):
        o = run_cli(*args, "--out", str(tmp_path / "o")) if args[0] != "search" else run_cli(*args)
        assert_user_error(o)
    assert not (tmp_path / "o").exists()


def _folder(root: Path, per_class: dict[str, int]) -> Path:
    from PIL import Image

    for name, n in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40 % 255, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_7_dataset_needs_a_held_out_image_per_class_and_one_class_is_noted(tmp_path):
    from exporter.training.data import DatasetError, load_dataset

    with pytest.raises(DatasetError, match="held-out image of class"):
        load_dataset(str(_folder(tmp_path / "a", {"cat": 1, "dog": 1})), 32)
    split = load_dataset(str(_folder(tmp_path / "b", {"cat": 4})), 32)
    assert any("one class" in n for n in split.notes)


def test_7_a_nan_loss_stops_training_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    import exporter.training.loop as loop
    from exporter.training.config import resolve_config

    real = loop.run_members
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        loss, correct = real(*args, **kwargs)
        calls["n"] += 1
        return (float("nan") if calls["n"] > 2 else loss), correct

    monkeypatch.setattr(loop, "run_members", diverging)
    cfg = resolve_config(None, dataset=str(_folder(tmp_path / "d", {"a": 6, "b": 6})), epochs=3, batch_size=5,
                         widths=(1.0,), keep_rates=(1.0,), model={"depth": 2, "embed_dim": 32, "num_heads": 2})
    with pytest.raises(loop.DivergedError, match="diverged.*epoch 2"):
        loop.train(cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and not (tmp_path / "run" / "model.safetensors").exists()


# --- 8. messages say what is wrong --------------------------------------------------------------

def test_8_directory_and_fifo_checkpoints_are_named_as_such(tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="FIFO"):
        load_model(tmp_path / "pipe.safetensors")


def test_8_integer_weights_get_a_dtype_message(ckpt, tmp_path):
    tensors = load_file(str(ckpt))
    tensors["head.weight"] = tensors["head.weight"].to(torch.int64)
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        meta = dict(f.metadata())
    save_file(tensors, str(tmp_path / "i.safetensors"), meta)
    with pytest.raises(CheckpointError, match="floating point.*int64"):
        load_model(tmp_path / "i.safetensors")


def test_8_structured_npz_and_negative_max_drop(ckpt, tmp_path):
    rec = np.zeros((2, 3, 8, 8), dtype=[("a", "<f4"), ("b", "<i4")])
    np.savez(tmp_path / "r.npz", x=rec)
    with pytest.raises(CalibrationError, match="dtype"):
        load_calibration(tmp_path / "r.npz", Preprocess())
    o = run_cli("export", str(ckpt), "--out", str(tmp_path / "o"), "--max-drop", "-5")
    assert_user_error(o)
    assert "-5" in o.err and "-0.05" not in o.err


def test_config_errors_are_config_errors():
    from exporter.nn.config import ViTConfig

    with pytest.raises(ConfigError):
        ViTConfig.from_dict({"mlp_ratio": float("inf")})


@pytest.mark.parametrize("argv", [["--out", ""], ["--out="], ["--cache-dir", ""]])
def test_5_an_empty_option_value_is_refused_before_anything_is_written(tmp_path, argv):
    """typer turns --out "" into Path("."): in an empty directory the bundle landed in the cwd."""
    import subprocess
    import sys

    ckpt = tmp_path / "c.safetensors"
    save_checkpoint(tiny_model(depth=2), ckpt)
    work = tmp_path / "empty"
    work.mkdir()
    extra = [] if argv[0] == "--out" or argv[0] == "--out=" else ["--out", str(tmp_path / "b")]
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "export", str(ckpt), *argv, *extra],
                       cwd=work, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "is empty" in r.stderr and "Traceback" not in r.stderr
    assert list(work.iterdir()) == []
