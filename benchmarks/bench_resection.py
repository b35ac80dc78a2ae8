"""Benchmark: virtual resection on the sample case's left kidney at 0.5 mm.

Stages (one process; the case is made in a child process so that its DICOM writing does not
count toward this process's peak memory):

- ``setup``: `ResectionPlanner` on the left kidney (cortex, medulla, pelvis, calyces), the tumour
  and the six left renal arteries: segments read and resampled onto the 0.5 mm working grid.
- ``plane_move``: a plane through the lower pole is dragged: ``--moves`` times a small shift
  along its normal and a small tilt (as a mouse drag does), each followed by
  `update_volumes()` (resected/remnant volumes of the organ and its segments, tumour in the
  remnant). Median, 90th percentile and maximum; the target is a median ≤ 50 ms (≥ 20/s).
- ``surface_move``: the same for a 5 × 5 deformable surface whose middle control point moves
  (spline re-fitted and re-rastered, then the side test on the organ voxels).
- ``full_update_plane``: `update()` with that plane: + resection surface, tumour distance map and
  minimum margin, cut vessels, output nodes (the work done on mouse release).
- ``full_update_margin``: `update()` for a 5 mm margin resection (first call: tumour distance
  transform included; second call: cached).
- ``memory``: peak resident memory of the process (ru_maxrss) before the planner and at the end,
  and tracemalloc's peak over setup and updates (numpy's arrays are traced).

    python benchmarks/bench_resection.py                       # full-size 512 × 512 × 300 case
    python benchmarks/bench_resection.py --shape 256 256 150 --out /tmp/bench_resection.json
    python benchmarks/bench_resection.py --case-dir DIR        # reuse (or keep) a generated case

JSON goes to stdout and, with ``--out``, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from _common import emit, peak_rss_mib  # benchmarks/ is on sys.path when a script runs

LEFT_KIDNEY = ["kidney_left_cortex", "kidney_left_medulla", "renal_pelvis_left", "calyx_left"]
LEFT_ARTERIES = ["renal_artery_left"] + [
    f"segmental_artery_left_{s}" for s in ("apical", "upper", "middle", "lower", "posterior")
]


def _make_case(case_dir: Path, shape: tuple[int, int, int], seed: int) -> None:
    """Generate the case in a child process (its memory is not this process's)."""
    if (case_dir / "case.json").is_file():
        return
    code = (
        "import sys; from SurgicalPlanningLib.sample_case import create_sample_case; "
        "create_sample_case(sys.argv[1], shape=tuple(int(v) for v in sys.argv[2:5]), seed=int(sys.argv[5]))"
    )
    subprocess.run([sys.executable, "-c", code, str(case_dir), *map(str, shape), str(seed)], check=True)


def _stats(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "count": len(seconds),
        "median_ms": round(1000 * statistics.median(seconds), 2),
        "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 2),
        "max_ms": round(1000 * ordered[-1], 2),
        "min_ms": round(1000 * ordered[0], 2),
        "updates_per_s_at_median": round(1.0 / statistics.median(seconds), 1),
    }


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from SurgicalPlanningLib.resection import ResectionPlanner, segment_ids_for_keys
    from SurgicalPlanningLib.sample_case import load_sample_case
    from VSPCoreLib.app import VSPApplication

    shape = tuple(args.shape)
    case_dir = Path(args.case_dir) if args.case_dir else Path(tempfile.mkdtemp(prefix="bench-resection-"))
    start = time.perf_counter()
    _make_case(case_dir, shape, args.seed)
    make_s = time.perf_counter() - start

    app = VSPApplication.create_headless()
    start = time.perf_counter()
    case = load_sample_case(app, case_dir)
    load_s = time.perf_counter() - start
    segmentation = case.segmentation_node
    facts = json.loads((case_dir / "case.json").read_text())["ground_truth"]
    rss_before = peak_rss_mib()

    organ = segment_ids_for_keys(segmentation, LEFT_KIDNEY)
    tumour = segment_ids_for_keys(segmentation, ["tumour"])[0]
    vessels = segment_ids_for_keys(segmentation, LEFT_ARTERIES)

    tracemalloc.start()
    start = time.perf_counter()
    planner = ResectionPlanner(app, segmentation, organ, tumour, vessels, spacing_mm=args.spacing)
    setup_s = time.perf_counter() - start

    def ras(lps):
        return np.array([-lps[0], -lps[1], lps[2]], float)

    kidney = ras(facts["kidney_centres_lps"]["kidney_left"])
    tumour_centre = ras(facts["tumour_centre_lps"])
    toward_kidney = (kidney - tumour_centre) / np.linalg.norm(kidney - tumour_centre)
    radius = facts["tumour_diameter_mm"] / 2.0
    origin = tumour_centre + (radius + 5.0) * toward_kidney
    plane = planner.create_plane(origin, toward_kidney, "benchmark plane")
    planner.add_plane(plane, remove="negative")
    planner.update_volumes()  # first evaluation (nothing cached for the plane yet)

    rng = np.random.default_rng(args.seed)
    move_seconds = []
    volumes = []
    for _ in range(args.moves):
        # A drag: shift along the normal by up to ±1 mm and tilt by up to ±2°, kept near the start.
        shift = float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))
        tilt = rng.normal(0.0, np.radians(1.0), 3)
        normal = toward_kidney + np.cross(tilt, toward_kidney)
        normal /= np.linalg.norm(normal)
        position = plane_origin(plane) + shift * normal
        position = origin + np.clip(position - origin, -8.0, 8.0)
        plane.SetOriginWorld(*position)
        plane.SetNormalWorld(*normal)
        tick = time.perf_counter()
        summary = planner.update_volumes()
        move_seconds.append(time.perf_counter() - tick)
        volumes.append(summary.resected_volume_mL)

    plane.SetOriginWorld(*origin)
    plane.SetNormalWorld(*toward_kidney)

    # A deformable surface (5 × 5, flat through the same place) whose middle point is dragged.
    surface = planner.flat_surface(toward_kidney, centre_ras=origin)
    surface_cut = planner.add_surface(surface, remove="negative")
    planner.remove_resection(planner.cuts[0])  # the plane, for now
    planner.update_volumes()
    middle = surface.control_points_ras()[2, 2]
    surface_seconds = []
    for step in range(args.surface_moves):
        surface.set_control_point(2, 2, middle + (step % 10) * 0.8 * toward_kidney)
        tick = time.perf_counter()
        planner.update_volumes()
        surface_seconds.append(time.perf_counter() - tick)
    planner.remove_resection(surface_cut)
    planner.add_plane(plane, remove="negative")

    start = time.perf_counter()
    result = planner.update()
    full_plane_s = time.perf_counter() - start
    plane_timings = dict(result.timings_s)
    surface_points = planner.surface_model_node.GetPolyData().GetNumberOfPoints()
    start = time.perf_counter()
    planner.update()
    full_plane_again_s = time.perf_counter() - start

    planner.remove_resection(planner.cuts[0])
    planner.add_margin(5.0)
    start = time.perf_counter()
    margin_result = planner.update()
    full_margin_s = time.perf_counter() - start
    margin_timings = dict(margin_result.timings_s)
    start = time.perf_counter()
    planner.update()
    full_margin_again_s = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    return {
        "benchmark": "resection",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "shape": list(shape),
        "seed": args.seed,
        "case_seconds": {"make": round(make_s, 2), "load": round(load_s, 2)},
        "working_grid": {
            "spacing_mm": planner.region.spacing_mm,
            "shape_kji": list(planner.region.grid.shape_kji),
            "organ_voxels": planner.region.organ_voxel_count,
            "vessel_voxels": int(sum(len(b.flat_index) for b in planner.region.vessels)),
        },
        "setup_s": round(setup_s, 3),
        "plane_move": _stats(move_seconds)
        | {
            "target_median_ms": 50.0,
            "meets_target": statistics.median(move_seconds) <= 0.050,
            "resected_volume_mL_range": [round(min(volumes), 2), round(max(volumes), 2)],
        },
        "surface_move": _stats(surface_seconds)
        | {
            "note": "control point moved (model rebuilt by its observer, outside the timing), then update_volumes()"
        },
        "full_update_plane": {
            "seconds": round(full_plane_s, 3),
            "seconds_again": round(full_plane_again_s, 3),
            "stages_s": {k: round(v, 4) for k, v in plane_timings.items()},
            "resected_volume_mL": round(result.resected_volume_mL, 2),
            "min_margin_mm": round(result.min_margin_mm, 2),
            "cut_vessels": [v.to_json() for v in result.cut_vessels],
            "surface_points": surface_points,
        },
        "full_update_margin": {
            "seconds": round(full_margin_s, 3),
            "seconds_again": round(full_margin_again_s, 3),
            "stages_s": {k: round(v, 4) for k, v in margin_timings.items()},
            "resected_volume_mL": round(margin_result.resected_volume_mL, 2),
            "min_margin_mm": round(margin_result.min_margin_mm, 2),
        },
        "memory": {
            "peak_rss_mib_before_planner": round(rss_before, 1),
            "peak_rss_mib_end": round(peak_rss_mib(), 1),
            "tracemalloc_peak_mib_planner": round(traced_peak / 2**20, 1),
        },
    }


def plane_origin(plane):
    import numpy as np

    origin = np.zeros(3)
    plane.GetOriginWorld(origin)
    return origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=0.5, help="working grid spacing (mm)")
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--surface-moves", type=int, default=20)
    parser.add_argument("--case-dir", help="folder for the generated case (reused when it holds one)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = run(args)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
