"""Conformance vectors: cases generated from the reference engine that every app port must pass.

A vectors file is self-contained: the policy it was generated with, then cases of steps
``{t_s, thermal, battery, charging, low_power, expect}``; each case starts with no history.
``expect`` is ``{variant, tier, rule, reason}``, or ``{error}`` for input the engine must reject.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.errors import check_choice
from exporter.fileio import atomic_write_json
from exporter.gate.files import read_json
from exporter.manifest import read_manifest, tool_version
from exporter.policy.engine import RULES, Choice, DeviceState, Policy, PolicyError, decide, t_ms
from exporter.policy.spec import check_policy, default_policy, policy_of

FORMAT = "slimvit-policy-vectors"
SCHEMA_NAME = "policy_vectors.schema.json"
ERROR_CODES = ("unknown_platform", "unknown_thermal", "battery_range", "time_order")
# The repo copy (conformance/policy_vectors.json) uses the default policy of this made-up
# five-variant bundle, plus two latency budgets, so that every rule is reachable.
REFERENCE_VARIANTS = [  # id, MACs, top-1, p50 ms on ref_phone, on slow_phone
    ("w16_k50_r24", 1_000_000, 0.700, 2.0, 8.0),
    ("w16_k100_r32", 2_000_000, 0.820, 3.0, 12.0),
    ("w32_k70_r32", 4_000_000, 0.910, 5.0, 20.0),
    ("w64_k50_r32", 8_000_000, 0.948, 9.0, 36.0),
    ("w64_k100_r32", 12_000_000, 0.955, 14.0, 56.0),
]
REFERENCE_BUDGETS = {"ref_phone": 10.0, "slow_phone": 6.0}


def reference_policy() -> dict[str, Any]:
    """The policy of the repo's conformance vectors (the default for REFERENCE_VARIANTS)."""
    variants = [{"id": vid, "macs": macs, "width": 1.0, "resolution": 32, "artifacts": [
        {"precision": "fp32", "accuracy": {"top1": acc},
         "latency": {"ref_phone": {"p50_ms": ref}, "slow_phone": {"p50_ms": slow}}}]}
        for vid, macs, acc, ref, slow in REFERENCE_VARIANTS]
    policy = default_policy({"variants": variants})
    policy["latency"]["budget_ms"] = dict(REFERENCE_BUDGETS)
    return policy


def custom_policy() -> dict[str, Any]:
    """A non-default policy for the second repo vectors file: a port must read every value from
    the policy, not assume the default's (charging below best, four bands, no hysteresis,
    moderate = serious on Android, a latency table that is not monotonic)."""
    policy = reference_policy()
    tiers = policy["tiers"][1:]
    policy["tiers"] = tiers
    policy["basis"]["tiers"] = "user"
    policy["thermal"]["max_tier"] = [3, 2, 1, 1]
    policy["thermal"]["platforms"]["android"]["moderate"] = 2
    policy["battery"]["bands"] = [{"min_pct": 80, "max_tier": 3}, {"min_pct": 40, "max_tier": 2},
                                  {"min_pct": 10, "max_tier": 1}, {"min_pct": 0, "max_tier": 0}]
    policy["charging"] = {"max_tier": 2}
    policy["low_power"] = {"max_tier": 1}
    policy["hysteresis"] = {"up_margin_pct": 0, "dwell_s": 0}
    policy["latency"] = {"budget_ms": {"ref_phone": 5.0},
                         "p50_ms": {"ref_phone": dict(zip(tiers, [6.0, 3.0, 9.0], strict=False))}}
    return policy


REFERENCE_POLICIES = {"default": reference_policy, "custom": custom_policy}


def _step(t: int, thermal: str, battery: float, charging: bool = False, low_power: bool = False
          ) -> dict[str, Any]:
    return {"t_s": t, "thermal": thermal, "battery": battery, "charging": charging,
            "low_power": low_power}


