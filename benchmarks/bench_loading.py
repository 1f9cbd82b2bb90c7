"""Issue 3 rows: loading foreign checkpoints (timm/DeiT, HydraViT, Scala, SuperViT) of DeiT-S
size, and load + ONNX export of 4 widths: wall time and peak RSS, so a regression in either
shows. Each row runs in its own process (peak RSS is a process high-water mark); random
weights, one thread."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import host, md_table, write_section  # noqa: E402

DEIT_S = dict(embed_dim=384, depth=12, num_heads=6, img_size=224, patch_size=16, num_classes=1000)
WIDTHS = (0.25, 0.5, 0.75, 1.0)
# (row, file, checkpoint format, options, export the 4 widths?)
ROWS = [
    ("imports only (baseline)", None, None, {}, False),
    ("slimvit .safetensors", "own.safetensors", "auto", {}, False),
    ("timm .safetensors", "deit_s.safetensors", "auto", {}, False),
    ("timm .pth", "deit_s.pth", "auto", {}, False),
    ("hydravit .pth.tar (state_dict)", "hydravit.pth.tar", "auto", {}, False),
    ("hydravit .pth.tar (--ema)", "hydravit.pth.tar", "auto", {"ema": True}, False),
    ("scala .pth (distilled)", "scala.pth", "auto", {}, False),
    ("supervit .pth (4 sizes)", "supervit.pth", "auto", {}, False),
    ("timm .pth + export 4 widths", "deit_s.pth", "auto", {}, True),
]


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Restart the peak-RSS count so import-time allocations do not mask the row's own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_checkpoints(d: Path) -> None:
    import argparse as ap

    from safetensors.torch import save_file

    from exporter.checkpoints import save_checkpoint
    from exporter.nn.config import ViTConfig
    from exporter.nn.model import SlimmableViT

    torch.manual_seed(0)
    plain = SlimmableViT(ViTConfig(**DEIT_S))
    sd = {k: v.contiguous() for k, v in plain.state_dict().items()}
    save_checkpoint(plain, d / "own.safetensors")
    save_file(sd, str(d / "deit_s.safetensors"))
    torch.save(sd, d / "deit_s.pth")
    ema = {k: v + 0.01 for k, v in sd.items()}
    torch.save({"epoch": 299, "state_dict": sd, "state_dict_ema": ema, "args": ap.Namespace(model="hydra")},
               d / "hydravit.pth.tar")
    dist = SlimmableViT(ViTConfig(**DEIT_S, distilled=True)).state_dict()
    torch.save({"model": dist, "args": ap.Namespace(smallest_ratio=0.25)}, d / "scala.pth")
    sv = {k: v for k, v in sd.items() if k != "pos_embed"}
    for i, size in enumerate((128, 160, 192, 224)):
        sv[f"pos_embed_list.{i}"] = 0.02 * torch.randn(1, 1 + (size // 16) ** 2, 384)
    torch.save({"model": sv}, d / "supervit.pth")


def run_row(index: int, d: Path) -> dict:
    """In a child process: load (and export) one row, report wall time and peak RSS."""
    torch.set_num_threads(1)
    from exporter.api import export_checkpoint_bundle, load
    from exporter.nn.config import VariantGrid

    name, file, fmt, options, export = ROWS[index]
    reset_peak()
    base = rss_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    loaded = load(d / file, fmt, **options) if file else None
    t_load, c_load = time.perf_counter() - t0, time.process_time() - c0
    t_export = c_export = 0.0
    if export:
        t1, c1 = time.perf_counter(), time.process_time()
        with tempfile.TemporaryDirectory() as out:
            manifest = export_checkpoint_bundle(loaded, VariantGrid(WIDTHS, (1.0,)), out)
        assert len(manifest["variants"]) == 4
        t_export, c_export = time.perf_counter() - t1, time.process_time() - c1
    return {"load_s": t_load, "export_s": t_export, "load_cpu": c_load, "export_cpu": c_export,
            "base_mb": base, "peak_mb": rss_mb("VmHWM"),
            "source": loaded.source_format if loaded else "-"}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_checkpoints(d)
        sizes = {p.name: p.stat().st_size / 2**20 for p in d.iterdir()}
        rows = []
        for i, (name, file, *_rest) in enumerate(ROWS):
            r = subprocess.run([sys.executable, __file__, "--row", str(i), str(d)], capture_output=True,
                               text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            if r.returncode:
                sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(name, m, flush=True)
            rows.append([name, f"{sizes[file]:.0f}" if file else "-", m["source"], f"{m['load_s']:.2f}",
                         f"{m['load_cpu']:.2f}", f"{m['export_s']:.1f}" if m["export_s"] else "-",
                         f"{m['export_cpu']:.1f}" if m["export_s"] else "-",
                         f"{m['load_s'] + m['export_s']:.2f}", f"{m['peak_mb']:.0f}",
                         f"{m['peak_mb'] - m['base_mb']:.0f}"])
    text = (
        "## Loading foreign checkpoints (issue 3)\n"
        f"`benchmarks/bench_loading.py`, {datetime.date.today()}, host: {host()}.\n"
        f"DeiT-S shape (384/12/6, 224 px, 1000 classes, 22M params), random weights; one process "
        f"per row, one thread. Export rows: {len(WIDTHS)} widths {WIDTHS} as validated ONNX through "
        f"`export_checkpoint_bundle`. Peak RSS is the process high-water mark counted from "
        f"after the imports (VmHWM reset); 'added' is that peak minus the RSS after imports. "
        f"CPU s is the process's own CPU time, steadier than wall time on a shared host (load "
        f"average {os.getloadavg()[0]:.1f} at the end of the run).\n\n"
        + md_table(["row", "file MB", "detected", "load s", "load CPU s", "export s", "export CPU s",
                    "wall s", "peak RSS MB",
                    "added MB"], rows)
    )
    print(text)
    write_section("loading", text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--row", type=int)
    parser.add_argument("dir", nargs="?")
    a = parser.parse_args()
    if a.row is not None:
        print(json.dumps(run_row(a.row, Path(a.dir))))
    else:
        main()
