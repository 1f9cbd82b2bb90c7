"""The precisions loop of one variant in one format: quantize from the validated FP32 artifact,
calibrated on that variant's own inputs, measure against the FP32 PyTorch variant, retry with
sensitive ops in float when over the accuracy budget, and leave out what still is.

Validation of a quantized artifact is top-1 *agreement* with the FP32 PyTorch variant (at least
the precision's ``min_agreement``) plus the top-1 drop budget (``max_drop``); its logits are
not held to FP32's atol. Without labels the drop is ``1 - agreement``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.data import Preprocess
from calibration.sources import CalibrationSet, load_calibration
from exporter.convert.artifact import Artifact
from exporter.convert.formats.base import ExportFormat
from exporter.convert.quantize.registry import (
    FP32,
    SENSITIVE_OPS,
    Precision,
    QuantJob,
    check_method,
    check_precisions,
    get_precision,
)
from exporter.errors import ConfigError, check_choice
from exporter.convert.quantize.targets import DEFAULT_TARGET, check_target

DEFAULT_MAX_DROP = 0.01
_OVER_BUDGET = ("agreement", "top-1 drop")  # how _measure's reasons start: worth a retry
# An artifact the runtime cannot load or run is retried too: the retry's program differs (sensitive
# ops in float), e.g. XNNPACK refusing a quantized node it would take in float.
_MEASURING_FAILED = "measuring failed"
_RETRY = (*_OVER_BUDGET, _MEASURING_FAILED)


@dataclass(frozen=True)
class QuantizeOptions:
    """Which precisions to export and how to calibrate them.

    Attributes:
        precisions: registered precision names; ``fp32`` is always exported.
        calibration: the calibration set (required by calibrated precisions such as ``int8``).
        method: activation-range estimation (``minmax``, ``entropy``, ``percentile``).
        max_drop: largest allowed top-1 drop against the FP32 PyTorch variant (0.01 = 1 p.p.).
        int8_target: the CPU int8 recipes are tuned for (`exporter.convert.quantize.targets`).
        float_ops: per-op-type overrides: op kinds of `SENSITIVE_OPS` every quantized artifact
            keeps in float from the first try; the retry adds the rest.
        per_format: precisions a format is limited to (format name -> names); a format not in
            it gets every one of ``precisions`` it has (the demo keeps ExecuTorch to fp32).
    """

    precisions: tuple[str, ...] = (FP32,)
    calibration: CalibrationSet | None = None
    method: str = "minmax"
    max_drop: float = DEFAULT_MAX_DROP
    int8_target: str = DEFAULT_TARGET
    float_ops: tuple[str, ...] = ()
    per_format: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_method(self.method)
        check_target(self.int8_target)
        for op in self.float_ops:
            check_choice("--float-ops op kind", op, SENSITIVE_OPS)
        if not 0 <= self.max_drop <= 1:
            raise ConfigError(f"--max-drop is a fraction of top-1 in [0, 1] (0.01 = 1 p.p.), "
                              f"but got {self.max_drop}")

    def check(self, formats: list[str]) -> list[str]:
        """Validate against the formats being exported; returns the precision names, fp32 first."""
        names = check_precisions(self.precisions, formats)
        needs = sorted({n for f in formats for n in names
                        if (p := get_precision(f, n)) is not None and p.calibrated})
        if needs and self.calibration is None:
            raise ConfigError(f"{', '.join(needs)} needs calibration data: add --calibration builtin, "
                              "a directory of images or an .npz with normalized 'x'")
        return names

    def describe(self, excluded: list[dict[str, str]]) -> dict[str, Any]:
        """The manifest's ``calibration`` section, with the precisions left out and why."""
        src = self.calibration.describe() if self.calibration else {"source": "none", "samples": 1,
                                                                     "seed": 0}
        return {**src, "method": self.method, "precisions": list(self.precisions),
                "max_drop": self.max_drop, "int8_target": self.int8_target,
                **({"float_ops": list(self.float_ops)} if self.float_ops else {}),
                **({"per_format": {k: list(v) for k, v in self.per_format.items()}} if self.per_format else {}),
                "excluded": excluded}

    def for_format(self, fmt: str) -> tuple[str, ...]:
        """The precisions exported in format ``fmt`` (`per_format` applied)."""
        only = self.per_format.get(fmt)
        return self.precisions if only is None else tuple(p for p in self.precisions if p in only)

    def attempts(self) -> tuple[tuple[str, ...], ...]:
        """The op kinds kept in float on the first try and on the retry (no retry when the
        first already keeps every sensitive kind in float)."""
        first = tuple(op for op in SENSITIVE_OPS if op in self.float_ops)
        return (first,) if first == SENSITIVE_OPS else (first, SENSITIVE_OPS)


