"""Trace replay: hand-checked figures, trace errors, and select/simulate on a real exported bundle."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from exporter.policy.engine import Policy, PolicyError
from exporter.policy.simulate import read_trace, replay, simulate_bundle, summarize
from exporter.policy.spec import default_policy

TRACES = Path(__file__).resolve().parents[1] / "examples" / "traces"
HEADER = "t_s,battery,charging,thermal,low_power\n"


def three_tiers() -> dict:
    rows = [("small", 1_000_000, 0.80), ("mid", 2_000_000, 0.90), ("big", 4_000_000, 0.95)]
    return {"variants": [{"id": i, "macs": m, "width": 1.0, "resolution": 32,
                          "artifacts": [{"precision": "fp32", "accuracy": {"top1": a}}]} for i, m, a in rows]}


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_summary_figures_match_a_hand_computation(tmp_path):
    manifest = three_tiers()
    policy = Policy.from_dict(default_policy(manifest))  # dwell 60 s
    trace = write(tmp_path, HEADER + "0,90,0,critical,0\n60,90,1,none,0\n120,90,1,none,0\n180,90,1,none,0\n")
    rows = read_trace(trace)
    choices = replay(policy, rows)
    assert [c.tier for c in choices] == [0, 0, 2, 2]
    assert [c.rule for c in choices] == ["thermal", "dwell", "best", "best"]
    s = summarize(manifest, policy, rows, choices, fps=2)
    assert s["switches"] == 1 and s["switches_per_minute"] == pytest.approx(1 / 3)
    assert s["time_per_variant_s"] == {"small": 120.0, "big": 60.0}
    assert s["policy"]["mean_accuracy"] == pytest.approx((0.80 * 120 + 0.95 * 60) / 180)
    assert s["policy"]["energy_proxy_macs"] == pytest.approx(2 * (1e6 * 120 + 4e6 * 60))
    assert s["always_best"]["energy_proxy_macs"] == pytest.approx(2 * 4e6 * 180)
    assert s["always_cheapest"]["mean_accuracy"] == pytest.approx(0.80)
    assert s["vs_always_best"]["energy_saving"] == pytest.approx(1 - (120 + 4 * 60) / (4 * 180))
    assert s["policy"]["mean_latency_ms"] == pytest.approx((1 * 120 + 4 * 60) / 180 * 1e6 / 1e9 * 8.8)
    assert "estimated from MACs" in s["latency_source"]


@pytest.mark.parametrize("text,message", [
    ("t_s,battery,thermal\n0,50,none\n", "lacks column(s) charging, low_power"),
    (HEADER + "10,50,0,none,0\n5,50,0,none,0\n", "row 2: t_s 5 comes after 10; sort the rows"),
    (HEADER + "0,50,maybe,none,0\n", "row 1: charging must be 0/1 or true/false"),
    (HEADER + "0,half,0,none,0\n", "row 1: battery must be a number"),
    (HEADER, "has no rows"),
])
def test_bad_traces_are_clear_errors(tmp_path, text, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_trace(write(tmp_path, text))


@pytest.mark.parametrize("line,message", [
    ("0,50,0,warm,0", "row 1: thermal state for android must be one of {none, light"),
    ("0,101,0,none,0", "row 1: battery must be a percentage in 0..100"),
])
def test_bad_trace_values_name_the_row(tmp_path, line, message):
    policy = Policy.from_dict(default_policy(three_tiers()))
    with pytest.raises(PolicyError, match=message.replace("{", r"\{").replace("(", r"\(")):
        replay(policy, read_trace(write(tmp_path, HEADER + line + "\n")))


def test_example_traces_replay_with_few_switches():
    policy = Policy.from_dict(default_policy(three_tiers()))
    for name in ("drain_60min", "thermal_throttling", "charge_cycle", "noisy_sensor"):
        rows = read_trace(TRACES / f"{name}.csv")
        s = summarize(three_tiers(), policy, rows, replay(policy, rows))
        assert s["duration_s"] >= 1200 and s["switches_per_minute"] <= 1.0, name
    rows = read_trace(TRACES / "thermal_throttling.csv")
    assert {c.tier for c in replay(policy, rows)} == {0, 1, 2}  # severe -> saver, critical -> cheapest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from exporter.bundle.export import export_bundle
    from exporter.checkpoints import LoadedModel
    from exporter.nn.config import VariantGrid
    from tests.conftest import tiny_model

    out = tmp_path_factory.mktemp("policy_bundle")
    loaded = LoadedModel(tiny_model(), "tiny", "slimvit", [str(i) for i in range(10)])
    grid = VariantGrid(widths=(0.25, 1.0), keep_rates=(1.0,), resolutions=(32,))
    export_bundle(loaded, grid, out,  # no eval set: the policy below names its tiers
                  policy={"tiers": ["w16_k100_r32", "w64_k100_r32"], "hysteresis": {"dwell_s": 30},
                          "thermal": {"max_tier": [1, 1, 0, 0]},
                          "battery": {"bands": [{"min_pct": 50, "max_tier": 1}, {"min_pct": 0, "max_tier": 0}]}})
    return out


def test_export_writes_the_policy_and_its_vectors(bundle):
    from exporter.policy.vectors import check_vectors

    manifest = json.loads((bundle / "manifest.json").read_text())
    policy = manifest["policy"]
    assert policy["hysteresis"] == {"up_margin_pct": 5, "dwell_s": 30}  # the user's value over the default
    # A random tiny model's front can be one variant, so the test names its tiers.
    assert policy["tiers"] == ["w16_k100_r32", "w64_k100_r32"]
    assert policy["thermal"]["max_tier"][-1] == 0 and policy["charging"] == {"max_tier": 1}
    ref = manifest["policy_vectors"]
    data = (bundle / ref["path"]).read_bytes()
    assert ref["sha256"] == hashlib.sha256(data).hexdigest()
    vectors = json.loads(data)
    assert vectors["policy"] == policy and len(vectors["cases"]) == ref["cases"] > 40
    assert check_vectors(vectors) == []


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from exporter.cli import main

    monkeypatch.setattr(sys, "argv", ["slimvit", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_select_cli(bundle, monkeypatch, capsys):
    tiers = json.loads((bundle / "manifest.json").read_text())["policy"]["tiers"]
    code, out, _ = run_cli(monkeypatch, capsys, "select", str(bundle), "--thermal", "critical",
                           "--battery", "90", "--json")
    got = json.loads(out)
    assert code == 0 and got == {"variant": tiers[0], "tier": 0, "rule": "thermal", "reason": got["reason"]}
    assert got["reason"] == "android thermal critical: capped at tier 0"
    code, out, _ = run_cli(monkeypatch, capsys, "select", str(bundle), "--thermal", "nominal",
                           "--battery", "10", "--charging", "--platform", "ios", "--json")
    assert code == 0 and json.loads(out)["variant"] == tiers[-1]
    code, _, err = run_cli(monkeypatch, capsys, "select", str(bundle), "--thermal", "warm", "--battery", "10")
    assert code == 2 and "none, light, moderate, severe, critical, emergency, shutdown" in err


def test_simulate_cli_writes_summary_and_plot(bundle, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "simulate", str(bundle), str(TRACES / "thermal_throttling.csv"),
                             "--out", str(tmp_path / "sim"))
    assert code == 0, err
    s = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert s["steps"] == 361 and s["duration_s"] == 1800
    assert s["switches"] == 2  # down at severe (14 min), up 30 s after light (25 min)
    assert s["time_per_variant_s"] == {"w16_k100_r32": 11 * 60 + 30, "w64_k100_r32": 1800 - 690}
    assert sum(s["time_per_variant_s"].values()) == pytest.approx(1800)
    assert s["always_cheapest"]["energy_proxy_macs"] < s["policy"]["energy_proxy_macs"] \
        <= s["always_best"]["energy_proxy_macs"]
    png = (tmp_path / "sim" / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "always best" in out


def test_a_bundle_without_policy_is_a_clear_error(bundle, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["policy"], manifest["policy_vectors"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PolicyError, match="has no policy section"):
        simulate_bundle(old, TRACES / "drain_60min.csv", tmp_path / "x")


def test_a_bad_policy_fails_before_any_export_work(tmp_path):
    from exporter.bundle.export import export_bundle
    from exporter.checkpoints import LoadedModel
    from exporter.nn.config import VariantGrid
    from tests.conftest import tiny_model

    loaded = LoadedModel(tiny_model(), "tiny", "slimvit", [str(i) for i in range(10)])
    with pytest.raises(PolicyError, match='unknown policy key "hysterisis" \\(did you mean "hysteresis"'):
        export_bundle(loaded, VariantGrid((1.0,), (1.0,)), tmp_path / "b", policy={"hysterisis": {}})
    assert not (tmp_path / "b").exists()


def test_policy_update_rewrites_policy_and_vectors(bundle, tmp_path):
    import shutil

    from exporter.manifest import read_manifest
    from exporter.policy.store import update_policy

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    update_policy(copy, {"tiers": ["w16_k100_r32", "w64_k100_r32"], "hysteresis": {"dwell_s": 5}})
    manifest = read_manifest(copy)
    assert manifest["policy"]["hysteresis"]["dwell_s"] == 5
    data = (copy / manifest["policy_vectors"]["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["policy_vectors"]["sha256"]
    assert json.loads(data)["policy"] == manifest["policy"]
    update_policy(copy)  # no file: the bundle's own policy is kept, its p50 table re-read
    assert read_manifest(copy)["policy"] == manifest["policy"]


def test_simulate_uses_the_bundles_measurements_without_device_and_says_which(bundle, tmp_path):
    """With latency in the bundle, `simulate` needs no --device: it uses the measured device."""
    import shutil

    from exporter.manifest import read_manifest, write_manifest

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    m = read_manifest(copy)
    for v in m["variants"]:
        ms = {"w16_k100_r32": 1.5, "w64_k100_r32": 4.0}[v["id"]]
        v["artifacts"][0]["latency"] = {"pixel": {"p50_ms": ms, "runtime": "onnxruntime", "source": "test"}}
    m["devices"] = {"pixel": {"name": "Pixel", "kind": "phone", "source": "test"}}
    write_manifest(copy, m)
    trace = write(tmp_path, HEADER + "0,90,1,none,0\n60,90,1,none,0\n")
    s = simulate_bundle(copy, trace, tmp_path / "out")
    assert s["device"] == "pixel" and s["latency_source"] == "measured p50 of onnx fp32 on pixel"
    assert [t["latency_ms"] for t in s["tiers"]] == [1.5, 4.0]
