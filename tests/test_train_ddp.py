"""The data-parallel path: `torchrun` with 2 CPU processes (gloo) runs the real `slimvit train`
command; both ranks end with identical weights, equal to a one-process run on the same global
batches up to float summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import yaml

from exporter.checkpoints import load_model
from exporter.training import TrainConfig, train

TINY_RUN = dict(train_limit=128, batch_size=32, epochs=2, warmup_epochs=0, lr=3e-3, widths=[0.5, 1.0],
                keep_rates=[1.0, 0.5], resolutions=[32, 24])


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each torchrun worker (OMP_NUM_THREADS=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY_RUN))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "exporter.cli", "train", "--config", str(tmp_path / "c.yaml"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    digests = results["rank_weights_sha256"]
    assert results["world_size"] == 2 and len(digests) == 2 and digests[0] == digests[1]

    single = train(TrainConfig.from_dict(TINY_RUN))
    ddp_model = load_model(out / "model.safetensors").model
    # The same arithmetic in another summation order: Adam turns float noise in near-zero
    # gradients into differences up to ~lr per step, so weights agree to ~1e-3 (measured 1.0e-3).
    diff = max(float((a - single.model.state_dict()[k]).abs().max()) for k, a in ddp_model.state_dict().items())
    assert diff < 5e-3, diff
    ddp_loss = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert torch.allclose(torch.tensor(ddp_loss), torch.tensor([h["loss"] for h in single.history]), rtol=1e-4)
    ddp_acc = json.loads((out / "results.json").read_text())["heldout_accuracy"]
    assert max(abs(ddp_acc[k] - v) for k, v in single.accuracies.items()) <= 3 / 359  # at most 3 images differ
    torch.set_num_threads(threads)
