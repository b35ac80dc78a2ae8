"""Segment statistics: size, shape, position, connectivity and CT numbers of every segment.

Everything is measured on the source volume's grid. A segment whose binary labelmap is on
another grid is resampled onto it (nearest neighbour, Slicer's own resampler; the row says
``resampled``); a segment reaching outside the volume is refused, since its voxels there have no
CT number and would silently drop out of the volume.

How each number is obtained:

- ``voxel_count``, ``volume_mm3``, ``volume_mL``: voxels on the grid times the voxel volume.
- ``surface_area_mm2``: ITK's perimeter estimate of the labelmap (``itk::ShapeLabelObject``'s
  Crofton-type count of boundary intercepts over 13 directions), through Slicer's
  ``vtkITKLabelShapeStatistics``: what Slicer's Segment Statistics reports as the labelmap
  surface area. It is not a marching-cubes area, which overestimates a voxelised sphere by ~8 %.
- ``centroid_ras_mm``, ``oriented_bounding_box``: ``vtkITKLabelShapeStatistics`` (centroid of
  the voxel centres; box along the principal axes, covering whole voxels).
- ``bounding_box_ras_mm``: the RAS axis-aligned box of the voxel centres (on an oblique grid
  tighter than the box of the IJK extent).
- ``max_diameter_mm`` (Feret): the largest distance between two voxel centres of the segment,
  ITK's definition. ITK's all-pairs search takes seconds for an organ; here the candidates are
  the vertices of the convex hull of the voxel centres (found among the row-end voxels), which
  hold the same answer.
- ``islands``: ITK's connected components with full connectivity, i.e. **26-connectivity**
  (voxels touching at a corner are one island), as Slicer's Islands effect counts them.
- ``hu_*``: mean, SD (population), min, max and the 5/25/50/75/95th percentiles (numpy's linear
  interpolation) of the volume's voxels inside the segment; exact, through a histogram, for
  integer CT.

Each segment is cropped to its extent first, and segments sharing a labelmap layer are read
from it directly (:func:`.arrays.segment_masks`): the 15 segments of a kidney-tumour plan on
the full-size sample case (512 x 512 x 300) take under a second on two cores; body-wide shells
(subcutaneous fat, muscle) cost about 0.25 s each (``benchmarks/bench_statistics.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import numpy_to_vtk

from VSPCoreLib.arrays import (
    GridArray,
    array_to_vtk_matrix,
    lattice_offset,
    segment_ids,
    segment_mask,
    segment_masks,
    segment_on_reference_grid,
    volume_ijk_to_ras,
)
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report

from ..structures import structure_key_of_segment

Vec3 = tuple[float, float, float]

ISLAND_CONNECTIVITY = 26
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class OrientedBox:
    """A box along the segment's principal axes: unit axes (RAS, longest extent first)."""

    axes_ras: tuple[Vec3, Vec3, Vec3]
    extent_mm: Vec3
    centre_ras_mm: Vec3

    def to_json(self) -> dict:
        return {
            "axes_ras": [list(axis) for axis in self.axes_ras],
            "extent_mm": list(self.extent_mm),
            "centre_ras_mm": list(self.centre_ras_mm),
        }


@dataclass
class SegmentStatistics:
    """Statistics of one segment. Sizes in mm, mm², mm³ and mL; positions in RAS mm; CT in HU.

    An empty segment has zero counts and None for everything that needs a voxel.
    """

    segment_id: str
    name: str
    structure_key: str | None
    voxel_count: int = 0
    volume_mm3: float = 0.0
    volume_ml: float = 0.0
    surface_area_mm2: float = 0.0
    centroid_ras_mm: Vec3 | None = None
    bounding_box_ras_mm: tuple[Vec3, Vec3] | None = None  # (minimum corner, maximum corner)
    max_diameter_mm: float | None = None
    oriented_bounding_box: OrientedBox | None = None
    islands: int = 0
    hu_mean: float | None = None
    hu_sd: float | None = None
    hu_min: float | None = None
    hu_max: float | None = None
    hu_p5: float | None = None
    hu_p25: float | None = None
    hu_p50: float | None = None
    hu_p75: float | None = None
    hu_p95: float | None = None
    resampled: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.voxel_count == 0

    def to_json(self) -> dict:
        """JSON-ready values; the units are in the key names."""
        box = self.bounding_box_ras_mm
        return {
            "segment_id": self.segment_id,
            "segment": self.name,
            "structure_key": self.structure_key,
            "voxel_count": self.voxel_count,
            "volume_mm3": self.volume_mm3,
            "volume_mL": self.volume_ml,
            "surface_area_mm2": self.surface_area_mm2,
            "centroid_ras_mm": list(self.centroid_ras_mm) if self.centroid_ras_mm else None,
            "bounding_box_ras_mm": {"min": list(box[0]), "max": list(box[1])} if box else None,
            "max_diameter_mm": self.max_diameter_mm,
            "oriented_bounding_box": (
                self.oriented_bounding_box.to_json() if self.oriented_bounding_box else None
            ),
            "islands": self.islands,
            "island_connectivity": ISLAND_CONNECTIVITY,
            **{name: getattr(self, name) for name in HU_FIELDS},
            "resampled": self.resampled,
            "warnings": list(self.warnings),
        }


