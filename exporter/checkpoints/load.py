"""Checkpoints: slimvit's own format (one `.safetensors` file, the model config and labels in
its metadata) and the loader registry that other formats (timm, HydraViT, Scala, SuperViT)
plug into."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from calibration.data import Preprocess
from exporter.checkpoints.base import CheckpointFormat
from exporter.checkpoints.hydravit import FORMAT as HYDRAVIT
from exporter.checkpoints.loaded import LoadedModel, load_tensors, warn_nonfinite
from exporter.checkpoints.reading import Container, read_container, read_safetensors
from exporter.checkpoints.scala import FORMAT as SCALA
from exporter.checkpoints.supervit import FORMAT as SUPERVIT
from exporter.checkpoints.timm import FORMAT as TIMM
from exporter.errors import CheckpointError, ConfigError, check_choice
from exporter.fileio import atomic_path
from exporter.gate.files import dumps_strict, loads_strict, regular_file
from exporter.gate.models import labels_list, preprocess_dict, structure_dict
from exporter.nn.config import ViTConfig
from exporter.nn.model import SlimmableViT
from exporter.nn.searched import NonUniformViT, Structure

# Foreign formats in detection order: the most specific layout first.
FOREIGN_FORMATS: tuple[CheckpointFormat, ...] = (SUPERVIT, HYDRAVIT, SCALA, TIMM)

FORMAT_TAG = "slimvit"
FORMAT_VERSION = "1"
RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")
STRUCTURE_KEY = "structure"  # metadata key of a searched (ViT-Slim) checkpoint


def save_checkpoint(model: SlimmableViT, path: str | Path, labels: list[str] | None = None,
                    preprocess: Preprocess | None = None, extra: dict[str, str] | None = None) -> Path:
    """Write slimvit's own checkpoint: weights as safetensors, config/labels in its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f'checkpoint path must end in ".safetensors", got "{path.name}"')
    pre = preprocess or Preprocess()
    meta = {
        "format": FORMAT_TAG, "format_version": FORMAT_VERSION,
        "config": dumps_strict(model.cfg.to_dict(), sort_keys=True),
        "labels": dumps_strict(labels or [str(i) for i in range(model.cfg.num_classes)]),
        "preprocess": dumps_strict({"mean": list(pre.mean), "std": list(pre.std), "resize": pre.resize,
                                  "crop": pre.crop}),
        **(extra or {}),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def save_searched(model: NonUniformViT, path: str | Path, labels: list[str], pre: Preprocess) -> Path:
    """A slimvit checkpoint of a searched (ViT-Slim) model: its structure in the metadata."""
    extra = {STRUCTURE_KEY: dumps_strict(model.structure.to_dict()), "budget_macs": str(model.budget)}
    return save_checkpoint(model, path, labels, pre, extra=extra)  # type: ignore[arg-type]


def load_slimvit(path: Path, **_: object) -> LoadedModel:
    """Read slimvit's own checkpoint (uniform or searched); every metadata entry is checked."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: not a slimvit checkpoint (no slimvit metadata); pass "
                              f"--checkpoint-format to read it as another format")
    try:
        cfg, labels, preprocess = read_metadata(meta)
        _check_size(cfg, tensors)
        structure = _meta_json(meta, STRUCTURE_KEY, None, dict)
        if structure is None:
            model = SlimmableViT(cfg)  # a config of the wrong types (true for an int) fails here
        else:  # a searched non-uniform model (ViT-Slim, `slimvit search`): same checks, its own module
            budget = float(meta.get("budget_macs", "1"))
            if not 0 < budget <= 1:  # also refuses NaN
                raise ValueError(f'"budget_macs" must be in (0, 1], but got {budget}')
            grid = (cfg.img_size // cfg.patch_size) ** 2  # every index is checked before allocating
            st = Structure.from_dict(structure_dict(structure, cfg.depth, cfg.num_heads, cfg.head_dim,
                                                    cfg.mlp_hidden, grid, '"structure"', ConfigError))
            model = NonUniformViT(cfg, st, budget)
    except ConfigError as e:
        raise CheckpointError(f"{path}: slimvit metadata holds a bad config: {e}") from None
    except (ValueError, TypeError, KeyError) as e:  # a hostile or damaged header, not a config we wrote
        raise CheckpointError(f"{path}: slimvit metadata is damaged ({e})") from None
    load_tensors(model, tensors, path)
    return LoadedModel(model.eval(), path.stem, FORMAT_TAG, labels, preprocess)


def read_metadata(meta: dict[str, str]) -> tuple[ViTConfig, list[str], Preprocess]:
    """The config, labels and preprocessing of slimvit metadata, checked by the gate (strict
    types, finite numbers, bounds; one label per class; one mean/std per channel).

    Raises:
        ConfigError: a config value is out of range or of the wrong type.
        ValueError: the metadata is damaged (missing config, not JSON, wrong shapes).
    """
    raw_cfg = _meta_json(meta, "config", None, dict)
    if raw_cfg is None:
        raise ValueError('no "config" entry')
    cfg = ViTConfig.from_dict(raw_cfg)
    labels = _meta_json(meta, "labels", None, list)
    labels = (labels_list(labels, cfg.num_classes, '"labels"', ConfigError) if labels is not None
              else [str(i) for i in range(cfg.num_classes)])
    pre = _meta_json(meta, "preprocess", {}, dict) or {}
    default = {"mean": [0.5] * cfg.in_chans, "std": [0.5] * cfg.in_chans}  # crop: absent in old files
    preprocess = Preprocess(**preprocess_dict({**default, **pre}, cfg.in_chans, '"preprocess"', ConfigError))
    return cfg, labels, preprocess


def _check_size(cfg: ViTConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a config far bigger than the weights before allocating it: a hostile header could
    otherwise ask for terabytes (the exact shape check follows in `load_tensors`)."""
    expected = cfg.depth * (4 + 2 * cfg.mlp_ratio) * cfg.embed_dim ** 2
    have = sum(t.numel() for t in tensors.values())
    if expected > 4 * have + 1_000_000:
        raise ValueError(f"the config describes ~{expected:.3g} parameters but the file holds {have}")


def _meta_json(meta: dict[str, str], key: str, default: object, kind: type) -> object:
    """A JSON value stored as a string in the safetensors metadata, of the expected type."""
    if key not in meta:
        return default
    value = loads_strict(meta[key], f'"{key}"', ConfigError)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f'"{key}" must be a JSON {kind.__name__}, not {type(value).__name__}')
    return value


