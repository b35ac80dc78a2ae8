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

from VSPCoreLib.errors import InputDataError

from .mesh import polydata_to_trimesh

BINARY_LABELMAP = "Binary labelmap"
# "auto" supersampling: parts at most this many voxels thick are supersampled by AUTO_FACTOR.
AUTO_THICKNESS_VOXELS = 8.0
AUTO_FACTOR = 3.0
CLOSED_SURFACE = "Closed surface"


@dataclass
class SurfaceOptions:
    """Parameters of Slicer's labelmap → closed surface converter, chosen by the user.

    ``smoothing_factor``: 0 (none) to 1 (strong), Slicer's "Smoothing factor".
    ``decimation_factor``: 0 (none) to 1, the share of triangles removed, Slicer's "Decimation factor".
    ``supersampling``: 1 (none), 3 or 5 (odd, so that the fine grid stays centred on the
    original); the labelmap is resampled this many times finer in each direction before
    conversion. ``"auto"`` supersamples parts about eight voxels thick or thinner by 3.
    """

    smoothing_factor: float = 0.15
    decimation_factor: float = 0.0
    supersampling: float | str = "auto"

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
        if self.supersampling != "auto" and self.supersampling not in (1, 3, 5):
            raise InputDataError(
                f"supersampling {self.supersampling!r} is not 1, 3, 5 or 'auto'.",
                subject="surface options",
                fix="use 1 (none), 3 or 5 (odd factors keep the grid centred), or 'auto'.",
            )

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class PartLabelmap:
    """A part's merged binary labelmap (Slicer's vtkOrientedImageData, RAS geometry)."""

    image: object  # slicer.vtkOrientedImageData, values 0/1
    voxel_count: int
    spacing_mm: tuple[float, float, float]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    @property
    def volume_mm3(self) -> float:
        return self.voxel_count * self.voxel_volume_mm3


def part_labelmap(segmentation_node, segment_ids: list[str], *, subject: str) -> PartLabelmap:
    """The union of the segments' binary labelmaps on the segmentation's own grid.

    An empty part (no segment, or only empty segments) is an InputDataError naming it.
    """
    if not segment_ids:
        raise InputDataError("has no segments.", subject=subject, fix="choose at least one segment.")
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
    scalars = merged.GetPointData().GetScalars() if merged.GetPointData() else None
    count = int(np.count_nonzero(vtk_to_numpy(scalars))) if scalars is not None else 0
    if count == 0:
        raise InputDataError(
            "is empty: its segments hold no voxels.",
            subject=subject,
            fix="segment the structure first, or leave this part out (--segment).",
        )
    # A shared labelmap holds other segments' label values: keep only this part's voxels as 1.
    binary = slicer.vtkOrientedImageData()
    threshold = vtk.vtkImageThreshold()
    threshold.SetInputData(merged)
    threshold.ThresholdByUpper(1)
    threshold.SetInValue(1)
    threshold.SetOutValue(0)
    threshold.SetOutputScalarTypeToUnsignedChar()
    threshold.Update()
    binary.ShallowCopy(threshold.GetOutput())
    binary.CopyDirections(merged)
    binary.SetOrigin(merged.GetOrigin())
    binary.SetSpacing(merged.GetSpacing())
    return PartLabelmap(binary, count, tuple(float(s) for s in merged.GetSpacing()))


def _thickness_voxels(labelmap: PartLabelmap) -> float:
    """A rough thickness of the part in voxels: twice its mean depth (volume / surface voxels)."""
    array = vtk_to_numpy(labelmap.image.GetPointData().GetScalars()).astype(bool)
    dims = labelmap.image.GetDimensions()
    mask = array.reshape(dims[2], dims[1], dims[0])
    from scipy import ndimage

    boundary = np.count_nonzero(mask & ~ndimage.binary_erosion(mask))
    return 2.0 * labelmap.voxel_count / max(boundary, 1)


def supersampling_factor(labelmap: PartLabelmap, options: SurfaceOptions) -> float:
    """The supersampling used for this part: the user's factor, or for ``auto`` 3 for parts
    about eight voxels thick or thinner (vessels, small tumours), 1 otherwise."""
    if options.supersampling != "auto":
        return float(options.supersampling)
    return AUTO_FACTOR if _thickness_voxels(labelmap) <= AUTO_THICKNESS_VOXELS else 1.0


def _supersampled(image, factor: float):
    """The binary image resampled ``factor`` (odd) times finer, nearest neighbour."""
    as_float = vtk.vtkImageCast()
    as_float.SetInputData(image)
    as_float.SetOutputScalarTypeToFloat()
    # Pad by one voxel so the boundary of the extent stays closed after interpolation.
    pad = vtk.vtkImageConstantPad()
    pad.SetInputConnection(as_float.GetOutputPort())
    extent = list(image.GetExtent())
    pad.SetOutputWholeExtent(
        extent[0] - 1, extent[1] + 1, extent[2] - 1, extent[3] + 1, extent[4] - 1, extent[5] + 1
    )
    pad.SetConstant(0.0)
    resample = vtk.vtkImageResample()
    resample.SetInputConnection(pad.GetOutputPort())
    resample.SetInterpolationModeToNearestNeighbor()
    for axis in range(3):
        resample.SetAxisMagnificationFactor(axis, factor)
    threshold = vtk.vtkImageThreshold()
    threshold.SetInputConnection(resample.GetOutputPort())
    threshold.ThresholdByUpper(0.5)
    threshold.SetInValue(1)
    threshold.SetOutValue(0)
    threshold.SetOutputScalarTypeToUnsignedChar()
    threshold.Update()
    out = slicer.vtkOrientedImageData()
    out.ShallowCopy(threshold.GetOutput())
    # vtkImageResample keeps the origin and scales the spacing in the image's own (IJK-aligned)
    # frame; the directions are the source's.
    out.CopyDirections(image)
    return out


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


def part_surface(
    labelmap: PartLabelmap, options: SurfaceOptions, *, subject: str
) -> tuple[trimesh.Trimesh, dict]:
    """The part's closed surface (RAS mm) and the parameters that made it."""
    factor = supersampling_factor(labelmap, options)
    image = _supersampled(labelmap.image, factor) if factor > 1.0 else labelmap.image
    polydata = labelmap_to_surface(
        image, smoothing_factor=options.smoothing_factor, decimation_factor=options.decimation_factor
    )
    if polydata is None or polydata.GetNumberOfPolys() == 0:
        raise InputDataError(
            "gave no surface (the part is too small for the grid).",
            subject=subject,
            fix="check the segment, or use supersampling.",
        )
    mesh = polydata_to_trimesh(polydata, subject=subject)
    step = {
        "step": "labelmap to closed surface",
        "software": "Slicer vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "parameters": {
            "smoothing_factor": float(options.smoothing_factor),
            "decimation_factor": float(options.decimation_factor),
            "supersampling": factor,
            "supersampling_requested": options.supersampling,
        },
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
