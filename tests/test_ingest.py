"""Ingest: device reports and the real text output of benchmark_model / onnxruntime_perf_test."""

import json
import sys
from pathlib import Path

import jsonschema
import pytest

from exporter.manifest import read_manifest
from exporter.measure.ingest import (
    IngestError,
    detect_tool,
    ingest_reports,
    parse_benchmark_model,
    parse_perf_test,
    report_problems,
    report_schema,
)
from tests.profiled_bundle import DATA, copy_bundle

MB = 2**20
# Every number read off the sample files by hand (tests/data/*.txt say where each comes from).
PARSED = {
    "benchmark_model_android_aarch64.txt": dict(
        load_ms=119.515, first_ms=87.112, mean_ms=63.7432, p50_ms=51.891, runs=1000, peak_mb=55.4961,
        graph="./models/tiny_muaalem_float32.tflite", delegate="xnnpack"),
    "benchmark_model_android_op_profiling.txt": dict(
        load_ms=0.855, first_ms=49.06, mean_ms=33.2094, p50_ms=33.2094, runs=50, peak_mb=12.8672,
        graph="/data/local/tmp/espcn_harmonic_2x_slim_w_cl.tflite", threads=4),
    "benchmark_model_rpi_xnnpack.txt": dict(
        load_ms=18.777, first_ms=64.791, mean_ms=55.0432, p50_ms=55.0432, runs=50, peak_mb=18.7227,
        graph="yolo_best_recall_int8_static.tflite", threads=4, delegate="xnnpack"),
    "onnxruntime_perf_test_windows.txt": dict(
        load_ms=18.3481, first_ms=2.0, mean_ms=0.940745, p50_ms=0.9458, p90_ms=1.0243, p99_ms=1.2057,
        runs=10000, peak_mb=50905088 / MB),
    "onnxruntime_perf_test_spacemit_k1.txt": dict(
        load_ms=708.476, first_ms=60.0, mean_ms=44.6395, p50_ms=44.6158, p90_ms=49.022, p99_ms=49.022,
        runs=10, peak_mb=53567488 / MB, threads=4, delegate="spacemit"),
    "onnxruntime_perf_test_android_1.3.txt": dict(
        load_ms=127.918, mean_ms=144.871, p50_ms=144.871, runs=10, peak_mb=158171136 / MB),
}


@pytest.mark.parametrize("name", sorted(PARSED))
def test_tool_outputs_parse_to_the_numbers_they_print(name):
    text = (DATA / name).read_text()
    tool = detect_tool(text)
    assert tool == ("benchmark_model" if name.startswith("benchmark_model") else "onnxruntime_perf_test")
    parse = parse_benchmark_model if tool == "benchmark_model" else parse_perf_test
    assert parse(text) == pytest.approx(PARSED[name])
    assert parse(text.replace("\n", "\r\n")) == parse(text)  # `adb shell` on older Android sends CRLF


def test_the_report_schema_is_valid_and_the_example_follows_it():
    jsonschema.Draft202012Validator.check_schema(report_schema())
    assert report_problems(json.loads((DATA / "device_report_pixel7.json").read_text())) == []


def test_a_device_report_merges_under_its_device_and_lists_what_it_skips(tmp_path):
    bundle = copy_bundle(tmp_path)
    report = json.loads((DATA / "device_report_pixel7.json").read_text())
    report["entries"].append({"variant": "w64_k100_r32", "format": "tflite", "precision": "fp32",
                              "p50_ms": 1.0})
    sha = {v["id"]: v["artifacts"][0]["sha256"] for v in read_manifest(bundle)["variants"]}
    report["entries"][0]["sha256"] = sha["w32_k100_r32"]
    report["entries"][1]["sha256"] = "0" * 64
    (tmp_path / "r.json").write_text(json.dumps(report))
    result = ingest_reports(bundle, [tmp_path / "r.json"])
    assert len(result.merged) == 1 and len(result.skipped) == 3
    assert "$.entries[1] (w64_k100_r32 onnx fp32): sha256 differs" in result.skipped[0]
    assert "$.entries[2] (w48_k70_r224 onnx int8): the bundle has no such artifact" in result.skipped[1]
    assert "$.entries[3] (w64_k100_r32 tflite fp32)" in result.skipped[2]
    manifest = read_manifest(bundle)
    assert manifest == result.manifest
    lat = {v["id"]: v["artifacts"][0].get("latency", {}).get("pixel-7-android-14") for v in manifest["variants"]}
    assert lat["w32_k100_r32"] == {"p50_ms": 0.58, "p90_ms": 0.66, "p99_ms": 0.81, "load_ms": 14.2,
                                   "first_ms": 2.3, "peak_mb": 7.1, "runs": 100, "runtime": "onnxruntime",
                                   "runtime_version": "1.22.0", "threads": 4, "delegate": "xnnpack",
                                   "source": "device report"}
    assert lat["w64_k100_r32"] is None
    assert manifest["devices"]["pixel-7-android-14"]["soc"] == "Google Tensor G2"
    assert manifest["pareto"]["pixel-7-android-14"] == {"fp32": ["w32_k100_r32"]}


