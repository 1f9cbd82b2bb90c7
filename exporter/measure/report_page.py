"""The bundle report as a person reads it: the policy first (which variant runs in each device
state, with its accuracy, latency and size in the format and precision the app runs), then one
accuracy-vs-latency chart per device and runtime with its Pareto front, then every artifact in a
table filterable by format and precision.

One self-contained HTML file: the charts are Plotly figures whose library is inlined, so the
page works offline and can be mailed or attached to a CI run.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from exporter.measure.report_delegation import delegation_table
from exporter.policy.engine import DeviceState, Policy, decide
from exporter.policy.pareto import pareto_front
from exporter.policy.tiers import TierBasis, artifact, default_basis, variant_points

RUNTIME_OF = {"onnx": "ONNX Runtime", "tflite": "LiteRT (TFLite)", "coreml": "Core ML"}
# One colour per precision on every chart (Okabe-Ito, readable by colour-blind people).
PRECISION_COLORS = {"fp32": "#0072B2", "fp16": "#E69F00", "int8": "#009E73", "int8-dynamic": "#CC79A7",
                    "int8-xnnpack": "#D55E00", "int8-weights": "#56B4E9", "palettized": "#6b6b6b"}
EXTRA_COLORS = ("#000000", "#F0E442", "#882255", "#44AA99")


def _e(x: Any) -> str:
    return html.escape(str(x))


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element (no '</script>' can end it early)."""
    return json.dumps(obj, allow_nan=False).replace("</", "<\\/")


def precisions(manifest: Mapping[str, Any]) -> list[str]:
    found = {a["precision"] for v in manifest["variants"] for a in v["artifacts"]}
    order = list(PRECISION_COLORS)
    return sorted(found, key=lambda p: (order.index(p) if p in order else len(order), p))


def color(prec: str, manifest: Mapping[str, Any]) -> str:
    if prec in PRECISION_COLORS:
        return PRECISION_COLORS[prec]
    extra = [p for p in precisions(manifest) if p not in PRECISION_COLORS]
    return EXTRA_COLORS[extra.index(prec) % len(EXTRA_COLORS)]


def devices(manifest: Mapping[str, Any]) -> list[str]:
    return sorted({d for v in manifest["variants"] for a in v["artifacts"] for d in a.get("latency", {})})


def device_name(manifest: Mapping[str, Any], dev: str) -> str:
    name = manifest.get("devices", {}).get(dev, {}).get("name")
    return f"{name} ({dev})" if name and name != dev else dev


# --- the policy ------------------------------------------------------------------------------

def policy_states(policy: Policy) -> list[tuple[str, DeviceState]]:
    """Representative device states: charging at each thermal level, each battery band, low power."""
    plat = "ios" if "ios" in policy.platforms else next(iter(policy.platforms))
    names = policy.platforms[plat]
    by_level = {lvl: n for n, lvl in reversed(list(names.items()))}
    states = []
    for lvl, scale in enumerate(policy.thermal_scale):
        if lvl in by_level:
            states.append((f"{scale} heat, charging" if lvl else "cool, charging",
                           DeviceState(plat, by_level[lvl], 100, True)))
    cool = by_level.get(0, next(iter(names)))
    upper = 100
    for b in policy.bands:
        mid = (b.min_pct + upper) / 2
        label = f"cool, battery {b.min_pct}-{upper}%" if b.min_pct else f"cool, battery below {upper}%"
        states.append((label, DeviceState(plat, cool, mid)))
        upper = b.min_pct
    states.append(("low-power mode, charging", DeviceState(plat, cool, 100, True, True)))
    return states


def _basis(manifest: Mapping[str, Any]) -> TierBasis:
    return TierBasis.from_dict(manifest.get("policy", {}).get("basis")) or default_basis(manifest)


def _tier_cells(manifest: Mapping[str, Any], basis: TierBasis, vid: str) -> list[str]:
    v = next(v for v in manifest["variants"] if v["id"] == vid)
    a = artifact(v, basis.format, basis.precision)
    acc = (a or {}).get("accuracy", {}).get("top1")
    lat = (a or {}).get("latency", {}).get(basis.device) if basis.device else None
    return [f"{100 * acc:.1f}%" if acc is not None else "-",
            f"{lat['p50_ms']:.3f} ms" if lat else "-",
            f"{a['bytes'] / 1024:.0f} KB" if a else "-", f"{v['macs'] / 1e6:.2f}"]


