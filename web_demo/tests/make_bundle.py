"""Build the web demo's test bundle: train the built-in digits model briefly, export an ONNX
bundle (with a short policy dwell so the browser test need not wait a minute), and save held-out
sample digits that every tier classifies correctly. Cached by a hash of the code it depends on.

usage: python web_demo/tests/make_bundle.py OUT_DIR
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

EPOCHS = 30
POLICY = {"hysteresis": {"dwell_s": 2}}


def code_hash() -> str:
    h = hashlib.sha256(f"{EPOCHS}{POLICY}".encode())
    for path in sorted([*ROOT.glob("exporter/**/*.py"), *ROOT.glob("calibration/*.py"), Path(__file__)]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build(out: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from calibration.data import DIGITS_LABELS, digits
    from exporter import training
    from exporter.bundle.export import export_bundle
    from exporter.checkpoints import LoadedModel
    from exporter.convert.quantize import quantize_options
    from exporter.demo import DEMO_TRAIN
    from exporter.nn.config import VariantGrid

    torch.set_num_threads(1)
    grid = VariantGrid(widths=(0.25, 0.5, 1.0), keep_rates=(1.0, 0.5), resolutions=(32,))
    cfg = dataclasses.replace(DEMO_TRAIN, epochs=EPOCHS, widths=grid.widths, keep_rates=grid.keep_rates,
                              resolutions=grid.resolutions)
    trained = training.train(cfg)
    loaded = LoadedModel(trained.model, "digits_vit", "slimvit", DIGITS_LABELS, trained.preprocess)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # fp32 and fp16 ONNX: the page lets the user pick the precision it runs.
    quant = quantize_options(("fp32", "fp16"), None, trained.preprocess)
    manifest = export_bundle(loaded, grid, tmp / "bundle", formats=("onnx",), eval_set=digits("test"),
                             policy=POLICY, quantize=quant)
    # Samples every tier gets right, with a clear margin, saved as 32x32 PNGs in [0, 255].
    test = digits("test")
    x32 = torch.nn.functional.interpolate(torch.from_numpy(test.images), size=(32, 32), mode="bilinear",
                                          align_corners=False).clamp(0, 1)
    margin = np.full(len(test), np.inf)
    with torch.no_grad():
        for vid in manifest["policy"]["tiers"]:
            s = next(s for s in grid.subnets(loaded.model.cfg) if s.id == vid)
            logits = loaded.model(trained.preprocess(x32.numpy(), s.resolution), s)
            true = logits[torch.arange(len(test)), torch.from_numpy(test.labels)]
            other = logits.clone()
            other[torch.arange(len(test)), torch.from_numpy(test.labels)] = -torch.inf
            margin = np.minimum(margin, (true - other.max(1).values).numpy())
    # Right under every tier; the clearest margins first, so the browser's resize cannot flip them.
    picked = [int(i) for i in np.argsort(-margin) if margin[i] > 0]
    if not picked:
        raise SystemExit("no held-out digit is classified right by every tier; train longer")
    by_digit = {}
    for i in picked:  # the clearest sample of each digit
        by_digit.setdefault(int(test.labels[i]), i)
    picked = [by_digit[d] for d in sorted(by_digit)]
    (tmp / "samples").mkdir(parents=True)
    samples = []
    for i in picked[:6]:
        name = f"digit_{i}.png"
        img = (x32[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(img).save(tmp / "samples" / name)
        samples.append({"file": name, "label": str(int(test.labels[i]))})
    (tmp / "samples" / "samples.json").write_text(json.dumps(samples, indent=1))
    write_report_fixture(tmp)
    (tmp / "stamp").write_text(code_hash())
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def write_report_fixture(tmp: Path) -> None:
    """A copy of the bundle, profiled here with ONNX Runtime (so the report has a latency chart
    and a measured policy), and its `slimvit report` page: tests/report.test.mjs opens it."""
    from exporter.measure.profile import profile_bundle
    from exporter.measure.report import write_report

    shutil.copytree(tmp / "bundle", tmp / "report_bundle")
    profile_bundle(tmp / "report_bundle", ["onnxruntime"], runs=10, warmup=2)
    write_report(tmp / "report_bundle", tmp / "report.html")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "web_demo/test-artifacts/fixture")
    stamp = out / "stamp"
    if stamp.exists() and stamp.read_text() == code_hash():
        print(f"test bundle up to date: {out}")
    else:
        build(out)
        print(f"built test bundle: {out}")
    if not (out / "bundle.svpack").is_file():  # the page under test loads the packed form
        from exporter.bundle.pack import pack_bundle

        pack_bundle(out / "bundle", out / "bundle.svpack")
        print(f"packed it: {out / 'bundle.svpack'}")


if __name__ == "__main__":
    main()
