"""Reading foreign checkpoint files without running code from them.

`.safetensors` files hold tensors only. Every other file (`.pth`, `.pt`, `.bin`) is read with
``torch.load(weights_only=True)``, which refuses any pickle that would import a function or a
class outside a short allowlist; such a file is refused, never unpickled."""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporter.errors import CheckpointError
from exporter.gate.files import loads_strict

# Training scripts (timm's CheckpointSaver, DeiT/Scala's main.py) store their argparse
# options beside the weights; a Namespace is a plain attribute bag and safe to rebuild.
SAFE_GLOBALS = [argparse.Namespace]
DDP_PREFIX = "module."
MAX_HEADER_BYTES = 16 << 20  # a safetensors header larger than this is refused
REFUSALS = ("GLOBAL", "unrecognized function", "allowlisted")


@dataclass
class Container:
    """What a checkpoint file holds: its top-level object and (safetensors) metadata."""

    path: Path
    obj: Any
    meta: dict[str, str] = field(default_factory=dict)

    def top_keys(self) -> list[str]:
        return [str(k) for k in self.obj] if isinstance(self.obj, Mapping) else []


def read_container(path: Path) -> Container:
    """Read a checkpoint file into memory, safely.

    Raises:
        CheckpointError: the file is truncated or corrupt, or it needs arbitrary code to unpickle.
    """
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path)
        return Container(path, tensors, meta)
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            # Zip-format files are memory-mapped: tensors are paged in as they are copied.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=magic == b"PK\x03\x04")
    except pickle.UnpicklingError as e:
        text = str(e)
        # Refusals name a global or a callable; anything else is a damaged byte stream.
        if any(sign in text for sign in REFUSALS):
            what = re.search(r"GLOBAL (\S+)", text)
            raise CheckpointError(
                f"{path}: refused: the file needs arbitrary code to unpickle"
                f"{f' ({what.group(1)})' if what else ''}; slimvit only loads plain tensors "
                f"(torch.load weights_only=True); re-save its state dict with safetensors or "
                f"torch.save(model.state_dict())") from None
        noise = ("Weights only", "Please file", "Check the documentation")
        detail = [ln for ln in text.splitlines() if ln.strip() and not any(n in ln for n in noise)]
        raise CheckpointError(f"{path}: cannot unpickle ({(detail or ['no detail'])[0][:160]}); "
                              f"the file is truncated or corrupt") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError ... on damaged files
        first = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointError(f"{path}: cannot read ({type(e).__name__}{': ' + first if first else ''}); "
                              f"the file is truncated or corrupt") from None
    return Container(path, obj)


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of names to tensors."""
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def clean_state_dict(obj: Any, where: str, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, with DDP's ``module.`` prefix removed.

    Raises:
        CheckpointError: ``obj`` is not a mapping of names to tensors.
    """
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: {where} is not a state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {where} holds non-tensor entries: {', '.join(bad[:6])}")
    tensors = dict(obj)
    if all(k.startswith(DDP_PREFIX) for k in tensors):
        tensors = {k[len(DDP_PREFIX):]: v for k, v in tensors.items()}
    return tensors


def pick_state_dict(c: Container, keys: tuple[str, ...], fmt: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict under the first of ``keys`` the container has, or the container itself
    if it is a flat state dict; returns it and where it was found."""
    if is_state_dict(c.obj):
        return clean_state_dict(c.obj, "the file", c.path), "the file"
    if isinstance(c.obj, Mapping):
        for key in keys:
            if c.obj.get(key) is not None:
                return clean_state_dict(c.obj[key], f'"{key}"', c.path), key
    found = ", ".join(c.top_keys()[:12]) or type(c.obj).__name__
    raise CheckpointError(f"{c.path}: no state dict for format {fmt}: expected a flat state dict "
                          f"or one under {' / '.join(repr(k) for k in keys)}; found {found}")


def option_from_args(c: Container, name: str) -> Any:
    """A training option stored beside the weights (``args``), or None."""
    args = c.obj.get("args") if isinstance(c.obj, Mapping) else None
    if isinstance(args, Mapping):
        return args.get(name)
    return getattr(args, name, None)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata, refusing truncated files and oversize headers."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: file is truncated ({size} bytes); not a safetensors file")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or n + 8 > size:
            raise CheckpointError(f"{path}: safetensors header claims {n} bytes but the file has "
                                  f"{size}; the file is truncated or corrupt")
        header = loads_strict(f.read(n), f"{path}: safetensors header", CheckpointError, max_depth=4)
        meta = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CheckpointError(f"{path}: safetensors metadata must map names to strings; the file is corrupt")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors ({e}); the file is truncated or corrupt") from None
    return tensors, meta
