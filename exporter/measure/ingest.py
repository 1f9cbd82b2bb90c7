"""Merge latency measured elsewhere (phones, browsers, boards) into a bundle's manifest.

Three inputs are understood, detected from the file's content:

- a device report (JSON, `exporter/schema/device_report.schema.json`, docs/device-report.md),
  as written by the demo apps' profile mode;
- the text output of LiteRT's ``benchmark_model``;
- the text output of ONNX Runtime's ``onnxruntime_perf_test``;

so a profiling run over adb can be merged without an app. Entries land under their device id
in ``artifact.latency`` and ``devices``; the ``pareto`` section is recomputed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from exporter.errors import SlimvitError
from exporter.gate.files import loads_strict, read_capped
from exporter.gate.limits import MAX_TEXT_BYTES
from exporter.manifest import read_manifest, write_manifest
from exporter.policy.pareto import bundle_fronts
from exporter.policy.store import refresh_bundle_policy

REPORT_FORMAT = "slimvit-device-report/1"
REPORT_SCHEMA = "device_report.schema.json"
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "load_ms", "first_ms", "peak_mb", "runs")
DEVICE_KEYS = ("name", "kind", "model", "os", "soc", "cpu", "cores", "memory_mb")
# Which runtime and export format each text tool measures.
TOOLS = {"benchmark_model": ("litert", "tflite"), "onnxruntime_perf_test": ("onnxruntime", "onnx")}


class IngestError(SlimvitError):
    """A report cannot be read, does not follow its format, or lacks what merging needs."""


class UnknownArtifact(IngestError):
    """A tool output measured a file the bundle does not have: listed and skipped, not fatal."""


@dataclass
class IngestResult:
    """What `ingest_reports` did: the manifest written, entries merged and entries skipped."""

    manifest: dict[str, Any]
    merged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@cache
def report_schema() -> dict[str, Any]:
    return json.loads(resources.files("exporter.schema").joinpath(REPORT_SCHEMA).read_text())


def json_path(parts: Sequence[str | int]) -> str:
    """``["entries", 2, "p50_ms"]`` -> ``$.entries[2].p50_ms``."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def report_problems(report: Any) -> list[str]:
    """Every way ``report`` breaks the device report schema, as 'JSON path: message'."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{json_path(list(e.absolute_path))}: {e.message}" for e in errors]


def validate_report(report: Any, where: str) -> dict[str, Any]:
    problems = report_problems(report)
    if problems:
        raise IngestError(f"{where} is not a valid device report ({len(problems)} problem(s)): "
                          + "; ".join(problems[:10]) + "; see docs/device-report.md")
    return report


# --- text output of the vendors' benchmark tools --------------------------------------------

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


def _find(pattern: str, text: str) -> float | None:
    found = re.findall(pattern, text)
    return float(found[-1]) if found else None


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Parse LiteRT/TFLite ``benchmark_model`` output (any log prefix such as ``INFO:``).

    Timings are printed in microseconds. The last ``count=`` line holds the timed runs; newer
    builds add ``p5= median= p95=``, so p50 is the median where printed and the mean otherwise.

    Returns:
        ``p50_ms``, ``mean_ms``, ``load_ms``, ``first_ms``, ``peak_mb``, ``runs`` where found,
        plus ``graph`` (the model path), ``threads`` and ``delegate``.
    """
    out: dict[str, Any] = {}
    timings = re.search(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM
                        + r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM, text)
    legacy = re.search(r"Average inference timings in us: Warmup: " + _NUM + r", Init: " + _NUM
                       + r", (?:no stats|Inference): " + _NUM, text)
    if timings:
        out["load_ms"] = float(timings[1]) / 1e3
        out["first_ms"] = float(timings[2]) / 1e3
        out["mean_ms"] = float(timings[4]) / 1e3
    elif legacy:
        out["load_ms"], out["mean_ms"] = float(legacy[2]) / 1e3, float(legacy[3]) / 1e3
    counts = re.findall(r"count=(\d+)(?: first=\S+)? curr=\S+(.*)", text)
    if counts:
        n, rest = counts[-1]
        out["runs"] = int(n)
        median = re.search(r"median=" + _NUM, rest)
        avg = re.search(r"avg=" + _NUM, rest)
        if "mean_ms" not in out and avg:
            out["mean_ms"] = float(avg[1]) / 1e3
        if median:
            out["p50_ms"] = float(median[1]) / 1e3
    if "mean_ms" in out:
        out.setdefault("p50_ms", out["mean_ms"])
    init_ms = _find(r"Initialized session in " + _NUM + r"\s*ms", text)
    if init_ms is not None:
        out.setdefault("load_ms", init_ms)
    mem = _find(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) "
                r"\(MB\): init=\S+ overall=" + _NUM, text)
    if mem is not None:
        out["peak_mb"] = mem
    graph = re.search(r"Graph: \[([^\]]+)\]", text)
    if graph:
        out["graph"] = graph[1].strip()
    threads = _find(r"(?:Num threads: \[|#threads used for CPU inference: \[)(\d+)\]", text)
    if threads is not None:
        out["threads"] = int(threads)
    for pattern, name in ((r"XNNPACK delegate", "xnnpack"), (r"Use gpu\s*: \[1\]", "gpu"),
                          (r"Use nnapi\s*: \[1\]", "nnapi"), (r"Use hexagon\s*: \[1\]", "hexagon")):
        if re.search(pattern, text):
            out["delegate"] = name
    return out


