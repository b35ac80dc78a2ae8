"""Benchmark: making the 5-part kidney model printable (PrintPrepLib.shaping).

The left kidney of the sample phantom as five closed meshes (kidney, tumour, arteries, renal
vein, collecting system), each the 0.5 level of its Gaussian-smoothed mask (VTK flying edges),
in RAS mm. Timed, in one process: wall thickness of every part, hollowing the kidney (2 mm wall,
two 4 mm drain holes), connecting the five parts with 2 mm struts, a label on the kidney, the
orientation suggestion and a split to fit a 120 x 120 x 120 mm printer.

    python benchmarks/bench_printprep_shaping.py --shape 256 256 150 --out /tmp/shaping.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import emit, peak_rss_mib

PARTS = {
    "kidney": ("kidney_left_cortex", "kidney_left_medulla", "renal_pelvis_left", "calyx_left", "tumour"),
    "tumour": ("tumour",),
    "arteries": ("renal_artery_left",)
    + tuple(f"segmental_artery_left_{s}" for s in ("apical", "upper", "middle", "lower", "posterior")),
    "veins": ("renal_vein_left",),
    "collecting system": ("renal_pelvis_left", "calyx_left"),
}


def part_meshes(shape):
    import trimesh
    from scipy import ndimage
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D

    from VSPCoreLib.sampledata.phantom import _structures, generate_phantom

    phantom = generate_phantom(shape)
    keys = {s.key: s.label for s in _structures()}
    meshes = {}
    for part, members in PARTS.items():
        mask = np.isin(phantom.labels, [keys[m] for m in members])
        k, j, i = np.nonzero(mask)
        lo = np.maximum([k.min() - 3, j.min() - 3, i.min() - 3], 0)
        hi = np.array([k.max() + 4, j.max() + 4, i.max() + 4])
        crop = np.pad(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32), 2)
        field = ndimage.gaussian_filter(crop, 0.7)
        image = vtkImageData()
        image.SetDimensions(field.shape[2], field.shape[1], field.shape[0])
        image.GetPointData().SetScalars(numpy_to_vtk(field.ravel(), deep=True))
        contour = vtkFlyingEdges3D()
        contour.SetInputData(image)
        contour.SetValue(0, 0.5)
        contour.ComputeNormalsOff()
        contour.Update()
        ijk = vtk_to_numpy(contour.GetOutput().GetPoints().GetData()).astype(float) + (lo[::-1] - 2)
        faces = vtk_to_numpy(contour.GetOutput().GetPolys().GetConnectivityArray()).reshape(-1, 3)
        lps = (
            np.asarray(phantom.origin_lps) + (ijk * phantom.spacing_mm) @ np.asarray(phantom.direction_lps).T
        )
        mesh = trimesh.Trimesh(lps * (-1, -1, 1), faces)
        mesh.update_faces(mesh.nondegenerate_faces())
        if mesh.volume < 0:
            mesh.invert()
        # Largest body only (a smoothed mask can leave specks): the benchmark times shaping, not repair.
        meshes[part] = max(mesh.split(only_watertight=True), key=lambda body: body.volume)
    return meshes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 150))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PrintPrep"))
    from PrintPrepLib.shaping import (
        add_label,
        connect_parts,
        hollow,
        split_to_fit,
        suggest_orientation,
        wall_thickness,
    )

    timings = {}
    start = time.perf_counter()
    meshes = part_meshes(tuple(args.shape))
    timings["meshes_s"] = round(time.perf_counter() - start, 3)
    results = {
        "parts": {
            name: {"triangles": len(m.faces), "volume_ml": round(m.volume / 1000, 2)}
            for name, m in meshes.items()
        }
    }

    def timed(key, function, *a, **k):
        began = time.perf_counter()
        out = function(*a, **k)
        timings[key] = round(time.perf_counter() - began, 3)
        return out

    thin = {}
    for name, mesh in meshes.items():
        _, report = timed(f"wall_thickness_{name}_s", wall_thickness, mesh, 1.0, name=name)
        thin[name] = {
            "min_thickness_mm": report["min_thickness_mm"],
            "thin_area_mm2": report["thin_area_mm2"],
        }
    results["wall_thickness"] = thin
    _, report = timed(
        "hollow_kidney_s", hollow, meshes["kidney"], 2.0, drain_holes=2, drain_diameter_mm=4.0, name="kidney"
    )
    results["hollow"] = {
        k: report[k] for k in ("volume_before_mm3", "volume_after_mm3", "closed_cavities", "voxel_mm")
    }
    joined, report = timed("connect_s", connect_parts, meshes, 2.0)
    results["connect"] = {"bodies_before": report["bodies_before"], "struts": len(report["struts"])}
    _, report = timed("label_s", add_label, joined, "L42", height_mm=6.0, depth_mm=0.8)
    results["label"] = {
        "placement": report["placement"],
        "volume_change_mm3": report["volume_change_mm3"],
        "relief_mm": report["surface_relief_mm"],
        "origin_ras_mm": report["origin_ras_mm"],
    }
    oriented, report = timed("orient_s", suggest_orientation, joined)
    results["orient"] = {"down_ras": report["down_ras"], "overhang_area_mm2": report["overhang_area_mm2"]}
    parts, report = timed("split_s", split_to_fit, joined, (120, 120, 120))
    results["split"] = {"parts": len(parts), "pins": len(report["pins"])}
    timings["total_shaping_s"] = round(sum(v for k, v in timings.items() if k != "meshes_s"), 3)
    results["timings"] = timings
    results["peak_rss_mib"] = round(peak_rss_mib(), 1)
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
