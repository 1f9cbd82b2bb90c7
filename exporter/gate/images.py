"""Pillow with its decompression-bomb guard set from `limits`: an image whose header claims more
than `MAX_IMAGE_PIXELS` pixels is refused before it is decoded, as one line."""

from __future__ import annotations

from typing import Any

from exporter.gate import limits


def pillow() -> Any:
    """The ``PIL.Image`` module with the pixel cap set (Pillow raises past twice the value)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limits.MAX_IMAGE_PIXELS // 2
    return Image


def image_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises on an unreadable, damaged or oversized image."""
    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)
