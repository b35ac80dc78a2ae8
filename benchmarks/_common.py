"""Helpers every benchmark script shares: peak memory, stages in their own process, the report.

The scripts run as `python benchmarks/bench_x.py`, so this module is importable as `_common`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def stage_in_subprocess(script: str, stage: str, argv: list[str]) -> dict:
    """Run `script --stage STAGE *argv` in a fresh Python process, so that its time and peak
    memory are its own; the stage prints its result as JSON on its last line."""
    command = [sys.executable, script, "--stage", stage, *argv]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"stage {stage} failed with exit code {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_seconds"] = round(wall, 3)
    return result


def emit(report: dict, out: str | Path | None) -> None:
    """The report as JSON on stdout, and in `out` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
