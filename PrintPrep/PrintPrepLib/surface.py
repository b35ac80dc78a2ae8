"""Segments to closed surfaces through Slicer's own converter, and the fidelity check.

A *part* of a print is one or more segments of a segmentation (the left kidney may be the union
of its cortex and medulla segments). Its binary labelmaps are merged with Slicer's
``vtkOrientedImageDataResample.MergeImage`` and turned into a closed surface by Slicer's
``vtkBinaryLabelmapToClosedSurfaceConversionRule`` (discrete flying edges, windowed-sinc
smoothing, decimation), with the parameters the user chooses (:class:`SurfaceOptions`).
Optional supersampling resamples the part's labelmap onto a grid an odd number of times finer
first (each voxel becomes 3×3×3 finer voxels, nearest neighbour, so the fine grid stays centred on
the original one), so that small structures (vessels one to three voxels across) keep their
shape and volume: the converter's corner cutting and smoothing then act at the fine scale.

Why thin parts lose volume: the converter's surface runs half-way between inside and outside
voxel centres, so at every convex voxel edge it cuts the corner off (a prism of half a voxel by
half a voxel) and at every convex voxel corner a little more; concave edges give the same amount
back. A large part has about as many of each, but a tube one or two voxels across is all convex
edges: on the 2.8 × 2.8 × 4 mm sample grid the renal arteries lose 39 % of their voxel volume
without supersampling, 5.9 % at 3×, 2.2 % at 5× and 1.2 % at 7× (the loss falls with the square
of the fine voxel size); smoothing (0.15) changes it by a few tenths of a per cent only. So
``"auto"`` starts from the part's thickness (3× for parts up to eight voxels thick, else none)
and, while the surface still misses the part's voxel volume by more than
``auto_volume_percent`` (half the 2 % tolerance), converts again at the next odd factor, up to
7× and within :data:`MAX_FINE_VOXELS`. Every factor tried is recorded with its volume
difference. The fine grid is centred on the original one at every factor: nothing moves.

:func:`fidelity` compares a finished mesh with the labelmap it came from: the symmetric surface
distance between the mesh and the labelmap's boundary (the voxel faces between inside and
outside, Slicer's converter with surface nets and no smoothing)
as mean and 95th percentile in mm, and the volume difference in per cent of the labelmap's voxel
volume. A part over tolerance is flagged, never silently passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import slicer
import trimesh
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from VSPCoreLib import arrays
from VSPCoreLib.errors import InputDataError

from .mesh import polydata_to_trimesh

BINARY_LABELMAP = "Binary labelmap"
# "auto" supersampling: parts at most this many voxels thick start at AUTO_FACTOR, the others at 1;
# then the next of AUTO_FACTORS while the surface misses the voxel volume by more than
# SurfaceOptions.auto_volume_percent.
AUTO_THICKNESS_VOXELS = 8.0
AUTO_FACTOR = 3.0
AUTO_FACTORS = (1, 3, 5, 7)
# The most fine voxels "auto" makes for one part (a 64-million-voxel uint8 grid, about 64 MB,
# and the converter's work on it); a larger factor is not tried.
MAX_FINE_VOXELS = 64_000_000
CLOSED_SURFACE = "Closed surface"
# Empty voxels kept around a part's bounding box when its labelmap is cropped (the converter
# needs one to close the surface; the second keeps smoothing away from the border).
CROP_MARGIN_VOXELS = 2


@dataclass
class SurfaceOptions:
    """Parameters of Slicer's labelmap → closed surface converter, chosen by the user.

    ``smoothing_factor``: 0 (none) to 1 (strong), Slicer's "Smoothing factor".
    ``decimation_factor``: 0 (none) to 1, the share of triangles removed, Slicer's "Decimation factor".
    ``supersampling``: 1 (none), 3, 5 or 7 (odd, so that the fine grid stays centred on the
    original); the labelmap is resampled this many times finer in each direction before
    conversion. ``"auto"`` supersamples parts about eight voxels thick or thinner by 3, then
    finer (5, 7) while the surface misses the voxel volume by more than ``auto_volume_percent``.
    """

    smoothing_factor: float = 0.15
    decimation_factor: float = 0.0
    supersampling: float | str = "auto"
    auto_volume_percent: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.smoothing_factor) <= 1.0:
            raise InputDataError(
                f"smoothing factor {self.smoothing_factor} is outside 0..1.",
                subject="surface options",
                fix="choose a smoothing factor between 0 (none) and 1 (strong).",
            )
        if not 0.0 <= float(self.decimation_factor) < 1.0:
            raise InputDataError(
                f"decimation factor {self.decimation_factor} is outside 0..1.",
                subject="surface options",
                fix="choose a decimation factor from 0 (none) up to, not including, 1.",
            )
        if self.supersampling != "auto" and self.supersampling not in AUTO_FACTORS:
            raise InputDataError(
                f"supersampling {self.supersampling!r} is not 1, 3, 5, 7 or 'auto'.",
                subject="surface options",
                fix="use 1 (none), 3, 5 or 7 (odd factors keep the grid centred), or 'auto'.",
            )
        if not float(self.auto_volume_percent) > 0.0:
            raise InputDataError(
                f"auto volume limit {self.auto_volume_percent} % is not above 0.",
                subject="surface options",
                fix="give the volume difference (per cent) that automatic supersampling aims under, e.g. 1.",
            )

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class PartLabelmap:
    """A part's merged binary labelmap, cropped to the part's bounding box plus a margin.

    ``grid`` holds the mask (numpy [k, j, i], 0/1) and the IJK→RAS matrix of its voxel (0, 0, 0);
    ``image`` is the same voxels as Slicer's vtkOrientedImageData (RAS geometry), the input of
    Slicer's converter. Cropping changes the extent only, never the place in the patient: every
    voxel keeps its RAS position.
    """

    image: object  # slicer.vtkOrientedImageData, values 0/1
    voxel_count: int
    spacing_mm: tuple[float, float, float]
    grid: arrays.GridArray | None = None

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    @property
    def volume_mm3(self) -> float:
        return self.voxel_count * self.voxel_volume_mm3


def _empty_part(subject: str) -> InputDataError:
    return InputDataError(
        "is empty: its segments hold no voxels.",
        subject=subject,
        fix="segment the structure first, or leave this part out (--segment).",
    )


def _union_on_one_lattice(masks: list[arrays.GridArray], margin: int) -> arrays.GridArray | None:
    """The union of cropped masks that lie on one voxel lattice, in their common bounding box
    plus ``margin`` empty voxels on every side; None when they lie on different lattices."""
    reference = masks[0].ijk_to_ras
    offsets = [arrays.lattice_offset(m, reference) for m in masks]
    if any(offset is None for offset in offsets):
        return None
    low = np.min([offset for offset in offsets], axis=0)  # i, j, k
    high = np.max(
        [np.add(offset, m.array.shape[::-1]) for offset, m in zip(offsets, masks, strict=True)], axis=0
    )
    size_ijk = high - low + 2 * margin
    union = np.zeros(tuple(int(s) for s in size_ijk[::-1]), dtype=np.uint8)
    for offset, mask in zip(offsets, masks, strict=True):
        i, j, k = (int(v) for v in np.subtract(offset, low) + margin)
        depth, rows, columns = mask.array.shape
        union[k : k + depth, j : j + rows, i : i + columns] |= mask.array.astype(np.uint8)
    ijk_to_ras = reference.copy()
    ijk_to_ras[:3, 3] = masks[0].ras_of(np.subtract(low, margin))
    return arrays.GridArray(union, ijk_to_ras)


def _merged_with_slicer(
    segmentation_node, segment_ids: list[str], *, subject: str, margin: int
) -> arrays.GridArray:
    """The union through Slicer's MergeImage (segments on different grids), then cropped."""
    merged = None
    for segment_id in segment_ids:
        image = slicer.vtkOrientedImageData()
        if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image):
            raise InputDataError(
                f"segment {segment_id!r} has no binary labelmap.",
                subject=subject,
                fix="make the binary labelmap the segmentation's source representation.",
            )
        if merged is None:
            merged = image
            continue
        out = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.MergeImage(
            merged, image, out, slicer.vtkOrientedImageDataResample.OPERATION_MAXIMUM
        ):
            raise InputDataError(
                f"segment {segment_id!r} could not be merged into the part.", subject=subject
            )
        merged = out
    grid = arrays.oriented_image_to_grid_array(merged)
    mask = arrays.crop_to_content(arrays.GridArray((grid.array > 0).astype(np.uint8), grid.ijk_to_ras))
    if not mask.array.size:
        raise _empty_part(subject)
    return _union_on_one_lattice([mask], margin)


