"""Benchmark: print preparation (PrintPrepLib).

Stages, each in its own process (time and peak memory its own); the sample case is generated
once per grid (seed 3) into ``--cases DIR`` and reused by every stage and run:

- ``full``: the sample case's five left kidney-tumour parts (kidney, tumour, renal arteries,
  renal vein, collecting system) prepared and exported: surfaces, repair, fidelity, STL, OBJ+MTL,
  3MF, GLB, the scene bundle (.mrb, with the CT) and the device record, without PrusaSlicer.
  Target: <= 15 s. ``full_slice``: the same with PrusaSlicer's slicing estimate of every part
  (an optional step; its processes run beside the other exports). The parts' fidelity (P95
  distance, volume difference) is reported with them, with the supersampling factors that
  ``auto`` tried for each part and the volume difference of each.
- ``surface``: labelmap -> closed surface of one segment (the tumour), same parameters
  (smoothing 0.15, no decimation, no supersampling): ours (``part_labelmap`` + ``part_surface``:
  reading the mask, cropping, Slicer's converter) against Slicer's bare converter
  (``vtkSegmentation.CreateRepresentation`` on the segment's binary labelmap as
  ``GetBinaryLabelmapRepresentation`` gives it), in the same process, median of 5. Target:
  <= 1.1x. Ours with automatic supersampling is reported beside it (more work by design).
- ``repair``: decimation (to 10 %) and repair of a 1.3-million-triangle mesh (a subdivided
  sphere with noise). Target: <= 3 s.

Times are wall-clock seconds and the process's CPU seconds (its own and its children's): the
development machine is shared, so the CPU time is the steadier number.

    python benchmarks/bench_printprep.py [--grids full,medium] [--cases DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, peak_rss_mib, stage_in_subprocess

GRIDS = {"small": (128, 128, 75), "medium": (256, 256, 150), "full": (512, 512, 300)}
SEED = 3


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _case_dir(cases: Path, grid: str) -> Path:
    """The sample case of this grid, generated on first use and reused afterwards."""
    from SurgicalPlanningLib.sample_case import create_sample_case

    folder = cases / grid / "case"
    if not folder.exists():
        create_sample_case(folder, shape=GRIDS[grid], seed=SEED)
    return folder


def _load(cases: Path, grid: str):
    from SurgicalPlanningLib.sample_case import load_sample_case
    from VSPCoreLib.app import VSPApplication

    app = VSPApplication.create_headless()
    return app, load_sample_case(app, _case_dir(cases, grid))


def _surface_step(result, name: str) -> dict:
    return next(
        s
        for s in result.record["processing"]
        if s.get("part") == name and s["step"] == "labelmap to closed surface"
    )


def stage_full(cases: Path, grid: str, slice_: bool) -> dict:
    from PrintPrepLib.pipeline import KIDNEY_TUMOUR_PARTS_LEFT, PrintOptions, prepare_print

    app, loaded = _load(cases, grid)
    with tempfile.TemporaryDirectory() as folder:
        cpu, start = _cpu_s(), time.perf_counter()
        result = prepare_print(
            app,
            loaded.segmentation_node,
            out_dir=Path(folder) / "out",
            segments=list(KIDNEY_TUMOUR_PARTS_LEFT),
            options=PrintOptions(slice=slice_),
        )
        seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
    return {
        "grid": grid,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "parts": len(result.parts),
        "triangles": sum(p["triangles"] for p in result.parts),
        "sliced": [p.get("slicing", {}).get("sliced", False) for p in result.parts],
        "fidelity": {
            p["key"]: {
                "p95_mm": p["fidelity"]["p95_distance_mm"],
                "p95_limit_mm": p["fidelity"]["tolerance"]["p95_distance_mm"],
                "volume_difference_percent": p["fidelity"]["volume_difference_percent"],
                "passed": p["fidelity"]["passed"],
                "supersampling": _surface_step(result, p["name"])["parameters"]["supersampling"],
                # Automatic supersampling: every factor tried and its volume difference (%)
                # before repair.
                "supersampling_tried": [
                    [t["supersampling"], t.get("volume_difference_percent")]
                    for t in _surface_step(result, p["name"])["tried"]
                ],
            }
            for p in result.parts
        },
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def stage_surface(cases: Path, grid: str) -> dict:
    import slicer

    from PrintPrepLib.pipeline import resolve_parts
    from PrintPrepLib.surface import SurfaceOptions, labelmap_to_surface, part_labelmap, part_surface

    app, loaded = _load(cases, grid)
    seg = loaded.segmentation_node
    (part,) = resolve_parts(seg, ["tumour"])
    sid = part.segment_ids[0]
    smoothing = 0.15
    ours, auto, bare, ours_convert, bare_convert, triangles = [], [], [], [], [], {}
    options = SurfaceOptions(smoothing_factor=smoothing, supersampling=1)
    for _ in range(5):
        start = time.perf_counter()
        labelmap = part_labelmap(seg, [sid], subject="tumour")
        converting = time.perf_counter()
        mesh, _ = part_surface(labelmap, options, subject="tumour")
        ours.append(time.perf_counter() - start)
        ours_convert.append(time.perf_counter() - converting)
        triangles["ours"] = len(mesh.faces)

        start = time.perf_counter()
        image = slicer.vtkOrientedImageData()
        seg.GetBinaryLabelmapRepresentation(sid, image)  # Slicer's own labelmap of the segment
        converting = time.perf_counter()
        polydata = labelmap_to_surface(image, smoothing_factor=smoothing, decimation_factor=0.0)
        bare.append(time.perf_counter() - start)
        bare_convert.append(time.perf_counter() - converting)
        triangles["bare"] = polydata.GetNumberOfPolys()
        extent = image.GetExtent()

        start = time.perf_counter()
        labelmap = part_labelmap(seg, [sid], subject="tumour")
        mesh, _ = part_surface(labelmap, SurfaceOptions(smoothing_factor=smoothing), subject="tumour")
        auto.append(time.perf_counter() - start)
        triangles["ours_auto_supersampling"] = len(mesh.faces)
    for values in (ours, auto, bare, ours_convert, bare_convert):
        values.sort()
    return {
        "grid": grid,
        "segment": "tumour",
        "what": "segment in the segmentation node -> closed surface (reading the labelmap included)",
        "bare_labelmap_voxels": int(
            (extent[1] - extent[0] + 1) * (extent[3] - extent[2] + 1) * (extent[5] - extent[4] + 1)
        ),
        "ours_cropped_voxels": int(labelmap.grid.array.size),
        "ours_median_s": round(ours[2], 4),
        "bare_median_s": round(bare[2], 4),
        "ratio": round(ours[2] / bare[2], 3),
        "conversion_only": {
            "ours_median_s": round(ours_convert[2], 4),
            "bare_median_s": round(bare_convert[2], 4),
            "ratio": round(ours_convert[2] / bare_convert[2], 3),
        },
        "ours_auto_supersampling_median_s": round(auto[2], 4),
        "triangles": triangles,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def stage_repair() -> dict:
    import numpy as np
    import trimesh

    from PrintPrepLib import repair

    mesh = trimesh.creation.icosphere(subdivisions=8, radius=50.0)  # 1,310,720 triangles
    rng = np.random.default_rng(0)
    mesh.vertices += rng.normal(scale=0.01, size=mesh.vertices.shape)
    cpu, start = _cpu_s(), time.perf_counter()
    small = repair.decimate(mesh, 0.9)
    decimated, decimated_cpu = time.perf_counter() - start, _cpu_s() - cpu
    fixed, report = repair.repair(small)
    total, total_cpu = time.perf_counter() - start, _cpu_s() - cpu
    return {
        "input_triangles": int(len(mesh.faces)),
        "output_triangles": int(len(fixed.faces)),
        "decimate_s": round(decimated, 3),
        "decimate_cpu_s": round(decimated_cpu, 3),
        "decimate_and_repair_s": round(total, 3),
        "decimate_and_repair_cpu_s": round(total_cpu, 3),
        "watertight": report["after"]["watertight"],
        "self_intersecting_face_pairs": report["after"]["self_intersecting_face_pairs"],
        "volume_change_percent": round(100.0 * (fixed.volume - mesh.volume) / mesh.volume, 4),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage")
    parser.add_argument("--grid", default="full")
    parser.add_argument("--grids", default="full,medium", help="grids to measure: small, medium, full")
    parser.add_argument("--cases", type=Path, default=Path(tempfile.gettempdir()) / "vsp-bench-printprep")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.stage:
        result = {
            "full": lambda: stage_full(args.cases, args.grid, False),
            "full_slice": lambda: stage_full(args.cases, args.grid, True),
            "surface": lambda: stage_surface(args.cases, args.grid),
            "repair": stage_repair,
        }[args.stage]()
        print(json.dumps(result))
        return
    script = str(Path(__file__).resolve())
    stages = {}
    for grid in args.grids.split(","):
        _case_dir(args.cases, grid)  # generated once, outside the timed stages
        for name in ("full", "full_slice", "surface"):
            if grid != "full" and name == "full_slice":
                continue
            stages[f"{name}_{grid}"] = stage_in_subprocess(
                script, name, ["--grid", grid, "--cases", str(args.cases)]
            )
    stages["repair"] = stage_in_subprocess(script, "repair", [])
    report = {
        "benchmark": "printprep",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "note": "shared 2-core machine: wall times are upper bounds; cpu_seconds is steadier",
        "stages": stages,
        "targets": {"full_s": 15.0, "repair_s": 3.0, "surface_ratio": 1.1},
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
