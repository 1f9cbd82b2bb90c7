"""Profiling: latency, load time and memory of every artifact on this host, into the manifest.

Each artifact is measured by `exporter/measure/worker.py` in a fresh process, so one
measurement's memory and caches never leak into the next. Results land in the manifest as
``artifact.latency[DEVICE_ID]``; ``devices[DEVICE_ID]`` describes the host, and the ``pareto``
section is recomputed from the new numbers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import SlimvitError, check_choice
from exporter.manifest import read_manifest, write_manifest
from exporter.measure.worker import RUNTIMES, Runtime
from exporter.policy.pareto import bundle_fronts
from exporter.policy.store import refresh_bundle_policy
from exporter.convert.quantize.targets import host_cpu_flags, target_warnings

Progress = Callable[[str], None]
WORKER = Path(__file__).with_name("worker.py")
SOURCE = "slimvit profile"


class ProfileError(SlimvitError):
    """Profiling cannot start (bad flags, nothing to run) or an artifact failed to run."""


@dataclass(frozen=True)
class ProfileJob:
    """One artifact to measure with one runtime."""

    variant: str
    artifact: dict[str, Any]
    runtime: Runtime

    @property
    def label(self) -> str:
        return f"{self.variant} {self.artifact['format']} {self.artifact['precision']}"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` or ``sysctl``), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.machine()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def slug(text: str) -> str:
    """A device-id-safe form of ``text``: lower case, runs of other characters become '-'."""
    text = re.sub(r"\((r|tm|c)\)|\bcpu\b|@.*$", " ", text.lower())
    return re.sub(r"[^a-z0-9_.]+", "-", text).strip("-.")


def host_device() -> tuple[str, dict[str, Any]]:
    """This host's device id (OS, machine, CPU model, cores) and its ``devices`` entry."""
    cpu, cores = cpu_model(), usable_cores()
    device_id = slug(f"{platform.system()}-{platform.machine()}-{cpu}-{cores}c")
    return device_id, {"name": cpu, "kind": "host", "os": f"{platform.system()} {platform.release()}",
                       "cpu": cpu, "cores": cores, "source": SOURCE}


def profile_jobs(manifest: dict[str, Any], runtimes: Sequence[str]) -> list[ProfileJob]:
    """Every (artifact, runtime) pair of ``runtimes`` that the bundle has artifacts for."""
    by_format = {RUNTIMES[r].format: RUNTIMES[r] for r in runtimes}
    return [ProfileJob(v["id"], a, by_format[a["format"]]) for v in manifest["variants"]
            for a in v["artifacts"] if a["format"] in by_format]


def run_worker(path: Path, runtime: Runtime, threads: int, runs: int, warmup: int,
               timeout: float = 600.0) -> dict[str, Any]:
    """Measure one artifact in a fresh Python process; returns the worker's JSON result."""
    cmd = [sys.executable, str(WORKER), "--runtime", runtime.name, "--model", str(path),
           "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProfileError(f"{path}: {runtime.name} did not finish within {timeout:.0f} s; "
                           f"lower --runs or check the artifact") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": proc.stderr.strip()[-500:] or "no output"}
    if proc.returncode != 0 or "error" in result:
        raise ProfileError(f"{path} failed to run in {runtime.name}: {result.get('error')}")
    return result


