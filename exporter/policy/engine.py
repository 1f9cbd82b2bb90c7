"""The switching policy and its reference engine: device state -> the variant to run.

Pure: no I/O, no clock, no randomness. Time is integer milliseconds, battery a number compared
with integer thresholds, so the Kotlin, Swift and JS ports can match it step for step.
`docs/policy.md` is the language-neutral spec of `Policy` and `decide`; the conformance vectors
(`exporter/policy/vectors.py`) are generated from this file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.errors import SlimvitError, did_you_mean

THERMAL_SCALE = ("nominal", "fair", "serious", "critical")
# Each platform's thermal names mapped onto THERMAL_SCALE (0 nominal .. 3 critical).
# Android: PowerManager THERMAL_STATUS_NONE (0) .. SHUTDOWN (6); iOS: ProcessInfo.ThermalState;
# web: Compute Pressure API states.
PLATFORM_THERMAL: dict[str, dict[str, int]] = {
    "android": {"none": 0, "light": 1, "moderate": 1, "severe": 2, "critical": 3, "emergency": 3,
                "shutdown": 3},
    "ios": {"nominal": 0, "fair": 1, "serious": 2, "critical": 3},
    "web": {"nominal": 0, "fair": 1, "serious": 2, "critical": 3},
}
# Rule codes, in the order caps are applied; the first rule that reaches the lowest cap names it.
CAP_RULES = ("thermal", "low_power", "charging", "battery")
RULES = ("best", *CAP_RULES, "latency", "hysteresis", "dwell")


class PolicyError(SlimvitError, ValueError):
    """A policy, a device state or a trace is invalid. ``code`` is stable for the ports."""

    def __init__(self, message: str, code: str = "policy") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Band:
    min_pct: int
    max_tier: int


@dataclass(frozen=True)
class Policy:
    """A validated policy; the JSON form is the manifest's ``policy`` section."""

    tiers: tuple[str, ...]
    thermal_scale: tuple[str, ...]
    thermal_max_tier: tuple[int, ...]
    platforms: Mapping[str, Mapping[str, int]]
    bands: tuple[Band, ...]
    charging_max_tier: int
    low_power_max_tier: int
    up_margin_pct: int
    dwell_s: int
    budget_ms: Mapping[str, float]
    p50_ms: Mapping[str, Mapping[str, float]]

    @property
    def best(self) -> int:
        return len(self.tiers) - 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        """Build from the JSON form, checking what the schema cannot (indices, ordering)."""
        try:
            th, hy, lat = d["thermal"], d["hysteresis"], d.get("latency", {})
            p = cls(tuple(d["tiers"]), tuple(th["scale"]), tuple(th["max_tier"]),
                    {k: dict(v) for k, v in th["platforms"].items()},
                    tuple(Band(b["min_pct"], b["max_tier"]) for b in d["battery"]["bands"]),
                    d["charging"]["max_tier"], d["low_power"]["max_tier"], hy["up_margin_pct"],
                    hy["dwell_s"], dict(lat.get("budget_ms", {})),
                    {k: dict(v) for k, v in lat.get("p50_ms", {}).items()})
        except (KeyError, TypeError, AttributeError) as e:
            raise PolicyError(f"policy is incomplete or malformed ({type(e).__name__}: {e}); "
                              "see docs/policy.md for its fields") from None
        p._check()
        return p

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": 1, "tiers": list(self.tiers),
            "thermal": {"scale": list(self.thermal_scale), "max_tier": list(self.thermal_max_tier),
                        "platforms": {k: dict(v) for k, v in self.platforms.items()}},
            "battery": {"bands": [{"min_pct": b.min_pct, "max_tier": b.max_tier} for b in self.bands]},
            "charging": {"max_tier": self.charging_max_tier},
            "low_power": {"max_tier": self.low_power_max_tier},
            "hysteresis": {"up_margin_pct": self.up_margin_pct, "dwell_s": self.dwell_s},
        }
        if self.budget_ms or self.p50_ms:
            d["latency"] = {"budget_ms": dict(self.budget_ms),
                            "p50_ms": {k: dict(v) for k, v in self.p50_ms.items()}}
        return d

    def _check(self) -> None:
        n = len(self.tiers)
        if n == 0 or len(set(self.tiers)) != n:
            raise PolicyError(f'"tiers" must be non-empty variant ids without repeats, got {list(self.tiers)}')

        def tier(what: str, t: object) -> None:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n:
                raise PolicyError(f'"{what}" must be a tier index in 0..{n - 1} ({n} tiers), got {t!r}')

        if len(self.thermal_max_tier) != len(self.thermal_scale):
            raise PolicyError(f'"thermal.max_tier" needs one tier per scale level '
                              f"{list(self.thermal_scale)}, got {list(self.thermal_max_tier)}")
        for i, t in enumerate(self.thermal_max_tier):
            tier(f"thermal.max_tier[{i}]", t)
        for plat, names in self.platforms.items():
            for name, level in names.items():
                if not isinstance(level, int) or not 0 <= level < len(self.thermal_scale):
                    raise PolicyError(f'"thermal.platforms.{plat}.{name}" must be a scale level in '
                                      f"0..{len(self.thermal_scale) - 1}, got {level!r}")
        mins = [b.min_pct for b in self.bands]
        if not mins or mins != sorted(set(mins), reverse=True) or mins[-1] != 0:
            raise PolicyError(f'"battery.bands" must be ordered by min_pct, highest first, without '
                              f"repeats, the last at 0; got min_pct {mins}")
        for i, b in enumerate(self.bands):
            tier(f"battery.bands[{i}].max_tier", b.max_tier)
        # Monotonic caps: a lower battery or a hotter device never allows a higher tier (this also
        # keeps the step-up target at or below the step-down target).
        caps = [b.max_tier for b in self.bands]
        if caps != sorted(caps, reverse=True):
            raise PolicyError(f'"battery.bands" max_tier must not grow as min_pct falls, got {caps}')
        if list(self.thermal_max_tier) != sorted(self.thermal_max_tier, reverse=True):
            raise PolicyError(f'"thermal.max_tier" must not grow from cool to hot, got '
                              f"{list(self.thermal_max_tier)}")
        tier("charging.max_tier", self.charging_max_tier)
        tier("low_power.max_tier", self.low_power_max_tier)
        if self.up_margin_pct < 0 or self.dwell_s < 0:
            raise PolicyError('"hysteresis.up_margin_pct" and "hysteresis.dwell_s" must be >= 0')
        for dev, table in self.p50_ms.items():
            unknown = sorted(set(table) - set(self.tiers))
            if unknown:
                raise PolicyError(f'"latency.p50_ms.{dev}" names variants that are not tiers: {unknown}')


