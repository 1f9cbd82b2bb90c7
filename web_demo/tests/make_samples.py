"""Write the sample images the web demo ships (web_demo/samples): the first held-out scan of
each digit from scikit-learn's digits (the demo model's data), upsampled to 32 px like the
model's input, as PNGs plus samples.json. Run again only if the digits preprocessing changes.

usage: python web_demo/tests/make_samples.py [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np
    import torch
    from PIL import Image

    from calibration.data import digits

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "web_demo" / "samples"
    out.mkdir(parents=True, exist_ok=True)
    test = digits("test")  # held out: the demo model never trained on these
    x32 = torch.nn.functional.interpolate(torch.from_numpy(test.images), size=(32, 32), mode="bilinear",
                                          align_corners=False).clamp(0, 1)
    samples = []
    for d in range(10):
        i = int(np.flatnonzero(test.labels == d)[0])
        name = f"digit_{d}.png"
        Image.fromarray((x32[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out / name)
        samples.append({"file": name, "label": str(d)})
    (out / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")
    print(f"wrote {len(samples)} samples to {out}")


if __name__ == "__main__":
    main()
