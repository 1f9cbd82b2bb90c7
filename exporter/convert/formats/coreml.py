"""Core ML: an ML Program `.mlpackage` converted by coremltools from a `torch.export` program.

coremltools runs models only on macOS. Elsewhere `check` validates the saved package without
running it: inputs/outputs and their shapes, the compute precision of every tensor, the op set
(no op known to push the Neural Engine off the graph) and every weight, value for value."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from exporter.convert.formats.base import ExportFormat, converter_error, in_range, quiet
from exporter.errors import ValidationError, check_choice
from exporter.fileio import sha256_path
from exporter.gate.files import dumps_strict

INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
PRECISIONS = {"fp32": "FLOAT32", "fp16": "FLOAT16"}  # artifact precision -> ct.precision

# Ops that make Core ML leave the Neural Engine for the CPU/GPU. Sources: Apple's ANE transformer
# notes and hollance/neural-engine "unsupported layers"; see docs/bundle-format.md.
ANE_FALLBACK_OPS = {
    "while_loop": "control flow", "cond": "control flow",
    "non_zero": "data-dependent output shape", "non_maximum_suppression": "data-dependent output shape",
    "shape": "dynamic shape arithmetic", "range_1d": "dynamic shape arithmetic",
    "scatter": "scatter family", "scatter_nd": "scatter family", "scatter_along_axis": "scatter family",
    "reduce_prod": "no ANE kernel", "lstm": "recurrent layer", "gru": "recurrent layer", "rnn": "recurrent layer",
    "random_bernoulli": "random op", "random_categorical": "random op", "random_normal": "random op",
    "random_uniform": "random op", "custom": "custom layer",
}
# Ops reported but allowed: on the ANE or not depends on the chip; only a macOS compute plan tells.
ANE_UNVERIFIED_OPS = {"topk": "token pruning", "gather_along_axis": "token pruning",
                      "gather": "token pruning", "gather_nd": "token pruning"}
ANE_MAX_RANK, ANE_MAX_DIM = 4, 16384
CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"  # dropped: bytes would change daily


class CoreMLFormat(ExportFormat):
    name: ClassVar[str] = "coreml"
    suffix: ClassVar[str] = ".mlpackage"
    directory: ClassVar[bool] = True
    cli_options: ClassVar[tuple[str, ...]] = ("--coreml-target",)
    atol: ClassVar[float] = 1e-4
    deterministic: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("coremltools",)
    can_run: ClassVar[bool] = sys.platform == "darwin"
    app_spec_versions: ClassVar[tuple[int, int]] = (7, 9)  # iOS 16 .. iOS 18

    @classmethod
    def runtime_problems(cls, path: Path) -> list[str]:
        spec = next(iter(path.rglob("*.mlmodel")), None) if path.is_dir() else path
        if spec is None:
            return ["Core ML package holds no .mlmodel spec"]
        with open(spec, "rb") as f:
            head = f.read(16)
        # Model.specificationVersion is protobuf field 1, a varint, written first.
        if not head or head[0] != 0x08:
            return ["Core ML spec does not start with specificationVersion"]
        version, shift = 0, 0
        for b in head[1:]:
            version |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return in_range("Core ML specificationVersion", version, cls.app_spec_versions)

    def __init__(self, layout: str | None = None, deployment_target: str = "iOS17",
                 compute: str = "fp32") -> None:
        """``compute`` is the program's compute precision (``fp16`` for the fp16 precision)."""
        super().__init__(layout)
        self.deployment_target = check_choice("Core ML deployment target", deployment_target, TARGETS)
        self.compute = check_choice("Core ML compute precision", compute, PRECISIONS)

    def export(self, module: nn.Module, example: np.ndarray, path: Path,
               metadata: Mapping[str, str]) -> None:
        with quiet():  # its import warns about untested torch/scikit-learn versions
            import coremltools as ct

        x = torch.from_numpy(example)
        try:
            with quiet():
                program = torch.export.export(module, (x,)).run_decompositions({})
                mlmodel = ct.convert(
                    program, convert_to="mlprogram",
                    inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(x.shape), dtype=np.float32)],
                    outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                    compute_precision=getattr(ct.precision, PRECISIONS[self.compute]),
                    minimum_deployment_target=getattr(ct.target, self.deployment_target),
                )
        except Exception as e:  # the converter raises many types; name the op for the user
            raise converter_error(self.name, metadata, e) from e
        describe(mlmodel, metadata, x.shape)
        save_package(mlmodel, path)

    def read_metadata(self, path: Path) -> dict[str, str]:
        return program_info(path).metadata

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        import coremltools as ct

        model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        return np.concatenate([model.predict({INPUT_NAME: inputs[i:i + 1]})[OUTPUT_NAME]
                               for i in range(len(inputs))])

    def runtime_version(self) -> str:
        import coremltools as ct

        return f"coremltools {ct.__version__}"

    def check(self, path: Path, module: nn.Module, example: np.ndarray) -> list[str]:
        info = program_info(path)
        problems = []
        want_in = [int(d) for d in example.shape]
        if info.inputs != {INPUT_NAME: (want_in, "fp32")}:
            problems.append(f"inputs {info.inputs} != {{'{INPUT_NAME}': ({want_in}, 'fp32')}}")
        with torch.no_grad():
            out_shape = list(module(torch.from_numpy(example)).shape)
        if info.outputs != {OUTPUT_NAME: (out_shape, "fp32")}:
            problems.append(f"outputs {info.outputs} != {{'{OUTPUT_NAME}': ({out_shape}, 'fp32')}}")
        precision = info.metadata.get("slimvit.precision", "fp32")
        if precision == "fp32" and "fp16" in info.dtypes:
            problems.append("an fp32 artifact computes in fp16")
        problems += [f"op {op}: {why}" for op, why in ane_fallbacks(info)]
        problems += weight_problems(info.consts, module, np.float16 if precision == "fp16" else np.float32)
        if problems:
            raise ValidationError(f"{path.name} (coreml) fails the program check: " + "; ".join(problems))
        return ["inputs", "outputs", f"{precision} compute", "op set", f"{len(module.state_dict())} weights"]


