"""A self-contained HTML report of a bundle: the variant table and charts of its trade-offs.

The charts are PNG files written beside the HTML (``report-<chart>.png``) and also embedded in
it, so the HTML alone can be mailed or attached to a CI run.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.fileio import atomic_write_bytes, atomic_write_text
from exporter.manifest import read_manifest
from exporter.pareto import bundle_fronts
from exporter.report_delegation import delegation_table

CHART_SIZE = (6.4, 4.8)  # inches; at CHART_DPI a 640 x 480 PNG
CHART_DPI = 100
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "int4": "v"}


@dataclass(frozen=True)
class Report:
    html: Path
    charts: dict[str, Path]


def _artifact_label(a: dict[str, Any]) -> str:
    return f"{a['format']} {a['precision']}"


def _precisions(manifest: dict[str, Any]) -> list[str]:
    order = list(MARKERS)
    found = {a["precision"] for v in manifest["variants"] for a in v["artifacts"]}
    return sorted(found, key=lambda p: (order.index(p) if p in order else len(order), p))


def _devices(manifest: dict[str, Any]) -> list[str]:
    return sorted({d for v in manifest["variants"] for a in v["artifacts"] for d in a.get("latency", {})})


def best_accuracy(variant: dict[str, Any], precision: str) -> float | None:
    accs = [a["accuracy"]["top1"] for a in variant["artifacts"]
            if a["precision"] == precision and "accuracy" in a]
    return max(accs) if accs else None


def best_latency(variant: dict[str, Any], precision: str, device: str) -> float | None:
    p50 = [a["latency"][device]["p50_ms"] for a in variant["artifacts"]
           if a["precision"] == precision and device in a.get("latency", {})]
    return min(p50) if p50 else None


# --- charts ----------------------------------------------------------------------------------

def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=CHART_SIZE, dpi=CHART_DPI)
    return fig, ax


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=CHART_DPI)
    plt.close(fig)
    return buf.getvalue()


def _tradeoff_chart(manifest: dict[str, Any], cost: Callable[[dict[str, Any], str], float | None],
                    front: dict[str, list[str]], xlabel: str, title: str) -> bytes:
    """Accuracy against a cost, one series per precision, its Pareto front as a line."""
    fig, ax = _figure()
    plotted = 0
    for i, prec in enumerate(_precisions(manifest)):
        color = f"C{i}"
        pts = {v["id"]: (c, acc) for v in manifest["variants"]
               if (c := cost(v, prec)) is not None and (acc := best_accuracy(v, prec)) is not None}
        if not pts:
            continue
        xs, ys = zip(*pts.values(), strict=True)
        ax.scatter(xs, [100 * y for y in ys], color=color, marker=MARKERS.get(prec, "o"),
                   alpha=0.45, label=f"{prec}")
        on = [pts[vid] for vid in front.get(prec, []) if vid in pts]
        if on:
            ax.plot([c for c, _ in on], [100 * a for _, a in on], color=color, marker=MARKERS.get(prec, "o"),
                    linewidth=2, label=f"{prec} Pareto front")
        for vid, (c, acc) in pts.items():
            ax.annotate(vid, (c, 100 * acc), fontsize=6, xytext=(3, 3), textcoords="offset points")
        plotted += len(pts)
    if not plotted:
        ax.text(0.5, 0.5, "no variant has both accuracy and this cost measured",
                ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def _size_chart(manifest: dict[str, Any]) -> bytes:
    """Artifact size per variant, one bar per format and precision."""
    import numpy as np

    fig, ax = _figure()
    labels = sorted({_artifact_label(a) for v in manifest["variants"] for a in v["artifacts"]})
    ids = [v["id"] for v in manifest["variants"]]
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(ids))
    for i, label in enumerate(labels):
        kb = [next((a["bytes"] / 1024 for a in v["artifacts"] if _artifact_label(a) == label), 0.0)
              for v in manifest["variants"]]
        ax.bar(x + i * width - 0.4 + width / 2, kb, width, label=label, color=f"C{i}")
    ax.set_xticks(x, ids, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("artifact size (KB)")
    ax.set_title("size per variant and precision", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def charts(manifest: dict[str, Any]) -> dict[str, bytes]:
    """Every chart of the report as PNG bytes, by file-name-safe chart name."""
    fronts = manifest.get("pareto") or bundle_fronts(manifest)
    devices = manifest.get("devices", {})
    out = {"accuracy-vs-macs": _tradeoff_chart(
        manifest, lambda v, p: v["macs"] / 1e6 if best_accuracy(v, p) is not None else None,
        fronts.get("macs", {}), "MMACs per image", "accuracy vs MACs")}
    for dev in _devices(manifest):
        name = devices.get(dev, {}).get("name", dev)
        out[f"accuracy-vs-latency-{dev}"] = _tradeoff_chart(
            manifest, lambda v, p, d=dev: best_latency(v, p, d), fronts.get(dev, {}),
            "p50 latency (ms)", f"accuracy vs latency: {name}")
    out["size-per-precision"] = _size_chart(manifest)
    return out


# --- HTML ------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.dominated td{color:#999}.front{font-weight:bold;color:#0a6}
.charts img{max-width:48%;margin:4px;border:1px solid #ddd}"""


