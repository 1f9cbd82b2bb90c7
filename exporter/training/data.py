"""Training data: the built-in digits set or an ImageFolder directory (one sub-folder per
class, read with Pillow), always split into a training and a held-out part, and the light,
reproducible augmentation applied per batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from calibration.data import ImageSet, digits
from exporter.errors import SlimvitError, did_you_mean
from exporter.gate.images import image_errors, pillow

BUILTIN = ("digits",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_DIRS = (("train", "val"), ("train", "test"))


class DatasetError(SlimvitError):
    """A dataset folder is missing, empty or holds images that cannot be read."""


@dataclass(frozen=True)
class DataSplit:
    """The training and held-out parts of a dataset, and what loading had to fix."""

    train: ImageSet
    heldout: ImageSet
    notes: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return list(self.train.class_names)


def load_dataset(name: str, size: int, holdout: float = 0.2, seed: int = 0, limit: int = 0) -> DataSplit:
    """Load ``digits`` or an ImageFolder directory.

    Args:
        name: ``digits`` or a directory path.
        size: side length images of mixed sizes are resized to (the largest training resolution).
        holdout: fraction of each class kept for evaluation, unless the folder has
            ``train/`` and ``val/`` (or ``test/``) sub-folders.
        limit: keep only the first ``limit`` training images (0: all).

    Raises:
        DatasetError: the folder is missing or empty, or some images cannot be read.
    """
    if name in BUILTIN:
        split = DataSplit(digits("train", seed), digits("test", seed))
    else:
        split = load_image_folder(Path(name), size, holdout, seed)
    if limit:
        split = DataSplit(split.train.subset(np.arange(min(limit, len(split.train)))),
                          split.heldout, split.notes)
    return check_split(split, name)


def check_split(split: DataSplit, name: str) -> DataSplit:
    """At least one training and one held-out image per class; a one-class set gets a note
    (every prediction is right, so its accuracy says nothing)."""
    classes = split.class_names
    if not len(split.train):
        raise DatasetError(f'dataset "{name}" has no training images')
    held = split.heldout.labels.astype(np.int64)
    counts = np.bincount(held, minlength=len(classes)) if len(held) else np.zeros(len(classes), np.int64)
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(f'dataset "{name}" has no held-out image of class(es) '
                           f"{', '.join(empty[:8])}{' ...' if len(empty) > 8 else ''}; every class "
                           f"needs at least 2 images (one is held out for evaluation)")
    if len(classes) == 1:
        split.notes.append(f'dataset "{name}" has one class ({classes[0]}): every prediction is right, '
                           "so its 100% accuracy says nothing; add a second class")
    return split


def load_image_folder(root: Path, size: int, holdout: float, seed: int) -> DataSplit:
    if not root.is_dir():
        hint = did_you_mean(str(root), BUILTIN)
        raise DatasetError(f'dataset "{root}" is neither a built-in set ({", ".join(BUILTIN)}) nor a '
                           f"folder{hint}; pass --dataset digits or a folder with one sub-folder per class")
    for train_dir, test_dir in SPLIT_DIRS:
        if (root / train_dir).is_dir() and (root / test_dir).is_dir():
            classes = class_folders(root / train_dir)
            train, notes = read_images(root / train_dir, classes, size)
            test, more = read_images(root / test_dir, classes, size)
            return DataSplit(train, test, notes + more)
    classes = class_folders(root)
    data, notes = read_images(root, classes, size)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(len(classes)):
        members = np.flatnonzero(data.labels == c)
        n_test = min(len(members) - 1, max(1, round(len(members) * holdout)))
        test_idx.extend(rng.permutation(members)[:n_test])
    is_test = np.zeros(len(data), bool)
    is_test[test_idx] = True
    return DataSplit(data.subset(np.flatnonzero(~is_test), f"{data.name}-train"),
                     data.subset(np.flatnonzero(is_test), f"{data.name}-heldout"), notes)


def class_folders(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"dataset folder {root} has no class sub-folders; put each class's images "
                           f"in its own sub-folder (e.g. {root}/cat/1.png)")
    return classes


def read_images(root: Path, classes: list[str], size: int) -> tuple[ImageSet, list[str]]:
    """Read every image under ``root/<class>/`` as RGB in [0, 1]; mixed modes and sizes are
    converted (and counted in the notes), unreadable files are an error listing them."""

    Image = pillow()
    files = [(c, p) for c, name in enumerate(classes) for p in sorted((root / name).rglob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise DatasetError(f"dataset folder {root} has no images ({', '.join(IMAGE_SUFFIXES)}) in its "
                           f"class sub-folders {classes[:5]}")
    empty = [name for c, name in enumerate(classes) if not any(fc == c for fc, _ in files)]
    if empty:
        raise DatasetError(f"class folder(s) without images in {root}: {', '.join(empty[:5])}; "
                           f"add images or remove the folder")
    images, labels, bad, modes, sizes = [], [], [], 0, set()
    for c, path in files:
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode != "RGB":
                    modes += 1
                    im = im.convert("RGB")
                sizes.add(im.size)
                images.append(im.copy())
        except image_errors() as e:  # DecompressionBombError: over the pixel cap, never decoded
            bad.append(f"{path} ({type(e).__name__})")
            continue
        labels.append(c)
    if bad:
        raise DatasetError(f"{len(bad)} image(s) cannot be read: {'; '.join(bad[:3])}"
                           f"{' ...' if len(bad) > 3 else ''}; remove or re-save them")
    notes = []
    if modes:
        notes.append(f"converted {modes} of {len(images)} images to RGB")
    target = next(iter(sizes)) if len(sizes) == 1 else (size, size)
    if len(sizes) > 1:
        resized = sum(im.size != target for im in images)
        notes.append(f"resized {resized} of {len(images)} images of {len(sizes)} different sizes to {size}x{size}")
    arr = np.stack([np.asarray(im.resize(target, Image.BILINEAR) if im.size != target else im,
                               dtype=np.float32) for im in images]) / 255.0  # (N, H, W, 3)
    return ImageSet(root.name, arr.transpose(0, 3, 1, 2).copy(), np.array(labels, np.int64),
                    list(classes)), notes


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image (B, C, H, W) by its own whole-pixel (dy, dx), repeating the border."""
    B, _, H, W = x.shape
    ys = (torch.arange(H)[None] - dy[:, None]).clamp(0, H - 1)  # (B, H)
    xs = (torch.arange(W)[None] - dx[:, None]).clamp(0, W - 1)  # (B, W)
    out = x[torch.arange(B)[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def random_shifts(n: int, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 2) whole-pixel shifts in [-max_shift, max_shift], drawn from ``gen``."""
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)


def augmented_inputs(raw: torch.Tensor, shifts: torch.Tensor, resolutions: list[int],
                     max_shift: int, preprocess) -> dict[int, torch.Tensor]:
    """Preprocess ``raw`` at every resolution and apply the same per-image shifts, scaled to
    each resolution (``shifts`` are in pixels of the largest)."""
    out = {}
    top = max(resolutions)
    for r in resolutions:
        x = preprocess(raw, r)
        if max_shift:
            s = torch.round(shifts.float() * r / top).long()
            x = translate(x, s[:, 0], s[:, 1])
        out[r] = x
    return out
