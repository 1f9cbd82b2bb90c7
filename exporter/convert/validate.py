"""Check an exported artifact against PyTorch before it may enter a bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exporter.convert.formats.base import ExportFormat
from exporter.errors import ValidationError


@dataclass(frozen=True)
class ValidationReport:
    """How an artifact was checked. ``max_abs_diff`` is None when it could not be run on this host
    and was checked structurally instead (``checks`` says what was compared)."""

    method: str
    max_abs_diff: float | None
    atol: float
    samples: int
    checks: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {"method": self.method, "max_abs_diff": self.max_abs_diff, "atol": self.atol,
               "samples": self.samples}
        if self.max_abs_diff is None:
            del out["max_abs_diff"]
        if self.checks:
            out["checks"] = list(self.checks)
        return out


def validate_artifact(fmt: ExportFormat, path: Path, reference: torch.nn.Module,
                      inputs: np.ndarray, atol: float | None = None, what: str = "") -> ValidationReport:
    """Run the artifact and ``reference`` on ``inputs`` and compare every output.

    Raises:
        ValidationError: listing each output whose max abs diff exceeds the tolerance.
    """
    atol = fmt.atol if atol is None else atol
    with torch.no_grad():
        expected = {"logits": reference(torch.from_numpy(inputs)).numpy()}
    got = {"logits": fmt.run(path, inputs)}
    diffs, problems = {}, []
    for name, exp in expected.items():
        out = got.get(name)
        if out is None or out.shape != exp.shape:
            problems.append(f"{name}: shape {None if out is None else out.shape} != {exp.shape}")
            continue
        diff = float(np.max(np.abs(out.astype(np.float64) - exp)))
        diffs[name] = diff
        if not np.isfinite(diff) or diff > atol:
            problems.append(f"{name}: max abs diff {diff:.3g} > atol {atol:.3g}")
    if problems:
        raise ValidationError(f"{what or path.name} ({fmt.name}) does not match PyTorch: "
                              + "; ".join(problems))
    return ValidationReport(fmt.runtime_version(), max(diffs.values()), atol, len(inputs))


def check_artifact(fmt: ExportFormat, path: Path, module: torch.nn.Module, example: np.ndarray,
                   host: str) -> ValidationReport:
    """Validate an artifact that cannot run on this host by the format's structural `check`.

    Raises:
        ValidationError: listing every problem the check found.
    """
    checks = fmt.check(path, module, example)
    return ValidationReport(f"{fmt.runtime_version()} program check (not run: {host})", None,
                            fmt.atol, len(example), tuple(checks))
