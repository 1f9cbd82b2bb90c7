"""ONNX Runtime speed (issue 21): what the fused attention buys FP32 and int8, whether MLAS runs
the int8 GEMMs on AMX, where int8 time goes and the speedup cap the float part sets, and the
latency per MAC of small widths.

Usage: python benchmarks/bench_ort.py [--threads 1,2] [--no-amx-check]

DeiT-Ti shape (= DeiT-S at half width for HydraViT: 192 dim, 12 blocks, 3 heads, 224 px), random
weights (latency does not depend on them), batch 1. Everything compared is timed in interleaved
rounds in one process. The AMX check runs the same timing in two child processes, one of them
with ``arch_prctl(ARCH_REQ_XCOMP_PERM)`` refused through a small LD_PRELOAD shim (needs a C
compiler), so MLAS falls back from AMX to its AVX-512 VNNI kernels.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_quant import DEIT_TI, load_note, onnx_runner  # noqa: E402
from benchmarks.common import host, md_table, write_section  # noqa: E402
from benchmarks.quant_profile import MATMUL_OPS, int8_units, ort_op_profile, time_interleaved  # noqa: E402
from exporter.convert.formats.onnx import OnnxFormat  # noqa: E402
from exporter.convert.quantize import QuantJob, get_precision  # noqa: E402
from exporter.demo import DEMO_GRID, DEMO_MODEL  # noqa: E402
from exporter.nn.config import VariantGrid  # noqa: E402
from exporter.nn.cost import mac_count  # noqa: E402
from exporter.nn.extract import extract_variant, static_spec  # noqa: E402
from exporter.nn.model import SlimmableViT  # noqa: E402

INT8_GEMMS = {"QGemm", "QLinearConv", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat",
              "DynamicQuantizeMatMul"}
NO_AMX_SHIM = r"""
#define _GNU_SOURCE
#include <stdarg.h>
#include <errno.h>
#include <dlfcn.h>
#include <sys/syscall.h>
/* refuse ARCH_REQ_XCOMP_PERM (0x1023): the process may not use AMX tiles */
long syscall(long n, ...) {
  va_list ap; long a[6];
  va_start(ap, n); for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long); va_end(ap);
  if (n == SYS_arch_prctl && a[0] == 0x1023) { errno = EPERM; return -1; }
  static long (*real)(long, ...);
  if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""


class UnfusedOnnx(OnnxFormat):
    """The export as it was before the ONNX Runtime graph passes (eleven ops per attention)."""

    graph_passes = False


def models(work: Path, module, calib: np.ndarray) -> dict[str, Path]:
    """FP32 unfused/fused and int8 (x86-vnni, arm-dotprod) / int8-dynamic on each."""
    paths = {}
    for tag, fmt in (("unfused", UnfusedOnnx()), ("fused", OnnxFormat())):
        fp32 = paths[f"fp32 {tag}"] = work / f"fp32_{tag}.onnx"
        fmt.export(module, calib[:1], fp32, {})
        for label, name, target in (("int8 x86-vnni", "int8", "x86-vnni"),
                                    ("int8 arm-dotprod", "int8", "arm-dotprod"),
                                    ("int8-dynamic", "int8-dynamic", "x86-vnni")):
            out = paths[f"{label} {tag}"] = work / f"{label.replace(' ', '_')}_{tag}.onnx"
            job = QuantJob(fp32, module, calib[:1], calib, "minmax", (), {}, out, fmt.layout, fmt, target)
            get_precision("onnx", name).quantize(job)
    return paths


def latency_rows(paths: dict[str, Path], x: np.ndarray, threads: int) -> list[list]:
    ms = time_interleaved({k: onnx_runner(p, x, threads) for k, p in paths.items()})
    rows = []
    for k, (wall, cpu) in ms.items():
        tag = k.rsplit(" ", 1)[1]
        base = ms[f"fp32 {tag}"]
        rows.append([k, threads, f"{wall:.2f}", f"{cpu:.2f}", f"**{base[0] / wall:.2f}x**", f"{base[1] / cpu:.2f}x",
                     f"{ms['fp32 fused'][0] / wall:.2f}x", f"{ms['fp32 unfused'][0] / wall:.2f}x"])
        print(rows[-1], file=sys.stderr)
    return rows


def child_timing(paths: list[str], x_path: str) -> None:
    """Run by the AMX check in a child process: JSON {path: [wall, cpu, profile total, int8 GEMM
    ms]} on stdout (the profile's per-node minima are what a loaded machine blurs least)."""
    x = np.load(x_path)
    ms = time_interleaved({p: onnx_runner(Path(p), x, 1) for p in paths})
    out = {}
    for p in paths:
        prof = ort_op_profile(Path(p), x)[0]
        out[p] = [*ms[p], sum(prof.values()), sum(v for op, v in prof.items() if op in INT8_GEMMS | {"QAttention"})]
    print(json.dumps(out))


