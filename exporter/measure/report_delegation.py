"""The report's delegation table: for each ExecuTorch and TFLite artifact, the share of ops and
MACs the XNNPACK delegate runs and the op types that fall back (the manifest's ``delegation``)."""

from __future__ import annotations

import html
from typing import Any


def delegation_table(manifest: dict[str, Any]) -> str:
    """An HTML table with one row per artifact that has a delegation report; a note if none has."""
    rows = []
    for v in manifest["variants"]:
        for a in v["artifacts"]:
            d = a.get("delegation")
            if d is None:
                continue
            falls = ", ".join(f"{op} ×{n}" for op, n in d["fallback_ops"].items()) or "none"
            cells = [v["id"], a["format"], a["precision"], d["backend"],
                     f"{d['delegated_ops']}/{d['ops']}", f"{100 * d['delegated_mac_share']:.1f}%",
                     d["partitions"], falls]
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    if not rows:
        return "<p>No ExecuTorch or TFLite artifact in this bundle.</p>"
    head = ("variant", "format", "precision", "delegate", "ops delegated", "MACs delegated",
            "partitions", "falls back")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"
