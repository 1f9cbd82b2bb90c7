"""Calibration sources: the built-in digits, a directory of images, or an ``.npz`` of inputs.

Every source becomes a `CalibrationSet` that knows where it came from, how many samples it
holds and the seed that picked them, and hands out each variant's inputs at that variant's
resolution through the one `Preprocess` (so calibration sees exactly what apps feed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from calibration.data import Preprocess, digits
from exporter.errors import SlimvitError
from exporter.gate.arrays import members_of, read_npz
from exporter.gate.files import regular_file
from exporter.gate.images import image_errors, pillow

Warn = Callable[[str], None]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_SAMPLES = 128
MIN_SAMPLES = 32  # fewer gives noisy activation ranges; warn with the count


class CalibrationError(SlimvitError, ValueError):
    """Calibration data is missing, empty, or of the wrong shape, channels or value range."""


@dataclass(frozen=True)
class CalibrationSet:
    """Images to calibrate quantized artifacts with.

    Attributes:
        source: ``builtin``, a directory or an ``.npz`` path, as given.
        images: (C, H, W) float32 arrays; pixels in [0, 1], or already-normalized inputs when
            ``normalized`` (``.npz`` sources). Sizes may differ between images of a folder.
        labels: class indices, or None when the source has none.
        seed: the seed that picked and ordered the samples.
        normalized: the images are model inputs already; only resizing is applied.
    """

    source: str
    images: tuple[np.ndarray, ...]
    labels: np.ndarray | None
    seed: int
    normalized: bool = False

    def __len__(self) -> int:
        return len(self.images)

    def inputs(self, pre: Preprocess, resolution: int) -> np.ndarray:
        """The model inputs (N, C, resolution, resolution) float32 of one variant."""
        if len({im.shape for im in self.images}) == 1:
            batch = [torch.from_numpy(np.stack(self.images))]
        else:
            batch = [torch.from_numpy(im[None]) for im in self.images]
        out = []
        for x in batch:
            if self.normalized:
                # Resizing commutes with the per-channel affine normalization.
                if x.shape[-2:] != (resolution, resolution):
                    x = F.interpolate(x, size=(resolution, resolution), mode=pre.resize,
                                      align_corners=False)
                out.append(x)
            else:
                out.append(pre(x, resolution))
        return torch.cat(out).numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self), "seed": self.seed}


def load_calibration(source: str | Path, pre: Preprocess, samples: int = DEFAULT_SAMPLES,
                     seed: int = 0, warn: Warn | None = None) -> CalibrationSet:
    """Read a calibration source and check it against the model's preprocessing.

    Args:
        source: ``builtin`` (digits training split, never the held-out test split), a
            directory of images (ImageFolder class sub-directories, or flat), or an ``.npz``
            with ``x`` (N, C, H, W) already normalized and optionally ``y``.
        pre: the model's preprocessing (channels, normalization, resize).
        samples: how many samples to draw (fewer if the source has fewer).
        seed: picks which samples, reproducibly.
        warn: called with a message when the set is small or looks odd.

    Raises:
        CalibrationError: a missing or empty source, wrong shape, channels or value range.
    """
    if samples < 1:
        raise CalibrationError(f"--calibration-samples must be >= 1, but got {samples}")
    name = str(source)
    if name == "builtin":
        data = digits("train")
        images, labels, normalized = data.images, data.labels, False
    else:
        path = Path(source).expanduser()
        if path.exists() and not path.is_dir():
            regular_file(path, "calibration source", CalibrationError)  # no FIFO or device
        if not path.exists():
            raise CalibrationError(f"calibration source {path} does not exist; give 'builtin', a "
                                   "directory of images or an .npz file with 'x'")
        if path.is_dir():
            images, labels = _read_folder(path)
            normalized = False
        elif path.suffix == ".npz":
            images, labels = _read_npz(path, pre, warn)
            normalized = True
        else:
            raise CalibrationError(f"calibration source {path} is neither a directory nor an .npz "
                                   "file; give 'builtin', a directory of images or an .npz with 'x'")
    channels = len(pre.mean)
    bad = [i for i, im in enumerate(images) if im.ndim != 3 or im.shape[0] != channels]
    if bad:
        raise CalibrationError(f"calibration image {bad[0]} of {name} has shape "
                               f"{tuple(images[bad[0]].shape)}; the model takes {channels} channels "
                               f"as (N, {channels}, H, W)")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(images))[:samples]
    if len(pick) < MIN_SAMPLES and warn:
        warn(f"calibration uses only {len(pick)} sample(s) from {name}; {MIN_SAMPLES}+ give "
             "steadier activation ranges")
    chosen = tuple(np.ascontiguousarray(images[i], dtype=np.float32) for i in pick)
    return CalibrationSet(name, chosen, None if labels is None else np.asarray(labels)[pick],
                          seed, normalized)


def _read_folder(path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    """ImageFolder (one sub-directory per class, sorted) or a flat directory of images."""
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files = [(f, c) for c, d in enumerate(classes) for f in sorted(d.rglob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise CalibrationError(f"calibration directory {path} holds no images "
                               f"({', '.join(IMAGE_SUFFIXES)}), neither directly nor in class "
                               "sub-directories")
    images = [_read_image(f) for f, _ in files]
    labels = np.array([c for _, c in files]) if classes else None
    return images, labels


def _read_image(path: Path) -> np.ndarray:
    try:
        with pillow().open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    except image_errors() as e:  # DecompressionBombError: refused before decoding
        raise CalibrationError(f"cannot read calibration image {path}: {e}") from None
    return rgb.transpose(2, 0, 1)


def _read_npz(path: Path, pre: Preprocess, warn: Warn | None) -> tuple[np.ndarray, np.ndarray | None]:
    # only x and y are read, each checked by its .npy header first (shape, dtype, sizes)
    arrays = read_npz(path, ("x", "y"), "calibration set", CalibrationError)
    if "x" not in arrays:
        raise CalibrationError(f"{path} has no array 'x' (found: {', '.join(members_of(path)) or 'none'}); "
                               "save the normalized inputs as np.savez(path, x=x, y=labels)")
    x = arrays["x"]
    channels = len(pre.mean)
    if x.ndim != 4 or x.shape[1] != channels:
        hint = " (channels last? transpose to NCHW)" if x.ndim == 4 and x.shape[-1] == channels else ""
        raise CalibrationError(f"'x' in {path} has shape {x.shape}; expected (N, {channels}, H, W)"
                               f"{hint}")
    if len(x) == 0:
        raise CalibrationError(f"'x' in {path} holds no samples")
    if not np.isfinite(x).all():  # the dtype is numeric: the gate checked the header
        raise CalibrationError(f"'x' in {path} holds NaN or Inf; calibration inputs must be finite")
    _check_range(x.astype(np.float32), pre, path, warn)
    y = arrays.get("y")
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise CalibrationError(f"'y' in {path} has shape {y.shape}; expected ({len(x)},) labels")
    return x.astype(np.float32), y


def _check_range(x: np.ndarray, pre: Preprocess, path: Path, warn: Warn | None) -> None:
    """Normalized inputs lie near the normalized range of [0, 1] pixels; catch 0-255 and 0-1."""
    lo, hi = pre.normalized_range()
    xmin, xmax = float(x.min()), float(x.max())
    expected = (f"normalized inputs ((pixel/255 - mean) / std with mean {list(pre.mean)}, "
                f"std {list(pre.std)}) lie in [{lo:.2f}, {hi:.2f}]")
    if xmax > 2 * max(abs(lo), abs(hi)) + 10:
        raise CalibrationError(f"'x' in {path} spans [{xmin:.4g}, {xmax:.4g}]: it looks like raw "
                               f"0-255 pixels, but {expected}; divide by 255 and normalize first")
    span = hi - lo
    if xmin < lo - span or xmax > hi + span:
        raise CalibrationError(f"'x' in {path} spans [{xmin:.4g}, {xmax:.4g}], far outside what "
                               f"{expected}; normalize with the model's mean and std")
    if xmin >= 0 and xmax <= 1 and lo < -0.25 and warn:
        warn(f"'x' in {path} lies in [0, 1]: it may be unnormalized pixels, but {expected}")