@dataclass(frozen=True)
class EvalData:
    """The data every artifact of one variant is measured on, with the FP32 PyTorch reference."""

    inputs: np.ndarray
    labels: np.ndarray | None
    name: str
    reference_logits: np.ndarray

    @classmethod
    def build(cls, reference: torch.nn.Module, inputs: np.ndarray, labels: np.ndarray | None,
              name: str) -> EvalData:
        with torch.no_grad():
            ref = reference(torch.from_numpy(inputs)).numpy()
        return cls(inputs, labels, name, ref)


def export_precisions(fmt: ExportFormat, variant_id: str, module: torch.nn.Module, fp32_path: Path,
                      out: Path, opts: QuantizeOptions, calibration: np.ndarray | None,
                      data: EvalData, metadata: dict[str, str], reference: torch.nn.Module | None = None,
                      ) -> tuple[list[Artifact], list[dict[str, str]]]:
    """Make, measure and place every non-FP32 precision of one variant in one format.

    Args:
        fmt: the format; ``fp32_path`` is its validated FP32 artifact of the variant.
        module: the variant's static module, for formats that convert again.
        out: the bundle directory; artifacts go to ``FORMAT/ID.PRECISION.SUFFIX``.
        calibration: this variant's own calibration inputs at its resolution.
        data: evaluation inputs and the FP32 PyTorch reference logits.
        reference: the slimmable model at this variant (`SubnetForward`), for shared-scale int8.

    Returns:
        The artifacts that met the budget, and for those that did not,
        ``{variant, format, precision, reason}``.
    """
    arts, excluded = [], []
    example = calibration[:1] if calibration is not None else data.inputs[:1]
    for name in opts.for_format(fmt.name):
        p = get_precision(fmt.name, name)
        if name == FP32 or p is None:
            continue
        reasons: list[str] = []
        for float_ops in opts.attempts():
            entry, why = _attempt(fmt, p, variant_id, module, fp32_path, out, opts, example,
                                  calibration if p.calibrated else None, data, metadata, float_ops,
                                  reference)
            if entry is not None:
                arts.append(entry)
                break
            reasons.append(f"{'with ' + '/'.join(float_ops) + ' in float: ' if float_ops else ''}{why}")
            if not why.startswith(_RETRY):  # a retry only helps accuracy or a failed run
                excluded.append({"variant": variant_id, "format": fmt.name, "precision": name,
                                 "reason": why})
                break
        else:
            excluded.append({"variant": variant_id, "format": fmt.name, "precision": name,
                             "reason": "; ".join(reasons)})
    return arts, excluded


def _attempt(fmt: ExportFormat, p: Precision, variant_id: str, module: torch.nn.Module,
             fp32_path: Path, out: Path, opts: QuantizeOptions, example: np.ndarray,
             calibration: np.ndarray | None, data: EvalData, metadata: dict[str, str],
             float_ops: tuple[str, ...], reference: torch.nn.Module | None = None,
             ) -> tuple[Artifact | None, str]:
    rel = Path(fmt.name) / f"{variant_id}.{p.name}{fmt.suffix}"
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quant-") as work:
        job = QuantJob(fp32_path, module, example, calibration, opts.method, float_ops,
                       dict(metadata), Path(work) / target.name, fmt.layout, fmt, opts.int8_target,
                       reference)
        try:
            p.quantize(job)
        except Exception as e:  # a quantizer that fails leaves this precision out, with why
            return None, f"quantization failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if not fmt.can_run and p.simulate is None:
            return None, f"{fmt.name} cannot run here and {p.name} has no simulation"
        try:
            if fmt.can_run:
                logits, method = fmt.run(job.out, data.inputs), fmt.runtime_version()
            else:
                logits, method = p.simulate(job, data.inputs), p.simulation
        except Exception as e:  # an artifact that cannot be measured is not shipped
            return None, f"{_MEASURING_FAILED}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        entry, why = _measure(p, logits, data, opts.max_drop, method)
        if entry is None:
            return None, why
        _place(job.out, target)
    quant = {"scheme": p.scheme, "calibrated": p.calibrated, "float_ops": list(float_ops)}
    if p.uses_target:
        quant["target"] = opts.int8_target
    return Artifact.placed(out, rel, fmt.name, p.name, quantization=quant,
                           delegation=fmt.delegation(target), **entry), ""


