"""Typed models (pydantic v2, strict) of the documents slimvit reads from outside: a checkpoint's
model config, labels, preprocessing and searched structure, and the numbers of a training config.

Strict means no coercion: ``"false"`` is not a bool, ``1.7`` is not an int, ``"1e-6"`` is not a
float; every float must be finite and every int lies within the bounds of `limits`. A failure is
one `InputError` line naming the field, what it must be and what was given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticError

from exporter.errors import SlimvitError
from exporter.gate import limits
from exporter.gate.files import InputError

STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)


def _int(lo: int, hi: int) -> Any:
    return Annotated[StrictInt, Field(ge=lo, le=hi)]


def _float(lo: float | None = None, hi: float | None = None, gt: float | None = None) -> Any:
    return Annotated[StrictFloat, Field(ge=lo, le=hi, gt=gt, allow_inf_nan=False)]  # ints accepted


class ModelConfigIn(BaseModel):
    """`exporter.nn.config.ViTConfig` as read from a checkpoint or a config file."""

    model_config = STRICT

    img_size: _int(1, limits.MAX_IMG_SIZE) = 224
    patch_size: _int(1, limits.MAX_PATCH_SIZE) = 16
    in_chans: _int(1, limits.MAX_IN_CHANS) = 3
    num_classes: _int(1, limits.MAX_CLASSES) = 1000
    embed_dim: _int(1, limits.MAX_EMBED_DIM) = 768
    depth: _int(1, limits.MAX_DEPTH) = 12
    num_heads: _int(1, limits.MAX_HEADS) = 12
    mlp_ratio: _float(gt=0, hi=limits.MAX_MLP_RATIO) = 4.0
    qkv_bias: StrictBool = True
    extra_resolutions: Annotated[list[_int(1, limits.MAX_IMG_SIZE)],
                                 Field(max_length=limits.MAX_EXTRA_RESOLUTIONS)] = []
    slicing: Literal["heads", "ratio"] = "heads"
    min_ratio: _float(gt=0, hi=1) = 0.25
    ln_eps: _float(*limits.LN_EPS_RANGE) = 1e-6
    distilled: StrictBool = False
    prune_blocks: list[_int(0, limits.MAX_DEPTH - 1)] | None = None
    keep_rule: Literal["supervit", "evit"] = "supervit"
    fuse_tokens: StrictBool = False
    token_reducer: Literal["topk", "tsm"] = "topk"


class PreprocessIn(BaseModel):
    """A checkpoint's ``preprocess`` metadata."""

    model_config = STRICT

    mean: list[_float(-1e3, 1e3)] = [0.5, 0.5, 0.5]
    std: list[_float(gt=0, hi=1e3)] = [0.5, 0.5, 0.5]
    resize: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear"
    crop: _float(gt=0, hi=1) = 1.0


Index = _int(0, limits.MAX_EMBED_DIM * 16)


class StructureIn(BaseModel):
    """A searched (ViT-Slim) structure: kept indices per layer, kept patch positions."""

    model_config = STRICT

    heads: list[list[Index]]
    head_dims: list[list[list[Index]]]
    mlp_units: list[list[Index]]
    token_positions: list[Index]