def test_a_malformed_report_names_every_problem_by_json_path_and_writes_nothing(tmp_path):
    bundle = copy_bundle(tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    report = json.loads((DATA / "device_report_pixel7.json").read_text())
    del report["device"]["name"]
    report["entries"][0]["p50_ms"] = -3
    report["entries"][1]["latency"] = 1.0
    (tmp_path / "bad.json").write_text(json.dumps(report))
    with pytest.raises(IngestError) as e:
        ingest_reports(bundle, [DATA / "device_report_pixel7.json", tmp_path / "bad.json"])
    msg = str(e.value)
    assert "3 problem(s)" in msg and "$.device: 'name' is a required property" in msg
    assert "$.entries[0].p50_ms: -3 is less than the minimum of 0" in msg
    assert "$.entries[1]: Additional properties are not allowed ('latency'" in msg
    (tmp_path / "broken.json").write_text('{"format": "slimvit-device-report/1",\n "device": }')
    with pytest.raises(IngestError, match=r"not valid JSON \(line 2, column 12"):
        ingest_reports(bundle, [tmp_path / "broken.json"])
    assert (bundle / "manifest.json").read_bytes() == before


def test_tool_outputs_merge_by_the_artifact_they_name(tmp_path):
    bundle = copy_bundle(tmp_path)
    bm = (DATA / "benchmark_model_android_aarch64.txt").read_text().replace(
        "./models/tiny_muaalem_float32.tflite", "/data/local/tmp/w32_k100_r32.fp32.tflite")
    (tmp_path / "bm.txt").write_text(bm)
    named = tmp_path / "w64_k100_r32.fp32.onnx.txt"  # onnxruntime_perf_test does not print the model
    named.write_text((DATA / "onnxruntime_perf_test_windows.txt").read_text())
    result = ingest_reports(bundle, [tmp_path / "bm.txt", named, DATA / "benchmark_model_rpi_xnnpack.txt"],
                            device_id="pixel-7", device_name="Pixel 7")
    assert len(result.merged) == 2
    assert "no tflite artifact named benchmark_model_rpi_xnnpack.txt or yolo_best_recall_int8_static.tflite" \
        in result.skipped[0]
    arts = {(v["id"], a["format"]): a for v in result.manifest["variants"] for a in v["artifacts"]}
    tfl = arts["w32_k100_r32", "tflite"]["latency"]["pixel-7"]
    assert tfl == {"p50_ms": 51.891, "mean_ms": 63.7432, "load_ms": 119.515, "first_ms": 87.112,
                   "peak_mb": 55.4961, "runs": 1000, "runtime": "litert", "delegate": "xnnpack",
                   "source": "benchmark_model"}
    ort = arts["w64_k100_r32", "onnx"]["latency"]["pixel-7"]
    assert (ort["p50_ms"], ort["p99_ms"], ort["runtime"], ort["source"]) == (
        0.9458, 1.2057, "onnxruntime", "onnxruntime_perf_test")
    assert result.manifest["devices"]["pixel-7"] == {"name": "Pixel 7", "source": "w64_k100_r32.fp32.onnx.txt"}


def test_text_outputs_need_a_device_and_an_artifact(tmp_path):
    bundle = copy_bundle(tmp_path)
    ort_out = DATA / "onnxruntime_perf_test_windows.txt"
    with pytest.raises(IngestError, match="pass --device-id"):
        ingest_reports(bundle, [ort_out])
    result = ingest_reports(bundle, [ort_out], device_id="win")
    assert result.merged == [] and "pass --artifact FILE" in result.skipped[0]
    result = ingest_reports(bundle, [ort_out], device_id="win", artifact="onnx/w32_k100_r32.fp32.onnx")
    assert result.merged == ["win: w32_k100_r32 onnx fp32 p50 0.946 ms"]
    (tmp_path / "notes.txt").write_text("the phone got warm\n")
    with pytest.raises(IngestError, match="neither JSON nor the output of benchmark_model"):
        ingest_reports(bundle, [tmp_path / "notes.txt"], device_id="win")


def test_cli_ingest_lists_merged_and_skipped(tmp_path, capsys, monkeypatch):
    from exporter.cli import main

    bundle = copy_bundle(tmp_path)
    monkeypatch.setattr(sys, "argv", ["slimvit", "ingest", str(bundle), str(DATA / "device_report_pixel7.json")])
    main()
    err = capsys.readouterr().err
    assert "2 merged, 1 skipped" in err and "w48_k70_r224 onnx int8" in err
    # the phone's numbers now decide the tiers, and ingest says what that did to the policy
    policy = read_manifest(bundle)["policy"]
    assert policy["basis"]["device"] == "pixel-7-android-14"
    assert ("policy tiers changed" in err) or ("policy tiers unchanged (onnx fp32, cost = p50 on pixel" in err)
    assert "conformance vectors refreshed" in " ".join(err.split())
    monkeypatch.setattr(sys, "argv", ["slimvit", "ingest", str(bundle), str(Path(tmp_path / "missing.json"))])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
