"""Vascular territories: which vessel branch perfuses each voxel of an organ, and what is at risk.

Method (measured on the sample phantom, see ``benchmarks/bench_territories.py``): every organ
voxel belongs to the branch it is nearest to along a path that stays inside the organ (geodesic
distance). The distances come from one multi-source Dijkstra run of Slicer's
``vtkImageGrowCutSegment`` (the engine behind "Grow from seeds") on a constant image with
``DistancePenalty = 1``: the intensity term vanishes and an edge between 26-neighbours costs its
length in millimetres, so the filter grows every branch's label by geodesic distance. The mask
input restricts the growth to the organ, so a territory never jumps across the renal sinus or
outside the organ, as a straight-line (Euclidean) nearest-branch rule would. One compiled pass
labels all branches at once. Per-branch fast marching (SimpleITK FastMarchingImageFilter, one
pass per branch, then the nearest) solves the eikonal equation more exactly but measured 1.4 s
for 5 branches on the full-size kidney against 0.35 s here, for Dice 0.95-0.97 against
0.94-0.96: not worth four times the time, and its cost grows with the number of branches.

Seeds are the branch voxels inside the organ or touching it (26-neighbourhood): a branch that
runs partly outside the organ seeds only where it enters; one that never touches it gets no
territory and is reported. Organ voxels no path reaches (an island cut off from every branch)
take the Euclidean-nearest branch and are counted in ``unreached_voxel_count``.

Measured on the sample phantom's left kidney (5 segmental arteries; its truth is the
straight-line nearest intrarenal centreline): Dice 0.94-0.96 per territory, volumes within
-7..+11 % (the straight line crosses the renal sinus, a geodesic cannot); straight-line mode
(``geodesic=False``) gives Dice 0.98-0.99. Full-size grid (0.7 x 0.7 x 1 mm, kidney crop
108 x 69 x 101): 0.33-0.39 s geodesic, 0.09 s straight-line, about 1.4 s from a segmentation
node (segment masks included).

The vessel tree is ``{branch: parent}`` (``None`` for a root). Cutting or clamping a branch puts
at risk its own territory and those of all its descendants.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from scipy import ndimage
from vtk.util.numpy_support import vtk_to_numpy

from VSPCoreLib import terminology
from VSPCoreLib.arrays import (
    GridArray,
    crop_to_content,
    grid_array_to_oriented_image,
    resample_nearest,
    segment_ids,
    segment_mask,
    vtk_image,
)
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report

from . import structures

TERRITORY_OF_TAG = "SlicerVSP.TerritoryOf"
TERRITORY_ORGAN_TAG = "SlicerVSP.TerritoryOrgan"

VesselTree = Mapping[str, "str | None"]

# How much a territory's colour is lightened toward white: territories are large and shown
# behind their vessels, which keep the branch's full colour.
_TERRITORY_LIGHTEN = 0.35
_MAX_BRANCHES = 254  # labels are uint8; 0 is "no territory"


# --------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------


def on_grid(mask: GridArray, ijk_to_ras: np.ndarray, shape_kji: Sequence[int]) -> np.ndarray:
    """A boolean mask resampled onto another grid (nearest neighbour); False outside its extent.

    Arrays on the same lattice (same axes and spacing, whole-voxel offset: what segment masks of
    one reference volume are) are copied by slicing; anything else goes through
    `VSPCoreLib.arrays.resample_nearest`.
    """
    shape_kji = tuple(int(n) for n in shape_kji)
    out = np.zeros(shape_kji, bool)
    source = np.asarray(mask.array)
    if source.size == 0:
        return out
    source = source.astype(bool, copy=False)
    # Index of the source's voxel (0, 0, 0) in the target grid.
    to_target = np.linalg.solve(ijk_to_ras, mask.ijk_to_ras)
    offset = to_target[:3, 3]
    rounded = np.round(offset)
    if np.allclose(to_target[:3, :3], np.eye(3), atol=1e-6) and np.allclose(offset, rounded, atol=1e-3):
        i0, j0, k0 = (int(v) for v in rounded)
        k, j, i = source.shape
        target = []
        origin = []
        for start, size, limit in ((k0, k, shape_kji[0]), (j0, j, shape_kji[1]), (i0, i, shape_kji[2])):
            low, high = max(start, 0), min(start + size, limit)
            if low >= high:
                return out
            target.append(slice(low, high))
            origin.append(slice(low - start, high - start))
        out[tuple(target)] = source[tuple(origin)]
        return out
    # Ties broken in turn (scipy's order-0 resampling rounds them all up: a half-voxel shift).
    return resample_nearest(GridArray(source, mask.ijk_to_ras), ijk_to_ras, shape_kji)


def _padded_crop(mask: GridArray, pad: int = 1) -> GridArray:
    """The mask cropped to its content, then padded with `pad` empty voxels on every side.

    The padding matters: vtkImageGrowCutSegment never grows from the outermost voxel layer.
    """
    cropped = crop_to_content(GridArray(np.asarray(mask.array).astype(bool, copy=False), mask.ijk_to_ras))
    array = np.pad(cropped.array, pad)
    ijk_to_ras = cropped.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = cropped.ras_of([-pad, -pad, -pad])
    return GridArray(array, ijk_to_ras)


# --------------------------------------------------------------------------------------------
# Territories
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BranchTerritory:
    """The organ region one branch perfuses."""

    branch: str
    label: int  # value in TerritoryMap.labels
    voxel_count: int
    volume_ml: float
    percent_of_organ: float
    seed_voxel_count: int  # branch voxels inside or touching the organ; 0: it never reaches it


@dataclass
class TerritoryMap:
    """Territories of one organ: a label array on the organ's (padded) crop and the volumes."""

    labels: GridArray  # uint8 [k, j, i]: 0 outside the organ, n for branches[n - 1]
    branches: list[str]
    territories: dict[str, BranchTerritory]
    organ_volume_ml: float
    unreached_voxel_count: int = 0
    method: str = "geodesic"
    warnings: list[str] = field(default_factory=list)

    @property
    def voxel_volume_ml(self) -> float:
        return self.labels.voxel_volume_mm3 / 1000.0

    @property
    def organ(self) -> np.ndarray:
        return self.labels.array > 0

    def label_of(self, branch: str) -> int:
        try:
            return self.branches.index(branch) + 1
        except ValueError:
            raise InputDataError(
                f"has no territory for branch {branch!r}.",
                subject="territory map",
                fix=f"use one of: {', '.join(self.branches)}.",
            ) from None

    def mask(self, branches: str | Iterable[str]) -> np.ndarray:
        """Boolean [k, j, i] mask (on ``labels``' grid) of the territories of these branches."""
        names = [branches] if isinstance(branches, str) else list(branches)
        values = [self.label_of(name) for name in names]
        return np.isin(self.labels.array, values) if values else np.zeros(self.labels.array.shape, bool)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "organ_volume_mL": round(self.organ_volume_ml, 3),
            "unreached_voxel_count": self.unreached_voxel_count,
            "territories": [
                {
                    "branch": t.branch,
                    "label": t.label,
                    "volume_mL": round(t.volume_ml, 3),
                    "percent_of_organ": round(t.percent_of_organ, 2),
                    "seed_voxel_count": t.seed_voxel_count,
                }
                for t in self.territories.values()
            ],
            "warnings": list(self.warnings),
        }


