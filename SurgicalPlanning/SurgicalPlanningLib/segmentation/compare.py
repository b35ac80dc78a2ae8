"""Comparing two segmentations of one structure: an AI result against its edited version.

Both masks are compared on one grid: the reference volume's when given, else the first
segment's. A mask on another grid is resampled onto it (nearest neighbour, Slicer's resampler)
and the result says so (``resampled``). Measures:

- ``dice`` = 2|A∩B| / (|A| + |B|), ``jaccard`` = |A∩B| / |A∪B| (both 1 for two empty masks);
- ``volume_a_ml``, ``volume_b_ml``, ``volume_difference_ml`` = B − A, and
  ``volume_difference_percent`` = (B − A) / A × 100;
- surface distances in mm: the surface of a mask is its voxels with a 6-neighbour outside it;
  the distance from each surface voxel of one mask to the nearest surface voxel of the other
  comes from an exact Euclidean distance transform with the grid's (anisotropic) spacing
  (``scipy.ndimage.distance_transform_edt(sampling=spacing)``), computed in the union of the
  two masks' boxes plus a margin.
  ``surface_distance_mean_mm`` is the average symmetric surface distance (all distances of
  both directions pooled), ``hausdorff_95_mm`` the larger of the two directed 95th
  percentiles (as MONAI and the BraTS/KiTS evaluations define HD95) and ``hausdorff_max_mm``
  the Hausdorff distance. They are None when a mask is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from VSPCoreLib.arrays import (
    GridArray,
    crop_to_content,
    lattice_offset,
    resample_nearest,
    segment_mask,
    segment_on_reference_grid,
)
from VSPCoreLib.errors import InputDataError

MARGIN_VOXELS = 2


@dataclass
class Comparison:
    """Agreement of mask B with mask A (A is the reference: volume differences are B − A)."""

    dice: float
    jaccard: float
    voxels_a: int
    voxels_b: int
    voxels_both: int
    volume_a_ml: float
    volume_b_ml: float
    volume_difference_ml: float
    volume_difference_percent: float | None
    surface_distance_mean_mm: float | None
    hausdorff_95_mm: float | None
    hausdorff_max_mm: float | None
    spacing_mm: tuple[float, float, float]
    resampled: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """JSON-ready values; the units are in the key names."""
        return {
            "dice": self.dice,
            "jaccard": self.jaccard,
            "voxels_a": self.voxels_a,
            "voxels_b": self.voxels_b,
            "voxels_both": self.voxels_both,
            "volume_a_mL": self.volume_a_ml,
            "volume_b_mL": self.volume_b_ml,
            "volume_difference_mL": self.volume_difference_ml,
            "volume_difference_percent": self.volume_difference_percent,
            "surface_distance_mean_mm": self.surface_distance_mean_mm,
            "hausdorff_95_mm": self.hausdorff_95_mm,
            "hausdorff_max_mm": self.hausdorff_max_mm,
            "spacing_mm": list(self.spacing_mm),
            "resampled": self.resampled,
            "warnings": list(self.warnings),
        }


def compare_segments(
    segmentation_a, segment_id_a: str, segmentation_b, segment_id_b: str, reference_volume=None
) -> Comparison:
    """Compare segment B with segment A (e.g. the edited segment with the AI result).

    On `reference_volume`'s grid when given (either segment resampled onto it if needed),
    else on segment A's grid (B resampled onto it if needed).
    """
    from .statistics import check_inside_volume

    resampled = False
    if reference_volume is not None:
        for segmentation, segment_id in ((segmentation_a, segment_id_a), (segmentation_b, segment_id_b)):
            if not segment_on_reference_grid(segmentation, segment_id, reference_volume):
                check_inside_volume(segmentation, segment_id, reference_volume)
                resampled = True
    mask_a = segment_mask(segmentation_a, segment_id_a, reference_volume, crop=True)
    mask_b = segment_mask(segmentation_b, segment_id_b, reference_volume, crop=True)
    if reference_volume is None and not mask_a.array.size:
        # An empty A has no grid of its own worth keeping: measure on B's.
        mask_a = GridArray(np.zeros((0, 0, 0), bool), mask_b.ijk_to_ras.copy())
    comparison = compare_masks(mask_a, mask_b)
    if resampled and not comparison.resampled:
        comparison.resampled = True
        comparison.warnings.insert(0, "resampled onto the reference volume's grid (nearest neighbour)")
    return comparison


def compare_masks(a: GridArray, b: GridArray) -> Comparison:
    """Compare boolean mask B with mask A, on A's grid (B is resampled onto it if needed)."""
    _check_orthogonal(a)
    warnings: list[str] = []
    resampled = False
    a = GridArray(np.asarray(a.array, dtype=bool), a.ijk_to_ras)
    b = GridArray(np.asarray(b.array, dtype=bool), b.ijk_to_ras)
    if b.array.any() and lattice_offset(b, a.ijk_to_ras) is None:
        b = resample_onto_lattice(b, a.ijk_to_ras)
        resampled = True
        warnings.append("mask B was resampled onto mask A's grid (nearest neighbour)")
    a = crop_to_content(a) if a.array.size else a
    b = crop_to_content(b) if b.array.size else b
    full_a, full_b, spacing_kji = _common_window(a, b)

    voxels_a = int(np.count_nonzero(full_a))
    voxels_b = int(np.count_nonzero(full_b))
    both = int(np.count_nonzero(full_a & full_b))
    union = voxels_a + voxels_b - both
    voxel_ml = a.voxel_volume_mm3 / 1000.0
    volume_a, volume_b = voxels_a * voxel_ml, voxels_b * voxel_ml
    dice = 2.0 * both / (voxels_a + voxels_b) if voxels_a + voxels_b else 1.0
    jaccard = both / union if union else 1.0
    if not voxels_a and not voxels_b:
        warnings.append("both masks are empty")
    elif not voxels_a or not voxels_b:
        warnings.append(f"mask {'A' if not voxels_a else 'B'} is empty: no surface distances")

    mean = hd95 = hd_max = None
    if voxels_a and voxels_b:
        a_to_b, b_to_a = directed_surface_distances(full_a, full_b, spacing_kji)
        pooled = np.concatenate([a_to_b, b_to_a])
        mean = float(pooled.mean())
        hd95 = float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))
        hd_max = float(pooled.max())
    return Comparison(
        dice=dice,
        jaccard=jaccard,
        voxels_a=voxels_a,
        voxels_b=voxels_b,
        voxels_both=both,
        volume_a_ml=volume_a,
        volume_b_ml=volume_b,
        volume_difference_ml=volume_b - volume_a,
        volume_difference_percent=(volume_b - volume_a) / volume_a * 100.0 if voxels_a else None,
        surface_distance_mean_mm=mean,
        hausdorff_95_mm=hd95,
        hausdorff_max_mm=hd_max,
        spacing_mm=tuple(float(s) for s in a.spacing_mm),  # type: ignore[arg-type]
        resampled=resampled,
        warnings=warnings,
    )


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with at least one 6-neighbour outside it (outside the array counts)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def directed_surface_distances(
    a: np.ndarray, b: np.ndarray, spacing_kji: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of A to B's surface, and from B's to A's.

    `a` and `b` are boolean arrays of one shape on one grid; `spacing_kji` is the voxel size
    along the array axes (k, j, i).
    """
    surface_a, surface_b = surface_voxels(a), surface_voxels(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_kji)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing_kji)
    return to_b[surface_a], to_a[surface_b]


def resample_onto_lattice(mask: GridArray, ijk_to_ras: np.ndarray) -> GridArray:
    """The mask resampled (nearest neighbour, `VSPCoreLib.arrays.resample_nearest`: ties broken
    in turn, not all up) onto the lattice of `ijk_to_ras`, over an extent that covers it whole;
    the result is cropped to its content."""
    if not mask.array.any():
        return GridArray(np.zeros((0, 0, 0), bool), ijk_to_ras.copy())
    k, j, i = mask.array.shape
    corners = np.array([[x, y, z] for x in (-0.5, i - 0.5) for y in (-0.5, j - 0.5) for z in (-0.5, k - 0.5)])
    ras = mask.ras_of(corners)
    to_ijk = np.linalg.inv(ijk_to_ras)
    ijk = ras @ to_ijk[:3, :3].T + to_ijk[:3, 3]
    low = np.floor(ijk.min(axis=0)).astype(int) - 1
    high = np.ceil(ijk.max(axis=0)).astype(int) + 1
    corner = np.asarray(ijk_to_ras, float).copy()
    corner[:3, 3] = corner[:3, :3] @ low + corner[:3, 3]
    shape = tuple(int(n) for n in (high - low + 1)[::-1])
    array = resample_nearest(
        GridArray(mask.array.astype(bool), mask.ijk_to_ras), corner, shape, index_offset=low
    )
    return crop_to_content(GridArray(array, corner))


def _check_orthogonal(grid: GridArray) -> None:
    axes = grid.ijk_to_ras[:3, :3] / grid.spacing_mm
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise InputDataError(
            "the grid's axes are not orthogonal (sheared grid); surface distances need an orthogonal one.",
            subject="segment comparison",
            fix="resample the segmentation onto an orthogonal grid (e.g. the CT volume's).",
        )


def _common_window(a: GridArray, b: GridArray) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Both masks pasted into one array covering both (plus a margin), on A's lattice."""
    spacing = a.spacing_mm
    spacing_kji = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    boxes = []
    if a.array.size:
        boxes.append((np.zeros(3, int), np.array(a.array.shape[::-1])))
    if b.array.size:
        offset = lattice_offset(b, a.ijk_to_ras)
        if offset is None:
            raise InputDataError("the two masks are not on one grid.", subject="segment comparison")
        boxes.append((np.array(offset), np.array(offset) + np.array(b.array.shape[::-1])))
    if not boxes:
        return np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool), spacing_kji
    low = np.min([box[0] for box in boxes], axis=0) - MARGIN_VOXELS
    high = np.max([box[1] for box in boxes], axis=0) + MARGIN_VOXELS
    shape_kji = tuple(int(v) for v in (high - low)[::-1])
    arrays = []
    for grid, box in ((a, boxes[0] if a.array.size else None), (b, boxes[-1] if b.array.size else None)):
        full = np.zeros(shape_kji, bool)
        if box is not None:
            i0, j0, k0 = (int(v) for v in box[0] - low)
            k, j, i = grid.array.shape
            full[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i] = grid.array
        arrays.append(full)
    return arrays[0], arrays[1], spacing_kji