def policy_section(manifest: Mapping[str, Any]) -> str:
    if "policy" not in manifest:
        return "<p>This bundle has no policy; <code>slimvit policy update BUNDLE</code> adds one.</p>"
    policy = Policy.from_dict(manifest["policy"])
    basis = _basis(manifest)
    cost = (f"measured p50 latency on {_e(device_name(manifest, basis.device))}" if basis.device
            else "MACs (no latency measured for it yet: <code>slimvit profile</code> or "
                 "<code>slimvit ingest</code>)")
    head = "<tr><th>device state</th><th>tier</th><th>variant</th><th>top-1</th><th>p50</th><th>size</th>" \
           "<th>MMACs</th><th class='why'>why</th></tr>"
    rows = []
    for label, state in policy_states(policy):
        c = decide(policy, state, None, 0)
        cells = _tier_cells(manifest, basis, c.variant)
        rows.append(f"<tr><td>{_e(label)}</td><td>{c.tier}</td><td><b>{_e(c.variant)}</b></td>"
                    + "".join(f"<td>{_e(x)}</td>" for x in cells) + f"<td class='why'>{_e(c.reason)}</td></tr>")
    tiers = "".join(f"<tr><td>{i}</td><td>{_e(t)}</td>" + "".join(f"<td>{_e(x)}</td>" for x in
                    _tier_cells(manifest, basis, t)) + "</tr>" for i, t in enumerate(policy.tiers))
    return f"""<p>The app runs <b>{_e(basis.format)} {_e(basis.precision)}</b> artifacts. Its tiers are the
Pareto front of those artifacts: top-1 against {cost}. No variant outside the tiers is both faster
and more accurate than one inside. Top-1, p50 and size below are of that format and precision.</p>
<div class="scroll"><table>{head}{''.join(rows)}</table></div>
<details><summary>The {len(policy.tiers)} tiers, cheapest (0) to best</summary>
<div class="scroll"><table><tr><th>tier</th><th>variant</th><th>top-1</th><th>p50</th><th>size</th>
<th>MMACs</th></tr>{tiers}</table></div></details>"""


# --- charts ----------------------------------------------------------------------------------

def chart_groups(manifest: Mapping[str, Any]) -> list[tuple[str, TierBasis | None, str]]:
    """``(title, None-or-basis-template, format)`` per chart: each device x format with latency;
    with no latency at all, one chart against MACs for the policy's format."""
    out = []
    for dev in devices(manifest):
        fmts = sorted({a["format"] for v in manifest["variants"] for a in v["artifacts"]
                       if dev in a.get("latency", {})})
        for fmt in fmts:
            out.append((f"{device_name(manifest, dev)} · {RUNTIME_OF.get(fmt, fmt)}",
                        TierBasis(fmt, None, dev), fmt))
    if not out:
        fmt = _basis(manifest).format
        out.append((f"{RUNTIME_OF.get(fmt, fmt)} · by MACs (no latency measured)", None, fmt))
    return out


def figure(manifest: Mapping[str, Any], template: TierBasis | None, fmt: str) -> dict[str, Any] | None:
    """A Plotly figure (as a dict): top-1 vs p50 (or MMACs), one colour per precision, each
    precision's Pareto front as a line with its points labelled; None without any top-1."""
    import plotly.graph_objects as go

    fig = go.Figure()
    by_latency = template is not None
    for prec in precisions(manifest):
        basis = TierBasis(fmt, prec, template.device if template else None)
        pts = [(vid, c, acc) for vid, c, acc in _points(manifest, basis) if acc is not None]
        if not pts:
            continue
        front = set(pareto_front(pts))
        xs = [c if by_latency else c / 1e6 for _, c, _ in pts]
        sizes = {v["id"]: (artifact(v, fmt, prec) or {}).get("bytes", 0) / 1024 for v in manifest["variants"]}
        hover = [f"<b>{vid}</b><br>{fmt} {prec}<br>top-1 {100 * acc:.1f}%<br>"
                 + (f"p50 {c:.3f} ms" if by_latency else f"{c / 1e6:.2f} MMACs") + f"<br>{sizes[vid]:.0f} KB"
                 + ("<br>on the front" if vid in front else "") for vid, c, acc in pts]
        col = color(prec, manifest)
        fig.add_trace(go.Scatter(x=xs, y=[100 * a for _, _, a in pts], mode="markers", name=prec,
                                 legendgroup=prec, marker={"color": col, "size": 9, "opacity": 0.55},
                                 hovertext=hover, hoverinfo="text"))
        on = sorted((x, 100 * acc, vid) for (vid, _, acc), x in zip(pts, xs, strict=True) if vid in front)
        fig.add_trace(go.Scatter(x=[p[0] for p in on], y=[p[1] for p in on], mode="lines+markers+text",
                                 name=f"{prec} front", legendgroup=prec, showlegend=False,
                                 text=[p[2] for p in on], cliponaxis=False,
                                 # neighbours on the front alternate sides, so close points keep apart labels
                                 textposition=[("top left", "bottom right")[i % 2] for i in range(len(on))],
                                 textfont={"size": 10, "color": col},
                                 line={"color": col, "width": 2}, marker={"color": col, "size": 10},
                                 hoverinfo="skip"))
    if not fig.data:
        return None
    fig.update_layout(
        height=420, margin={"l": 60, "r": 80, "t": 40, "b": 50}, template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "title": {"text": "precision "}},
        xaxis={"title": {"text": "p50 latency (ms), lower is better" if by_latency else "MMACs per image"},
               "rangemode": "tozero"},
        yaxis={"title": {"text": "top-1 (%)"}})
    return json.loads(fig.to_json())


