"""Grids, fields and meshes shared by the resection engine (numpy and VTK, no MRML).

The engine works on one *working grid* (`aligned_work_grid`): the source segmentation's own
lattice, subdivided. Along each source axis the working spacing is the largest integer division
of the source spacing not coarser than the requested spacing (0.5 mm asked on 0.7 × 0.7 × 1.25 mm
CT: 0.35 × 0.35 × 0.417 mm), and the working voxels' corners lie on the source voxels' corners, so
that every source voxel is exactly a whole number of working voxels: nearest-neighbour membership
keeps each segment's volume and centroid exactly. Where the source is finer than asked, the
spacing is the largest odd multiple of the source spacing not coarser than asked, with working
voxel centres on source voxel centres. Segment masks are also resampled with trilinear
interpolation of the binary mask (a smooth "field" in [0, 1]), thresholded at 0.5 for surfaces:
the iso-surface a marching-cubes surface of the source mask would show, so a coarse source
(e.g. 2.8 mm voxels) gives a smooth organ instead of copies of its staircase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vtk
from scipy import ndimage
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from VSPCoreLib.arrays import GridArray, array_to_vtk_matrix, resample_nearest_box


@dataclass(frozen=True)
class WorkGrid:
    """A voxel grid: IJK→RAS of voxel (0, 0, 0) and the array shape (k, j, i)."""

    ijk_to_ras: np.ndarray
    shape_kji: tuple[int, int, int]

    @property
    def spacing_mm(self) -> np.ndarray:
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape_kji))

    def ras_of_ijk(self, ijk: np.ndarray) -> np.ndarray:
        """RAS of (…, 3) index positions given as (i, j, k)."""
        return np.asarray(ijk, float) @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ijk_of_ras(self, ras: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) positions of (…, 3) RAS points."""
        inverse = np.linalg.inv(self.ijk_to_ras)
        return np.asarray(ras, float) @ inverse[:3, :3].T + inverse[:3, 3]

    def ras_of_flat(self, flat_index: np.ndarray) -> np.ndarray:
        """RAS of voxel centres given as flat indices into a [k, j, i] array."""
        k, j, i = np.unravel_index(np.asarray(flat_index), self.shape_kji)
        return self.ras_of_ijk(np.column_stack([i, j, k]))


def working_steps(source_spacing_mm, requested_mm: float) -> np.ndarray:
    """The working grid's step along each source axis, in source voxels (see the module doc).

    1/f with f = ceil(S / requested) where the source spacing S is at least the requested one
    (the largest integer division of S not coarser than asked); else m, the largest odd integer
    with m·S ≤ requested (odd, so that working voxel centres are source voxel centres).
    """
    spacing = np.asarray(source_spacing_mm, float)
    requested = float(requested_mm)
    ratio = spacing / requested
    divide = np.ceil(ratio - 1e-9)
    multiple = np.floor((np.floor(1.0 / ratio + 1e-9) - 1.0) / 2.0) * 2.0 + 1.0
    return np.where(ratio >= 1.0 - 1e-9, 1.0 / np.maximum(divide, 1.0), np.maximum(multiple, 1.0))


