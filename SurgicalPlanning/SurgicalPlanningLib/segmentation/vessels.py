"""Vessel helpers: the part of a contrast threshold connected to a seed, and a vessel tree split
into branches from labelled seed points.

Connectivity. The threshold inside the ROI is labelled into islands (``vtkITKIslandMath``, fully
connected: thin oblique vessels touch only along edges at CT resolution) and the islands that hold
a seed are kept, so bone and other vessels that do not touch the seeded tree inside the ROI drop
out.

Branches. Each voxel of the tree goes to the branch whose seed it reaches first along the tree:
a geodesic Voronoi partition of the tree. It is computed with Slicer's ``vtkImageGrowCutSegment``
run on a constant intensity with a distance penalty of 1 per mm and everything outside the tree
masked out: its Dijkstra search then sums only the step lengths (26-neighbour steps in mm), so
the label that wins a voxel is the seed with the shortest path inside the tree. This keeps the
work in Slicer's compiled engine; the 26-neighbour path length overestimates the Euclidean
length by at most ~8%, equally for every seed, which moves boundaries by a fraction of a voxel
on tubes. A branch boundary falls half-way (along the tree) between neighbouring seeds, so seeds
are best placed at similar distances from each bifurcation. Tree parts that no seed reaches
(separate pieces) stay unassigned and are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report

from .editing import Box, EditSession, LabelledPoint, labelled_points, voxel_volume_ml
from .grow import run_growcut
from .islands import label_islands
from .threshold import get_preset


@dataclass(frozen=True)
class ConnectedResult:
    segment_id: str
    lower_hu: float
    upper_hu: float
    voxels: int
    volume_ml: float
    islands_in_threshold: int


@dataclass(frozen=True)
class BranchesResult:
    segment_ids: dict[str, str]  # branch label -> segment ID
    voxels: dict[str, int]
    volume_ml: dict[str, float]
    unassigned_voxels: int


def _seed_points(seeds) -> list[LabelledPoint]:
    """Seeds as labelled points: a markups node, (label, ras) pairs, or bare RAS point(s)."""
    if seeds is None:
        return []
    if hasattr(seeds, "GetNumberOfControlPoints"):
        return labelled_points(seeds)
    try:
        bare = np.asarray(seeds, dtype=float)
    except (TypeError, ValueError):
        return labelled_points(seeds)
    if bare.size == 0 or bare.size % 3:
        raise InputDataError(f"seeds {seeds!r} are not RAS points.", subject="vessels")
    return [LabelledPoint(f"seed {n + 1}", tuple(p)) for n, p in enumerate(bare.reshape(-1, 3).tolist())]  # type: ignore[arg-type]


def _nearest_in(mask: np.ndarray, box: Box, session: EditSession, point: LabelledPoint, snap_mm: float):
    """The voxel of `mask` nearest to the point, within snap_mm (index into the box's array)."""
    grid = session.grid
    centre = grid.ras_to_ijk(point.ras)
    nearest = np.round(centre).astype(int)
    if not all(box.lo[a] <= nearest[a] < box.hi[a] for a in range(3)):
        raise InputDataError(
            f"the seed {point.label!r} at RAS {tuple(round(v, 1) for v in point.ras)} lies outside the region.",
            subject="vessels",
            fix="move the seed (or the ROI) so that the ROI holds it.",
        )
    index = (nearest[2] - box.lo[2], nearest[1] - box.lo[1], nearest[0] - box.lo[0])
    if mask[index]:
        return index
    reach = grid.voxels_for_mm(snap_mm)
    local = Box(
        tuple(int(v) for v in nearest - reach),  # type: ignore[arg-type]
        tuple(int(v) for v in nearest + reach + 1),  # type: ignore[arg-type]
    ).intersect(box)
    sub = mask[local.slices_in(box)]
    if sub.any():
        kk, jj, ii = np.nonzero(sub)
        offsets = np.column_stack([ii + local.lo[0], jj + local.lo[1], kk + local.lo[2]]) - centre
        distances = np.linalg.norm(offsets * grid.spacing_mm, axis=1)
        best = int(np.argmin(distances))
        if distances[best] <= snap_mm:
            return (
                kk[best] + local.lo[2] - box.lo[2],
                jj[best] + local.lo[1] - box.lo[1],
                ii[best] + local.lo[0] - box.lo[0],
            )
    return None


def connected_to_seed(
    session: EditSession,
    segment,
    seeds,
    *,
    lower_hu: float | None = None,
    upper_hu: float | None = None,
    preset: str | None = "contrast_vessels",
    roi=None,
    fully_connected: bool = True,
    snap_mm: float = 3.0,
    progress: ProgressCallback | None = None,
) -> ConnectedResult:
    """Write into `segment` the voxels of a threshold (HU range or preset) that are connected to
    the seed point(s) inside the ROI. A seed just outside the threshold snaps to the nearest
    thresholded voxel within snap_mm."""
    if lower_hu is not None or upper_hu is not None:
        if lower_hu is None or upper_hu is None:
            raise InputDataError("give both lower_hu and upper_hu.", subject="connected to seed")
        lower, upper = float(lower_hu), float(upper_hu)
    elif preset is not None:
        chosen = get_preset(preset)
        lower, upper = chosen.lower_hu, chosen.upper_hu
    else:
        raise InputDataError("needs a HU range or a preset.", subject="connected to seed")
    points = _seed_points(seeds)
    if not points:
        raise InputDataError("needs at least one seed point.", subject="connected to seed")
    report(progress, 0.0, "connected to seed: thresholding")
    region = session.region(roi)
    box = region.box
    values = session.source(box).array
    inside = (values >= lower) & (values <= upper)
    if region.mask is not None:
        inside &= region.mask
    report(progress, 0.3, "connected to seed: labelling islands")
    labels, counts, found = label_islands(inside, fully_connected=fully_connected)
    keep = set()
    for point in points:
        index = _nearest_in(inside, box, session, point, snap_mm)
        if index is None:
            ijk = np.round(session.grid.ras_to_ijk(point.ras)).astype(int)
            value = values[ijk[2] - box.lo[2], ijk[1] - box.lo[1], ijk[0] - box.lo[0]]
            raise InputDataError(
                f"the seed {point.label!r} ({value:g} HU) is not within {snap_mm:g} mm of a voxel "
                f"in {lower:g}..{upper:g} HU.",
                subject="connected to seed",
                fix="place the seed inside the contrast-filled lumen, or widen the range.",
            )
        keep.add(int(labels[index]))
    result = np.isin(labels, sorted(keep))
    voxels = int(np.count_nonzero(result))
    report(progress, 0.8, "connected to seed: applying")
    with session.operation("connected to seed"):
        segment_id = session.result_segment(str(segment))
        session.apply(segment_id, session.grid.grid_array(result, box), "set")
    report(progress, 1.0, "connected to seed: done")
    return ConnectedResult(segment_id, lower, upper, voxels, voxel_volume_ml(session.grid, voxels), found)


def split_tree(
    session: EditSession,
    tree_segment,
    seeds,
    *,
    snap_mm: float = 5.0,
    colors: dict[str, Sequence[float]] | None = None,
    progress: ProgressCallback | None = None,
) -> BranchesResult:
    """Split a vessel tree segment into one segment per seed label (the label is the segment's
    name; several points may share a label). See the module text for the method. The tree
    segment itself is not changed; branch segments of the same names are replaced."""
    points = _seed_points(seeds)
    if not points:
        raise InputDataError("needs labelled seed points.", subject="split vessel tree")
    names = list(dict.fromkeys(point.label for point in points))
    if len(names) > 255:
        raise InputDataError("at most 255 branches can be split at once.", subject="split vessel tree")
    report(progress, 0.0, "split vessel tree: reading the tree")
    tree_mask = session.require_mask(tree_segment, role="vessel tree")
    # One voxel of (excluded) padding: grow cut never propagates from an image's outer layer.
    inner = session.grid.box_of(tree_mask)
    box = inner.expand(1)
    tree = np.pad(tree_mask.array, 1)
    seed_labels = np.zeros(tree.shape, np.uint8)
    for point in points:
        index = _nearest_in(tree, box, session, point, snap_mm)
        if index is None:
            raise InputDataError(
                f"the seed {point.label!r} is not within {snap_mm:g} mm of the tree "
                f"{session.segment_name(tree_segment)!r}.",
                subject="split vessel tree",
                fix="place each seed on its branch.",
            )
        seed_labels[index] = names.index(point.label) + 1
    report(progress, 0.2, "split vessel tree: geodesic partition")
    labels = run_growcut(
        np.zeros(tree.shape, np.uint8), seed_labels, ~tree, session.grid.spacing_mm, distance_penalty=1.0
    )
    labels[~tree] = 0
    results = {name: labels == n + 1 for n, name in enumerate(names)}
    unassigned = int(np.count_nonzero(tree & (labels == 0)))
    report(progress, 0.8, "split vessel tree: applying")
    segment_ids: dict[str, str] = {}
    with session.operation("split vessel tree"):
        for name, mask in results.items():
            colour = (colors or {}).get(name)
            segment_ids[name] = session.find_segment(name) or session.add_segment(name, color=colour)
            # Without the padding again: it never holds tree voxels.
            session.apply(segment_ids[name], session.grid.grid_array(mask[1:-1, 1:-1, 1:-1], inner), "set")
    voxels = {name: int(np.count_nonzero(mask)) for name, mask in results.items()}
    report(progress, 1.0, "split vessel tree: done")
    return BranchesResult(
        segment_ids,
        voxels,
        {name: voxel_volume_ml(session.grid, n) for name, n in voxels.items()},
        unassigned,
    )
