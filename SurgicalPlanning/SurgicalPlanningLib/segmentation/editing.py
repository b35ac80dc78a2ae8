"""The one place where a segment changes: an edit session on Slicer's segment editor logic.

Every segmentation tool of the suite computes its result as a mask on the session's reference
grid and hands it to :meth:`EditSession.apply`, which calls
``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` with a segment editor parameter node in
the scene (source volume, editable area, overwrite mode). An :meth:`EditSession.operation` saves
the segmentation's state for undo once before its first change, so one tool call is one undo
step, and the Slicer panel gets undo/redo for free.

Grids. The reference grid is the segmentation's reference image geometry: the source volume's
grid, or a finer one with the same axes when the caller made it so (oversampled segmentation).
Arrays are indexed [k, j, i]; a :class:`Box` is a half-open index box in the grid's own VTK
index space (its extent may start anywhere). A segmentation on another grid than the volume is
resampled onto the volume's grid (with a warning in :attr:`EditSession.warnings`) or refused.

Overlap. The default overwrite mode is "none": a change to one segment never erases another.
Slicer keeps segments that overlap in separate labelmap layers, so overlapping segments stay
overlapping after any tool that touches one of them.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from VSPCoreLib.arrays import (
    GridArray,
    array_to_vtk_matrix,
    resample_nearest,
    volume_ijk_to_ras,
    vtk_matrix_to_array,
)
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.segments import SegmentNotFoundError, find_segment

log = logging.getLogger(__name__)

_EditorNode = slicer.vtkMRMLSegmentEditorNode
_Logic = slicer.vtkSlicerSegmentEditorLogic

OVERWRITE_MODES = {
    "none": _EditorNode.OverwriteNone,
    "visible": _EditorNode.OverwriteVisibleSegments,
    "all": _EditorNode.OverwriteAllSegments,
}
MASK_MODES = {
    "everywhere": slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere,
    "inside_all": slicer.vtkMRMLSegmentationNode.EditAllowedInsideAllSegments,
    "inside_visible": slicer.vtkMRMLSegmentationNode.EditAllowedInsideVisibleSegments,
    "outside_all": slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments,
    "outside_visible": slicer.vtkMRMLSegmentationNode.EditAllowedOutsideVisibleSegments,
    "inside_segment": slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment,
}
MODIFICATION_MODES = {
    "set": _Logic.ModificationModeSet,
    "add": _Logic.ModificationModeAdd,
    "remove": _Logic.ModificationModeRemove,
}
GRID_POLICIES = ("resample", "refuse")

# Spacing and axes agree within this (mm, and direction cosines).
_GEOMETRY_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Grids and boxes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A half-open index box [lo, hi) in a grid's VTK index space, as (i, j, k) triples."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def empty(self) -> bool:
        return any(h <= low for low, h in zip(self.lo, self.hi, strict=True))

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(max(h - low, 0) for low, h in zip(self.lo, self.hi, strict=True))[::-1]  # type: ignore[return-value]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape_kji))

    def intersect(self, other: Box) -> Box:
        lo = tuple(max(a, b) for a, b in zip(self.lo, other.lo, strict=True))
        hi = tuple(min(a, b) for a, b in zip(self.hi, other.hi, strict=True))
        return Box(lo, hi)  # type: ignore[arg-type]

    def union(self, other: Box) -> Box:
        if self.empty:
            return other
        if other.empty:
            return self
        lo = tuple(min(a, b) for a, b in zip(self.lo, other.lo, strict=True))
        hi = tuple(max(a, b) for a, b in zip(self.hi, other.hi, strict=True))
        return Box(lo, hi)  # type: ignore[arg-type]

    def expand(self, voxels: Sequence[int] | int) -> Box:
        pad = (voxels,) * 3 if isinstance(voxels, int | np.integer) else tuple(int(v) for v in voxels)
        return Box(
            tuple(a - p for a, p in zip(self.lo, pad, strict=True)),  # type: ignore[arg-type]
            tuple(b + p for b, p in zip(self.hi, pad, strict=True)),  # type: ignore[arg-type]
        )

    def slices_in(self, outer: Box) -> tuple[slice, slice, slice]:
        """[k, j, i] slices that cut this box out of an array covering `outer`."""
        (i0, j0, k0), (i1, j1, k1) = self.lo, self.hi
        (oi, oj, ok) = outer.lo
        return (slice(k0 - ok, k1 - ok), slice(j0 - oj, j1 - oj), slice(i0 - oi, i1 - oi))


EMPTY_BOX = Box((0, 0, 0), (0, 0, 0))


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: IJK→RAS of VTK index (0, 0, 0) and the extent it covers (as a Box)."""

    image_to_world: np.ndarray
    box: Box

    @classmethod
    def from_oriented_image(cls, image: slicer.vtkOrientedImageData) -> Grid:
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        e = image.GetExtent()
        return cls(vtk_matrix_to_array(matrix), Box((e[0], e[2], e[4]), (e[1] + 1, e[3] + 1, e[5] + 1)))

    @classmethod
    def from_volume(cls, volume_node) -> Grid:
        dims = volume_node.GetImageData().GetDimensions()
        return cls(volume_ijk_to_ras(volume_node), Box((0, 0, 0), tuple(dims)))  # type: ignore[arg-type]

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along i, j, k."""
        return np.linalg.norm(self.image_to_world[:3, :3], axis=0)

    @property
    def directions(self) -> np.ndarray:
        return self.image_to_world[:3, :3] / self.spacing_mm

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.image_to_world[:3, :3])))

    def voxels_for_mm(self, mm: float) -> np.ndarray:
        """Whole voxels (i, j, k) that cover `mm` along each axis."""
        return np.ceil(abs(float(mm)) / self.spacing_mm - 1e-6).astype(int)

    def ras_to_ijk(self, points) -> np.ndarray:
        """Continuous VTK indices (i, j, k) of RAS points given as (..., 3)."""
        points = np.asarray(points, dtype=float)
        inverse = np.linalg.inv(self.image_to_world)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def ijk_to_ras(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.image_to_world[:3, :3].T + self.image_to_world[:3, 3]

    def matrix_of(self, box: Box) -> np.ndarray:
        """IJK→RAS of the array that starts at box.lo (GridArray convention)."""
        matrix = self.image_to_world.copy()
        matrix[:3, 3] = self.ijk_to_ras(box.lo)
        return matrix

    def grid_array(self, array: np.ndarray, box: Box) -> GridArray:
        if tuple(array.shape) != box.shape_kji:
            raise ValueError(f"array shape {array.shape} does not match box {box.shape_kji}")
        return GridArray(array, self.matrix_of(box))

    def box_of(self, grid: GridArray) -> Box:
        """Where a GridArray on this grid lies (refuses one on another grid)."""
        if not np.allclose(grid.ijk_to_ras[:3, :3], self.image_to_world[:3, :3], atol=_GEOMETRY_TOLERANCE):
            raise InputDataError(
                "the mask is not on the reference grid (other spacing or axes).", subject="mask"
            )
        offset = self.ras_to_ijk(grid.ijk_to_ras[:3, 3])
        lo = np.round(offset).astype(int)
        if not np.allclose(offset, lo, atol=1e-3):
            raise InputDataError(
                "the mask is shifted off the reference grid's voxel centres.", subject="mask"
            )
        k, j, i = grid.array.shape
        return Box(tuple(int(v) for v in lo), (int(lo[0]) + i, int(lo[1]) + j, int(lo[2]) + k))  # type: ignore[arg-type]

    def box_around_ras(self, corners) -> Box:
        """The smallest box holding every voxel whose centre may lie in the RAS hull of `corners`."""
        ijk = self.ras_to_ijk(np.asarray(corners, dtype=float).reshape(-1, 3))
        lo = np.ceil(ijk.min(axis=0) - 1e-6).astype(int)
        hi = np.floor(ijk.max(axis=0) + 1e-6).astype(int) + 1
        return Box(tuple(int(v) for v in lo), tuple(int(v) for v in hi))  # type: ignore[arg-type]

    def centres_ras(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RAS coordinates (R, A, S arrays broadcastable to box.shape_kji) of the box's voxel centres."""
        i = np.arange(box.lo[0], box.hi[0], dtype=float)[None, None, :]
        j = np.arange(box.lo[1], box.hi[1], dtype=float)[None, :, None]
        k = np.arange(box.lo[2], box.hi[2], dtype=float)[:, None, None]
        m = self.image_to_world
        return tuple(m[row, 0] * i + m[row, 1] * j + m[row, 2] * k + m[row, 3] for row in range(3))  # type: ignore[return-value]

    def oriented_image(self, array: np.ndarray | None, box: Box) -> slicer.vtkOrientedImageData:
        """A vtkOrientedImageData on this grid over `box` holding a copy of `array` (or no scalars)."""
        image = slicer.vtkOrientedImageData()
        image.SetImageToWorldMatrix(array_to_vtk_matrix(self.image_to_world))
        (i0, j0, k0), (i1, j1, k1) = box.lo, box.hi
        image.SetExtent(i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
        if array is not None:
            if tuple(array.shape) != box.shape_kji:
                raise ValueError(f"array shape {array.shape} does not match box {box.shape_kji}")
            data = np.ascontiguousarray(array.astype(np.uint8) if array.dtype == bool else array)
            image.GetPointData().SetScalars(numpy_to_vtk(data.ravel(), deep=True))
        return image

    def same_geometry(self, other: Grid) -> bool:
        """Same axes, spacing and voxel centres (the extents may differ)."""
        if not np.allclose(
            self.image_to_world[:3, :3], other.image_to_world[:3, :3], atol=_GEOMETRY_TOLERANCE
        ):
            return False
        offset = self.ras_to_ijk(other.image_to_world[:3, 3])
        return bool(np.allclose(offset, np.round(offset), atol=1e-3))

    def describe(self) -> str:
        spacing = ", ".join(f"{v:g}" for v in np.round(self.spacing_mm, 4))
        origin = ", ".join(f"{v:g}" for v in np.round(self.ijk_to_ras(self.box.lo), 3))
        return f"spacing ({spacing}) mm, first voxel at RAS ({origin}), {self.box.voxels} voxels"


def image_box(image: vtk.vtkImageData) -> Box:
    e = image.GetExtent()
    return Box((e[0], e[2], e[4]), (e[1] + 1, e[3] + 1, e[5] + 1))


def image_array(image: vtk.vtkImageData) -> np.ndarray:
    """The voxels of an image as an array [k, j, i] (a view when possible)."""
    box = image_box(image)
    if box.empty or image.GetPointData().GetScalars() is None:
        return np.zeros((0, 0, 0), np.uint8)
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(box.shape_kji)


def _resample_labelmap(labelmap: vtk.vtkImageData, grid: Grid, box: Box) -> slicer.vtkOrientedImageData:
    """A labelmap layer (any label values) resampled by nearest neighbour onto `box` of `grid`:
    `VSPCoreLib.arrays.resample_nearest` (exact on grids that subdivide the layer's; half-voxel
    ties broken up and down in turn, where Slicer's resampler rounds them all up)."""
    layer = Grid.from_oriented_image(labelmap)
    source = GridArray(image_array(labelmap), layer.matrix_of(layer.box))
    values = resample_nearest(source, grid.matrix_of(box), box.shape_kji, index_offset=box.lo)
    return grid.oriented_image(values, box)


def mask_in_box(grid: Grid, mask: GridArray, box: Box) -> np.ndarray:
    """A GridArray's voxels inside `box` (zero where the mask does not reach)."""
    out = np.zeros(box.shape_kji, dtype=mask.array.dtype)
    if mask.array.size == 0 or box.empty:
        return out
    mask_box = grid.box_of(mask)
    common = mask_box.intersect(box)
    if not common.empty:
        out[common.slices_in(box)] = mask.array[common.slices_in(mask_box)]
    return out


def content_box(array: np.ndarray, box: Box) -> Box:
    """The smallest box holding every non-zero voxel of `array` (which covers `box`)."""
    if array.size == 0 or not array.any():
        return EMPTY_BOX
    lo, hi = [], []
    for axis_kji, start in zip((2, 1, 0), box.lo, strict=True):
        other = tuple(a for a in range(3) if a != axis_kji)
        nonzero = np.flatnonzero(array.any(axis=other))
        lo.append(start + int(nonzero[0]))
        hi.append(start + int(nonzero[-1]) + 1)
    return Box(tuple(lo), tuple(hi))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Regions of interest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Region:
    """An ROI on a grid: the box of voxels to work on and, for an oblique ROI, a mask inside it."""

    box: Box
    mask: np.ndarray | None  # bool [k, j, i] over box, None when every voxel of the box is inside

    def inside(self, box: Box) -> np.ndarray | None:
        """The ROI mask cut to `box` (None: all inside)."""
        if self.mask is None:
            return None
        out = np.zeros(box.shape_kji, bool)
        common = self.box.intersect(box)
        if not common.empty:
            out[common.slices_in(box)] = self.mask[common.slices_in(self.box)]
        return out


def roi_region(grid: Grid, roi, *, subject: str = "ROI") -> Region:
    """The voxels of `grid` whose centres lie in the ROI; refuses an ROI that misses the grid."""
    if roi is None:
        return Region(grid.box, None)
    if hasattr(roi, "GetObjectToWorldMatrix"):  # markups ROI (may be rotated)
        subject = roi.GetName() or subject
        size = np.array(roi.GetSize(), dtype=float)
        if np.any(size <= 0):
            raise InputDataError(
                "the ROI has no volume (a size is zero).", subject=subject, fix="resize the ROI."
            )
        object_to_world = vtk_matrix_to_array(roi.GetObjectToWorldMatrix())
        half = size / 2.0
        corners_object = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
        corners = corners_object @ object_to_world[:3, :3].T + object_to_world[:3, 3]
        axis_aligned = np.allclose(np.abs(object_to_world[:3, :3]), np.eye(3), atol=1e-6)
    else:
        try:
            corners = np.asarray(roi, dtype=float).reshape(2, 3)
        except ValueError:
            raise InputDataError(
                f"is not an ROI node or two RAS corners: {roi!r}.",
                subject=subject,
                fix="give a vtkMRMLMarkupsROINode or ((R, A, S), (R, A, S)).",
            ) from None
        low, high = corners.min(axis=0), corners.max(axis=0)
        if np.any(high <= low):
            raise InputDataError(
                "the ROI has no volume (a size is zero).", subject=subject, fix="resize the ROI."
            )
        object_to_world = np.eye(4)
        object_to_world[:3, 3] = (low + high) / 2
        half = (high - low) / 2
        corners = np.array(
            [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
        )
        axis_aligned = True
    box = grid.box_around_ras(corners).intersect(grid.box)
    if box.empty:
        raise InputDataError(
            "does not overlap the image: no voxel of the reference grid lies inside it.",
            subject=subject,
            fix=f"move the ROI onto the volume ({grid.describe()}).",
        )
    grid_axes_aligned = np.allclose(np.abs(grid.directions), np.abs(np.round(grid.directions)), atol=1e-6)
    if axis_aligned and grid_axes_aligned:
        # The box of voxel centres is exact for an ROI aligned with the grid's axes.
        return Region(box, None)
    # Oblique: test each voxel centre in the ROI's own frame (vectorised over the box).
    r, a, s = grid.centres_ras(box)
    inverse = np.linalg.inv(object_to_world)
    inside = np.ones(box.shape_kji, bool)
    for row in range(3):
        local = inverse[row, 0] * r + inverse[row, 1] * a + inverse[row, 2] * s + inverse[row, 3]
        inside &= np.abs(local) <= half[row] + 1e-6
    if not inside.any():
        raise InputDataError(
            "does not overlap the image: no voxel centre lies inside it.",
            subject=subject,
            fix="move the ROI.",
        )
    return Region(box, inside)


# --------------------------------------------------------------------------------------------
# Points (markups fiducials or plain lists)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledPoint:
    label: str
    ras: tuple[float, float, float]


def labelled_points(points) -> list[LabelledPoint]:
    """Points from a markups node (label and world position of each control point) or from an
    iterable of (label, (R, A, S)) or of LabelledPoint."""
    if points is None:
        return []
    if hasattr(points, "GetNumberOfControlPoints"):
        result = []
        for n in range(points.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            points.GetNthControlPointPositionWorld(n, position)
            result.append(LabelledPoint(points.GetNthControlPointLabel(n), tuple(position)))  # type: ignore[arg-type]
        return result
    result = []
    for item in points:
        if isinstance(item, LabelledPoint):
            result.append(item)
        else:
            label, ras = item
            result.append(LabelledPoint(str(label), tuple(float(v) for v in ras)))  # type: ignore[arg-type]
    return result


_NUMBER_SUFFIX = re.compile(r"^(.*?)[-_ ]?\d+$")


def match_label(label: str, names: Iterable[str]) -> str | None:
    """The name a point label refers to: exact (case-insensitive), or without a trailing number
    ("Kidney-3" → "Kidney"), as Slicer numbers new control points."""
    by_lower = {name.lower(): name for name in names}
    key = label.strip().lower()
    if key in by_lower:
        return by_lower[key]
    stripped = _NUMBER_SUFFIX.match(key)
    if stripped and stripped.group(1).strip().lower() in by_lower:
        return by_lower[stripped.group(1).strip().lower()]
    return None


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------


class EditSession:
    """Edit the segments of one segmentation on one source volume, with undo and redo.

    ``on_grid_mismatch`` says what to do with a segmentation whose reference grid is neither the
    volume's grid nor a finer grid with the same axes: "resample" its segments onto the volume's
    grid (nearest neighbour; a warning is recorded) or "refuse" (InputDataError).
    ``overwrite`` is Slicer's overwrite mode for other segments: "none" (default; segments may
    overlap), "visible" or "all".
    """

    def __init__(
        self,
        segmentation_node,
        source_volume,
        *,
        on_grid_mismatch: str = "resample",
        overwrite: str = "none",
        max_undo_states: int = 20,
    ):
        if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
            raise InputDataError("is not a segmentation node.", subject=str(segmentation_node))
        if source_volume is None or not source_volume.IsA("vtkMRMLScalarVolumeNode"):
            raise InputDataError(
                "is not a scalar volume node.", subject=str(source_volume), fix="choose a CT volume."
            )
        if source_volume.GetImageData() is None or source_volume.GetImageData().GetNumberOfPoints() == 0:
            raise InputDataError("the volume has no image data.", subject=source_volume.GetName())
        if on_grid_mismatch not in GRID_POLICIES:
            raise ValueError(f"on_grid_mismatch must be one of {GRID_POLICIES}")
        scene = segmentation_node.GetScene()
        if scene is None or source_volume.GetScene() is not scene:
            raise InputDataError(
                "the segmentation and the volume are not in the same scene.",
                subject=segmentation_node.GetName(),
            )
        for node in (segmentation_node, source_volume):
            if node.GetParentTransformNode() is not None:
                raise InputDataError(
                    "is under a transform; the tools work on untransformed voxel grids.",
                    subject=node.GetName(),
                    fix="harden the transform (Data module: right-click > Harden transform) first.",
                )
        self.scene = scene
        self.segmentation_node = segmentation_node
        self.source_volume = source_volume
        self.warnings: list[str] = []
        self._operation_depth = 0
        self._state_saved = False
        self._operation_name = ""

        segmentation = segmentation_node.GetSegmentation()
        if not segmentation.GetSourceRepresentationName() == "Binary labelmap":
            if segmentation.GetNumberOfSegments() > 0:
                raise InputDataError(
                    "its source representation is not a binary labelmap.",
                    subject=segmentation_node.GetName(),
                    fix="convert the segmentation's source representation to binary labelmap.",
                )
            segmentation.SetSourceRepresentationName("Binary labelmap")
        self._check_grid(on_grid_mismatch)

        self.editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "SlicerVSP segment editor")
        self.editor_node.SetHideFromEditors(True)
        self.editor_node.SetSaveWithScene(False)
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(self.editor_node)
        self.logic.SetSegmentationNode(segmentation_node)
        self.logic.SetSourceVolumeNode(source_volume)
        self.logic.SetMaximumNumberOfUndoStates(int(max_undo_states))
        self.overwrite = overwrite
        self.set_editable_area("everywhere")
        self._grid = self._reference_grid()
        self._volume_grid = Grid.from_volume(source_volume)

    # -- life cycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the editor node from the scene; the segmentation keeps every change."""
        if self.editor_node is not None and self.editor_node.GetScene() is not None:
            self.logic.SetSegmentEditorNode(None)
            self.scene.RemoveNode(self.editor_node)
        self.editor_node = None

    def __enter__(self) -> EditSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- settings --------------------------------------------------------------------------------

    @property
    def overwrite(self) -> str:
        mode = self.editor_node.GetOverwriteMode()
        return next(name for name, value in OVERWRITE_MODES.items() if value == mode)

    @overwrite.setter
    def overwrite(self, mode: str) -> None:
        if mode not in OVERWRITE_MODES:
            raise ValueError(f"overwrite must be one of {tuple(OVERWRITE_MODES)}")
        self.editor_node.SetOverwriteMode(OVERWRITE_MODES[mode])

    def set_editable_area(
        self, mode: str = "everywhere", segment=None, *, intensity_range_hu: tuple[float, float] | None = None
    ) -> None:
        """Slicer's editable area: where applied changes may land (mask mode, mask segment and an
        optional source intensity range). Tools that take a mask themselves are not affected by
        intensity masking; they compute their own restriction."""
        if mode not in MASK_MODES:
            raise ValueError(f"mode must be one of {tuple(MASK_MODES)}")
        if mode == "inside_segment":
            if segment is None:
                raise InputDataError("needs a segment.", subject="editable area 'inside_segment'")
            self.editor_node.SetMaskSegmentID(self.segment_id(segment))
        self.editor_node.SetMaskMode(MASK_MODES[mode])
        if intensity_range_hu is None:
            self.editor_node.SetSourceVolumeIntensityMask(False)
        else:
            low, high = (float(v) for v in intensity_range_hu)
            self.editor_node.SetSourceVolumeIntensityMask(True)
            self.editor_node.SetSourceVolumeIntensityMaskRange(min(low, high), max(low, high))

    # -- geometry --------------------------------------------------------------------------------

    @property
    def grid(self) -> Grid:
        """The reference grid the tools work on."""
        return self._grid

    def _reference_grid(self) -> Grid:
        geometry = self.logic.GetReferenceImageGeometryString()
        image = slicer.vtkOrientedImageData()
        slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False)
        return Grid.from_oriented_image(image)

    def _check_grid(self, policy: str) -> None:
        node = self.segmentation_node
        segmentation = node.GetSegmentation()
        volume_grid = Grid.from_volume(self.source_volume)
        parameter = segmentation.GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        )
        if not parameter:
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.source_volume)
            return
        image = slicer.vtkOrientedImageData()
        slicer.vtkSegmentationConverter.DeserializeImageGeometry(parameter, image, False)
        reference = Grid.from_oriented_image(image)
        if reference.same_geometry(volume_grid):
            return
        same_axes = np.allclose(reference.directions, volume_grid.directions, atol=_GEOMETRY_TOLERANCE)
        if same_axes and np.all(reference.spacing_mm <= volume_grid.spacing_mm + _GEOMETRY_TOLERANCE):
            return  # a finer grid with the volume's axes: the caller asked for it
        message = (
            f"is on a different grid ({reference.describe()}) than the volume "
            f"{self.source_volume.GetName()!r} ({volume_grid.describe()})"
        )
        if policy == "refuse":
            raise InputDataError(
                message + ".",
                subject=node.GetName(),
                fix="resample the segmentation onto the volume (on_grid_mismatch='resample'), "
                "or edit it with the volume it was made on.",
            )
        self._resample_onto_volume()
        warning = (
            f"segmentation {node.GetName()!r} {message}; its {segmentation.GetNumberOfSegments()} "
            "segment(s) were resampled onto the volume's grid (nearest neighbour)."
        )
        self.warnings.append(warning)
        log.warning(warning)

    def _resample_onto_volume(self) -> None:
        """Resample every labelmap layer onto the volume's grid (shared layers stay shared)."""
        node = self.segmentation_node
        segmentation = node.GetSegmentation()
        volume_grid = Grid.from_volume(self.source_volume)
        with slicer.util.NodeModify(node):
            for layer in range(segmentation.GetNumberOfLayers()):
                labelmap = segmentation.GetLayerDataObject(layer)
                if labelmap is None or image_box(labelmap).empty:
                    continue
                resampled = _resample_labelmap(labelmap, volume_grid, volume_grid.box)
                labelmap.DeepCopy(resampled)  # in place: every segment of the layer follows
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.source_volume)

    # -- segments --------------------------------------------------------------------------------

    def segment_ids(self) -> list[str]:
        segmentation = self.segmentation_node.GetSegmentation()
        return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]

    def find_segment(self, segment) -> str | None:
        """A segment's ID from its ID or name (None when there is none)."""
        segmentation = self.segmentation_node.GetSegmentation()
        if segment is None:
            return None
        segment = str(segment)
        if segmentation.GetSegment(segment) is not None:
            return segment
        try:  # by name: several segments of that name are an error listing them
            return find_segment(self.segmentation_node, segment)
        except SegmentNotFoundError:
            return None

    def segment_id(self, segment) -> str:
        """A segment's ID from its ID or name; a clear error when there is none."""
        found = self.find_segment(segment)
        if found is None:
            names = [self.segment_name(s) for s in self.segment_ids()]
            raise InputDataError(
                f"has no segment {segment!r}.",
                subject=self.segmentation_node.GetName(),
                fix=f"use one of: {', '.join(names) or '(no segments)'}.",
            )
        return found

    def segment_name(self, segment) -> str:
        return self.segmentation_node.GetSegmentation().GetSegment(self.segment_id(segment)).GetName()

    def add_segment(self, name: str, *, color: Sequence[float] | None = None) -> str:
        """A new empty segment (inside an operation, so that undo removes it)."""
        self._before_change("add a segment")
        segmentation = self.segmentation_node.GetSegmentation()
        if color is None:
            segment_id = segmentation.AddEmptySegment("", name)
        else:
            segment_id = segmentation.AddEmptySegment("", name, [float(c) for c in color])
        if not segment_id:
            raise InputDataError(f"could not add segment {name!r}.", subject=self.segmentation_node.GetName())
        return segment_id

    def result_segment(self, name: str, *, color: Sequence[float] | None = None) -> str:
        """The segment called `name`, created when there is none."""
        return self.find_segment(name) or self.add_segment(name, color=color)

    def mask(self, segment, box: Box | None = None) -> GridArray:
        """A segment as a boolean GridArray on the reference grid: over `box`, or cropped to the
        segment's content when no box is given (an empty segment gives a 0-size array)."""
        segment_id = self.segment_id(segment)
        vtk_segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        labelmap = vtk_segment.GetRepresentation(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        )
        label = vtk_segment.GetLabelValue()
        if labelmap is None or image_box(labelmap).empty:
            target = box if box is not None else EMPTY_BOX
            return self._grid.grid_array(np.zeros(target.shape_kji, bool), target)
        layer_grid = Grid.from_oriented_image(labelmap)
        if not layer_grid.same_geometry(self._grid):
            # A layer on another grid (e.g. an imported labelmap): resample it onto the reference.
            labelmap = _resample_labelmap(labelmap, self._grid, box if box is not None else self._grid.box)
        source_box = image_box(labelmap)
        values = image_array(labelmap)
        target = box
        if target is None:
            target = source_box
        common = source_box.intersect(target)
        out = np.zeros(target.shape_kji, bool)
        if not common.empty:
            out[common.slices_in(target)] = values[common.slices_in(source_box)] == label
        if box is None:
            tight = content_box(out, target)
            out = out[tight.slices_in(target)] if not tight.empty else np.zeros((0, 0, 0), bool)
            target = tight
        return self._grid.grid_array(out, target)

    def require_mask(self, segment, box: Box | None = None, *, role: str = "segment") -> GridArray:
        """Like :meth:`mask`, but an empty segment is an error that names it."""
        mask = self.mask(segment, box)
        if not mask.array.any():
            where = " inside the region" if box is not None else ""
            raise InputDataError(
                f"the {role} {self.segment_name(segment)!r} is empty{where}.",
                subject=self.segmentation_node.GetName(),
                fix=f"paint or compute the {role} first.",
            )
        return mask

    def source(self, box: Box, *, background: float | None = None) -> GridArray:
        """The source volume's voxels over `box` of the reference grid (linear interpolation when the
        reference grid is finer than the volume's; `background` outside the volume)."""
        if background is None:
            background = float(self.source_volume.GetImageBackgroundScalarComponentAsDouble(0))
        volume_array = slicer.util.arrayFromVolume(self.source_volume)
        if self._volume_grid.same_geometry(self._grid):
            offset = np.round(self._grid.ras_to_ijk(self._volume_grid.image_to_world[:3, 3])).astype(int)
            volume_box = Box(
                tuple(int(v) for v in offset),  # type: ignore[arg-type]
                tuple(int(o + n) for o, n in zip(offset, volume_array.shape[::-1], strict=True)),  # type: ignore[arg-type]
            )
            common = volume_box.intersect(box)
            if common == box:
                view = volume_array[box.slices_in(volume_box)]
                view.setflags(write=False)  # the volume's own voxels: never written through here
                return self._grid.grid_array(view, box)
            out = np.full(box.shape_kji, background, dtype=volume_array.dtype)
            if not common.empty:
                out[common.slices_in(box)] = volume_array[common.slices_in(volume_box)]
            return self._grid.grid_array(out, box)
        source = slicer.vtkOrientedImageData()
        source.ShallowCopy(self.source_volume.GetImageData())
        source.SetImageToWorldMatrix(array_to_vtk_matrix(self._volume_grid.image_to_world))
        reference = self._grid.oriented_image(None, box)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            source, reference, resampled, True, False, None, background
        )
        values = image_array(resampled)
        return self._grid.grid_array(values.reshape(box.shape_kji).copy(), box)

    def volume_box(self) -> Box:
        """The part of the reference grid whose voxel centres lie inside the source volume."""
        dims = np.array(self._volume_grid.box.hi, dtype=float)
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
        corners = corners * dims - 0.5  # the outer faces of the volume's outer voxels
        return self._grid.box_around_ras(self._volume_grid.ijk_to_ras(corners)).intersect(self._grid.box)

    def region(self, roi=None) -> Region:
        """The ROI on the reference grid, limited to where the source volume has voxels."""
        region = roi_region(self._grid, roi)
        box = region.box.intersect(self.volume_box())
        if box.empty:
            raise InputDataError(
                "does not overlap the source volume.",
                subject=getattr(roi, "GetName", lambda: "ROI")() if roi is not None else "reference grid",
                fix=f"move the ROI onto the volume {self.source_volume.GetName()!r}.",
            )
        return Region(box, region.inside(box))

    # -- changes ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def operation(self, name: str = "edit") -> Iterator[EditSession]:
        """One undo step: the state is saved once, just before the first change inside the block
        (a block that changes nothing leaves no undo step). If the block fails after changing
        something, the segmentation is restored to that state."""
        outer = self._operation_depth == 0
        if outer:
            self._state_saved = False
            self._operation_name = name
        self._operation_depth += 1
        try:
            yield self
        except BaseException:
            if outer and self._state_saved:
                # Nothing half-updated: roll back to the state saved before the first change.
                self.logic.Undo()
            raise
        finally:
            self._operation_depth -= 1

    def _before_change(self, what: str) -> None:
        if self._operation_depth == 0:
            raise RuntimeError(f"{what} only inside `with session.operation(...)`")
        if not self._state_saved:
            if not self.logic.SaveStateForUndo():
                log.debug("undo state not saved for %s (undo disabled)", self._operation_name)
            self._state_saved = True

    def apply(self, segment, mask: GridArray, mode: str = "set", *, bypass_masking: bool = False) -> None:
        """Change a segment by a mask on the reference grid.

        "set" makes the segment equal to the mask (cleared where the mask does not reach),
        "add" and "remove" add or erase the mask's voxels. The editable area and overwrite mode of
        the session apply unless `bypass_masking`.
        """
        if mode not in MODIFICATION_MODES:
            raise ValueError(f"mode must be one of {tuple(MODIFICATION_MODES)}")
        segment_id = self.segment_id(segment)
        if mask.array.size == 0 and mode != "set":
            return  # adding or removing nothing
        self._before_change("apply")
        if mask.array.size == 0:
            # An empty result: a one-voxel empty modifier clears the segment.
            box = Box(self._grid.box.lo, tuple(v + 1 for v in self._grid.box.lo))  # type: ignore[arg-type]
            image = self._grid.oriented_image(np.zeros((1, 1, 1), np.uint8), box)
        else:
            image = self._grid.oriented_image(
                mask.array.astype(np.uint8, copy=False), self._grid.box_of(mask)
            )
        self.logic.ModifySegmentByLabelmap(
            self.segmentation_node, segment_id, image, MODIFICATION_MODES[mode], False, bool(bypass_masking)
        )

    def remove_segment(self, segment) -> None:
        segment_id = self.segment_id(segment)
        self._before_change("remove a segment")
        self.segmentation_node.GetSegmentation().RemoveSegment(segment_id)

    # -- history ---------------------------------------------------------------------------------

    @property
    def can_undo(self) -> bool:
        return bool(self.logic.CanUndo())

    @property
    def can_redo(self) -> bool:
        return bool(self.logic.CanRedo())

    def undo(self) -> None:
        if not self.can_undo:
            raise InputDataError("there is nothing to undo.", subject=self.segmentation_node.GetName())
        self.logic.Undo()

    def redo(self) -> None:
        if not self.can_redo:
            raise InputDataError("there is nothing to redo.", subject=self.segmentation_node.GetName())
        self.logic.Redo()


def voxel_volume_ml(grid: Grid, voxels: int) -> float:
    return voxels * grid.voxel_volume_mm3 / 1000.0