def part_labelmap(
    segmentation_node,
    segment_ids: list[str],
    *,
    subject: str,
    masks: dict[str, arrays.GridArray] | None = None,
    margin: int = CROP_MARGIN_VOXELS,
) -> PartLabelmap:
    """The union of the segments' binary labelmaps on the segmentation's own grid, cropped to
    the part's bounding box plus ``margin`` empty voxels (the converter then works on the part
    only, not on the whole scan). ``masks``: cropped segment masks already read (one pass over
    the segmentation for every part, ``VSPCoreLib.arrays.segment_masks``).

    An empty part (no segment, or only empty segments) is an InputDataError naming it.
    """
    if not segment_ids:
        raise InputDataError("has no segments.", subject=subject, fix="choose at least one segment.")
    if masks is None or any(sid not in masks for sid in segment_ids):
        masks = arrays.segment_masks(segmentation_node, segment_ids)
    found = [masks[sid] for sid in segment_ids if masks[sid].array.size and masks[sid].array.any()]
    if not found:
        raise _empty_part(subject)
    grid = _union_on_one_lattice(found, margin)
    if grid is None:  # segments on different grids: Slicer resamples them onto one
        grid = _merged_with_slicer(segmentation_node, segment_ids, subject=subject, margin=margin)
    count = int(np.count_nonzero(grid.array))
    image = arrays.grid_array_to_oriented_image(grid)
    return PartLabelmap(image, count, tuple(float(s) for s in grid.spacing_mm), grid)