@dataclass(frozen=True)
class DeviceState:
    """What the app reads from the OS at one moment."""

    platform: str
    thermal: str
    battery: float
    charging: bool = False
    low_power: bool = False
    device: str | None = None


@dataclass(frozen=True)
class Choice:
    """The engine's output, and its only state: pass it back as ``previous`` on the next call."""

    variant: str
    tier: int
    rule: str
    reason: str
    t_ms: int
    pending_since_ms: int | None = None


def thermal_level(policy: Policy, platform: str, thermal: str) -> int:
    """The scale level of a platform's thermal name; unknown names list the valid ones."""
    if platform not in policy.platforms:
        raise PolicyError(f'platform must be one of {{{", ".join(policy.platforms)}}}, but got '
                          f'"{platform}"{did_you_mean(platform, policy.platforms)}', "unknown_platform")
    names = policy.platforms[platform]
    if thermal not in names:
        other = [p for p, n in policy.platforms.items() if thermal in n]
        hint = f' ("{thermal}" is a thermal state on {"/".join(other)}; pass that platform)' if other else ""
        raise PolicyError(f'thermal state for {platform} must be one of {{{", ".join(names)}}}, but '
                          f'got "{thermal}"{did_you_mean(thermal, names)}{hint}', "unknown_thermal")
    return names[thermal]


def check_state(policy: Policy, state: DeviceState) -> int:
    """Validate a device state; returns its thermal scale level."""
    level = thermal_level(policy, state.platform, state.thermal)
    b = state.battery
    if isinstance(b, bool) or not isinstance(b, int | float) or not 0 <= b <= 100:
        raise PolicyError(f"battery must be a percentage in 0..100, but got {b!r}", "battery_range")
    return level