class TrainNumbersIn(BaseModel):
    """The numbers of a training config (names as in `exporter.training.config.TrainConfig`)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

    epochs: _int(1, limits.MAX_EPOCHS) = 40
    batch_size: _int(1, limits.MAX_BATCH) = 64
    lr: _float(gt=limits.LR_RANGE[0], hi=limits.LR_RANGE[1]) = 2e-3
    weight_decay: _float(0, 10) = 0.05
    warmup_epochs: _int(0, limits.MAX_EPOCHS) = 2
    label_smoothing: _float(0, 1) = 0.1
    seed: _int(0, limits.MAX_SEED) = 0
    augment_shift: _int(0, limits.MAX_IMG_SIZE) = 1
    ema_decay: _float(0, 1) = 0.0
    amp: StrictBool = True
    holdout: _float(0, 1) = 0.2
    train_limit: _int(0, limits.MAX_LIMIT) = 0
    widths: list[_float(gt=0, hi=1)] = [0.25, 0.5, 1.0]
    keep_rates: list[_float(gt=0, hi=1)] = [1.0, 0.7, 0.5]
    resolutions: list[_int(1, limits.MAX_IMG_SIZE)] = []
    width_weights: list[_float(0, 1e6)] = []
    random_subnets: _int(0, 64) = 1
    full_only_epochs: _int(0, limits.MAX_EPOCHS) = 1
    teacher: StrictStr | None = None
    teacher_weight: _float(0, 1) = 0.5
    token_weight: _float(0, 100) = 1.0


def one_line(e: PydanticError, max_errors: int = 3) -> str:
    """A pydantic error as one line: ``field: what it must be (got X)`` per error."""
    parts = []
    for err in e.errors()[:max_errors]:
        loc = ".".join(str(x) for x in err["loc"])
        given = repr(err.get("input"))
        given = given if len(given) <= 60 else given[:57] + "..."
        msg = err["msg"].replace("\n", " ")
        parts.append(f'"{loc}": {msg[0].lower() + msg[1:]}, but got {given}' if loc
                     else f"{msg}, but got {given}")
    more = len(e.errors()) - max_errors
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate(model: type[BaseModel], data: Any, what: str,
             error: type[SlimvitError] = InputError) -> BaseModel:
    """``model`` of ``data`` or one ``error`` line saying what is wrong."""
    if not isinstance(data, Mapping):
        raise error(f"{what} must be a mapping of keys, not {type(data).__name__}")
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    try:
        return model.model_validate(plain)
    except PydanticError as e:
        raise error(f"{what}: {one_line(e)}") from None


def model_config_dict(data: Any, what: str = "model config",
                      error: type[SlimvitError] = InputError) -> dict[str, Any]:
    """A validated model config as the keyword arguments of `ViTConfig` (only the keys given)."""
    m = validate(ModelConfigIn, data, what, error)
    out = {k: getattr(m, k) for k in m.model_fields_set}
    for k in ("extra_resolutions", "prune_blocks"):
        if out.get(k) is not None:
            out[k] = tuple(out[k])
    params = _param_estimate(m)
    if params > limits.MAX_PARAMS:
        raise error(f"{what} describes ~{params:.3g} parameters, over the {limits.MAX_PARAMS:.0e} a phone "
                    f"can hold; refused before allocating")
    return out


def _param_estimate(m: ModelConfigIn) -> float:
    tokens = max([m.img_size, *m.extra_resolutions]) ** 2 // m.patch_size ** 2
    return (m.depth * (4 + 2 * m.mlp_ratio) * m.embed_dim ** 2 + m.embed_dim * (m.num_classes + tokens)
            + m.embed_dim * m.in_chans * m.patch_size ** 2)


def labels_list(data: Any, num_classes: int, what: str = "labels",
                error: type[SlimvitError] = InputError) -> list[str]:
    """One label string per class."""
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise error(f'{what} must be a list of strings, one per class')
    if len(data) != num_classes:
        raise error(f"{what} has {len(data)} entries but the model has {num_classes} classes; "
                    f"give one label per class")
    long = [x for x in data if len(x) > limits.MAX_LABEL_CHARS]
    if long:
        raise error(f"{what}: a label has {len(long[0])} characters, over {limits.MAX_LABEL_CHARS}")
    return list(data)


def preprocess_dict(data: Any, in_chans: int, what: str = "preprocess",
                    error: type[SlimvitError] = InputError) -> dict[str, Any]:
    """Validated preprocessing with one mean and std per input channel."""
    m = validate(PreprocessIn, data, what, error)
    if len(m.mean) != in_chans or len(m.std) != in_chans:
        raise error(f"{what} needs {in_chans} mean and {in_chans} std values (one per input channel), "
                    f"but got {len(m.mean)} and {len(m.std)}")
    return {"mean": tuple(float(v) for v in m.mean), "std": tuple(float(v) for v in m.std),
            "resize": m.resize, "crop": float(m.crop)}


def structure_dict(data: Any, depth: int, num_heads: int, head_dim: int, mlp_hidden: int,
                   tokens: int, what: str = "structure",
                   error: type[SlimvitError] = InputError) -> dict[str, Any]:
    """A searched structure whose every index lies inside the model it was searched from."""
    m = validate(StructureIn, data, what, error)
    if not len(m.heads) == len(m.head_dims) == len(m.mlp_units) == depth:
        raise error(f"{what} lists {len(m.heads)}/{len(m.head_dims)}/{len(m.mlp_units)} layers of "
                    f"heads/head_dims/mlp_units, but the model has {depth}")

    def indices(values: Sequence[int], bound: int, name: str) -> None:
        if not values:
            raise error(f"{what}: {name} keeps nothing; every layer keeps at least one")
        if len(set(values)) != len(values) or max(values) >= bound:
            raise error(f"{what}: {name} must be distinct indices below {bound}, but got "
                        f"{list(values)[:8]}{' ...' if len(values) > 8 else ''}")

    for i, (heads, dims, units) in enumerate(zip(m.heads, m.head_dims, m.mlp_units, strict=True)):
        indices(heads, num_heads, f"layer {i} heads")
        indices(units, mlp_hidden, f"layer {i} mlp_units")
        if len(dims) != len(heads):
            raise error(f"{what}: layer {i} has {len(heads)} heads but {len(dims)} head_dims lists")
        for d in dims:
            indices(d, head_dim, f"layer {i} head_dims")
            if len(d) != len(dims[0]):
                raise error(f"{what}: layer {i} keeps a different number of dims per head")
    indices(m.token_positions, tokens, "token_positions")
    return m.model_dump()