def _thickness_voxels(labelmap: PartLabelmap) -> float:
    """A rough thickness of the part in voxels: twice its mean depth (volume / surface voxels)."""
    from scipy import ndimage

    mask = labelmap.grid.array.astype(bool)
    boundary = np.count_nonzero(mask & ~ndimage.binary_erosion(mask))
    return 2.0 * labelmap.voxel_count / max(boundary, 1)


def supersampling_factor(labelmap: PartLabelmap, options: SurfaceOptions) -> float:
    """The first supersampling tried for this part: the user's factor, or for ``auto`` 3 for
    parts about eight voxels thick or thinner (vessels, small tumours), 1 otherwise
    (:func:`part_surface` may go finer for ``auto``)."""
    if options.supersampling != "auto":
        return float(options.supersampling)
    return AUTO_FACTOR if _thickness_voxels(labelmap) <= AUTO_THICKNESS_VOXELS else 1.0


def _supersampled(grid: arrays.GridArray, factor: int) -> arrays.GridArray:
    """The mask ``factor`` times finer along each axis: every voxel becomes factor³ voxels of
    the same value (nearest neighbour), centred on the original voxel (for an odd factor the
    middle fine voxel's centre is the original centre), so the part stays in its RAS place."""
    f = int(factor)
    fine = grid.array.repeat(f, axis=0).repeat(f, axis=1).repeat(f, axis=2)
    ijk_to_ras = grid.ijk_to_ras.copy()
    ijk_to_ras[:3, :3] = grid.ijk_to_ras[:3, :3] / f
    ijk_to_ras[:3, 3] = grid.ras_of(np.full(3, -(f - 1) / (2.0 * f)))
    return arrays.GridArray(fine, ijk_to_ras)


def labelmap_to_surface(
    image,
    *,
    smoothing_factor: float,
    decimation_factor: float,
    compute_normals: bool = False,
    method: int = 0,
) -> vtk.vtkPolyData:
    """Slicer's own converter on one binary labelmap: a closed surface in RAS mm.

    ``method`` 0 is Slicer's default (discrete flying edges); 1 is surface nets without
    smoothing, the voxel faces themselves (the fidelity reference).
    """
    segmentation = slicer.vtkSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    segment = slicer.vtkSegment()
    segment.AddRepresentation(BINARY_LABELMAP, image)
    segmentation.AddSegment(segment, "part")
    segmentation.SetConversionParameter("Smoothing factor", str(float(smoothing_factor)))
    segmentation.SetConversionParameter("Decimation factor", str(float(decimation_factor)))
    segmentation.SetConversionParameter("Compute surface normals", "1" if compute_normals else "0")
    if method:
        segmentation.SetConversionParameter("Conversion method", "1")
        segmentation.SetConversionParameter("SurfaceNets smoothing", "0")
    if not segmentation.CreateRepresentation(CLOSED_SURFACE, True):
        raise InputDataError("Slicer could not make a closed surface.", subject="part")
    return segment.GetRepresentation(CLOSED_SURFACE)


def _next_auto_factor(labelmap: PartLabelmap, factor: float) -> float | None:
    """The next finer odd factor for ``auto``, or None at 7 or when its grid would be too big."""
    finer = [f for f in AUTO_FACTORS if f > factor]
    if not finer or labelmap.grid.array.size * finer[0] ** 3 > MAX_FINE_VOXELS:
        return None
    return float(finer[0])


def _converted(
    labelmap: PartLabelmap, factor: float, options: SurfaceOptions, *, subject: str
) -> trimesh.Trimesh:
    image = (
        arrays.grid_array_to_oriented_image(_supersampled(labelmap.grid, int(factor)))
        if factor > 1.0
        else labelmap.image
    )
    polydata = labelmap_to_surface(
        image, smoothing_factor=options.smoothing_factor, decimation_factor=options.decimation_factor
    )
    if polydata is None or polydata.GetNumberOfPolys() == 0:
        raise InputDataError(
            "gave no surface (the part is too small for the grid).",
            subject=subject,
            fix="check the segment, or use supersampling.",
        )
    return polydata_to_trimesh(polydata, subject=subject)


