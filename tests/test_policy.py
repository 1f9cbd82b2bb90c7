"""The switching policy: engine rules, hysteresis, the default policy, user overrides, vectors."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.policy.engine import DeviceState, Policy, PolicyError, decide, target
from exporter.policy.spec import bundle_policy, default_policy, manifest_tiers
from exporter.policy.vectors import (
    REFERENCE_POLICIES,
    REFERENCE_VARIANTS,
    check_vectors,
    reference_policy,
    vectors_document,
)

REPO_VECTORS = Path(__file__).resolve().parents[1] / "conformance" / "policy_vectors.json"


def manifest(accuracy: bool = True) -> dict:
    """A manifest stand-in: the reference variants plus one dominated variant."""
    rows = [*REFERENCE_VARIANTS, ("w32_k50_r24", 5_000_000, 0.85, 6.0, 30.0)]
    return {"variants": [
        {"id": vid, "macs": macs, "width": 1.0, "resolution": 32, "artifacts": [
            {"precision": "fp32", **({"accuracy": {"top1": acc}} if accuracy else {}),
             "latency": {"ref_phone": {"p50_ms": ref}}}]}
        for vid, macs, acc, ref, _ in rows]}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.from_dict(reference_policy())


def state(thermal="none", battery=80.0, charging=False, low_power=False, platform="android", device=None):
    return DeviceState(platform, thermal, battery, charging, low_power, device)


def test_default_policy_tiers_are_the_pareto_front_and_caps_follow_accuracy():
    p = default_policy(manifest())
    assert p["tiers"] == [v[0] for v in REFERENCE_VARIANTS]  # the dominated w32_k50_r24 is left out
    # best 4; efficient: 94.8% is within 1 p.p. of 95.5% -> 3; saver: 91.0% within 5 p.p. -> 2
    assert p["thermal"]["max_tier"] == [4, 3, 2, 0]
    assert [(b["min_pct"], b["max_tier"]) for b in p["battery"]["bands"]] == [(50, 3), (20, 2), (0, 0)]
    assert p["charging"] == {"max_tier": 4} and p["low_power"] == {"max_tier": 2}
    assert p["latency"]["p50_ms"]["ref_phone"]["w64_k100_r32"] == 14.0
    assert p["latency"]["budget_ms"] == {}


def test_without_accuracy_tiers_are_one_variant_per_mac_count():
    tiers = manifest_tiers(manifest(accuracy=False))
    assert len(tiers) == 6 and tiers[0] == "w16_k50_r24" and tiers[-1] == "w64_k100_r32"
    assert default_policy(manifest(accuracy=False))["thermal"]["max_tier"] == [5, 4, 2, 0]


def test_critical_heat_runs_the_cheapest_and_a_cool_charging_device_the_best(policy):
    hot = decide(policy, state("critical", 100, charging=True), None, 0)
    assert (hot.tier, hot.variant, hot.rule) == (0, "w16_k50_r24", "thermal")
    for plat, name in (("android", "none"), ("ios", "nominal"), ("web", "nominal")):
        cool = decide(policy, state(name, 5, charging=True, platform=plat), None, 0)
        assert (cool.tier, cool.variant, cool.rule) == (4, "w64_k100_r32", "best")


def test_caps_and_boundaries(policy):
    assert target(policy, state(battery=50))[:2] == (3, "battery")  # >= 50 is the top band
    assert target(policy, state(battery=49.99))[:2] == (2, "battery")
    assert target(policy, state(battery=20))[:2] == (2, "battery")
    assert target(policy, state(battery=19.5))[:2] == (0, "battery")
    assert target(policy, state(battery=50, low_power=True))[:2] == (2, "low_power")
    assert target(policy, state(battery=20, low_power=True))[:2] == (2, "low_power")  # tie: earlier rule
    assert target(policy, state("critical", battery=0))[:2] == (0, "thermal")
    assert target(policy, state("moderate", battery=100, charging=True))[:2] == (3, "thermal")
    assert target(policy, state(battery=100, charging=True, device="ref_phone"))[:2] == (3, "latency")
    assert target(policy, state(battery=100, charging=True, device="slow_phone"))[:2] == (0, "latency")
    assert target(policy, state(battery=100, charging=True, device="other"))[:2] == (4, "best")
    assert target(policy, state(battery=52), margin_pct=5)[:2] == (2, "battery")


def test_steps_down_at_once_and_up_only_after_an_unbroken_dwell(policy):
    c = decide(policy, state(battery=100, charging=True), None, 0)
    c = decide(policy, state("critical", 100, True), c, 1000)
    assert (c.tier, c.rule) == (0, "thermal")
    c = decide(policy, state("none", 100, True), c, 10_000)
    assert (c.tier, c.rule, c.pending_since_ms) == (0, "dwell", 10_000)
    c = decide(policy, state("none", 100, True), c, 69_999)
    assert c.tier == 0
    broken = decide(policy, state("critical", 100, True), c, 69_999)
    assert broken.pending_since_ms is None
    c = decide(policy, state("none", 100, True), c, 70_000)  # exactly dwell_s after: >=
    assert (c.tier, c.rule) == (4, "best")


def test_battery_margin_keeps_the_lower_band_until_threshold_plus_margin(policy):
    c = decide(policy, state(battery=49), None, 0)
    assert c.tier == 2
    c = decide(policy, state(battery=54.5), c, 100_000)
    assert (c.tier, c.rule) == (2, "hysteresis")
    c = decide(policy, state(battery=55), c, 200_000)
    assert (c.tier, c.rule) == (2, "dwell")
    c = decide(policy, state(battery=55), c, 260_000)
    assert (c.tier, c.rule) == (3, "battery")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["none", "light", "severe", "critical"]),
                          st.floats(0, 100, allow_nan=False), st.booleans(), st.booleans()),
                min_size=1, max_size=40))
def test_never_above_what_the_state_allows_and_never_up_before_the_dwell(steps):
    p = Policy.from_dict(reference_policy())
    t, c, allowed_since = 0, None, None
    for dt, thermal, battery, charging, low_power in steps:
        t += dt * 1000
        s = state(thermal, battery, charging, low_power)
        prev = c
        c = decide(p, s, c, t)
        assert c.tier <= target(p, s)[0]
        if prev is not None and c.tier > prev.tier:
            assert allowed_since is not None and t - allowed_since >= p.dwell_s * 1000
        up = target(p, s, p.up_margin_pct)[0]
        allowed_since = (allowed_since if allowed_since is not None else t) if up > c.tier else None


@pytest.mark.parametrize("kwargs,code,message", [
    (dict(thermal="hot"), "unknown_thermal", "none, light, moderate, severe, critical, emergency, shutdown"),
    (dict(thermal="serious"), "unknown_thermal", "is a thermal state on ios/web"),
    (dict(thermal="severe", platform="ios"), "unknown_thermal", "nominal, fair, serious, critical"),
    (dict(platform="andriod"), "unknown_platform", 'did you mean "android"'),
    (dict(battery=100.5), "battery_range", "0..100"),
    (dict(battery=-1), "battery_range", "0..100"),
])
def test_bad_states_are_clear_errors(policy, kwargs, code, message):
    with pytest.raises(PolicyError, match=message) as e:
        decide(policy, state(**kwargs), None, 0)
    assert e.value.code == code


def test_time_must_not_go_backwards(policy):
    c = decide(policy, state(), None, 5000)
    assert decide(policy, state(), c, 5000).tier == c.tier  # equal times are fine
    with pytest.raises(PolicyError, match="backwards"):
        decide(policy, state(), c, 4999)


def test_user_policy_is_merged_over_the_default_and_checked(tmp_path):
    m = manifest()
    p = bundle_policy(m, {"hysteresis": {"dwell_s": 5}, "latency": {"budget_ms": {"ref_phone": 10}}})
    assert p["hysteresis"] == {"up_margin_pct": 5, "dwell_s": 5} and p["thermal"]["max_tier"] == [4, 3, 2, 0]
    assert select_tier(p, device="ref_phone") == 3
    f = tmp_path / "p.yaml"
    f.write_text("tiers: [w16_k50_r24, w64_k100_r32]\ncharging:\n  max_tier: 0\n")
    p = bundle_policy(m, f)
    assert p["tiers"] == ["w16_k50_r24", "w64_k100_r32"] and p["thermal"]["max_tier"] == [1, 1, 0, 0]
    assert p["charging"] == {"max_tier": 0}
    bad = [({"hysterisis": {}}, 'did you mean "hysteresis"'),
           ({"thermal": {"max_teir": [0]}}, 'did you mean "max_tier"'),
           ({"charging": {"max_tier": 9}}, r"tier index in 0\.\.4"),
           ({"tiers": ["w16_k50_r24", "nope"]}, "not a variant of this bundle"),
           ({"battery": {"bands": [{"min_pct": 20, "max_tier": 1}, {"min_pct": 50, "max_tier": 2}]}},
            "highest first"),
           ({"hysteresis": {"dwell_s": -1}}, "dwell_s"),
           ({"battery": {"bands": [{"min_pct": 50, "max_tier": 1}, {"min_pct": 0, "max_tier": 3}]}},
            "must not grow as min_pct falls"),
           ({"thermal": {"max_tier": [3, 4, 2, 0]}}, "must not grow from cool to hot")]
    for doc, message in bad:
        with pytest.raises(PolicyError, match=message):
            bundle_policy(m, doc)
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(PolicyError, match="policy file .* is not valid JSON"):
        bundle_policy(m, tmp_path / "broken.json")


def select_tier(policy: dict, **kw) -> int:
    return decide(Policy.from_dict(policy), state(battery=100, charging=True, **kw), None, 0).tier


@pytest.mark.parametrize("reference,file", [("default", "policy_vectors.json"),
                                             ("custom", "policy_vectors_custom.json")])
def test_repo_vectors_are_current_and_pass(reference, file):
    doc = json.loads((REPO_VECTORS.parent / file).read_text())
    fresh = vectors_document(REFERENCE_POLICIES[reference]())
    assert doc["policy"] == fresh["policy"] and doc["cases"] == fresh["cases"], \
        f"stale: run slimvit policy vectors --reference {reference} --out conformance/{file}"
    assert check_vectors(doc) == []
    rules = {s["expect"].get("rule") for c in doc["cases"] for s in c["steps"]}
    assert rules >= ({"best", "thermal", "low_power", "battery", "latency", "hysteresis", "dwell"}
                     if reference == "default" else {"charging", "latency", "thermal", "battery", "low_power"})
    errors = {s["expect"].get("error") for c in doc["cases"] for s in c["steps"]} - {None}
    assert errors == set(doc["errors"])
    names = {(c["platform"], s["thermal"]) for c in doc["cases"] for s in c["steps"]}
    for plat, levels in doc["policy"]["thermal"]["platforms"].items():
        assert {(plat, n) for n in levels} <= names


def test_check_vectors_reports_a_wrong_expectation_and_a_malformed_file():
    doc = vectors_document(reference_policy())
    doc["cases"][0]["steps"][0]["expect"]["tier"] = 1
    (bad,) = check_vectors(doc)
    assert doc["cases"][0]["name"] in bad and "expected" in bad
    del doc["cases"][1]["steps"][0]["low_power"]
    with pytest.raises(PolicyError, match="cases/1/steps/0: 'low_power' is a required property"):
        check_vectors(doc)


def test_a_manifest_without_policy_is_a_clear_error():
    from exporter.policy.spec import policy_of

    with pytest.raises(PolicyError, match="has no policy section; re-export"):
        policy_of({"variants": []}, "old_bundle")


def test_refresh_latency_rereads_p50_and_keeps_everything_else():
    from exporter.policy.spec import refresh_latency

    m = manifest()
    old = bundle_policy(m, {"hysteresis": {"dwell_s": 7}, "latency": {"budget_ms": {"ref_phone": 10}}})
    next(v for v in m["variants"] if v["id"] == "w64_k50_r32")["artifacts"][0]["latency"]["ref_phone"]["p50_ms"] = 4.5
    new = refresh_latency(old, m)
    assert new["latency"]["p50_ms"]["ref_phone"]["w64_k50_r32"] == 4.5
    assert new["latency"]["budget_ms"] == {"ref_phone": 10} and new["hysteresis"]["dwell_s"] == 7
    assert {k: v for k, v in new.items() if k != "latency"} == {k: v for k, v in old.items() if k != "latency"}


@pytest.mark.parametrize("kwargs,reason", [
    ({"battery": 15}, "battery 15% < 20%: capped at tier 0"),
    ({"battery": 49.5}, "battery 49.5% < 50%: capped at tier 2"),
    ({"battery": 80}, "on battery (80%): capped at tier 3"),
    ({"battery": 80, "charging": True}, "no cap applies: best tier 4"),
    ({"thermal": "severe", "charging": True}, "android thermal severe = serious: capped at tier 2"),
    ({"thermal": "critical", "platform": "ios", "charging": True}, "ios thermal critical: capped at tier 0"),
    ({"low_power": True, "charging": True}, "low-power mode on: capped at tier 2"),
])
def test_reason_names_the_binding_threshold_the_way_a_person_reads_it(policy, kwargs, reason):
    assert decide(policy, state(**kwargs), None, 0).reason == reason


def test_reason_of_hysteresis_names_the_step_up_threshold(policy):
    low = decide(policy, state(battery=40), None, 0)
    assert decide(policy, state(battery=52), low, 1000).reason == "battery 52% < 55% to step up: stay at tier 2"


def test_vectors_carry_the_reason_text_for_the_ports():
    doc = json.loads(REPO_VECTORS.read_text())
    reasons = [s["expect"]["reason"] for c in doc["cases"] for s in c["steps"] if "variant" in s["expect"]]
    assert reasons and all(r for r in reasons)
    assert not any(">= 0%" in r for r in reasons)
