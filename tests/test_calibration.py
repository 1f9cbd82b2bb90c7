"""Calibration sources: builtin / image folder / .npz, the one preprocessing, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration.data import Preprocess, digits
from calibration.sources import MIN_SAMPLES, CalibrationError, CalibrationSet, load_calibration
from exporter.convert.quantize import CALIBRATION_METHODS, QuantizeOptions, check_precisions, precision_names
from exporter.errors import ConfigError

PRE = Preprocess()


def _png(path, size, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_builtin_draws_reproducible_samples_from_the_training_split_only():
    a = load_calibration("builtin", PRE, samples=40, seed=3)
    b = load_calibration("builtin", PRE, samples=40, seed=3)
    c = load_calibration("builtin", PRE, samples=40, seed=4)
    assert len(a) == 40 and a.describe() == {"source": "builtin", "samples": 40, "seed": 3}
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.images, c.images, strict=True))
    test = {x.tobytes() for x in digits("test").images}
    assert not any(x.tobytes() in test for x in a.images)  # never the held-out split


def test_inputs_use_the_one_preprocessing_at_each_variant_resolution():
    cal = load_calibration("builtin", PRE, samples=8)
    x24 = cal.inputs(PRE, 24)
    assert x24.shape == (8, 3, 24, 24) and x24.dtype == np.float32
    expected = PRE(np.stack(cal.images), 24).numpy()
    assert np.array_equal(x24, expected)
    lo, hi = PRE.normalized_range()
    assert (lo, hi) == (-1.0, 1.0) and x24.min() >= lo - 1e-6 and x24.max() <= hi + 1e-6


def test_center_crop_keeps_the_middle_and_is_described_for_apps():
    pre = Preprocess(crop=0.5)
    img = torch.zeros(1, 3, 16, 16)
    img[..., 4:12, 4:12] = 1.0  # a bright center square
    out = pre(img, 8)  # resize to 16 (8 / 0.5), keep the center 8x8
    assert out.shape == (1, 3, 8, 8) and torch.allclose(out, torch.ones_like(out))
    assert pre.describe()["crop"] == 0.5 and Preprocess().describe()["crop"] == 1.0
    with pytest.raises(ConfigError, match="crop"):
        Preprocess(crop=1.5)


def test_checkpoints_carry_the_crop_so_exports_reproduce_it(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from exporter.checkpoints import load_model, save_checkpoint
    from exporter.errors import CheckpointError
    from tests.conftest import tiny_model

    pre = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="bicubic", crop=0.875)
    path = save_checkpoint(tiny_model(), tmp_path / "m.safetensors", [str(i) for i in range(10)], pre)
    assert load_model(path).preprocess == pre
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    for bad, why in ((1.5, "bad config.*crop.*1.5"), ("all", "bad config.*crop.*valid number")):
        meta["preprocess"] = json.dumps({**json.loads(meta["preprocess"]), "crop": bad})
        save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), meta)
        with pytest.raises(CheckpointError, match=why):
            load_model(tmp_path / "bad.safetensors")


def test_image_folder_gives_labels_and_mixed_sizes_work(tmp_path):
    for i in range(3):
        _png(tmp_path / "cat" / f"{i}.png", (20 + i, 16), 40)
        _png(tmp_path / "dog" / f"{i}.jpg", (12, 12), 200)
    cal = load_calibration(tmp_path, PRE, samples=100)
    assert len(cal) == 6 and sorted(cal.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    x = cal.inputs(PRE, 16)
    assert x.shape == (6, 3, 16, 16)
    dark = x[cal.labels == 0]
    np.testing.assert_allclose(dark, (40 / 255 - 0.5) / 0.5, atol=1e-5)


def test_flat_folder_has_no_labels_and_few_samples_warn_with_the_count(tmp_path):
    for i in range(5):
        _png(tmp_path / f"{i}.png", (8, 8), 10 * i)
    warnings = []
    cal = load_calibration(tmp_path, PRE, warn=warnings.append)
    assert cal.labels is None and len(cal) == 5
    assert len(warnings) == 1 and "only 5 sample(s)" in warnings[0] and str(MIN_SAMPLES) in warnings[0]


def test_npz_of_normalized_inputs_is_resized_not_renormalized(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (40, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x, y=np.arange(40) % 10)
    cal = load_calibration(tmp_path / "cal.npz", PRE, samples=40)
    assert cal.normalized and sorted(cal.labels.tolist()) == sorted((np.arange(40) % 10).tolist())
    got = cal.inputs(PRE, 32)
    assert sorted(map(bytes, got)) == sorted(map(bytes, x))  # unchanged at the native size
    assert cal.inputs(PRE, 16).shape == (40, 3, 16, 16)


@pytest.mark.parametrize(("x", "message"), [
    (np.full((4, 3, 8, 8), 128.0), "0-255"),
    (np.zeros((4, 1, 8, 8)), r"expected \(N, 3, H, W\)"),
    (np.zeros((4, 8, 8, 3)), "channels last"),
    (np.zeros((3, 8, 8)), r"expected \(N, 3, H, W\)"),
    (np.full((4, 3, 8, 8), -9.0), "far outside"),
])
def test_npz_of_the_wrong_shape_channels_or_range_is_refused(tmp_path, x, message):
    np.savez(tmp_path / "bad.npz", x=x.astype(np.float32))
    with pytest.raises(CalibrationError, match=message):
        load_calibration(tmp_path / "bad.npz", PRE)


def test_npz_of_unnormalized_pixels_warns(tmp_path):
    np.savez(tmp_path / "px.npz", x=np.random.default_rng(0).uniform(0, 1, (40, 3, 8, 8)))
    warnings = []
    load_calibration(tmp_path / "px.npz", PRE, warn=warnings.append)
    assert len(warnings) == 1 and "unnormalized" in warnings[0]


def test_missing_empty_or_unreadable_sources_are_clear_errors(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "nope", PRE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="holds no images"):
        load_calibration(tmp_path / "empty", PRE)
    np.savez(tmp_path / "noxs.npz", images=np.zeros((2, 3, 8, 8)))
    with pytest.raises(CalibrationError, match="no array 'x'.*images"):
        load_calibration(tmp_path / "noxs.npz", PRE)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match="cannot read calibration image"):
        load_calibration(tmp_path / "broken", PRE)
    with pytest.raises(CalibrationError, match="neither a directory nor an .npz"):
        load_calibration(__file__, PRE)


def test_precisions_come_from_the_registry_and_bad_choices_are_named():
    assert precision_names("onnx") == ["fp32", "fp16", "int8", "int8-dynamic", "int8-shared", "int8-dynamic-shared"]
    assert precision_names("tflite") == ["fp32", "fp16", "int8-dynamic", "int8", "int8-full", "int8-xnnpack",
                                         "int8-dynamic-shared"]
    assert set(precision_names("coreml")) == {"fp32", "fp16", "int8", "int8-weights", "palettized"}
    assert check_precisions(["int8", "fp16"], ["onnx"]) == ["fp32", "int8", "fp16"]
    with pytest.raises(ConfigError, match='did you mean "int8"'):
        check_precisions(["int9"], ["onnx"])
    with pytest.raises(ConfigError, match="offered: onnx: fp32/fp16/int8/int8-dynamic"):
        check_precisions(["palettized"], ["onnx"])
    with pytest.raises(ConfigError, match="calibration-method"):
        QuantizeOptions(method="kl")
    assert CALIBRATION_METHODS == ("minmax", "entropy", "percentile")


def test_int8_without_calibration_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="int8 needs calibration data: add --calibration"):
        QuantizeOptions(("int8",)).check(["onnx"])
    assert QuantizeOptions(("fp16", "int8-dynamic")).check(["onnx"]) == ["fp32", "fp16", "int8-dynamic"]
    assert isinstance(load_calibration("builtin", PRE, samples=2), CalibrationSet)


def test_cli_bad_calibration_is_one_line_exit_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    from exporter.checkpoints import save_checkpoint
    from tests.conftest import tiny_model

    ckpt = save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors")
    for extra, message in ((["--precisions", "fp32,int8"], "int8 needs calibration data"),):
        out = tmp_path / "bundle"
        r = subprocess.run([sys.executable, "-m", "exporter.cli", "export", str(ckpt), "--out", str(out),
                            "--widths", "1.0", "--keep-rates", "1.0", *extra],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(line) == 1 and message in r.stderr.replace("\n", " "), r.stderr
        assert not out.exists()
