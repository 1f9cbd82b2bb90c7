"""Policy tiers are the Pareto front of what the app runs: its format and precision, measured
p50 where the bundle has it, MACs otherwise; profiling/ingesting recomputes them and says so."""

import copy

from exporter.policy.engine import DeviceState, Policy, decide
from exporter.policy.spec import default_policy, refresh_policy
from exporter.policy.store import update_policy
from exporter.policy.tiers import TierBasis, default_basis, front_tiers, measured_device


def art(fmt, prec, acc, p50=None, dev="phone"):
    a = {"format": fmt, "precision": prec, "accuracy": {"top1": acc}}
    if p50 is not None:
        a["latency"] = {dev: {"p50_ms": p50}}
    return a


def demo_like(measured: bool) -> dict:
    """The issue's case: on the device, top-k pruning at the smallest width costs more than it
    saves, so w16_k50_r24 is slower and less accurate than w16_k100_r24."""
    rows = [  # id, macs, top-1, tflite fp32 p50, tflite int8 p50
        ("w16_k50_r24", 1_000_000, 0.905, 0.018, 0.012),
        ("w16_k100_r24", 1_500_000, 0.919, 0.011, 0.009),
        ("w32_k100_r32", 4_000_000, 0.950, 0.030, 0.020),
        ("w64_k100_r32", 9_000_000, 0.960, 0.080, 0.050),
    ]
    return {"variants": [{"id": vid, "macs": macs, "width": 1.0, "resolution": 32, "artifacts": [
        art("onnx", "fp32", acc), art("tflite", "fp32", acc, fp32 if measured else None),
        art("tflite", "int8", acc - 0.01, int8 if measured else None)]}
        for vid, macs, acc, fp32, int8 in rows],
        "devices": {"phone": {"kind": "phone"}}}


def test_without_measurements_the_tiers_are_the_macs_front_of_tflite_fp32():
    m = demo_like(measured=False)
    basis = default_basis(m)
    assert (basis.format, basis.precision, basis.device) == ("tflite", "fp32", None)
    assert front_tiers(m, basis) == ["w16_k50_r24", "w16_k100_r24", "w32_k100_r32", "w64_k100_r32"]


def test_measured_latency_drops_the_dominated_variant_so_critical_heat_runs_the_faster_one():
    m = demo_like(measured=True)
    p = default_policy(m)
    assert p["basis"] == {"format": "tflite", "precision": "fp32", "device": "phone", "tiers": "front"}
    assert p["tiers"] == ["w16_k100_r24", "w32_k100_r32", "w64_k100_r32"]
    hot = decide(Policy.from_dict(p), DeviceState("android", "critical", 90, True), None, 0)
    assert hot.variant == "w16_k100_r24"
    assert p["latency"]["p50_ms"]["phone"] == {"w16_k100_r24": 0.011, "w32_k100_r32": 0.03, "w64_k100_r32": 0.08}


def test_the_front_is_per_format_and_precision():
    m = demo_like(measured=True)
    # int8 on the phone: the same shape of front, from the int8 numbers
    assert front_tiers(m, TierBasis("tflite", "int8", "phone")) == ["w16_k100_r24", "w32_k100_r32", "w64_k100_r32"]
    # ONNX has no measurement: MACs, where the pruned variant is cheapest
    assert measured_device(m, "onnx", "fp32") is None
    assert front_tiers(m, default_basis(m, "onnx"))[0] == "w16_k50_r24"


def test_a_device_that_measured_only_some_artifacts_is_not_used():
    m = demo_like(measured=True)
    del m["variants"][0]["artifacts"][1]["latency"]
    assert measured_device(m, "tflite", "fp32") is None


def test_refresh_after_profiling_recomputes_the_tiers_and_explains_why():
    before = demo_like(measured=False)
    policy = default_policy(before)
    policy["hysteresis"]["dwell_s"] = 7
    policy["latency"] = {"budget_ms": {"phone": 1.0}, "p50_ms": {}}
    after = demo_like(measured=True)
    new, change = refresh_policy(policy, after)
    assert new["tiers"] == ["w16_k100_r24", "w32_k100_r32", "w64_k100_r32"]
    assert new["hysteresis"]["dwell_s"] == 7 and new["latency"]["budget_ms"] == {"phone": 1.0}
    assert change[0].startswith("policy tiers changed (tflite fp32, cost = p50 on phone): w16_k50_r24, ")
    assert "w16_k50_r24 left: w16_k100_r24 costs 0.011 ms vs 0.018 ms, top-1 91.9% vs 90.5%" in change[1]
    Policy.from_dict(new)  # caps were rebuilt for the new tier count
    same, none = refresh_policy(new, after)
    assert same["tiers"] == new["tiers"] and none == []


def test_user_tiers_are_kept_on_refresh():
    m = demo_like(measured=True)
    from exporter.policy.spec import bundle_policy

    p = bundle_policy(m, {"tiers": ["w16_k50_r24", "w64_k100_r32"]})
    assert p["basis"]["tiers"] == "user"
    new, change = refresh_policy(p, m)
    assert new["tiers"] == ["w16_k50_r24", "w64_k100_r32"] and change == []


def test_policy_update_can_choose_the_apps_format_and_precision(tmp_path):
    import pytest

    from exporter.manifest import read_manifest
    from exporter.policy.engine import PolicyError
    from tests.profiled_bundle import copy_bundle

    bundle = copy_bundle(tmp_path)
    policy, _ = update_policy(bundle, None, "tflite", "fp32")
    assert policy["basis"]["format"] == "tflite" and policy["tiers"] == ["w32_k100_r32"]
    assert read_manifest(bundle)["policy"] == policy
    policy, change = update_policy(bundle, None, "onnx")
    assert policy["basis"]["format"] == "onnx" and len(policy["tiers"]) >= 1
    assert (change == []) == (policy["tiers"] == ["w32_k100_r32"])
    assert not change or change[0].startswith("policy tiers changed (onnx fp32")
    with pytest.raises(PolicyError, match="no coreml artifact; formats here: onnx, tflite"):
        update_policy(bundle, None, "coreml")
    with pytest.raises(PolicyError, match="precisions: fp32"):
        update_policy(bundle, None, "onnx", "int8")


def test_old_policies_without_basis_are_refreshed_on_the_default_basis():
    m = demo_like(measured=True)
    old = copy.deepcopy(default_policy(demo_like(measured=False)))
    del old["basis"]
    new, change = refresh_policy(old, m)
    assert new["basis"]["device"] == "phone" and new["tiers"][0] == "w16_k100_r24" and change
