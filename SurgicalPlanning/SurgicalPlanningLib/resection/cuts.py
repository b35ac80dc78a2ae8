"""The three kinds of resection and what each removes.

Every resection defines a *removed region* of space through a depth function: `depth_mm(points)`
is > 0 inside the region (the part to remove) and < 0 outside, and is roughly the distance to
the region's boundary in mm. The planner intersects the regions with the organ and unites them.

- `PlaneCut`: a `vtkMRMLMarkupsPlaneNode`; the region is the half-space on the side given by
  ``remove``: "positive" removes what the plane's normal points to (n · (p − origin) > 0),
  "negative" the other side. The plane is infinite: its displayed size does not matter.
- `SurfaceCut`: a `DeformableSurface`; "positive" removes the side its normal (u × v of the
  control grid) points to. The surface must reach past the organ on every side.
- `MarginCut`: the tumour plus every point within ``margin_mm`` of the tumour's surface
  (Euclidean distance, computed on the working grid), optionally intersected with the removed
  side of a clip plane (a wedge instead of a shell).

Each also gives the pieces of its cutting surface (meshes in RAS), from which the planner builds
the resection surface it measures margins on and colours.
"""

from __future__ import annotations

import numpy as np
import vtk

from VSPCoreLib.errors import InputDataError

from .geometry import in_plane_axes, polydata_points, rectangle_mesh
from .region import OrganRegion
from .surfaces import DeformableSurface

REMOVE_SIDES = ("positive", "negative")
REMOVE_ATTRIBUTE = "SlicerVSP.ResectionRemove"
MAX_MARGIN_MM = 50.0


def _side_sign(remove: str, subject: str) -> float:
    if remove not in REMOVE_SIDES:
        raise InputDataError(
            f"the side to remove must be 'positive' or 'negative', not {remove!r}.",
            subject=subject,
            fix="'positive' removes what the normal points to, 'negative' the other side.",
        )
    return 1.0 if remove == "positive" else -1.0


def _mesh_step(region: OrganRegion) -> float:
    # 1 mm meshes: margins are read at their vertices, and the distance to a smooth tumour
    # varies quadratically near its minimum, so the sampling error stays far below 0.1 mm.
    return max(region.spacing_mm, 1.0)


def plane_geometry(plane_node) -> tuple[np.ndarray, np.ndarray]:
    """World origin and unit normal of a markups plane."""
    if plane_node is None or plane_node.GetScene() is None:
        raise InputDataError(
            "the plane node is not in the scene.", subject="resection plane", fix="add it again."
        )
    if not plane_node.GetIsPlaneValid():
        raise InputDataError(
            "the plane is not defined yet (too few points placed).",
            subject=plane_node.GetName(),
            fix="place the plane.",
        )
    origin = np.zeros(3)
    normal = np.zeros(3)
    plane_node.GetOriginWorld(origin)
    plane_node.GetNormalWorld(normal)
    length = float(np.linalg.norm(normal))
    if length < 1e-9:
        raise InputDataError(
            "the plane has no normal.", subject=plane_node.GetName(), fix="place the plane again."
        )
    return origin, normal / length