def _points(manifest: Mapping[str, Any], basis: TierBasis) -> list[tuple[str, float, float | None]]:
    """Points of variants with an artifact of the basis and (for a device) its latency there,
    using each artifact's own top-1 (no fallback: a chart shows what was measured)."""
    out = []
    for vid, c, _ in variant_points(_with_latency(manifest, basis), basis):
        v = next(v for v in manifest["variants"] if v["id"] == vid)
        out.append((vid, c, (artifact(v, basis.format, basis.precision) or {}).get("accuracy", {}).get("top1")))
    return out


def _with_latency(manifest: Mapping[str, Any], basis: TierBasis) -> dict[str, Any]:
    if not basis.device:
        return dict(manifest)
    keep = [v for v in manifest["variants"]
            if basis.device in (artifact(v, basis.format, basis.precision) or {}).get("latency", {})]
    return {**manifest, "variants": keep}


def charts_section(manifest: Mapping[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    blocks, figs = [], []
    for i, (title, template, fmt) in enumerate(chart_groups(manifest)):
        fig = figure(manifest, template, fmt)
        if fig is None:
            blocks.append(f"<div class='chart'><h3>{_e(title)}</h3><p class='note'>No artifact here has a "
                          "measured top-1, so there is nothing to plot: export with <code>--eval-data</code> "
                          "(builtin, an image folder or an .npz with labels).</p></div>")
            continue
        blocks.append(f"<div class='chart'><h3>{_e(title)}</h3><div class='plot' id='chart-{i}'></div></div>")
        figs.append((f"chart-{i}", fig))
    return f"<div class='charts'>{''.join(blocks)}</div>", figs


# --- the full table --------------------------------------------------------------------------

def artifact_rows(manifest: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[tuple[str, str]]]:
    """Header, one row per artifact, and each row's (format, precision) for the filters."""
    devs = devices(manifest)
    basis = _basis(manifest)
    tiers = manifest.get("policy", {}).get("tiers", [])
    head = ["variant", "format", "precision", "embed", "heads", "keep", "res", "tokens", "MMACs", "KB",
            "top-1", *[f"p50 ms {d}" for d in devs], "policy tier"]
    rows, keys = [], []
    for v in manifest["variants"]:
        toks = ">".join(str(n) for i, n in enumerate(v.get("tokens", [])) if i == 0 or n != v["tokens"][i - 1])
        for a in v["artifacts"]:
            acc = a.get("accuracy", {}).get("top1")
            lat = [a.get("latency", {}).get(d, {}).get("p50_ms") for d in devs]
            is_basis = (a["format"], a["precision"]) == (basis.format, basis.precision)
            tier = str(tiers.index(v["id"])) if is_basis and v["id"] in tiers else ""
            rows.append([v["id"], a["format"], a["precision"], str(v["embed_dim"]), str(v["num_heads"]),
                         f"{v['keep_rate']:g}", str(v["resolution"]), toks, f"{v['macs'] / 1e6:.2f}",
                         f"{a['bytes'] / 1024:.0f}", "-" if acc is None else f"{100 * acc:.1f}%",
                         *["-" if x is None else f"{x:.3f}" for x in lat], tier])
            keys.append((a["format"], a["precision"]))
    return head, rows, keys


def table_section(manifest: Mapping[str, Any]) -> str:
    head, rows, keys = artifact_rows(manifest)
    fmts = sorted({f for f, _ in keys})
    precs = [p for p in precisions(manifest) if any(p == k[1] for k in keys)]

    def select(name: str, values: list[str]) -> str:
        opts = "".join(f"<option value='{_e(x)}'>{_e(x)}</option>" for x in values)
        return f"<label>{name} <select id='filter-{name}'><option value=''>all</option>{opts}</select></label>"

    body = "".join(f"<tr data-format='{_e(f)}' data-precision='{_e(p)}'>"
                   + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r, (f, p) in zip(rows, keys, strict=True))
    missing = "" if any(r[10] != "-" for r in rows) else (
        "<p class='note'>top-1 is empty: the bundle was exported without <code>--eval-data</code>.</p>")
    return f"""<div class="filters">{select('format', fmts)} {select('precision', precs)}
<span id="shown"></span></div>{missing}
<div class="scroll"><table id="artifacts"><thead><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr></thead>
<tbody>{body}</tbody></table></div>"""


# --- the page --------------------------------------------------------------------------------

CSS = """*{box-sizing:border-box}body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5em 2em;
max-width:1360px;color:#222;line-height:1.45}h1{font-size:1.6em;margin-bottom:.2em}
h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1em;margin:.3em 0}
table{border-collapse:collapse;font-size:13px;margin:.6em 0}th,td{border:1px solid #d5d5d5;padding:3px 8px;
text-align:right;white-space:nowrap}th{background:#f3f3f3;position:sticky;top:0}
td:first-child,th:first-child,td.why,th.why{text-align:left}td.why{white-space:normal;color:#555;min-width:18em}
.scroll{max-width:100%;overflow-x:auto}.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));
gap:1em}.chart{min-width:0;border:1px solid #e3e3e3;border-radius:6px;padding:.5em}.plot{width:100%;height:420px}
.note{color:#666}.meta{color:#555}.filters{margin:.5em 0}.filters select{margin-right:1em}
details{margin:.6em 0}"""

FILTER_JS = """(function(){const f=document.getElementById('filter-format'),
p=document.getElementById('filter-precision');
const rows=[...document.querySelectorAll('#artifacts tbody tr')],shown=document.getElementById('shown');
function apply(){let n=0;for(const r of rows){const ok=(!f.value||r.dataset.format===f.value)&&
(!p.value||r.dataset.precision===p.value);r.style.display=ok?'':'none';n+=ok;}
shown.textContent=n+' of '+rows.length+' artifacts';}f.onchange=apply;p.onchange=apply;apply();})();"""


def render_page(manifest: Mapping[str, Any]) -> str:
    """The whole report page."""
    from plotly.offline import get_plotlyjs

    model = manifest["model"]
    charts_html, figs = charts_section(manifest)
    fmts = sorted({a["format"] for v in manifest["variants"] for a in v["artifacts"]})
    n_art = sum(len(v["artifacts"]) for v in manifest["variants"])
    plots = "".join(f"Plotly.newPlot({_script_json(div)},{_script_json(fig['data'])},"
                    f"{_script_json(fig['layout'])},{{responsive:true,displaylogo:false}});" for div, fig in figs)
    title = f"slimvit bundle report: {model['name']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{_e(title)}</title><style>{CSS}</style></head><body>
<h1>{_e(title)}</h1>
<p class="meta">{len(manifest['variants'])} variants, {n_art} artifacts ({_e(', '.join(fmts))};
precisions {_e(', '.join(precisions(manifest)))}); bundle version {manifest['bundle_version']}, made by
slimvit {_e(manifest['created_by']['version'])}.</p>
<h2>1. Which variant runs when</h2>
{policy_section(manifest)}
<h2>2. Accuracy against latency, per device and runtime</h2>
<p class="note">One colour per precision; the line joins that precision's Pareto front (labelled).
Hover a point for its variant, top-1, latency and size. Runtimes are never mixed in one chart:
an app runs one.</p>
{charts_html}
<h2>3. Every artifact</h2>
{table_section(manifest)}
<h2>4. What runs in the XNNPACK delegate</h2>
<p class="note">Per ExecuTorch and TFLite artifact: ops and MACs the delegate runs, how many
partitions the graph is cut into, and the op types that fall back to the portable kernels.</p>
{delegation_table(manifest)}
<script>{get_plotlyjs()}</script>
<script>{plots}{FILTER_JS}</script>
</body></html>
"""
