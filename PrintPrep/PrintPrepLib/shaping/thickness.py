"""Wall-thickness analysis: thickness per face and per vertex, the minimum, and the thin places.

Method: inward ray casting. From every triangle's centre a ray runs along the inward normal
to the first triangle it meets on the other side; that distance is the local wall thickness.
All rays are cast in one call through Embree (``embreex``, via trimesh's
``ray_pyembree``; float32 geometry scaled to a 100-unit box, the hit distance recomputed in
float64, so a 0.8 mm plate reads 0.800 mm); without embreex, VTK's static cell locator casts
them one by one (the same distances, about 5× slower). A vertex takes the least thickness of its
triangles (conservative for a printer's minimum wall). On flat walls this is exact; on curved
walls it measures along the normal (a sphere's thickness is its diameter), and at sharp edges
the least of the adjacent faces is reported.

Thin places: faces thinner than the printer/material minimum are grouped into regions (faces
that share a vertex), each with its area, least thickness and centre in RAS millimetres: the
places to mark. Which regions make the model fail (``passes``) is a rule a printer can act on:

- faces inside a drain hole's rim (a capped cylinder around the hole's axis: the hole's radius
  plus the wall it goes through, from that wall's depth outside the surface to twice it inside)
  are not counted: where a round hole meets a wall the rim is a sharp edge that always reads
  thinner than the wall, by design of the hole;
- a region whose remaining area is under ``min_region_area_mm2`` is not counted: a patch
  smaller than the printer resolves (the pipeline uses (5 × the printer's minimum feature)²,
  4 mm² for a 0.4 mm nozzle) is a crease or a sliver where two bodies meet, not a wall that
  breaks. The function's default, 0, counts every thin face.

Every region stays in the report with ``counted`` and, when not counted, ``ignored_because``;
the report sums what was ignored and why (``ignored``), so the record shows it.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import PrintPrepError
from ._common import REPAIR_FIX, check_mesh, positive, to_polydata

#: Name of the per-vertex scalar (mm) on the returned mesh and on the polydata for a colour map.
THICKNESS_ARRAY = "WallThickness_mm"

#: The pipeline's least counted thin region: (this many × the printer's minimum feature)² mm².
FEATURES_ACROSS = 5.0


def _ray_setup(mesh):
    length = float(np.linalg.norm(np.ptp(mesh.bounds, axis=0))) * 1.01 + 1.0
    offset = 1e-4 * max(length, 1.0)
    normals = np.asarray(mesh.face_normals, dtype=np.float64)
    starts = np.asarray(mesh.triangles_center, dtype=np.float64) - normals * offset
    return length, offset, normals, starts


def _face_thickness_embree(mesh) -> np.ndarray:
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    _, offset, normals, starts = _ray_setup(mesh)
    intersector = RayMeshIntersector(mesh)
    _, rays, locations = intersector.intersects_id(
        starts, -normals, multiple_hits=False, return_locations=True
    )
    out = np.full(len(mesh.faces), np.nan)
    out[rays] = np.linalg.norm(locations - starts[rays], axis=1) + offset
    return out


def _face_thickness_vtk(mesh) -> np.ndarray:
    from vtkmodules.vtkCommonCore import reference
    from vtkmodules.vtkCommonDataModel import vtkStaticCellLocator

    locator = vtkStaticCellLocator()
    locator.SetDataSet(to_polydata(mesh))
    locator.BuildLocator()
    length, offset, normals, starts = _ray_setup(mesh)
    ends = starts - normals * length
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


def ray_engine() -> str:
    """'embree' when embreex is installed (the fast path), else 'vtk'."""
    try:
        import embreex  # noqa: F401
    except ImportError:
        return "vtk"
    return "embree"


def face_thickness(mesh, engine: str | None = None) -> np.ndarray:
    """Thickness (mm) along the inward normal from each triangle's centre; NaN where no wall is met."""
    engine = engine or ray_engine()
    return _face_thickness_embree(mesh) if engine == "embree" else _face_thickness_vtk(mesh)


