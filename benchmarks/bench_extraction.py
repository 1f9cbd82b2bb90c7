"""Issue 2 rows: does an extracted variant run as fast as a ViT built directly at its shape,
and does latency track MACs across the grid? ONNX Runtime CPU, batch 1, one thread,
DeiT-Ti shape (192 dim, 12 blocks, 3 heads, 224 px), random weights."""

from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import host, md_table, time_fn, write_section  # noqa: E402
from benchmarks.reference_vit import ReferenceViT  # noqa: E402
from exporter.convert.formats import get_format  # noqa: E402
from exporter.nn.config import VariantGrid, ViTConfig  # noqa: E402
from exporter.nn.cost import mac_count  # noqa: E402
from exporter.nn.extract import extract_variant, static_spec  # noqa: E402
from exporter.nn.model import SlimmableViT  # noqa: E402

ROUNDS, RUNS = 3, 40


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    onnx = get_format("onnx")
    model = SlimmableViT(ViTConfig(embed_dim=192, depth=12, num_heads=3)).eval()
    subnets = VariantGrid((1 / 3, 2 / 3, 1.0), (1.0, 0.7, 0.5)).subnets(model.cfg)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    tmp = Path(tempfile.mkdtemp())
    files, macs = {}, {}
    for s in subnets:
        files[s.id] = tmp / f"{s.id}.onnx"
        onnx.export(extract_variant(model, s), x, files[s.id], {})
        macs[s.id] = mac_count(static_spec(model, s))
        if s.keep_rate == 1.0:  # a plain ViT of the same shape, built directly
            ref = ReferenceViT(s.embed_dim, 12, s.num_heads).eval()
            files["direct-" + s.id] = tmp / f"direct-{s.id}.onnx"
            onnx.export(ref, x, files["direct-" + s.id], {})
    sessions = {k: onnx.session(p, threads=1) for k, p in files.items()}
    best = {k: float("inf") for k in files}
    for _ in range(ROUNDS):  # interleaved rounds, best median: robust to background load
        for k, sess in sessions.items():
            best[k] = min(best[k], time_fn(lambda sess=sess: sess.run(None, {"pixel_values": x}), 5, RUNS))
    full = subnets[0].id
    rows_direct, rows_track = [], []
    for s in subnets:
        if "direct-" + s.id in best:
            ratio = best[s.id] / best["direct-" + s.id]
            rows_direct.append([s.id, f"{best[s.id]:.2f}", f"{best['direct-' + s.id]:.2f}", f"{ratio:.3f}",
                                "yes" if ratio <= 1.02 else "no"])
        lat_r, mac_r = best[s.id] / best[full], macs[s.id] / macs[full]
        rows_track.append([s.id, f"{macs[s.id] / 1e9:.3f}", f"{best[s.id]:.2f}", f"{lat_r:.3f}", f"{mac_r:.3f}",
                           f"{lat_r / mac_r:.3f}", "yes" if lat_r / mac_r <= 1.15 else "no"])
    md = "\n".join([
        "## Extraction: latency of extracted variants (issue 2)",
        f"`benchmarks/bench_extraction.py`, {datetime.date.today()}, host: {host()}.",
        f"ONNX Runtime CPU EP, batch 1, 1 thread, DeiT-Ti shape (192/12/3, 224 px), random weights; "
        f"median of {RUNS} runs, best of {ROUNDS} interleaved rounds.",
        "", "### Extracted variant vs a ViT built directly at that shape (goal <= 1.02)", "",
        md_table(["variant", "extracted ms", "direct ms", "ratio", "goal met"], rows_direct),
        "", "### Latency tracks compute: (latency / full) / (MACs / full) (goal <= 1.15)", "",
        md_table(["variant", "GMACs", "ms", "latency ratio", "MACs ratio", "ratio of ratios", "goal met"],
                 rows_track),
    ])
    path = write_section("extraction", md)
    print(md)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
