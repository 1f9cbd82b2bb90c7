"""Evaluation sets for `export --eval-data`: held-out top-1 on the built-in digits, an image
folder (one sub-directory per class) or an ``.npz`` with normalized ``x`` and labels ``y``.

The readers are the calibration sources' (`calibration/sources.py`); an evaluation set needs
labels, and is turned into an `ImageSet` of [0, 1] pixels so every variant sees its own
resolution through the model's one `Preprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from calibration.data import ImageSet, Preprocess, digits
from calibration.sources import CalibrationError, _read_folder, _read_npz


def load_eval_set(source: str | Path, pre: Preprocess, img_size: int, class_names: Sequence[str],
                  limit: int | None = None) -> ImageSet:
    """Read an evaluation set and check its labels against the model.

    Args:
        source: ``builtin`` (digits held-out split, 10 classes), a directory with one
            sub-directory per class, or an ``.npz`` with ``x`` (N, C, H, W) normalized like the
            model's inputs and ``y`` (N,) class indices.
        pre: the model's preprocessing (to undo an ``.npz``'s normalization).
        img_size: the size folder images are resized to before stacking (the model's own).
        class_names: the model's labels; class folders named like them are matched by name,
            otherwise by sorted order.
        limit: keep the first ``limit`` samples (None: all).

    Raises:
        CalibrationError: missing source, no labels, labels outside the model's classes.
    """
    n_cls = len(class_names)
    name = str(source)
    if name == "builtin":
        data = digits("test")
        if n_cls != len(data.class_names):
            raise CalibrationError(f"--eval-data builtin is the 10 digit classes but the model has {n_cls} "
                                   "classes; pass an image folder (one sub-directory per class) or an .npz "
                                   "with x and y")
        return data
    path = Path(source).expanduser()
    if not path.exists():
        raise CalibrationError(f"evaluation data {path} does not exist; give 'builtin', a folder with one "
                               "sub-directory per class, or an .npz with x (normalized) and y (labels)")
    if path.is_dir():
        images, labels = _read_folder(path)
        if labels is None:
            raise CalibrationError(f"evaluation folder {path} has no class sub-directories; put each "
                                   "class's images in a sub-directory named like its label")
        dirs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if set(dirs) <= set(class_names):  # named like the model's labels: match by name
            labels = np.array([list(class_names).index(dirs[c]) for c in labels])
        x = np.stack([_resize(im, img_size, pre.resize) for im in images])
    elif path.suffix == ".npz":
        xn, labels = _read_npz(path, pre, None)
        if labels is None:
            raise CalibrationError(f"{path} has no labels 'y'; save np.savez(path, x=x, y=labels)")
        mean = np.asarray(pre.mean, np.float32)[None, :, None, None]
        std = np.asarray(pre.std, np.float32)[None, :, None, None]
        x = np.clip(xn * std + mean, 0.0, 1.0)  # back to [0, 1] pixels; Preprocess normalizes again
    else:
        raise CalibrationError(f"evaluation data {path} is neither a folder nor an .npz file")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_cls:
        raise CalibrationError(f"labels of {path} must be class indices in 0..{n_cls - 1} (the model has "
                               f"{n_cls} classes), got {labels.dtype} in [{labels.min()}, {labels.max()}]")
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    return ImageSet(path.name, np.ascontiguousarray(x, np.float32), labels.astype(np.int64), list(class_names))


def _resize(im: np.ndarray, size: int, mode: str) -> np.ndarray:
    if im.shape[-2:] == (size, size):
        return im
    t = F.interpolate(torch.from_numpy(im)[None], size=(size, size), mode=mode, align_corners=False)
    return t[0].numpy()