def parse_perf_test(text: str) -> dict[str, Any]:
    """Parse ONNX Runtime ``onnxruntime_perf_test`` output.

    Percentiles are printed in seconds (``P50 Latency: 0.0009 s``; older builds ``P50 Latency is
    0.0587 sec``), the average in ms, session creation in s, the peak working set in bytes (the
    whole process, not growth). Without a P50 line p50 is the average.
    """
    out: dict[str, Any] = {}
    load = _find(r"Session creation time cost:\s*" + _NUM + r"\s*s", text)
    if load is not None:
        out["load_ms"] = load * 1e3
    first = _find(r"First inference time cost:\s*" + _NUM + r"\s*ms", text)
    if first is not None:
        out["first_ms"] = first
    mean = _find(r"Average (?:inference )?time cost:\s*" + _NUM + r"\s*ms", text)
    if mean is not None:
        out["mean_ms"] = mean
    for q in ("50", "90", "99"):
        value = _find(rf"P{q} Latency(?::| is)\s*" + _NUM + r"\s*s", text)
        if value is not None:
            out[f"p{q}_ms"] = value * 1e3
    if "p50_ms" not in out and mean is not None:
        out["p50_ms"] = mean
    runs = _find(r"(?:Total inference requests:\s*|Runs:\s*|Total iterations:\s*)(\d+)", text)
    if runs is not None:
        out["runs"] = int(runs)
    peak = _find(r"Peak working set size:\s*(\d+)", text)
    if peak is not None:
        out["peak_mb"] = peak / (1024 * 1024)
    threads = _find(r"Setting intra_op_num_threads to (\d+)", text)
    if threads is not None:
        out["threads"] = int(threads)
    ep = re.search(r"using (\w+)ExecutionProvider", text)
    if ep:
        out["delegate"] = ep[1].lower()
    return out


def detect_tool(text: str) -> str | None:
    """``benchmark_model``, ``onnxruntime_perf_test`` or None."""
    if re.search(r"(Inference timings in us|Average inference timings in us)", text):
        return "benchmark_model"
    if re.search(r"(Average inference time cost|Session creation time cost|P50 Latency)", text):
        return "onnxruntime_perf_test"
    return None


def text_report(manifest: dict[str, Any], text: str, where: str, device_id: str,
                device_name: str | None = None, artifact: str | None = None) -> dict[str, Any]:
    """Turn one tool output into a device report for the artifact it measured.

    The artifact is ``artifact`` (a file name or path from the bundle) if given, else the file
    ``benchmark_model`` names in ``Graph: [...]``, else the report's own file name
    (``w32_k100_r32.fp32.onnx.txt`` -> ``w32_k100_r32.fp32.onnx``).
    """
    tool = detect_tool(text)
    if tool is None:
        raise IngestError(f"{where} is neither JSON nor the output of benchmark_model or "
                          f"onnxruntime_perf_test; give a device report (docs/device-report.md) "
                          f"or the tool's complete output")
    parsed = (parse_benchmark_model if tool == "benchmark_model" else parse_perf_test)(text)
    if "p50_ms" not in parsed:
        raise IngestError(f"{where}: no latency found in the {tool} output; is it complete?")
    runtime, fmt = TOOLS[tool]
    names = [n for n in (artifact, parsed.get("graph"), Path(where).name) if n]
    entry = next((e for n in names if (e := _artifact_by_name(manifest, n, fmt))), None)
    if entry is None:
        raise UnknownArtifact(f"{where}: the bundle has no {fmt} artifact named "
                              f"{' or '.join(sorted({Path(n).name for n in names}))}; pass --artifact FILE")
    entry |= {k: parsed[k] for k in LATENCY_KEYS if k in parsed}
    if "threads" in parsed:
        entry["threads"] = parsed["threads"]
    report = {"format": REPORT_FORMAT, "app": tool, "device": {"id": device_id, "name": device_name or device_id},
              "runtime": {"name": runtime, **({"delegate": parsed["delegate"]} if "delegate" in parsed else {})},
              "entries": [entry]}
    return validate_report(report, where)


def _artifact_by_name(manifest: dict[str, Any], name: str, fmt: str) -> dict[str, Any] | None:
    base = Path(name.replace("\\", "/")).name
    stems = {base, re.sub(r"\.(txt|log|out)$", "", base)}
    for v in manifest["variants"]:
        for a in v["artifacts"]:
            file = Path(a["path"]).name
            if a["format"] == fmt and (file in stems or a["path"] == name):
                return {"variant": v["id"], "format": a["format"], "precision": a["precision"]}
    return None