def plan_profile(bundle: str | Path, runtimes: Sequence[str] | None = None) -> list[ProfileJob]:
    """Check the runtimes and the bundle; return every artifact to measure.

    Args:
        bundle: bundle directory.
        runtimes: registered runtime names (``RUNTIMES``); None = every runtime whose Python
            package is installed.

    Raises:
        ProfileError: an unknown or missing runtime, no runnable artifact, or a missing file.
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    explicit = runtimes is not None
    names = list(dict.fromkeys(runtimes if explicit else RUNTIMES))
    if explicit and not names:
        raise ProfileError(f"--runtime is empty; give one of {', '.join(RUNTIMES)}")
    for name in names:
        check_choice("runtime", name, RUNTIMES)
    installed = [n for n in names if importlib.util.find_spec(RUNTIMES[n].module) is not None]
    if explicit and len(installed) < len(names):
        missing = sorted(set(names) - set(installed))
        raise ProfileError(f"runtime(s) {', '.join(missing)} not installed; install "
                           f"{', '.join(RUNTIMES[m].module for m in missing)} or leave them out of --runtime")
    jobs = profile_jobs(manifest, installed)
    if not jobs:
        have = sorted({a["format"] for v in manifest["variants"] for a in v["artifacts"]})
        can = ", ".join(f"{r.name} runs {r.format}" for r in RUNTIMES.values())
        raise ProfileError(f"{bundle} has no artifact that {', '.join(installed) or 'any installed runtime'} "
                           f"can run (formats here: {', '.join(have) or 'none'}; {can}); export "
                           f"one of those formats first")
    for job in jobs:
        if not (bundle / job.artifact["path"]).is_file():
            raise ProfileError(f"{bundle / job.artifact['path']} is listed in the manifest but missing; "
                               f"re-export the bundle")
    return jobs


def profile_bundle(bundle: str | Path, runtimes: Sequence[str] | None = None, threads: int = 1,
                   runs: int = 50, warmup: int = 5, device_id: str | None = None,
                   progress: Progress | None = None,
                   warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every runnable artifact of the bundle and write the results into its manifest.

    Args:
        bundle: bundle directory.
        runtimes: registered runtime names (``RUNTIMES``); None = every runtime with artifacts
            here whose Python package is installed.
        threads: intra-op threads per inference (0 = the runtime's default).
        runs: timed inferences per artifact.
        warmup: untimed inferences after the first.
        device_id: override the host's device id (e.g. a name shared by a fleet of CI hosts).
        progress: called with a short description before each artifact.
        warn: called once per int8 target of the bundle whose unit this host lacks (the
            artifacts' latency here then says little about their target).

    Returns:
        The updated manifest. Latency entries of other devices are kept; this device's entries
        are replaced for every artifact measured. The manifest is written once, at the end.

    Raises:
        ProfileError: bad flags, no runnable artifact, a missing file or a run that failed
            (the manifest is then left as it was).
    """
    if runs < 1 or warmup < 0 or threads < 0:
        raise ProfileError(f"--runs must be >= 1, --warmup >= 0 and --threads >= 0, but got "
                           f"runs={runs}, warmup={warmup}, threads={threads}")
    dev_id, device = host_device()
    if device_id is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", device_id) or device_id == "macs":
            raise ProfileError(f'--device-id must match [A-Za-z0-9_.-]+ and not be "macs", but got "{device_id}"')
        dev_id = device_id
    bundle = Path(bundle)
    jobs = plan_profile(bundle, runtimes)
    manifest = read_manifest(bundle)
    measured = {"variants": [{"artifacts": [j.artifact for j in jobs]}]}
    for line in target_warnings(measured, host_cpu_flags()):
        (warn or (lambda m: None))(line)
    arts = {(v["id"], a["path"]): a for v in manifest["variants"] for a in v["artifacts"]}
    for job in jobs:
        if progress:
            progress(job.label)
        result = run_worker(bundle / job.artifact["path"], job.runtime, threads, runs, warmup)
        entry = {k: _round(v) for k, v in result.items()} | {"source": SOURCE}
        arts[job.variant, job.artifact["path"]].setdefault("latency", {})[dev_id] = entry
    manifest.setdefault("devices", {})[dev_id] = device
    manifest["pareto"] = bundle_fronts(manifest)
    refresh_bundle_policy(manifest, bundle)
    write_manifest(bundle, manifest)
    return manifest


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


__all__ = ["RUNTIMES", "ProfileError", "host_device", "plan_profile", "profile_bundle", "run_worker"]
