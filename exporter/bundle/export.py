"""The export stages of one bundle: `ExportPlan` -> each variant extracted once and exported in
every format and precision as `Artifact` objects -> `exporter.bundle.writer` -> a published
bundle directory (crash-safe: staged, then swapped in whole)."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.data import ImageSet
from exporter.bundle.plan import ExportPlan
from exporter.bundle.writer import VariantResult, write_bundle
from exporter.checkpoints import LoadedModel
from exporter.convert.artifact import Artifact
from exporter.convert.cache import ArtifactCache, default_cache_dir, publish_bundle, stage_bundle
from exporter.convert.cache_admin import max_bytes as cache_max_bytes
from exporter.convert.cache_admin import prune as prune_cache
from exporter.convert.formats import FORMATS, ExportFormat
from exporter.convert.quantize import QuantizeOptions, for_variant
from exporter.convert.validate import check_artifact, validate_artifact
from exporter.errors import SlimvitError
from exporter.fileio import atomic_dir, atomic_path
from exporter.gate.files import dumps_strict
from exporter.gate.outputs import check_out_dir
from exporter.manifest import SCHEMA_VERSION, tool_version
from exporter.nn.config import Subnet, VariantGrid
from exporter.nn.extract import SubnetForward, extract_variant

Progress = Callable[[str], None]
VALIDATION_RANDOM, VALIDATION_REAL = 4, 4


@dataclass(frozen=True)
class Accuracy:
    top1: float
    agreement: float
    samples: int
    dataset: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "agreement": self.agreement, "samples": self.samples,
                "dataset": self.dataset, "method": self.method}


def evaluate_artifact(fmt: ExportFormat, path: Path, reference: torch.nn.Module,
                      inputs: np.ndarray, labels: np.ndarray, dataset: str) -> Accuracy:
    """Held-out top-1 of the artifact, and its top-1 agreement with the PyTorch variant."""
    pred = fmt.run(path, inputs).argmax(axis=1)
    with torch.no_grad():
        ref = reference(torch.from_numpy(inputs)).argmax(dim=1).numpy()
    return Accuracy(float((pred == labels).mean()), float((pred == ref).mean()), len(labels),
                    dataset, fmt.runtime_version())


def artifact_metadata(loaded: LoadedModel, s: Subnet, layout: str = "NCHW") -> dict[str, str]:

    pre = loaded.preprocess
    return {
        "slimvit.variant_id": s.id, "slimvit.manifest_schema": SCHEMA_VERSION,
        "slimvit.labels": dumps_strict(loaded.labels), "slimvit.mean": dumps_strict(list(pre.mean)),
        "slimvit.std": dumps_strict(list(pre.std)), "slimvit.layout": layout,
        "slimvit.model": loaded.name, "slimvit.version": tool_version(),
    }


def export_variant(loaded: LoadedModel, s: Subnet, fmt: ExportFormat, out: Path,
                   real_inputs: np.ndarray | None, cache: ArtifactCache | None = None,
                   module: torch.nn.Module | None = None) -> Artifact:
    """Export, validate and place the FP32 artifact of one variant in one format.

    The file appears at its final path only after validation passed. With a ``cache``, the
    finished artifact is stored in it, and taken from it instead when it resumes an export.
    ``module`` is the variant's static module when the caller extracted it already.
    """
    module = extract_variant(loaded.model, s) if module is None else module
    shape = (1, loaded.model.cfg.in_chans, s.resolution, s.resolution)
    example = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    checks = [np.random.default_rng(1).standard_normal((VALIDATION_RANDOM, *shape[1:])).astype(np.float32)]
    if real_inputs is not None:
        checks.append(real_inputs[:VALIDATION_REAL])
    rel = Path(fmt.name) / f"{s.id}.fp32{fmt.suffix}"
    target = out / rel
    metadata = {**artifact_metadata(loaded, s, fmt.layout), "slimvit.precision": "fp32"}
    key = None if cache is None else cache.key(
        weights=loaded.weights_sha256, subnet=s, format=fmt.name, options=vars(fmt), precision="fp32",
        metadata=metadata, validation=checks, path=rel.as_posix())
    if cache is not None and (done := cache.fetch(key, target)) is not None:
        return done
    with (atomic_dir if fmt.directory else atomic_path)(target) as tmp:
        fmt.export(module, example, tmp, metadata)
        if fmt.can_run:
            # Compare against the slimmable model itself, not only the extracted module.
            reference = SubnetForward(loaded.model, s)
            report = validate_artifact(fmt, tmp, reference, np.concatenate(checks), what=s.id)
        else:
            report = check_artifact(fmt, tmp, module, example, host=platform.system())
    art = Artifact.placed(out, rel, fmt.name, "fp32", report.to_dict(), delegation=fmt.delegation(target))
    if cache is not None:
        cache.store(key, target, art)
    return art


class IncompleteBundleError(SlimvitError):
    """With ``keep_going``: some artifacts failed; the bundle holds the rest (``manifest``)."""

    def __init__(self, failures: list[tuple[str, str, str]], manifest: dict[str, Any]) -> None:
        self.failures, self.manifest = failures, manifest
        listed = "; ".join(f"{v} {f}: {why}" for v, f, why in failures)
        super().__init__(f"{len(failures)} artifact(s) failed and are not in the bundle: {listed}")


def export_bundle(loaded: LoadedModel, grid: VariantGrid, out: str | Path,
                  formats: Sequence[str | ExportFormat] = ("onnx",), eval_set: ImageSet | None = None,
                  progress: Progress | None = None, bundle_version: int = 1,
                  quantize: QuantizeOptions | None = None,
                  policy: str | Path | dict[str, Any] | None = None, nhwc: bool = False,
                  keep_going: bool = False, resume: bool = False,
                  cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Export every variant of ``grid`` in every format into the bundle directory ``out``.

    Crash-safe (docs/determinism.md): the bundle is written into a staging directory beside
    ``out`` and swapped in whole when its manifest is written; killed before that, the
    previous bundle at ``out`` is untouched.

    Args:
        loaded: the slimmable model and its labels/preprocessing.
        grid: the variants to export.
        out: bundle directory (created; existing artifacts of the same names are replaced).
        formats: registered format names, or configured instances such as
            ``CoreMLFormat(deployment_target="iOS16")``.
        eval_set: held-out images (in [0, 1]) for accuracy; also used in validation.
        progress: called with a short description before each artifact.
        bundle_version: the manifest's monotonically increasing bundle version.
        quantize: precisions beyond fp32 and their calibration (see `exporter.convert.quantize`);
            a precision over its accuracy budget is left out and listed under ``calibration``.
        policy: a policy file or dict merged over the default switching policy
            (docs/policy.md); its conformance vectors go into the bundle too.
        nhwc: export the named formats that offer it (tflite) with an NHWC input.
        keep_going: an artifact that fails to convert or validate is left out and the rest
            still complete; `IncompleteBundleError` lists the failures after the manifest is written.
        resume: take artifacts a killed (or earlier) export finished from the artifact cache
            instead of exporting them again.
        cache_dir: the artifact cache (default `default_cache_dir`); every finished artifact
            is stored there.

    Returns:
        The manifest written to ``out/manifest.json``.

    Raises:
        ConfigError: an unknown format or a variant that does not fit the model.
        ValidationError: an artifact does not match PyTorch (nothing of it is left behind).
        ExportError: a converter cannot handle a variant (names the variant and the op).
        IncompleteBundleError: with ``keep_going``, after writing the bundle without the failures.
    """
    final = check_out_dir(out, "bundle")  # before any work: never "", "/", a file, inside a bundle
    plan = ExportPlan.build(loaded, grid, formats, eval_set=eval_set, quantize=quantize, policy=policy,
                            bundle_version=bundle_version, keep_going=keep_going, nhwc=nhwc)
    return run_plan(plan, final, progress, resume, cache_dir)


