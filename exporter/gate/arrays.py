"""`.npz` files read member by member, each checked by its header before it is loaded: only the
members asked for are read; each must be a plain ``.npy`` whose header (shape, dtype) agrees with
its uncompressed size, within `MAX_NPZ_MEMBER_BYTES`, compressed no more than `MAX_NPZ_RATIO`
times (a zip bomb inflates far past that), and of a numeric dtype (no objects, no structured
records)."""

from __future__ import annotations

import math
import os
import zipfile
from typing import Any

import numpy as np

from exporter.errors import SlimvitError
from exporter.gate import limits
from exporter.gate.files import InputError, regular_file


def read_npz(path: str | os.PathLike[str], names: tuple[str, ...], what: str,
             error: type[SlimvitError] = InputError) -> dict[str, np.ndarray]:
    """The members ``names`` (those present) of an ``.npz``; every other member is left unread."""
    regular_file(path, what, error)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise error(f"cannot read {what} {path} as .npz ({e})") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        members = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
        for name in names:
            info = members.get(name)
            if info is not None:
                out[name] = _read_member(zf, info, f"'{name}' in {path}", error)
    return out


def members_of(path: str | os.PathLike[str]) -> list[str]:
    """Member names of an .npz (for messages), without reading any."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str,
                 error: type[SlimvitError]) -> np.ndarray:
    if info.file_size > limits.MAX_NPZ_MEMBER_BYTES:
        raise error(f"{what} inflates to {info.file_size:,} bytes, over the "
                    f"{limits.MAX_NPZ_MEMBER_BYTES:,}-byte cap")
    if info.compress_size and info.file_size / info.compress_size > limits.MAX_NPZ_RATIO:
        raise error(f"{what} is compressed {info.file_size // info.compress_size}:1; refusing a "
                    f"possible zip bomb (over {limits.MAX_NPZ_RATIO}:1)")
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
                raise error(f"{what} has dtype {dtype}; expected a plain numeric array (float32), "
                            f"not records or objects")
            if dtype.kind not in "biuf":
                raise error(f"{what} has dtype {dtype}; expected numbers (float32)")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise error(f"{what} claims shape {shape} ({nbytes:,} bytes) but holds "
                            f"{info.file_size:,}; the file is damaged")
            data = f.read(nbytes)  # exactly what the checked header says, never more
            if len(data) != nbytes:
                raise error(f"{what} is truncated ({len(data):,} of {nbytes:,} bytes)")
            return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
    except SlimvitError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise error(f"cannot read {what}: {str(e)[:200]}") from None


def describe(arrays: dict[str, Any]) -> str:
    return ", ".join(arrays) or "none"
