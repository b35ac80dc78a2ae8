"""The organ on the working grid: what every resection is evaluated against, prepared once.

`OrganRegion` reads the organ's segments (and the tumour and vessel branches) from a
segmentation node, resamples them onto a working grid that covers the organ's bounding box (the
first organ segment's lattice, each source voxel split into a whole number of working voxels of
about the requested spacing, 0.5 mm by default: `geometry.aligned_work_grid`), and caches what
the interactive path needs: the RAS centres of the organ's voxels as one (N, 3) array, so that
"which voxels does this plane remove" is a single matrix product and a comparison, and each
reported segment's membership as a boolean (N,) array.

The organ *domain* is the union of the organ segments and the tumour: an exophytic tumour's
outer part is tissue that the resection removes too, and a segmentation whose organ segment
excludes the tumour (a hole) must still count the tumour as removed or kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from scipy import ndimage
from scipy.spatial import cKDTree

from VSPCoreLib.arrays import GridArray, grid_array_to_oriented_image, segment_masks, vtk_matrix_to_array
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report

from ..structures import structure_key_of_segment, structure_segment_ids
from .geometry import (
    MeshDistance,
    WorkGrid,
    aligned_work_grid,
    iso_surface,
    resample_field,
    sample_field,
)

# Far beyond any margin: the value of the tumour distance outside the box where it is computed.
FAR_MM = 1.0e6


@dataclass(frozen=True)
class SegmentInfo:
    """A segment of the input segmentation, as the results name it."""

    segment_id: str
    name: str
    structure_key: str | None
    colour: tuple[float, float, float]


@dataclass
class _Field:
    """Values on a box of the working grid: a float field in [0, 1] or a boolean mask."""

    box: tuple[slice, slice, slice]
    values: np.ndarray

    def at(self, grid: WorkGrid, flat_index: np.ndarray) -> np.ndarray:
        """Values at voxels given as flat indices of the whole grid (0 outside the box)."""
        k, j, i = np.unravel_index(flat_index, grid.shape_kji)
        out = np.zeros(len(flat_index), self.values.dtype)
        (k0, k1), (j0, j1), (i0, i1) = ((s.start, s.stop) for s in self.box)
        inside = (k >= k0) & (k < k1) & (j >= j0) & (j < j1) & (i >= i0) & (i < i1)
        out[inside] = self.values[k[inside] - k0, j[inside] - j0, i[inside] - i0]
        return out

    def add_into(self, array: np.ndarray) -> None:
        array[self.box] += self.values


@dataclass
class VesselBranch:
    """One vessel branch on the working grid: its voxels and which of them lie near the organ."""

    info: SegmentInfo
    flat_index: np.ndarray  # voxels of the branch inside the working grid
    points_ras: np.ndarray  # (M, 3) their centres
    near_organ: np.ndarray  # (M,) bool: within the vessel envelope of the organ

    @property
    def reaches_organ(self) -> bool:
        return bool(self.near_organ.any())


def segment_info(segmentation_node, segment_id: str) -> SegmentInfo:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        ids = [
            segmentation_node.GetSegmentation().GetNthSegmentID(n)
            for n in range(segmentation_node.GetSegmentation().GetNumberOfSegments())
        ]
        raise InputDataError(
            f"has no segment with ID {segment_id!r}.",
            subject=segmentation_node.GetName(),
            fix=f"use one of: {', '.join(ids)}.",
        )
    # The structure key is what the segment's terminology codes stand for (no private tag).
    key = structure_key_of_segment(segment)
    return SegmentInfo(segment_id, segment.GetName(), key, tuple(segment.GetColor()))


def segment_ids_for_keys(segmentation_node, keys) -> list[str]:
    """Segment IDs of the segments coded as the given structures, in the keys' order.

    Structures are found by their terminology codes (``SurgicalPlanningLib.structures``); a
    compound structure without a segment of its own gives the segments of its parts.
    """
    found: list[str] = []
    missing = []
    for key in keys:
        ids = structure_segment_ids(segmentation_node, key)
        if not ids:
            missing.append(key)
        found += [sid for sid in ids if sid not in found]
    if missing:
        raise InputDataError(
            f"has no segment coded as the structure(s) {', '.join(missing)}.",
            subject=segmentation_node.GetName(),
            fix="segment them and give them their terminology, or choose the segments by name or ID "
            "(plan fields organ/tumour/vessel_tree, or vsp plan --organ/--tumour).",
        )
    return found


def _world_masks(segmentation_node, segment_ids: list[str]) -> dict[str, GridArray]:
    """Cropped masks of the segments with IJK→RAS in world coordinates (parent transform applied).

    Segments sharing a labelmap layer are read from it in one pass (`segment_masks`).
    """
    masks = segment_masks(segmentation_node, segment_ids)
    transform_node = segmentation_node.GetParentTransformNode()
    if transform_node is None:
        return masks
    if not transform_node.IsTransformToWorldLinear():
        raise InputDataError(
            "is under a non-linear transform, which the resection planner cannot follow.",
            subject=segmentation_node.GetName(),
            fix="harden the transform on the segmentation (Transforms module) first.",
        )
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    to_world = vtk_matrix_to_array(matrix)
    return {sid: GridArray(mask.array, to_world @ mask.ijk_to_ras) for sid, mask in masks.items()}


class OrganRegion:
    """The organ, tumour and vessel branches on the working grid, with cached voxel centres."""

    def __init__(
        self,
        segmentation_node,
        organ_segment_ids: list[str],
        tumour_segment_id: str | None = None,
        vessel_segment_ids: list[str] | None = None,
        report_segment_ids: list[str] | None = None,
        *,
        spacing_mm: float = 0.5,
        vessel_envelope_mm: float = 5.0,
        progress: ProgressCallback | None = None,
    ):
        if not organ_segment_ids:
            raise InputDataError(
                "no organ segment was given.",
                subject=segmentation_node.GetName(),
                fix="choose the segment(s) that make up the organ.",
            )
        if not 0.05 <= float(spacing_mm) <= 5.0:
            raise InputDataError(
                f"working grid spacing {spacing_mm} mm is outside 0.05..5 mm.",
                subject="resection planner",
                fix="use 0.5 mm (the default) or another value in range.",
            )
        self.segmentation_node = segmentation_node
        self.spacing_mm = float(spacing_mm)
        self.vessel_envelope_mm = float(vessel_envelope_mm)
        self.warnings: list[str] = []
        vessel_segment_ids = list(vessel_segment_ids or [])
        constituents = list(dict.fromkeys(organ_segment_ids))
        if tumour_segment_id is not None and tumour_segment_id not in constituents:
            constituents.append(tumour_segment_id)
        self.organ_infos = [segment_info(segmentation_node, sid) for sid in organ_segment_ids]
        self.tumour = segment_info(segmentation_node, tumour_segment_id) if tumour_segment_id else None
        vessel_infos = [segment_info(segmentation_node, sid) for sid in vessel_segment_ids]
        report_ids = list(dict.fromkeys(report_segment_ids or constituents))
        unknown = [sid for sid in report_ids if sid not in constituents]
        if unknown:
            raise InputDataError(
                f"reported segment(s) {', '.join(unknown)} are not part of the organ or the tumour.",
                subject=segmentation_node.GetName(),
                fix="report only organ segments and the tumour.",
            )
        self.segments = [segment_info(segmentation_node, sid) for sid in report_ids]

        # 1. Masks on their own grids; an empty segment is an error that names it.
        report(progress, 0.0, "reading the organ's segments")
        masks = _world_masks(segmentation_node, list(dict.fromkeys(constituents + vessel_segment_ids)))
        for sid, mask in masks.items():
            if mask.array.size == 0 or not mask.array.any():
                info = segment_info(segmentation_node, sid)
                raise InputDataError(
                    f"segment {info.name!r} is empty.",
                    subject=segmentation_node.GetName(),
                    fix=f"segment {info.name!r} first, or leave it out of the resection plan.",
                )

        # A tumour far from the organ (the other kidney) is refused before a grid spanning both
        # is built; near misses are checked on the working grid below.
        self._masks = masks
        organ_only = [sid for sid in constituents if sid != tumour_segment_id]
        if tumour_segment_id is not None and organ_only:
            low_t, high_t = _ras_bounds(masks[tumour_segment_id])
            bounds = [_ras_bounds(masks[sid]) for sid in organ_only]
            low_o = np.min([b[0] for b in bounds], axis=0)
            high_o = np.max([b[1] for b in bounds], axis=0)
            gap = np.maximum(np.maximum(low_o - high_t, low_t - high_o), 0.0)
            if np.linalg.norm(gap) > 2.0 * self.spacing_mm + 1.0:
                self._refuse_tumour(_nearest_distance(masks, organ_only, tumour_segment_id))

        # 2. The working grid: the first organ segment's lattice subdivided (working voxel corners
        # on its voxel corners, spacing an integer division of its spacing of about the requested
        # one), around the organ and tumour, with room for the vessel envelope and for closed
        # iso-surfaces. Aligned, each source voxel is a whole number of working voxels: volumes
        # and centroids are kept exactly, with no half-voxel shift.
        reference = masks[constituents[0]]
        corners = []
        for sid in constituents:
            mask = masks[sid]
            nk, nj, ni = mask.array.shape
            box = np.array(
                [[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)]
            )
            corners.append(mask.ras_of(box))
        corners = np.vstack(corners)
        pad_mm = 2.0 * self.spacing_mm + 2.0 + (self.vessel_envelope_mm if vessel_segment_ids else 0.0)
        self.grid: WorkGrid = aligned_work_grid(reference.ijk_to_ras, self.spacing_mm, corners, pad_mm)

        # 3. Each segment twice on the working grid. Nearest neighbour decides which voxels
        # belong to the organ and to each segment: it keeps the segmentation's volumes (what
        # Slicer's Segment Statistics reports) and makes segments that partition the organ
        # partition its voxels exactly. The trilinear field gives smooth geometry: the tumour's
        # surface, and the organ's outline that clips the resection surface.
        report(progress, 0.2, "resampling the organ onto the working grid")
        fields: dict[str, _Field] = {}
        labels: dict[str, _Field] = {}
        domain_field = np.zeros(self.grid.shape_kji, np.float32)
        domain = np.zeros(self.grid.shape_kji, bool)
        for sid in constituents:
            smooth = resample_field(masks[sid], self.grid)
            nearest = resample_field(masks[sid], self.grid, nearest=True)
            if smooth is None or nearest is None:  # cannot happen: the grid covers the organ
                raise InputDataError("segment does not reach the working grid.", subject=sid)
            fields[sid] = _Field(*smooth)
            fields[sid].add_into(domain_field)
            labels[sid] = _Field(*nearest)
            domain[labels[sid].box] |= labels[sid].values
        np.minimum(domain_field, 1.0, out=domain_field)
        self.domain_field = domain_field
        self.domain = domain
        self.organ_index = np.flatnonzero(domain.ravel())
        if len(self.organ_index) == 0:
            names = ", ".join(repr(info.name) for info in self.organ_infos)
            raise InputDataError(
                f"the organ ({names}) is too thin to show on a {self.spacing_mm} mm grid.",
                subject=segmentation_node.GetName(),
                fix="check the organ segments, or use a finer working grid.",
            )
        self.organ_points = self.grid.ras_of_flat(self.organ_index)
        self.organ_centre_ras = self.organ_points.mean(axis=0)
        # The corners of the organ's box on the grid: enough to size planes and meshes.
        nonzero = [np.flatnonzero(domain.any(axis=other)) for other in ((0, 1), (0, 2), (1, 2))]  # i, j, k
        low = np.array([nonzero[0][0], nonzero[1][0], nonzero[2][0]], float) - 0.5
        high = np.array([nonzero[0][-1], nonzero[1][-1], nonzero[2][-1]], float) + 0.5
        self.organ_box_corners_ras = self.grid.ras_of_ijk(
            np.array(
                [[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])]
            )
        )

        # 4. Membership of each organ voxel in each segment (segments may overlap).
        report(progress, 0.6, "assigning voxels to segments")
        by_id = {sid: labels[sid].at(self.grid, self.organ_index) > 0 for sid in constituents}
        self.membership: dict[str, np.ndarray] = {
            info.segment_id: by_id[info.segment_id] for info in self.segments
        }
        self.tumour_member = by_id[tumour_segment_id] if tumour_segment_id else None
        del labels

        # 5. The tumour: its field (for its surface and distance) and where it is.
        self._tumour_field: _Field | None = fields.get(tumour_segment_id) if tumour_segment_id else None
        self._tumour_mesh: vtk.vtkPolyData | None = None
        self._tumour_mesh_distance: MeshDistance | None = None
        self._tumour_distance: tuple[float, tuple[slice, slice, slice], np.ndarray] | None = None
        self._tumour_distance_at_organ: np.ndarray | None = None
        if self.tumour is not None:
            self._check_tumour_touches_organ(fields, organ_only)
        del self._masks  # the source masks are not needed any more; vessels keep theirs below

        # 6. Vessel branches: their voxels, and which lie within the envelope of the organ.
        report(progress, 0.75, "placing the vessel branches")
        self.vessels: list[VesselBranch] = []
        if vessel_infos:
            self._prepare_vessels(masks, vessel_infos)
        report(progress, 1.0, "organ ready")

    # --- derived quantities ------------------------------------------------------------------

    @property
    def voxel_volume_mm3(self) -> float:
        return self.grid.voxel_volume_mm3

    @property
    def organ_voxel_count(self) -> int:
        return len(self.organ_index)

    def _check_tumour_touches_organ(self, fields: dict[str, _Field], organ_ids: list[str]) -> None:
        """A tumour that does not touch the organ means the wrong organ (or side) was chosen.

        Planning a resection of one organ for a tumour in another (the right kidney for a left
        tumour) would give margins and volumes that mean nothing, so it is refused outright.
        """
        assert self._tumour_field is not None and self.tumour is not None
        if not organ_ids:
            return
        tumour = self._tumour_field
        reach = 2  # voxels: touching, allowing for the resampling of two independent masks
        box = tuple(
            slice(max(s.start - reach, 0), min(s.stop + reach, n))
            for s, n in zip(tumour.box, self.grid.shape_kji, strict=True)
        )
        shape = tuple(s.stop - s.start for s in box)
        organ = np.zeros(shape, np.float32)
        for sid in organ_ids:
            _add_in_box(fields[sid], box, organ)
        tumour_values = np.zeros(shape, np.float32)
        _add_in_box(tumour, box, tumour_values)
        tumour_mask = tumour_values >= 0.5
        organ_mask = ndimage.binary_dilation(organ >= 0.5, iterations=reach)
        if not (organ_mask & tumour_mask).any():
            self._refuse_tumour(_nearest_distance(self._masks, organ_ids, self.tumour.segment_id))

    def _refuse_tumour(self, distance: float) -> None:
        assert self.tumour is not None
        names = ", ".join(repr(info.name) for info in self.organ_infos)
        raise InputDataError(
            f"the tumour {self.tumour.name!r} does not touch the organ ({names}); "
            f"it lies {distance:.1f} mm from it.",
            subject=self.segmentation_node.GetName(),
            fix="choose the organ that holds the tumour (check the side), or the right tumour segment.",
        )

    def _prepare_vessels(self, masks: dict[str, GridArray], infos: list[SegmentInfo]) -> None:
        # Nearest neighbour: a trilinear field thresholded at 0.5 thins a vessel one or two
        # source voxels wide, and can break it, which would hide a cut.
        domain = self.domain
        boundary = domain & ~ndimage.binary_erosion(domain)
        tree = cKDTree(self.grid.ras_of_flat(np.flatnonzero(boundary.ravel())))
        for info in infos:
            resampled = resample_field(masks[info.segment_id], self.grid, nearest=True)
            flat = np.zeros(0, np.int64)
            if resampled is not None:
                box, values = resampled
                local = np.argwhere(values)
                if len(local):
                    k = local[:, 0] + box[0].start
                    j = local[:, 1] + box[1].start
                    i = local[:, 2] + box[2].start
                    flat = np.ravel_multi_index((k, j, i), self.grid.shape_kji)
            points = self.grid.ras_of_flat(flat) if len(flat) else np.zeros((0, 3))
            near = np.zeros(len(flat), bool)
            if len(flat):
                inside = domain.ravel()[flat]
                distance, _ = tree.query(points, distance_upper_bound=self.vessel_envelope_mm + 1e-6)
                near = inside | np.isfinite(distance)
            branch = VesselBranch(info, flat, points, near)
            if not branch.reaches_organ:
                self.warnings.append(
                    f"vessel {info.name!r} does not reach the organ (none of it lies within "
                    f"{self.vessel_envelope_mm:g} mm of it); it is not checked for cuts."
                )
            self.vessels.append(branch)

    def tumour_mesh(self) -> vtk.vtkPolyData:
        """The tumour's closed surface: the 0.5 iso-surface of its field on the working grid."""
        if self._tumour_field is None:
            raise InputDataError("the plan has no tumour.", subject="resection planner")
        if self._tumour_mesh is None:
            tumour = self._tumour_field
            self._tumour_mesh = iso_surface(tumour.values, 0.5, self.grid, tumour.box)
        return self._tumour_mesh

    def tumour_distance_function(self) -> MeshDistance:
        """Exact distances to the tumour's mesh (built once)."""
        if self._tumour_mesh_distance is None:
            self._tumour_mesh_distance = MeshDistance(self.tumour_mesh())
        return self._tumour_mesh_distance

    def inside_tumour(self, points_ras: np.ndarray) -> np.ndarray:
        """Whether RAS points lie inside the tumour (its field ≥ 0.5, trilinear)."""
        if self._tumour_field is None:
            raise InputDataError("the plan has no tumour.", subject="resection planner")
        tumour = self._tumour_field
        shift = np.eye(4)
        shift[:3, 3] = [tumour.box[2].start, tumour.box[1].start, tumour.box[0].start]
        return (
            sample_field(
                tumour.values, WorkGrid(self.grid.ijk_to_ras @ shift, tumour.values.shape), points_ras
            )
            >= 0.5
        )

    def tumour_distance(self, reach_mm: float) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """Signed distance (mm) from the tumour's surface, on a box reaching `reach_mm` around it.

        Euclidean distance transforms (with the grid's spacing) of the tumour's working-grid mask
        and of its complement: the distance to the nearest voxel centre on the other side;
        negative inside the tumour. Measured on the phantom's 30 mm tumour against the analytic
        sphere, 0.5–6 mm outside it, this is unbiased to within 0.06 mm (SD 0.25 mm at 1.4 mm
        source voxels); subtracting half a voxel, the textbook correction for surfaces along the
        grid's axes, would bias it by −0.25 mm, since for oblique surfaces some voxel centres lie
        almost on the surface. Cached; recomputed only when a wider reach is asked for.
        """
        if self._tumour_field is None:
            raise InputDataError("the plan has no tumour.", subject="resection planner")
        if self._tumour_distance is not None and self._tumour_distance[0] >= reach_mm:
            return self._tumour_distance[1], self._tumour_distance[2]
        tumour = self._tumour_field
        grow = np.ceil((reach_mm + 2.0) / self.grid.spacing_mm[::-1]).astype(int)  # voxels along k, j, i
        box = tuple(
            slice(max(s.start - int(g), 0), min(s.stop + int(g), n))
            for s, g, n in zip(tumour.box, grow, self.grid.shape_kji, strict=True)
        )
        shape = tuple(s.stop - s.start for s in box)
        values = np.zeros(shape, np.float32)
        _add_in_box(tumour, box, values)
        inside = values >= 0.5
        sampling = self.grid.spacing_mm[::-1]
        outside_distance = ndimage.distance_transform_edt(~inside, sampling=sampling)
        inside_distance = ndimage.distance_transform_edt(inside, sampling=sampling)
        signed = np.where(inside, -inside_distance, outside_distance).astype(np.float32)
        self._tumour_distance = (float(reach_mm), box, signed)
        self._tumour_distance_at_organ = None
        return box, signed

    def tumour_distance_at_organ(self, reach_mm: float) -> np.ndarray:
        """The signed tumour distance at every organ voxel (FAR_MM beyond the computed box)."""
        box, signed = self.tumour_distance(reach_mm)
        if self._tumour_distance_at_organ is None:
            self._tumour_distance_at_organ = _values_in_box(self.grid, box, signed, self.organ_index, FAR_MM)
        return self._tumour_distance_at_organ

    def tumour_distance_at(self, points_ras: np.ndarray, reach_mm: float) -> np.ndarray:
        """The signed tumour distance at any RAS points (trilinear; FAR_MM outside the box)."""
        box, signed = self.tumour_distance(reach_mm)
        points_ras = np.asarray(points_ras, float).reshape(-1, 3)
        shift = np.eye(4)
        shift[:3, 3] = [box[2].start, box[1].start, box[0].start]
        sub_grid = WorkGrid(self.grid.ijk_to_ras @ shift, signed.shape)
        ijk = sub_grid.ijk_of_ras(points_ras)
        inside = np.all((ijk >= 0) & (ijk <= np.array(signed.shape[::-1]) - 1), axis=1)
        out = np.full(len(points_ras), FAR_MM)
        if inside.any():
            out[inside] = sample_field(signed, sub_grid, points_ras[inside])
        return out

    def domain_at(self, points_ras: np.ndarray) -> np.ndarray:
        """The organ domain's field (0 outside, 1 inside, 0.5 on its surface) at RAS points."""
        return sample_field(self.domain_field, self.grid, points_ras)

    def labelmap(self, flat_index: np.ndarray) -> slicer.vtkOrientedImageData:
        """A binary labelmap (1 at the given voxels) on the working grid, cropped to them."""
        array = np.zeros(self.grid.shape_kji, np.uint8)
        array.ravel()[flat_index] = 1
        if len(flat_index) == 0:
            return grid_array_to_oriented_image(
                GridArray(np.zeros((1, 1, 1), np.uint8), self.grid.ijk_to_ras)
            )
        k, j, i = np.unravel_index(flat_index, self.grid.shape_kji)
        k0, j0, i0 = k.min(), j.min(), i.min()
        crop = array[k0 : k.max() + 1, j0 : j.max() + 1, i0 : i.max() + 1]
        ijk_to_ras = self.grid.ijk_to_ras.copy()
        ijk_to_ras[:3, 3] = self.grid.ras_of_ijk(np.array([i0, j0, k0], float))
        return grid_array_to_oriented_image(GridArray(crop, ijk_to_ras))