def target(policy: Policy, state: DeviceState, margin_pct: int = 0) -> tuple[int, str, str]:
    """The tier the state allows, ignoring the past: ``(tier, rule, reason)``.

    ``margin_pct`` raises every battery threshold above 0 (the step-up thresholds).
    """
    level = check_state(policy, state)
    scale = policy.thermal_scale[level]
    caps = [("thermal", policy.thermal_max_tier[level],
             f"{state.platform} thermal {state.thermal}" + (f" = {scale}" if scale != state.thermal else ""))]
    if state.low_power:
        caps.append(("low_power", policy.low_power_max_tier, "low-power mode on"))
    if state.charging:
        caps.append(("charging", policy.charging_max_tier, "charging"))
    else:
        def threshold(b: Band) -> int:
            return b.min_pct + margin_pct if b.min_pct > 0 else 0

        i = next(i for i, b in enumerate(policy.bands) if state.battery >= threshold(b))
        # The band's reason names the threshold the battery is under (the one above its band).
        text = (f"on battery ({fmt_num(state.battery)}%)" if i == 0 else
                f"battery {fmt_num(state.battery)}% < {threshold(policy.bands[i - 1])}%")
        caps.append(("battery", policy.bands[i].max_tier, text))
    tier, rule, why = policy.best, "best", "no cap applies"
    for r, cap, text in caps:
        if cap < tier:  # strictly lower: on a tie the earlier rule keeps the name
            tier, rule, why = cap, r, text
    budget = policy.budget_ms.get(state.device) if state.device is not None else None
    if budget is not None:
        p50 = policy.p50_ms.get(state.device, {})
        start = tier
        while tier > 0 and p50.get(policy.tiers[tier], 0.0) > budget:
            tier -= 1
        if tier < start:
            rule = "latency"
            why = (f"{policy.tiers[start]} p50 {fmt_num(p50[policy.tiers[start]])} ms > budget "
                   f"{fmt_num(budget)} ms on {state.device}")
    return tier, rule, why


def fmt_num(x: float) -> str:
    """A number in reason texts, written the same way by every port: whole numbers without a
    decimal point, others in their shortest round-trip form."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def decide(policy: Policy, state: DeviceState, previous: Choice | None, now_ms: int) -> Choice:
    """One engine step: the variant to run now, why, and the state for the next step.

    Steps down at once; steps up only after the step-up target (battery thresholds raised by
    ``up_margin_pct``) has stayed above the current tier for ``dwell_s`` without a break.
    """
    if previous is not None and now_ms < previous.t_ms:
        raise PolicyError(f"time went backwards: {now_ms} ms after {previous.t_ms} ms", "time_order")
    down, rule, why = target(policy, state)

    def make(tier: int, rule: str, reason: str, pending: int | None = None) -> Choice:
        return Choice(policy.tiers[tier], tier, rule, reason, now_ms, pending)

    if previous is None:
        return make(down, rule, f"{why}: best tier {down}" if rule == "best" else f"{why}: capped at tier {down}")
    cur = previous.tier
    if down < cur:
        return make(down, rule, f"{why}: down to tier {down} at once")
    up, up_rule, up_why = target(policy, state, policy.up_margin_pct)
    if up <= cur:
        if down == cur:
            return make(cur, rule, f"{why}: stay at tier {cur}")
        # Only the battery thresholds move by the margin, so up_why names the step-up threshold.
        return make(cur, "hysteresis", f"{up_why} to step up: stay at tier {cur}")
    since = previous.pending_since_ms if previous.pending_since_ms is not None else now_ms
    waited = now_ms - since
    if waited >= policy.dwell_s * 1000:
        return make(up, up_rule, f"{up_why}: up to tier {up} after {fmt_num(waited / 1000)} s")
    return make(cur, "dwell", f"tier {up} allowed for {fmt_num(waited / 1000)} s of {policy.dwell_s} s: "
                              f"stay at tier {cur}", since)


def t_ms(t_s: float) -> int:
    """Seconds (as in vectors and traces) to the engine's integer milliseconds."""
    return int(round(t_s * 1000))
