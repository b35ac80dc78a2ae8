"""What a resection means for the tumour and the vessels: the resection surface, margins, cuts.

These are the *release-time* measurements (0.1 s to 0.7 s): the planner recomputes them on
`update()`, not on every plane move.

- The **resection surface** is the boundary between removed and remaining organ: each
  resection's cutting surface clipped to the organ (the domain field ≥ 0.5) and with the parts
  that lie inside another resection's removed region taken away.
- The **margin** at a point of that surface is its distance to the tumour's surface (the exact
  point-to-triangle distance to the tumour's closed iso-surface), negative where the point lies
  inside the tumour. The minimum over the surface is the plan's margin, and where it is reached.
- A **cut vessel** is a branch with voxels on both sides of the resection, counting only its
  part within the vessel envelope of the organ (a branch far outside the organ is not cut by a
  partial resection of it). Each crossing is reported with its position (the mean of the
  mid-points between neighbouring removed and kept voxels of the branch, so it lies on the
  resection surface to within half a voxel) and its local diameter, from the cross-section
  area: the branch's volume in a slab across the vessel at the crossing (the vessel's axis is
  the principal axis of its voxels nearby) divided by the slab's thickness, as the diameter of
  the circle of that area. Volume-based, it does not depend on how the voxels' staircase falls,
  unlike an inscribed-sphere radius (which underestimates a vessel two voxels wide by up to a
  voxel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import vtk
from scipy import ndimage

from .geometry import append_polydata, clip_keep_positive, polydata_points, set_point_array
from .region import OrganRegion, SegmentInfo

DISTANCE_ARRAY = "TumourDistance_mm"

DepthFunction = Callable[[np.ndarray], np.ndarray]


@dataclass
class MarginMeasure:
    """The resection surface and the tumour margin measured on it."""

    surface: vtk.vtkPolyData
    min_margin_mm: float | None
    point_ras_mm: np.ndarray | None  # on the resection surface
    tumour_point_ras_mm: np.ndarray | None  # the nearest point of the tumour's surface


@dataclass
class VesselCrossing:
    info: SegmentInfo
    point_ras_mm: np.ndarray
    diameter_mm: float


def resection_surface(
    region: OrganRegion,
    pieces: list[tuple[int, vtk.vtkPolyData, np.ndarray | None]],
    depth_functions: list[DepthFunction],
) -> vtk.vtkPolyData:
    """Clip each cutting-surface piece to the organ and out of the other resections' regions.

    `pieces` holds (index of its resection, mesh, its own keep values or None);
    `depth_functions[n]` is resection n's depth (> 0 inside its removed region).
    """
    # The domain field is 0..1 over about one voxel: scaled to mm so that the clipping values
    # of different origins are comparable where they cross.
    scale = 2.0 * region.spacing_mm
    clipped = []
    for owner, mesh, own_keep in pieces:
        points = polydata_points(mesh)
        if len(points) == 0:
            continue
        keep = (region.domain_at(points) - 0.5) * scale
        if own_keep is not None:
            keep = np.minimum(keep, own_keep)
        for other, depth in enumerate(depth_functions):
            if other != owner:
                keep = np.minimum(keep, -depth(points))
        if np.any(keep > 0):
            clipped.append(clip_keep_positive(mesh, keep))
    return append_polydata(clipped)


def measure_margin(region: OrganRegion, surface: vtk.vtkPolyData) -> MarginMeasure:
    """Signed distance from every surface point to the tumour's mesh; its minimum and where.

    Exact point-to-triangle distances (`MeshDistance`); the sign comes from the tumour's own
    field (inside: negative), not from VTK's surface normals, which a mesh made on a flipped
    (left-handed) grid can have pointing inward.
    """
    points = polydata_points(surface)
    if region.tumour is None or len(points) == 0:
        return MarginMeasure(surface, None, None, None)
    distance, closest = region.tumour_distance_function().distance(points)
    distance[region.inside_tumour(points)] *= -1.0
    set_point_array(surface, DISTANCE_ARRAY, distance, active=True)
    nearest = int(np.argmin(distance))
    return MarginMeasure(surface, float(distance[nearest]), points[nearest], closest[nearest])


_NEIGHBOURS_26 = np.ones((3, 3, 3), bool)


def vessel_crossings(region: OrganRegion, removed_depth: DepthFunction) -> list[VesselCrossing]:
    """Where each vessel branch crosses the resection (see the module's description)."""
    crossings: list[VesselCrossing] = []
    for branch in region.vessels:
        if not branch.reaches_organ:
            continue
        near = branch.near_organ
        removed = removed_depth(branch.points_ras[near]) > 0.0
        if removed.all() or not removed.any():
            continue
        k, j, i = np.unravel_index(branch.flat_index[near], region.grid.shape_kji)
        low = np.array([k.min(), j.min(), i.min()]) - 1
        shape = tuple(np.array([k.max(), j.max(), i.max()]) - low + 2)
        # 0: not considered, 1: kept, 2: removed (only within the envelope of the organ).
        side = np.zeros(shape, np.int8)
        side[k - low[0], j - low[1], i - low[2]] = np.where(removed, 2, 1)
        interface = np.zeros(shape, bool)
        midpoints: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for axis in range(3):
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis] = slice(0, -1)
            b[axis] = slice(1, None)
            first, second = side[tuple(a)], side[tuple(b)]
            pairs = np.argwhere((first > 0) & (second > 0) & (first != second))
            if len(pairs) == 0:
                continue
            other = pairs.copy()
            other[:, axis] += 1
            interface[tuple(pairs.T)] = True
            interface[tuple(other.T)] = True
            midpoints.append(pairs + 0.5 * np.eye(3, dtype=float)[axis])
            owners.append(pairs)
        if not midpoints:
            continue
        labels, count = ndimage.label(interface, structure=_NEIGHBOURS_26)
        midpoint_kji = np.vstack(midpoints)
        owner_label = labels[tuple(np.vstack(owners).T)]
        for site in range(1, count + 1):
            mine = owner_label == site
            if not mine.any():
                continue
            centre_kji = midpoint_kji[mine].mean(axis=0) + low
            point = region.grid.ras_of_ijk(centre_kji[::-1])
            diameter = cross_section_diameter(branch.points_ras, point, region.voxel_volume_mm3)
            crossings.append(VesselCrossing(branch.info, point, diameter))
    return crossings


