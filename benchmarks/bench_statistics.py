"""Benchmark: segment statistics on the full-size sample case (512 x 512 x 300, 0.7 x 0.7 x 1 mm).

The phantom is generated, its CT becomes a scalar volume node and its label map the ground-truth
segmentation (``sample_case.labelmap_to_segmentation``: one shared labelmap layer, reference
geometry from the CT, as ``load_sample_case`` builds it, without the DICOM round trip). Then
``segmentation.statistics.compute_segment_statistics`` runs on three sets of segments:

- ``planning_15``: the 15 structures of a kidney-tumour plan (tumour, both kidneys' cortex and
  medulla, left collecting system, renal arteries and veins, aorta, IVC, liver, spleen). The
  requirement is <= 2 s for these.
- ``largest_15``: the 15 segments with the most voxels (body-wide fat and muscle shells, liver...),
  the worst case for 15 segments.
- ``all``: every segment of the ground truth.

Each set runs once to warm up (``first_run_seconds``, one-time imports included), then
``--repeat`` times; the median is reported. Peak memory is the process's
``ru_maxrss`` (it includes the phantom and the scene; ``rss_mib`` before and after each set show
what statistics add).

    python benchmarks/bench_statistics.py                       # full size
    python benchmarks/bench_statistics.py --shape 256 256 150 --out /tmp/bench_statistics.json

JSON goes to stdout and, with ``--out``, to a file.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _common import emit, peak_rss_mib  # benchmarks/ is on sys.path when a script runs

PLANNING_15 = (
    "tumour",
    "kidney_left_cortex",
    "kidney_left_medulla",
    "renal_pelvis_left",
    "calyx_left",
    "renal_artery_left",
    "renal_vein_left",
    "kidney_right_cortex",
    "kidney_right_medulla",
    "renal_artery_right",
    "renal_vein_right",
    "aorta",
    "ivc",
    "liver",
    "spleen",
)
TARGET_SECONDS = 2.0


def _rss_mib() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def _build_case(shape: tuple[int, int, int], seed: int):
    import numpy as np
    from slicer.util import updateVolumeFromArray

    from SurgicalPlanningLib.sample_case import labelmap_to_segmentation
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.arrays import array_to_vtk_matrix
    from VSPCoreLib.sampledata.phantom import generate_phantom

    timings = {}
    start = time.perf_counter()
    phantom = generate_phantom(shape, seed=seed)
    timings["generate"] = time.perf_counter() - start

    start = time.perf_counter()
    app = VSPApplication.create_headless()
    ijk_to_ras = array_to_vtk_matrix(phantom.ijk_to_ras())
    volume = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    updateVolumeFromArray(volume, phantom.ct_hu)
    volume.SetIJKToRASMatrix(ijk_to_ras)
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    updateVolumeFromArray(labelmap, np.ascontiguousarray(phantom.labels))
    labelmap.SetIJKToRASMatrix(ijk_to_ras)
    segmentation = labelmap_to_segmentation(
        app, labelmap, {s.label: s.key for s in phantom.structures}, reference_volume=volume
    )
    app.scene.RemoveNode(labelmap)
    timings["scene"] = time.perf_counter() - start
    voxels = {s.key: int(np.count_nonzero(phantom.labels == s.label)) for s in phantom.structures}
    return app, volume, segmentation, voxels, timings


def _segment_ids_by_key(segmentation_node) -> dict[str, str]:
    from SurgicalPlanningLib.structures import structure_key_of_segment
    from VSPCoreLib.arrays import segment_ids

    result = {}
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        result[str(structure_key_of_segment(segmentation.GetSegment(segment_id)))] = segment_id
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each set (median reported)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    from SurgicalPlanningLib.segmentation.statistics import compute_segment_statistics

    app, volume, segmentation, voxels, timings = _build_case(tuple(args.shape), args.seed)
    by_key = _segment_ids_by_key(segmentation)
    largest = sorted(voxels, key=voxels.get, reverse=True)[:15]
    sets = {
        "planning_15": [by_key[key] for key in PLANNING_15],
        "largest_15": [by_key[key] for key in largest],
        "all": list(by_key.values()),
    }
    results = {}
    for name, ids in sets.items():
        rss_before = _rss_mib()
        # The first run also pays one-time costs (imports of SimpleITK and scipy.spatial, ITK
        # factories): reported on its own, not in the median.
        start = time.perf_counter()
        compute_segment_statistics(segmentation, volume, ids)
        first = time.perf_counter() - start
        runs = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            rows = compute_segment_statistics(segmentation, volume, ids)
            runs.append(time.perf_counter() - start)
        tumour = next((row for row in rows if row.structure_key == "tumour"), None)
        results[name] = {
            "segments": len(ids),
            "voxels": sum(row.voxel_count for row in rows),
            "first_run_seconds": round(first, 3),
            "median_seconds": round(statistics.median(runs), 3),
            "runs_seconds": [round(t, 3) for t in runs],
            "rss_before_mib": round(rss_before, 1) if rss_before is not None else None,
            "rss_after_mib": round(_rss_mib() or 0.0, 1) or None,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "keys": [row.structure_key for row in rows] if name != "all" else None,
            "tumour": (
                {
                    "volume_mL": round(tumour.volume_ml, 3),
                    "max_diameter_mm": round(tumour.max_diameter_mm, 2),
                    "hu_mean": round(tumour.hu_mean, 1),
                    "surface_area_mm2": round(tumour.surface_area_mm2, 1),
                }
                if tumour is not None
                else None
            ),
        }
    report = {
        "benchmark": "segment_statistics",
        "shape_ijk": list(args.shape),
        "seed": args.seed,
        "repeat": args.repeat,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "setup_seconds": {k: round(v, 2) for k, v in timings.items()},
        "sets": results,
        "target_seconds": TARGET_SECONDS,
        "planning_15_meets_target": results["planning_15"]["median_seconds"] <= TARGET_SECONDS,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    emit(report, args.out)
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
