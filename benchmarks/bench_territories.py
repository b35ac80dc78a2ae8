"""Benchmark: vascular territories (and nephrometry) of the left kidney on the sample phantom.

Stages, each in its own Python process so that time and peak memory (ru_maxrss) are its own:

- ``prepare``: the phantom of the given shape; the left kidney, its five segmental arteries and
  the tumour, collecting system and main renal vessels are saved as cropped masks (what
  ``segment_mask`` returns), with the ground-truth perfusion map on the kidney's crop;
- ``territories``: ``compute_territories`` (geodesic, vtkImageGrowCutSegment) on those masks,
  with Dice and volume ratio per branch against the phantom's perfusion regions;
- ``territories_euclidean``: the same with straight-line nearest branches, for comparison;
- ``segmentation``: from a segmentation node (the phantom's label map imported as segments):
  ``territories_from_segmentation`` (segment masks + territories) and
  ``add_territory_segments`` timed separately;
- ``nephrometry``: ``renal_score`` on the saved masks.

Each timed stage runs ``--repeat`` times (separate processes); medians are reported. The target
is territories of the kidney with 5+ branches in <= 2 s at the full-size grid.

    python benchmarks/bench_territories.py                      # 512 x 512 x 300 phantom
    python benchmarks/bench_territories.py --shape 256 256 150 --repeat 1 --out /tmp/t.json

JSON goes to stdout and, with ``--out``, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from _common import emit, peak_rss_mib, stage_in_subprocess  # benchmarks/ is on sys.path when a script runs

TIMED_STAGES = ("territories", "territories_euclidean", "segmentation", "nephrometry")
TARGET_SECONDS = 2.0
SIDE = "left"
BRANCHES = [f"segmental_artery_{SIDE}_{s}" for s in ("apical", "upper", "middle", "lower", "posterior")]
OTHER_MASKS = ("kidney_left", "tumour", "collecting_system_left", "renal_artery_left", "renal_vein_left")


def _masks_file(args: argparse.Namespace) -> Path:
    return Path(args.workdir) / "masks.npz"


def _prepare(args: argparse.Namespace) -> dict:
    import numpy as np

    from SurgicalPlanningLib.territories import on_grid
    from VSPCoreLib.arrays import GridArray, crop_to_content
    from VSPCoreLib.sampledata.phantom import LABELS, generate_phantom

    start = time.perf_counter()
    phantom = generate_phantom(tuple(args.shape), seed=args.seed)
    seconds = time.perf_counter() - start
    ijk_to_ras = phantom.ijk_to_ras()
    saved = {}
    for key in (*OTHER_MASKS, *BRANCHES):
        grid = crop_to_content(GridArray(phantom.mask(key), ijk_to_ras))
        saved[f"{key}__array"] = grid.array
        saved[f"{key}__matrix"] = grid.ijk_to_ras
    kidney = GridArray(saved["kidney_left__array"], saved["kidney_left__matrix"])
    for key in BRANCHES:
        truth = GridArray(phantom.perfusion == LABELS[key], ijk_to_ras)
        saved[f"truth_{key}"] = on_grid(truth, kidney.ijk_to_ras, kidney.array.shape)
    saved["labels"] = phantom.labels
    saved["ijk_to_ras"] = ijk_to_ras
    np.savez(_masks_file(args), **saved)
    return {
        "seconds": seconds,
        "voxels": int(phantom.labels.size),
        "spacing_mm": [round(float(s), 4) for s in phantom.spacing_mm],
        "kidney_crop_kji": list(kidney.array.shape),
    }


def _load(args: argparse.Namespace):
    import numpy as np

    from VSPCoreLib.arrays import GridArray

    data = np.load(_masks_file(args))
    masks = {
        key: GridArray(data[f"{key}__array"], data[f"{key}__matrix"]) for key in (*OTHER_MASKS, *BRANCHES)
    }
    truth = {key: data[f"truth_{key}"] for key in BRANCHES}
    return data, masks, truth


def _accuracy(result, truth: dict, kidney) -> dict:
    import numpy as np

    from SurgicalPlanningLib.territories import on_grid
    from VSPCoreLib.arrays import GridArray

    rows = {}
    for key in BRANCHES:
        mask = on_grid(
            GridArray(result.mask(key), result.labels.ijk_to_ras), kidney.ijk_to_ras, kidney.array.shape
        )
        t = truth[key]
        both = np.count_nonzero(mask & t)
        rows[key] = {
            "dice": round(2.0 * both / (np.count_nonzero(mask) + np.count_nonzero(t)), 4),
            "volume_ratio": round(np.count_nonzero(mask) / np.count_nonzero(t), 4),
            "volume_mL": round(result.territories[key].volume_ml, 3),
        }
    return rows


def _timed(function):
    """Run function once; seconds, peak RSS and the peak of numpy/Python allocations."""
    baseline = peak_rss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    value = function()
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, {
        "seconds": round(seconds, 4),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_traced_mib": round(traced_peak / 2**20, 1),
    }


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    """Run one stage in this process; return its timing and memory."""
    result: dict = {"stage": stage}
    if stage == "prepare":
        result.update(_prepare(args))
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        return result
    # Imports and input loading happen before the clock starts: stages measure the work.
    import slicer  # noqa: F401

    from SurgicalPlanningLib import nephrometry, territories

    data, masks, truth = _load(args)
    kidney = masks["kidney_left"]
    branches = {key: masks[key] for key in BRANCHES}
    if stage in ("territories", "territories_euclidean"):
        geodesic = stage == "territories"
        value, timing = _timed(
            lambda: territories.compute_territories(
                kidney, branches, geodesic=geodesic, organ_name="kidney_left"
            )
        )
        result.update(timing)
        result["accuracy"] = _accuracy(value, truth, kidney)
        result["unreached_voxel_count"] = value.unreached_voxel_count
    elif stage == "segmentation":
        import slicer.util

        from SurgicalPlanningLib.sample_case import labelmap_to_segmentation
        from VSPCoreLib.app import VSPApplication
        from VSPCoreLib.arrays import array_to_vtk_matrix
        from VSPCoreLib.sampledata.phantom import LABELS

        app = VSPApplication.create_headless()
        labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
        labelmap.SetIJKToRASMatrix(array_to_vtk_matrix(data["ijk_to_ras"]))
        slicer.util.updateVolumeFromArray(labelmap, data["labels"])
        segmentation = labelmap_to_segmentation(
            app, labelmap, {value: key for key, value in LABELS.items()}, reference_volume=labelmap
        )
        value, timing = _timed(
            lambda: territories.territories_from_segmentation(segmentation, labelmap, "kidney_left", BRANCHES)
        )
        result.update(timing)
        result["accuracy"] = _accuracy(value, truth, kidney)
        _, segments = _timed(
            lambda: territories.add_territory_segments(
                app.scene, value, "kidney_left", reference_volume=labelmap, source_segmentation=segmentation
            )
        )
        result["add_territory_segments_seconds"] = segments["seconds"]
    elif stage == "nephrometry":
        value, timing = _timed(
            lambda: nephrometry.renal_score(
                kidney,
                masks["tumour"],
                masks["collecting_system_left"],
                renal_artery=masks["renal_artery_left"],
                renal_vein=masks["renal_vein_left"],
            )
        )
        result.update(timing)
        result["score"] = value.to_json()
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    return result


def _in_subprocess(stage: str, args: argparse.Namespace) -> dict:
    return stage_in_subprocess(
        __file__,
        stage,
        ["--workdir", str(args.workdir), "--shape", *map(str, args.shape), "--seed", str(args.seed)],
    )


def _summary(runs: list[dict]) -> dict:
    seconds = [r["seconds"] for r in runs]
    summary = {
        "median_seconds": round(statistics.median(seconds), 4),
        "min_seconds": round(min(seconds), 4),
        "runs_seconds": seconds,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "baseline_rss_mib": min(r["baseline_rss_mib"] for r in runs),
        "peak_traced_mib": max(r["peak_traced_mib"] for r in runs),
    }
    for key in ("accuracy", "score", "unreached_voxel_count"):
        if key in runs[0]:
            summary[key] = runs[0][key]
    if "add_territory_segments_seconds" in runs[0]:
        summary["add_territory_segments_median_seconds"] = round(
            statistics.median(r["add_territory_segments_seconds"] for r in runs), 4
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timed stage (median reported)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--workdir", type=Path, help="where the masks are kept (default: a temp folder)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage:
        print(json.dumps(run_stage(args.stage, args)))
        return 0

    own_workdir = args.workdir is None
    if own_workdir:
        args.workdir = Path(tempfile.mkdtemp(prefix="bench_territories_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        prepare = _in_subprocess("prepare", args)
        runs: dict[str, list[dict]] = {stage: [] for stage in TIMED_STAGES}
        for _ in range(max(1, args.repeat)):
            for stage in TIMED_STAGES:
                runs[stage].append(_in_subprocess(stage, args))
    finally:
        if own_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)

    summaries = {stage: _summary(stage_runs) for stage, stage_runs in runs.items()}
    seconds = summaries["territories"]["median_seconds"]
    dice = [row["dice"] for row in summaries["territories"]["accuracy"].values()]
    report = {
        "benchmark": "territories",
        "shape_ijk": list(args.shape),
        "organ": "kidney_left",
        "branches": BRANCHES,
        "repeat": args.repeat,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "stages": {"prepare": prepare, **summaries},
        "territories_min_dice": min(dice),
        "target_seconds": TARGET_SECONDS,
        "meets_target": seconds <= TARGET_SECONDS,
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
