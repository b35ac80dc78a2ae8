"""Islands (connected components) of a segment with Slicer's ``vtkITKIslandMath``: keep the
largest, remove small ones (size in mm³, converted with the grid's voxel volume), or split every
island into a segment of its own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report

from .editing import EditSession, Grid


@dataclass(frozen=True)
class IslandsResult:
    """Islands found, kept and where they went (segment IDs, largest island first)."""

    segment_ids: list[str]
    islands_found: int
    islands_kept: int
    voxels_kept: int
    voxels_removed: int


def label_islands(
    mask: np.ndarray, *, fully_connected: bool = False, min_voxels: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Label the islands of a boolean array [k, j, i] (1 = largest, 2 = next, ...).

    Islands smaller than `min_voxels` get label 0. Returns (labels, voxel count per label with
    index 0 = background, number of islands before the size filter).
    """
    image = vtk.vtkImageData()
    k, j, i = mask.shape
    image.SetDimensions(i, j, k)
    # Unsigned int: more islands than a byte can count is common in noisy thresholds.
    image.GetPointData().SetScalars(
        numpy_to_vtk(np.ascontiguousarray(mask, dtype=np.uint32).ravel(), deep=True)
    )
    islands = slicer.vtkITKIslandMath()
    islands.SetInputData(image)
    islands.SetFullyConnected(bool(fully_connected))
    islands.SetMinimumSize(int(max(min_voxels, 0)))
    islands.Update()
    labels = vtk_to_numpy(islands.GetOutput().GetPointData().GetScalars()).reshape(mask.shape).copy()
    counts = np.bincount(labels.ravel())
    return labels, counts, int(islands.GetOriginalNumberOfIslands())


def min_voxels_for(grid: Grid, min_size_mm3: float) -> int:
    """The smallest island (in voxels) whose volume reaches min_size_mm3."""
    if min_size_mm3 < 0:
        raise InputDataError(f"min_size_mm3 is negative ({min_size_mm3}).", subject="islands")
    return int(math.ceil(min_size_mm3 / grid.voxel_volume_mm3 - 1e-9))


def _islands(session: EditSession, segment, fully_connected: bool, min_voxels: int):
    mask = session.require_mask(segment)
    labels, counts, found = label_islands(mask.array, fully_connected=fully_connected, min_voxels=min_voxels)
    return mask, labels, counts, found


def keep_largest_island(
    session: EditSession, segment, *, fully_connected: bool = False, progress: ProgressCallback | None = None
) -> IslandsResult:
    """Keep only the largest island of a segment."""
    report(progress, 0.0, "islands: labelling")
    mask, labels, counts, found = _islands(session, segment, fully_connected, 0)
    kept = labels == 1
    segment_id = session.segment_id(segment)
    with session.operation("keep largest island"):
        session.apply(segment_id, session.grid.grid_array(kept, session.grid.box_of(mask)), "set")
    report(progress, 1.0, "islands: done")
    voxels = int(counts[1]) if len(counts) > 1 else 0
    return IslandsResult([segment_id], found, 1, voxels, int(mask.array.sum()) - voxels)


def remove_small_islands(
    session: EditSession,
    segment,
    *,
    min_size_mm3: float,
    fully_connected: bool = False,
    progress: ProgressCallback | None = None,
) -> IslandsResult:
    """Remove the islands smaller than `min_size_mm3` (an island of exactly that size stays)."""
    report(progress, 0.0, "islands: labelling")
    mask, labels, counts, found = _islands(
        session, segment, fully_connected, min_voxels_for(session.grid, min_size_mm3)
    )
    kept = labels > 0
    segment_id = session.segment_id(segment)
    with session.operation("remove small islands"):
        session.apply(segment_id, session.grid.grid_array(kept, session.grid.box_of(mask)), "set")
    report(progress, 1.0, "islands: done")
    voxels = int(counts[1:].sum())
    return IslandsResult([segment_id], found, len(counts) - 1, voxels, int(mask.array.sum()) - voxels)


def split_islands(
    session: EditSession,
    segment,
    *,
    min_size_mm3: float = 0.0,
    max_segments: int | None = None,
    fully_connected: bool = False,
    progress: ProgressCallback | None = None,
) -> IslandsResult:
    """Split a segment's islands into segments: the largest stays in the segment, the others go
    to new segments "<name>_2", "<name>_3", ... (largest first). Islands below `min_size_mm3`
    and beyond `max_segments` are dropped."""
    if max_segments is not None and max_segments < 1:
        raise InputDataError("max_segments must be at least 1.", subject="split islands")
    report(progress, 0.0, "islands: labelling")
    mask, labels, counts, found = _islands(
        session, segment, fully_connected, min_voxels_for(session.grid, min_size_mm3)
    )
    number = len(counts) - 1
    if max_segments is not None:
        number = min(number, max_segments)
    box = session.grid.box_of(mask)
    segment_id = session.segment_id(segment)
    name = session.segment_name(segment_id)
    colour = session.segmentation_node.GetSegmentation().GetSegment(segment_id).GetColor()
    ids = [segment_id]
    with session.operation("split islands"):
        session.apply(segment_id, session.grid.grid_array(labels == 1, box), "set")
        for label in range(2, number + 1):
            new_id = session.add_segment(f"{name}_{label}", color=colour)
            session.apply(new_id, session.grid.grid_array(labels == label, box), "set")
            ids.append(new_id)
    report(progress, 1.0, "islands: done")
    voxels = int(counts[1 : number + 1].sum())
    return IslandsResult(ids, found, number, voxels, int(mask.array.sum()) - voxels)
