"""Which artifacts are byte-stable across exports (docs/determinism.md): TFLite and Core ML
(slimvit replaces coremltools' random package item ids with content-based ones). ONNX:
test_onnx.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from exporter.convert.formats.coreml import CoreMLFormat
from exporter.bundle.verify import runtime_problems
from exporter.convert.formats import get_format
from exporter.fileio import sha256_file, sha256_tree
from exporter.nn.config import Variant, resolve
from exporter.nn.extract import extract_variant
from tests.conftest import tiny_model

UUID = re.compile(rb"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def export_twice(name: str, tmp_path: Path) -> tuple[Path, Path]:
    model = tiny_model(depth=1, embed_dim=32, num_heads=2)
    s = resolve(model.cfg, Variant(1.0, 1.0, 32))
    example = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    fmt = get_format(name)
    paths = []
    for run in range(2):
        p = tmp_path / f"run{run}{fmt.suffix}"
        fmt.export(extract_variant(model, s), example, p, {"slimvit.variant_id": s.id})
        paths.append(p)
    return paths[0], paths[1]


def test_tflite_artifacts_are_byte_stable(tmp_path):
    pytest.importorskip("litert_torch")
    a, b = export_twice("tflite", tmp_path)
    assert a.stat().st_size > 10_000
    assert sha256_file(a) == sha256_file(b)
    assert runtime_problems(a, "tflite") == []  # verify reads its schema version: 3


def test_verify_reads_the_core_ml_specification_version(coreml_pair, monkeypatch):
    a, _ = coreml_pair
    assert runtime_problems(a, "coreml") == []
    monkeypatch.setattr(CoreMLFormat, "app_spec_versions", (9, 9))  # as if the apps needed iOS 18
    assert runtime_problems(a, "coreml") == [
        "Core ML specificationVersion 8 is outside 9..9, what the apps' runtimes load (docs/security.md)"]


@pytest.fixture(scope="module")
def coreml_pair(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("coremltools")
    return export_twice("coreml", tmp_path_factory.mktemp("coreml"))


def test_coreml_packages_are_byte_stable(coreml_pair):
    a, b = coreml_pair
    assert sha256_tree(a) == sha256_tree(b)
    doc = json.loads((a / "Manifest.json").read_text())
    ids = UUID.findall((a / "Manifest.json").read_bytes())
    assert len(set(ids)) == 2 and doc["rootModelIdentifier"] in doc["itemInfoEntries"]
    # the ids are name-based (uuid5) on each item's content: other weights, other ids
    assert all(i[14:15] == b"5" for i in ids)
    items = {v["path"]: k for k, v in doc["itemInfoEntries"].items()}
    assert doc["rootModelIdentifier"] == items["com.apple.CoreML/model.mlmodel"]


def test_quantized_coreml_packages_are_byte_stable(tmp_path):
    pytest.importorskip("coremltools")
    from exporter.convert.quantize import QuantJob, get_precision

    model = tiny_model(depth=1, embed_dim=32, num_heads=2)
    module = extract_variant(model, resolve(model.cfg, Variant(1.0, 1.0, 32)))
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    fp32 = tmp_path / "fp32.mlpackage"
    get_format("coreml").export(module, x[:1], fp32, {})
    for name in ("int8-weights", "palettized", "int8"):
        digests = set()
        for run in range(2):
            out = tmp_path / f"{name}.{run}.mlpackage"
            get_precision("coreml", name).quantize(
                QuantJob(fp32, module, x[:1], x, "minmax", (), {}, out))
            digests.add(sha256_tree(out))
        assert len(digests) == 1, name


EXPORT_ONE = """
import sys, numpy as np
from tests.conftest import tiny_model
from exporter.nn.config import Variant, resolve
from exporter.nn.extract import extract_variant
from exporter.convert.formats import get_format
from exporter.fileio import sha256_tree
model = tiny_model(depth=1, embed_dim=32, num_heads=2)
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
get_format("coreml").export(extract_variant(model, resolve(model.cfg, Variant(1.0, 1.0, 32))), x,
                            sys.argv[1], {"slimvit.variant_id": "a", "slimvit.model": "b"})
print(sha256_tree(sys.argv[1]))
"""


def test_coreml_packages_are_byte_stable_across_processes(tmp_path):
    """Protobuf maps serialise in hash order, which PYTHONHASHSEED changes between processes."""
    import os
    import subprocess
    import sys

    pytest.importorskip("coremltools")
    digests = set()
    for seed in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", EXPORT_ONE, str(tmp_path / f"{seed}.mlpackage")],
                           capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
                           env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": "."})
        assert r.returncode == 0, r.stderr[-2000:]
        digests.add(r.stdout.strip().splitlines()[-1])
    assert len(digests) == 1
    meta = json.loads((tmp_path / "1.mlpackage" / "Manifest.json").read_text())
    assert meta["fileFormatVersion"]  # still a package coremltools wrote
