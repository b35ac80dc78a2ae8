"""Shape operations with sizes in millimetres: smoothing, margin, hollow, fill holes.

Kernel sizes are converted per axis from the reference grid's spacing, so the same `kernel_mm`
has the same effect on a 0.5 mm and a 1 mm grid (to within the rounding to whole, odd voxel
counts). Distances come from ITK's signed Maurer distance map through Slicer's
``vtkITKImageMargin``, in mm along each axis. Every operation works on the segment's box padded
by its reach, and replaces the segment through the edit session (one undo step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from VSPCoreLib.arrays import vtk_image
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report

from .editing import Box, EditSession, mask_in_box
from .islands import label_islands

SMOOTHING_METHODS = ("median", "opening", "closing", "gaussian")
SHELLS = ("inside", "medial", "outside")


@dataclass(frozen=True)
class MorphologyResult:
    segment_id: str
    voxels_before: int
    voxels_after: int


def kernel_voxels(kernel_mm: float, spacing_mm: Sequence[float]) -> tuple[int, int, int]:
    """Odd kernel sizes (i, j, k) nearest to kernel_mm per axis (an even size would shift the
    result by half a voxel)."""
    if kernel_mm <= 0:
        raise InputDataError(f"kernel_mm must be positive (got {kernel_mm}).", subject="smoothing")
    return tuple(max(1, int(round((kernel_mm / s + 1) / 2)) * 2 - 1) for s in spacing_mm)  # type: ignore[return-value]


def _array(algorithm, shape) -> np.ndarray:
    algorithm.Update()
    return vtk_to_numpy(algorithm.GetOutput().GetPointData().GetScalars()).reshape(shape)


def _padded(session: EditSession, segment, pad_voxels) -> tuple[str, np.ndarray, Box, int]:
    """The segment over its box padded by `pad_voxels` (i, j, k), within the reference grid."""
    segment_id = session.segment_id(segment)
    mask = session.require_mask(segment_id)
    box = session.grid.box_of(mask).expand(pad_voxels).intersect(session.grid.box)
    return segment_id, mask_in_box(session.grid, mask, box), box, int(mask.array.sum())


def _replace(session: EditSession, segment_id: str, result: np.ndarray, box: Box, before: int, name: str):
    with session.operation(name):
        session.apply(segment_id, session.grid.grid_array(result, box), "set")
    return MorphologyResult(segment_id, before, int(np.count_nonzero(result)))


# --------------------------------------------------------------------------------------------
# Distance-based operations
# --------------------------------------------------------------------------------------------


def distance_band(mask: np.ndarray, spacing_mm, inner_mm: float, outer_mm: float) -> np.ndarray:
    """Voxels whose signed distance (mm; 0 on the mask's outer layer of voxels, negative inside,
    positive outside, between voxel centres) lies in [inner_mm, outer_mm]."""
    margin = slicer.vtkITKImageMargin()
    margin.SetInputData(vtk_image(mask.astype(np.uint8), spacing_mm))
    margin.CalculateMarginInMMOn()
    margin.SetBackgroundValue(0)
    margin.SetInnerMarginMM(float(inner_mm))
    margin.SetOuterMarginMM(float(outer_mm))
    return _array(margin, mask.shape) > 0


# Distances between voxel centres take discrete values, so the voxels within M of a surface fall
# short of M by a fraction of a voxel on average. Adding a quarter of the smallest voxel size to
# the threshold centres the error: on spheres at 0.5-1.5 mm spacings, margins of 2-5 mm and 4 mm
# medial shells then land within 0.27 voxel of the asked size (up to 0.6 voxel without).
_DISCRETE_DISTANCE_BIAS = 0.25


def grow_or_shrink(mask: np.ndarray, spacing_mm, margin_mm: float) -> np.ndarray:
    """The mask grown (margin_mm > 0) or shrunk (< 0) by |margin_mm| mm."""
    if margin_mm == 0:
        return mask.copy()
    reach = abs(float(margin_mm)) + _DISCRETE_DISTANCE_BIAS * float(np.min(spacing_mm))
    if margin_mm > 0:
        return distance_band(mask, spacing_mm, -1e9, reach)
    # Shrinking is growing the outside: its distances start at its own outer layer, which is
    # more accurate than thresholding the (negative) inside distances.
    return ~distance_band(~mask, spacing_mm, -1e9, reach)


def margin(
    session: EditSession, segment, *, margin_mm: float, progress: ProgressCallback | None = None
) -> MorphologyResult:
    """Grow (margin_mm > 0) or shrink (margin_mm < 0) a segment by a distance in mm."""
    report(progress, 0.0, "margin: computing")
    pad = session.grid.voxels_for_mm(margin_mm) + 2
    segment_id, mask, box, before = _padded(session, segment, pad)
    result = grow_or_shrink(mask, session.grid.spacing_mm, float(margin_mm))
    report(progress, 0.8, "margin: applying")
    out = _replace(session, segment_id, result, box, before, "margin")
    report(progress, 1.0, "margin: done")
    return out


def hollow(
    session: EditSession,
    segment,
    *,
    thickness_mm: float,
    shell: str = "inside",
    progress: ProgressCallback | None = None,
) -> MorphologyResult:
    """Replace a segment by a shell of `thickness_mm`: "inside" the current surface (a hollowed
    model whose outer surface is unchanged), "outside" it (a wall around it) or "medial" (centred
    on it)."""
    if thickness_mm <= 0:
        raise InputDataError(f"thickness_mm must be positive (got {thickness_mm}).", subject="hollow")
    if shell not in SHELLS:
        raise InputDataError(f"unknown shell {shell!r}.", subject="hollow", fix=f"use one of {SHELLS}.")
    report(progress, 0.0, "hollow: computing")
    pad = session.grid.voxels_for_mm(thickness_mm) + 2
    segment_id, mask, box, before = _padded(session, segment, pad)
    spacing = session.grid.spacing_mm
    t = float(thickness_mm)
    # The shell is the difference of two margins, so its thickness is as exact as a margin.
    if shell == "inside":
        outer, inner = mask, grow_or_shrink(mask, spacing, -t)
    elif shell == "outside":
        outer, inner = grow_or_shrink(mask, spacing, t), mask
    else:
        outer, inner = grow_or_shrink(mask, spacing, t / 2), grow_or_shrink(mask, spacing, -t / 2)
    result = outer & ~inner
    report(progress, 0.8, "hollow: applying")
    out = _replace(session, segment_id, result, box, before, "hollow")
    report(progress, 1.0, "hollow: done")
    return out


def fill_holes(
    session: EditSession,
    segment,
    *,
    max_hole_mm3: float | None = None,
    progress: ProgressCallback | None = None,
) -> MorphologyResult:
    """Fill the internal cavities of a segment (background not connected to the outside), all of
    them or those up to max_hole_mm3."""
    report(progress, 0.0, "fill holes: labelling the background")
    segment_id, mask, box, before = _padded(session, segment, 1)
    # The background is fully (26-) connected, the counterpart of the segment's face
    # connectivity: a cavity that touches the outside only along an edge is not a hole.
    padded = np.pad(mask, 1)  # the outside is connected around the box
    labels, counts, _ = label_islands(~padded, fully_connected=True)
    outside = labels[0, 0, 0]
    holes = (labels > 0) & (labels != outside)
    if max_hole_mm3 is not None:
        limit = max_hole_mm3 / session.grid.voxel_volume_mm3
        small = np.flatnonzero(counts <= limit)
        holes &= np.isin(labels, small)
    result = (padded | holes)[1:-1, 1:-1, 1:-1]
    report(progress, 0.8, "fill holes: applying")
    out = _replace(session, segment_id, result, box, before, "fill holes")
    report(progress, 1.0, "fill holes: done")
    return out


# --------------------------------------------------------------------------------------------
# Smoothing
# --------------------------------------------------------------------------------------------


def smooth_mask(mask: np.ndarray, spacing_mm, method: str, kernel_mm: float) -> np.ndarray:
    """Smooth a boolean array; `kernel_mm` is the kernel size (median, opening, closing) or the
    Gaussian's standard deviation (gaussian)."""
    spacing = np.asarray(spacing_mm, float)
    values = mask.astype(np.uint8)
    if method == "gaussian":
        if kernel_mm <= 0:
            raise InputDataError(f"kernel_mm must be positive (got {kernel_mm}).", subject="smoothing")
        gaussian = vtk.vtkImageGaussianSmooth()
        gaussian.SetInputData(vtk_image(values * np.uint8(255), spacing))
        gaussian.SetStandardDeviations(*(float(kernel_mm) / spacing))
        gaussian.SetRadiusFactors(3.0, 3.0, 3.0)
        return _array(gaussian, mask.shape) >= 128
    size = kernel_voxels(kernel_mm, spacing)
    if method == "median":
        median = vtk.vtkImageMedian3D()
        median.SetInputData(vtk_image(values, spacing))
        median.SetKernelSize(*size)
        return _array(median, mask.shape) > 0
    if method in ("opening", "closing"):
        open_close = vtk.vtkImageOpenClose3D()
        open_close.SetInputData(vtk_image(values, spacing))
        # Opening erodes the foreground (1) first; closing erodes the background (0) first.
        open_close.SetOpenValue(1 if method == "opening" else 0)
        open_close.SetCloseValue(0 if method == "opening" else 1)
        open_close.SetKernelSize(*size)
        return _array(open_close, mask.shape) > 0
    raise InputDataError(
        f"unknown smoothing method {method!r}.", subject="smoothing", fix=f"use one of {SMOOTHING_METHODS}."
    )


