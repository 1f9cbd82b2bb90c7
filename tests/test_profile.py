"""Profiling: every artifact measured in its own process, results and Pareto fronts in the manifest."""

import importlib.metadata
import json
import sys

import onnxruntime as ort
import pytest

from exporter.manifest import read_manifest, validate_manifest
from exporter.measure.profile import RUNTIMES, ProfileError, host_device, profile_bundle, run_worker, usable_cores
from exporter.policy.pareto import bundle_fronts
from tests.profiled_bundle import TFLITE, copy_bundle, profiled_bundle

LATENCY_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "cpu_p50_ms", "load_ms", "first_ms", "peak_mb", "runs",
                "threads", "runtime", "runtime_version", "source"}


def test_every_onnx_and_tflite_artifact_gets_latency_under_this_host():
    bundle, manifest = profiled_bundle()
    dev, device = host_device()
    arts = [a for v in manifest["variants"] for a in v["artifacts"]]
    assert len(arts) == 3 and {a["format"] for a in arts} == {"onnx", "tflite"}
    for a in arts:
        lat = a["latency"][dev]
        assert set(lat) == LATENCY_KEYS
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert 0 < lat["cpu_p50_ms"] <= 1.1 * lat["p99_ms"]  # one thread: CPU time <= wall time
        assert lat["load_ms"] > 0 and lat["first_ms"] > 0
        assert lat["runs"] == 5 and lat["threads"] == 1 and lat["source"] == "slimvit profile"
        # Loading a model grows the fresh worker's RSS by at least the file size.
        assert lat["peak_mb"] >= a["bytes"] / 2**20
        expected = (("onnxruntime", ort.__version__) if a["format"] == "onnx"
                    else ("litert", importlib.metadata.version("ai-edge-litert")))
        assert (lat["runtime"], lat["runtime_version"]) == expected
    assert manifest["devices"][dev] == device and device["cores"] == usable_cores()
    assert read_manifest(bundle) == manifest  # written, and valid against the schema
    assert set(manifest["pareto"]) == {"macs", dev}


def test_rerun_replaces_only_this_devices_entries(tmp_path):
    bundle = copy_bundle(tmp_path)
    manifest = read_manifest(bundle)
    other = {"p50_ms": 9.5, "runtime": "litert", "source": "device report"}
    (tfl,) = [a for v in manifest["variants"] for a in v["artifacts"] if a["format"] == "tflite"]
    tfl["latency"] = {"pixel-7": other}
    manifest["devices"] = {"pixel-7": {"name": "Pixel 7", "kind": "phone"}}
    from exporter.manifest import write_manifest

    write_manifest(bundle, manifest)
    first = profile_bundle(bundle, ["litert"], runs=3, warmup=0, device_id="ci-host")
    second = profile_bundle(bundle, ["litert"], runs=4, warmup=0, device_id="ci-host")
    (old,) = [a for v in first["variants"] for a in v["artifacts"] if a["format"] == "tflite"]
    (new,) = [a for v in second["variants"] for a in v["artifacts"] if a["format"] == "tflite"]
    assert old["latency"]["ci-host"]["runs"] == 3 and new["latency"]["ci-host"]["runs"] == 4
    assert new["latency"]["pixel-7"] == other
    assert set(second["devices"]) == {"pixel-7", "ci-host"}
    # --runtime litert leaves the ONNX artifacts unmeasured
    assert not [a for v in second["variants"] for a in v["artifacts"] if a["format"] == "onnx" and "latency" in a]


def test_worker_measures_tflite_with_litert_in_a_fresh_process():
    result = run_worker(TFLITE, RUNTIMES["litert"], threads=1, runs=5, warmup=1)
    assert result["runtime"] == "litert" and result["runs"] == 5
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["peak_mb"] > 0