def aligned_work_grid(
    reference_ijk_to_ras: np.ndarray, requested_mm: float, points_ras: np.ndarray, pad_mm: float
) -> WorkGrid:
    """The working grid on the reference (source) lattice covering `points_ras` plus `pad_mm`.

    Its IJK→RAS is the source's with each axis divided by 1/step and its voxel 0 placed so that
    working voxel corners are source voxel corners (integer divisions) or working centres source
    centres (odd multiples). The axes are the source's own, so a mask on that lattice resamples
    with no interpolation and no ties.
    """
    reference = np.asarray(reference_ijk_to_ras, float)
    spacing = np.linalg.norm(reference[:3, :3], axis=0)
    steps = working_steps(spacing, requested_mm)
    index = np.linalg.solve(reference, np.column_stack([points_ras, np.ones(len(points_ras))]).T)[:3]
    pad = float(pad_mm) / spacing
    low = index.min(axis=1) - pad
    high = index.max(axis=1) + pad
    start = np.empty(3)
    counts = np.empty(3, int)
    for axis in range(3):
        step = steps[axis]
        if step <= 1.0:  # working corners on source corners: start at the source corner below
            corner = np.floor(low[axis] + 0.5 + 1e-9) - 0.5
            start[axis] = corner + 0.5 * step
            counts[axis] = int(np.ceil((high[axis] - corner) / step - 1e-9))
        else:  # working centres on source centres
            centre = np.floor(low[axis] + 0.5 * step + 1e-9)
            start[axis] = centre
            counts[axis] = int(np.ceil((high[axis] - (centre - 0.5 * step)) / step - 1e-9))
    counts = np.maximum(counts, 2)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = reference[:3, :3] * steps
    ijk_to_ras[:3, 3] = reference[:3, :3] @ start + reference[:3, 3]
    return WorkGrid(ijk_to_ras, (int(counts[2]), int(counts[1]), int(counts[0])))


# --- resampling ----------------------------------------------------------------------------------


def _box_in_grid(mask: GridArray, grid: WorkGrid) -> tuple[slice, slice, slice] | None:
    """The part of `grid` (as [k, j, i] slices) that the mask's voxels can reach."""
    nk, nj, ni = mask.array.shape
    corners_ijk = np.array(
        [[i, j, k] for i in (-1.0, ni) for j in (-1.0, nj) for k in (-1.0, nk)]
    )  # one voxel beyond: trilinear interpolation reaches half-way to the next centre
    target = grid.ijk_of_ras(mask.ras_of(corners_ijk))
    low = np.maximum(np.floor(target.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(target.max(axis=0)).astype(int) + 1, np.array(grid.shape_kji[::-1]))
    if np.any(high <= low):
        return None
    return (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))


