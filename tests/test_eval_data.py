"""--eval-data takes an image folder or an .npz with labels; the table says why a column is
empty; a plain checkpoint or a collapse of narrow variants is warned about once."""

from pathlib import Path

import numpy as np
import pytest

from calibration.data import Preprocess, digits
from calibration.eval_sets import load_eval_set
from calibration.sources import CalibrationError
from exporter.bundle.plain_warnings import accuracy_collapse_warning, plain_checkpoint_warning
from exporter.checkpoints import LoadedModel
from exporter.nn.config import VariantGrid
from tests.conftest import tiny_model

LABELS = [str(i) for i in range(10)]
PRE = Preprocess()


def write_folder(root: Path, n_per_class: int = 3, classes=("3", "7")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            px = (rng.random((12 + i, 10, 3)) * 255).astype(np.uint8)  # sizes differ
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


def test_folder_of_classes_named_like_the_labels_maps_by_name(tmp_path):
    s = load_eval_set(write_folder(tmp_path / "eval"), PRE, 32, LABELS)
    assert s.images.shape == (6, 3, 32, 32) and sorted(set(s.labels.tolist())) == [3, 7]
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0


def test_npz_with_labels_round_trips_to_pixels(tmp_path):
    d = digits("test").subset(np.arange(20))
    x = PRE(d.images, 32).numpy()
    np.savez(tmp_path / "e.npz", x=x, y=d.labels)
    s = load_eval_set(tmp_path / "e.npz", PRE, 32, LABELS)
    np.testing.assert_allclose(PRE(s.images, 32).numpy(), x, atol=1e-5)
    assert (s.labels == d.labels).all()


@pytest.mark.parametrize("make,message", [
    (lambda p: np.savez(p / "e.npz", x=np.zeros((2, 3, 8, 8), np.float32)), "has no labels 'y'"),
    (lambda p: np.savez(p / "e.npz", x=np.zeros((2, 3, 8, 8), np.float32), y=np.array([0, 12])),
     "class indices in 0..9"),
    (lambda p: np.savez(p / "e.npz", x=np.zeros((2, 3, 8, 8), np.float32), y=np.array([0.5, 1.0])),
     "class indices"),
])
def test_bad_eval_npz_is_one_clear_error(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(CalibrationError, match=message):
        load_eval_set(tmp_path / "e.npz", PRE, 32, LABELS)


def test_flat_folder_and_missing_path_are_clear_errors(tmp_path):
    flat = tmp_path / "flat"
    write_folder(flat)
    for d in ("3", "7"):
        for f in (flat / d).iterdir():
            f.rename(flat / f"{d}_{f.name}")
        (flat / d).rmdir()
    with pytest.raises(CalibrationError, match="no class sub-directories"):
        load_eval_set(flat, PRE, 32, LABELS)
    with pytest.raises(CalibrationError, match="does not exist"):
        load_eval_set(tmp_path / "nope", PRE, 32, LABELS)
    with pytest.raises(CalibrationError, match="model has 1000 classes"):
        load_eval_set("builtin", PRE, 32, [str(i) for i in range(1000)])


def test_export_with_a_folder_gets_accuracy_and_table_notes(tmp_path):
    from exporter.api import export_checkpoint_bundle
    from exporter.commands.export import variant_table

    loaded = LoadedModel(tiny_model(), "tiny", "slimvit", LABELS)
    m = export_checkpoint_bundle(loaded, VariantGrid((1.0,), (1.0,)), tmp_path / "b",
                                 eval_data=str(write_folder(tmp_path / "eval")))
    acc = m["variants"][0]["artifacts"][0]["accuracy"]
    assert acc["samples"] == 6 and acc["dataset"] == "eval"
    assert variant_table(m, "t").caption is None
    m2 = export_checkpoint_bundle(loaded, VariantGrid((1.0,), (1.0,)), tmp_path / "b2")
    assert "no evaluation data; pass --eval-data" in variant_table(m2, "t").caption


def test_plain_checkpoint_with_narrow_widths_is_warned_once():
    plain = LoadedModel(tiny_model(), "deit_tiny", "timm", LABELS)
    msg = plain_checkpoint_warning(plain, VariantGrid((0.25, 0.5, 1.0)))
    assert msg and "plain timm checkpoint" in msg and "0.25, 0.5" in msg and "--recipe scala" in msg
    assert plain_checkpoint_warning(plain, VariantGrid((1.0,))) is None
    assert plain_checkpoint_warning(LoadedModel(tiny_model(), "x", "slimvit", LABELS),
                                    VariantGrid((0.5, 1.0))) is None


def test_accuracy_collapse_is_warned():
    def m(accs):
        return {"output": {"shape": [1, 10]}, "variants": [
            {"id": vid, "artifacts": [{"precision": "fp32", "accuracy": {"top1": a}}]} for vid, a in accs.items()]}

    msg = accuracy_collapse_warning(m({"w64": 0.9, "w32": 0.85, "w16": 0.11}))
    assert msg and "w16 11.0%" in msg and "w32" not in msg
    assert accuracy_collapse_warning(m({"w64": 0.9, "w32": 0.85})) is None
    assert accuracy_collapse_warning(m({"w64": 0.12, "w32": 0.1})) is None  # all at chance: nothing to compare
