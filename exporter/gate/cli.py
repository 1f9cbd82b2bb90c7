"""CLI numbers through the gate: every int and float a command receives is checked against
`limits.CLI_BOUNDS` (by parameter name) before the command body runs.

typer parses ``nan``, ``inf`` and ``-5`` as valid floats and ints; instead of one check per
option in every command, `gate_app` wraps each registered command callback once. The wrapper
keeps the signature (``functools.wraps``), so typer builds the same options and help.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from exporter.errors import ConfigError
from exporter.gate import limits


def check_number(name: str, value: Any) -> None:
    """Raise ConfigError unless the flag ``name`` (python name) holds a number within bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    flag = "--" + name.replace("_", "-")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, but got {value}")
    lo, hi, lo_inclusive = limits.CLI_BOUNDS.get(name, (0, limits.MAX_CLI_INT, True))
    if isinstance(value, float) and name not in limits.CLI_BOUNDS:
        return  # a float flag without stated bounds: finite is enough
    ok = (lo <= value if lo_inclusive else lo < value) and value <= hi
    if not ok:
        low = "[" if lo_inclusive else "("
        raise ConfigError(f"{flag} must be in {low}{_num(lo)}, {_num(hi)}], but got {_num(value)}")


def check_argv(argv: list[str]) -> None:
    """Refuse an empty option value (``--out ""``, ``--out=``) before typer parses it: a Path option
    turns "" into ".", so the command would write into the current directory. No slimvit option
    takes an empty string."""
    for i, arg in enumerate(argv):
        if arg.startswith("--") and (arg.endswith("=") or (i + 1 < len(argv) and argv[i + 1] == ""
                                                           and "=" not in arg)):
            raise ConfigError(f"{arg.rstrip('=')} is empty; give it a value")
    if "" in argv:
        raise ConfigError("an argument is empty; give it a value")


def _num(x: float) -> str:
    """A bound or value as the user would type it: -5, 0.5, 10000000."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def gated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every numeric argument checked by `check_number` first."""
    if getattr(fn, "__slimvit_gated__", False):
        return fn
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, value in sig.bind_partial(*args, **kwargs).arguments.items():
            check_number(name, value)
        return fn(*args, **kwargs)

    wrapper.__slimvit_gated__ = True  # type: ignore[attr-defined]
    return wrapper


def gate_app(app: Any) -> None:
    """Wrap every command of a typer app and of its sub-apps (once)."""
    for info in app.registered_commands:
        if info.callback is not None:
            info.callback = gated(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            gate_app(group.typer_instance)