def _interpolate_axis(array: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation along one axis at fractional indices; 0 outside."""
    n = array.shape[axis]
    pad = [(0, 0)] * array.ndim
    pad[axis] = (1, 1)
    padded = np.pad(array, pad)  # zeros beyond the mask's crop
    t = np.clip(positions + 1.0, 0.0, n + 1.0)
    i0 = np.minimum(np.floor(t).astype(np.intp), n)
    fraction = (t - i0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    fraction = fraction.reshape(shape)
    low = np.take(padded, i0, axis=axis)
    high = np.take(padded, i0 + 1, axis=axis)
    return low + (high - low) * fraction


def resample_field(
    mask: GridArray, grid: WorkGrid, *, nearest: bool = False
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Resampling of a (cropped) binary mask onto a part of the working grid.

    Trilinear (a float32 field in [0, 1]) or, with `nearest`, nearest neighbour (bool: each
    working voxel takes the source voxel holding its centre, `VSPCoreLib.arrays.resample_nearest`:
    exact on the working grid's own source lattice, deterministic and unbiased ties on any other).
    Returns the [k, j, i] slices of the working grid covered and the values there, or None when
    the mask does not reach the grid. Trilinear is separable (three 1-D passes) when the two
    grids share their axes, the usual case, and much faster than a general 3-D resampling.
    """
    if mask.array.size == 0:
        return None
    if nearest:
        placed = resample_nearest_box(mask, grid.ijk_to_ras, grid.shape_kji)
        if placed is None:
            return None
        return placed[0], placed[1].astype(bool, copy=False)
    box = _box_in_grid(mask, grid)
    if box is None:
        return None
    source = np.asarray(mask.array, dtype=np.float32)
    # Target index -> source index.
    matrix = np.linalg.inv(mask.ijk_to_ras) @ grid.ijk_to_ras
    offsets = np.array([box[2].start, box[1].start, box[0].start], float)
    linear = matrix[:3, :3]
    translation = matrix[:3, 3] + linear @ offsets
    counts = (box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start)
    if np.allclose(linear - np.diag(np.diag(linear)), 0.0, atol=1e-6):
        field = source
        for axis_ijk, axis_kji in ((0, 2), (1, 1), (2, 0)):
            positions = linear[axis_ijk, axis_ijk] * np.arange(counts[axis_ijk]) + translation[axis_ijk]
            field = _interpolate_axis(field, axis_kji, positions)
        return box, np.ascontiguousarray(field, dtype=np.float32)
    # General orientation: scipy works in [k, j, i] index order.
    reverse = np.eye(4)[[2, 1, 0, 3]]
    kji_matrix = reverse @ np.vstack([np.column_stack([linear, translation]), [0, 0, 0, 1]]) @ reverse
    field = ndimage.affine_transform(
        source,
        kji_matrix[:3, :3],
        offset=kji_matrix[:3, 3],
        output_shape=(counts[2], counts[1], counts[0]),
        order=1,
        mode="constant",
        cval=0,
    )
    return box, field.astype(np.float32, copy=False)


def sample_field(
    field: np.ndarray, grid: WorkGrid, points_ras: np.ndarray, outside: float = 0.0
) -> np.ndarray:
    """Trilinear samples of a [k, j, i] field on `grid` at RAS points."""
    points_ras = np.asarray(points_ras, float).reshape(-1, 3)
    if len(points_ras) == 0:
        return np.zeros(0)
    ijk = grid.ijk_of_ras(points_ras)
    return ndimage.map_coordinates(
        field, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="constant", cval=outside
    )


# --- meshes ----------------------------------------------------------------------------------------


def _image_data(array: np.ndarray) -> vtk.vtkImageData:
    array = np.ascontiguousarray(array, dtype=np.float32)
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(numpy_to_vtk(array.ravel(), deep=True))
    return image


def transform_polydata(polydata: vtk.vtkPolyData, matrix_4x4: np.ndarray) -> vtk.vtkPolyData:
    transform = vtk.vtkTransform()
    transform.SetMatrix(array_to_vtk_matrix(matrix_4x4))
    mover = vtk.vtkTransformPolyDataFilter()
    mover.SetTransform(transform)
    mover.SetInputData(polydata)
    mover.Update()
    output = vtk.vtkPolyData()
    output.DeepCopy(mover.GetOutput())
    return output


def iso_surface(
    field: np.ndarray, level: float, grid: WorkGrid, box: tuple[slice, slice, slice] | None = None
) -> vtk.vtkPolyData:
    """The `level` iso-surface, in RAS, of a [k, j, i] field that covers `box` of the grid.

    `field` is the whole grid's array when `box` is None, else the array of that box only. It is
    padded with one layer of its minimum so that the surface is closed at the edge of the box.
    """
    if box is not None:
        start = np.array([box[2].start or 0, box[1].start or 0, box[0].start or 0], float)
    else:
        start = np.zeros(3)
    padded = np.pad(field, 1, constant_values=float(np.min(field)) if field.size else 0.0)
    iso = vtk.vtkFlyingEdges3D()
    iso.SetInputData(_image_data(padded))
    iso.SetValue(0, float(level))
    iso.ComputeNormalsOff()
    iso.ComputeGradientsOff()
    iso.ComputeScalarsOff()
    iso.Update()
    shift = np.eye(4)
    shift[:3, 3] = start - 1.0  # the padding layer
    return transform_polydata(iso.GetOutput(), grid.ijk_to_ras @ shift)


def polydata_points(polydata: vtk.vtkPolyData) -> np.ndarray:
    points = polydata.GetPoints()
    if points is None or polydata.GetNumberOfPoints() == 0:
        return np.zeros((0, 3))
    return vtk_to_numpy(points.GetData()).astype(float)


def set_point_array(polydata: vtk.vtkPolyData, name: str, values: np.ndarray, active: bool = False) -> None:
    array = numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32), deep=True)
    array.SetName(name)
    polydata.GetPointData().AddArray(array)
    if active:
        polydata.GetPointData().SetActiveScalars(name)


