"""The `slimvit` command line. Each command parses its flags and calls one library function.

The commands live in `exporter.commands`; this module is the entry point (`slimvit`,
`python -m exporter.cli`) and turns errors into one line on stderr and an exit code.
"""

from __future__ import annotations

import sys

import click
import typer

# Importing a command module registers its commands; `slimvit --help` lists them in this order.
import exporter.commands.export  # noqa: F401  variants, export, demo, formats
import exporter.commands.bundle  # noqa: F401  verify, sign, keygen, bundle install-*
import exporter.commands.pack  # noqa: F401  pack, unpack
import exporter.commands.train  # noqa: F401  train
import exporter.commands.policy  # noqa: F401  select, simulate, policy *
import exporter.commands.measure  # noqa: F401  profile, ingest, report
import exporter.commands.search  # noqa: F401  search
import exporter.commands.cache  # noqa: F401  cache info|clear
from exporter.commands.common import app, console, say
from exporter.errors import SlimvitError
from exporter.gate.cli import check_argv, gate_app

gate_app(app)  # every int/float flag is bounded and finite before a command runs

# typer >= 0.24 vendors click: catch both its exception classes and click's own.
_CLICK_ERRORS = tuple({c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"}
                      | {click.exceptions.ClickException})
_EXITS = (typer.Exit, click.exceptions.Exit)
_ABORTS = (typer.Abort, click.exceptions.Abort, KeyboardInterrupt)


def one_line(text: str) -> str:
    """A message on one line: inner newlines become "; " (a message is never a block)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        check_argv(sys.argv[1:])
        # Without standalone mode click returns a `typer.Exit` code instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except SlimvitError as e:
        say("error:", one_line(str(e)), "red")
        sys.exit(2)
    except _CLICK_ERRORS as e:  # a usage error: one line, like every other user error
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) is not None else ""
        say("error:", one_line(e.format_message()) + hint, "red")
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, permission denied on --out ...: the user's to fix
        where = f" {e.filename}" if e.filename else ""
        say("error:", one_line(f"cannot read or write{where}: {e.strerror or e}"), "red")
        sys.exit(2)
    except _ABORTS:
        console.print("aborted")
        sys.exit(130)
    except _EXITS as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
