"""Core ML precisions with `coremltools.optimize.coreml`, from the validated FP32 `.mlpackage`
(fp16 is converted again from the static module with ``compute_precision=FLOAT16``):
fp16, int8-weights (per-channel symmetric int8 weights), palettized (6-bit k-means weight
palettes) and int8 (W8A8: weights plus activations from calibration data, see `coreml_w8a8`).

Core ML predicts only on macOS, so accuracy is measured on the same quantization simulated in
PyTorch: the artifact's own compressed weights, decompressed by coremltools
(`decompress_weights`), are loaded into the variant's PyTorch module; fp16 runs the module in
float16; int8 runs the calibrated module the artifact was converted from.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from exporter.convert.formats.base import quiet
from exporter.convert.formats.coreml import INPUT_NAME, OUTPUT_NAME, CoreMLFormat, describe, program_info, save_package
from exporter.convert.quantize import coreml_w8a8 as w8a8
from exporter.convert.quantize.coreml_w8a8 import calibrated_module
from exporter.convert.quantize.registry import Precision, QuantJob, register

PALETTE_BITS = 6  # Apple's guidance: 6-bit palettes keep accuracy close to fp16 for most models
_SUFFIXES = ("_quantized", "_palettized", "_to_fp16")


def _mlmodel(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)


def _save(model, job: QuantJob, precision: str) -> None:
    model.user_defined_metadata["slimvit.precision"] = precision
    save_package(model, job.out)


def _compress(job: QuantJob, op_config, precision: str) -> None:
    import coremltools.optimize as cto

    with quiet():
        config = cto.coreml.OptimizationConfig(global_config=op_config)
        if precision == "palettized":
            model = cto.coreml.palettize_weights(_mlmodel(job.fp32_path), config)
        else:
            model = cto.coreml.linear_quantize_weights(_mlmodel(job.fp32_path), config)
        _save(model, job, precision)


def quantize_int8_weights(job: QuantJob) -> None:
    import coremltools.optimize as cto

    _compress(job, cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                      granularity="per_channel"), "int8-weights")


def quantize_palettized(job: QuantJob) -> None:
    import coremltools.optimize as cto

    _compress(job, cto.coreml.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS), "palettized")


def _converter(job: QuantJob, compute: str = "fp32") -> CoreMLFormat:
    """A Core ML format with the bundle's settings (deployment target, layout) and ``compute``."""
    made = job.converter if isinstance(job.converter, CoreMLFormat) else CoreMLFormat(job.layout)
    return CoreMLFormat(made.layout, made.deployment_target, compute)


def quantize_fp16(job: QuantJob) -> None:
    _converter(job, "fp16").export(job.module, job.example, job.out,
                                   {**job.metadata, "slimvit.precision": "fp16"})


# Calibrated modules by artifact path: the simulation of an int8 artifact is the module it was
# converted from (rebuilt, deterministically, when the artifact was made by another process).
_CALIBRATED: dict[str, torch.nn.Module] = {}


def _calibrated(job: QuantJob) -> torch.nn.Module:
    if job.calibration is None:
        raise ValueError("W8A8 int8 needs calibration inputs")
    key = str(job.out)
    if key not in _CALIBRATED:
        _CALIBRATED.clear()  # one variant at a time: do not hold every variant's module
        with quiet():
            _CALIBRATED[key] = calibrated_module(job.module, job.example, job.calibration,
                                                 job.float_ops)
    return _CALIBRATED[key]


def quantize_int8(job: QuantJob) -> None:
    target = w8a8.target_for(_converter(job).deployment_target)
    calibrated = _calibrated(job)
    with quiet():
        mlmodel = w8a8.convert(calibrated, job.example, INPUT_NAME, OUTPUT_NAME, target)
        describe(mlmodel, {**job.metadata, "slimvit.precision": "int8"}, job.example.shape)
    save_package(mlmodel, job.out)
    info = program_info(job.out)
    problems = w8a8.check_program(info.consts, info.ops, w8a8.activation_scales(calibrated),
                                  w8a8.quantized_weights(calibrated))
    if problems:
        raise RuntimeError(f"the W8A8 program differs from its calibrated module: {'; '.join(problems)}")