def point_array(polydata: vtk.vtkPolyData, name: str) -> np.ndarray:
    array = polydata.GetPointData().GetArray(name)
    return vtk_to_numpy(array).astype(float) if array is not None else np.zeros(0)


def rectangle_mesh(
    origin: np.ndarray, axis_1: np.ndarray, axis_2: np.ndarray, range_1, range_2, step_mm: float
) -> vtk.vtkPolyData:
    """A flat triangulated rectangle origin + s·axis_1 + t·axis_2 over the two ranges."""
    count_1 = max(int(np.ceil((range_1[1] - range_1[0]) / step_mm)), 1)
    count_2 = max(int(np.ceil((range_2[1] - range_2[0]) / step_mm)), 1)
    source = vtk.vtkPlaneSource()
    source.SetOrigin(*(origin + range_1[0] * axis_1 + range_2[0] * axis_2))
    source.SetPoint1(*(origin + range_1[1] * axis_1 + range_2[0] * axis_2))
    source.SetPoint2(*(origin + range_1[0] * axis_1 + range_2[1] * axis_2))
    source.SetResolution(count_1, count_2)
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputConnection(source.GetOutputPort())
    triangles.Update()
    output = vtk.vtkPolyData()
    output.DeepCopy(triangles.GetOutput())
    output.GetPointData().Initialize()  # drop the plane source's normals and texture coordinates
    return output


def clip_keep_positive(polydata: vtk.vtkPolyData, keep: np.ndarray) -> vtk.vtkPolyData:
    """The part of a mesh where the per-point value `keep` is > 0 (cut along the zero level)."""
    if polydata.GetNumberOfPoints() == 0:
        return vtk.vtkPolyData()
    work = vtk.vtkPolyData()
    work.ShallowCopy(polydata)
    set_point_array(work, "_keep", keep, active=True)
    clip = vtk.vtkClipPolyData()
    clip.SetInputData(work)
    clip.SetValue(0.0)
    clip.Update()
    output = vtk.vtkPolyData()
    output.DeepCopy(clip.GetOutput())
    output.GetPointData().RemoveArray("_keep")
    return output


def append_polydata(pieces: list[vtk.vtkPolyData]) -> vtk.vtkPolyData:
    pieces = [piece for piece in pieces if piece.GetNumberOfPoints() > 0]
    if not pieces:
        return vtk.vtkPolyData()
    if len(pieces) == 1:
        return pieces[0]
    append = vtk.vtkAppendPolyData()
    for piece in pieces:
        append.AddInputData(piece)
    append.Update()
    output = vtk.vtkPolyData()
    output.DeepCopy(append.GetOutput())
    return output


