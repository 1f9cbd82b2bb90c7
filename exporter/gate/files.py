"""Bounded reads and strict JSON for everything slimvit reads from or writes to disk.

Reading: a path must name a regular file (a directory, FIFO or device such as ``/dev/zero`` is
refused by `os.stat` before it is opened, and the file is opened non-blocking, so a FIFO that
appears in between cannot hang the read) and at most ``cap + 1`` bytes are ever read.
JSON: UTF-8 only, no NaN/Infinity literals, no float that overflows to infinity, no integer
longer than `MAX_INT_DIGITS` digits (Python refuses past 4300 with a bare ValueError), and no
nesting deeper than `MAX_JSON_DEPTH` (deep nesting is refused before the recursive parser runs).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from exporter.errors import SlimvitError
from exporter.gate import limits


class InputError(SlimvitError, ValueError):
    """A file or value from outside is unreadable, too big, or not what slimvit reads."""


def file_kind(mode: int) -> str:
    """A readable name of what a non-regular path is."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: str | os.PathLike[str], what: str, error: type[SlimvitError] = InputError) -> os.stat_result:
    """``os.stat`` of ``path``, which must exist and be a regular file (symlinks followed)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is {file_kind(st.st_mode)}, not a regular file") from None
    return st


def read_capped(path: str | os.PathLike[str], what: str, cap: int,
                error: type[SlimvitError] = InputError) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; never blocks, never reads more."""
    st = regular_file(path, what, error)
    if st.st_size > cap:
        raise error(f"{what} {path} has {st.st_size:,} bytes, over the {cap:,}-byte cap; "
                    f"it is not a file slimvit writes or reads")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a FIFO since the stat
            raise error(f"{what} {path} is not a regular file")
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:
        raise error(f"{what} {path} is over the {cap:,}-byte cap")
    return data


def read_text_capped(path: str | os.PathLike[str], what: str, cap: int,
                     error: type[SlimvitError] = InputError) -> str:
    """`read_capped`, decoded as UTF-8 (a BOM is dropped)."""
    data = read_capped(path, what, cap, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON document (iterative, so any depth is safe)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; JSON has no NaN or Infinity")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} overflows to infinity")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > limits.MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def loads_strict(data: bytes | str, what: str, error: type[SlimvitError] = InputError,
                 max_depth: int = limits.MAX_JSON_DEPTH) -> Any:
    """Parse strict JSON (see the module docstring); every failure is one ``error`` line."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what} is not UTF-8 (byte {e.start})") from None
    deep = f"{what} nests arrays/objects deeper than {max_depth} levels"
    try:
        doc = json.loads(data, parse_constant=_bad_constant, parse_float=_finite_float,
                         parse_int=_bounded_int)
    except RecursionError:  # the C parser's own depth guard, far past max_depth
        raise error(deep) from None
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except ValueError as e:
        raise error(f"{what} is not strict JSON ({str(e)[:200]})") from None
    if json_depth(doc) > max_depth:
        raise error(deep)
    return doc


def read_json(path: str | os.PathLike[str], what: str, cap: int = limits.MAX_JSON_BYTES,
              error: type[SlimvitError] = InputError) -> Any:
    """`read_capped` then `loads_strict`."""
    return loads_strict(read_capped(path, what, cap, error), f"{what} {path}", error)


def nonfinite_paths(obj: Any, prefix: str = "") -> list[str]:
    """JSON paths of every NaN or infinite float in a parsed document (iterative, any depth)."""
    found, stack = [], [(prefix, obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(where or "(root)")
        elif isinstance(value, dict):
            stack.extend((f"{where}/{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{where}/{i}" if where else str(i), v) for i, v in enumerate(value))
    return sorted(found)


class JSONWriteError(SlimvitError, ValueError):
    """slimvit was about to write a number JSON cannot hold (NaN or Infinity)."""


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with ``allow_nan=False``; a NaN/Infinity names its JSON path."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        bad = nonfinite_paths(obj)
        raise JSONWriteError(f"refusing to write non-finite number(s) (NaN or Infinity) at "
                             f"{', '.join(bad[:5]) or 'an unknown path'}; JSON cannot hold them") from None


def is_bundle_path(path: Path) -> Path | None:
    """The bundle directory (one holding manifest.json) that ``path`` lies in or is, else None."""
    try:
        p = path.resolve()
    except (OSError, RuntimeError):
        return None
    for d in (p, *p.parents):
        if (d / "manifest.json").is_file():
            return d
    return None


MAX_NODES = 1_000_000  # values in one parsed document (YAML aliases can repeat a subtree)


def check_plain(doc: Any, what: str, error: type[SlimvitError] = InputError,
                max_depth: int = limits.MAX_JSON_DEPTH) -> Any:
    """A parsed YAML/TOML/JSON document as strict JSON would hold it: string keys, finite floats,
    integers of at most `MAX_INT_DIGITS` digits, no deeper than ``max_depth``, at most
    `MAX_NODES` values (YAML alias bombs), no dates, sets or binary. Returns ``doc``."""
    stack, seen = [(doc, "", 0)], 0
    while stack:
        value, where, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise error(f"{what} holds over {MAX_NODES:,} values (repeated YAML aliases?)")
        if depth > max_depth:
            raise error(f"{what} nests deeper than {max_depth} levels")
        at = f" at {where}" if where else ""
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if abs(value) >= 10**limits.MAX_INT_DIGITS:  # compared, never printed (4300-digit limit)
                raise error(f"{what}: the integer{at} is out of range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise error(f"{what}: {value}{at} is not a finite number")
        elif isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise error(f"{what}: key {str(bad[0])[:40]!r}{at} is not a string")
            stack.extend((v, f"{where}/{k}" if where else k, depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}/{i}" if where else str(i), depth + 1) for i, v in enumerate(value))
        else:
            raise error(f"{what}: a {type(value).__name__}{at} is not a JSON value (quote dates and times)")
    return doc
