"""Segments and volumes as numpy arrays on a known grid, and back.

Arrays are indexed [k, j, i] like `slicer.util.arrayFromVolume`. A `GridArray` carries the
IJK→RAS matrix of its own index (0, 0, 0), so a cropped array never loses its place in the
patient. Segment masks come from the segmentation's binary labelmap (its source representation)
and are resampled onto the reference grid when the segmentation uses another one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import slicer.util
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from .errors import InputDataError


@dataclass
class GridArray:
    """An array [k, j, i] and the IJK→RAS matrix of its voxel (0, 0, 0)."""

    array: np.ndarray
    ijk_to_ras: np.ndarray

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])))

    def ras_of(self, ijk) -> np.ndarray:
        """RAS position(s) of voxel index/indices given as (..., 3) arrays of (i, j, k)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]


# DICOM, ITK and files are LPS; MRML is RAS. The same matrix maps both ways.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def vtk_matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A 4x4 numpy copy of a VTK matrix (Slicer's `arrayFromVTKMatrix`)."""
    return slicer.util.arrayFromVTKMatrix(matrix)


def array_to_vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A VTK 4x4 matrix from a numpy array (Slicer's `vtkMatrixFromArray`)."""
    return slicer.util.vtkMatrixFromArray(np.asarray(array, dtype=float))


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return vtk_matrix_to_array(matrix)


def volume_grid_array(volume_node) -> GridArray:
    """The volume's voxels (a view, not a copy) with its geometry."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputDataError("the volume has no image data.", subject=getattr(volume_node, "GetName", str)())
    return GridArray(slicer.util.arrayFromVolume(volume_node), volume_ijk_to_ras(volume_node))


def oriented_image_to_grid_array(image: slicer.vtkOrientedImageData) -> GridArray:
    """Copy a vtkOrientedImageData's voxels; the matrix accounts for its extent's start."""
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return GridArray(np.zeros((0, 0, 0), np.uint8), np.eye(4))
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims).copy()
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = vtk_matrix_to_array(matrix)
    ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ np.array(extent[0::2], float) + ijk_to_ras[:3, 3]
    return GridArray(array, ijk_to_ras)


def grid_array_to_oriented_image(grid: GridArray) -> slicer.vtkOrientedImageData:
    """A vtkOrientedImageData (extent starting at 0) holding a copy of the array."""
    array = np.ascontiguousarray(grid.array)
    image = slicer.vtkOrientedImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(numpy_to_vtk(array.ravel(), deep=True))
    image.SetImageToWorldMatrix(array_to_vtk_matrix(grid.ijk_to_ras))
    return image


def vtk_image(array: np.ndarray, spacing_mm=(1.0, 1.0, 1.0)) -> vtk.vtkImageData:
    """A vtkImageData (origin 0, axis-aligned, the given spacing) holding a copy of a [k, j, i]
    array: the input VTK/ITK filters take when geometry is handled outside them."""
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    image.SetSpacing(*(float(s) for s in spacing_mm))
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    return image


# --- nearest-neighbour resampling -------------------------------------------------------------

# A sample closer than this (in voxels) to the boundary between two voxels is a tie: floating-point
# noise (a grid saved and reloaded) must not decide which voxel it takes.
TIE_TOLERANCE = 1e-6
# The golden ratio's fractional part: in a general orientation a tie goes up when frac(key·φ) < ½;
# any arithmetic progression of keys (the ties of a regular grid) sends half up and half down.
_GOLDEN = 0.6180339887498949


def nearest_voxel(position: np.ndarray, tie_up) -> np.ndarray:
    """Index of the voxel holding each continuous index position (voxel n spans n − ½ … n + ½).

    A position on the boundary between two voxels (within `TIE_TOLERANCE`, so that rounding
    noise never decides) is a tie; it goes to the upper voxel where `tie_up` (bool, broadcast
    against `position`) is true, else to the lower one.
    """
    position = np.asarray(position, float)
    lower = np.floor(position)
    fraction = position - lower
    up = fraction > 0.5
    tie = np.abs(fraction - 0.5) <= TIE_TOLERANCE
    if tie.any():
        up = np.where(tie, np.broadcast_to(np.asarray(tie_up, bool), position.shape), up)
    return (lower + up).astype(np.intp)


def nearest_along_axis(step: float, origin: float, start: int, count: int) -> np.ndarray:
    """Source voxel of target voxels start … start + count − 1 along one axis, where target voxel m
    sits at source index position origin + step·m.

    The tie rule: along the axis, counted from target voxel 0, the ties go up and down in turn.
    Deterministic (the same grids give the same voxels, whatever the rounding noise, however the
    source is cropped and whichever part of the target is asked for) and unbiased: on a grid
    twice as fine with centres on the source's, or twice as coarse, rounding every tie up would
    shift the mask by half a target voxel; alternating, it keeps its place.
    """
    start, count = int(start), int(count)
    first = min(start, 0)  # counted from voxel 0 both ways, so that any part agrees with the whole
    m = np.arange(first, start + count)
    position = float(origin) + float(step) * m
    fraction = position - np.floor(position)
    tie = np.abs(fraction - 0.5) <= TIE_TOLERANCE
    before = np.cumsum(tie) - tie  # ties at target voxels before this one, from `first`
    before -= before[-first] if first < 0 else 0  # ... from voxel 0 (negative before it)
    return nearest_voxel(position, before % 2 == 0)[start - first :]


def _axis_map(linear: np.ndarray) -> list[int] | None:
    """For a target→source linear map that is a scaled signed permutation (the two grids share
    their axes, perhaps in another order or direction), the target axis of each source axis."""
    scale = float(np.abs(linear).max())
    if scale == 0.0:
        return None
    significant = np.abs(linear) > 1e-9 * scale
    if not (np.all(significant.sum(axis=0) == 1) and np.all(significant.sum(axis=1) == 1)):
        return None
    return [int(np.flatnonzero(significant[d])[0]) for d in range(3)]


def resample_nearest(
    mask: GridArray,
    ijk_to_ras: np.ndarray,
    shape_kji,
    *,
    index_offset=(0, 0, 0),
) -> np.ndarray:
    """`mask` (any dtype; 0 is background) sampled by nearest neighbour on another grid.

    The target grid is `ijk_to_ras` with `shape_kji`; each target voxel takes the source voxel
    that holds its centre, 0 outside the source. `index_offset` is the (i, j, k) index of the
    target's voxel 0 in a larger grid it is a box of, so that a box and the whole grid agree.

    Ties (a target centre on a source voxel boundary): when the grids share their axes (in any
    order or direction; the usual case) they alternate along each axis (`nearest_along_axis`);
    in a general orientation, where exact ties are rare, a tie goes up when frac(k·φ) < ½ for k
    the target index along the most aligned axis. Both are deterministic and unbiased.

    When the target's voxels subdivide the source's (same axes, spacing an integer division of
    the source's, corners on the source's), every source voxel becomes exactly that many target
    voxels: volume and centroid are kept exactly, and no sample is a tie.
    """
    shape_kji = tuple(int(n) for n in shape_kji)
    source = np.asarray(mask.array)
    out = np.zeros(shape_kji, source.dtype)
    if source.size == 0 or 0 in shape_kji:
        return out
    to_source = np.linalg.solve(mask.ijk_to_ras, np.asarray(ijk_to_ras, float))  # target ijk -> source ijk
    linear, translation = to_source[:3, :3], to_source[:3, 3]
    offset = np.asarray(index_offset, np.int64)
    size_ijk = np.array(source.shape[::-1])
    counts_ijk = shape_kji[::-1]
    axis_of = _axis_map(linear)
    if axis_of is not None:
        # Separable: one index array per source axis, over the target axis it runs along, and
        # the source gathered once (outer indexing), then put in the target's axis order.
        index, ranges = [], []
        for d in range(3):
            t = axis_of[d]
            origin = translation[d] - linear[d, t] * offset[t]  # position of the whole grid's voxel 0
            ix = nearest_along_axis(linear[d, t], origin, offset[t], counts_ijk[t])
            inside = np.flatnonzero((ix >= 0) & (ix < size_ijk[d]))
            if len(inside) == 0:
                return out
            ranges.append(inside)
            index.append(ix[inside])
        block = source[np.ix_(index[2], index[1], index[0])]  # axes: source k, j, i
        # Source axis d runs along target axis axis_of[d]; target array axis of ijk axis t is 2 − t.
        order = [2 - axis_of[d] for d in (2, 1, 0)]  # target array axis of each block axis
        block = np.transpose(block, np.argsort(order))
        target_box = [slice(0, 0)] * 3
        for d in range(3):  # the voxels inside the source form one run along each axis
            target_box[2 - axis_of[d]] = slice(int(ranges[d][0]), int(ranges[d][-1]) + 1)
        out[tuple(target_box)] = block
        return out
    # General orientation: one target slice at a time (bounded memory).
    axes = [int(np.argmax(np.abs(linear[d]))) for d in range(3)]
    nk, nj, ni = shape_kji
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    plane = np.stack([ii, jj], axis=-1).reshape(-1, 2).astype(float)
    for k in range(nk):
        target = np.column_stack([plane, np.full(len(plane), float(k))])
        position = target @ linear.T + translation
        keys = target[:, axes] + offset[axes]
        src = nearest_voxel(position, np.mod(keys * _GOLDEN, 1.0) < 0.5)
        inside = np.all((src >= 0) & (src < size_ijk), axis=1)
        values = np.zeros(len(plane), source.dtype)
        values[inside] = source[src[inside, 2], src[inside, 1], src[inside, 0]]
        out[k] = values.reshape(nj, ni)
    return out


def target_box(mask: GridArray, ijk_to_ras: np.ndarray, shape_kji) -> tuple[slice, slice, slice] | None:
    """The [k, j, i] slices of a target grid that the mask's voxels can cover (None: none)."""
    nk, nj, ni = mask.array.shape
    corners = np.array(
        [[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)]
    )
    target = np.linalg.solve(
        np.asarray(ijk_to_ras, float), np.column_stack([mask.ras_of(corners), np.ones(8)]).T
    )
    low = np.maximum(np.floor(target[:3].min(axis=1)).astype(int) - 1, 0)
    high = np.minimum(np.ceil(target[:3].max(axis=1)).astype(int) + 2, np.array(tuple(shape_kji)[::-1]))
    if np.any(high <= low):
        return None
    return (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))


