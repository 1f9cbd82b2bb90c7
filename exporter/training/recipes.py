"""Training recipes: which subnets one optimizer step trains and what each learns from.

A recipe only *plans* a step: it returns `Member`s in order; the loop runs each member's
forward and backward, accumulating every gradient into one optimizer step. A member learns from
the labels (cross-entropy, plus the external teacher when one is given) and/or from the
detached logits of an earlier member of the same step (KL, in-place distillation).

Facts matched (from each method's paper and public code): sandwich (largest + smallest + random, in-place distillation),
HydraViT (one width per batch, uniform or weighted, cross-entropy only), Scala (full, one upper-
and one lower-half width, the smallest; each distils from the next larger and learns the labels;
the first epochs train the full model only), SuperViT (two resolutions at keep 1.0 with
cross-entropy, their kept-token versions with KL to the matching full-token output), SiT (the
largest subnet and one token-slimmed subnet per step, each with cross-entropy, KL to the teacher
and a token-reconstruction term; the student starts from the teacher's weights).

Every recipe draws the keep rate and resolution of a non-full member from the variant grid at
that member's width, so a width-only grid gives exactly the published recipe and a richer grid
trains every variant the export will ship.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from exporter.errors import ConfigError, check_choice
from exporter.nn.config import Subnet, Variant, ViTConfig, resolve
from exporter.nn.model import Features
from exporter.training.sit import token_reconstruction


@dataclass(frozen=True)
class Member:
    """One forward/backward of a step: ``labels`` adds cross-entropy, ``distil_from`` the KL to
    that earlier member's detached output."""

    subnet: Subnet
    labels: bool = True
    distil_from: int | None = None


@dataclass(frozen=True)
class StepContext:
    """What a recipe may look at: the grid's subnets (largest first), the run's settings, the
    epoch and the step's random generator (seeded per epoch, so a resumed run draws the same)."""

    subnets: tuple[Subnet, ...]
    model_cfg: ViTConfig
    widths: tuple[float, ...]
    width_weights: tuple[float, ...]
    random_subnets: int
    full_only_epochs: int
    epoch: int
    rng: random.Random

    @property
    def dims(self) -> list[int]:
        """Embed dims of the grid, largest first."""
        return sorted({s.embed_dim for s in self.subnets}, reverse=True)

    def at_width(self, dim: int) -> list[Subnet]:
        return [s for s in self.subnets if s.embed_dim == dim]

    def top(self, dim: int) -> Subnet:
        """The subnet of width ``dim`` with the most tokens: keep 1.0 at the largest resolution."""
        return self.at_width(dim)[0]

    def pick(self, dim: int) -> Subnet:
        return self.rng.choice(self.at_width(dim))

    def find(self, dim: int, keep: float, res: int) -> Subnet | None:
        return next((s for s in self.subnets if (s.embed_dim, s.keep_rate, s.resolution) == (dim, keep, res)), None)


Plan = Callable[[StepContext], list[Member]]
# An extra loss term: (student features, teacher features or None, prefix tokens) -> a scalar,
# or None where it does not apply (e.g. token counts differ). Weighted by the run's config.
LossTerm = Callable[[Features, Features | None, int], Tensor | None]


@dataclass(frozen=True)
class Recipe:
    """A training recipe of the one loop (`exporter.training.loop.train`).

    Attributes:
        plan: which members one step trains (called once per step).
        extra_losses: terms added to every member's loss (weighted by ``token_weight``); the
            loop then runs the member's forward with tracked features and the teacher's too.
        needs_teacher: the run must give ``teacher``.
        from_teacher: the student starts from the teacher's weights (and config) instead of a
            fresh model of ``cfg.model``.
    """

    plan: Plan
    extra_losses: tuple[LossTerm, ...] = ()
    needs_teacher: bool = False
    from_teacher: bool = False

    def __call__(self, ctx: StepContext) -> list[Member]:
        return self.plan(ctx)


