"""Wall-thickness analysis: thickness per face and per vertex, the minimum, and the thin places.

Method: inward ray casting. From every triangle's centre a ray runs along the inward normal
(VTK's static cell locator) to the first triangle it meets on the other side; that distance is
the local wall thickness. A vertex takes the least thickness of its triangles (conservative
for a printer's minimum wall). On flat walls this is exact; on curved walls it measures along the
normal (a sphere's thickness is its diameter), and at sharp edges the least of the adjacent
faces is reported. Faces thinner than the printer/material minimum are grouped into connected
regions, each with its area, least thickness and centre in RAS millimetres: the places to mark.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import PrintPrepError
from ._common import REPAIR_FIX, check_mesh, positive, to_polydata

#: Name of the per-vertex scalar (mm) on the returned mesh and on the polydata for a colour map.
THICKNESS_ARRAY = "WallThickness_mm"


def face_thickness(mesh) -> np.ndarray:
    """Thickness (mm) along the inward normal from each triangle's centre; NaN where no wall is met."""
    from vtkmodules.vtkCommonCore import reference
    from vtkmodules.vtkCommonDataModel import vtkStaticCellLocator

    locator = vtkStaticCellLocator()
    locator.SetDataSet(to_polydata(mesh))
    locator.BuildLocator()
    length = float(np.linalg.norm(np.ptp(mesh.bounds, axis=0))) * 1.01 + 1.0
    offset = 1e-4 * max(length, 1.0)
    starts = mesh.triangles_center - mesh.face_normals * offset
    ends = starts - mesh.face_normals * length
    t = reference(0.0)
    x = [0.0, 0.0, 0.0]
    pcoords = [0.0, 0.0, 0.0]
    sub_id = reference(0)
    cell_id = reference(0)
    out = np.full(len(mesh.faces), np.nan)
    intersect = locator.IntersectWithLine
    for index in range(len(out)):
        if intersect(starts[index], ends[index], 1e-9, t, x, pcoords, sub_id, cell_id):
            out[index] = float(t) * length + offset
    return out


def thickness_polydata(mesh):
    """vtkPolyData of a mesh from wall_thickness() with the point scalar THICKNESS_ARRAY (for a colour map)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk

    polydata = to_polydata(mesh)
    values = numpy_to_vtk(np.asarray(mesh.vertex_attributes[THICKNESS_ARRAY], dtype=np.float64), deep=True)
    values.SetName(THICKNESS_ARRAY)
    polydata.GetPointData().AddArray(values)
    polydata.GetPointData().SetActiveScalars(THICKNESS_ARRAY)
    return polydata


def wall_thickness(mesh, min_wall_mm: float, *, name: str = "model"):
    """Wall thickness of a closed model against a minimum wall of `min_wall_mm` mm.

    Returns (a copy of the mesh with vertex_attributes[THICKNESS_ARRAY] and
    face_attributes[THICKNESS_ARRAY], report). The report gives the minimum (mm) and where it
    is, the 5th percentile and median, the area thinner than the minimum (mm² and % of the
    surface), and the thin regions (largest first) with their area, least thickness and centre.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    started = time.perf_counter()
    check_mesh(mesh, name)
    limit = positive(min_wall_mm, "the minimum wall (mm)", name)
    if not mesh.is_watertight:
        raise PrintPrepError(
            "the model is not watertight, so its walls cannot be measured", subject=name, fix=REPAIR_FIX
        )
    faces_t = face_thickness(mesh)
    missed = int(np.isnan(faces_t).sum())
    vertex_t = np.full(len(mesh.vertices), np.inf)
    for column in range(3):
        np.fmin.at(vertex_t, mesh.faces[:, column], faces_t)
    vertex_t[~np.isfinite(vertex_t)] = np.nan
    result = mesh.copy()
    result.vertex_attributes[THICKNESS_ARRAY] = vertex_t
    result.face_attributes[THICKNESS_ARRAY] = faces_t
    if missed == len(faces_t):
        raise PrintPrepError("no ray found the opposite wall", subject=name, fix=REPAIR_FIX)
    areas = mesh.area_faces
    thin = np.nan_to_num(faces_t, nan=np.inf) < limit
    regions = []
    if thin.any():
        adjacency = mesh.face_adjacency
        keep = thin[adjacency[:, 0]] & thin[adjacency[:, 1]]
        pairs = adjacency[keep]
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(thin), len(thin)))
        _, labels = connected_components(graph, directed=False)
        for label in np.unique(labels[thin]):
            members = np.flatnonzero(thin & (labels == label))
            area = areas[members]
            thinnest = members[np.argmin(faces_t[members])]
            regions.append(
                {
                    "area_mm2": round(float(area.sum()), 3),
                    "min_thickness_mm": round(float(faces_t[thinnest]), 4),
                    "centre_ras_mm": np.round(
                        (mesh.triangles_center[members] * area[:, None]).sum(0) / area.sum(), 3
                    ).tolist(),
                    "thinnest_point_ras_mm": np.round(mesh.triangles_center[thinnest], 3).tolist(),
                    "faces": int(len(members)),
                }
            )
        regions.sort(key=lambda region: -region["area_mm2"])
    valid = ~np.isnan(faces_t)
    thinnest = int(np.nanargmin(faces_t))
    order = np.argsort(faces_t[valid])
    cumulative = np.cumsum(areas[valid][order]) / areas[valid].sum()
    sorted_t = faces_t[valid][order]
    report = {
        "min_wall_mm": limit,
        "min_thickness_mm": round(float(faces_t[thinnest]), 4),
        "min_thickness_at_ras_mm": np.round(mesh.triangles_center[thinnest], 3).tolist(),
        "p5_thickness_mm": round(float(sorted_t[np.searchsorted(cumulative, 0.05)]), 4),
        "median_thickness_mm": round(float(sorted_t[np.searchsorted(cumulative, 0.5)]), 4),
        "thin_area_mm2": round(float(areas[thin].sum()), 3),
        "thin_area_percent": round(100.0 * float(areas[thin].sum() / areas.sum()), 3),
        "thin_regions": regions,
        "passes": not thin.any(),
        "unmeasured_faces": missed,
        "faces": int(len(faces_t)),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    return result, report