def save_package(mlmodel: Any, path: Path) -> None:
    """Save an `.mlpackage` whose bytes depend only on its content (docs/determinism.md).

    coremltools writes three things that change from run to run: protobuf maps (metadata,
    attributes) in hash order, which differs between processes; its ``conversion_date``
    metadata; and fresh random UUIDs naming the package's items in `Manifest.json`. The spec is
    written again with sorted maps and without the date, and each item id is replaced by a
    name-based UUID of the item's path and content digest (ids only have to be unique within
    the package).
    """
    import uuid

    from coremltools.proto import Model_pb2

    with quiet():
        mlmodel.save(str(path))
    strip_debug_files(Path(path))
    spec_file = Path(path) / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    spec.description.metadata.userDefined.pop(CONVERSION_DATE, None)
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))
    manifest = Path(path) / "Manifest.json"
    doc = json.loads(manifest.read_text())
    ids = {}
    for old, item in doc["itemInfoEntries"].items():
        data = Path(path) / "Data" / item["path"]
        digest = sha256_path(data)
        ids[old] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"slimvit:{item['path']}:{digest}")).upper()
    doc["itemInfoEntries"] = {ids[k]: v for k, v in doc["itemInfoEntries"].items()}
    doc["rootModelIdentifier"] = ids[doc["rootModelIdentifier"]]
    manifest.write_text(dumps_strict(doc, indent=4, sort_keys=True) + "\n")


# A package is `Manifest.json` plus `Data/`; anything else at its root is converter debris, e.g.
# coremltools' `executorch_debug_handle_mapping.json` (op -> torch.export debug handle, ~40 KB
# per package, no use to an app). Apps never read it.
PACKAGE_ROOT = ("Manifest.json", "Data")


def strip_debug_files(package: Path) -> list[str]:
    """Remove every entry at the package root that is not part of the package format."""
    import shutil

    removed = []
    for entry in sorted(package.iterdir()):
        if entry.name not in PACKAGE_ROOT:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry.name)
    return removed


@dataclass(frozen=True)
class ProgramInfo:
    """What the saved ML Program says about itself, read without running it."""

    inputs: dict[str, tuple[list[int], str]]
    outputs: dict[str, tuple[list[int], str]]
    ops: dict[str, int]  # MIL op type -> count, consts left out
    dtypes: set[str]  # every op output's type, e.g. {"fp32", "int32", "bool"}
    max_rank: int
    max_dim: int
    consts: dict[str, np.ndarray]  # const name -> value (weights included)
    metadata: dict[str, str]
    short_description: str
    version: str
    spec_version: int