HU_FIELDS = ("hu_mean", "hu_sd", "hu_min", "hu_max") + tuple(f"hu_p{q}" for q in PERCENTILES)


def to_json(rows: Iterable[SegmentStatistics]) -> list[dict]:
    """The rows as JSON-ready dictionaries (units in the key names)."""
    return [row.to_json() for row in rows]


# --------------------------------------------------------------------------------------------
# Computing
# --------------------------------------------------------------------------------------------


def compute_segment_statistics(
    segmentation_node,
    volume_node=None,
    ids: Sequence[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> list[SegmentStatistics]:
    """Statistics of the given segments (all by default), in segment order.

    With `volume_node` (the source CT), everything is measured on its grid and the HU values
    come from it; without, on the segmentation's own grid and without HU values.
    """
    ids = list(ids) if ids is not None else segment_ids(segmentation_node)
    volume_grid = _check_volume(volume_node) if volume_node is not None else None
    resampled = {
        segment_id: volume_node is not None
        and not segment_on_reference_grid(segmentation_node, segment_id, volume_node)
        for segment_id in ids
    }
    for segment_id, needs_resampling in resampled.items():
        if needs_resampling:
            check_inside_volume(segmentation_node, segment_id, volume_node)
    report(progress, 0.0, "reading segments")
    masks = segment_masks(segmentation_node, ids, volume_node)
    segmentation = segmentation_node.GetSegmentation()
    rows = []
    for index, segment_id in enumerate(ids):
        segment = segmentation.GetSegment(segment_id)
        report(progress, 0.1 + 0.9 * index / max(len(ids), 1), f"measuring {segment.GetName()}")
        row = SegmentStatistics(
            segment_id=segment_id,
            name=segment.GetName(),
            # What the segment's terminology codes stand for (None: no code the table knows).
            structure_key=structure_key_of_segment(segment),
            resampled=resampled[segment_id],
        )
        if row.resampled:
            row.warnings.append(
                "the segment's labelmap is on another grid than the volume; it was resampled "
                "(nearest neighbour) onto the volume's grid"
            )
        measure_mask(masks[segment_id], volume_grid, row, subject=segmentation_node.GetName())
        rows.append(row)
    report(progress, 1.0, "segment statistics done")
    return rows


def statistics_of_mask(
    mask: GridArray, volume: GridArray | None = None, *, name: str = "mask"
) -> SegmentStatistics:
    """Statistics of a boolean mask (cropped or not) and, optionally, of a volume on its lattice."""
    row = SegmentStatistics(segment_id=name, name=name, structure_key=None)
    measure_mask(mask, volume, row, subject=name)
    return row


def measure_mask(mask: GridArray, volume: GridArray | None, row: SegmentStatistics, *, subject: str) -> None:
    """Fill `row` with the statistics of `mask` (and of `volume`'s voxels inside it)."""
    array = np.asarray(mask.array, dtype=bool)
    count = int(np.count_nonzero(array))
    row.voxel_count = count
    row.volume_mm3 = count * mask.voxel_volume_mm3
    row.volume_ml = row.volume_mm3 / 1000.0
    if count == 0:
        return
    window = _volume_window(mask, volume, row.name, subject) if volume is not None else None

    image = _vtk_mask_image(array, mask.ijk_to_ras)
    shape = _itk_shape_statistics(image, mask.ijk_to_ras)
    row.centroid_ras_mm = shape["centroid"]
    row.surface_area_mm2 = shape["surface_area"]
    row.oriented_bounding_box = shape["obb"]
    row.islands = _island_count(array)
    points = hull_points_ras(array, mask.ijk_to_ras)
    row.bounding_box_ras_mm = (_vec(points.min(axis=0)), _vec(points.max(axis=0)))
    row.max_diameter_mm = max_diameter_mm(array, mask.ijk_to_ras, points)
    if window is not None:
        for name, value in intensity_statistics(window[array]).items():
            setattr(row, name, value)


def _check_volume(volume_node) -> GridArray:
    if volume_node.GetImageData() is None:
        raise InputDataError(
            "has no image data.", subject=volume_node.GetName(), fix="load the CT volume again."
        )
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputDataError(
            "is not a scalar volume; segment statistics need one CT number per voxel.",
            subject=volume_node.GetName(),
            fix="choose the CT (scalar) volume as the source volume.",
        )
    if volume_node.GetParentTransformNode() is not None:
        raise InputDataError(
            "is under a transform, so its grid is not where its voxels are.",
            subject=volume_node.GetName(),
            fix="harden the transform on the volume, or measure without it.",
        )
    return GridArray(slicer.util.arrayFromVolume(volume_node), volume_ijk_to_ras(volume_node))


def check_inside_volume(segmentation_node, segment_id: str, volume_node) -> None:
    """Refuse a segment that reaches outside the volume: resampling would drop its voxels there."""
    own = segment_mask(segmentation_node, segment_id, None, crop=True)
    if not own.array.size:
        return
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    corners *= np.array(own.array.shape[::-1], float) - 1
    ras = own.ras_of(corners)
    to_ijk = np.linalg.inv(volume_ijk_to_ras(volume_node))
    ijk = ras @ to_ijk[:3, :3].T + to_ijk[:3, 3]
    dims = np.array(volume_node.GetImageData().GetDimensions(), float)
    if np.any(ijk < -0.5 - 1e-3) or np.any(ijk > dims - 0.5 + 1e-3):
        name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        raise InputDataError(
            f"segment {name!r} reaches outside the volume {volume_node.GetName()!r}; on the "
            "volume's grid part of it would be lost.",
            subject=segmentation_node.GetName(),
            fix="measure it against a volume that covers it, or without a volume.",
        )


def _volume_window(mask: GridArray, volume: GridArray, name: str, subject: str) -> np.ndarray:
    """The volume's voxels under the (cropped) mask: a view of the same shape."""
    offset = lattice_offset(mask, volume.ijk_to_ras)
    if offset is None:
        raise InputDataError(
            f"segment {name!r} is not on the volume's grid.",
            subject=subject,
            fix="resample the segment onto the volume's grid (compute_segment_statistics does).",
        )
    i0, j0, k0 = offset
    k, j, i = mask.array.shape
    nk, nj, ni = volume.array.shape
    if min(i0, j0, k0) < 0 or i0 + i > ni or j0 + j > nj or k0 + k > nk:
        raise InputDataError(
            f"segment {name!r} reaches outside the volume; its voxels there have no CT number.",
            subject=subject,
            fix="measure it against a volume that covers it, or without a volume.",
        )
    return volume.array[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i]


def _vtk_mask_image(array: np.ndarray, ijk_to_ras: np.ndarray) -> vtk.vtkImageData:
    """A uint8 vtkImageData of the mask with origin and spacing (direction passed separately)."""
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    image.SetSpacing(*spacing)
    image.SetOrigin(*ijk_to_ras[:3, 3])
    image.GetPointData().SetScalars(numpy_to_vtk(array.view(np.uint8).ravel(), deep=True))
    return image


def _direction_matrix(image: vtk.vtkImageData, ijk_to_ras: np.ndarray) -> vtk.vtkMatrix4x4:
    directions = np.eye(4)
    directions[:3, :3] = ijk_to_ras[:3, :3] / np.array(image.GetSpacing())
    return array_to_vtk_matrix(directions)


def _itk_shape_statistics(image: vtk.vtkImageData, ijk_to_ras: np.ndarray) -> dict:
    """Centroid, surface area and oriented box through Slicer's vtkITKLabelShapeStatistics."""
    shape = slicer.vtkITKLabelShapeStatistics()
    shape.SetInputData(image)
    shape.SetDirections(_direction_matrix(image, ijk_to_ras))
    wanted = {"Centroid", "Perimeter", "OrientedBoundingBox"}
    for statistic in (
        "Centroid",
        "OrientedBoundingBox",
        "FeretDiameter",
        "Perimeter",
        "Roundness",
        "Flatness",
        "Elongation",
        "PrincipalMoments",
        "PrincipalAxes",
    ):
        shape.SetComputeShapeStatistic(statistic, statistic in wanted)
    shape.Update()
    table = shape.GetOutput()
    label_values = table.GetColumnByName("LabelValue")
    row = next(n for n in range(table.GetNumberOfRows()) if int(label_values.GetTuple1(n)) == 1)

    def column(name: str) -> np.ndarray:
        return np.array(table.GetColumnByName(name).GetTuple(row), float)

    origin = column("OrientedBoundingBoxOrigin")
    size = column("OrientedBoundingBoxSize")
    axes = [column(f"OrientedBoundingBoxDirection{axis}") for axis in "XYZ"]
    centre = origin + sum(a * s / 2.0 for a, s in zip(axes, size, strict=True))
    order = np.argsort(-size, kind="stable")
    obb = OrientedBox(
        axes_ras=tuple(_vec(axes[n] / np.linalg.norm(axes[n])) for n in order),  # type: ignore[arg-type]
        extent_mm=_vec(size[order]),
        centre_ras_mm=_vec(centre),
    )
    return {"centroid": _vec(column("Centroid")), "surface_area": float(column("Perimeter")[0]), "obb": obb}


def _island_count(array: np.ndarray) -> int:
    """Number of 26-connected components (ITK's connected components, fully connected).

    SimpleITK's filter rather than Slicer's vtkITKIslandMath: the same ITK algorithm without
    the relabelling by size, half the time on a body-sized segment.
    """
    import SimpleITK as sitk

    components = sitk.ConnectedComponentImageFilter()
    components.SetFullyConnected(True)
    components.Execute(sitk.GetImageFromArray(array.view(np.uint8)))
    return int(components.GetObjectCount())


def hull_points_ras(array: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """RAS positions (n, 3) of voxel centres of a mask that include every vertex of its convex
    hull: what extreme values (boxes, diameters) need, instead of every voxel."""
    from scipy.spatial import ConvexHull, QhullError

    # Every hull vertex is an end voxel of its row along i and of its column along j.
    kk, jj = np.nonzero(array.any(axis=2))
    if kk.size == 0:
        return np.zeros((0, 3))
    first = np.argmax(array, axis=2)[kk, jj]
    last = array.shape[2] - 1 - np.argmax(np.flip(array, axis=2).copy(), axis=2)[kk, jj]
    i = np.concatenate([first, last])
    j = np.concatenate([jj, jj])
    k = np.concatenate([kk, kk])
    if i.size > 4096:
        top = np.argmax(array, axis=1)
        bottom = array.shape[1] - 1 - np.argmax(np.flip(array, axis=1), axis=1)
        keep = (j == top[k, i]) | (j == bottom[k, i])
        i, j, k = i[keep], j[keep], k[keep]
    points = np.column_stack([i, j, k]).astype(float) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    if len(points) > 64:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # flat or thin: a joggled hull still keeps the extreme points
            points = points[ConvexHull(points, qhull_options="QJ").vertices]
    return points


def max_diameter_mm(array: np.ndarray, ijk_to_ras: np.ndarray, points: np.ndarray | None = None) -> float:
    """Largest distance (mm) between two voxel centres of a mask (Feret diameter)."""
    from scipy.spatial.distance import cdist

    points = hull_points_ras(array, ijk_to_ras) if points is None else points
    best = 0.0
    for start in range(0, len(points), 512):
        best = max(best, float(cdist(points[start : start + 512], points, "sqeuclidean").max()))
    return math.sqrt(best)


def intensity_statistics(values: np.ndarray) -> dict[str, float | None]:
    """Mean, SD (population), min, max and percentiles (numpy's linear method) of the values."""
    names = HU_FIELDS
    values = np.asarray(values).ravel()
    if values.size == 0:
        return dict.fromkeys(names)
    n = values.size
    if np.issubdtype(values.dtype, np.integer):
        low, high = int(values.min()), int(values.max())
    if np.issubdtype(values.dtype, np.integer) and high - low < (1 << 22):
        counts = np.bincount((values.astype(np.int64) - low), minlength=high - low + 1)
        levels = np.arange(low, high + 1, dtype=np.float64)
        mean = float(counts @ levels) / n
        sd = math.sqrt(float(counts @ (levels - mean) ** 2) / n)
        cumulative = np.cumsum(counts)

        def order_statistic(rank: int) -> float:
            return float(low + np.searchsorted(cumulative, rank, side="right"))

        percentiles = []
        for q in PERCENTILES:
            position = q / 100.0 * (n - 1)
            below = math.floor(position)
            fraction = position - below
            value = order_statistic(below)
            if fraction > 0:
                value += fraction * (order_statistic(below + 1) - value)
            percentiles.append(value)
        result = [mean, sd, float(low), float(high), *percentiles]
    else:
        data = values.astype(np.float64)
        result = [
            float(data.mean()),
            float(data.std()),
            float(data.min()),
            float(data.max()),
            *(float(v) for v in np.percentile(data, PERCENTILES)),
        ]
    return dict(zip(names, result, strict=True))


def _vec(values) -> Vec3:
    a, b, c = (float(v) for v in values)
    return a, b, c


# --------------------------------------------------------------------------------------------
# Table node
# --------------------------------------------------------------------------------------------

# Column name (the JSON key), title, unit label, number of components, description.
_COLUMNS: tuple[tuple[str, str, str, int, str], ...] = (
    ("segment", "Segment", "", 0, "segment name"),
    ("structure_key", "Structure", "", 0, "SlicerVSP structure key, from the segment's terminology codes"),
    ("voxel_count", "Voxels", "", 1, "number of voxels on the source volume's grid"),
    ("volume_mL", "Volume", "mL", 1, "volume"),
    ("volume_mm3", "Volume", "mm3", 1, "volume"),
    ("surface_area_mm2", "Surface area", "mm2", 1, "ITK perimeter estimate of the labelmap"),
    ("centroid_ras_mm", "Centroid", "mm", 3, "centroid, RAS"),
    ("bounding_box_min_ras_mm", "Bounding box min", "mm", 3, "RAS box of the voxel centres, minimum"),
    ("bounding_box_max_ras_mm", "Bounding box max", "mm", 3, "RAS box of the voxel centres, maximum"),
    ("max_diameter_mm", "Max diameter", "mm", 1, "Feret diameter: largest voxel-centre distance"),
    ("obb_extent_mm", "Oriented box extent", "mm", 3, "oriented bounding box, longest first"),
    ("obb_centre_ras_mm", "Oriented box centre", "mm", 3, "oriented bounding box centre, RAS"),
    ("islands", "Islands", "", 1, "26-connected components"),
    ("hu_mean", "Mean", "HU", 1, "mean CT number"),
    ("hu_sd", "SD", "HU", 1, "standard deviation of CT numbers"),
    ("hu_min", "Min", "HU", 1, "minimum CT number"),
    ("hu_max", "Max", "HU", 1, "maximum CT number"),
    *((f"hu_p{q}", f"P{q}", "HU", 1, f"{q}th percentile of CT numbers") for q in PERCENTILES),
)


def _table_values(row: SegmentStatistics) -> dict:
    data = row.to_json()
    box = data["bounding_box_ras_mm"]
    obb = data["oriented_bounding_box"]
    data["bounding_box_min_ras_mm"] = box["min"] if box else None
    data["bounding_box_max_ras_mm"] = box["max"] if box else None
    data["obb_extent_mm"] = obb["extent_mm"] if obb else None
    data["obb_centre_ras_mm"] = obb["centre_ras_mm"] if obb else None
    return data


def to_table_node(scene, rows: Sequence[SegmentStatistics], name: str = "Segment statistics"):
    """A new vtkMRMLTableNode with one row per segment; each column carries its unit label."""
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    modified = table_node.StartModify()
    table = table_node.GetTable()
    for column, title, unit, components, description in _COLUMNS:
        if components == 0:
            array = vtk.vtkStringArray()
        elif column in ("voxel_count", "islands"):
            array = vtk.vtkLongArray()
        else:
            array = vtk.vtkDoubleArray()
            array.SetNumberOfComponents(components)
            if components == 3:
                for index, axis in enumerate("RAS" if "ras" in column else "123"):
                    array.SetComponentName(index, axis)
        array.SetName(column)
        table.AddColumn(array)
        table_node.SetColumnTitle(column, title)
        table_node.SetColumnDescription(column, description)
        if unit:
            table_node.SetColumnUnitLabel(column, unit)
    for row in rows:
        values = _table_values(row)
        index = table_node.AddEmptyRow()
        for position, (column, _, _, components, _) in enumerate(_COLUMNS):
            array = table.GetColumn(position)
            value = values[column]
            if components == 0:
                array.SetValue(index, "" if value is None else str(value))
            elif components == 1:
                array.SetValue(index, float("nan") if value is None else value)
            else:
                for component in range(components):
                    array.SetComponent(index, component, float("nan") if value is None else value[component])
    table_node.EndModify(modified)
    return table_node
