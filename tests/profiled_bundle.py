"""One small real bundle shared by the profiling, ingest and report tests (built once per run).

Two ONNX variants of `tiny_model()` exported by `export_bundle`, with accuracy on 40 digits,
plus the TFLite artifact of ``w32_k100_r32`` from ``tests/data`` (exported from the same
`tiny_model()` by `TFLiteFormat`; exporting TFLite here would cost most of the test budget), so
both profiling runtimes have work. Tests that write get their own copy.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
TFLITE = DATA / "tiny_w32_k100_r32.fp32.tflite"
TFLITE_VARIANT = "w32_k100_r32"


@cache
def exported_bundle() -> Path:
    import torch

    from calibration.data import digits
    from exporter.bundle.export import export_bundle
    from exporter.checkpoints import LoadedModel
    from exporter.convert.formats import get_format
    from exporter.fileio import sha256_file
    from exporter.manifest import read_manifest, write_manifest
    from exporter.nn.config import VariantGrid
    from tests.conftest import tiny_model

    root = Path(tempfile.mkdtemp(prefix="slimvit-profile-"))
    atexit.register(shutil.rmtree, root, True)
    out = root / "bundle"
    loaded = LoadedModel(tiny_model(), "tiny", "slimvit", [str(i) for i in range(10)])
    grid = VariantGrid(widths=(0.5, 1.0), keep_rates=(1.0,), resolutions=(32,))
    with torch.no_grad():
        export_bundle(loaded, grid, out, eval_set=digits("test").subset(slice(0, 40)))
    manifest = read_manifest(out)
    (variant,) = [v for v in manifest["variants"] if v["id"] == TFLITE_VARIANT]
    target = out / "tflite" / TFLITE.name.removeprefix("tiny_")
    target.parent.mkdir()
    shutil.copyfile(TFLITE, target)
    # Check the stored TFLite file against this run's ONNX artifact before listing it.
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = get_format("onnx").run(out / variant["artifacts"][0]["path"], x)
    diff = float(np.abs(get_format("tflite").run(target, x) - ref).max())
    assert diff < 1e-4, f"tests/data TFLite file no longer matches tiny_model() (max diff {diff})"
    variant["artifacts"].append({
        "format": "tflite", "precision": "fp32", "path": f"tflite/{target.name}",
        "sha256": sha256_file(target), "bytes": target.stat().st_size,
        "validation": {"method": "onnx artifact, onnxruntime", "max_abs_diff": diff, "atol": 1e-4,
                       "samples": 4}})
    write_manifest(out, manifest)
    return out


def copy_bundle(dest: Path) -> Path:
    """A private copy of the shared bundle under ``dest``."""
    return Path(shutil.copytree(exported_bundle(), dest / "bundle"))


@cache
def profiled_bundle() -> tuple[Path, dict]:
    """A copy of the shared bundle after `profile_bundle` (5 runs): (bundle, manifest)."""
    from exporter.measure.profile import profile_bundle

    out = copy_bundle(Path(tempfile.mkdtemp(prefix="slimvit-profiled-", dir=exported_bundle().parent)))
    return out, profile_bundle(out, runs=5, warmup=1)