def _cell(x: Any) -> str:
    return f"<td>{html.escape(str(x))}</td>"


def variant_table(manifest: dict[str, Any]) -> str:
    """The variant table: dims, cost, sizes per format/precision, accuracy, latency per device.

    A ★ marks a variant on the Pareto front of that precision (per device, or by MACs for
    accuracy); rows on no front at all are greyed.
    """
    fronts = manifest.get("pareto") or bundle_fronts(manifest)
    precs, devices = _precisions(manifest), _devices(manifest)
    labels = sorted({_artifact_label(a) for v in manifest["variants"] for a in v["artifacts"]})
    head = ["variant", "embed", "heads", "depth", "keep", "res", "params", "MMACs"]
    head += [f"{lb} KB" for lb in labels] + [f"top-1 {p}" for p in precs]
    head += [f"p50 ms {p} @ {d}" for d in devices for p in precs]
    rows = []
    on_any = {vid for dev in fronts.values() for ids in dev.values() for vid in ids}
    for v in manifest["variants"]:
        cells = [_cell(v["id"]), _cell(v["embed_dim"]), _cell(v["num_heads"]), _cell(v["depth"]),
                 _cell(f"{v['keep_rate']:g}"), _cell(v["resolution"]), _cell(f"{v['params']:,}"),
                 _cell(f"{v['macs'] / 1e6:.2f}")]
        for lb in labels:
            size = next((a["bytes"] for a in v["artifacts"] if _artifact_label(a) == lb), None)
            cells.append(_cell("-" if size is None else f"{size / 1024:.1f}"))
        for p in precs:
            acc = best_accuracy(v, p)
            star = v["id"] in fronts.get("macs", {}).get(p, [])
            cells.append(_mark("-" if acc is None else f"{100 * acc:.1f}%", star))
        for d in devices:
            for p in precs:
                ms = best_latency(v, p, d)
                cells.append(_mark("-" if ms is None else f"{ms:.3f}", v["id"] in fronts.get(d, {}).get(p, [])))
        cls = "" if v["id"] in on_any or not fronts else ' class="dominated"'
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _mark(text: str, on_front: bool) -> str:
    return f'<td class="front">{html.escape(text)} ★</td>' if on_front else _cell(text)


def _devices_table(manifest: dict[str, Any]) -> str:
    devices = manifest.get("devices", {})
    if not devices:
        return "<p>No latency measured yet: run <code>slimvit profile</code> or <code>slimvit ingest</code>.</p>"
    keys = ("name", "kind", "os", "soc", "cores", "source")
    rows = "".join(f"<tr>{_cell(d)}" + "".join(_cell(i.get(k, i.get("cpu", "") if k == "soc" else ""))
                                               for k in keys) + "</tr>"
                   for d, i in sorted(devices.items()))
    return ("<table><tr><th>device id</th><th>name</th><th>kind</th><th>os</th><th>soc / cpu</th>"
            f"<th>cores</th><th>source</th></tr>{rows}</table>")


def render_html(manifest: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """The report page with every chart embedded as a data URI."""
    model = manifest["model"]
    runtimes = ", ".join(f"{k} {v}" for k, v in manifest["created_by"].get("runtimes", {}).items())
    imgs = "".join(f'<img alt="{html.escape(name)}" src="data:image/png;base64,'
                   f'{base64.b64encode(data).decode("ascii")}">' for name, data in pngs.items())
    title = f"slimvit bundle report: {model['name']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>bundle version {manifest['bundle_version']}, schema {html.escape(manifest['schema_version'])},
{len(manifest['variants'])} variants; made by slimvit {html.escape(manifest['created_by']['version'])}
({html.escape(runtimes)}).</p>
<h2>Variants</h2>
<p>★ = on the Pareto front of that precision (accuracy vs MACs for top-1, accuracy vs p50
latency on that device for latency); grey rows are on no front, and a policy never picks them.</p>
{variant_table(manifest)}
<h2>Devices</h2>
{_devices_table(manifest)}
<h2>XNNPACK delegation</h2>
{delegation_table(manifest)}
<h2>Charts</h2>
<div class="charts">{imgs}</div>
</body></html>
"""


def write_report(bundle: str | Path, out: str | Path) -> Report:
    """Write the HTML report of a bundle to ``out`` and its PNG charts beside it.

    Returns:
        The HTML path and each chart's PNG path (``<out stem>-<chart>.png``).

    Raises:
        ManifestError: the bundle has no valid manifest.
    """
    manifest = read_manifest(bundle)
    out = Path(out)
    pngs = charts(manifest)
    paths = {}
    for name, data in pngs.items():
        paths[name] = out.with_name(f"{out.stem}-{name}.png")
        atomic_write_bytes(paths[name], data)
    atomic_write_text(out, render_html(manifest, pngs))
    return Report(out, paths)


__all__ = ["Report", "charts", "render_html", "variant_table", "write_report"]