def _add_in_box(source: _Field, box: tuple[slice, slice, slice], target: np.ndarray) -> None:
    """Add the part of `source` that overlaps `box` into `target` (an array of the box's shape)."""
    lows = [max(a.start, b.start) for a, b in zip(source.box, box, strict=True)]
    highs = [min(a.stop, b.stop) for a, b in zip(source.box, box, strict=True)]
    if any(h <= low for low, h in zip(lows, highs, strict=True)):
        return
    src = tuple(slice(lo - s.start, hi - s.start) for lo, hi, s in zip(lows, highs, source.box, strict=True))
    dst = tuple(slice(lo - b.start, hi - b.start) for lo, hi, b in zip(lows, highs, box, strict=True))
    target[dst] += source.values[src]


def _values_in_box(
    grid: WorkGrid,
    box: tuple[slice, slice, slice],
    values: np.ndarray,
    flat_index: np.ndarray,
    outside: float,
) -> np.ndarray:
    k, j, i = np.unravel_index(flat_index, grid.shape_kji)
    out = np.full(len(flat_index), outside, np.float32)
    (k0, k1), (j0, j1), (i0, i1) = ((s.start, s.stop) for s in box)
    inside = (k >= k0) & (k < k1) & (j >= j0) & (j < j1) & (i >= i0) & (i < i1)
    out[inside] = values[k[inside] - k0, j[inside] - j0, i[inside] - i0]
    return out


def _mask_points(mask: GridArray, limit: int = 20000) -> np.ndarray:
    """RAS centres of (at most about `limit` of) a mask's boundary voxels."""
    boundary = mask.array & ~ndimage.binary_erosion(mask.array)
    local = np.argwhere(boundary)
    local = local[:: max(1, len(local) // limit)]
    return mask.ras_of(local[:, ::-1].astype(float))


def _nearest_distance(masks: dict[str, GridArray], organ_ids: list[str], tumour_id: str) -> float:
    """Shortest distance (mm) between the tumour's and the organ's voxels (for the message)."""
    organ_points = np.vstack([_mask_points(masks[sid]) for sid in organ_ids])
    distance, _ = cKDTree(organ_points).query(_mask_points(masks[tumour_id]))
    return float(distance.min())


def _ras_bounds(mask: GridArray) -> tuple[np.ndarray, np.ndarray]:
    nk, nj, ni = mask.array.shape
    corners = np.array(
        [[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)]
    )
    ras = mask.ras_of(corners)
    return ras.min(axis=0), ras.max(axis=0)
