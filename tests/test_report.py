"""The HTML report: policy first, one chart per device and runtime (never mixed), the full table
filterable by format and precision, self-contained; hostile names stay text. The page itself is
opened in headless Chromium by web_demo/tests/report.test.mjs."""

import json
import re
import shutil
import sys
from pathlib import Path

from exporter.manifest import read_manifest, write_manifest
from exporter.measure.ingest import ingest_reports
from exporter.measure.profile import host_device
from exporter.measure.report import write_report
from exporter.measure.report_page import artifact_rows, chart_groups, figure
from tests.profiled_bundle import DATA, copy_bundle, profiled_bundle


def figures(page: str) -> list[tuple[str, list, dict]]:
    calls = re.findall(r"Plotly\.newPlot\((\"chart-\d+\"),(\[.*?\]),(\{.*?\}),\{responsive", page)
    return [(json.loads(d), json.loads(data), json.loads(layout)) for d, data, layout in calls]


def test_policy_first_then_one_chart_per_device_and_runtime_then_every_artifact(tmp_path):
    bundle = Path(shutil.copytree(profiled_bundle()[0], tmp_path / "bundle"))
    ingest_reports(bundle, [DATA / "device_report_pixel7.json"])
    page = write_report(bundle, tmp_path / "out" / "report.html").html.read_text()
    h2 = re.findall(r"<h2>(.*?)</h2>", page)
    assert [h[:2] for h in h2] == ["1.", "2.", "3.", "4."] and "Which variant runs when" in h2[0]
    assert "XNNPACK delegate" in h2[3]
    host, _ = host_device()
    m = read_manifest(bundle)
    titles = [t for t, _, _ in chart_groups(m)]
    assert any("Pixel 7" in t and "ONNX Runtime" in t for t in titles)
    assert any(host in t and "LiteRT" in t for t in titles) and any(host in t and "ONNX Runtime" in t for t in titles)
    # a chart holds one runtime: every point of the host's ONNX chart is an ONNX artifact
    for _title, template, fmt in chart_groups(m):
        fig = figure(m, template, fmt)
        for trace in fig["data"] if fig else []:
            assert all(f" {fmt} " in h.replace("<br>", " ") for h in trace.get("hovertext") or [])
    head, rows, keys = artifact_rows(m)
    assert len(rows) == sum(len(v["artifacts"]) for v in m["variants"]) == 3
    assert "policy tier" in head and f"p50 ms {host}" in head and len(head) < 20
    assert "id='filter-format'" in page and "id='filter-precision'" in page
    assert len(figures(page)) >= 2
    # self-contained: nothing loaded from elsewhere
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']https?:", page)


def test_without_accuracy_no_empty_axis_but_a_note(tmp_path):
    bundle = copy_bundle(tmp_path)
    m = read_manifest(bundle)
    for v in m["variants"]:
        for a in v["artifacts"]:
            a.pop("accuracy", None)
    m.pop("pareto", None)
    write_manifest(bundle, m)
    page = write_report(bundle, tmp_path / "r.html").html.read_text()
    assert figures(page) == []
    assert "nothing to plot: export with <code>--eval-data</code>" in page
    assert "top-1 is empty: the bundle was exported without <code>--eval-data</code>" in page


def test_hostile_device_names_stay_text(tmp_path):
    bundle = copy_bundle(tmp_path)
    report = json.loads((DATA / "device_report_pixel7.json").read_text())
    report["device"]["name"] = "</script><script>alert(1)</script>[/x]"
    (tmp_path / "r.json").write_text(json.dumps(report))
    ingest_reports(bundle, [tmp_path / "r.json"])
    page = write_report(bundle, tmp_path / "r.html").html.read_text()
    assert "<script>alert(1)" not in page and "&lt;/script&gt;&lt;script&gt;alert(1)" in page


def test_cli_report_writes_one_self_contained_file(tmp_path, capsys, monkeypatch):
    from exporter.cli import main

    bundle = copy_bundle(tmp_path)
    monkeypatch.setattr(sys, "argv", ["slimvit", "report", str(bundle), "--out", str(tmp_path / "x.html")])
    main()
    err = " ".join(capsys.readouterr().err.split())
    assert f"report: {tmp_path / 'x.html'}" in err and "opens offline" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".html", ".png")) == ["x.html"]