def smooth(
    session: EditSession,
    segment,
    *,
    method: str = "median",
    kernel_mm: float = 3.0,
    progress: ProgressCallback | None = None,
) -> MorphologyResult:
    """Smooth a segment: "median" (removes details smaller than the kernel), "opening" (removes
    protrusions and islands thinner than it), "closing" (fills gaps and dents narrower than it)
    or "gaussian" (kernel_mm is the standard deviation; thresholded at half)."""
    if method not in SMOOTHING_METHODS:
        raise InputDataError(
            f"unknown smoothing method {method!r}.",
            subject="smoothing",
            fix=f"use one of {SMOOTHING_METHODS}.",
        )
    report(progress, 0.0, f"smoothing ({method}): computing")
    reach_mm = 3.0 * kernel_mm if method == "gaussian" else kernel_mm
    pad = session.grid.voxels_for_mm(reach_mm) + 2
    segment_id, mask, box, before = _padded(session, segment, pad)
    result = smooth_mask(mask, session.grid.spacing_mm, method, kernel_mm)
    report(progress, 0.8, f"smoothing ({method}): applying")
    out = _replace(session, segment_id, result, box, before, f"smoothing ({method})")
    report(progress, 1.0, f"smoothing ({method}): done")
    return out


def joint_smooth(
    session: EditSession,
    segments: Sequence,
    *,
    smoothing_factor: float = 0.5,
    progress: ProgressCallback | None = None,
) -> list[MorphologyResult]:
    """Smooth several touching segments together so that no gap or overlap opens between them.

    The segments' shared boundaries become one surface mesh (discrete marching cubes), which is
    low-pass filtered (windowed sinc, Taubin) and cut back into one labelmap per segment.
    `smoothing_factor` in [0, 1] maps to a pass band of 10^(-4 x factor). The segments must not
    overlap (one label map holds them).
    """
    if not 0.0 <= smoothing_factor <= 1.0:
        raise InputDataError(
            f"smoothing_factor must be in [0, 1] (got {smoothing_factor}).", subject="joint smoothing"
        )
    ids = [session.segment_id(s) for s in segments]
    if not ids or len(set(ids)) != len(ids):
        raise InputDataError("needs one or more different segments.", subject="joint smoothing")
    report(progress, 0.0, "joint smoothing: merging segments")
    masks = [session.require_mask(s) for s in ids]
    box = session.grid.box_of(masks[0])
    for mask in masks[1:]:
        box = box.union(session.grid.box_of(mask))
    box = box.expand(2).intersect(session.grid.box)  # room for the surface around the voxels
    labels = np.zeros(box.shape_kji, np.uint8)
    befores = []
    for index, mask in enumerate(masks):
        values = mask_in_box(session.grid, mask, box)
        overlap = values & (labels > 0)
        if overlap.any():
            other = ids[int(labels[overlap][0]) - 1]
            raise InputDataError(
                f"segments {session.segment_name(other)!r} and {session.segment_name(ids[index])!r} overlap "
                f"({int(overlap.sum())} voxels); joint smoothing needs segments that do not.",
                subject=session.segmentation_node.GetName(),
                fix="smooth them one by one, or subtract one from the other first.",
            )
        labels[values] = index + 1
        befores.append(int(values.sum()))
    report(progress, 0.2, "joint smoothing: smoothing the surfaces")
    # In index space (spacing 1), as the mesh is cut back onto the same voxels.
    image = vtk_image(labels, (1.0, 1.0, 1.0))
    contour = vtk.vtkDiscreteMarchingCubes()  # neighbouring labels share vertices: they move together
    contour.SetInputData(image)
    for index in range(len(ids)):
        contour.SetValue(index, index + 1)
    smoother = vtk.vtkWindowedSincPolyDataFilter()
    smoother.SetInputConnection(contour.GetOutputPort())
    smoother.SetNumberOfIterations(100)
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    smoother.SetPassBand(10.0 ** (-4.0 * smoothing_factor))
    smoother.Update()
    k, j, i = labels.shape
    results = []
    for index in range(len(ids)):
        threshold = vtk.vtkThreshold()
        threshold.SetInputData(smoother.GetOutput())
        threshold.SetLowerThreshold(index + 1)
        threshold.SetUpperThreshold(index + 1)
        threshold.SetThresholdFunction(vtk.vtkThreshold.THRESHOLD_BETWEEN)
        threshold.SetInputArrayToProcess(0, 0, 0, vtk.vtkDataObject.FIELD_ASSOCIATION_CELLS, "Scalars")
        geometry = vtk.vtkGeometryFilter()
        geometry.SetInputConnection(threshold.GetOutputPort())
        to_stencil = vtk.vtkPolyDataToImageStencil()
        to_stencil.SetInputConnection(geometry.GetOutputPort())
        to_stencil.SetOutputSpacing(1.0, 1.0, 1.0)
        to_stencil.SetOutputOrigin(0.0, 0.0, 0.0)
        to_stencil.SetOutputWholeExtent(0, i - 1, 0, j - 1, 0, k - 1)
        blank = vtk_image(np.zeros(labels.shape, np.uint8), (1.0, 1.0, 1.0))
        stencil = vtk.vtkImageStencil()
        stencil.SetInputData(blank)
        stencil.SetStencilConnection(to_stencil.GetOutputPort())
        stencil.ReverseStencilOn()
        stencil.SetBackgroundValue(1)
        results.append(_array(stencil, labels.shape) > 0)
        report(progress, 0.2 + 0.6 * (index + 1) / len(ids), "joint smoothing: cutting back to voxels")
    out = []
    with session.operation("joint smoothing"):
        for segment_id, result, before in zip(ids, results, befores, strict=True):
            session.apply(segment_id, session.grid.grid_array(result, box), "set")
            out.append(MorphologyResult(segment_id, before, int(np.count_nonzero(result))))
    report(progress, 1.0, "joint smoothing: done")
    return out