class PlaneCut:
    """Remove the organ on one side of a markups plane."""

    kind = "plane"

    def __init__(self, plane_node, remove: str, name: str | None = None):
        self.plane_node = plane_node
        self.sign = _side_sign(remove, plane_node.GetName())
        self.remove = remove
        self.name = name or plane_node.GetName()
        plane_node.SetAttribute(REMOVE_ATTRIBUTE, remove)

    def nodes(self) -> list:
        return [self.plane_node]

    def state_key(self) -> tuple:
        origin, normal = plane_geometry(self.plane_node)
        return (self.remove, *origin.round(9), *normal.round(12))

    def signed_distance_mm(self, points: np.ndarray) -> np.ndarray:
        """n · (p − origin): > 0 on the side the normal points to."""
        origin, normal = plane_geometry(self.plane_node)
        return np.asarray(points, float) @ normal - float(origin @ normal)

    def depth_mm(self, region: OrganRegion, points: np.ndarray) -> np.ndarray:
        return self.sign * self.signed_distance_mm(points)

    def removed_organ(self, region: OrganRegion) -> np.ndarray:
        """Which organ voxels the plane removes: one matrix product and one comparison."""
        distance = self.signed_distance_mm(region.organ_points)
        low, high = float(distance.min()), float(distance.max())
        if low > 0.0 or high < 0.0:
            side, gap = ("positive", low) if low > 0.0 else ("negative", -high)
            raise InputDataError(
                f"the plane does not cut the organ: the whole organ lies on its {side} side, "
                f"{gap:.1f} mm from it (signed distance of the nearest organ voxel: "
                f"{low if low > 0 else high:+.1f} mm).",
                subject=self.plane_node.GetName(),
                fix="move the plane into the organ.",
            )
        return distance * self.sign > 0.0

    def cut_pieces(self, region: OrganRegion) -> list[tuple[vtk.vtkPolyData, np.ndarray | None]]:
        """The plane over the organ's extent (the planner clips it to the organ)."""
        return [(plane_patch(self.plane_node, region.organ_box_corners_ras, _mesh_step(region)), None)]

    def describe(self) -> dict:
        origin, normal = plane_geometry(self.plane_node)
        return {
            "name": self.name,
            "kind": self.kind,
            "remove": self.remove,
            "node": self.plane_node.GetName(),
            "origin_ras_mm": [round(float(x), 3) for x in origin],
            "normal_ras": [round(float(x), 6) for x in normal],
        }

    def to_plan(self):
        from ..plan import PlaneResection

        origin, normal = plane_geometry(self.plane_node)
        return PlaneResection(
            name=self.name,
            origin_ras_mm=tuple(float(x) for x in origin),
            normal_ras=tuple(float(x) for x in normal),
            remove=self.remove,
        )


def plane_patch(plane_node, cover_points: np.ndarray, step_mm: float, pad_mm: float = 2.0) -> vtk.vtkPolyData:
    """A rectangle of the plane covering the projection of `cover_points`, meshed every step."""
    origin, normal = plane_geometry(plane_node)
    u, v = in_plane_axes(normal)
    local = (np.asarray(cover_points, float) - origin) @ np.column_stack([u, v])
    low = local.min(axis=0) - pad_mm
    high = local.max(axis=0) + pad_mm
    return rectangle_mesh(origin, u, v, (low[0], high[0]), (low[1], high[1]), step_mm)


class SurfaceCut:
    """Remove the organ on one side of a deformable surface."""

    kind = "surface"

    def __init__(self, surface: DeformableSurface, remove: str, name: str | None = None):
        self.surface = surface
        self.sign = _side_sign(remove, surface.control_node.GetName())
        self.remove = remove
        self.name = name or surface.model_node.GetName()
        surface.control_node.SetAttribute(REMOVE_ATTRIBUTE, remove)
        # The organ voxels in the surface's base frame, kept while the frame does not change
        # (moving an interior control point leaves it alone).
        self._organ_local: tuple | None = None

    def nodes(self) -> list:
        return [self.surface.control_node]

    def state_key(self) -> tuple:
        return (self.remove, self.surface.state_key())

    def _organ_in_frame(self, region: OrganRegion):
        """The organ voxels in the surface's frame, and where they fall on its height raster.

        Kept while the frame and the footprint stay (an interior control point moving changes
        only the heights): a moved point then costs one bilinear look-up per voxel.
        """
        field = self.surface.height_field()
        frame_key = (id(region), np.concatenate([field.origin, field.u, field.v, field.w]).tobytes())
        if self._organ_local is None or self._organ_local[0] != frame_key:
            local = field.local(region.organ_points)
            self._organ_local = (frame_key, local, local[:, 2].astype(np.float32), None, None)
        _, local, w, raster_key, lookup = self._organ_local
        if raster_key != field.raster_key():
            covered = field.covers(local[:, :2])
            beyond = 100.0 * float(np.count_nonzero(~covered)) / len(covered)
            lookup = (*field.raster_lookup(local[:, :2]), beyond)
            self._organ_local = (frame_key, local, w, field.raster_key(), lookup)
        return field, w, lookup[:3], lookup[3]

    def depth_mm(self, region: OrganRegion, points: np.ndarray) -> np.ndarray:
        field = self.surface.height_field()
        return self.sign * field.side_mm(field.local(points))

    def removed_organ(self, region: OrganRegion) -> np.ndarray:
        field, w, lookup, beyond = self._organ_in_frame(region)
        name = self.surface.control_node.GetName()
        if beyond > 0.0:
            raise InputDataError(
                f"the surface does not cut through the organ: its edge lies inside the organ "
                f"({beyond:.1f} % of the organ lies beyond the surface's edge, where the surface "
                "does not exist).",
                subject=name,
                fix="enlarge the surface (drag its border control points outward) or create it sized to the organ.",
            )
        side = w - field.height_from_lookup(*lookup)
        low, high = float(side.min()), float(side.max())
        if low > 0.0 or high < 0.0:
            which = "positive" if low > 0.0 else "negative"
            raise InputDataError(
                f"the surface does not cut through the organ: the whole organ lies on its {which} side, "
                f"{min(abs(low), abs(high)):.1f} mm from it.",
                subject=name,
                fix="move the surface's control points into the organ.",
            )
        return side * self.sign > 0.0

    def cut_pieces(self, region: OrganRegion) -> list[tuple[vtk.vtkPolyData, np.ndarray | None]]:
        return [(self.surface.height_field().polydata(_mesh_step(region)), None)]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "remove": self.remove,
            "node": self.surface.control_node.GetName(),
            "rows": self.surface.rows,
            "columns": self.surface.columns,
        }

    def to_plan(self):
        return self.surface.to_plan(self.name, self.remove)


