"""ExecuTorch: a `.pte` program made by `torch.export` and lowered to the XNNPACK delegate, run by
the ExecuTorch runtime (`executorch.runtime`). (Just over 400 lines: the XNNPACK and the Core ML
backend share the export, the runtime's stderr filter and the program readers.)

The staged pipeline is ExecuTorch's own: ``torch.export.export`` -> `to_edge_transform_and_lower`
with `XnnpackPartitioner` -> ``.to_executorch()``, with LayerNorm and a few copies rewritten so
a dense variant is one XNNPACK partition (`executorch_graph`). What XNNPACK does not take (the
token pruning's TopK/Gather and the head mean it ranks by) stays in portable kernels; the
delegation report (`exporter.convert.formats.delegation`) says which ops and what share of the MACs.

Metadata travels as constant methods, the way ExecuTorch programs carry values beside
``forward``: ``slimvit_metadata`` returns the JSON object of every ``slimvit.*`` key,
``slimvit_labels`` the labels one per line, ``slimvit_delegation`` the delegation report.

``ExecuTorchFormat(backend="coreml")`` lowers the whole graph to ExecuTorch's Core ML delegate
(`CoreMLPartitioner`, fp32 compute) instead. Such a program runs only where the ExecuTorch
runtime has `CoreMLBackend` (Apple builds; the Linux wheel has none), so elsewhere it is checked
structurally (`ExecuTorchCoreMLFormat.check`)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from exporter.convert.formats.base import ExportFormat, converter_error, quiet
from exporter.convert.formats.coreml import ane_fallbacks, program_info, weight_problems
from exporter.convert.formats.delegation import edge_delegation
from exporter.convert.formats.executorch_graph import for_xnnpack, xnnpack_friendly
from exporter.errors import ConfigError, ValidationError, check_choice
from exporter.measure.worker import RUNTIME_CHATTER, runtime_stderr  # noqa: F401  (re-exported)

METHOD_METADATA = "slimvit_metadata"
METHOD_LABELS = "slimvit_labels"
METHOD_DELEGATION = "slimvit_delegation"
BACKENDS = ("xnnpack", "coreml")
COREML_DELEGATE = "CoreMLBackend"  # the backend id a Core ML delegate call carries in a .pte
EXTRA_HINT = 'the executorch format needs the optional dependency: pip install "slimvit[executorch]"'


def require_executorch() -> None:
    """Raise a one-line `ConfigError` naming the extra when ExecuTorch is not installed."""
    if importlib.util.find_spec("executorch") is None:
        raise ConfigError(EXTRA_HINT)


class FP32Wrapper(nn.Module):
    """Runs a half-precision module behind float32 input and output, so an fp16 program takes
    and returns the same tensors as the fp32 one."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


class ExecuTorchFormat(ExportFormat):
    name: ClassVar[str] = "executorch"
    suffix: ClassVar[str] = ".pte"
    atol: ClassVar[float] = 1e-4
    deterministic: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("executorch",)
    # Each precision is its own torch.export + lowering, 13-38 CPU s for a demo variant (mostly
    # ExecuTorch's pass re-tracing; benchmarks/results/executorch.md): 4 precisions x 12
    # variants is 15-18 CPU minutes, fp32 alone about 3.
    demo_precisions: ClassVar[tuple[str, ...] | None] = ("fp32",)
    app_schema: ClassVar[bytes] = b"ET12"  # the .pte flatbuffer identifier ExecuTorch 1.x writes and loads
    cli_options: ClassVar[tuple[str, ...]] = ("--executorch-backend",)
    backend: str = "xnnpack"

    def __new__(cls, layout: str | None = None, backend: str = "xnnpack") -> ExecuTorchFormat:
        # backend="coreml" gives the subclass, whose class-level `can_run` is false off macOS.
        check_choice("ExecuTorch backend", backend, BACKENDS)
        if cls is ExecuTorchFormat and backend == "coreml":
            cls = ExecuTorchCoreMLFormat
        return super().__new__(cls)

    @classmethod
    def runtime_problems(cls, path: Path) -> list[str]:
        with open(path, "rb") as f:
            head = f.read(8)
        # The program flatbuffer's file identifier names its schema version.
        if len(head) < 8 or head[4:8] != cls.app_schema:
            return [f"not an ExecuTorch {cls.app_schema.decode()} program (identifier {head[4:8]!r})"]
        return []

    def __init__(self, layout: str | None = None, backend: str = "xnnpack") -> None:
        require_executorch()
        super().__init__(layout)
        self.backend = backend

    def export(self, module: nn.Module, example: np.ndarray, path: Path,
               metadata: Mapping[str, str]) -> None:
        try:
            program = export_program(module, example, xnnpack=self.backend == "xnnpack")
        except Exception as e:  # torch.export raises many types; name the op for the user
            raise converter_error(self.name, metadata, e) from e
        path.write_bytes(lower(program, metadata, backend=self.backend))

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        method = load_method(path, "forward")
        rows = [method.execute([torch.from_numpy(np.ascontiguousarray(inputs[i:i + 1]))])[0].numpy()
                for i in range(len(inputs))]
        return np.concatenate(rows)

    def read_metadata(self, path: Path) -> dict[str, str]:
        return read_metadata(path)

    def delegation(self, path: Path) -> dict[str, Any]:
        return read_delegation(path)

    def runtime_version(self) -> str:
        return f"executorch {importlib.metadata.version('executorch')} (XNNPACK)"