def sandwich(ctx: StepContext) -> list[Member]:
    """The largest subnet learns the labels; the smallest width (at a random keep rate and
    resolution, so all of them are trained) and ``random_subnets`` random subnets distil from it."""
    largest = ctx.subnets[0]
    plan = [Member(largest), Member(ctx.pick(ctx.dims[-1]), labels=False, distil_from=0)]
    plan += [Member(ctx.rng.choice(ctx.subnets), labels=False, distil_from=0)
             for _ in range(ctx.random_subnets)]
    return plan


def hydravit(ctx: StepContext) -> list[Member]:
    """One width per batch, drawn uniformly or by ``width_weights``; cross-entropy only."""
    dims = [resolve(ctx.model_cfg, Variant(w)).embed_dim for w in ctx.widths]
    weights = list(ctx.width_weights) or [1.0] * len(dims)
    dim = ctx.rng.choices(dims, weights=weights)[0]
    return [Member(ctx.pick(dim))]


def scala(ctx: StepContext) -> list[Member]:
    """Scale Coordination: full, one upper-half width, one lower-half width, the smallest; each
    distils from the next larger one and learns the labels. Warm-up epochs: the full model only
    (at its full token count; afterwards every member, the full width too, at a random keep rate
    and resolution of the grid)."""
    dims = ctx.dims
    if ctx.epoch < ctx.full_only_epochs:
        return [Member(ctx.top(dims[0]))]
    if len(dims) == 1:
        return [Member(ctx.pick(dims[0]))]
    middle, mid = dims[1:-1], (dims[0] + dims[-1]) / 2
    chain = [dims[0]]
    for half in ([d for d in middle if d > mid], [d for d in middle if d <= mid]):
        if half:
            chain.append(ctx.rng.choice(half))
    chain.append(dims[-1])
    plan = [Member(ctx.pick(dims[0]))]
    plan += [Member(ctx.pick(d), labels=True, distil_from=i) for i, d in enumerate(chain[1:])]
    return plan


def supervit(ctx: StepContext) -> list[Member]:
    """(largest resolution, keep 1) and (a random smaller resolution, keep 1) learn the labels;
    their kept-token versions (a random keep rate < 1) distil from the matching full-token output.
    The width of the step is drawn uniformly from the grid (one width: exactly SuperViT)."""
    dim = ctx.rng.choice(ctx.dims)
    subs = ctx.at_width(dim)
    resolutions = sorted({s.resolution for s in subs}, reverse=True)
    keeps = sorted({s.keep_rate for s in subs if s.keep_rate < 1.0})
    full = [ctx.find(dim, 1.0, resolutions[0])]
    if len(resolutions) > 1:
        full.append(ctx.find(dim, 1.0, ctx.rng.choice(resolutions[1:])))
    if full[0] is None:
        raise ConfigError('recipe "supervit" needs keep rate 1.0 in the keep rates (its full-token '
                          'subnets learn the labels); add 1.0 to --keep-rates')
    plan = [Member(s) for s in full]
    for i, s in enumerate(full):
        if keeps:
            kept = ctx.find(dim, ctx.rng.choice(keeps), s.resolution)
            plan.append(Member(kept, labels=False, distil_from=i))
    return plan


def sit(ctx: StepContext) -> list[Member]:
    """SiT: the largest subnet and one random token-slimmed subnet (keep rate < 1), each from
    the labels and the teacher; every Token Slimming Module is trained through the second."""
    slimmed = [s for s in ctx.subnets if s.keep_rate < 1.0]
    if not slimmed:
        raise ConfigError("the sit recipe trains token slimming; give --keep-rates with a rate < 1")
    return [Member(ctx.subnets[0]), Member(ctx.rng.choice(slimmed))]


RECIPES: dict[str, Recipe] = {"sandwich": Recipe(sandwich), "hydravit": Recipe(hydravit),
                              "scala": Recipe(scala), "supervit": Recipe(supervit),
                              "sit": Recipe(sit, (token_reconstruction,), needs_teacher=True,
                                            from_teacher=True)}


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; an unknown name gets a did-you-mean."""
    return RECIPES[check_choice("recipe", name, RECIPES)]