def compute_territories(
    organ: GridArray,
    branches: Mapping[str, GridArray],
    *,
    geodesic: bool = True,
    organ_name: str = "organ",
    progress: ProgressCallback | None = None,
) -> TerritoryMap:
    """Assign every organ voxel to the branch that perfuses it (nearest inside the organ).

    ``organ`` and the ``branches`` are boolean masks on any grids (a branch is resampled onto
    the organ's grid when it is on another one). ``geodesic=False`` uses straight-line
    distance instead (for comparison; it ignores the organ's shape).
    """
    if not branches:
        raise InputDataError(
            "no vessel branches were given.", subject=organ_name, fix="select the branches to seed from."
        )
    if len(branches) > _MAX_BRANCHES:
        raise InputDataError(
            f"{len(branches)} branches are more than {_MAX_BRANCHES}.",
            subject=organ_name,
            fix="group small branches under their parent.",
        )
    if not np.asarray(organ.array).any():
        raise InputDataError(
            "is empty: there is no organ to divide into territories.",
            subject=organ_name,
            fix="segment the organ first.",
        )
    report(progress, 0.0, "Placing the branches on the organ")
    grid = _padded_crop(organ)
    inside = grid.array
    spacing = grid.spacing_mm
    # Branch voxels in the organ or touching it (26-neighbourhood) seed the growth.
    near = ndimage.binary_dilation(inside, structure=np.ones((3, 3, 3), bool))
    seeds = np.zeros(inside.shape, np.uint8)
    names = list(branches)
    seed_counts: dict[str, int] = {}
    warnings: list[str] = []
    for label, name in enumerate(names, start=1):
        branch = on_grid(branches[name], grid.ijk_to_ras, inside.shape) & near
        branch &= seeds == 0  # a voxel two branches share keeps the first one
        seeds[branch] = label
        seed_counts[name] = int(np.count_nonzero(branch))
        if seed_counts[name] == 0:
            warnings.append(f"branch {name!r} does not reach {organ_name}: it has no territory.")
    if not seeds.any():
        raise InputDataError(
            f"none of the vessel branches ({', '.join(names)}) touches it.",
            subject=organ_name,
            fix="check that the vessel segments and the organ come from the same image and that "
            "the vessels are segmented up to (into) the organ.",
        )
    report(progress, 0.2, "Growing territories inside the organ" if geodesic else "Nearest branches")
    if geodesic:
        labels = _grow_geodesic(seeds, inside | (seeds > 0), spacing)
    else:
        labels = _nearest_euclidean(seeds, spacing)
    labels[~inside] = 0
    unreached = inside & (labels == 0)
    unreached_count = int(np.count_nonzero(unreached))
    if unreached_count:
        # Parts of the organ no branch reaches from inside (islands): nearest in straight line.
        labels[unreached] = _nearest_euclidean(seeds, spacing)[unreached]
        warnings.append(
            f"{unreached_count} voxels of {organ_name} are not connected to any branch inside the "
            "organ; they were given the straight-line nearest branch."
        )
    report(progress, 0.9, "Measuring territories")
    voxel_ml = grid.voxel_volume_mm3 / 1000.0
    counts = np.bincount(labels.ravel(), minlength=len(names) + 1)
    organ_voxels = int(np.count_nonzero(inside))
    territories = {
        name: BranchTerritory(
            branch=name,
            label=label,
            voxel_count=int(counts[label]),
            volume_ml=float(counts[label]) * voxel_ml,
            percent_of_organ=100.0 * float(counts[label]) / organ_voxels,
            seed_voxel_count=seed_counts[name],
        )
        for label, name in enumerate(names, start=1)
    }
    report(progress, 1.0, "Territories ready")
    return TerritoryMap(
        labels=GridArray(labels, grid.ijk_to_ras),
        branches=names,
        territories=territories,
        organ_volume_ml=organ_voxels * voxel_ml,
        unreached_voxel_count=unreached_count,
        method="geodesic" if geodesic else "euclidean",
        warnings=warnings,
    )


