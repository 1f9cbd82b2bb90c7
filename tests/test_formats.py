"""One conformance suite over the format registry: every registered format exports a dense and a
token-pruned variant that matches PyTorch (or passes its structural check where it cannot run
here), refuses a mismatch, carries slimvit's metadata and, where it promises to, writes the
same bytes twice. A new format gets all of it by registering itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.convert.formats import FORMATS, get_format
from exporter.convert.validate import check_artifact, validate_artifact
from exporter.errors import ValidationError
from exporter.fileio import sha256_file, sha256_tree
from exporter.nn.config import Variant
from exporter.nn.extract import SubnetForward, extract_variant
from tests.conftest import tiny_model

VARIANTS = {"dense": Variant(1.0, 1.0, 32), "pruned": Variant(0.5, 0.5, 24)}
METADATA = {"slimvit.variant_id": "conformance", "slimvit.note": "[/markup] & <b>text</b> é"}


def _inputs(res: int, seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, res, res)).astype(np.float32)


def _export(name: str, model, v: Variant, path) -> torch.nn.Module:
    static = extract_variant(model, v)
    get_format(name).export(static, _inputs(v.resolution, 0, 1), path, METADATA)
    return static


def _digest(path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


@pytest.fixture(scope="module")
def model():
    return tiny_model(depth=2)


@pytest.mark.parametrize("kind", VARIANTS)
@pytest.mark.parametrize("name", FORMATS)
def test_an_artifact_matches_the_slimmable_model(name, kind, model, tmp_path):
    fmt, v = get_format(name), VARIANTS[kind]
    path = tmp_path / f"a{fmt.suffix}"
    static = _export(name, model, v, path)
    reference = SubnetForward(model, model.subnet(v))
    if fmt.can_run:  # inputs other than the export's example
        report = validate_artifact(fmt, path, reference, _inputs(v.resolution, 7))
        assert report.max_abs_diff is not None and report.max_abs_diff <= fmt.atol
    else:
        report = check_artifact(fmt, path, static, _inputs(v.resolution, 7, 1), "not macOS")
        assert report.checks


@pytest.mark.parametrize("name", FORMATS)
def test_a_mismatch_is_an_error(name, model, tmp_path):
    fmt, v = get_format(name), VARIANTS["dense"]
    path = tmp_path / f"a{fmt.suffix}"
    _export(name, model, v, path)
    other = tiny_model(seed=5, depth=2)  # same shapes, other weights
    with pytest.raises(ValidationError, match="does not match|fails the program check"):
        if fmt.can_run:
            validate_artifact(fmt, path, SubnetForward(other, other.subnet(v)), _inputs(v.resolution, 7))
        else:
            check_artifact(fmt, path, extract_variant(other, v), _inputs(v.resolution, 7, 1), "not macOS")


@pytest.mark.parametrize("name", FORMATS)
def test_metadata_round_trips(name, model, tmp_path):
    fmt = get_format(name)
    path = tmp_path / f"a{fmt.suffix}"
    _export(name, model, VARIANTS["pruned"], path)
    meta = fmt.read_metadata(path)
    assert {k: meta.get(k) for k in METADATA} == METADATA


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.deterministic])
def test_deterministic_formats_write_the_same_bytes_twice(name, tmp_path):
    fmt = get_format(name)
    a, b = tmp_path / f"a{fmt.suffix}", tmp_path / f"b{fmt.suffix}"
    _export(name, tiny_model(depth=2), VARIANTS["pruned"], a)
    _export(name, tiny_model(depth=2), VARIANTS["pruned"], b)
    assert _digest(a) == _digest(b)
