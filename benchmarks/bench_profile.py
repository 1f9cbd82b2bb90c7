"""Issue 7 row: `slimvit profile`'s p50 (a fresh worker process per artifact) against a bare
ONNX Runtime loop on the same artifact. They must agree within 5%, or the worker measures
something other than inference (start-up, imports, a different session).

The bare loop also runs in a fresh process (a dozen lines of plain onnxruntime), so both sides
start from the same state. Rounds pair one worker run with one bare run, in ABBA order so a
drift in background load cancels; the verdict is the median of the per-round ratios. A control
row pairs the bare loop with itself the same way: its deviation is the noise floor of this
machine, against which the 5% goal can be judged. Both sides also report the median CPU time
per inference (`cpu_p50_ms` in the manifest), which other processes on the host do not inflate."""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import host, md_table, write_section  # noqa: E402

# Big enough (several ms per inference) that timer resolution does not matter.
MODEL = dict(img_size=64, patch_size=8, in_chans=3, num_classes=10, embed_dim=192, depth=6, num_heads=3)
WIDTHS = (0.5, 1.0)
RUNS, WARMUP, ROUNDS, TOLERANCE = 60, 10, 10, 0.05

BARE = """
import sys, time, numpy as np, onnxruntime as ort
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
feeds = {inp.name: np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)}
for _ in range(int(sys.argv[3])): sess.run(None, feeds)
t, c = [], []
for _ in range(int(sys.argv[2])):
    p, s = time.process_time(), time.perf_counter(); sess.run(None, feeds)
    t.append((time.perf_counter() - s) * 1e3); c.append((time.process_time() - p) * 1e3)
print(float(np.percentile(t, 50)), float(np.percentile(c, 50)))
"""


def bare_p50(path: Path) -> tuple[float, float]:
    """(wall, CPU) p50 of the plainest ONNX Runtime loop, in its own process."""
    out = subprocess.run([sys.executable, "-c", BARE, str(path), str(RUNS), str(WARMUP)],
                         capture_output=True, text=True, check=True).stdout
    wall, cpu = out.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def compare(name: str, a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list:
    """[name, wall a, wall ratio, wall b, cpu a, cpu ratio, cpu b]: medians over rounds and the
    median of the per-round ratios."""
    def med(xs, i):
        return statistics.median(x[i] for x in xs)

    def ratio(i):
        return statistics.median(x[i] / y[i] for x, y in zip(a, b, strict=True))

    return [name, med(a, 0), ratio(0), med(b, 0), med(a, 1), ratio(1), med(b, 1)]


def row_text(r: list) -> list[str]:
    return [r[0], f"{r[1]:.3f}", f"{r[3]:.3f}", f"{r[2]:.3f}", f"{r[4]:.3f}", f"{r[6]:.3f}", f"{r[5]:.3f}"]


def paired(a, b) -> tuple[list[float], list[float]]:
    """ROUNDS pairs of (a(), b()) in ABBA order."""
    xs, ys = [], []
    for r in range(ROUNDS):
        if r % 2:
            y = b()
            x = a()
        else:
            x = a()
            y = b()
        xs.append(x)
        ys.append(y)
    return xs, ys


def main() -> None:
    from exporter.bundle.export import export_bundle
    from exporter.checkpoints import LoadedModel
    from exporter.measure.profile import RUNTIMES, run_worker
    from exporter.nn.config import VariantGrid, ViTConfig
    from exporter.nn.model import SlimmableViT

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ViTConfig(**MODEL)
    model = SlimmableViT(cfg).eval()
    loaded = LoadedModel(model, "bench", "slimvit", [str(i) for i in range(cfg.num_classes)])
    rows, worst, worst_cpu = [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_bundle(loaded, VariantGrid(WIDTHS, (1.0,)), tmp)
        for v in manifest["variants"]:
            path = Path(tmp) / v["artifacts"][0]["path"]
            last = {}

            def worker(path=path, last=last):
                last.update(run_worker(path, RUNTIMES["onnxruntime"], threads=1, runs=RUNS, warmup=WARMUP))
                return last["p50_ms"], last["cpu_p50_ms"]

            w, b = paired(worker, lambda path=path: bare_p50(path))
            row = compare(v["id"], w, b)
            worst = max(worst, abs(row[2] - 1))
            worst_cpu = max(worst_cpu, abs(row[5] - 1))
            rows.append(row_text(row) + [f"{v['macs'] / 1e6:.0f}", f"{last['load_ms']:.1f}",
                                         f"{last['peak_mb']:.1f}"])
            print(rows[-1], flush=True)
        b1, b2 = paired(lambda: bare_p50(path), lambda: bare_p50(path))
        control = compare(f"control: bare vs bare ({v['id']})", b1, b2)
        rows.append(row_text(control) + ["", "", ""])
        print(rows[-1], flush=True)
    md = f"""## Profiling: `slimvit profile` vs a bare ONNX Runtime loop (issue 7)
`benchmarks/bench_profile.py`, {datetime.date.today()}, host: {host()}.
ViT {MODEL['embed_dim']}/{MODEL['depth']}/{MODEL['num_heads']} at {MODEL['img_size']} px (random weights), \
widths {WIDTHS}, ONNX fp32, one thread. Per artifact, {ROUNDS} rounds (ABBA order) each pairing \
the profile worker and a bare `InferenceSession.run` loop, both in a fresh process with {RUNS} runs \
after {WARMUP} warm-up; p50 columns are medians over rounds, ratio = median of per-round ratios. \
The control row pairs the bare loop with itself: the noise floor of this machine.
1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared with other jobs).
Goal: agree within {TOLERANCE:.0%}. Worst deviation of the wall-clock p50: **{worst:.1%}** \
({'met' if worst <= TOLERANCE else 'NOT met'}; noise floor from the control: {abs(control[2] - 1):.1%}); \
of the CPU-time p50 (`cpu_p50_ms`, insensitive to other load): **{worst_cpu:.1%}** \
({'met' if worst_cpu <= TOLERANCE else 'NOT met'}; control {abs(control[5] - 1):.1%}).

{md_table(["variant", "profile p50 ms", "bare p50 ms", "ratio", "profile CPU p50 ms", "bare CPU p50 ms",
           "CPU ratio", "MMACs", "load ms", "peak MB"], rows)}
"""
    print(write_section("profile", md))


if __name__ == "__main__":
    main()