# --- reading and merging --------------------------------------------------------------------

def load_report(path: str | Path, manifest: dict[str, Any], device_id: str | None = None,
                device_name: str | None = None, artifact: str | None = None) -> dict[str, Any]:
    """Read a device report (JSON) or a tool's text output as a validated device report."""
    path = Path(path)

    if not os.path.lexists(path):
        raise IngestError(f"report {path} does not exist")
    text = read_capped(path, "report", MAX_TEXT_BYTES, IngestError).decode("utf-8", errors="replace")
    if text.lstrip().startswith(("{", "[")):
        report = loads_strict(text, f"report {path}", IngestError)  # no NaN, huge ints, deep nesting
        return validate_report(report, str(path))
    if device_id is None:
        raise IngestError(f"{path} is tool output without a device; pass --device-id "
                          f"(e.g. pixel-7-android-14) to name the device it ran on")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", device_id) or device_id == "macs":
        raise IngestError(f'--device-id must match [A-Za-z0-9_.-]+ and not be "macs", but got "{device_id}"')
    return text_report(manifest, text, str(path), device_id, device_name, artifact)


def merge_report(manifest: dict[str, Any], report: dict[str, Any], where: str,
                 result: IngestResult) -> None:
    """Put the report's entries into ``manifest`` (in place) under its device id."""
    dev = report["device"]
    runtime = report["runtime"]
    arts = {(v["id"], a["format"], a["precision"]): a for v in manifest["variants"] for a in v["artifacts"]}
    merged_any = False
    for i, e in enumerate(report["entries"]):
        what = f"{where} {json_path(['entries', i])} ({e['variant']} {e['format']} {e['precision']})"
        art = arts.get((e["variant"], e["format"], e["precision"]))
        if art is None:
            result.skipped.append(f"{what}: the bundle has no such artifact")
            continue
        if "sha256" in e and e["sha256"] != art["sha256"]:
            result.skipped.append(f"{what}: sha256 differs from the manifest's (another build was measured)")
            continue
        latency = {k: round(e[k], 6) if isinstance(e[k], float) else e[k] for k in LATENCY_KEYS if k in e}
        latency["runtime"] = runtime["name"]
        if "version" in runtime:
            latency["runtime_version"] = runtime["version"]
        threads = e.get("threads", runtime.get("threads"))
        if threads is not None:
            latency["threads"] = threads
        delegate = e.get("delegate", runtime.get("delegate"))
        if delegate is not None:
            latency["delegate"] = delegate
        latency["source"] = report.get("app") if report.get("app") in TOOLS else "device report"
        art.setdefault("latency", {})[dev["id"]] = latency
        result.merged.append(f"{dev['id']}: {e['variant']} {e['format']} {e['precision']} "
                             f"p50 {latency['p50_ms']:.3f} ms")
        merged_any = True
    if merged_any:
        manifest.setdefault("devices", {})[dev["id"]] = (
            {k: dev[k] for k in DEVICE_KEYS if k in dev} | {"source": Path(where).name})


def ingest_reports(bundle: str | Path, reports: Sequence[str | Path], device_id: str | None = None,
                   device_name: str | None = None, artifact: str | None = None) -> IngestResult:
    """Merge device reports and tool outputs into the bundle's manifest.

    Args:
        bundle: bundle directory.
        reports: device report JSON files and/or benchmark_model / onnxruntime_perf_test outputs.
        device_id, device_name: the device that text outputs ran on (JSON reports name their own).
        artifact: the artifact file a single text output measured, when neither the output nor
            its file name says.

    Returns:
        The manifest and one line per merged and per skipped entry. Entries for artifacts the
        bundle does not have (or whose sha256 differs) are skipped, not fatal.

    Raises:
        IngestError: a report is missing or malformed (with the JSON path of every problem);
            nothing is written then.
    """
    if not reports:
        raise IngestError("no reports given; pass one or more report files")
    if artifact is not None and len(reports) > 1:
        raise IngestError("--artifact names the artifact of one text output; pass one report with it")
    manifest = read_manifest(bundle)
    result = IngestResult(manifest)
    loaded = []
    for p in reports:
        try:
            loaded.append((str(p), load_report(p, manifest, device_id, device_name, artifact)))
        except UnknownArtifact as e:
            result.skipped.append(str(e))
    for where, report in loaded:
        merge_report(manifest, report, where, result)
    if result.merged:
        manifest["pareto"] = bundle_fronts(manifest)
        refresh_bundle_policy(manifest, bundle)
        write_manifest(bundle, manifest)
    return result


__all__ = ["IngestError", "IngestResult", "ingest_reports", "parse_benchmark_model", "parse_perf_test",
           "report_problems"]