def in_plane_axes(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors u, v with u × v = normal (normal must be a unit vector)."""
    normal = np.asarray(normal, float)
    # Start from the RAS axis least aligned with the normal, for a well-conditioned cross product.
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    u = np.cross(helper, normal)
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    return u, v


def _closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point to each p on triangle (a, b, c), all (M, 3): Ericson's region tests, vectorised."""
    ab, ac, ap = b - a, c - a, p - a
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3 = np.einsum("ij,ij->i", ab, bp)
    d4 = np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5 = np.einsum("ij,ij->i", ab, cp)
    d6 = np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    result = np.empty_like(p)
    done = np.zeros(len(p), bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        regions = (
            ((d1 <= 0) & (d2 <= 0), lambda m: a[m]),  # vertex a
            ((d3 >= 0) & (d4 <= d3), lambda m: b[m]),  # vertex b
            ((d6 >= 0) & (d5 <= d6), lambda m: c[m]),  # vertex c
            ((vc <= 0) & (d1 >= 0) & (d3 <= 0), lambda m: a[m] + (d1 / (d1 - d3))[m, None] * ab[m]),
            ((vb <= 0) & (d2 >= 0) & (d6 <= 0), lambda m: a[m] + (d2 / (d2 - d6))[m, None] * ac[m]),
            (
                (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
                lambda m: b[m] + ((d4 - d3) / ((d4 - d3) + (d5 - d6)))[m, None] * (c[m] - b[m]),
            ),
        )
        for condition, closest in regions:
            mask = condition & ~done
            result[mask] = closest(mask)
            done |= mask
        inside = ~done  # the face itself
        denominator = 1.0 / (va + vb + vc)
        v = (vb * denominator)[inside, None]
        w = (vc * denominator)[inside, None]
        result[inside] = a[inside] + ab[inside] * v + ac[inside] * w
    return result


class MeshDistance:
    """Exact distance from points to a fine triangle mesh (such as an iso-surface).

    The candidates for each point are the triangles around its `k` nearest mesh vertices (a k-d
    tree); on a fine, even mesh the nearest triangle is always among them. Vectorised numpy:
    about 50 times faster than calling `vtkImplicitPolyDataDistance` point by point, with the
    same result (the tests compare the two).
    """

    def __init__(self, polydata: vtk.vtkPolyData, k: int = 4):
        from scipy.spatial import cKDTree

        self.vertices = polydata_points(polydata)
        polys = polydata.GetPolys()
        if len(self.vertices) == 0 or polys is None or polys.GetNumberOfCells() == 0:
            raise ValueError("an empty mesh has no distance")
        connectivity = vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
        offsets = vtk_to_numpy(polys.GetOffsetsArray()).astype(np.int64)
        if not np.all(np.diff(offsets) == 3):
            raise ValueError("the mesh must hold triangles only")
        self.triangles = connectivity.reshape(-1, 3)
        # Vertex -> incident triangles, padded with -1 to the largest degree.
        order = np.argsort(self.triangles.ravel(), kind="stable")
        vertex_of = self.triangles.ravel()[order]
        triangle_of = order // 3
        counts = np.bincount(vertex_of, minlength=len(self.vertices))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(vertex_of)) - starts[vertex_of]
        self.incident = np.full((len(self.vertices), max(int(counts.max()), 1)), -1, np.int64)
        self.incident[vertex_of, rank] = triangle_of
        self.tree = cKDTree(self.vertices)
        self.k = min(int(k), len(self.vertices))

    def distance(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unsigned distance (mm) of each point to the mesh, and the closest mesh points."""
        points = np.asarray(points, float).reshape(-1, 3)
        distances = np.empty(len(points))
        closest = np.empty_like(points)
        # In chunks, so that the (points × candidates) temporaries stay in the processor's cache.
        for start in range(0, len(points), 2048):
            chunk = slice(start, start + 2048)
            distances[chunk], closest[chunk] = self._distance(points[chunk])
        return distances, closest

    def _distance(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, nearest = self.tree.query(points, k=self.k)
        candidates = self.incident[nearest.reshape(len(points), -1)].reshape(len(points), -1)
        valid = candidates >= 0
        triangles = self.triangles[np.where(valid, candidates, 0)].reshape(-1, 3)
        p = np.repeat(points, candidates.shape[1], axis=0)
        closest = _closest_points_on_triangles(
            p, self.vertices[triangles[:, 0]], self.vertices[triangles[:, 1]], self.vertices[triangles[:, 2]]
        )
        squared = np.einsum("ij,ij->i", p - closest, p - closest).reshape(candidates.shape)
        # Padding, and degenerate (zero-area) triangles that iso-surfaces contain: their edges
        # and vertices belong to neighbouring triangles too.
        squared[~valid | np.isnan(squared)] = np.inf
        best = np.argmin(squared, axis=1)
        rows = np.arange(len(points))
        closest_points = closest.reshape(len(points), -1, 3)[rows, best]
        return np.sqrt(squared[rows, best]), closest_points
