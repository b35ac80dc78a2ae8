"""Logical operations between segments: union, subtract, intersect, invert, copy, clear.

Each changes only its target segment, through the edit session (one undo step); the other
segment is read, never modified. Masks are compared on the reference grid, voxel by voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from VSPCoreLib.progress import ProgressCallback, report

from .editing import EditSession, mask_in_box


@dataclass(frozen=True)
class LogicalResult:
    segment_id: str
    voxels_before: int
    voxels_after: int


def _count(session: EditSession, segment_id: str) -> int:
    return int(session.mask(segment_id).array.sum())


def _finish(session: EditSession, segment_id: str, before: int, name: str, apply) -> LogicalResult:
    with session.operation(name):
        apply()
    return LogicalResult(segment_id, before, _count(session, segment_id))


def union(session: EditSession, target, other, *, progress: ProgressCallback | None = None) -> LogicalResult:
    """target := target ∪ other."""
    report(progress, 0.0, "union")
    target_id, other_mask = session.segment_id(target), session.mask(other)
    before = _count(session, target_id)
    return _finish(session, target_id, before, "union", lambda: session.apply(target_id, other_mask, "add"))


def subtract(
    session: EditSession, target, other, *, progress: ProgressCallback | None = None
) -> LogicalResult:
    """target := target minus other."""
    report(progress, 0.0, "subtract")
    target_id, other_mask = session.segment_id(target), session.mask(other)
    before = _count(session, target_id)
    return _finish(
        session, target_id, before, "subtract", lambda: session.apply(target_id, other_mask, "remove")
    )


def intersect(
    session: EditSession, target, other, *, progress: ProgressCallback | None = None
) -> LogicalResult:
    """target := target ∩ other."""
    report(progress, 0.0, "intersect")
    target_id = session.segment_id(target)
    target_mask = session.mask(target_id)
    before = int(target_mask.array.sum())
    if target_mask.array.size:
        box = session.grid.box_of(target_mask)
        result = target_mask.array & mask_in_box(session.grid, session.mask(other, box), box)
        result_mask = session.grid.grid_array(result, box)
    else:
        result_mask = target_mask
    return _finish(
        session, target_id, before, "intersect", lambda: session.apply(target_id, result_mask, "set")
    )


def invert(
    session: EditSession, target, *, roi=None, progress: ProgressCallback | None = None
) -> LogicalResult:
    """target := every voxel of the reference grid (or of the ROI) that is not in target now."""
    report(progress, 0.0, "invert")
    target_id = session.segment_id(target)
    region = session.region(roi) if roi is not None else None
    box = region.box if region is not None else session.grid.box
    current = session.mask(target_id, box).array
    before = _count(session, target_id)
    result = ~current
    if region is not None and region.mask is not None:
        result &= region.mask
    result_mask = session.grid.grid_array(result, box)
    return _finish(session, target_id, before, "invert", lambda: session.apply(target_id, result_mask, "set"))


def copy(session: EditSession, target, source, *, progress: ProgressCallback | None = None) -> LogicalResult:
    """target := source (a new segment is created for a new target name)."""
    report(progress, 0.0, "copy")
    source_mask = session.mask(source)
    holder: dict[str, str] = {}

    def apply() -> None:
        holder["id"] = session.result_segment(str(target))
        session.apply(holder["id"], source_mask, "set")

    existing = session.find_segment(target)
    before = _count(session, existing) if existing else 0
    with session.operation("copy"):
        apply()
    return LogicalResult(holder["id"], before, int(np.count_nonzero(source_mask.array)))


def clear(session: EditSession, target, *, progress: ProgressCallback | None = None) -> LogicalResult:
    """target := empty."""
    report(progress, 0.0, "clear")
    target_id = session.segment_id(target)
    empty = session.mask(target_id)
    before = int(empty.array.sum())
    cleared = session.grid.grid_array(np.zeros(empty.array.shape, bool), session.grid.box_of(empty))
    return _finish(session, target_id, before, "clear", lambda: session.apply(target_id, cleared, "set"))
