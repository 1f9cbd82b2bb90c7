"""Errors a user can cause. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SlimvitError(Exception):
    """Base class for every error caused by user input (bad file, bad flag, bad data)."""


class ConfigError(SlimvitError, ValueError):
    """A configuration value is out of range or unknown."""


class CheckpointError(SlimvitError):
    """A checkpoint cannot be read or does not describe a ViT slimvit understands."""


class ValidationError(SlimvitError):
    """An exported artifact does not match PyTorch within tolerance."""


class ExportError(SlimvitError):
    """A converter cannot turn a variant into a format (names the variant, the format and the op)."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest valid name, or '' if none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def check_choice(what: str, value: str, valid: Iterable[str]) -> str:
    """Raise ConfigError unless ``value`` is one of ``valid``; return it otherwise."""
    valid = list(valid)
    if value not in valid:
        raise ConfigError(
            f'"{what}" must be one of {{{", ".join(valid)}}}, but got "{value}"'
            f"{did_you_mean(value, valid)}"
        )
    return value