def resample_nearest_box(
    mask: GridArray, ijk_to_ras: np.ndarray, shape_kji
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """`resample_nearest` on the part of the target grid the mask covers: (its slices, values)."""
    if mask.array.size == 0:
        return None
    box = target_box(mask, ijk_to_ras, shape_kji)
    if box is None:
        return None
    start = np.array([box[2].start, box[1].start, box[0].start])
    shifted = np.asarray(ijk_to_ras, float).copy()
    shifted[:3, 3] = shifted[:3, :3] @ start + shifted[:3, 3]
    shape = tuple(s.stop - s.start for s in box)
    return box, resample_nearest(mask, shifted, shape, index_offset=start)


def reference_oriented_image(volume_node) -> slicer.vtkOrientedImageData:
    """An empty oriented image with the volume's grid (geometry only)."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(volume_node.GetImageData().GetDimensions())
    image.SetImageToWorldMatrix(array_to_vtk_matrix(volume_ijk_to_ras(volume_node)))
    return image


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def _check_segment(segmentation_node, segment_id: str):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputDataError(
            f"has no segment with ID {segment_id!r}.",
            subject=segmentation_node.GetName(),
            fix=f"use one of: {', '.join(segment_ids(segmentation_node))}.",
        )
    return segment


def segment_mask(
    segmentation_node, segment_id: str, reference_volume=None, *, crop: bool = True
) -> GridArray:
    """The segment as a boolean mask.

    On the segmentation's own grid, or resampled (nearest neighbour) onto `reference_volume`'s
    grid when given. With `crop`, the array covers only the segment's extent (its matrix says
    where); otherwise the whole reference grid. An empty segment gives an all-False array.
    """
    segment = _check_segment(segmentation_node, segment_id)
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, image
    ):
        raise InputDataError(
            f"segment {segment.GetName()!r} has no binary labelmap.",
            subject=segmentation_node.GetName(),
            fix="convert the segmentation's source representation to binary labelmap.",
        )
    label_value = segment.GetLabelValue()
    grid = oriented_image_to_grid_array(image)
    mask = grid.array == label_value if grid.array.size else grid.array.astype(bool)
    grid = GridArray(mask, grid.ijk_to_ras)
    if reference_volume is not None:
        # `resample_nearest`: ties in turn (vtkImageReslice rounds every tie up, which shifts a
        # mask by half a target voxel on a grid twice as fine or twice as coarse).
        target = volume_ijk_to_ras(reference_volume)
        shape = reference_volume.GetImageData().GetDimensions()[::-1]
        placed = resample_nearest_box(crop_to_content(grid), target, shape) if grid.array.any() else None
        if not crop:
            full = np.zeros(shape, bool)
            if placed is not None:
                full[placed[0]] = placed[1]
            return GridArray(full, target)
        if placed is None:
            return GridArray(np.zeros((0, 0, 0), bool), target.copy())
        box, values = placed
        corner = target.copy()
        corner[:3, 3] = (
            target[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start], float) + target[:3, 3]
        )
        grid = GridArray(values, corner)
    if crop:
        return crop_to_content(grid)
    return grid


def crop_to_content(grid: GridArray, margin: int = 0) -> GridArray:
    """The smallest sub-array holding every non-zero voxel (plus `margin` voxels)."""
    if not grid.array.any():
        return GridArray(np.zeros((0, 0, 0), grid.array.dtype), grid.ijk_to_ras.copy())
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nonzero = np.flatnonzero(grid.array.any(axis=other))
        low = max(int(nonzero[0]) - margin, 0)
        high = min(int(nonzero[-1]) + margin + 1, grid.array.shape[axis])
        bounds.append((low, high))
    (k0, k1), (j0, j1), (i0, i1) = bounds
    ijk_to_ras = grid.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = grid.ras_of([i0, j0, k0])
    return GridArray(grid.array[k0:k1, j0:j1, i0:i1], ijk_to_ras)


def paste_into(grid: GridArray, reference_ijk_to_ras: np.ndarray, shape_kji) -> np.ndarray:
    """Place a cropped array back into a full array of `shape_kji` on the same grid."""
    offset = np.linalg.solve(reference_ijk_to_ras, np.append(grid.ijk_to_ras[:3, 3], 1.0))[:3]
    i0, j0, k0 = np.round(offset).astype(int)
    if not np.allclose(offset, (i0, j0, k0), atol=1e-3) or not np.allclose(
        grid.ijk_to_ras[:3, :3], reference_ijk_to_ras[:3, :3], atol=1e-6
    ):
        raise InputDataError("the arrays are not on the same grid.", subject="segment mask")
    full = np.zeros(shape_kji, dtype=grid.array.dtype)
    k, j, i = grid.array.shape
    full[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i] = grid.array
    return full


def lattice_offset(grid: GridArray, reference_ijk_to_ras: np.ndarray) -> tuple[int, int, int] | None:
    """Index (i, j, k) of `grid`'s voxel (0, 0, 0) in the reference grid.

    None when the two are not one lattice: other spacing or axes, or an origin between voxels.
    """
    spacing = float(np.max(np.linalg.norm(reference_ijk_to_ras[:3, :3], axis=0)))
    if not np.allclose(grid.ijk_to_ras[:3, :3], reference_ijk_to_ras[:3, :3], rtol=0, atol=1e-5 * spacing):
        return None
    offset = np.linalg.solve(reference_ijk_to_ras, np.append(grid.ijk_to_ras[:3, 3], 1.0))[:3]
    rounded = np.round(offset)
    if not np.allclose(offset, rounded, rtol=0, atol=1e-3):
        return None
    i, j, k = (int(v) for v in rounded)
    return i, j, k


def segment_on_reference_grid(segmentation_node, segment_id: str, reference_volume) -> bool:
    """Is the segment's binary labelmap on the volume's lattice (same axes and spacing, voxel
    centres on the volume's), so that it needs no resampling? The extents may differ."""
    _check_segment(segmentation_node, segment_id)
    image = segmentation_node.GetSegmentation().GetSegmentRepresentation(
        segment_id, slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    )
    if image is None or segmentation_node.GetParentTransformNode() is not None:
        return False
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    lattice = GridArray(np.zeros((0, 0, 0), bool), vtk_matrix_to_array(matrix))
    return lattice_offset(lattice, volume_ijk_to_ras(reference_volume)) is not None


#: Up to this many segments of one shared layer are extracted one by one (see segment_masks).
_FEW_SEGMENTS = 4


def segment_masks(segmentation_node, ids=None, reference_volume=None) -> dict[str, GridArray]:
    """Cropped boolean masks of several segments: what `segment_mask(..., crop=True)` gives.

    Segments that share a labelmap layer are read from it directly, and one pass over the layer
    finds every segment's extent, instead of one copy of the whole layer per segment. Segments
    not on `reference_volume`'s grid, or under a parent transform, go through `segment_mask`
    (resampled onto the reference grid).
    """
    from scipy import ndimage

    ids = list(ids) if ids is not None else segment_ids(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    masks: dict[str, GridArray] = {}
    by_layer: dict[int, list[str]] = {}
    transformed = segmentation_node.GetParentTransformNode() is not None
    for segment_id in ids:
        _check_segment(segmentation_node, segment_id)
        direct = (
            not transformed
            and segmentation.GetSegmentRepresentation(segment_id, name) is not None
            and (
                reference_volume is None
                or segment_on_reference_grid(segmentation_node, segment_id, reference_volume)
            )
        )
        if direct:
            by_layer.setdefault(segmentation.GetLayerIndex(segment_id), []).append(segment_id)
        else:
            masks[segment_id] = segment_mask(segmentation_node, segment_id, reference_volume, crop=True)
    for layer_ids in by_layer.values():
        if reference_volume is None and len(layer_ids) <= _FEW_SEGMENTS:
            # Slicer extracts one segment, cropped to its extent, in compiled code (18 ms for
            # the full case's tumour) faster than one pass over the whole layer finds every
            # label's box (110 ms): per segment for a few, the one pass for many.
            for segment_id in layer_ids:
                masks[segment_id] = crop_to_content(segment_mask(segmentation_node, segment_id))
            continue
        image = segmentation.GetSegmentRepresentation(layer_ids[0], name)
        extent = image.GetExtent()
        values = {sid: segmentation.GetSegment(sid).GetLabelValue() for sid in layer_ids}
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            for segment_id in layer_ids:
                masks[segment_id] = GridArray(np.zeros((0, 0, 0), bool), np.eye(4))
            continue
        dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
        layer = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims)  # a view
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        ijk_to_ras = vtk_matrix_to_array(matrix)
        ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ np.array(extent[0::2], float) + ijk_to_ras[:3, 3]
        grid = GridArray(layer, ijk_to_ras)
        usable = np.issubdtype(layer.dtype, np.integer) and all(v > 0 for v in values.values())
        objects = ndimage.find_objects(layer, max_label=max(values.values())) if usable else None
        for segment_id, value in values.items():
            if objects is None:
                masks[segment_id] = crop_to_content(GridArray(layer == value, ijk_to_ras))
                continue
            box = objects[value - 1]
            if box is None:
                masks[segment_id] = GridArray(np.zeros((0, 0, 0), bool), ijk_to_ras.copy())
                continue
            corner = grid.ras_of([box[2].start, box[1].start, box[0].start])
            cropped = ijk_to_ras.copy()
            cropped[:3, 3] = corner
            masks[segment_id] = GridArray(layer[box] == value, cropped)
    return {segment_id: masks[segment_id] for segment_id in ids}