def program_info(path: Path) -> ProgramInfo:
    """Read a saved `.mlpackage`: I/O, ops, types, weights and metadata (works off macOS)."""
    with quiet():  # importing coremltools off macOS logs that its runtime is missing
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as load_milproto
        from coremltools.converters.mil.mil import types

        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        program = load_milproto(spec, spec.specificationVersion, model.weights_dir)
    main = program.functions["main"]
    ops: dict[str, int] = {}
    consts: dict[str, np.ndarray] = {}
    dtypes, ranks, dims = set(), [0], [0]
    for op in main.operations:
        if op.op_type == "const":
            consts[op.outputs[0].name] = np.asarray(op.outputs[0].val)
            continue
        ops[op.op_type] = ops.get(op.op_type, 0) + 1
        for v in op.outputs:
            if types.is_tensor(v.sym_type):
                dtypes.add(types.builtin_to_string(v.dtype))
                ranks.append(len(v.shape))
                dims += [int(d) for d in v.shape if isinstance(d, (int, np.integer))]

    def io(vars_: Any) -> dict[str, tuple[list[int], str]]:
        return {v.name: ([int(d) for d in v.shape], types.builtin_to_string(v.dtype)) for v in vars_}

    meta = spec.description.metadata
    return ProgramInfo(io(main.inputs.values()), io(main.outputs), ops, dtypes, max(ranks), max(dims),
                       consts, dict(meta.userDefined), meta.shortDescription, meta.versionString,
                       spec.specificationVersion)


def ane_fallbacks(info: ProgramInfo) -> list[tuple[str, str]]:
    """(op, reason) for every rule of docs/bundle-format.md the program breaks."""
    found = [(op, ANE_FALLBACK_OPS[op]) for op in sorted(info.ops) if op in ANE_FALLBACK_OPS]
    found += [("dtype " + t, "64-bit types do not run on the Neural Engine")
              for t in sorted(info.dtypes & {"int64", "fp64"})]
    if info.max_rank > ANE_MAX_RANK:
        found.append((f"rank {info.max_rank}", f"tensors of rank > {ANE_MAX_RANK}"))
    if info.max_dim > ANE_MAX_DIM:
        found.append((f"dim {info.max_dim}", f"a dimension > {ANE_MAX_DIM}"))
    return found


def ane_unverified(info: ProgramInfo) -> dict[str, int]:
    """Ops allowed but whose Neural Engine placement depends on the chip (top-k pruning)."""
    return {op: n for op, n in info.ops.items() if op in ANE_UNVERIFIED_OPS}


def describe(mlmodel: Any, metadata: Mapping[str, str], shape: torch.Size) -> None:
    """Core ML's own metadata fields, as Xcode shows them, plus every slimvit key."""
    variant = metadata.get("slimvit.variant_id", "")
    labels = json.loads(metadata.get("slimvit.labels", "[]"))
    mlmodel.short_description = f"slimvit variant {variant} of {metadata.get('slimvit.model', 'a ViT')}"
    mlmodel.version = metadata.get("slimvit.manifest_schema", "")
    mlmodel.author = "slimvit"
    for key, value in sorted(metadata.items()):
        mlmodel.user_defined_metadata[key] = value
    mean, std = metadata.get("slimvit.mean", "?"), metadata.get("slimvit.std", "?")
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image {tuple(shape)} NCHW float32, normalized: (pixel in [0, 1] - mean {mean}) / std {std}")
    mlmodel.output_description[OUTPUT_NAME] = f"logits over {len(labels)} classes (labels in metadata)"


def weight_problems(consts: Mapping[str, np.ndarray], module: nn.Module, dtype: type) -> list[str]:
    """Every parameter of ``module`` must be in the program, bit for bit (found by name, else by value)."""
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for value in consts.values():
        by_shape.setdefault(value.shape, []).append(value)
    problems = []
    for name, tensor in module.state_dict().items():
        want = tensor.detach().numpy().astype(dtype)
        got = consts.get("p_" + name.replace(".", "_"))
        if got is not None and got.shape == want.shape and np.array_equal(got, want):
            continue
        if not any(np.array_equal(c, want) for c in by_shape.get(want.shape, [])):
            problems.append(f"weight {name} {tuple(want.shape)} missing or changed")
    return problems
