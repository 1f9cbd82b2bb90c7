"""The Pareto front of variants: cheaper or more accurate than every other variant."""

from __future__ import annotations

from collections.abc import Iterable


def pareto_front(points: Iterable[tuple[str, float, float]]) -> list[str]:
    """Ids of the non-dominated points, cheapest first.

    Args:
        points: ``(id, cost, accuracy)``; cost is p50 latency or MACs, lower is better.

    A point is dominated when another costs no more and is at least as accurate, and is
    strictly better in one of the two. Exact ties keep the first id in sorted order.
    """
    pts = sorted(points, key=lambda p: (p[1], -p[2], p[0]))
    front, best = [], float("-inf")
    for pid, _, acc in pts:
        if acc > best:
            front.append(pid)
            best = acc
    return front


def bundle_fronts(manifest: dict) -> dict[str, dict[str, list[str]]]:
    """The manifest's ``pareto`` section: fronts by device id (cost = p50) and by ``"macs"``.

    For each precision, a variant's accuracy is the best top-1 among its artifacts of that
    precision (on a device: of the artifact with the lowest p50 there). Variants without a
    measured accuracy are left out; a precision with no such variant gets no front.
    """
    devices = sorted({d for v in manifest["variants"] for a in v["artifacts"]
                      for d in a.get("latency", {})})
    fronts: dict[str, dict[str, list[str]]] = {}
    for key in ["macs", *devices]:
        points: dict[str, list[tuple[str, float, float]]] = {}
        for v in manifest["variants"]:
            by_prec: dict[str, tuple[float, float]] = {}
            for a in v["artifacts"]:
                acc = a.get("accuracy", {}).get("top1")
                if acc is None:
                    continue
                if key == "macs":
                    cost = float(v["macs"])
                elif key in a.get("latency", {}):
                    cost = float(a["latency"][key]["p50_ms"])
                else:
                    continue
                old = by_prec.get(a["precision"])
                if old is None or (cost, -acc) < (old[0], -old[1]):
                    by_prec[a["precision"]] = (cost, acc)
            for prec, (cost, acc) in by_prec.items():
                points.setdefault(prec, []).append((v["id"], cost, acc))
        found = {prec: pareto_front(pts) for prec, pts in sorted(points.items())}
        if found:
            fronts[key] = found
    return fronts
