"""ExecuTorch: one XNNPACK partition vs the graph cut at every LayerNorm, every precision.

Usage: python benchmarks/bench_executorch_partitions.py [--no-deit] [--runs N]

``cut``: the program as slimvit wrote it before `exporter.convert.formats.executorch_graph`
(plain ``torch.export``, LayerNorm, no-op expands, q/k/v split and the class-token select in
portable kernels between XNNPACK partitions). ``one``: what the `executorch` format writes now
(LayerNorm as linear/sub/mul/rsqrt, those copies rewritten: a dense variant is one partition).
Both at fp32, fp16, int8 (pt2e static, calibrated) and int8-dynamic, timed in interleaved rounds
in one process, one thread, batch 1; the table gives each program's median and its speed against
the same path's fp32 and against the ``cut`` fp32. Export seconds are CPU seconds of this
process (wall seconds on a shared host depend on the other jobs).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_executorch import DEIT_TI, cpu_flags, load, runner, time_interleaved  # noqa: E402
from benchmarks.common import host, md_table, write_section  # noqa: E402
from exporter.convert.formats import get_format  # noqa: E402
from exporter.convert.formats.base import quiet  # noqa: E402
from exporter.convert.formats.executorch import FP32Wrapper, set_threads  # noqa: E402
from exporter.convert.quantize import QuantJob, get_precision  # noqa: E402
from exporter.demo import DEMO_MODEL  # noqa: E402
from exporter.nn.config import VariantGrid  # noqa: E402
from exporter.nn.extract import extract_variant  # noqa: E402
from exporter.nn.model import SlimmableViT  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


def cut_program(module: torch.nn.Module, precision: str, calib: np.ndarray, out: Path) -> None:
    """The earlier lowering: no LayerNorm rewrite, no edge pass, the same quantizer settings."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower

    x = torch.from_numpy(calib[:1])
    with quiet():
        if precision == "fp16":
            module = FP32Wrapper(copy.deepcopy(module).half()).eval()
        elif precision.startswith("int8"):
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            dynamic = precision == "int8-dynamic"
            quantizer = XNNPACKQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
            prepared = prepare_pt2e(torch.export.export(copy.deepcopy(module), (x,)).module(), quantizer)
            with torch.no_grad():
                for i in range(1 if dynamic else len(calib)):
                    prepared(torch.from_numpy(calib[i:i + 1]))
            module = convert_pt2e(prepared)
        with torch.no_grad():
            program = torch.export.export(module, (x,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        out.write_bytes(edge.to_executorch().buffer)


def one_program(module: torch.nn.Module, precision: str, calib: np.ndarray, out: Path) -> None:
    fmt = get_format("executorch")
    if precision == "fp32":
        fmt.export(module, calib[:1], out, {"slimvit.variant_id": "bench"})
        return
    job = QuantJob(out, module, calib[:1], calib, "minmax", (), {"slimvit.variant_id": "bench"}, out,
                   converter=fmt)
    get_precision("executorch", precision).quantize(job)


def measure(label: str, module: torch.nn.Module, calib: np.ndarray, work: Path, runs: int,
            cut: tuple[str, ...] = PRECISIONS) -> tuple[list[list], list[list]]:
    paths, secs = {}, {}
    for path_name, make, precisions in (("cut", cut_program, cut), ("one", one_program, PRECISIONS)):
        for p in precisions:
            out = work / f"{label}-{path_name}-{p}.pte"
            t = time.process_time()
            make(module, p, calib, out)
            secs[(path_name, p)] = time.process_time() - t
            paths[(path_name, p)] = out
            print(f"  {label} {path_name} {p}: {secs[(path_name, p)]:.1f} CPU s ({load()})",
                  file=sys.stderr, flush=True)
    x = calib[:1]
    ms = time_interleaved({k: runner("executorch", v, x) for k, v in paths.items()}, runs)
    fmt = get_format("executorch")
    rows = []
    for (path_name, p), m in ms.items():
        deleg = fmt.delegation(paths[(path_name, p)]) if path_name == "one" else None
        parts = deleg["partitions"] if deleg else _partitions(paths[(path_name, p)])
        rows.append([label, path_name, p, f"{m:.3f}", f"{ms[(path_name, 'fp32')] / m:.2f}x",
                     f"{ms[('cut', 'fp32')] / m:.2f}x", parts, f"{secs[(path_name, p)]:.1f}",
                     f"{paths[(path_name, p)].stat().st_size / 2 ** 20:.2f}"])
    ratios = [[label, p, f"{ms[('cut', p)] / ms[('one', p)]:.2f}x" if p in cut else "-",
               f"{ms[('one', 'fp32')] / ms[('one', p)]:.2f}x" if p != "fp32" else "-",
               f"{secs[('cut', p)] / secs[('one', p)]:.2f}x" if p in cut else "-"] for p in PRECISIONS]
    return rows, ratios


def _partitions(path: Path) -> int:
    from exporter.convert.formats.executorch import program_operators

    return program_operators(path).get("<delegate>", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-deit", action="store_true", help="only the demo shape")
    ap.add_argument("--runs", type=int, default=8, help="inferences per round at DeiT-Ti shape")
    args = ap.parse_args()
    torch.set_num_threads(1)
    set_threads(1)
    start = load()
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        demo = SlimmableViT(DEMO_MODEL).eval()
        calib = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
        s = VariantGrid((1.0,), (1.0,), (32,)).subnets(DEMO_MODEL)[0]
        r, q = measure(f"demo {s.id}", extract_variant(demo, s), calib, work, runs=200)
        rows, ratios = rows + r, ratios + q
        if not args.no_deit:
            torch.manual_seed(0)
            deit = SlimmableViT(DEIT_TI).eval()
            calib224 = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
            s = VariantGrid((1.0,), (1.0,), (224,)).subnets(DEIT_TI)[0]
            # The cut DeiT-Ti programs take minutes each to lower: fp32 and int8 only.
            r, q = measure(f"DeiT-Ti {s.id}", extract_variant(deit, s), calib224, work, runs=args.runs,
                           cut=("fp32", "int8"))
            rows, ratios = rows + r, ratios + q
    parts = [
        "## ExecuTorch: one XNNPACK partition vs cut at every LayerNorm "
        "(`benchmarks/bench_executorch_partitions.py`)\n",
        f"Host: {host()}; CPU flags: {cpu_flags()}; measured {datetime.date.today()} ({start} at the "
        f"start, {load()} at the end; a shared 2-core machine: ratios from interleaved rounds are "
        "steadier than absolute times). One thread, batch 1, random weights, calibration on random "
        "normal inputs. `cut`: plain `torch.export`, LayerNorm and copies in portable kernels; "
        "`one`: the `executorch` format now (LayerNorm as linear/sub/mul/rsqrt, copies rewritten).\n",
        md_table(["shape", "path", "precision", "median ms", "vs same path fp32", "vs cut fp32",
                  "partitions", "export CPU s", "MB"], rows),
        "\n### one vs cut, per precision\n",
        md_table(["shape", "precision", "speed one/cut", "speed vs one fp32", "export time cut/one"], ratios),
    ]
    write_section("executorch_partitions", "\n".join(parts))
    print(f"done ({os.getloadavg()})", file=sys.stderr)


if __name__ == "__main__":
    main()