class MarginCut:
    """Remove the tumour and a margin of `margin_mm` around it, optionally clipped by a plane."""

    kind = "margin"

    def __init__(self, margin_mm: float, clip: PlaneCut | None = None, name: str | None = None):
        margin_mm = float(margin_mm)
        if not 0.0 <= margin_mm <= MAX_MARGIN_MM:
            raise InputDataError(
                f"a margin of {margin_mm:g} mm is outside 0..{MAX_MARGIN_MM:g} mm.",
                subject=name or "margin resection",
                fix=f"choose a margin between 0 and {MAX_MARGIN_MM:g} mm.",
            )
        self.margin_mm = margin_mm
        self.clip = clip
        self.name = name or f"Margin {margin_mm:g} mm"

    def nodes(self) -> list:
        return self.clip.nodes() if self.clip else []

    def state_key(self) -> tuple:
        return (self.margin_mm, self.clip.state_key() if self.clip else None)

    def _require_tumour(self, region: OrganRegion) -> None:
        if region.tumour is None:
            raise InputDataError(
                "a margin resection needs a tumour segment.",
                subject=self.name,
                fix="give the planner the tumour segment, or use a plane or surface resection.",
            )

    def depth_mm(self, region: OrganRegion, points: np.ndarray) -> np.ndarray:
        self._require_tumour(region)
        depth = self.margin_mm - region.tumour_distance_at(points, self.margin_mm)
        if self.clip is not None:
            depth = np.minimum(depth, self.clip.depth_mm(region, points))
        return depth

    def removed_organ(self, region: OrganRegion) -> np.ndarray:
        self._require_tumour(region)
        removed = region.tumour_distance_at_organ(self.margin_mm) <= self.margin_mm
        if self.clip is not None:
            removed &= self.clip.depth_mm(region, region.organ_points) > 0.0
            if not removed.any():
                raise InputDataError(
                    "the margin resection removes nothing: its clip plane leaves no part of the "
                    "tumour and its margin on the side to remove.",
                    subject=self.clip.plane_node.GetName(),
                    fix="move the clip plane through the tumour, or choose the other side.",
                )
        return removed

    def cut_pieces(self, region: OrganRegion) -> list[tuple[vtk.vtkPolyData, np.ndarray | None]]:
        from .geometry import iso_surface

        self._require_tumour(region)
        box, signed = region.tumour_distance(self.margin_mm)
        shell = iso_surface(signed, self.margin_mm, region.grid, box)
        if self.clip is None:
            return [(shell, None)]
        shell_keep = self.clip.depth_mm(region, polydata_points(shell))
        # The clip plane's part of the boundary: where it runs through the margin region.
        corners = region.grid.ras_of_ijk(
            np.array(
                [
                    [i, j, k]
                    for i in (box[2].start, box[2].stop)
                    for j in (box[1].start, box[1].stop)
                    for k in (box[0].start, box[0].stop)
                ],
                float,
            )
        )
        face = plane_patch(self.clip.plane_node, corners, _mesh_step(region))
        face_keep = self.margin_mm - region.tumour_distance_at(polydata_points(face), self.margin_mm)
        return [(shell, shell_keep), (face, face_keep)]

    def describe(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "margin_mm": self.margin_mm}
        if self.clip is not None:
            data["clip_plane"] = self.clip.describe()
        return data

    def to_plan(self):
        from ..plan import MarginResection

        return MarginResection(
            name=self.name, margin_mm=self.margin_mm, clip_plane=self.clip.to_plan() if self.clip else None
        )


Cut = PlaneCut | SurfaceCut | MarginCut