def cross_section_diameter(
    points_ras: np.ndarray, centre_ras: np.ndarray, voxel_volume_mm3: float, slab_mm: float = 4.0
) -> float:
    """Equivalent diameter (mm) of a vessel's cross-section at `centre_ras`.

    The vessel's axis is the principal direction of its voxels within `slab_mm` + 4 mm of the
    centre; the area is the volume of its voxels within ±slab/2 along that axis (and 10 mm
    across it, to keep other parts of a curving branch out) divided by the slab's thickness.
    """
    offsets = points_ras - centre_ras
    distance = np.linalg.norm(offsets, axis=1)
    nearby = offsets[distance <= slab_mm + 4.0]
    if len(nearby) < 4:
        return float(2.0 * np.sqrt(len(nearby) * voxel_volume_mm3 / (np.pi * slab_mm)))
    _, _, vt = np.linalg.svd(nearby - nearby.mean(axis=0), full_matrices=False)
    axis = vt[0]
    along = offsets @ axis
    across = np.linalg.norm(offsets - along[:, None] * axis, axis=1)
    in_slab = (np.abs(along) <= slab_mm / 2.0) & (across <= 10.0)
    area = np.count_nonzero(in_slab) * voxel_volume_mm3 / slab_mm
    return float(2.0 * np.sqrt(area / np.pi))
