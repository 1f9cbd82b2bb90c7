"""The export pipeline: slimmable model -> every variant -> validated artifacts -> manifest."""

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
from exporter.checkpoints import LoadedModel
from exporter.convert.cache import ArtifactCache, default_cache_dir, publish_bundle, stage_bundle
from exporter.convert.cache_admin import max_bytes as cache_max_bytes
from exporter.convert.cache_admin import prune as prune_cache
from exporter.convert.formats import DIRECTORY_SUFFIXES, FORMATS, ExportFormat, get_format
from exporter.convert.formats.onnx import INPUT_NAME, OUTPUT_NAME
from exporter.convert.quantize import QuantizeOptions, for_variant
from exporter.convert.validate import check_artifact, validate_artifact
from exporter.errors import ConfigError, SlimvitError
from exporter.fileio import atomic_dir, atomic_path, sha256_file, sha256_tree, tree_bytes
from exporter.gate.files import dumps_strict
from exporter.gate.outputs import check_out_dir
from exporter.manifest import SCHEMA_VERSION, tool_version, write_manifest
from exporter.nn.config import Subnet, VariantGrid
from exporter.nn.cost import mac_count, param_count
from exporter.nn.extract import SubnetForward, extract_variant, static_spec
from exporter.policy.spec import user_policy
from exporter.policy.store import attach_policy

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


def variant_entry(loaded: LoadedModel, s: Subnet) -> dict[str, Any]:
    spec = static_spec(loaded.model, s)
    cfg = loaded.model.cfg
    entry = {
        "id": s.id, "width": round(s.width, 6), "embed_dim": s.embed_dim, "num_heads": s.num_heads,
        "head_dim": s.head_dim, "mlp_hidden": s.mlp_hidden, "depth": cfg.depth,
        "keep_rate": s.keep_rate, "resolution": s.resolution, "channels": s.channels,
        "input_shape": [1, cfg.in_chans, s.resolution, s.resolution], "tokens": list(s.tokens),
        "params": param_count(spec), "macs": mac_count(spec), "artifacts": [],
    }
    if getattr(loaded.model, "structure", None) is not None:  # ViT-Slim: sizes differ per layer
        entry["structure"] = loaded.model.structure.describe()
    return entry


def artifact_metadata(loaded: LoadedModel, s: Subnet, layout: str = "NCHW") -> dict[str, str]:

    pre = loaded.preprocess
    return {
        "slimvit.variant_id": s.id, "slimvit.manifest_schema": SCHEMA_VERSION,
        "slimvit.labels": dumps_strict(loaded.labels), "slimvit.mean": dumps_strict(list(pre.mean)),
        "slimvit.std": dumps_strict(list(pre.std)), "slimvit.layout": layout,
        "slimvit.model": loaded.name, "slimvit.version": tool_version(),
    }


def export_variant(loaded: LoadedModel, s: Subnet, fmt: ExportFormat, out: Path,
                   real_inputs: np.ndarray | None, cache: ArtifactCache | None = None) -> dict[str, Any]:
    """Export, validate and place one artifact; returns its manifest entry.

    The file appears at its final path only after validation passed. With a ``cache``, the
    finished artifact is stored in it, and taken from it instead when it resumes an export.
    """
    module = extract_variant(loaded.model, s)
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
    is_dir = fmt.suffix in DIRECTORY_SUFFIXES
    with (atomic_dir if is_dir else atomic_path)(target) as tmp:
        fmt.export(module, example, tmp, metadata)
        if fmt.can_run:
            # Compare against the slimmable model itself, not only the extracted module.
            reference = SubnetForward(loaded.model, s)
            report = validate_artifact(fmt, tmp, reference, np.concatenate(checks), what=s.id)
        else:
            report = check_artifact(fmt, tmp, module, example, host=platform.system())
    entry = {"format": fmt.name, "precision": "fp32", "path": rel.as_posix(),
             "sha256": sha256_tree(target) if is_dir else sha256_file(target),
             "bytes": tree_bytes(target), "validation": report.to_dict()}
    if (delegation := fmt.delegation(target)) is not None:
        entry["delegation"] = delegation
    if cache is not None:
        cache.store(key, target, entry)
    return entry