def simulate_int8(job: QuantJob, inputs: np.ndarray) -> np.ndarray:
    calibrated = _calibrated(job)
    with torch.no_grad():
        return np.concatenate([calibrated(torch.from_numpy(inputs[i:i + 64])).numpy()
                               for i in range(0, len(inputs), 64)])


def artifact_weights(path: Path) -> dict[str, np.ndarray]:
    """The weights of a (compressed) `.mlpackage`, decompressed to float, by const name."""
    import coremltools.optimize as cto

    with quiet(), tempfile.TemporaryDirectory() as work:
        dense = cto.coreml.decompress_weights(_mlmodel(path))
        dense.save(str(Path(work) / "dense.mlpackage"))
        consts = program_info(Path(work) / "dense.mlpackage").consts
    out = {}
    for name, value in consts.items():
        for suffix in _SUFFIXES:
            name = name.removesuffix(suffix)
        out[name] = value
    return out


def module_with_artifact_weights(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """A copy of ``module`` holding the artifact's decompressed weights (every one must be found)."""
    consts = artifact_weights(path)
    state, missing = {}, []
    for name, tensor in module.state_dict().items():
        value = consts.get("p_" + name.replace(".", "_"))
        if value is None or value.shape != tuple(tensor.shape):
            missing.append(name)
            continue
        state[name] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if missing:
        raise RuntimeError(f"weights not found in {path.name}: {', '.join(missing[:5])}")
    sim = copy.deepcopy(module).eval()
    sim.load_state_dict(state)
    return sim


def simulate_weights(job: QuantJob, inputs: np.ndarray) -> np.ndarray:
    sim = module_with_artifact_weights(job.module, job.out)
    with torch.no_grad():
        return sim(torch.from_numpy(inputs)).numpy()


def simulate_fp16(job: QuantJob, inputs: np.ndarray) -> np.ndarray:
    sim = module_with_artifact_weights(job.module, job.out).half()
    with torch.no_grad():
        return sim(torch.from_numpy(inputs).half()).float().numpy()


_WEIGHTS = ("PyTorch with the artifact's weights decompressed by coremltools "
            "(Core ML does not run off macOS)")
FP16 = register(Precision("fp16", "coreml", "ML Program with float16 weights and compute",
                          calibrated=False, min_agreement=0.97, quantize=quantize_fp16,
                          simulate=simulate_fp16, simulation=f"float16 {_WEIGHTS}"))
INT8_WEIGHTS = register(Precision("int8-weights", "coreml", "per-channel symmetric int8 weights "
                                  "(linear_quantize_weights), float activations", calibrated=False,
                                  min_agreement=0.8, quantize=quantize_int8_weights,
                                  simulate=simulate_weights, simulation=_WEIGHTS))
PALETTIZED = register(Precision("palettized", "coreml", f"{PALETTE_BITS}-bit k-means weight palettes "
                                "(palettize_weights), float activations", calibrated=False,
                                min_agreement=0.8, quantize=quantize_palettized,
                                simulate=simulate_weights, simulation=_WEIGHTS))
INT8 = register(Precision("int8", "coreml", "W8A8: affine uint8 activations calibrated with min/max "
                          "observers (coremltools.optimize.torch LinearQuantizer) and per-channel "
                          "affine int8 weights; iOS17+", calibrated=True, min_agreement=0.8,
                          quantize=quantize_int8, simulate=simulate_int8,
                          simulation="PyTorch running the calibrated module the artifact was "
                          "converted from, in float32 (same activation scales and int8 weights, "
                          "checked; Core ML does not run off macOS)"))
