"""Run every benchmark script in this directory, one after another, then rebuild RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
scripts = sorted(here.glob("bench_*.py"))
only = set(sys.argv[1:])
failed = []
for script in scripts:
    if only and script.stem.removeprefix("bench_") not in only:
        continue
    print(f"== {script.name}", flush=True)
    if subprocess.run([sys.executable, str(script)]).returncode:
        failed.append(script.name)
sys.path.insert(0, str(here.parent))
from benchmarks.common import assemble  # noqa: E402

print(f"wrote {assemble()}")
if failed:
    sys.exit(f"failed: {', '.join(failed)}")