def amx_rows(paths: dict[str, Path], x: np.ndarray, work: Path) -> list[list] | str:
    """int8 vs FP32 with AMX allowed and refused (two child processes)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "(AMX check skipped: no C compiler for the LD_PRELOAD shim)"
    (work / "noamx.c").write_text(NO_AMX_SHIM)
    shim = work / "noamx.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(shim), str(work / "noamx.c"), "-ldl"], check=True)
    np.save(work / "x.npy", x)
    keys = ["fp32 fused", "int8 x86-vnni fused", "int8-dynamic fused"]
    got = {}
    for label, env in (("AMX allowed", {}), ("AMX refused", {"LD_PRELOAD": str(shim)})):
        r = subprocess.run([sys.executable, __file__, "--child", str(work / "x.npy"), *(str(paths[k]) for k in keys)],
                           env={**os.environ, **env}, capture_output=True, text=True, check=True)
        got[label] = json.loads(r.stdout.strip().splitlines()[-1])
    rows = []
    for label, ms in got.items():
        base = ms[str(paths["fp32 fused"])]
        for k in keys:
            wall, cpu, prof, gemm = ms[str(paths[k])]
            rows.append([label, k, f"{wall:.2f}", f"{cpu:.2f}", f"{base[0] / wall:.2f}x", f"{base[1] / cpu:.2f}x",
                         f"{prof:.2f}", f"{base[2] / prof:.2f}x", f"{gemm:.2f}" if k != "fp32 fused" else "-"])
    return rows


def profile_section(paths: dict[str, Path], x: np.ndarray) -> tuple[list[list], list[str]]:
    """Per-op ms of FP32 and int8, fused and unfused, and the Amdahl cap of int8 on ORT."""
    keys = ["fp32 unfused", "int8 x86-vnni unfused", "fp32 fused", "int8 x86-vnni fused"]
    prof = {k: ort_op_profile(paths[k], x)[0] for k in keys}
    ops = list(dict.fromkeys(op for k in keys for op in prof[k]))
    rows = [[op, *(f"{prof[k].get(op, 0.0):.2f}" if op in prof[k] else "-" for k in keys)] for op in ops]
    total = {k: sum(prof[k].values()) for k in keys}
    rows.append(["**total**", *(f"**{total[k]:.2f}**" for k in keys)])
    gemm32 = sum(v for op, v in prof["fp32 unfused"].items() if op in MATMUL_OPS - {"MatMul"})
    gemm8 = sum(v for op, v in prof["int8 x86-vnni unfused"].items() if op in INT8_GEMMS)
    float8 = total["int8 x86-vnni unfused"] - gemm8
    # in the fused graph QAttention also holds the qkv int8 GEMMs: take them out with the
    # unfused graph's int8 GEMM time (same layers, same kernels)
    float8_fused = total["int8 x86-vnni fused"] - gemm8
    best32 = min(total["fp32 fused"], total["fp32 unfused"])
    notes = [
        f"- Weighted layers: FP32 Gemm+Conv {gemm32:.2f} ms -> int8 QGemm+QLinearConv {gemm8:.2f} ms "
        f"(**{gemm32 / gemm8:.2f}x** faster).",
        f"- Everything else in int8 (attention matmuls and softmax, GELU, LayerNorm, QuantizeLinear, "
        f"residual adds, data movement): {float8:.2f} ms unfused, {float8_fused:.2f} ms fused.",
        f"- Speedup with the int8 GEMMs as measured: {best32 / total['int8 x86-vnni fused']:.2f}x "
        f"(fused, vs the best FP32 {best32:.2f} ms). **Cap if the int8 GEMMs took no time at all: "
        f"{best32 / float8_fused:.2f}x** (Amdahl: {best32:.2f} / {float8_fused:.2f}).",
        f"- 2.5x needs int8 <= {best32 / 2.5:.2f} ms: with the GEMMs at {gemm8:.2f} ms, the float part "
        f"would have to shrink from {float8_fused:.2f} to {best32 / 2.5 - gemm8:.2f} ms.",
    ]
    return rows, notes


def per_mac_rows(cfg, grid: VariantGrid, x_res: dict[int, np.ndarray], fused: bool, work: Path,
                 rounds: int = 7) -> tuple[list[list], dict[str, dict[str, float]]]:
    """FP32 latency per MAC of every grid point relative to the largest, one interleaved timing."""
    torch.manual_seed(0)
    model = SlimmableViT(cfg).eval()
    fmt = OnnxFormat() if fused else UnfusedOnnx()
    paths, macs = {}, {}
    for s in grid.subnets(cfg):
        paths[s.id] = work / f"{s.id}_{'f' if fused else 'u'}.onnx"
        fmt.export(extract_variant(model, s), x_res[s.resolution], paths[s.id], {})
        macs[s.id] = mac_count(static_spec(model, s))
    xs = {k: x_res[int(k.rsplit("_r", 1)[1])] for k in paths}
    ms = time_interleaved({k: onnx_runner(p, xs[k], 1) for k, p in paths.items()}, rounds=rounds)
    full = max(macs, key=macs.get)
    rows = []
    for k in paths:
        r = macs[k] / macs[full]
        rows.append([k, "fused" if fused else "unfused", f"{macs[k] / 1e6:.1f}", f"{ms[k][0]:.3f}",
                     f"{ms[k][0] / ms[full][0] / r:.3f}", f"{ms[k][1] / ms[full][1] / r:.3f}"])
    profiles = {k: ort_op_profile(paths[k], xs[k])[0] for k in (full, min(macs, key=macs.get))}
    return rows, profiles


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--no-amx-check", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_timing(args.child[1:], args.child[0])
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SlimmableViT(DEIT_TI).eval()
    (s,) = VariantGrid((1.0,), (1.0,), (224,)).subnets(DEIT_TI)
    module = extract_variant(model, s)
    calib = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    x = calib[:1]
    loads = [load_note()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = models(work, module, calib)
        rows = []
        for n in (int(t) for t in args.threads.split(",")):
            rows += latency_rows(paths, x, n)
            loads.append(load_note())
        amx = "(AMX check skipped)" if args.no_amx_check else amx_rows(paths, x, work)
        loads.append(load_note())
        prof_rows, prof_notes = profile_section(paths, x)
        ti_rows, ti_prof = [], {}
        for fused in (False, True):
            r, p = per_mac_rows(DEIT_TI, VariantGrid((1 / 3, 2 / 3, 1.0), (1.0,), (224,)), {224: x}, fused, work)
            ti_rows += r
            ti_prof.update({f"{k} {'fused' if fused else 'unfused'}": v for k, v in p.items()})
        demo_x = {r: np.random.default_rng(0).standard_normal((1, 3, r, r)).astype(np.float32)
                  for r in DEMO_GRID.resolutions}
        demo_rows = []
        for fused in (False, True):
            demo_rows += per_mac_rows(DEMO_MODEL, DEMO_GRID, demo_x, fused, work, rounds=5)[0]
        loads.append(load_note())
    ops = list(dict.fromkeys(op for p in ti_prof.values() for op in list(p)[:10]))
    ti_ops = [[op, *(f"{p.get(op, 0.0):.3f}" for p in ti_prof.values())] for op in ops]
    ti_ops.append(["**total**", *(f"**{sum(p.values()):.3f}**" for p in ti_prof.values())])
    parts = [
        "## ONNX Runtime speed (`benchmarks/bench_ort.py`)\n",
        f"Host: {host()}; {int8_units()}. Measured {datetime.date.today()} on a shared machine "
        f"({'; '.join(loads)} at the start, after each thread count, after the AMX check and at the end); "
        "ratios come from interleaved rounds in one process. CPU ms is the process's CPU time.\n",
        "### Fused attention, DeiT-Ti shape (192 dim, 12 blocks, 3 heads, 224 px), batch 1\n",
        "`fused` is the default export now (`exporter/convert/onnx_graph.py`): one `com.microsoft.Attention` "
        "per block (int8: `QAttention`) and the network's tail (last projection and MLP, final LayerNorm) on "
        "the head's token only; `unfused` is the export before. `vs its fp32` compares within the same graph "
        "shape; the last two columns compare with the fused and the unfused FP32.\n",
        md_table(["model", "threads", "median ms", "CPU ms", "vs its fp32", "CPU vs its fp32",
                  "vs fp32 fused", "vs fp32 unfused"], rows),
        "\n### Does MLAS use AMX for int8 here? (1 thread, two child processes)\n",
        amx if isinstance(amx, str) else md_table(["process", "model", "median ms", "CPU ms", "vs fp32",
                                                    "CPU vs fp32", "profile ms", "profile vs fp32",
                                                    "profile ms of QGemm + QAttention (+ dynamic int8 ops)"], amx),
        "\n### Where the time goes and the cap it sets (ONNX Runtime profiler, 1 thread, ms per op "
        "type, sum of each node's fastest run)\n",
        md_table(["op", "fp32 unfused", "int8 unfused", "fp32 fused", "int8 fused"], prof_rows),
        "", *prof_notes,
        "\n### Small widths: FP32 latency per MAC relative to the largest grid point (goal <= 1.15)\n",
        "DeiT-Ti widths (1, 2, 3 heads of 64):\n",
        md_table(["variant", "graph", "MMACs", "median ms", "per-MAC ratio (wall)", "per-MAC ratio (CPU)"],
                 ti_rows),
        "\nPer op type at 1 head and 3 heads (ms, profiler):\n",
        md_table(["op", *ti_prof], ti_ops),
        "\nThe demo grid (`DEMO_MODEL`: 64 dim, 4 blocks, 4 heads of 16, 32/24 px, random weights):\n",
        md_table(["variant", "graph", "MMACs", "median ms", "per-MAC ratio (wall)", "per-MAC ratio (CPU)"],
                 demo_rows),
    ]
    print(write_section("ort", "\n".join(parts)))


if __name__ == "__main__":
    main()