class ExecuTorchCoreMLFormat(ExecuTorchFormat):
    """The `.pte` lowered whole to the Core ML delegate (``ExecuTorchFormat(backend="coreml")``)."""

    can_run: ClassVar[bool] = sys.platform == "darwin"
    # ExecuTorch's Core ML preprocessor names each payload with a fresh uuid4 (and coremltools
    # writes random package item ids), so two exports differ in about a hundred bytes.
    deterministic: ClassVar[bool] = False
    demo_precisions: ClassVar[tuple[str, ...] | None] = ("fp32",)
    backend: str = "coreml"

    def runtime_version(self) -> str:
        return f"executorch {importlib.metadata.version('executorch')} (Core ML)"

    def check(self, path: Path, module: nn.Module, example: np.ndarray) -> list[str]:
        """Structural check without the runtime: the program has exactly one delegate, Core ML,
        and no kernel call outside it; its forward takes the example's shape and returns the
        module's output shape (float32); the Core ML model packaged in the delegate's payload
        (read with coremltools, `coreml.program_info`) has the same I/O, computes in fp32, keeps
        every weight of the module, and has no op the Core ML format's check rejects."""
        problems = coreml_delegate_problems(path, module, example)
        if problems:
            raise ValidationError(f"{path.name} (executorch, coreml) fails the program check: "
                                  + "; ".join(problems))
        return ["one CoreMLBackend delegate, no other calls", "inputs", "outputs", "fp32 compute",
                "op set", f"{len(module.state_dict())} weights"]


