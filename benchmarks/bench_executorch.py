"""ExecuTorch (XNNPACK) vs LiteRT (XNNPACK) vs ONNX Runtime, FP32 and INT8, one thread, batch 1,
in one run: at DeiT-Ti shape and on a small demo-like grid; export time per variant per format;
the share of each graph the XNNPACK delegate takes; and what a token-pruned variant's TopK/Gather
fallback costs in time.

Usage: python benchmarks/bench_executorch.py [--no-deit]

Latency: every artifact of one shape is timed in interleaved rounds (all runtimes alternate, so
the machine's load hits them alike); medians, and ratios against the same runtime's FP32. INT8 is
ExecuTorch's pt2e static int8 (XNNPACKQuantizer), ONNX Runtime's static QDQ int8, LiteRT's
full-integer int8 and its int8-xnnpack (int8 only where XNNPACK runs int8). Random weights:
latency does not depend on them; calibration on random normal inputs.

Fallback cost: the pruned variant against the same graph with the token selection replaced by a
static slice (same token counts and the same compute after it, no ranking, TopK or Gather), timed
interleaved; the difference is what the selection and its fallback cost per inference.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import host, md_table, write_section  # noqa: E402
from exporter.convert.formats import get_format  # noqa: E402
from exporter.convert.formats.executorch import set_threads  # noqa: E402
from exporter.convert.quantize import QuantJob, get_precision  # noqa: E402
from exporter.demo import DEMO_MODEL  # noqa: E402
from exporter.nn.config import Variant, VariantGrid, ViTConfig  # noqa: E402
from exporter.nn.extract import extract_variant  # noqa: E402
from exporter.nn.model import SlimmableViT  # noqa: E402
from exporter.nn.static import StaticBlock  # noqa: E402

DEIT_TI = ViTConfig(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=1000)
DEIT_VARIANTS = [Variant(1.0, 1.0, 224)]  # the pruned DeiT-Ti is measured in the fallback section
GRID = VariantGrid(widths=(0.25, 1.0), keep_rates=(1.0, 0.5), resolutions=(32,))
# format -> its int8 precisions compared here
PRECISIONS = {"executorch": ("fp16", "int8", "int8-dynamic"), "tflite": ("int8", "int8-xnnpack"),
              "onnx": ("int8",)}
EXPORT_COLUMNS = ("fp32", "fp16", "int8", "int8-dynamic", "int8-xnnpack")
RUNTIME = {"executorch": "ExecuTorch", "tflite": "LiteRT", "onnx": "ONNX Runtime"}
ROUNDS = 5


def cpu_flags() -> str:
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    found = sorted(f for f in flags.split() if "vnni" in f or f in ("avx2", "avx512f", "avx512_bf16"))
    return ", ".join(found) or "none of avx2/avx512f/vnni"


def load() -> str:
    return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg())


def runner(fmt_name: str, path: Path, x: np.ndarray):
    """One inference on ``x`` with one thread, as a zero-argument callable."""
    if fmt_name == "onnx":
        sess = get_format("onnx").session(path, threads=1)
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})
    if fmt_name == "tflite":
        it = get_format("tflite").interpreter(path, threads=1)
        inp = it.get_input_details()[0]["index"]

        def invoke() -> None:
            it.set_tensor(inp, x)
            it.invoke()
        return invoke
    from exporter.convert.formats.executorch import load_program

    method = load_program(path).load_method("forward")
    args = [torch.from_numpy(x)]
    return lambda: method.execute(args)


def time_interleaved(runners: dict, runs: int) -> dict:
    """Median ms per runner over ROUNDS rounds of ``runs`` each, runners alternating."""
    samples = {k: [] for k in runners}
    for fn in runners.values():
        fn()
        fn()
    for _ in range(ROUNDS):
        for name, fn in runners.items():
            for _ in range(runs):
                t = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def make(fmt_name: str, module: nn.Module, calib: np.ndarray, work: Path, tag: str
         ) -> tuple[dict[str, Path], dict[str, float]]:
    """The FP32 artifact and each int8 precision of one format; seconds (wall) each took."""
    fmt = get_format(fmt_name)
    paths, secs = {"fp32": work / f"{tag}.fp32{fmt.suffix}"}, {}
    t = time.perf_counter()
    fmt.export(module, calib[:1], paths["fp32"], {"slimvit.variant_id": tag})
    secs["fp32"] = time.perf_counter() - t
    for name in PRECISIONS[fmt_name]:
        out = work / f"{tag}.{name}{fmt.suffix}"
        job = QuantJob(paths["fp32"], module, calib[:1], calib, "minmax", (), {"slimvit.variant_id": tag},
                       out, converter=fmt)
        t = time.perf_counter()
        get_precision(fmt_name, name).quantize(job)
        secs[name] = time.perf_counter() - t
        paths[name] = out
    return paths, secs


def share(fmt_name: str, path: Path) -> str:
    d = get_format(fmt_name).delegation(path)
    if d is None:
        return "-"
    falls = ", ".join(f"{k.removeprefix('aten::')} {v}" for k, v in d["fallback_ops"].items()) or "none"
    return (f"{d['delegated_ops']}/{d['ops']} ops, {100 * d['delegated_mac_share']:.1f}% MACs, "
            f"{d['partitions']} partitions; outside: {falls}")


def measure_shape(label: str, module: nn.Module, calib: np.ndarray, work: Path, runs: int
                  ) -> tuple[list[list], list[list], list[list]]:
    """Latency rows, export-time rows and delegation rows of one variant in every format."""
    paths, export_rows = {}, []
    for fmt_name in PRECISIONS:
        p, secs = make(fmt_name, module, calib, work, f"{label}-{fmt_name}")
        paths |= {(fmt_name, k): v for k, v in p.items()}
        export_rows.append([label, RUNTIME[fmt_name]] + [f"{secs[k]:.1f}" if k in secs else "-"
                                                         for k in EXPORT_COLUMNS])
        print(f"  exported {label} {fmt_name}: {secs} ({load()})", file=sys.stderr, flush=True)
    x = calib[:1]
    runners, failed = {}, {}
    for k, v in paths.items():
        try:
            runners[k] = runner(k[0], v, x)
        except Exception as e:  # an artifact its own runtime cannot load: reported, not timed
            failed[k] = f"fails to load: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    ms = time_interleaved(runners, runs)
    rows, deleg = [], []
    for (fmt_name, prec) in paths:
        size = f"{paths[(fmt_name, prec)].stat().st_size / 2 ** 20:.2f}"
        if (fmt_name, prec) in failed:
            rows.append([label, RUNTIME[fmt_name], prec, failed[(fmt_name, prec)], "-", size])
            continue
        m, base = ms[(fmt_name, prec)], ms[(fmt_name, "fp32")]
        rows.append([label, RUNTIME[fmt_name], prec, f"{m:.2f}", f"{base / m:.2f}x", size])
        if fmt_name != "onnx":
            deleg.append([label, RUNTIME[fmt_name], prec, share(fmt_name, paths[(fmt_name, prec)])])
    return rows, export_rows, deleg


class SliceBlock(nn.Module):
    """A StaticBlock whose token selection is a static slice of the same size: same shapes and
    compute after it, no ranking, TopK or Gather (wrong outputs; for timing only)."""

    def __init__(self, block: StaticBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        h, _ = b.attn(b.norm1(x))
        x = x + h
        if b.n_keep is not None:
            x = x[:, :b.n_prefix + b.n_keep]
        return x + b.fc2(F.gelu(b.fc1(b.norm2(x))))


def fallback_cost(module: nn.Module, calib: np.ndarray, work: Path, runs: int, label: str
                  ) -> tuple[list[list], list[list]]:
    import copy

    sliced = copy.deepcopy(module)
    sliced.blocks = nn.ModuleList(SliceBlock(b) for b in sliced.blocks)
    rows, deleg = [], []
    for fmt_name in ("executorch", "tflite"):
        fmt = get_format(fmt_name)
        a, b = work / f"fb-{label}-topk{fmt.suffix}", work / f"fb-{label}-slice{fmt.suffix}"
        fmt.export(module, calib[:1], a, {})
        fmt.export(sliced, calib[:1], b, {})
        ms = time_interleaved({"topk": runner(fmt_name, a, calib[:1]), "slice": runner(fmt_name, b, calib[:1])},
                              runs)
        d = fmt.delegation(a)
        rows.append([label, RUNTIME[fmt_name], f"{ms['topk']:.3f}", f"{ms['slice']:.3f}",
                     f"{ms['topk'] - ms['slice']:+.3f}", f"{100 * (ms['topk'] - ms['slice']) / ms['topk']:+.1f}%",
                     d["partitions"], fmt.delegation(b)["partitions"]])
        deleg.append([label, RUNTIME[fmt_name], "fp32", share(fmt_name, a)])
        print(f"  fallback {label} {fmt_name}: {ms}", file=sys.stderr, flush=True)
    return rows, deleg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-deit", action="store_true", help="skip the DeiT-Ti shape (long exports)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    set_threads(1)
    start_load = load()
    rows, export_rows, deleg, fb = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        demo = SlimmableViT(DEMO_MODEL).eval()
        calib = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
        for s in GRID.subnets(DEMO_MODEL):
            r, e, d = measure_shape(s.id, extract_variant(demo, s), calib, work, runs=40)
            rows, export_rows, deleg = rows + r, export_rows + e, deleg + d
        f, d = fallback_cost(extract_variant(demo, Variant(1.0, 0.5, 32)), calib, work, 40, "demo w64_k50_r32")
        fb, deleg = fb + f, deleg + d
        if not args.no_deit:
            torch.manual_seed(0)
            deit = SlimmableViT(DEIT_TI).eval()
            calib224 = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
            for v in DEIT_VARIANTS:
                s = VariantGrid((v.width,), (v.keep_rate,), (v.resolution,)).subnets(DEIT_TI)[0]
                r, e, d = measure_shape(f"DeiT-Ti {s.id}", extract_variant(deit, s), calib224, work, runs=6)
                rows, export_rows, deleg = rows + r, export_rows + e, deleg + d
            s = VariantGrid((1.0,), (0.5,), (224,)).subnets(DEIT_TI)[0]
            f, d = fallback_cost(extract_variant(deit, s), calib224, work, 6, f"DeiT-Ti {s.id}")
            fb, deleg = fb + f, deleg + d
    summary = summarize(rows)
    parts = [
        "## ExecuTorch vs LiteRT vs ONNX Runtime (`benchmarks/bench_executorch.py`)\n",
        f"Host: {host()}; CPU flags: {cpu_flags()}; measured {datetime.date.today()} on a shared "
        f"machine ({start_load} at the start, {load()} at the end; 2 cores for several jobs), so "
        "ratios from interleaved rounds are steadier than absolute times. One thread, batch 1, random "
        "weights; calibration on random normal inputs.\n",
        "### Each precision / FP32 per runtime (latency ratio: below 1.00x it is slower)\n",
        md_table(["shape", "runtime", "precision", "fp32 ms", "precision ms", "speedup"], summary),
        "\n### Latency\n",
        md_table(["variant", "runtime", "precision", "median ms", "speedup vs fp32", "MB"], rows),
        "\n### Export time per variant per format (wall seconds; int8 columns: quantize + convert)\n",
        md_table(["variant", "format", *(f"{k} s" for k in EXPORT_COLUMNS)], export_rows),
        "\n### XNNPACK delegation per artifact\n",
        md_table(["variant", "runtime", "precision", "delegated"], deleg),
        "\n### What a pruned variant's token selection (TopK/Gather, outside the delegate) costs\n",
        "`topk`: the exported pruned variant; `slice`: the same graph with the selection replaced by a "
        "static slice of the same size. Difference = the selection's cost per inference.\n",
        md_table(["variant", "runtime", "topk ms", "slice ms", "diff ms", "share of topk time",
                  "partitions (topk)", "partitions (slice)"], fb),
    ]
    write_section("executorch", "\n".join(parts))


def summarize(rows: list[list]) -> list[list]:
    by = {(r[0], r[1], r[2]): float(r[3]) for r in rows if r[4] != "-"}
    out = []
    for (label, rt, prec), m in by.items():
        if prec == "fp32":
            continue
        base = by[(label, rt, "fp32")]
        out.append([label, rt, prec, f"{base:.2f}", f"{m:.2f}", f"{base / m:.2f}x"])
    return out


if __name__ == "__main__":
    main()
