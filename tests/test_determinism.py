"""Which artifacts are byte-stable across exports (docs/determinism.md): TFLite is; a Core ML
package differs only in the random item identifiers of its Manifest.json. (ONNX: test_onnx.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from exporter.config import Variant, resolve
from exporter.extract import extract_variant
from exporter.fileio import sha256_file, sha256_tree
from exporter.formats import get_format
from exporter import verify
from exporter.verify import runtime_problems
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
    monkeypatch.setattr(verify, "COREML_SPEC_VERSION", (9, 9))  # as if the apps needed iOS 18
    assert runtime_problems(a, "coreml") == [
        "Core ML specificationVersion 8 is outside 9..9, what the apps' runtimes load (docs/security.md)"]


@pytest.fixture(scope="module")
def coreml_pair(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("coremltools")
    return export_twice("coreml", tmp_path_factory.mktemp("coreml"))


def test_coreml_packages_differ_only_in_manifest_uuids(coreml_pair):
    a, b = coreml_pair
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    differ = [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()]
    assert differ == ["Manifest.json"]  # the model spec and the weights are byte-stable
    assert sha256_tree(a) != sha256_tree(b)
    ids = UUID.findall((a / "Manifest.json").read_bytes())
    assert len(set(ids)) == 2  # one item id per stored file (spec, weights), fresh uuid4 each time
    assert not set(ids) & set(UUID.findall((b / "Manifest.json").read_bytes()))
    # Apart from the ids (which also reorder the items, keyed by id), the manifests agree.
    assert package_items(a) == package_items(b)


def package_items(package: Path) -> tuple[list[dict], str]:
    doc = json.loads((package / "Manifest.json").read_text())
    items = doc["itemInfoEntries"]
    return sorted(items.values(), key=lambda i: i["path"]), items[doc["rootModelIdentifier"]]["path"]