def _measure(p: Precision, logits: np.ndarray, data: EvalData, max_drop: float,
             method: str) -> tuple[dict[str, Any] | None, str]:
    pred, ref = logits.argmax(1), data.reference_logits.argmax(1)
    agreement = float((pred == ref).mean())
    diff = float(np.max(np.abs(logits.astype(np.float64) - data.reference_logits)))
    validation = {"method": method, "max_abs_diff": diff if np.isfinite(diff) else 1e30,
                  "samples": len(pred), "agreement": agreement, "min_agreement": p.min_agreement}
    entry: dict[str, Any] = {"validation": validation}
    if data.labels is not None:
        top1, ref_top1 = float((pred == data.labels).mean()), float((ref == data.labels).mean())
        drop = ref_top1 - top1
        entry["accuracy"] = {"top1": top1, "agreement": agreement, "samples": len(pred),
                             "dataset": data.name, "method": method, "reference_top1": ref_top1,
                             "drop": drop}
    else:
        drop = 1.0 - agreement
    if not np.isfinite(diff) or agreement < p.min_agreement:
        return None, f"{_OVER_BUDGET[0]} {agreement:.3f} < {p.min_agreement} with the FP32 PyTorch variant"
    if drop > max_drop + 1e-9:
        return None, f"{_OVER_BUDGET[1]} {100 * drop:.2f} p.p. > budget {100 * max_drop:.2f} p.p."
    return entry, ""


def _place(src: Path, target: Path) -> None:
    """Move a finished artifact (file or directory) over ``target`` in one rename."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    if src.is_file():
        with open(src, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(src, target)


@dataclass(frozen=True)
class VariantQuant:
    """The precisions loop bound to one variant: its calibration inputs and evaluation data."""

    opts: QuantizeOptions
    calibration: np.ndarray | None
    data: EvalData
    reference: torch.nn.Module | None = None  # SubnetForward: what shared-scale int8 slices

    def export(self, fmt: ExportFormat, variant_id: str, module: torch.nn.Module, fp32_path: Path,
               out: Path, metadata: dict[str, str]) -> tuple[list[Artifact], list[dict[str, str]]]:
        return export_precisions(fmt, variant_id, module, fp32_path, out, self.opts,
                                 self.calibration, self.data, metadata, self.reference)


def for_variant(opts: QuantizeOptions, pre: Preprocess, resolution: int,
                reference: torch.nn.Module, eval_inputs: np.ndarray | None,
                eval_labels: np.ndarray | None, eval_name: str) -> VariantQuant:
    """Bind ``opts`` to one variant: its own calibration inputs at its resolution, and the data
    it is measured on (the evaluation set, else the calibration set, which is not held out)."""
    calib = opts.calibration.inputs(pre, resolution) if opts.calibration is not None else None
    if eval_inputs is not None:
        data = EvalData.build(reference, eval_inputs, eval_labels, eval_name)
    elif calib is not None:
        cal = opts.calibration
        data = EvalData.build(reference, calib, cal.labels, f"calibration:{cal.source} (not held out)")
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, len(pre.mean), resolution, resolution)).astype(np.float32)
        data = EvalData.build(reference, x, None, "random normal inputs")
    return VariantQuant(opts, calib, data, reference)


def quantize_options(precisions: str | tuple[str, ...] | list[str] | None, calibration: str | None,
                     pre: Preprocess, samples: int = 128, seed: int = 0, method: str = "minmax",
                     max_drop: float = DEFAULT_MAX_DROP,
                     warn: Callable[[str], None] | None = None,
                     int8_target: str = DEFAULT_TARGET,
                     float_ops: str | tuple[str, ...] = ()) -> QuantizeOptions | None:
    """Options from CLI-style values (``"fp32,fp16,int8"``); None when only fp32 is asked for.

    Raises:
        ConfigError: a precision needing calibration without ``calibration``, a bad method.
        CalibrationError: unreadable or malformed calibration data.
    """
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    check_target(int8_target)
    if isinstance(float_ops, str):
        float_ops = tuple(op.strip() for op in float_ops.split(",") if op.strip())
    names = tuple(precisions or (FP32,))
    if names == (FP32,) and calibration is None:
        return None
    check_method(method)
    cal = load_calibration(calibration, pre, samples, seed, warn) if calibration is not None else None
    return QuantizeOptions(names, cal, method, max_drop, int8_target, tuple(float_ops))