def run_plan(plan: ExportPlan, final: Path, progress: Progress | None = None, resume: bool = False,
             cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Carry out ``plan`` into the bundle directory ``final`` (see `export_bundle`)."""
    cache_limit = cache_max_bytes()  # a bad $SLIMVIT_CACHE_MAX_MB fails before any work
    cache = ArtifactCache(cache_dir or default_cache_dir(final), resume)
    failures: list[tuple[str, str, str]] = []
    out = stage_bundle(final)  # everything below writes here; `final` changes only at the end
    try:
        results = [export_subnet(plan, s, out, cache, failures, progress) for s in plan.subnets]
        manifest = write_bundle(plan, results, out)
        publish_bundle(out, final)
        prune_cache(cache.root, cache_limit)  # keep the shared cache under its size limit
    except BaseException:  # a failed or interrupted export leaves no staging directory behind
        shutil.rmtree(out, ignore_errors=True)
        raise
    if failures:
        raise IncompleteBundleError(failures, manifest)
    return manifest


def export_subnet(plan: ExportPlan, s: Subnet, out: Path, cache: ArtifactCache,
                  failures: list[tuple[str, str, str]], progress: Progress | None = None) -> VariantResult:
    """Every artifact of one variant: extracted once, exported and validated in each format,
    measured on the evaluation set, then each precision beyond fp32 made from it.

    A failing format raises, or with ``plan.keep_going`` is appended to ``failures``."""
    loaded, model = plan.loaded, plan.loaded.model.eval()
    module = extract_variant(model, s)
    reference = SubnetForward(model, s)
    ev = plan.eval_set
    real = None if ev is None else loaded.preprocess(ev.images, s.resolution).numpy()
    quant = None if plan.quantize is None else for_variant(
        plan.quantize, loaded.preprocess, s.resolution, reference, real,
        None if ev is None else ev.labels, "" if ev is None else ev.name)
    result = VariantResult(s)
    for fmt in plan.formats:
        if progress:
            progress(f"{s.id} {fmt.name}")
        try:
            art = export_variant(loaded, s, fmt, out, real, cache, module)
        except SlimvitError as e:
            if not plan.keep_going:
                raise
            failures.append((s.id, fmt.name, str(e)))
            continue
        if ev is not None and fmt.can_run:
            acc = evaluate_artifact(fmt, out / art.path, reference, real, ev.labels, ev.name)
            art = art.with_accuracy(acc.to_dict())
        result.artifacts.append(art)
        if quant is None:
            continue
        metadata = artifact_metadata(loaded, s, fmt.layout)
        qkey = cache.key(weights=loaded.weights_sha256, subnet=s, format=fmt.name, options=vars(fmt),
                         metadata=metadata, quant=quant.opts, calibration=quant.calibration,
                         eval=(quant.data.inputs, quant.data.labels, quant.data.name))
        done = cache.fetch_group(qkey, out)
        if done is None:
            done = quant.export(fmt, s.id, module, out / art.path, out, metadata)
            cache.store_group(qkey, out, *done)
        arts, skipped = done
        result.artifacts += arts
        result.excluded += skipped
    return result


__all__ = ["FORMATS", "ExportPlan", "IncompleteBundleError", "export_bundle", "export_subnet", "export_variant",
           "evaluate_artifact", "run_plan", "tool_version"]
