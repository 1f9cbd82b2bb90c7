"""ExecuTorch: a `.pte` program made by `torch.export` and lowered to the XNNPACK delegate, run by
the ExecuTorch runtime (`executorch.runtime`).

The staged pipeline is ExecuTorch's own: ``torch.export.export`` -> `to_edge_transform_and_lower`
with `XnnpackPartitioner` -> ``.to_executorch()``. What XNNPACK does not take (LayerNorm, the
token pruning's TopK/Gather, layout copies) stays in ExecuTorch's portable kernels; the
delegation report (`exporter.convert.formats.delegation`) says which ops and what share of the MACs.

Metadata travels as constant methods, the way ExecuTorch programs carry values beside
``forward``: ``slimvit_metadata`` returns the JSON object of every ``slimvit.*`` key,
``slimvit_labels`` the labels one per line, ``slimvit_delegation`` the delegation report."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from exporter.convert.formats.base import ExportFormat, converter_error, quiet
from exporter.convert.formats.delegation import edge_delegation
from exporter.errors import ConfigError, ValidationError

METHOD_METADATA = "slimvit_metadata"
METHOD_LABELS = "slimvit_labels"
METHOD_DELEGATION = "slimvit_delegation"
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
    app_schema: ClassVar[bytes] = b"ET12"  # the .pte flatbuffer identifier ExecuTorch 1.x writes and loads

    @classmethod
    def runtime_problems(cls, path: Path) -> list[str]:
        with open(path, "rb") as f:
            head = f.read(8)
        # The program flatbuffer's file identifier names its schema version.
        if len(head) < 8 or head[4:8] != cls.app_schema:
            return [f"not an ExecuTorch {cls.app_schema.decode()} program (identifier {head[4:8]!r})"]
        return []

    def __init__(self, layout: str | None = None) -> None:
        require_executorch()
        super().__init__(layout)

    def export(self, module: nn.Module, example: np.ndarray, path: Path,
               metadata: Mapping[str, str]) -> None:
        x = torch.from_numpy(example)
        try:
            with quiet(), torch.no_grad():
                program = torch.export.export(module, (x,))
        except Exception as e:  # torch.export raises many types; name the op for the user
            raise converter_error(self.name, metadata, e) from e
        path.write_bytes(lower(program, metadata))

    def run(self, path: Path, inputs: np.ndarray) -> np.ndarray:
        method = load_program(path).load_method("forward")
        rows = [method.execute([torch.from_numpy(np.ascontiguousarray(inputs[i:i + 1]))])[0].numpy()
                for i in range(len(inputs))]
        return np.concatenate(rows)

    def read_metadata(self, path: Path) -> dict[str, str]:
        return read_metadata(path)

    def delegation(self, path: Path) -> dict[str, Any]:
        return read_delegation(path)

    def runtime_version(self) -> str:
        return f"executorch {importlib.metadata.version('executorch')} (XNNPACK)"


def lower(program: torch.export.ExportedProgram, metadata: Mapping[str, str]) -> bytes:
    """Lower an exported program to XNNPACK and serialize it with the slimvit constant methods.

    Raises:
        ExportError: the lowering fails (names the variant and, when the message shows it, the op).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeProgramManager, to_edge_transform_and_lower

    try:
        with quiet():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            lowered = edge.exported_program()
            report = edge_delegation(lowered, backend="XNNPACK")
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

    if portable_lib._threadpool_get_thread_count() != threads:
        with quiet():  # it logs the reset from C++
            portable_lib._unsafe_reset_threadpool(threads)


def load_program(path: Path) -> Any:  # -> executorch.runtime.Program
    """Load a `.pte` with the ExecuTorch runtime (its C++ start-up chatter silenced)."""
    with _runtime_quiet():
        from executorch.runtime import Runtime

        return Runtime.get().load_program(Path(path))


def _constant(path: Path, method: str) -> str:
    program = load_program(path)
    if method not in program.method_names:
        raise ValidationError(f"{path} has no '{method}' method; was it exported by slimvit?")
    return program.load_method(method).execute([])[0]


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
