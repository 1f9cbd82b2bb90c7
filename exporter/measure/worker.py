"""Measure one artifact in a fresh process and print one JSON line.

    python exporter/measure/worker.py --runtime onnxruntime --model a.onnx --threads 1 --runs 50

`exporter.measure.profile` starts this file once per artifact, so the memory and the caches of one
measurement never leak into the next. It imports only the standard library, numpy and the one
runtime it measures (never the rest of slimvit, nor torch for runtimes that do not need it:
importing those would take seconds and hundreds of MB before the measurement starts), so it also
runs as ``python -m exporter.measure.worker`` or copied on its own to another machine. The
ExecuTorch runtime's Python API takes torch tensors, so it loads torch, before the memory
baseline is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Invoke = Callable[[], object]


@dataclass(frozen=True)
class Runtime:
    """A runtime that can measure artifacts of one export format.

    Attributes:
        name: the name in ``--runtime`` and in the manifest's latency entries.
        format: the export format (registry name) whose artifacts it runs.
        module: the Python module it needs, checked before any worker starts.
    """

    name: str
    format: str
    module: str

    def version(self) -> str:
        return _VERSIONS[self.name]()

    def load(self, path: Path, threads: int) -> Invoke:
        """Load ``path`` and return a callable that runs one inference on a fixed random input."""
        return _LOADERS[self.name](path, threads)


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def ort_session(path: Path, threads: int = 1):  # -> onnxruntime.InferenceSession
    """The one ONNX Runtime session set-up (CPU, ``threads`` intra-op, quiet): measured here and
    used by `exporter.convert.formats.onnx` for validation and accuracy."""
    import onnxruntime as ort  # the runtime being measured: imported in the measurement

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_load(path: Path, threads: int) -> Invoke:
    sess = ort_session(path, threads)
    feeds = {i.name: _random_input(i.shape, _ORT_DTYPES.get(i.type, np.float32)) for i in sess.get_inputs()}
    return lambda: sess.run(None, feeds)


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _litert_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ai-edge-litert")


def _litert_load(path: Path, threads: int) -> Invoke:
    # LiteRT applies its default XNNPACK delegate to float and int8 graphs on CPU.
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], _random_input(list(d["shape"]), d["dtype"]))

    def invoke() -> None:
        interp.invoke()

    return invoke


def _random_input(shape: list, dtype: type) -> np.ndarray:
    dims = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape]  # dynamic -> 1
    x = np.random.default_rng(0).standard_normal(dims)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(x * 20), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _executorch_version() -> str:
    import importlib.metadata

    import executorch.runtime  # noqa: F401  (imports torch: kept out of the memory baseline)

    return importlib.metadata.version("executorch")


def _executorch_load(path: Path, threads: int) -> Invoke:
    # The ExecuTorch runtime takes torch tensors, so torch is loaded with it (before the baseline).
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime as ETRuntime

    with runtime_stderr():  # the thread pool's first use probes the CPU on fd 2
        if threads > 0 and portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)  # the XNNPACK delegate's thread pool
        method = ETRuntime.get().load_program(path).load_method("forward")
    shape = [int(d) for d in method.metadata.input_tensor_meta(0).sizes()]
    x = [torch.from_numpy(_random_input(shape, np.float32))]
    return lambda: method.execute(x)


# The ExecuTorch runtime's CPU probe writes these to fd 2 on every first use.
RUNTIME_CHATTER = re.compile(r"^\[cpuinfo_utils\.cpp:\d+\] ")


@contextlib.contextmanager
def runtime_stderr() -> Iterator[list[str]]:
    """Capture fd 2 around native runtime calls: the `RUNTIME_CHATTER` lines are dropped, every
    other line (a load error) is written back to stderr and appended to the yielded list. Standard
    library only (see the module docstring); `exporter.convert.formats.executorch` uses it too."""
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


_LOADERS: dict[str, Callable[[Path, int], Invoke]] = {"onnxruntime": _ort_load, "litert": _litert_load,
                                                      "executorch": _executorch_load}
_VERSIONS: dict[str, Callable[[], str]] = {"onnxruntime": _ort_version, "litert": _litert_version,
                                           "executorch": _executorch_version}

# The one list of profiling runtimes: the CLI's --runtime choices and `exporter.measure.profile` read it.
RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "onnx", "onnxruntime"),
    "litert": Runtime("litert", "tflite", "ai_edge_litert"),
    "executorch": Runtime("executorch", "executorch", "executorch"),
}


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS), 0 where /proc is missing."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM, else getrusage's ru_maxrss)."""
    peak = _proc_status_mb("VmHWM")
    if peak:
        return peak
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024 * 1024) if sys.platform == "darwin" else ru / 1024  # bytes on macOS, KB elsewhere


def _proc_status_mb(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return 0.0


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    return float(np.percentile(np.asarray(samples), q))


def measure(runtime: Runtime, path: Path, threads: int, runs: int, warmup: int) -> dict:
    """Load time, first inference, latency percentiles and RSS growth of one artifact.

    Args:
        runtime: which runtime runs it.
        path: the artifact.
        threads: intra-op threads (0 lets the runtime choose).
        runs: timed inferences after warm-up.
        warmup: untimed inferences after the first one.

    ``cpu_p50_ms`` is the median CPU time of this process per inference: on a busy host it
    does not grow when other processes take the cores, so runs on a shared CI machine stay
    comparable (with one thread it equals the wall time on an idle machine).
    """
    _VERSIONS[runtime.name]()  # import the runtime before the baseline, so it is not counted
    base = rss_mb()
    t = time.perf_counter()
    invoke = runtime.load(path, threads)
    load_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    invoke()
    first_ms = (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        invoke()
    samples, cpu = [], []
    for _ in range(runs):
        c, t = time.process_time(), time.perf_counter()
        invoke()
        samples.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return {
        "p50_ms": percentile(samples, 50), "p90_ms": percentile(samples, 90),
        "p99_ms": percentile(samples, 99), "mean_ms": statistics.fmean(samples),
        "cpu_p50_ms": percentile(cpu, 50),
        "load_ms": load_ms, "first_ms": first_ms,
        "peak_mb": max(0.0, peak_rss_mb() - base), "runs": runs, "threads": threads,
        "runtime": runtime.name, "runtime_version": runtime.version(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", required=True, choices=sorted(RUNTIMES))
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args(argv)
    # Run as a script, this file's directory is first on sys.path, and its sibling profile.py would
    # shadow the standard library's `profile` that runtimes import (ExecuTorch does, via torch).
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    try:
        result = measure(RUNTIMES[a.runtime], a.model, a.threads, a.runs, a.warmup)
    except Exception as e:  # reported to the parent as one JSON line, not a traceback
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    try:  # strict JSON, like everything slimvit writes (this worker imports no slimvit module)
        print(json.dumps(result, allow_nan=False))
    except ValueError:
        print(json.dumps({"error": f"non-finite measurement: {result}"[:500]}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