def run_steps(p: Policy, platform: str, device: str | None, steps: list[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """Fill in each step's ``expect`` from the reference engine."""
    prev: Choice | None = None
    out = []
    for s in steps:
        state = DeviceState(platform, s["thermal"], s["battery"], s["charging"], s["low_power"], device)
        try:
            prev = decide(p, state, prev, t_ms(s["t_s"]))
            expect: dict[str, Any] = {"variant": prev.variant, "tier": prev.tier, "rule": prev.rule,
                                      "reason": prev.reason}
        except PolicyError as e:
            expect = {"error": e.code}
        out.append({**s, "expect": expect})
    return out


def _case_steps(p: Policy) -> list[tuple[str, str, str | None, list[dict[str, Any]]]]:
    """(name, platform, device, steps) for every rule and every hysteresis edge."""
    a = "android"
    levels = p.platforms[a]

    def at(level: int) -> str:
        return next((n for n, lv in levels.items() if lv == level), next(iter(levels)))

    cool, hot = at(0), at(max(levels.values()))
    warm, hotter = at(1), at(2)
    d, m = p.dwell_s, p.up_margin_pct
    cases: list[tuple[str, str, str | None, list[dict[str, Any]]]] = []
    for plat, names in p.platforms.items():
        for name in names:
            cases.append((f"thermal/{plat}/{name}", plat, None, [_step(0, name, 100, True)]))
            cases.append((f"thermal/{plat}/{name}/on_battery", plat, None, [_step(0, name, 100)]))
    for b in p.bands:
        if b.min_pct > 0:
            cases.append((f"battery/at_{b.min_pct}", a, None, [_step(0, cool, b.min_pct)]))
            cases.append((f"battery/below_{b.min_pct}", a, None, [_step(0, cool, b.min_pct - 0.5)]))
        cases.append((f"low_power/battery_{b.min_pct}", a, None, [_step(0, cool, b.min_pct, False, True)]))
    cases += [
        ("battery/full", a, None, [_step(0, cool, 100)]),
        ("battery/empty", a, None, [_step(0, cool, 0)]),
        ("charging/cool_is_best", a, None, [_step(0, cool, 50, True)]),
        ("charging/empty_battery", a, None, [_step(0, cool, 0, True)]),
        ("charging/critical", a, None, [_step(0, hot, 100, True)]),
        ("low_power/charging", a, None, [_step(0, cool, 100, True, True)]),
        ("low_power/hot", a, None, [_step(0, hotter, 100, True, True)]),
        ("tie/critical_and_empty", a, None, [_step(0, hot, 0, False, True)]),
    ]
    for dev in sorted(set(p.budget_ms) | set(p.p50_ms)):
        cases.append((f"latency/{dev}/cool_charging", a, dev, [_step(0, cool, 100, True)]))
        cases.append((f"latency/{dev}/warm", a, dev, [_step(0, warm, 100, True)]))
        cases.append((f"latency/{dev}/hot", a, dev, [_step(0, hot, 100, True)]))
    cases.append(("latency/unknown_device", a, "no_such_device", [_step(0, cool, 100, True)]))
    top = next(b.min_pct for b in p.bands if b.min_pct > 0) if len(p.bands) > 1 else 50
    hyst = {
        "down_at_once": [_step(0, cool, 100, True), _step(1, hot, 100, True)],
        "dwell_edge": [_step(0, hot, 100, True), _step(10, cool, 100, True),
                       _step(10 + d - 1, cool, 100, True), _step(10 + d, cool, 100, True)],
        "dwell_restarts": [_step(0, hot, 100, True), _step(10, cool, 100, True), _step(20, hot, 100, True),
                           _step(30, cool, 100, True), _step(10 + d, cool, 100, True),
                           _step(30 + d - 1, cool, 100, True), _step(30 + d, cool, 100, True)],
        "up_to_current_target": [_step(0, hot, 100, True), _step(10, hotter, 100, True),
                                 _step(20, warm, 100, True), _step(10 + d, warm, 100, True)],
        "battery_margin": [_step(0, cool, top - 1), _step(10, cool, top), _step(20, cool, top + m - 0.5),
                           _step(30, cool, top + m), _step(30 + d, cool, top + m)],
        "battery_down_at_threshold": [_step(0, cool, top + m), _step(10, cool, top),
                                      _step(20, cool, top - 0.5)],
        "unplug_down_at_once": [_step(0, cool, max(top - 10, 0), True), _step(5, cool, max(top - 10, 0))],
        "plug_in_waits": [_step(0, cool, 10), _step(5, cool, 10, True), _step(5 + d, cool, 10, True)],
        "same_time": [_step(0, hot, 100, True), _step(0, cool, 100, True), _step(d, cool, 100, True)],
    }
    for name, steps in hyst.items():
        steps = [s for i, s in enumerate(steps) if s["t_s"] >= 0
                 and all(s["t_s"] >= q["t_s"] for q in steps[:i])]
        cases.append((f"hysteresis/{name}", a, None, steps))
    drain = [_step(30 * i, cool if i < 20 else warm, 100 - 2.5 * i) for i in range(41)]
    charge = ([_step(30 * i, warm, 10 + 2.5 * i, True) for i in range(37)]
              + [_step(30 * 37 + 30 * i, cool, 100 - 0.5 * i) for i in range(6)])
    cases += [("sequence/drain", a, None, drain), ("sequence/charge_cycle", a, None, charge)]
    for i, plat in enumerate(sorted(p.platforms) * 2):
        cases.append((f"random/{plat}/{i}", plat, _random_device(p, i), _random_walk(p, plat, i)))
    e = [("unknown_thermal", "ios", [_step(0, "severe", 50)]),
         ("unknown_platform", "windows", [_step(0, "nominal", 50)]),
         ("battery_above_100", a, [_step(0, cool, 100.5)]),
         ("battery_below_0", a, [_step(0, cool, -1)]),
         ("time_backwards", a, [_step(10, cool, 50), _step(5, cool, 50)])]
    cases += [(f"error/{name}", plat, None, steps) for name, plat, steps in e]
    return cases


def _random_device(p: Policy, i: int) -> str | None:
    devices = sorted(p.budget_ms)
    return devices[i % len(devices)] if devices and i % 2 else None


def _random_walk(p: Policy, platform: str, seed: int, n: int = 60) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = list(p.platforms[platform])
    t, battery, level = 0, float(rng.randint(5, 100)), 0
    charging, low_power, steps = rng.random() < 0.3, False, []
    for _ in range(n):
        t += rng.choice([0, 1, 5, 10, 20, 30, 45, 60, 90])
        battery = min(100.0, max(0.0, battery + rng.choice([-3, -1.5, -0.5, 0, 0.5, 2])))
        level = min(len(names) - 1, max(0, level + rng.choice([-1, 0, 0, 0, 1])))
        charging = (not charging) if rng.random() < 0.08 else charging
        low_power = (not low_power) if rng.random() < 0.05 else low_power
        steps.append(_step(t, names[level], battery, charging, low_power))
    return steps


def vectors_document(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The conformance vectors of ``policy`` (its JSON form), ready to write as JSON."""
    p = Policy.from_dict(policy)
    cases = [{"name": name, "platform": plat, "device": dev, "steps": run_steps(p, plat, dev, steps)}
             for name, plat, dev, steps in _case_steps(p)]
    return {"format": FORMAT, "version": 1, "generated_by": f"slimvit {tool_version()}",
            "spec": "docs/policy.md", "rules": list(RULES), "errors": list(ERROR_CODES),
            "policy": dict(policy), "cases": cases}


def vectors_schema() -> dict[str, Any]:
    from importlib import resources

    return json.loads(resources.files("exporter.schema").joinpath(SCHEMA_NAME).read_text())


def check_vectors(doc: Mapping[str, Any]) -> list[str]:
    """Replay every case through the reference engine; returns each mismatch (empty = pass)."""
    import jsonschema

    if doc.get("format") != FORMAT:
        raise PolicyError(f'not a policy vectors file (format is {doc.get("format")!r}, expected "{FORMAT}")')
    errors = sorted(jsonschema.Draft202012Validator(vectors_schema()).iter_errors(doc),
                    key=lambda e: list(e.absolute_path))
    if errors:
        raise PolicyError("policy vectors do not follow policy_vectors.schema.json: " + "; ".join(
            f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors[:5]))
    p = check_policy(doc["policy"])
    bad = []
    for case in doc["cases"]:
        got = run_steps(p, case["platform"], case["device"], [
            {k: s[k] for k in ("t_s", "thermal", "battery", "charging", "low_power")} for s in case["steps"]])
        for i, (g, want) in enumerate(zip(got, case["steps"], strict=True)):
            if g["expect"] != want["expect"]:
                bad.append(f'{case["name"]} step {i} (t={want["t_s"]} s): expected {want["expect"]}, '
                           f'got {g["expect"]}')
    return bad


def write_vectors(out: str | Path, bundle: str | Path | None = None, reference: str = "default"
                  ) -> dict[str, Any]:
    """Write the vectors of a bundle's policy, or of a reference policy when no bundle is given."""
    if bundle is None:
        policy = REFERENCE_POLICIES[check_choice("reference", reference, REFERENCE_POLICIES)]()
    else:
        manifest = read_manifest(bundle)
        policy_of(manifest, str(bundle))
        policy = manifest["policy"]
    doc = vectors_document(policy)
    atomic_write_json(out, doc)
    return doc


def read_vectors(path: str | Path) -> dict[str, Any]:
    doc = read_json(path, "policy vectors", error=PolicyError)
    if not isinstance(doc, dict):
        raise PolicyError(f"policy vectors {path} must hold a JSON object")
    return doc
