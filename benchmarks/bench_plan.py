"""Full plan recompute on the sample case: both variants of the sample plan (resections,
margins, cut vessels, territories, at-risk, clamping, nephrometry), time and peak memory.

    python benchmarks/bench_plan.py [--shape 512 512 300] [--repeat 3] [--out FILE]

Prints JSON; the case is generated and loaded first (not timed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, peak_rss_mib  # benchmarks/ is on sys.path when a script runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from SurgicalPlanningLib.planning import PlanningInputs, compute_plan, sample_plan
    from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
    from VSPCoreLib.app import VSPApplication

    with tempfile.TemporaryDirectory(prefix="vsp-bench-plan-") as folder:
        start = time.perf_counter()
        case = create_sample_case(Path(folder) / "case", shape=tuple(args.shape), seed=0)
        app = VSPApplication.create_headless()
        loaded = load_sample_case(app, case.case_dir)
        setup_s = time.perf_counter() - start
        baseline_mib = peak_rss_mib()
        inputs = PlanningInputs(app, loaded.segmentation_node, loaded.volume_node)
        times, parts = [], []
        for _ in range(args.repeat):
            plan = sample_plan(case.facts, loaded.volume_node, case_id="bench")
            start = time.perf_counter()
            compute_plan(inputs, plan)
            times.append(time.perf_counter() - start)
            parts.append({v.name: v.results["timings_s"] for v in plan.variants})
    result = {
        "benchmark": "plan_recompute",
        "shape_ijk": list(args.shape),
        "variants": [v.name for v in plan.variants],
        "setup_s": round(setup_s, 2),
        "plan_recompute_s": {
            "median": round(statistics.median(times), 3),
            "runs": [round(t, 3) for t in times],
        },
        "stage_timings_s_last_run": parts[-1],
        "target_s": 5.0,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_before_planning_mib": round(baseline_mib, 1),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
