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