def test_bad_input_is_reported_before_anything_runs(tmp_path):
    bundle = copy_bundle(tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(ProfileError, match="--runs must be >= 1"):
        profile_bundle(bundle, runs=0)
    with pytest.raises(Exception, match='did you mean "onnxruntime"'):
        profile_bundle(bundle, ["onnxrt"])
    with pytest.raises(ProfileError, match="--device-id"):
        profile_bundle(bundle, device_id="macs")
    (bundle / "tflite" / "w32_k100_r32.fp32.tflite").unlink()
    with pytest.raises(ProfileError, match="missing; re-export"):
        profile_bundle(bundle, ["litert"])
    assert (bundle / "manifest.json").read_bytes() == before


def test_a_bundle_without_runnable_artifacts_says_which_formats_run(tmp_path):
    bundle = copy_bundle(tmp_path)
    manifest = read_manifest(bundle)
    for v in manifest["variants"]:
        v["artifacts"] = [a for a in v["artifacts"] if a["format"] != "tflite"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ProfileError, match=r"no artifact that litert can run \(formats here: onnx; "
                                           r"onnxruntime runs onnx, litert runs tflite, executorch runs executorch\)"):
        profile_bundle(bundle, ["litert"])


def test_fronts_drop_dominated_variants_per_device_and_precision():
    def art(prec, acc, p50=None):
        a = {"format": "onnx", "precision": prec, "accuracy": {"top1": acc}}
        return a | ({"latency": {"phone": {"p50_ms": p50}}} if p50 is not None else {})

    manifest = {"variants": [
        {"id": "a", "macs": 10, "artifacts": [art("fp32", 0.50, 4.0), art("int8", 0.45, 1.0)]},
        {"id": "b", "macs": 20, "artifacts": [art("fp32", 0.70, 3.0), art("int8", 0.69, 2.0)]},
        {"id": "c", "macs": 30, "artifacts": [art("fp32", 0.60, 5.0)]},   # dominated by b
        {"id": "d", "macs": 40, "artifacts": [art("fp32", 0.80, 6.0)]},
        {"id": "e", "macs": 5, "artifacts": [{"format": "onnx", "precision": "fp32"}]},  # no accuracy
    ]}
    fronts = bundle_fronts(manifest)
    assert fronts["macs"] == {"fp32": ["a", "b", "d"], "int8": ["a", "b"]}
    # On the phone b is faster than a and more accurate, so a drops out of the fp32 front.
    assert fronts["phone"] == {"fp32": ["b", "d"], "int8": ["a", "b"]}


def test_pareto_section_follows_the_manifest_schema():
    bundle, manifest = profiled_bundle()
    bad = json.loads(json.dumps(manifest))
    bad["pareto"]["macs"]["fp32"] = []
    bad["devices"]["macs"] = {"name": "x"}
    with pytest.raises(Exception, match="2 problem"):
        validate_manifest(bad)


def test_cli_profile_prints_the_table_and_exits_2_on_bad_input(tmp_path, capsys, monkeypatch):
    from exporter.cli import main

    bundle = copy_bundle(tmp_path)
    monkeypatch.setattr(sys, "argv", ["slimvit", "profile", str(bundle), "--runtime", "litert",
                                      "--runs", "3", "--warmup", "0", "--device-id", "cli-host"])
    main()
    captured = capsys.readouterr()
    out, err = captured.out, " ".join(captured.err.split())
    # a summary, not one row per artifact; what was not measured and why; the policy's fate
    assert "fastest" in out and "slowest" in out and "front" in out and "p90" not in out
    assert "2 onnx artifact(s) not measured: left out of --runtime (add onnxruntime)" in err
    assert "policy tiers unchanged (onnx fp32" in err and "conformance vectors refreshed" in err
    assert "p50 latency on cli-host" in out and "w32_k100_r32" in out and "tflite" in out
    assert [a["format"] for v in read_manifest(bundle)["variants"] for a in v["artifacts"]
            if "cli-host" in a.get("latency", {})] == ["tflite"]
    monkeypatch.setattr(sys, "argv", ["slimvit", "profile", str(bundle), "--runtime", "tflite"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and 'did you mean "litert"' in capsys.readouterr().err


def test_profiling_refreshes_the_policy_latency_table_and_its_vectors():
    """The policy's p50 table follows the new measurements; the shipped vectors match it."""
    import json

    from exporter.fileio import sha256_file

    bundle, manifest = profiled_bundle()
    dev, _ = host_device()
    policy = manifest["policy"]
    p50 = policy["latency"]["p50_ms"][dev]
    by_id = {v["id"]: v for v in manifest["variants"]}
    basis = policy["basis"]
    assert (basis["format"], basis["precision"], basis["device"]) == ("onnx", "fp32", dev)
    for tier in policy["tiers"]:
        (measured,) = [a["latency"][dev]["p50_ms"] for a in by_id[tier]["artifacts"]
                       if (a["format"], a["precision"]) == ("onnx", "fp32")]
        assert p50[tier] == measured
    vectors = json.loads((bundle / "policy_vectors.json").read_text())
    assert vectors["policy"] == policy
    assert manifest["policy_vectors"]["sha256"] == sha256_file(bundle / "policy_vectors.json")
