"""Writes the example device traces in this directory (deterministic; re-run to regenerate).

Columns: t_s,battery,charging,thermal,low_power; thermal names are Android's
(`PowerManager.getCurrentThermalStatus()`, lower case), so replay them with `--platform android`.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
Row = tuple[float, float, bool, str, bool]


def write(name: str, header: str, rows: list[Row]) -> None:
    with (HERE / name).open("w", newline="") as f:
        f.write(f"# {header}\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["t_s", "battery", "charging", "thermal", "low_power"])
        for t, battery, charging, thermal, low_power in rows:
            w.writerow([f"{t:g}", f"{battery:.1f}", int(charging), thermal, int(low_power)])


def phases(t_min: float, table: list[tuple[float, str]]) -> str:
    """The state of the last phase that started at or before ``t_min``."""
    return [s for start, s in table if start <= t_min][-1]


def drain() -> list[Row]:
    # 60 min of continuous camera + inference on battery: 100% -> 55%, the phone warms up.
    heat = [(0, "none"), (20, "light")]
    return [(t, 100 - 0.75 * t / 60, False, phases(t / 60, heat), False) for t in range(0, 3601, 10)]


def throttling() -> list[Row]:
    # 30 min: the device heats through every Android status up to critical and cools again.
    heat = [(0, "none"), (5, "light"), (10, "moderate"), (14, "severe"), (20, "critical"),
            (22, "severe"), (25, "light"), (28, "none")]
    return [(t, 80 - 8 * t / 1800, False, phases(t / 60, heat), False) for t in range(0, 1801, 5)]


def charge_cycle() -> list[Row]:
    # 45 min: low battery in power-save mode, plugged in at 5 min (fast charge runs warm),
    # unplugged at 40 min.
    rows = []
    for t in range(0, 2701, 10):
        m = t / 60
        charging = 5 <= m < 40
        battery = 18 - 0.2 * m if m < 5 else min(100, 17 + 1.6 * (m - 5)) if charging else 73 - 0.5 * (m - 40)
        thermal = phases(m, [(0, "none"), (5, "light"), (12, "moderate"), (25, "light"), (40, "none")])
        rows.append((t, battery, charging, thermal, battery < 20 and not charging))
    return rows


def noisy(rng: random.Random) -> list[Row]:
    # 20 min sampled every second: battery readings jitter +-3% around a level that drifts
    # from 56% to 50%; the thermal reading is "light" but misreads "moderate" or "severe" at times.
    rows = []
    for t in range(0, 1201):
        battery = 56 - 6 * t / 1200 + rng.uniform(-3, 3)
        u = rng.random()
        thermal = "severe" if u < 0.05 else "moderate" if u < 0.15 else "light"
        rows.append((t, battery, False, thermal, False))
    return rows


TRACES: dict[str, tuple[str, Callable[[], list[Row]]]] = {
    "drain_60min.csv": ("60-minute battery drain on battery, 100% -> 55%, warming to light", drain),
    "thermal_throttling.csv": ("30-minute thermal episode: none -> critical -> none at 80% battery",
                               throttling),
    "charge_cycle.csv": ("45 minutes: 18% in power-save, charging 5-40 min, then unplugged", charge_cycle),
    "noisy_sensor.csv": ("20 minutes at 1 Hz: battery +-3% jitter near 50-56%, thermal misreads",
                         lambda: noisy(random.Random(8))),
}

if __name__ == "__main__":
    for name, (header, make) in TRACES.items():
        write(name, header, make())
        print(HERE / name)
