"""`slimvit report`: a self-contained HTML page a person reads in a minute (``report_page``):
the policy first, then accuracy against latency per device and runtime, then every artifact.

The page inlines its chart library (Plotly), so the HTML alone can be mailed or attached to a
CI run and opened offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.fileio import atomic_write_text
from exporter.manifest import read_manifest
from exporter.measure.report_page import render_page


@dataclass(frozen=True)
class Report:
    html: Path
    bytes: int


def write_report(bundle: str | Path, out: str | Path) -> Report:
    """Write the HTML report of a bundle to ``out``.

    Raises:
        ManifestError: the bundle has no valid manifest.
    """
    manifest = read_manifest(bundle)
    page = render_page(manifest)
    out = Path(out)
    atomic_write_text(out, page)
    return Report(out, len(page.encode()))


__all__ = ["Report", "write_report"]