def coreml_delegate_problems(path: Path, module: nn.Module, example: np.ndarray) -> list[str]:
    """What is wrong with a Core ML-lowered `.pte` (empty when it passes), read from the file."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DataLocation, Tensor

    with torch.no_grad():
        out_shape = [int(d) for d in module(torch.from_numpy(example)).shape]
    in_shape = [int(d) for d in example.shape]
    try:
        program = deserialize_pte_binary(Path(path).read_bytes()).program
    except Exception as e:  # a damaged flatbuffer raises many types
        return [f"not a readable ExecuTorch program ({type(e).__name__})"]
    forward = next((p for p in program.execution_plan if p.name == "forward"), None)
    if forward is None:
        return ["no forward method"]
    problems = []
    ids = [d.id for d in forward.delegates]
    if ids != [COREML_DELEGATE]:
        problems.append(f"delegates {ids} != ['{COREML_DELEGATE}']")
    calls = program_operators(path)
    if calls != {"<delegate>": 1}:
        problems.append(f"calls outside one delegate: {calls}")

    def shapes(indices: list[int]) -> list[tuple[list[int], int]]:
        vals = [forward.values[i].val for i in indices]
        return [(list(v.sizes), int(v.scalar_type)) for v in vals if isinstance(v, Tensor)]

    float32 = 6  # ExecuTorch ScalarType.FLOAT
    if shapes(forward.inputs) != [(in_shape, float32)]:
        problems.append(f"program inputs {shapes(forward.inputs)} != [({in_shape}, float)]")
    if shapes(forward.outputs) != [(out_shape, float32)]:
        problems.append(f"program outputs {shapes(forward.outputs)} != [({out_shape}, float)]")
    if ids[:1] != [COREML_DELEGATE]:
        return problems
    ref = forward.delegates[0].processed
    if ref.location != DataLocation.INLINE or ref.index >= len(program.backend_delegate_data):
        return problems + ["the Core ML payload is not inline in the program"]
    specs = {c.key: bytes(c.value) for c in forward.delegates[0].compile_specs}
    if specs.get("model_compute_precision") != b"float32":
        problems.append(f"compute precision {specs.get('model_compute_precision')!r} != b'float32'")
    return problems + _payload_problems(program.backend_delegate_data[ref.index].data, module,
                                        in_shape, out_shape)


def _payload_problems(payload: bytes, module: nn.Module, in_shape: list[int],
                      out_shape: list[int]) -> list[str]:
    # The delegate payload is ExecuTorch's flattened directory holding `model.mlpackage`.
    from executorch.backends.apple.coreml import executorchcoreml

    with tempfile.TemporaryDirectory(prefix="slimvit-etcoreml-") as tmp:
        if not executorchcoreml.unflatten_directory_contents(bytes(payload), tmp):
            return ["the Core ML payload cannot be unpacked"]
        package = next(Path(tmp).rglob("*.mlpackage"), None)
        if package is None:
            return ["the Core ML payload holds no .mlpackage"]
        try:
            info = program_info(package)
        except Exception as e:  # coremltools raises many types for a damaged spec
            return [f"the Core ML model cannot be read ({type(e).__name__})"]
    problems = []
    if [v for v in info.inputs.values()] != [(in_shape, "fp32")]:
        problems.append(f"Core ML inputs {list(info.inputs.values())} != [({in_shape}, 'fp32')]")
    if [v for v in info.outputs.values()] != [(out_shape, "fp32")]:
        problems.append(f"Core ML outputs {list(info.outputs.values())} != [({out_shape}, 'fp32')]")
    if "fp16" in info.dtypes:
        problems.append("the Core ML model computes in fp16")
    problems += [f"op {op}: {why}" for op, why in ane_fallbacks(info)]
    return problems + weight_problems(info.consts, module, np.float32)


def export_program(module: nn.Module, example: np.ndarray, xnnpack: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` at the example's shape (batch 1), for XNNPACK with its
    LayerNorms written as ops XNNPACK takes (`exporter.convert.formats.executorch_graph`)."""
    with quiet(), torch.no_grad():
        prepared = for_xnnpack(module) if xnnpack else module
        return torch.export.export(prepared.eval(), (torch.from_numpy(example),))


def _partition(program: torch.export.ExportedProgram, backend: str) -> Any:  # -> EdgeProgramManager
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    # The IR verifier re-checks every op's dtypes after each pass (about a tenth of the lowering
    # time); the program is run (or checked) against PyTorch before it is kept anyway.
    config = EdgeCompileConfig(_check_ir_validity=False)
    if backend == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        specs = CoreMLBackend.generate_compile_specs(compute_precision=ct.precision.FLOAT32,
                                                     minimum_deployment_target=ct.target.iOS17)
        return to_edge_transform_and_lower(program, partitioner=[CoreMLPartitioner(compile_specs=specs)],
                                           compile_config=config)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return to_edge_transform_and_lower(program, transform_passes=[xnnpack_friendly],
                                       partitioner=[XnnpackPartitioner()], compile_config=config)


