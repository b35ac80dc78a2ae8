"""Benchmark: grow from seeds (segmentation.grow) on the left-kidney region of the full phantom.

The full-size phantom (512 x 512 x 300 at 0.7 x 0.7 x 1 mm by default) is generated once and
cropped to a box around the left kidney (``--crop``, default 200 x 200 x 200 voxels). Seeds are
placed as a planner would, from the known anatomy: a few points inside the cortex, medulla,
collecting system and tumour, background points on the renal vessels and psoas, a background
ring 4-7 mm outside the kidney, and the fat of the whole box (threshold preset "fat") as
background, so that the grow-cut region is the whole box.

Stages run in their own Python process so that time and peak memory (ru_maxrss) are theirs:

- ``prepare``: generate the phantom, crop it, place the seeds (not timed as part of the result);
- ``grow``: load the crop into a MRML scene, make the seed segments, then time
  ``GrowFromSeeds.run()`` (seed collection, grow cut, writing the result segments); ``--repeat``
  runs with the automatic (two-level) search and one at full resolution for comparison.

The report gives the seconds (median of the repeats), the peak RSS, the Dice of kidney and
tumour against the ground truth and the agreement (Dice per result) of the two-level search with
the full-resolution one.

    python benchmarks/bench_grow_from_seeds.py                    # 512 x 512 x 300 phantom
    python benchmarks/bench_grow_from_seeds.py --shape 256 256 150 --crop 100 100 100 --out r.json

JSON goes to stdout and, with ``--out``, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import emit, peak_rss_mib, stage_in_subprocess  # benchmarks/ is on sys.path when a script runs

# Centre of the crop in LPS mm: the left kidney (74, 46, 14) shifted toward its lower-pole tumour.
CROP_CENTRE_LPS = (79.0, 46.0, 10.0)


def _label_values(key: str) -> list[int]:
    from VSPCoreLib import terminology
    from VSPCoreLib.sampledata.phantom import LABELS

    if key in LABELS:
        return [LABELS[key]]
    values: list[int] = []
    for part in terminology.term(key).parts:
        values += _label_values(part)
    return values


def _pick_points(mask, spacing_kji, count: int, min_depth_mm: float = 2.0):
    """`count` well-spread voxels [k, j, i] deep inside a mask (farthest-point sampling)."""
    import numpy as np
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask, sampling=spacing_kji)
    candidates = np.argwhere(depth >= min(min_depth_mm, 0.7 * depth.max()))
    chosen = [np.array(np.unravel_index(np.argmax(depth), depth.shape))]
    distance = np.linalg.norm((candidates - chosen[0]) * spacing_kji, axis=1)
    for _ in range(count - 1):
        chosen.append(candidates[int(np.argmax(distance))])
        distance = np.minimum(distance, np.linalg.norm((candidates - chosen[-1]) * spacing_kji, axis=1))
    return np.array(chosen)


def prepare(args: argparse.Namespace) -> dict:
    import numpy as np
    from scipy import ndimage

    from VSPCoreLib.sampledata.phantom import generate_phantom

    start = time.perf_counter()
    phantom = generate_phantom(tuple(args.shape), seed=args.seed)
    generate_seconds = time.perf_counter() - start
    ijk_to_ras = phantom.ijk_to_ras()
    centre_ras = np.array([-CROP_CENTRE_LPS[0], -CROP_CENTRE_LPS[1], CROP_CENTRE_LPS[2]])
    centre_ijk = np.linalg.solve(ijk_to_ras, np.append(centre_ras, 1.0))[:3]
    size = np.array(args.crop)
    lo = np.clip(np.round(centre_ijk - size / 2).astype(int), 0, np.array(phantom.shape) - size)
    hi = lo + size
    crop = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    ct = phantom.ct_hu[crop].copy()
    labels = phantom.labels[crop].copy()
    crop_ijk_to_ras = ijk_to_ras.copy()
    crop_ijk_to_ras[:3, 3] = (ijk_to_ras @ np.append(lo, 1.0))[:3]
    del phantom

    spacing_kji = np.linalg.norm(crop_ijk_to_ras[:3, :3], axis=0)[::-1]

    def ras(kji):
        return (crop_ijk_to_ras @ np.column_stack([kji[:, ::-1], np.ones(len(kji))]).T).T[:, :3]

    def truth(key):
        return np.isin(labels, _label_values(key))

    points = []
    for key, count, name in (
        ("kidney_left_cortex", 6, "Kidney"),
        ("kidney_left_medulla", 4, "Kidney"),
        ("renal_pelvis_left", 2, "Kidney"),
        ("calyx_left", 2, "Kidney"),
        ("tumour", 3, "Tumour"),
        ("renal_vein_left", 3, "Background"),
        ("renal_artery_left", 2, "Background"),
        ("psoas_left", 2, "Background"),
    ):
        mask = truth(key)
        if mask.any():
            points += [(name, p.tolist()) for p in ras(_pick_points(mask, spacing_kji, count, 1.0))]
    kidney = truth("kidney_left")
    outside = ndimage.distance_transform_edt(~kidney, sampling=spacing_kji)
    ring = (outside > 4.0) & (outside <= 7.0)
    path = Path(args.workdir) / "crop.npz"
    np.savez(
        path,
        ct=ct,
        labels=labels,
        ijk_to_ras=crop_ijk_to_ras,
        ring=ring,
        kidney=kidney,
        tumour=truth("tumour"),
    )
    (Path(args.workdir) / "points.json").write_text(json.dumps(points))
    return {
        "stage": "prepare",
        "generate_seconds": round(generate_seconds, 2),
        "crop_ijk": [int(v) for v in size],
        "crop_start_ijk": [int(v) for v in lo],
        "points": len(points),
    }


def grow(args: argparse.Namespace) -> dict:
    import numpy as np
    import slicer
    import slicer.util

    from SurgicalPlanningLib.segmentation import editing, threshold
    from SurgicalPlanningLib.segmentation.grow import GrowFromSeeds
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.arrays import array_to_vtk_matrix

    data = np.load(Path(args.workdir) / "crop.npz")
    points = [(name, tuple(p)) for name, p in json.loads((Path(args.workdir) / "points.json").read_text())]
    app = VSPApplication.create_headless()
    volume = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(volume, data["ct"])
    volume.SetIJKToRASMatrix(array_to_vtk_matrix(data["ijk_to_ras"]))
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Plan")
    segmentation.CreateDefaultDisplayNodes()
    session = editing.EditSession(segmentation, volume)
    grid = session.grid
    with session.operation("seeds"):
        ring = session.add_segment("Background ring")
        session.apply(ring, grid.grid_array(data["ring"], grid.box))
    threshold.threshold(session, "Fat", preset="fat")
    two_level = {"auto": None, "on": True, "off": False}[args.two_level]
    grower = GrowFromSeeds(
        session,
        {"Kidney": [], "Tumour": [], "Background": ["Background ring", "Fat"]},
        points=points,
        background=["Background"],
        two_level=two_level,
    )
    baseline = peak_rss_mib()
    start = time.perf_counter()
    result = grower.run()
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    kidney = session.mask("Kidney", grid.box).array
    tumour = session.mask("Tumour", grid.box).array

    def dice(a, b) -> float:
        return round(float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))), 4)

    np.savez_compressed(Path(args.workdir) / f"result_{args.two_level}.npz", kidney=kidney, tumour=tumour)
    return {
        "stage": f"grow ({args.two_level})",
        "seconds": round(seconds, 3),
        "grow_region_ijk": list(result.box.shape_kji[::-1]),
        "grow_region_voxels": result.box.voxels,
        "levels": result.levels,
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(peak, 1),
        "dice_kidney_with_tumour": dice(kidney | tumour, data["kidney"]),
        "dice_tumour": dice(tumour, data["tumour"]),
        "volume_ml": {k: round(v, 2) for k, v in result.volume_ml.items()},
    }


def _in_subprocess(stage: str, args: argparse.Namespace, *extra: str) -> dict:
    return stage_in_subprocess(
        __file__,
        stage,
        [
            "--workdir",
            str(args.workdir),
            "--shape",
            *map(str, args.shape),
            "--crop",
            *map(str, args.crop),
            "--seed",
            str(args.seed),
            *extra,
        ],
    )


def _agreement(workdir: Path) -> dict:
    import numpy as np

    auto = np.load(workdir / "result_auto.npz")
    full = np.load(workdir / "result_off.npz")
    out = {}
    for key in ("kidney", "tumour"):
        a, b = auto[key], full[key]
        out[key] = round(
            float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)), 4
        )
        out[f"{key}_voxels_differing"] = int(np.count_nonzero(a != b))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    parser.add_argument("--crop", type=int, nargs=3, default=(200, 200, 200), metavar=("I", "J", "K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the automatic search (median reported)"
    )
    parser.add_argument("--no-full", action="store_true", help="skip the full-resolution comparison run")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--two-level", default="auto", choices=("auto", "on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage == "prepare":
        print(json.dumps(prepare(args)))
        return 0
    if args.stage == "grow":
        print(json.dumps(grow(args)))
        return 0

    own_workdir = args.workdir is None
    if own_workdir:
        args.workdir = Path(tempfile.mkdtemp(prefix="bench_grow_"))
    try:
        prepared = _in_subprocess("prepare", args)
        runs = [_in_subprocess("grow", args, "--two-level", "auto") for _ in range(max(args.repeat, 1))]
        seconds = [run["seconds"] for run in runs]
        report = {
            "benchmark": "grow from seeds, left kidney region",
            "phantom_shape_ijk": list(args.shape),
            "prepare": prepared,
            "grow": {
                **runs[-1],
                "median_seconds": round(statistics.median(seconds), 3),
                "runs_seconds": seconds,
                "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
            },
            "target_seconds": 2.0,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
        }
        report["grow"].pop("seconds", None)
        if not args.no_full:
            report["full_resolution"] = _in_subprocess("grow", args, "--two-level", "off")
            report["two_level_vs_full_dice"] = _agreement(args.workdir)
        report["meets_target"] = report["grow"]["median_seconds"] <= report["target_seconds"]
    finally:
        if own_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
