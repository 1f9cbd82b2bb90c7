"""The HTML report: the variant table with Pareto marks, and real, non-blank PNG charts."""

import base64
import io
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from exporter.measure.ingest import ingest_reports
from exporter.measure.profile import host_device
from exporter.measure.report import write_report
from tests.profiled_bundle import DATA, copy_bundle, profiled_bundle


def _check_png(data: bytes) -> None:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == (640, 480)
    pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # not one flat colour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # lines, markers, text, antialiasing
    assert (pixels < 128).any(axis=2).mean() > 0.005  # dark ink (axes, text) covers part of it


def test_report_has_every_variant_device_and_chart(tmp_path):
    bundle = Path(shutil.copytree(profiled_bundle()[0], tmp_path / "bundle"))
    ingest_reports(bundle, [DATA / "device_report_pixel7.json"])
    result = write_report(bundle, tmp_path / "out" / "report.html")
    host, _ = host_device()
    assert set(result.charts) == {"accuracy-vs-macs", f"accuracy-vs-latency-{host}",
                                  "accuracy-vs-latency-pixel-7-android-14", "size-per-precision"}
    for name, path in result.charts.items():
        assert path == tmp_path / "out" / f"report-{name}.png"
        _check_png(path.read_bytes())
    page = result.html.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [p.read_bytes() for p in result.charts.values()]
    for text in ("w32_k100_r32", "w64_k100_r32", "Pixel 7", "Google Tensor G2", host,
                 "onnx fp32 KB", "tflite fp32 KB", "top-1 fp32", f"p50 ms fp32 @ {host}",
                 "p50 ms fp32 @ pixel-7-android-14"):
        assert text in page
    assert "<script" not in page and "http" not in page.split("</style>")[1]  # self-contained
    # One star per front member: macs front (top-1 column) plus each device's front.
    from exporter.manifest import read_manifest

    fronts = read_manifest(bundle)["pareto"]
    assert page.count("★</td>") == sum(len(ids) for dev in fronts.values() for ids in dev.values())


def test_a_bundle_without_latency_still_reports_accuracy_and_sizes(tmp_path):
    bundle = copy_bundle(tmp_path)
    result = write_report(bundle, tmp_path / "r.html")
    assert set(result.charts) == {"accuracy-vs-macs", "size-per-precision"}
    for path in result.charts.values():
        _check_png(path.read_bytes())
    assert "No latency measured yet" in result.html.read_text()


def test_cli_report_writes_html_and_charts(tmp_path, capsys, monkeypatch):
    from exporter.cli import main

    bundle = copy_bundle(tmp_path)
    monkeypatch.setattr(sys, "argv", ["slimvit", "report", str(bundle), "--out", str(tmp_path / "x.html")])
    main()
    err = capsys.readouterr().err
    assert f"report: {tmp_path / 'x.html'}" in err and err.count("chart:") == 2
    assert (tmp_path / "x-size-per-precision.png").is_file()
