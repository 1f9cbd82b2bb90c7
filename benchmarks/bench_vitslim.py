"""Issue 12 rows: a ViT-Slim searched (non-uniform) structure against the uniform width variant
at the same MACs.

Accuracy: one teacher (the demo shape, trained here briefly, or --teacher); the uniform variant
is its HydraViT half width (first 2 of 4 heads), the search gets that variant's MACs as its
budget. The uniform variant is fine-tuned for as many epochs as the search spends (mask
learning + fine-tune), with the same loss (cross-entropy + KL to the full model). Latency:
ONNX Runtime CPU, batch 1, one thread, interleaved rounds, best median; at the demo shape and at
DeiT-Ti shape (random weights, a structure from random masks at the 2-of-3-heads MACs), so a
searched structure's MAC saving is checked to be a real speed-up."""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_sit import quick_teacher  # noqa: E402
from benchmarks.common import host, md_table, time_fn, write_section  # noqa: E402
from calibration.data import Preprocess, digits  # noqa: E402
from exporter.convert.formats import get_format  # noqa: E402
from exporter.nn.config import Variant, ViTConfig  # noqa: E402
from exporter.nn.cost import mac_count  # noqa: E402
from exporter.nn.extract import extract_variant, static_spec  # noqa: E402
from exporter.nn.model import SlimmableViT  # noqa: E402
from exporter.nn.searched import full_macs  # noqa: E402
from exporter.training.search import (  # noqa: E402
    Masks,
    SearchConfig,
    extract_structure,
    finetune,
    search,
    search_data,
    structure_for_budget,
)

SEARCH_EPOCHS, FINETUNE_EPOCHS, ROUNDS, RUNS = 3, 3, 3, 30


def latencies(modules: dict[str, torch.nn.Module], res: int, tmp: Path) -> dict[str, float]:
    onnx = get_format("onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, res, res)).astype(np.float32)
    sessions = {}
    for name, module in modules.items():
        path = tmp / f"{name}-{res}.onnx"
        onnx.export(module.eval(), x, path, {})
        sessions[name] = onnx.session(path, threads=1)
    best = {k: float("inf") for k in sessions}
    for _ in range(ROUNDS):
        for k, sess in sessions.items():
            best[k] = min(best[k], time_fn(lambda sess=sess: sess.run(None, {"pixel_values": x}), 5, RUNS))
    return best


@torch.no_grad()
def top1(module: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    return float((module.eval()(x).argmax(1).numpy() == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", help="a digits checkpoint of the demo shape (default: train one here)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pre = Preprocess()
    if args.teacher:
        from exporter.checkpoints import load_model

        teacher = load_model(args.teacher).model
    else:
        teacher = quick_teacher()
    cfg = teacher.cfg
    half = teacher.subnet(Variant(0.5, 1.0, cfg.img_size))
    budget = mac_count(static_spec(teacher, half)) / full_macs(cfg)
    data = search_data("builtin", pre, cfg.img_size)
    test = digits("test")
    x_test = pre(test.images, cfg.img_size)

    searched = search(teacher, data, SearchConfig(budget_macs=budget, search_epochs=SEARCH_EPOCHS,
                                                  finetune_epochs=FINETUNE_EPOCHS))
    uniform = extract_variant(teacher, half)
    acc_uniform_raw = top1(uniform, x_test, test.labels)
    finetune(uniform, teacher, data, SearchConfig(finetune_epochs=SEARCH_EPOCHS + FINETUNE_EPOCHS))
    full = extract_variant(teacher, Variant())
    acc = {"full": top1(full, x_test, test.labels), "uniform": top1(uniform, x_test, test.labels),
           "searched": top1(searched.net, x_test, test.labels)}
    macs = {"full": full_macs(cfg), "uniform": mac_count(static_spec(teacher, half)),
            "searched": mac_count(searched.spec)}
    params = {"full": sum(p.numel() for p in full.parameters()),
              "uniform": sum(p.numel() for p in uniform.parameters()),
              "searched": sum(p.numel() for p in searched.net.parameters())}
    tmp = Path(tempfile.mkdtemp())
    lat = latencies({"full": full, "uniform": uniform, "searched": searched.extract()}, cfg.img_size, tmp)

    torch.manual_seed(0)
    deit = SlimmableViT(ViTConfig(embed_dim=192, depth=12, num_heads=3)).eval()
    two_heads = deit.subnet(Variant(2 / 3))
    deit_budget = mac_count(static_spec(deit, two_heads)) / full_macs(deit.cfg)
    masks = Masks(deit.cfg)
    with torch.no_grad():
        for m in masks.parameters():
            m.copy_(torch.rand_like(m))
    st = structure_for_budget(masks, deit.cfg, deit_budget)
    deit_mods = {"full": extract_variant(deit, Variant()), "uniform": extract_variant(deit, two_heads),
                 "searched": extract_structure(deit, st)}
    deit_macs = {"full": full_macs(deit.cfg), "uniform": mac_count(static_spec(deit, two_heads)),
                 "searched": mac_count(deit_mods["searched"].spec)}
    lat_deit = latencies(deit_mods, 224, tmp)

    dims = searched.structure.layer_dims()
    layers = "; ".join(f"{d.num_heads}x{d.head_dim} heads, {d.mlp_hidden} MLP" for d in dims)
    rows = [[k, f"{macs[k] / 1e6:.3f}", f"{macs[k] / macs['full']:.3f}", f"{params[k]:,}",
             f"{100 * acc[k]:.1f}", f"{lat[k]:.3f}"] for k in ("full", "uniform", "searched")]
    rows_deit = [[k, f"{deit_macs[k] / 1e9:.3f}", f"{deit_macs[k] / deit_macs['full']:.3f}", f"{lat_deit[k]:.2f}",
                  f"{lat_deit[k] / lat_deit['full']:.3f}"] for k in ("full", "uniform", "searched")]
    md = "\n".join([
        "## ViT-Slim: searched structure vs uniform variant at the same MACs (issue 12)",
        "",
        f"`benchmarks/bench_vitslim.py`, {datetime.date.today()}, {host()}; {time.time() - t0:.0f} s.",
        "",
        f"Demo shape (64 dim, 4 blocks, 4 heads, 32 px), teacher"
        f"{' ' + Path(args.teacher).name if args.teacher else ': 12 epochs of cross-entropy'}. Uniform = "
        f"HydraViT half width (2 heads, embed 32; as extracted {100 * acc_uniform_raw:.1f}% top-1, then "
        f"{SEARCH_EPOCHS + FINETUNE_EPOCHS} epochs of fine-tuning). Searched = `slimvit search --budget-macs "
        f"{budget:.3f}` ({SEARCH_EPOCHS} epochs of mask learning, {FINETUNE_EPOCHS} of fine-tuning): "
        f"{layers}; {len(searched.structure.token_positions)} of {(cfg.img_size // cfg.patch_size) ** 2} "
        f"patch positions. Held-out digits top-1, {len(test)} images; ONNX Runtime ms, 1 thread.",
        "",
        md_table(["model", "MMACs", "MACs / full", "params", "top-1 %", "ms"], rows),
        "",
        f"DeiT-Ti shape (192 dim, 12 blocks, 224 px, random weights; a structure from random masks at the "
        f"2-of-3-heads budget {deit_budget:.3f}): does a non-uniform structure turn its MAC saving into "
        f"latency like the uniform variant does?",
        "",
        md_table(["model", "GMACs", "MACs / full", "ms", "ms / full"], rows_deit),
    ])
    print(md)
    write_section("vitslim", md)


if __name__ == "__main__":
    main()
