"""ExecuTorch: a `.pte` program made by `torch.export` and lowered to the XNNPACK delegate, run by
the ExecuTorch runtime (`executorch.runtime`).

The staged pipeline is ExecuTorch's own: ``torch.export.export`` -> `to_edge_transform_and_lower`
with `XnnpackPartitioner` -> ``.to_executorch()``, with LayerNorm and a few copies rewritten so
a dense variant is one XNNPACK partition (`executorch_graph`). What XNNPACK does not take (the
token pruning's TopK/Gather and the head mean it ranks by) stays in portable kernels; the
delegation report (`exporter.convert.formats.delegation`) says which ops and what share of the MACs.

Metadata travels as constant methods, the way ExecuTorch programs carry values beside
``forward``: ``slimvit_metadata`` returns the JSON object of every ``slimvit.*`` key,
``slimvit_labels`` the labels one per line, ``slimvit_delegation`` the delegation report."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from exporter.convert.formats.base import ExportFormat, converter_error, quiet
from exporter.convert.formats.delegation import edge_delegation
from exporter.convert.formats.executorch_graph import for_xnnpack, xnnpack_friendly
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
    # Each precision is its own torch.export + lowering, 13-38 CPU s for a demo variant (mostly
    # ExecuTorch's pass re-tracing; benchmarks/results/executorch.md): 4 precisions x 12
    # variants is 15-18 CPU minutes, fp32 alone about 3.
    demo_precisions: ClassVar[tuple[str, ...] | None] = ("fp32",)
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
        try:
            program = export_program(module, example)
        except Exception as e:  # torch.export raises many types; name the op for the user
            raise converter_error(self.name, metadata, e) from e
        path.write_bytes(lower(program, metadata))

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


def export_program(module: nn.Module, example: np.ndarray) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` with its LayerNorms written as ops XNNPACK takes
    (`exporter.convert.formats.executorch_graph`), at the example's shape (batch 1)."""
    with quiet(), torch.no_grad():
        return torch.export.export(for_xnnpack(module).eval(), (torch.from_numpy(example),))


def lower(program: torch.export.ExportedProgram, metadata: Mapping[str, str]) -> bytes:
    """Lower an exported program to XNNPACK and serialize it with the slimvit constant methods.

    Raises:
        ExportError: the lowering fails (names the variant and, when the message shows it, the op).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, EdgeProgramManager, to_edge_transform_and_lower

    try:
        with quiet():
            # The IR verifier re-checks every op's dtypes after each pass (about a tenth of the
            # lowering time); the program is run against PyTorch before it is kept anyway.
            edge = to_edge_transform_and_lower(program, transform_passes=[xnnpack_friendly],
                                               partitioner=[XnnpackPartitioner()],
                                               compile_config=EdgeCompileConfig(_check_ir_validity=False))
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


# Lines the runtime writes to fd 2 on its first use of the thread pool (cpuinfo probing of
# /sys files an x86 host does not have); chatter, never an error.
RUNTIME_CHATTER = re.compile(r"^\[cpuinfo_utils\.cpp:\d+\] ")


@contextlib.contextmanager
def runtime_stderr() -> Iterator[list[str]]:
    """Capture file descriptor 2 (where the runtime's C++ logs) for the block; on exit, the
    lines that are not `RUNTIME_CHATTER` are written back to stderr and appended to the
    yielded list."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no such descriptor (embedded interpreters)
        yield []
        return
    kept: list[str] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield kept
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors="replace").splitlines()
            kept += [line for line in lines if not RUNTIME_CHATTER.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


@contextlib.contextmanager
def _runtime_quiet() -> Iterator[None]:
    # The runtime logs cpuinfo probing to the process's stderr on first use.
    with quiet():
        yield
