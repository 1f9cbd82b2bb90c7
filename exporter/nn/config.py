"""Typed, validated configs: the slimmable model (`ViTConfig`), one requested variant
(`Variant`), the resolved static shape of a variant (`Subnet`) and the grid of variants
(`VariantGrid`). Everything else in slimvit reads these; nothing mutates them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from exporter.errors import ConfigError, check_choice, did_you_mean
from exporter.gate.limits import LN_EPS_RANGE, MAX_IMG_SIZE
from exporter.gate.models import model_config_dict

SLICINGS = ("heads", "ratio")
KEEP_RULES = ("supervit", "evit")
TOKEN_REDUCERS = ("topk", "tsm")
Slicing = Literal["heads", "ratio"]
KeepRule = Literal["supervit", "evit"]
TokenReducer = Literal["topk", "tsm"]


def default_prune_blocks(depth: int) -> tuple[int, ...]:
    """Blocks 3, 6, 9 of 12 (SuperViT/EViT), scaled to other depths."""
    return tuple(sorted({min(depth - 1, max(0, depth * i // 4)) for i in (1, 2, 3)}))


@dataclass(frozen=True)
class ViTConfig:
    """Shape and slimming rules of a slimmable ViT (timm `VisionTransformer` layout).

    Attributes:
        img_size: the training resolution; ``pos_embed`` is sized for it.
        extra_resolutions: further input sizes with their own learned pos_embed (SuperViT).
        slicing: ``heads`` (HydraViT: fixed head dim, first k heads) or
            ``ratio`` (Scala: fixed head count, head dim shrinks, Isolated Activation).
        min_ratio: the smallest trained width ratio (Scala's *s*); with ``ratio`` slicing it
            and 1.0 take the first channels, every ratio in between the last channels.
        ln_eps: LayerNorm epsilon of the slimmable forward and of extracted variants.
        distilled: DeiT-style ``dist_token`` + ``head_dist``; the prediction is their mean.
        prune_blocks: blocks that prune tokens (after attention, before the MLP).
        keep_rule: ``supervit`` keeps ceil(rate*N) with N counting CLS; ``evit`` keeps
            ceil(rate*(N-1)).
        fuse_tokens: EViT's extra token, the attention-weighted average of dropped tokens.
        token_reducer: ``topk`` keeps the patch tokens CLS attends to most (EViT/SuperViT);
            ``tsm`` is SiT's Token Slimming Module, which softly aggregates the patch tokens
            into as many new ones (static shapes, no top-k or gather).
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    extra_resolutions: tuple[int, ...] = ()
    slicing: Slicing = "heads"
    min_ratio: float = 0.25
    ln_eps: float = 1e-6
    distilled: bool = False
    prune_blocks: tuple[int, ...] | None = None
    keep_rule: KeepRule = "supervit"
    fuse_tokens: bool = False
    token_reducer: TokenReducer = "topk"

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                     "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f'"{name}" must be a positive integer, but got {value!r}')
        for name in ("mlp_ratio", "min_ratio", "ln_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f'"{name}" must be a finite number, but got {value!r}')
        if not LN_EPS_RANGE[0] <= self.ln_eps <= LN_EPS_RANGE[1]:
            raise ConfigError(f'"ln_eps" must be in [{LN_EPS_RANGE[0]:g}, {LN_EPS_RANGE[1]:g}], '
                              f"but got {self.ln_eps!r}")
        check_choice("slicing", self.slicing, SLICINGS)
        check_choice("keep_rule", self.keep_rule, KEEP_RULES)
        check_choice("token_reducer", self.token_reducer, TOKEN_REDUCERS)
        if self.token_reducer == "tsm" and self.fuse_tokens:
            raise ConfigError('"fuse_tokens" is a top-k option (EViT); the "tsm" token reducer '
                              "already aggregates every token; leave fuse_tokens off")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f'"embed_dim" ({self.embed_dim}) must be divisible by "num_heads" '
                f"({self.num_heads}); pass --num-heads with a divisor of {self.embed_dim}"
            )
        if not 0 < self.min_ratio <= 1:
            raise ConfigError(f'"min_ratio" must be in (0, 1], but got {self.min_ratio}')
        if self.mlp_ratio <= 0:
            raise ConfigError(f'"mlp_ratio" must be positive, but got {self.mlp_ratio}')
        for res in self.resolutions:
            if res % self.patch_size:
                raise ConfigError(
                    f"resolution {res} is not a multiple of the patch size {self.patch_size}; "
                    f"use a multiple such as {res // self.patch_size * self.patch_size}"
                )
        object.__setattr__(self, "extra_resolutions",
                           tuple(sorted(set(int(r) for r in self.extra_resolutions) - {self.img_size})))
        blocks = self.prune_blocks if self.prune_blocks is not None else default_prune_blocks(self.depth)
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
            raise ConfigError(f'"prune_blocks" must be block indices (integers), but got {list(blocks)}')
        blocks = tuple(sorted(set(blocks)))
        bad = [b for b in blocks if not 0 <= b < self.depth]
        if bad:
            raise ConfigError(f'"prune_blocks" must lie in 0..{self.depth - 1}, but got {bad}')
        object.__setattr__(self, "prune_blocks", blocks)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1

    @property
    def tsm_hidden(self) -> int:
        """Hidden units of each Token Slimming Module's MLP (SiT uses half the embed dim)."""
        return self.embed_dim // 2

    @property
    def tsm_slots(self) -> int:
        """Output tokens each Token Slimming Module can produce: the patch count at the largest
        resolution. A keep rate uses the first n_keep slots, so one TSM per prune block serves
        every keep rate and resolution of the grid."""
        return (self.resolutions[0] // self.patch_size) ** 2

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Every resolution with a learned pos_embed, largest first."""
        return tuple(sorted({self.img_size, *self.extra_resolutions}, reverse=True))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra_resolutions"] = list(self.extra_resolutions)
        d["prune_blocks"] = list(self.prune_blocks or ())
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViTConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in valid]
        if unknown:
            k = unknown[0]
            raise ConfigError(f'unknown model config key "{k}"{did_you_mean(k, valid)}; '
                              f"valid keys: {', '.join(valid)}")

        return cls(**model_config_dict(d, "model config", ConfigError))


@dataclass(frozen=True)
class Variant:
    """A requested subnet: a width ratio of the full embed dim, a token keep rate, a resolution."""

    width: float = 1.0
    keep_rate: float = 1.0
    resolution: int | None = None  # None: the model's img_size

    def __post_init__(self) -> None:
        if not 0 < self.width <= 1:
            raise ConfigError(f'width ratio must be in (0, 1], but got {self.width}')
        if not 0 < self.keep_rate <= 1:
            raise ConfigError(f"keep rate must be in (0, 1], but got {self.keep_rate}")
        if self.resolution is not None and not 0 < self.resolution <= MAX_IMG_SIZE:
            raise ConfigError(f"resolution must be in 1..{MAX_IMG_SIZE} px (what a phone runs), but got "
                              f"{self.resolution}")


@dataclass(frozen=True)
class Subnet:
    """A variant resolved against a model: every static dimension of the extracted graph."""

    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    channels: Literal["first", "last"]
    keep_rate: float
    resolution: int
    width: float  # the width ratio actually realised: embed_dim / full embed_dim
    tokens: tuple[int, ...] = field(default=())  # token count entering each block, then the final norm
    name: str = ""  # overrides the id, e.g. for a searched (ViT-Slim) structure

    @property
    def id(self) -> str:
        """Stable id used in file names and the manifest, e.g. ``w192_k70_r224``."""
        if self.name:
            return self.name
        return f"w{self.embed_dim}_k{round(self.keep_rate * 100)}_r{self.resolution}"


def keep_count(rule: KeepRule, rate: float, n_tokens: int, n_prefix: int) -> int:
    """Number of non-prefix tokens kept out of ``n_tokens - n_prefix``."""
    n_patch = n_tokens - n_prefix
    if rule == "supervit":
        return min(n_patch, math.ceil(rate * n_tokens))
    return min(n_patch, math.ceil(rate * n_patch))


def token_schedule(cfg: ViTConfig, keep_rate: float, resolution: int) -> tuple[int, ...]:
    """Token count entering each block (``depth`` entries) and the final norm (one more)."""
    n = (resolution // cfg.patch_size) ** 2 + cfg.num_prefix_tokens
    counts = []
    for i in range(cfg.depth):
        counts.append(n)
        if keep_rate < 1.0 and i in (cfg.prune_blocks or ()):
            kept = keep_count(cfg.keep_rule, keep_rate, n, cfg.num_prefix_tokens)
            if kept < n - cfg.num_prefix_tokens:
                n = cfg.num_prefix_tokens + kept + (1 if cfg.fuse_tokens else 0)
    counts.append(n)
    return tuple(counts)


def block_keeps(cfg: ViTConfig, s: Subnet) -> tuple[int | None, ...]:
    """Patch tokens each block keeps after its attention, or None where it prunes nothing."""
    keeps: list[int | None] = []
    for i in range(cfg.depth):
        n = s.tokens[i]
        k = None
        if s.keep_rate < 1.0 and i in (cfg.prune_blocks or ()):
            k = keep_count(cfg.keep_rule, s.keep_rate, n, cfg.num_prefix_tokens)
            if k >= n - cfg.num_prefix_tokens:
                k = None
        keeps.append(k)
    return tuple(keeps)


def resolve(cfg: ViTConfig, variant: Variant) -> Subnet:
    """Resolve a requested variant into the static dims of its subnet.

    Raises:
        ConfigError: the width does not fit the slicing scheme, or the resolution is not a
            multiple of the patch size.
    """
    res = variant.resolution or cfg.img_size
    if res % cfg.patch_size:
        raise ConfigError(f"resolution {res} is not a multiple of the patch size {cfg.patch_size}")
    if cfg.slicing == "heads":
        heads = round(variant.width * cfg.num_heads)
        if heads < 1:
            raise ConfigError(
                f"width {variant.width} of {cfg.num_heads} heads rounds to 0 heads; the smallest "
                f"width with heads slicing is {1 / cfg.num_heads:.4g}"
            )
        head_dim = cfg.head_dim
        dim = heads * head_dim
        hidden = int(cfg.mlp_ratio * dim)
        channels = "first"
    else:
        dim = int(variant.width * cfg.embed_dim)
        heads = cfg.num_heads
        if dim < heads or dim % heads:
            raise ConfigError(
                f"width {variant.width} gives embed dim {dim}, which the {heads} heads of ratio "
                f"slicing cannot share evenly; choose a ratio r with int(r*{cfg.embed_dim}) "
                f"divisible by {heads}"
            )
        head_dim = dim // heads
        hidden = int(variant.width * cfg.mlp_hidden)
        is_end = math.isclose(variant.width, cfg.min_ratio) or math.isclose(variant.width, 1.0)
        channels = "first" if is_end else "last"
    return Subnet(
        embed_dim=dim, num_heads=heads, head_dim=head_dim, mlp_hidden=hidden, channels=channels,
        keep_rate=variant.keep_rate, resolution=res, width=dim / cfg.embed_dim,
        tokens=token_schedule(cfg, variant.keep_rate, res),
    )


@dataclass(frozen=True)
class VariantGrid:
    """The cross product widths x keep rates x resolutions: the one source of the variant list."""

    widths: tuple[float, ...] = (1.0,)
    keep_rates: tuple[float, ...] = (1.0,)
    resolutions: tuple[int, ...] | None = None  # None: the model's img_size only

    def __post_init__(self) -> None:
        if not self.widths or not self.keep_rates:
            raise ConfigError("a variant grid needs at least one width and one keep rate")
        if self.resolutions is not None and not self.resolutions:
            raise ConfigError("a variant grid needs at least one resolution")

    def variants(self) -> list[Variant]:
        res = self.resolutions or (None,)
        return [Variant(w, k, r) for r in res for w in self.widths for k in self.keep_rates]

    def subnets(self, cfg: ViTConfig) -> list[Subnet]:
        """Resolve every variant; duplicates (e.g. two ratios rounding to one head count) are
        dropped; ordered from the largest to the smallest."""
        seen: dict[str, Subnet] = {}
        for v in self.variants():
            s = resolve(cfg, v)
            seen.setdefault(s.id, s)
        return sorted(seen.values(), key=lambda s: (-s.resolution, -s.embed_dim, -s.keep_rate))


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """Parse a comma-separated list of floats from the CLI with a clear error."""
    return _parse_list(text, what, float, "numbers", "1.0,0.5")


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """Parse a comma-separated list of integers from the CLI with a clear error."""
    return _parse_list(text, what, int, "integers", "224,160")


def _parse_list(text: str, what: str, kind: type, noun: str, example: str) -> tuple[Any, ...]:
    try:
        values = tuple(kind(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f'{what} must be comma-separated {noun} such as "{example}", but got "{text}"') from None
    if not values:
        raise ConfigError(f"{what} is empty; give at least one value")
    return values
