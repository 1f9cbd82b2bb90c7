"""How `slimvit --help` shows flags and arguments.

typer 0.29 writes a type after every option, `<bool>` on flags too, where a flag takes no
value, and wraps required arguments in braces in the usage line (``{bundle}``). Here flags
show no type and the usage line names arguments the usual way (``BUNDLE``, ``[OUT]``).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

_option_type = TyperOption.display_type_rich


def _display_type_rich(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:  # a flag takes no value: nothing to show
        return None
    return _option_type(self, ctx=ctx)


def _usage_display_name(self: TyperArgument) -> str:
    name = (self.metavar or self.name or "").upper()
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def install() -> None:
    """Apply both changes (idempotent; called when the app is built)."""
    TyperOption.display_type_rich = _display_type_rich  # type: ignore[method-assign]
    TyperArgument._usage_display_name = _usage_display_name  # type: ignore[method-assign]
