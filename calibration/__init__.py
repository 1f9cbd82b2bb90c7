"""Data for calibration, evaluation and training: image sets and the shared preprocessing."""

from calibration.data import DIGITS_LABELS, ImageSet, Preprocess, digits

__all__ = ["DIGITS_LABELS", "ImageSet", "Preprocess", "digits"]