# Loaders by checkpoint format: slimvit's own and the foreign ones of exporter/checkpoints/.
Loader = Callable[..., LoadedModel]
LOADERS: dict[str, Loader] = {FORMAT_TAG: load_slimvit, **{f.name: f.loader for f in FOREIGN_FORMATS}}
CHECKPOINT_FORMATS = ("auto", *LOADERS)
EXPECTS = {FORMAT_TAG: "a .safetensors file with slimvit metadata",
           **{f.name: f.expects for f in FOREIGN_FORMATS}}


def describe_keys(c: Container) -> str:
    """The keys a file holds, for error messages: top level, and one level down."""
    if not isinstance(c.obj, dict):
        return f"a {type(c.obj).__name__}, not a dict"
    parts = []
    for k, v in list(c.obj.items())[:10]:
        if isinstance(v, dict):
            sub = ", ".join(str(x) for x in list(v)[:4])
            parts.append(f"{k} ({len(v)} entries: {sub}{' ...' if len(v) > 4 else ''})")
        else:
            parts.append(str(k))
    more = f" ... ({len(c.obj)} in all)" if len(c.obj) > 10 else ""
    return ", ".join(parts) + more if parts else "nothing"


def detect_container(c: Container) -> str:
    """The format of a read checkpoint, from its metadata and keys.

    Raises:
        CheckpointError: no format matches; lists the keys found and what each format expects.
    """
    if c.meta.get("format") == FORMAT_TAG:
        return FORMAT_TAG
    for f in FOREIGN_FORMATS:
        if f.matches(c):
            return f.name
    expects = "; ".join(f"{name}: {what}" for name, what in EXPECTS.items())
    raise CheckpointError(f"{c.path}: cannot tell the checkpoint format; found keys: {describe_keys(c)}; "
                          f"expected one of ({expects}); pass --checkpoint-format if the layout is "
                          f"one of these")


def detect_format(path: str | Path) -> str:
    """Guess the checkpoint format of ``path`` from its metadata and keys."""
    return detect_container(read_container(Path(path)))


def load_model(path: str | Path, checkpoint_format: str = "auto",
               warn: Callable[[str], None] | None = None, **options: object) -> LoadedModel:
    """Load any supported checkpoint as a slimmable model.

    Args:
        path: the checkpoint file.
        checkpoint_format: ``auto`` or a registered format name.
        warn: called with warnings (NaN/Inf weights); defaults to the `warnings` module.
        options: format-specific settings: ``num_heads``, ``ema`` (EMA weights of a training
            checkpoint), ``min_ratio`` (Scala's smallest trained ratio).

    Raises:
        CheckpointError: the file is missing, unreadable or not a ViT.
        ConfigError: an unknown format name.
    """
    path = Path(path)
    regular_file(path, "checkpoint", CheckpointError)  # a directory or FIFO is not "not found"
    check_choice("checkpoint format", checkpoint_format, ["auto", *LOADERS])
    fmt = checkpoint_format
    if fmt == "auto":
        container = read_container(path)  # read once: detection and loading share it
        fmt = detect_container(container)
        if fmt != FORMAT_TAG:
            options["container"] = container
    if fmt == FORMAT_TAG and options.get("ema"):
        raise CheckpointError(f"{path}: --ema picks the EMA weights of a training checkpoint "
                              f"(hydravit, scala, timm, supervit), but this is a slimvit checkpoint; "
                              f"leave out --ema")
    loaded = LOADERS[fmt](path, **options)
    heads = options.get("num_heads")
    if fmt == FORMAT_TAG and heads is not None and heads != loaded.model.cfg.num_heads:
        raise CheckpointError(f"{path}: --num-heads {heads}, but this slimvit checkpoint states "
                              f"{loaded.model.cfg.num_heads} heads in its metadata; leave out --num-heads")
    warn_nonfinite(loaded.model.state_dict(), warn or (lambda m: warnings.warn(m, stacklevel=2)))
    return loaded
