"""Image sets and the one preprocessing implementation shared by training, calibration,
evaluation and the manifest's `input` section (so apps reproduce it exactly)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from exporter.errors import ConfigError


@dataclass(frozen=True)
class Preprocess:
    """Images in [0, 1], (N, C, H, W) -> resized to a variant's resolution, normalized.

    Attributes:
        mean, std: per-channel normalization applied after resizing.
        resize: interpolation used to reach the variant's resolution (``bilinear``).
        crop: center-crop fraction: the image is resized to ``resolution / crop`` and its
            center ``resolution`` square kept (ImageNet evaluation uses 0.875); 1.0 = no crop.
    """

    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: str = "bilinear"
    crop: float = 1.0

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ConfigError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, but got {self.std}")
        if not 0 < self.crop <= 1:
            raise ConfigError(f'"crop" must be in (0, 1], but got {self.crop}')

    def __call__(self, images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise ConfigError(f"expected images of shape (N, {len(self.mean)}, H, W), got {tuple(x.shape)}")
        return self.normalize(self.resize_crop(x, resolution))

    def resize_crop(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        """Resize (N, C, H, W) to ``resolution / crop`` and keep the center square."""
        size = resolution if self.crop == 1.0 else round(resolution / self.crop)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode=self.resize, align_corners=False)
        if size != resolution:
            top = (size - resolution) // 2
            x = x[..., top:top + resolution, top:top + resolution]
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def describe(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "value_range": [0.0, 1.0],
                "resize": f"{self.resize} (align_corners=False) to the variant's resolution",
                "crop": self.crop}

    def normalized_range(self) -> tuple[float, float]:
        """The range normalized inputs take when pixels lie in [0, 1]."""
        lo = min((0.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        hi = max((1.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        return lo, hi


@dataclass(frozen=True)
class ImageSet:
    """Images in [0, 1] as (N, C, H, W) float32 with integer labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray, name: str | None = None) -> ImageSet:
        return ImageSet(name or self.name, self.images[idx], self.labels[idx], self.class_names)


DIGITS_LABELS = [str(i) for i in range(10)]


def digits(split: str = "test", seed: int = 0, test_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), shipped with
    scikit-learn, so it works offline. Gray is repeated into 3 channels like a camera frame.

    The held-out split is fixed by ``seed`` and stratified per class.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ConfigError(f'"split" must be one of {{train, test, all}}, but got "{split}"')
    raw = load_digits()
    images = (raw.images.astype(np.float32) / 16.0)[:, None].repeat(3, axis=1)  # (N, 3, 8, 8)
    labels = raw.target.astype(np.int64)
    if split == "all":
        return ImageSet("digits", images, labels, DIGITS_LABELS)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test_idx.extend(rng.permutation(members)[: round(len(members) * test_fraction)])
    is_test = np.zeros(len(labels), bool)
    is_test[test_idx] = True
    idx = np.flatnonzero(is_test if split == "test" else ~is_test)
    return ImageSet(f"digits-{split}", images[idx], labels[idx], DIGITS_LABELS)
