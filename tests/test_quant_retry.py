"""An artifact that its runtime cannot load or run gets the same retry (sensitive ops in float)
as one over the accuracy budget, in every format that runs here, and is left out with both
reasons only when the retry fails too.

The failure is real: the test precision writes a truncated copy of the variant's FP32 program,
which ONNX Runtime, the LiteRT interpreter and the ExecuTorch runtime each refuse to load; its
retry writes the FP32 program itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporter.convert.formats import FORMATS, get_format
from exporter.convert.quantize import QuantizeOptions, precision_names
from exporter.convert.quantize.pipeline import EvalData, export_precisions
from exporter.convert.quantize.registry import PRECISIONS, SENSITIVE_OPS, Precision, QuantJob
from exporter.nn.config import VariantGrid
from exporter.nn.extract import extract_variant
from tests.conftest import tiny_model

RUNNABLE = [name for name, fmt in FORMATS.items() if fmt.can_run and fmt.available()]


@pytest.fixture(scope="module")
def variant():
    model = tiny_model(seed=3, embed_dim=32, depth=2, num_heads=2)
    (s,) = VariantGrid((1.0,), (1.0,), (32,)).subnets(model.cfg)
    return s, extract_variant(model, s)


def _truncated_unless_retry(always: bool):
    def quantize(job: QuantJob) -> None:
        program = job.fp32_path.read_bytes()
        broken = always or not job.float_ops
        job.out.write_bytes(program[: len(program) // 2] if broken else program)
    return quantize


def _run(fmt_name: str, variant, tmp_path: Path, monkeypatch, always: bool):
    s, static = variant
    fmt = get_format(fmt_name)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    fp32 = tmp_path / f"fp32{fmt.suffix}"
    fmt.export(static, x, fp32, {"slimvit.variant_id": s.id})
    precision_names()  # every format's quantizers registered before the test's is added
    p = Precision("truncated", fmt_name, "a truncated program (test)", calibrated=False,
                  min_agreement=0.99, quantize=_truncated_unless_retry(always))
    monkeypatch.setitem(PRECISIONS, fmt_name, {**PRECISIONS.get(fmt_name, {}), p.name: p})
    inputs = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    data = EvalData.build(static, inputs, None, "random normal inputs")
    out = tmp_path / "bundle"
    arts, left = export_precisions(fmt, s.id, static, fp32, out, QuantizeOptions(("truncated",)), None,
                                   data, {"slimvit.variant_id": s.id})
    assert not list(out.rglob(".quant-*"))  # no work directory left behind
    return fp32, out, arts, left


@pytest.mark.parametrize("fmt_name", RUNNABLE)
def test_a_program_the_runtime_refuses_is_retried_with_sensitive_ops_in_float(fmt_name, variant, tmp_path,
                                                                            monkeypatch):
    fp32, out, arts, left = _run(fmt_name, variant, tmp_path, monkeypatch, always=False)
    assert left == []
    (art,) = arts
    assert art.quantization["float_ops"] == list(SENSITIVE_OPS)
    assert art.validation["agreement"] == 1.0
    assert (out / art.path).read_bytes() == fp32.read_bytes()


@pytest.mark.parametrize("fmt_name", RUNNABLE)
def test_when_the_retry_fails_too_it_is_left_out_with_both_reasons(fmt_name, variant, tmp_path, monkeypatch):
    _, out, arts, left = _run(fmt_name, variant, tmp_path, monkeypatch, always=True)
    assert arts == []
    (entry,) = left
    assert entry["format"] == fmt_name and entry["precision"] == "truncated"
    first, second = entry["reason"].split(f"; with {'/'.join(SENSITIVE_OPS)} in float: ")
    assert first.startswith("measuring failed: ") and second.startswith("measuring failed: ")
    assert not (out / fmt_name).exists() or not any((out / fmt_name).iterdir())