def lower(program: torch.export.ExportedProgram, metadata: Mapping[str, str],
          backend: str = "xnnpack") -> bytes:
    """Lower an exported program to ``backend`` (XNNPACK or Core ML) and serialize it with the
    slimvit constant methods.

    Raises:
        ExportError: the lowering fails (names the variant and, when the message shows it, the op).
    """
    from executorch.exir import EdgeProgramManager

    try:
        with quiet():
            edge = _partition(program, backend)
            lowered = edge.exported_program()
            report = edge_delegation(lowered, backend="XNNPACK" if backend == "xnnpack" else "CoreML")
            # The delegation report is only known after partitioning; the constant methods are
            # attached to a manager over the already-lowered program.
            methods = constant_methods(metadata, report)
            final = EdgeProgramManager({"forward": lowered}, constant_methods=methods,
                                       compile_config=edge.compile_config)
            return final.to_executorch().buffer
    except Exception as e:  # the lowering raises many types; name the op for the user
        raise converter_error(ExecuTorchFormat.name, metadata, e) from e


def constant_methods(metadata: Mapping[str, str], report: Mapping[str, Any]) -> dict[str, str]:
    labels = json.loads(metadata["slimvit.labels"]) if "slimvit.labels" in metadata else []
    return {METHOD_METADATA: json.dumps(dict(sorted(metadata.items()))),
            METHOD_LABELS: "\n".join(labels),
            METHOD_DELEGATION: json.dumps(report, sort_keys=True)}


def set_threads(threads: int) -> None:
    """Size the runtime's (process-wide) XNNPACK thread pool."""
    from executorch.extension.pybindings import portable_lib

    with runtime_stderr():  # the pool's first use probes the CPU (cpuinfo lines)
        if portable_lib._threadpool_get_thread_count() != threads:
            with quiet():  # it logs the reset from C++
                portable_lib._unsafe_reset_threadpool(threads)


def load_program(path: Path) -> Any:  # -> executorch.runtime.Program
    """Load a `.pte` with the ExecuTorch runtime (its C++ start-up chatter silenced)."""
    with _runtime_quiet():
        from executorch.runtime import Runtime

        return Runtime.get().load_program(Path(path))


def load_method(path: Path, name: str) -> Any:  # -> executorch.runtime.Method
    """Load one method of a `.pte`. The runtime's cpuinfo probing lines are dropped; anything
    else it logs (e.g. why XNNPACK refused a node) still reaches stderr, and a failed load
    quotes it, since the exception alone says only "error: 0x:1".

    Raises:
        RuntimeError: the runtime cannot load the method.
    """
    with runtime_stderr() as log:
        try:
            return load_program(path).load_method(name)
        except RuntimeError as e:
            failure = e
    detail = "; ".join(line.strip() for line in log if line.strip())
    raise RuntimeError(f"{failure}{f' ({detail})' if detail else ''}") from failure


def _constant(path: Path, method: str) -> str:
    program = load_program(path)
    if method not in program.method_names:
        raise ValidationError(f"{path} has no '{method}' method; was it exported by slimvit?")
    return load_method(path, method).execute([])[0]


def read_metadata(path: Path) -> dict[str, str]:
    """The slimvit metadata a `.pte` carries (its ``slimvit_metadata`` method)."""
    return json.loads(_constant(path, METHOD_METADATA))


def read_labels(path: Path) -> list[str]:
    text = _constant(path, METHOD_LABELS)
    return text.split("\n") if text else []


def read_delegation(path: Path) -> dict[str, Any]:
    """The delegation report stored in a `.pte` when it was lowered."""
    return json.loads(_constant(path, METHOD_DELEGATION))


def program_operators(path: Path) -> dict[str, int]:
    """Kernel calls outside any delegate in the `.pte`'s execution plan, by operator name, and
    ``"<delegate>"`` for each delegate call: read from the file, not from the lowering."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    plan = deserialize_pte_binary(Path(path).read_bytes()).program.execution_plan
    forward = next(p for p in plan if p.name == "forward")
    counts: dict[str, int] = {}
    for chain in forward.chains:
        for ins in chain.instructions:
            args = ins.instr_args
            if isinstance(args, KernelCall):
                op = forward.operators[args.op_index]
                name = op.name + (f".{op.overload}" if op.overload else "")
            elif isinstance(args, DelegateCall):
                name = "<delegate>"
            else:
                continue
            counts[name] = counts.get(name, 0) + 1
    return counts


@contextlib.contextmanager
def _runtime_quiet() -> Iterator[None]:
    # The runtime logs cpuinfo probing to the process's stderr on first use.
    with quiet():
        yield