class IncompleteBundleError(SlimvitError):
    """With ``keep_going``: some artifacts failed; the bundle holds the rest (``manifest``)."""

    def __init__(self, failures: list[tuple[str, str, str]], manifest: dict[str, Any]) -> None:
        self.failures, self.manifest = failures, manifest
        listed = "; ".join(f"{v} {f}: {why}" for v, f, why in failures)
        super().__init__(f"{len(failures)} artifact(s) failed and are not in the bundle: {listed}")


def export_bundle(loaded: LoadedModel, grid: VariantGrid, out: str | Path,
                  formats: Sequence[str] = ("onnx",), eval_set: ImageSet | None = None,
                  progress: Progress | None = None, bundle_version: int = 1,
                  quantize: QuantizeOptions | None = None,
                  policy: str | Path | dict[str, Any] | None = None, nhwc: bool = False,
                  keep_going: bool = False,
                  format_options: dict[str, dict[str, Any]] | None = None,
                  resume: bool = False, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Export every variant of ``grid`` in every format into the bundle directory ``out``.

    Crash-safe (docs/determinism.md): the bundle is written into a staging directory beside
    ``out`` and swapped in whole when its manifest is written; killed before that, the
    previous bundle at ``out`` is untouched.

    Args:
        loaded: the slimmable model and its labels/preprocessing.
        grid: the variants to export.
        out: bundle directory (created; existing artifacts of the same names are replaced).
        formats: registered format names.
        eval_set: held-out images (in [0, 1]) for accuracy; also used in validation.
        progress: called with a short description before each artifact.
        bundle_version: the manifest's monotonically increasing bundle version.
        quantize: precisions beyond fp32 and their calibration (see `exporter.convert.quantize`);
            a precision over its accuracy budget is left out and listed under ``calibration``.
        policy: a policy file or dict merged over the default switching policy
            (docs/policy.md); its conformance vectors go into the bundle too.
        nhwc: export formats that offer it (tflite) with an NHWC input (``input.layouts``).
        keep_going: an artifact that fails to convert or validate is left out and the rest
            still complete; `IncompleteBundleError` lists the failures after the manifest is written.
        format_options: per-format constructor options, e.g. ``{"coreml": {"deployment_target": "iOS16"}}``.
        resume: take artifacts a killed (or earlier) export finished from the artifact cache
            instead of exporting them again.
        cache_dir: the artifact cache (default ``$SLIMVIT_CACHE_DIR`` or ``.NAME.slimvit-cache``
            beside ``out``); every finished artifact is stored there.

    Returns:
        The manifest written to ``out/manifest.json``.

    Raises:
        ConfigError: an unknown format or a variant that does not fit the model.
        ValidationError: an artifact does not match PyTorch (nothing of it is left behind).
        ExportError: a converter cannot handle a variant (names the variant and the op).
        IncompleteBundleError: with ``keep_going``, after writing the bundle without the failures.
    """
    final = check_out_dir(out, "bundle")  # before any work: never "", "/", a file, inside a bundle
    fmts = [get_format(f, **_format_options(f, nhwc, format_options)) for f in dict.fromkeys(formats)]
    policy = user_policy(policy)  # a bad policy file fails before any export work
    subnets = loaded.model.subnets(grid)
    if eval_set is not None and len(eval_set.class_names) not in (0, loaded.model.cfg.num_classes):
        raise ConfigError(f"evaluation set has {len(eval_set.class_names)} classes but the model "
                          f"has {loaded.model.cfg.num_classes}")
    model = loaded.model.eval()
    if quantize is not None:
        quantize.check([f.name for f in fmts])
    variants, excluded, failures = [], [], []
    cache_limit = cache_max_bytes()  # a bad $SLIMVIT_CACHE_MAX_MB fails before any work
    cache = ArtifactCache(cache_dir or default_cache_dir(final), resume)
    out = stage_bundle(final)  # everything below writes here; `final` changes only at the end
    try:
        for s in subnets:
            entry = variant_entry(loaded, s)
            real = None
            if eval_set is not None:
                real = loaded.preprocess(eval_set.images, s.resolution).numpy()
            quant = None if quantize is None else for_variant(
                quantize, loaded.preprocess, s.resolution, SubnetForward(model, s), real,
                None if eval_set is None else eval_set.labels, "" if eval_set is None else eval_set.name)
            for fmt in fmts:
                if progress:
                    progress(f"{s.id} {fmt.name}")
                try:
                    art = export_variant(loaded, s, fmt, out, real, cache)
                except SlimvitError as e:
                    if not keep_going:
                        raise
                    failures.append((s.id, fmt.name, str(e)))
                    continue
                if eval_set is not None and fmt.can_run:
                    acc = evaluate_artifact(fmt, out / art["path"], SubnetForward(model, s), real,
                                            eval_set.labels, eval_set.name)
                    art["accuracy"] = acc.to_dict()
                entry["artifacts"].append(art)
                if quant is not None:
                    qkey = cache.key(weights=loaded.weights_sha256, subnet=s, format=fmt.name, options=vars(fmt),
                                     metadata=artifact_metadata(loaded, s, fmt.layout), quant=quant.opts,
                                     calibration=quant.calibration,
                                     eval=(quant.data.inputs, quant.data.labels, quant.data.name))
                    done = cache.fetch_group(qkey, out)
                    if done is None:
                        done = quant.export(fmt, s.id, extract_variant(model, s), out / art["path"],
                                            out, artifact_metadata(loaded, s, fmt.layout))
                        cache.store_group(qkey, out, *done)
                    arts, skipped = done
                    entry["artifacts"] += arts
                    excluded += skipped
            variants.append(entry)
        cfg = model.cfg
        top = max(s.resolution for s in subnets)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "bundle_version": bundle_version,
            "created_by": {"tool": "slimvit", "version": tool_version(),
                           "runtimes": {f.name: f.runtime_version() for f in fmts} | {"torch": torch.__version__}},
            "model": {"name": loaded.name, "source_format": loaded.source_format,
                      "config": cfg.to_dict(), "weights_sha256": loaded.weights_sha256},
            "input": {"name": INPUT_NAME, "shape": [1, cfg.in_chans, top, top], "layout": "NCHW",
                      "layouts": {f.name: f.layout for f in fmts}, "dtype": "float32", "color": "RGB",
                      **loaded.preprocess.describe()},
            "output": {"name": OUTPUT_NAME, "shape": [1, cfg.num_classes], "kind": "logits"},
            "labels": list(loaded.labels),
            "variants": variants,
        }
        if quantize is not None:
            manifest["calibration"] = quantize.describe(excluded)
        attach_policy(manifest, out, policy)
        write_manifest(out, manifest)
        publish_bundle(out, final)
        prune_cache(cache.root, cache_limit)  # keep the shared cache under its size limit
    except BaseException:  # a failed or interrupted export leaves no staging directory behind
        shutil.rmtree(out, ignore_errors=True)
        raise
    if failures:
        raise IncompleteBundleError(failures, manifest)
    return manifest


def _format_options(name: str, nhwc: bool, options: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    opts = dict((options or {}).get(name, {}))
    if nhwc and name in FORMATS and "NHWC" in FORMATS[name].layouts:
        opts.setdefault("layout", "NHWC")
    return opts


__all__ = ["FORMATS", "IncompleteBundleError", "export_bundle", "export_variant", "evaluate_artifact", "tool_version"]
