"""The seeds' claim, measured on the demo data: one slimmable network (one-shot training) vs
every width trained as its own model with the same per-model budget (recipe, epochs, batches).

Per width: held-out top-1 of the slimmable subnet and of its separately trained twin at full
tokens and the largest resolution, and the mean over the width's keep rates x resolutions;
plus the total wall and CPU time of each approach, measured side by side in one run.

    python benchmarks/bench_training.py [--epochs 40] [--recipe scala]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from datetime import UTC, datetime

import torch
from common import host, md_table, write_section  # noqa: I001  (common puts the repo on sys.path)

from calibration.data import digits
from exporter.demo import DEMO_TRAIN
from exporter.training import train, train_separate


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=DEMO_TRAIN.epochs)
    ap.add_argument("--recipe", default=DEMO_TRAIN.recipe)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = dataclasses.replace(DEMO_TRAIN, epochs=args.epochs, recipe=args.recipe)
    slim, slim_wall, slim_cpu = timed(lambda: train(cfg))
    sep, sep_wall, sep_cpu = timed(lambda: train_separate(cfg))
    res = max(cfg.resolutions)
    rows = []
    for dim, twin in sep.per_width.items():
        ids = list(twin.accuracies)
        top = f"w{dim}_k100_r{res}"
        mean_s = sum(slim.accuracies[i] for i in ids) / len(ids)
        mean_t = sum(twin.accuracies[i] for i in ids) / len(ids)
        rows.append([f"{dim / cfg.model_config(10).embed_dim:g} (embed {dim})",
                     f"{100 * slim.accuracies[top]:.1f}", f"{100 * twin.accuracies[top]:.1f}",
                     f"{100 * (slim.accuracies[top] - twin.accuracies[top]):+.1f}",
                     f"{100 * mean_s:.1f}", f"{100 * mean_t:.1f}", f"{100 * (mean_s - mean_t):+.1f}"])
    table = md_table(["width", f"slimmable k1.0 r{res}", "separate", "Δ p.p.", "slimmable mean (all keep x res)",
                      "separate mean", "Δ p.p."], rows)
    deltas = {dim: slim.accuracies[f"w{dim}_k100_r{res}"] - twin.accuracies[f"w{dim}_k100_r{res}"]
              for dim, twin in sep.per_width.items()}
    behind = [f"embed {d} ({100 * v:+.1f} p.p.)" for d, v in deltas.items() if v < -0.005]
    widths = "every width within 0.5 p.p. or above" if not behind else f"behind by > 0.5 p.p.: {', '.join(behind)}"
    verdict = (f"Goal (every width within 0.5 p.p. of its separate twin or above, the smallest clearly above, "
               f"at less total cost): smallest width {100 * deltas[min(deltas)]:+.1f} p.p.; "
               f"{widths}; "
               f"CPU cost {slim_cpu / sep_cpu:.2f}x of separate training.")
    cost = md_table(["approach", "models trained", "wall s", "CPU s"], [
        ["one slimmable network", 1, f"{slim_wall:.0f}", f"{slim_cpu:.0f}"],
        ["separate per width", len(sep.per_width), f"{sep_wall:.0f}", f"{sep_cpu:.0f}"]])
    md = (f"## Training: one slimmable network vs separately trained widths\n\n"
          f"`benchmarks/bench_training.py` on {host()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, 1 thread.\n"
          f"Data: digits ({len(digits('train'))} training / {len(digits('test'))} held-out images). "
          f"Recipe `{cfg.recipe}`, "
          f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g}, for the slimmable network and for *each* "
          f"separate model (same per-model budget; each separate model trains its own keep rates and "
          f"resolutions). Held-out top-1 in %.\n\n{table}\n\n{cost}\n\n{verdict}\n\n"
          f"CPU seconds are the fairer cost on a shared machine; wall seconds include waiting for other "
          f"processes.\n")
    print(md)
    write_section("training", md)


if __name__ == "__main__":
    main()
