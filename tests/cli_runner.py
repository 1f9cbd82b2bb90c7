"""Run the real `slimvit` entry point in this process, as a user would from a shell, and judge
the outcome: exit code, stderr lines, traceback, hang, and what changed on disk.

In-process keeps the CLI fuzz harness fast (no interpreter start per input); `main()` is the
very function the console script calls, so its error printing is the one under test."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from exporter.cli import main


class Hang(Exception):
    pass


@dataclass
class Outcome:
    code: int | None  # None: an exception escaped main() (a traceback for the user)
    out: str
    err: str
    crash: str = ""

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def _alarm(signum, frame):  # noqa: ANN001
    raise Hang("the command did not finish in time (a hang)")


def run_cli(*args: str, timeout: int = 60) -> Outcome:
    """``slimvit ARGS`` through `exporter.cli.main`; a hang raises `Hang` after ``timeout`` s."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_handler = sys.argv, signal.signal(signal.SIGALRM, _alarm)
    sys.argv = ["slimvit", *args]
    signal.alarm(timeout)
    code: int | None = 0
    crash = ""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Hang:
        raise
    except BaseException:  # noqa: BLE001 - what the user would see as a traceback
        code, crash = None, traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        sys.argv = old_argv
    return Outcome(code, out.getvalue(), err.getvalue(), crash)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every entry under ``root`` (not following symlinks) with its type, size and mtime."""
    skip_res = [os.path.abspath(s) for s in skip]
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if any(p == s or p.startswith(s + os.sep) for s in skip_res):
                continue
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            found[os.path.relpath(p, root)] = (kind, st.st_size if stat.S_ISREG(st.st_mode) else 0,
                                               st.st_mtime_ns if stat.S_ISREG(st.st_mode) else 0)
    return found


def assert_user_error(o: Outcome, codes: tuple[int, ...] = (2,), allow_ok: bool = False) -> None:
    """A user error: the expected exit code, one line on stderr, no traceback."""
    assert o.code is not None, f"traceback:\n{o.crash}"
    assert "Traceback" not in o.err + o.out, o.err
    if allow_ok and o.code == 0:
        return
    assert o.code in codes, (o.code, o.err, o.out)
    if o.code == 2:  # informational lines ("loaded ...") may come first; the error is one last line
        lines = o.error_lines
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], lines