def _grow_geodesic(seeds: np.ndarray, domain: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Multi-source geodesic nearest-seed labels inside `domain` (vtkImageGrowCutSegment)."""
    grow = slicer.vtkImageGrowCutSegment()
    # A constant intensity makes the intensity cost zero: the path cost is its length (mm).
    grow.SetIntensityVolume(vtk_image(np.zeros(seeds.shape, np.uint8), spacing_mm))
    grow.SetSeedLabelVolume(vtk_image(seeds, spacing_mm))
    # The mask's non-zero voxels are excluded from the growth.
    grow.SetMaskVolume(vtk_image((~domain).astype(np.uint8), spacing_mm))
    grow.SetDistancePenalty(1.0)
    grow.Update()
    output = grow.GetOutput()
    if output is None or output.GetPointData().GetScalars() is None:
        raise InputDataError("the geodesic region growing produced no result.", subject="territories")
    return vtk_to_numpy(output.GetPointData().GetScalars()).reshape(seeds.shape).astype(np.uint8)


def _nearest_euclidean(seeds: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    _, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing_mm[::-1], return_indices=True)
    return seeds[tuple(nearest)]


# --------------------------------------------------------------------------------------------
# Vessel trees, risk and clamping
# --------------------------------------------------------------------------------------------


def kidney_arterial_tree(side: str) -> dict[str, str | None]:
    """The renal arterial tree of one side: the segmental arteries branch off the renal artery."""
    if side not in ("left", "right"):
        raise InputDataError(f"unknown side {side!r}.", subject="vessel tree", fix="use 'left' or 'right'.")
    root = f"renal_artery_{side}"
    tree: dict[str, str | None] = {root: None}
    for segment, _ in terminology.SEGMENTAL_ARTERY_SEGMENTS:
        tree[f"segmental_artery_{side}_{segment}"] = root
    return tree


def check_tree(tree: VesselTree) -> None:
    """Raise InputDataError when the tree has a cycle (a branch that is its own ancestor)."""
    for start in tree:
        seen = {start}
        node = tree.get(start)
        while node is not None:
            if node in seen:
                raise InputDataError(
                    f"branch {start!r} is its own ancestor (cycle through {node!r}).",
                    subject="vessel tree",
                    fix="give each branch its parent, and None for the root.",
                )
            seen.add(node)
            node = tree.get(node)


def downstream(tree: VesselTree, branches: Iterable[str]) -> list[str]:
    """The branches and all their descendants, in tree order (no duplicates)."""
    check_tree(tree)
    children: dict[str, list[str]] = {}
    for child, parent in tree.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    result: list[str] = []
    stack = list(branches)[::-1]
    while stack:
        node = stack.pop()
        if node in result:
            continue
        result.append(node)
        stack.extend(children.get(node, [])[::-1])
    return result


def _known_names(territories: TerritoryMap, tree: VesselTree, names: Iterable[str], what: str) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in tree and n not in territories.territories]
    if unknown:
        raise InputDataError(
            f"{what} {', '.join(repr(n) for n in unknown)} are neither in the vessel tree nor "
            "vessel branches with a territory.",
            subject="vessel tree",
            fix=f"use branch names from: {', '.join(sorted(set(tree) | set(territories.territories)))}.",
        )
    return names


@dataclass
class RiskReport:
    """Territories put at risk by cutting vessel branches, overall and in the remnant."""

    cut_branches: list[str]
    branches_at_risk: list[str]  # the cut branches and their descendants that have a territory
    at_risk_volume_ml: float  # the whole territories
    at_risk_percent_of_organ: float
    remnant_volume_ml: float | None  # the organ outside the resected region (None: no resection)
    remnant_at_risk_ml: float | None
    remnant_at_risk_percent_of_remnant: float | None
    per_branch: dict[str, dict[str, float]]
    mask: GridArray  # at risk in the remnant (or the whole territories without a resection)
    ignored_branches: list[str] = field(default_factory=list)  # unknown names (strict=False)

    def to_json(self) -> dict:
        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "cut_branches": list(self.cut_branches),
            "ignored_branches": list(self.ignored_branches),
            "branches_at_risk": list(self.branches_at_risk),
            "at_risk_volume_mL": round(self.at_risk_volume_ml, 3),
            "at_risk_percent_of_organ": round(self.at_risk_percent_of_organ, 2),
            "remnant_volume_mL": rounded(self.remnant_volume_ml, 3),
            "remnant_at_risk_mL": rounded(self.remnant_at_risk_ml, 3),
            "remnant_at_risk_percent_of_remnant": rounded(self.remnant_at_risk_percent_of_remnant, 2),
            "per_branch": {
                name: {key: round(value, 3) for key, value in values.items()}
                for name, values in self.per_branch.items()
            },
        }


def territories_at_risk(
    territories: TerritoryMap,
    cut_branches: Iterable[str],
    tree: VesselTree,
    resected: GridArray | None = None,
    *,
    strict: bool = True,
) -> RiskReport:
    """What cutting these branches devascularises: their territories and all downstream ones.

    With ``resected`` (a boolean mask on any grid), the report also gives the part of the
    at-risk territories that stays in the patient (outside the resected region): the remnant at
    risk, in mL and in % of the remnant. Names unknown to both the tree and the territory map
    are refused (a misspelt branch must not read as "nothing at risk"); with ``strict=False``
    they are listed in ``ignored_branches`` instead (e.g. the resection engine's cut veins when
    the tree is arterial).
    """
    cut_branches = list(cut_branches)
    ignored = (
        [] if strict else [n for n in cut_branches if n not in tree and n not in territories.territories]
    )
    cut = _known_names(territories, tree, [n for n in cut_branches if n not in ignored], "cut branches")
    at_risk = [b for b in downstream(tree, cut) if b in territories.territories]
    voxel_ml = territories.voxel_volume_ml
    organ = territories.organ
    risk_mask = territories.mask(at_risk)
    remnant = None
    if resected is not None:
        remnant = organ & ~on_grid(resected, territories.labels.ijk_to_ras, organ.shape)
    per_branch: dict[str, dict[str, float]] = {}
    for name in at_risk:
        own = territories.mask(name)
        entry = {"volume_mL": float(np.count_nonzero(own)) * voxel_ml}
        if remnant is not None:
            entry["remnant_mL"] = float(np.count_nonzero(own & remnant)) * voxel_ml
        per_branch[name] = entry
    at_risk_ml = float(np.count_nonzero(risk_mask)) * voxel_ml
    organ_ml = territories.organ_volume_ml
    remnant_ml = remnant_risk_ml = remnant_risk_percent = None
    if remnant is not None:
        risk_mask = risk_mask & remnant
        remnant_ml = float(np.count_nonzero(remnant)) * voxel_ml
        remnant_risk_ml = float(np.count_nonzero(risk_mask)) * voxel_ml
        remnant_risk_percent = 100.0 * remnant_risk_ml / remnant_ml if remnant_ml > 0 else 0.0
    return RiskReport(
        cut_branches=cut,
        branches_at_risk=at_risk,
        at_risk_volume_ml=at_risk_ml,
        at_risk_percent_of_organ=100.0 * at_risk_ml / organ_ml,
        remnant_volume_ml=remnant_ml,
        remnant_at_risk_ml=remnant_risk_ml,
        remnant_at_risk_percent_of_remnant=remnant_risk_percent,
        per_branch=per_branch,
        mask=GridArray(risk_mask, territories.labels.ijk_to_ras),
        ignored_branches=ignored,
    )


@dataclass
class ClampReport:
    """Selective clamping: the ischaemic part of the organ."""

    clamped_branches: list[str]
    ischaemic_branches: list[str]  # clamped branches and their descendants with a territory
    ischaemic_volume_ml: float
    ischaemic_percent_of_organ: float
    mask: GridArray

    def to_json(self) -> dict:
        return {
            "clamped_branches": list(self.clamped_branches),
            "ischaemic_branches": list(self.ischaemic_branches),
            "ischaemic_volume_mL": round(self.ischaemic_volume_ml, 3),
            "ischaemic_percent_of_organ": round(self.ischaemic_percent_of_organ, 2),
        }


def clamp(territories: TerritoryMap, branches: Iterable[str], tree: VesselTree) -> ClampReport:
    """The organ volume made ischaemic by clamping these branches (and hence their descendants)."""
    clamped = _known_names(territories, tree, branches, "clamped branches")
    ischaemic = [b for b in downstream(tree, clamped) if b in territories.territories]
    mask = territories.mask(ischaemic)
    volume_ml = float(np.count_nonzero(mask)) * territories.voxel_volume_ml
    return ClampReport(
        clamped_branches=clamped,
        ischaemic_branches=ischaemic,
        ischaemic_volume_ml=volume_ml,
        ischaemic_percent_of_organ=100.0 * volume_ml / territories.organ_volume_ml,
        mask=GridArray(mask, territories.labels.ijk_to_ras),
    )


# --------------------------------------------------------------------------------------------
# Liver remnant
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiverRemnant:
    """Future liver remnant (FLR): what stays after the resection, against the whole liver."""

    total_liver_ml: float  # functional: the liver without the tumour when a tumour is given
    resected_ml: float
    remnant_ml: float
    remnant_percent: float  # FLR in % of the (functional) total liver volume

    def to_json(self) -> dict:
        return {
            "total_liver_mL": round(self.total_liver_ml, 3),
            "resected_mL": round(self.resected_ml, 3),
            "remnant_mL": round(self.remnant_ml, 3),
            "remnant_percent": round(self.remnant_percent, 2),
        }


def future_liver_remnant(
    liver: GridArray, resected: GridArray, *, tumour: GridArray | None = None
) -> LiverRemnant:
    """Remnant volume and its share of the total liver volume.

    With ``tumour``, tumour voxels count neither in the total nor in the remnant (the usual
    functional FLR: remnant / (total liver volume - tumour volume)).
    """
    liver_mask = np.asarray(liver.array).astype(bool, copy=False)
    if not liver_mask.any():
        raise InputDataError("is empty.", subject="liver", fix="segment the liver first.")
    shape = liver_mask.shape
    if tumour is not None:
        liver_mask = liver_mask & ~on_grid(tumour, liver.ijk_to_ras, shape)
    cut = liver_mask & on_grid(resected, liver.ijk_to_ras, shape)
    voxel_ml = liver.voxel_volume_mm3 / 1000.0
    total = float(np.count_nonzero(liver_mask)) * voxel_ml
    if total <= 0:
        raise InputDataError(
            "has no liver outside the tumour.", subject="liver", fix="check the liver and tumour segments."
        )
    resected_ml = float(np.count_nonzero(cut)) * voxel_ml
    remnant = total - resected_ml
    return LiverRemnant(total, resected_ml, remnant, 100.0 * remnant / total)


# --------------------------------------------------------------------------------------------
# MRML: reading structures, writing territory segments
# --------------------------------------------------------------------------------------------


def segment_tag(segment, tag: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) and str(value) else None


def structure_segment_ids(segmentation_node, key: str) -> list[str]:
    """IDs of the segments that hold a structure, found by terminology code: its own segment,
    or for a compound structure (e.g. ``kidney_left``) without one, its parts' segments."""
    return structures.structure_segment_ids(segmentation_node, key)


def segments_mask(segmentation_node, ids: Sequence[str], reference_volume) -> GridArray:
    """The union of segments as a mask on the reference volume's grid (cropped; empty if none)."""
    masks = [segment_mask(segmentation_node, segment_id, reference_volume) for segment_id in ids]
    masks = [m for m in masks if m.array.size and m.array.any()]
    if not masks:
        return GridArray(np.zeros((0, 0, 0), bool), np.eye(4))
    return masks[0] if len(masks) == 1 else union_masks(masks)


def structure_mask(segmentation_node, key: str, reference_volume, *, required: bool = True) -> GridArray:
    """The union of a structure's segments as a mask on the reference volume's grid (cropped).

    An absent or empty structure raises InputDataError when ``required``; otherwise it gives an
    empty mask.
    """
    ids = structure_segment_ids(segmentation_node, key) if key in terminology.STRUCTURES else []
    mask = segments_mask(segmentation_node, ids, reference_volume)
    if mask.array.size == 0 and required:
        name = terminology.STRUCTURES[key].name if key in terminology.STRUCTURES else key
        raise InputDataError(
            f"its segment(s) for {key!r} are empty." if ids else f"has no segment coded as {key!r}.",
            subject=segmentation_node.GetName(),
            fix=f"segment the {name} and give the segment its terminology (Slicer's TerminologyEntry), "
            "or name the segment in the plan by name or ID.",
        )
    return mask


def union_masks(masks: Sequence[GridArray]) -> GridArray:
    """The union of masks on one lattice (e.g. cropped segment masks of one reference grid)."""
    corners = []
    base = masks[0].ijk_to_ras
    for m in masks:
        k, j, i = m.array.shape
        offset = np.linalg.solve(base, m.ijk_to_ras)[:3, 3]
        corners.append((offset, offset + np.array([i, j, k])))
    low = np.floor(np.min([c[0] for c in corners], axis=0) + 1e-3).astype(int)
    high = np.ceil(np.max([c[1] for c in corners], axis=0) - 1e-3).astype(int)
    ijk_to_ras = base.copy()
    ijk_to_ras[:3, 3] = GridArray(masks[0].array, base).ras_of(low)
    shape = tuple(int(v) for v in (high - low)[::-1])
    union = np.zeros(shape, bool)
    for m in masks:
        union |= on_grid(m, ijk_to_ras, shape)
    return GridArray(union, ijk_to_ras)


def territories_from_segmentation(
    segmentation_node,
    reference_volume,
    organ_key: str | None,
    branch_keys: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    organ_segment_ids: Sequence[str] | None = None,
    organ_name: str | None = None,
    geodesic: bool = True,
    progress: ProgressCallback | None = None,
) -> TerritoryMap:
    """Territories of a structure of a segmentation node, seeded from its vessel branches.

    Structures are found by their terminology codes (compound structures without a segment of
    their own as the union of their parts), or given as segment IDs: ``organ_segment_ids``
    instead of ``organ_key``, and ``branch_keys`` as {branch name: segment IDs}. Branches
    absent from the segmentation are refused; present branches that do not reach the organ get
    an empty territory and a warning.
    """
    if organ_segment_ids is not None:
        organ = segments_mask(segmentation_node, organ_segment_ids, reference_volume)
        if organ.array.size == 0:
            raise InputDataError(
                "the organ's segments are empty.",
                subject=segmentation_node.GetName(),
                fix="segment the organ first.",
            )
    else:
        if organ_key is None:
            raise InputDataError("no organ was given.", subject="territories", fix="name the organ.")
        organ = structure_mask(segmentation_node, organ_key, reference_volume)
    branches = {}
    missing = []
    for key in branch_keys:
        if isinstance(branch_keys, Mapping):
            mask = segments_mask(segmentation_node, branch_keys[key], reference_volume)
        else:
            mask = structure_mask(segmentation_node, key, reference_volume, required=False)
        if mask.array.size == 0:
            missing.append(key)
        branches[key] = mask
    if missing:
        raise InputDataError(
            f"has no (non-empty) segment for the vessel branch(es) {', '.join(missing)}.",
            subject=segmentation_node.GetName(),
            fix="segment the branches or leave them out of the branch list.",
        )
    return compute_territories(
        organ, branches, geodesic=geodesic, organ_name=organ_name or organ_key or "organ", progress=progress
    )


def territory_colour(branch_colour: Sequence[float]) -> tuple[float, float, float]:
    """The branch colour lightened toward white, so that the vessel stands out in its territory."""
    return tuple(float(c) + (1.0 - float(c)) * _TERRITORY_LIGHTEN for c in branch_colour)  # type: ignore[return-value]


def _branch_display(
    segmentation_node, key: str, segment_ids_of_branch: Sequence[str] | None = None
) -> tuple[str, tuple[float, float, float]]:
    """Display name and colour of a branch: from its segment when there is one, else its term."""
    if segmentation_node is not None:
        ids = list(segment_ids_of_branch or [])
        if not ids and key in terminology.STRUCTURES:
            ids = structure_segment_ids(segmentation_node, key)
        if ids:
            segment = segmentation_node.GetSegmentation().GetSegment(ids[0])
            return segment.GetName(), tuple(segment.GetColor())  # type: ignore[return-value]
    t = terminology.STRUCTURES.get(key)
    if t is not None:
        return t.name, t.colour
    # An unknown branch still gets a stable colour of its own (golden-angle hue steps).
    hue = (sum(map(ord, key)) * 0.618034) % 1.0
    return key, _hsv_to_rgb(hue, 0.6, 0.9)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def add_territory_segments(
    scene,
    territories: TerritoryMap,
    organ_key: str | None,
    *,
    reference_volume=None,
    source_segmentation=None,
    name: str | None = None,
    organ_segment_id: str | None = None,
    branch_segments: Mapping[str, Sequence[str]] | None = None,
):
    """A new segmentation node with one segment per non-empty territory.

    Segments are named "Territory <branch name>", coloured from the branch colour (lightened),
    coded with the organ's terminology (a territory is a part of the organ) and tagged
    ``SlicerVSP.TerritoryOf`` = branch key and ``SlicerVSP.TerritoryOrgan`` = organ key.
    Branch names and colours come from ``source_segmentation`` when it holds the branch (found
    by code, or as ``branch_segments`` {branch: segment IDs}). ``organ_segment_id``, a segment
    holding the whole organ, gives the organ's terminology entry and name when ``organ_key`` is
    None or the segment codes it.
    """
    organ_term = terminology.STRUCTURES.get(organ_key) if organ_key else None
    organ_entry = terminology.terminology_entry(organ_term) if organ_term is not None else ""
    organ_name = organ_term.name if organ_term is not None else (organ_key or "organ")
    if source_segmentation is not None:
        whole = [organ_segment_id] if organ_segment_id else []
        if not whole and organ_term is not None and not organ_term.parts:
            whole = structure_segment_ids(source_segmentation, organ_key)
        if organ_term is not None and organ_term.parts and not whole:
            # A compound organ's own segment, if it has one (its parts carry other codes).
            match = structures.find_structure(source_segmentation, organ_key)
            whole = match.segment_ids if match is not None and match.whole else []
        if whole:
            segment = source_segmentation.GetSegmentation().GetSegment(whole[0])
            entry = segment_tag(segment, "TerminologyEntry")
            if entry:
                organ_entry = entry
            if organ_term is None:
                organ_name = segment.GetName()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"Territories {organ_name}")
    node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    image = grid_array_to_oriented_image(territories.labels)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, node, "", ""):
        scene.RemoveNode(node)
        raise InputDataError("the territories could not be stored as segments.", subject=node.GetName())
    segmentation = node.GetSegmentation()
    by_label = {
        segmentation.GetSegment(segment_id).GetLabelValue(): segment_id for segment_id in segment_ids(node)
    }
    for label, branch in enumerate(territories.branches, start=1):
        segment_id = by_label.get(label)
        if segment_id is None:
            continue  # an empty territory has no segment
        segment = segmentation.GetSegment(segment_id)
        branch_name, branch_colour = _branch_display(
            source_segmentation, branch, (branch_segments or {}).get(branch)
        )
        segment.SetName(f"Territory {branch_name}")
        segment.SetColor(*territory_colour(branch_colour))
        if organ_entry:
            segment.SetTag("TerminologyEntry", organ_entry)
        segment.SetTag(TERRITORY_OF_TAG, branch)
        segment.SetTag(TERRITORY_ORGAN_TAG, organ_key or organ_name)
    return node