def thickness_polydata(mesh):
    """vtkPolyData of a mesh from wall_thickness() with the point scalar THICKNESS_ARRAY (for a colour map)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk

    polydata = to_polydata(mesh)
    values = numpy_to_vtk(np.asarray(mesh.vertex_attributes[THICKNESS_ARRAY], dtype=np.float64), deep=True)
    values.SetName(THICKNESS_ARRAY)
    polydata.GetPointData().AddArray(values)
    polydata.GetPointData().SetActiveScalars(THICKNESS_ARRAY)
    return polydata


def drain_rim_faces(mesh, drain_holes) -> np.ndarray:
    """Faces inside any drain hole's rim zone (see the module's doc): a capped cylinder around
    the hole's axis, radius = hole radius + wall, from one wall outside the surface to two
    walls inside. `drain_holes`: dicts with centre_ras_mm, axis_ras (inward), diameter_mm and
    wall_mm (as hollow() reports them, plus the wall)."""
    inside = np.zeros(len(mesh.faces), dtype=bool)
    centres = np.asarray(mesh.triangles_center, dtype=np.float64)
    for hole in drain_holes or ():
        centre = np.asarray(hole["centre_ras_mm"], dtype=np.float64)
        axis = np.asarray(hole["axis_ras"], dtype=np.float64)
        axis = axis / np.linalg.norm(axis)
        wall = float(hole["wall_mm"])
        radius = float(hole["diameter_mm"]) / 2.0 + wall
        relative = centres - centre
        along = relative @ axis
        across = np.linalg.norm(relative - along[:, None] * axis, axis=1)
        inside |= (along >= -wall) & (along <= 2.0 * wall) & (across <= radius)
    return inside


def _thin_regions(mesh, thin: np.ndarray) -> np.ndarray:
    """Region label per thin face (faces sharing a vertex are one region); -1 elsewhere."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labels = np.full(len(thin), -1)
    faces = np.flatnonzero(thin)
    corners = mesh.faces[faces]
    # Bipartite graph: thin face i -- its three vertices (offset by the face count).
    rows = np.repeat(np.arange(len(faces)), 3)
    cols = len(faces) + corners.ravel()
    size = len(faces) + len(mesh.vertices)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, components = connected_components(graph, directed=False)
    _, labels[faces] = np.unique(components[: len(faces)], return_inverse=True)
    return labels


def wall_thickness(
    mesh,
    min_wall_mm: float,
    *,
    name: str = "model",
    min_region_area_mm2: float = 0.0,
    drain_holes=(),
    engine: str | None = None,
):
    """Wall thickness of a closed model against a minimum wall of `min_wall_mm` mm.

    Returns (a copy of the mesh with vertex_attributes[THICKNESS_ARRAY] and
    face_attributes[THICKNESS_ARRAY], report). The report gives the minimum (mm) and where it
    is, the 5th percentile and median, the area thinner than the minimum (mm² and % of the
    surface), and the thin regions (counted ones first, then largest first) with their area,
    least thickness and centre. ``passes`` is False when a counted region is left: faces in a
    drain hole's rim (`drain_holes`, see drain_rim_faces) and regions under
    `min_region_area_mm2` are reported but not counted (module doc).
    """
    started = time.perf_counter()
    check_mesh(mesh, name)
    limit = positive(min_wall_mm, "the minimum wall (mm)", name)
    least_area = float(min_region_area_mm2)
    if not np.isfinite(least_area) or least_area < 0:
        raise PrintPrepError(
            f"the least thin-region area must be 0 or more mm², got {min_region_area_mm2}",
            subject=name,
            fix="give 0 to count every thin face",
        )
    if not mesh.is_watertight:
        raise PrintPrepError(
            "the model is not watertight, so its walls cannot be measured", subject=name, fix=REPAIR_FIX
        )
    engine = engine or ray_engine()
    faces_t = face_thickness(mesh, engine)
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
    rim = drain_rim_faces(mesh, drain_holes) & thin
    regions = []
    ignored = {
        "drain_hole_rims_mm2": round(float(areas[rim].sum()), 3),
        "small_regions": 0,
        "small_regions_mm2": 0.0,
    }
    counted_area = 0.0
    if thin.any():
        labels = _thin_regions(mesh, thin)
        centres = mesh.triangles_center
        for label in range(labels.max() + 1):
            members = np.flatnonzero(labels == label)
            area = areas[members]
            thinnest = members[np.argmin(faces_t[members])]
            outside_rims = members[~rim[members]]
            remaining = float(areas[outside_rims].sum())
            if not len(outside_rims):
                because = "drain-hole rim"
            elif remaining < least_area:
                because = f"smaller than {least_area:g} mm²" + (
                    " outside drain-hole rims" if len(outside_rims) < len(members) else ""
                )
                ignored["small_regions"] += 1
                ignored["small_regions_mm2"] += remaining
            else:
                because = None
                counted_area += remaining
            regions.append(
                {
                    "area_mm2": round(float(area.sum()), 3),
                    "counted_area_mm2": round(remaining if because is None else 0.0, 3),
                    "min_thickness_mm": round(float(faces_t[thinnest]), 4),
                    "centre_ras_mm": np.round(
                        (centres[members] * area[:, None]).sum(0) / area.sum(), 3
                    ).tolist(),
                    "thinnest_point_ras_mm": np.round(centres[thinnest], 3).tolist(),
                    "faces": int(len(members)),
                    "counted": because is None,
                    "ignored_because": because,
                }
            )
        regions.sort(key=lambda region: (not region["counted"], -region["area_mm2"]))
    ignored["small_regions_mm2"] = round(ignored["small_regions_mm2"], 3)
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
        "counted_thin_area_mm2": round(counted_area, 3),
        "thin_regions": regions,
        "counted_thin_regions": sum(1 for region in regions if region["counted"]),
        "rule": {
            "thin_below_mm": limit,
            "min_region_area_mm2": least_area,
            "drain_holes_excluded": len(drain_holes or ()),
            "drain_rim": "hole radius + wall across, from one wall outside to two walls inside",
        },
        "ignored": ignored,
        "passes": not any(region["counted"] for region in regions),
        "unmeasured_faces": missed,
        "faces": int(len(faces_t)),
        "ray_engine": engine,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    return result, report