def part_surface(
    labelmap: PartLabelmap, options: SurfaceOptions, *, subject: str
) -> tuple[trimesh.Trimesh, dict]:
    """The part's closed surface (RAS mm) and the parameters that made it.

    With ``supersampling="auto"`` the surface is made again at the next finer factor while its
    volume misses the labelmap's voxel volume by more than ``options.auto_volume_percent``
    (thin tubes: see the module's notes); every factor tried is in the step's ``tried``.
    """
    factor = supersampling_factor(labelmap, options)
    tried = []
    while True:
        mesh = _converted(labelmap, factor, options, subject=subject)
        if options.supersampling != "auto":  # the user's factor: no volume check here
            tried.append({"supersampling": factor})
            break
        difference = 100.0 * (abs(float(mesh.volume)) - labelmap.volume_mm3) / labelmap.volume_mm3
        tried.append({"supersampling": factor, "volume_difference_percent": round(difference, 3)})
        if abs(difference) <= float(options.auto_volume_percent):
            break
        finer = _next_auto_factor(labelmap, factor)
        if finer is None:
            break
        factor = finer
    step = {
        "step": "labelmap to closed surface",
        "software": "Slicer vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "parameters": {
            "smoothing_factor": float(options.smoothing_factor),
            "decimation_factor": float(options.decimation_factor),
            "supersampling": factor,
            "supersampling_requested": options.supersampling,
            "auto_volume_percent": float(options.auto_volume_percent),
        },
        "tried": tried,
        "triangles": int(len(mesh.faces)),
    }
    return mesh, step


# --- fidelity --------------------------------------------------------------------------------


@dataclass
class Tolerance:
    """Fidelity limits: 95th-percentile surface distance (default: one voxel, the smallest
    spacing) and volume difference in per cent."""

    p95_distance_mm: float | None = None
    volume_difference_percent: float = 2.0

    def to_json(self) -> dict:
        return asdict(self)


def _distances(source: vtk.vtkPolyData, target: vtk.vtkPolyData) -> np.ndarray:
    """Unsigned distance from every point of ``source`` to the surface ``target`` (mm)."""
    implicit = vtk.vtkImplicitPolyDataDistance()
    implicit.SetInput(target)
    points = source.GetPoints().GetData()
    values = vtk.vtkDoubleArray()
    implicit.FunctionValue(points, values)
    return np.abs(vtk_to_numpy(values))


def fidelity(mesh: trimesh.Trimesh, labelmap: PartLabelmap, tolerance: Tolerance | None = None) -> dict:
    """How far the mesh is from its labelmap: surface distances (mm) and volume difference (%).

    The reference surface is the labelmap's boundary (Slicer's converter without smoothing or
    decimation: the iso-surface half-way between inside and outside voxel centres). Distances
    are taken both ways (mesh vertices → reference, reference vertices → mesh) and pooled. The
    volume difference is the mesh's enclosed volume against the voxel volume.
    """
    from .mesh import trimesh_to_polydata

    tolerance = tolerance or Tolerance()
    p95_limit = (
        tolerance.p95_distance_mm if tolerance.p95_distance_mm is not None else min(labelmap.spacing_mm)
    )
    reference = labelmap_to_surface(labelmap.image, smoothing_factor=0.0, decimation_factor=0.0, method=1)
    model = trimesh_to_polydata(mesh)
    distances = np.concatenate([_distances(model, reference), _distances(reference, model)])
    mean = float(distances.mean())
    p95 = float(np.percentile(distances, 95))
    maximum = float(distances.max())
    mesh_volume = float(abs(mesh.volume))
    volume_difference = 100.0 * (mesh_volume - labelmap.volume_mm3) / labelmap.volume_mm3
    passed = p95 <= p95_limit and abs(volume_difference) <= tolerance.volume_difference_percent
    return {
        "mean_distance_mm": round(mean, 4),
        "p95_distance_mm": round(p95, 4),
        "max_distance_mm": round(maximum, 4),
        "mesh_volume_mL": round(mesh_volume / 1000.0, 4),
        "labelmap_volume_mL": round(labelmap.volume_mm3 / 1000.0, 4),
        "volume_difference_percent": round(volume_difference, 3),
        "tolerance": {
            "p95_distance_mm": p95_limit,
            "volume_difference_percent": tolerance.volume_difference_percent,
        },
        "passed": bool(passed),
    }
