"""Exact grids: the resection working grid and every nearest-neighbour resampling keep volumes
and centroids, and break half-voxel ties deterministically and without bias.

Independent references: the source voxels themselves (count × voxel volume, mean of their
centres) and, for a plane cut, the analytic volume of each source voxel's box on the removed
side of the plane (a closed form, checked here against supersampling).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import slicer
import vtk
from vtk.util.numpy_support import numpy_to_vtk

from CasePortalConnectorLib.dicom_objects import import_seg
from SurgicalPlanningLib.resection import ResectionPlanner
from SurgicalPlanningLib.resection.geometry import working_steps
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import (
    GridArray,
    array_to_vtk_matrix,
    nearest_along_axis,
    nearest_voxel,
    resample_nearest,
    segment_mask,
)

# --- synthetic organs ----------------------------------------------------------------------------


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    x, y, z = axis
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)


# CT-like (i → −R, j → −A) and oblique (non-identity direction cosines), both anisotropic.
GEOMETRIES = {
    "axis-aligned": (np.diag([-1.0, -1.0, 1.0]), np.array([1.4, 1.4, 2.0])),
    "oblique": (rotation([1.0, 2.0, 3.0], 25.0) @ np.diag([-1.0, 1.0, 1.0]), np.array([0.9, 1.1, 2.5])),
}
ORGAN_CENTRE = np.array([12.0, -20.0, 30.0])


def organ_ijk_to_ras(name: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    axes, spacing = GEOMETRIES[name]
    shape_kji = tuple(int(np.ceil(80.0 / s)) for s in spacing[::-1])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = axes * spacing
    middle = (np.array(shape_kji[::-1]) - 1) / 2.0
    ijk_to_ras[:3, 3] = ORGAN_CENTRE - ijk_to_ras[:3, :3] @ middle + np.array([0.13, -0.27, 0.41])
    return ijk_to_ras, shape_kji


def organ_labels(ijk_to_ras: np.ndarray, shape_kji) -> np.ndarray:
    """An asymmetric organ: an ellipsoid with a bulge on one side, tilted in RAS."""
    k, j, i = np.indices(shape_kji)
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    ras = ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    local = (ras - ORGAN_CENTRE) @ rotation([0.3, -1.0, 0.5], 35.0)
    body = (local[:, 0] / 24.0) ** 2 + (local[:, 1] / 15.0) ** 2 + (local[:, 2] / 12.0) ** 2 <= 1.0
    bulge = np.linalg.norm(local - np.array([16.0, 7.0, 4.0]), axis=1) <= 9.0
    return (body | bulge).reshape(shape_kji).astype(np.uint8)


def add_volume(scene, array: np.ndarray, ijk_to_ras: np.ndarray, node_class="vtkMRMLScalarVolumeNode"):
    volume = scene.AddNewNodeByClass(node_class, "grid")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(array, np.uint8).ravel(), deep=True))
    volume.SetAndObserveImageData(image)
    volume.SetIJKToRASMatrix(array_to_vtk_matrix(ijk_to_ras))
    return volume


def segmentation_of(app, labels: np.ndarray, ijk_to_ras: np.ndarray):
    labelmap = add_volume(app.scene, labels, ijk_to_ras, "vtkMRMLLabelMapVolumeNode")
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organ")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    app.scene.RemoveNode(labelmap)
    return segmentation, segmentation.GetSegmentation().GetNthSegmentID(0)


def points_of(grid: GridArray) -> np.ndarray:
    return grid.ras_of(np.argwhere(grid.array)[:, ::-1].astype(float))


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def organ(request):
    app = VSPApplication.create_headless()
    ijk_to_ras, shape = organ_ijk_to_ras(request.param)
    labels = organ_labels(ijk_to_ras, shape)
    segmentation, segment_id = segmentation_of(app, labels, ijk_to_ras)
    source = GridArray(labels.astype(bool), ijk_to_ras)
    return app, segmentation, segment_id, source, request.param


# --- the exact truth of a plane cut ----------------------------------------------------------------


def cube_fraction_above(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Fraction of the unit cube [0, 1]³ where a·u > t (a with no zero component), for each t.

    Closed form: the volume where a·u ≤ t is Σ_v (−1)^|v| max(0, t − a·v)³ / (6 a₁a₂a₃) over the
    cube's corners v, once negative components are flipped (u → 1 − u).
    """
    a = np.asarray(a, float)
    t = np.asarray(t, float) - a[a < 0].sum()
    a = np.abs(a)
    below = np.zeros_like(t)
    for v in itertools.product((0, 1), repeat=3):
        below += (-1) ** sum(v) * np.maximum(t - a @ np.array(v, float), 0.0) ** 3
    return 1.0 - np.clip(below / (6.0 * np.prod(a)), 0.0, 1.0)


def exact_volume_above(source: GridArray, origin: np.ndarray, normal: np.ndarray) -> float:
    """mm³ of the source voxels' boxes on the normal's side of the plane (analytic)."""
    a = source.ijk_to_ras[:3, :3].T @ normal  # the plane in source index space: a·x > b
    b = float(normal @ (origin - source.ijk_to_ras[:3, 3]))
    assert np.abs(a).min() > 0.02 * np.linalg.norm(a)  # oblique to every voxel axis: the closed form holds
    centres = np.argwhere(source.array)[:, ::-1].astype(float)
    fraction = cube_fraction_above(a, b - (centres - 0.5) @ a)
    return float(fraction.sum()) * source.voxel_volume_mm3


def test_the_closed_form_matches_supersampling():
    rng = np.random.default_rng(4)
    n = 40
    u = (np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), axis=-1).reshape(-1, 3) + 0.5) / n
    for a in (np.array([0.7, -1.3, 0.4]), np.array([-0.04, -0.7, 1.9])):  # the second nearly axis-parallel
        t = rng.uniform(-1.5, 1.0, 20) + a[a < 0].sum() * 0.5
        sampled = np.array([(u @ a > value).mean() for value in t])
        assert np.abs(cube_fraction_above(a, t) - sampled).max() < 3e-3
        assert np.ptp(sampled) > 0.3


# --- 1. the resection working grid -----------------------------------------------------------------


def test_working_steps_rule():
    """Largest integer division of each source spacing not coarser than asked; odd multiples of
    a finer source."""
    assert np.allclose(working_steps([0.7, 0.7, 1.25], 0.5), [1 / 2, 1 / 2, 1 / 3])
    assert np.allclose(working_steps([1.4, 1.4, 2.0], 0.5), [1 / 3, 1 / 3, 1 / 4])
    assert np.allclose(working_steps([0.5, 1.0, 0.3], 0.5), [1.0, 1 / 2, 1.0])
    assert np.allclose(working_steps([0.3, 0.25, 0.2], 1.0), [3.0, 3.0, 5.0])


@pytest.mark.parametrize("spacing_mm", [0.5, 1.0])
def test_working_grid_keeps_volume_and_centroid_and_cuts_exactly(organ, spacing_mm):
    app, segmentation, segment_id, source, name = organ
    planner = ResectionPlanner(
        app, segmentation, segment_id, spacing_mm=spacing_mm, name=f"exact {spacing_mm}"
    )
    grid = planner.region.grid
    # The working grid is the source lattice subdivided: same axes, an integer number of working
    # voxels per source voxel, corners on the source's corners.
    steps = working_steps(source.spacing_mm, spacing_mm)
    assert np.all(grid.spacing_mm <= spacing_mm + 1e-9)
    to_source = np.linalg.solve(source.ijk_to_ras, grid.ijk_to_ras)
    assert np.allclose(to_source[:3, :3], np.diag(steps), atol=1e-9)
    first_corner = to_source[:3, 3] - 0.5 * steps
    assert np.allclose(first_corner - np.round(first_corner - 0.5), 0.5, atol=1e-6)

    truth_points = points_of(source)
    truth_volume = len(truth_points) * source.voxel_volume_mm3
    truth_centre = truth_points.mean(axis=0)
    # An oblique plane, off the organ's centre.
    normal = np.array([0.48, -0.62, 0.62])
    normal /= np.linalg.norm(normal)
    origin = truth_centre + 4.3 * normal
    planner.add_plane(planner.create_plane(origin, normal, "plane"), remove="positive")
    result = planner.update()

    output = planner.output_segmentation_node
    resected = points_of(segment_mask(output, "resection_resected"))
    remnant = points_of(segment_mask(output, "resection_remnant"))
    union = np.vstack([resected, remnant])
    voxel = grid.voxel_volume_mm3
    assert len(union) * voxel == pytest.approx(truth_volume, rel=1e-9)
    assert np.linalg.norm(union.mean(axis=0) - truth_centre) <= 0.05, union.mean(axis=0) - truth_centre
    assert result.organ_volume_mL * 1000.0 == pytest.approx(truth_volume, rel=1e-9)
    grid_json = result.to_json()["grid"]
    assert grid_json["spacing_mm"] == spacing_mm
    assert np.allclose(grid_json["voxel_size_mm"], source.spacing_mm * steps, atol=1e-4)

    exact = exact_volume_above(source, origin, normal)
    assert 0.2 * truth_volume < exact < 0.8 * truth_volume
    assert abs(result.resected_volume_mL * 1000.0 - exact) <= 0.005 * exact, (
        result.resected_volume_mL,
        exact,
    )
    assert abs(result.remnant_volume_mL * 1000.0 - (truth_volume - exact)) <= 0.005 * (truth_volume - exact)


# --- 2. nearest-neighbour resampling ----------------------------------------------------------------


def reference_grid(source: GridArray, factor: int, shift_voxels=(0, 0, 0)) -> tuple[np.ndarray, tuple]:
    """The source lattice, shifted by whole voxels and split `factor` times (corners aligned)."""
    target = source.ijk_to_ras.copy()
    target[:3, :3] = source.ijk_to_ras[:3, :3] / factor
    corner = np.array(shift_voxels, float) - 0.5 + 0.5 / factor
    target[:3, 3] = source.ijk_to_ras[:3, :3] @ corner + source.ijk_to_ras[:3, 3]
    shape = tuple((int(n) + 16) * factor for n in source.array.shape)  # room for shifts up to 8 voxels
    return target, shape


@pytest.mark.parametrize(
    "factor, shift", [(1, (0, 0, 0)), (1, (3, -2, 5)), (2, (0, 0, 0)), (3, (-4, 1, 2))], ids=str
)
def test_segment_mask_on_a_reference_grid_keeps_volume_and_centroid(organ, factor, shift):
    """Identical, shifted by whole voxels, finer by an integer factor: the same voxels exactly."""
    app, segmentation, segment_id, source, _ = organ
    crop = GridArray(source.array, source.ijk_to_ras)
    # The reference starts a few voxels before the organ's own grid, so nothing is cut off.
    start = tuple(s - 3 for s in shift)
    target, shape = reference_grid(crop, factor, start)
    volume = add_volume(app.scene, np.zeros(shape, np.uint8), target)
    try:
        mask = segment_mask(segmentation, segment_id, volume)
        full = segment_mask(segmentation, segment_id, volume, crop=False)
    finally:
        app.scene.RemoveNode(volume)
    truth = points_of(source)
    got = points_of(mask)
    assert len(got) * mask.voxel_volume_mm3 == pytest.approx(len(truth) * source.voxel_volume_mm3, rel=1e-9)
    assert np.linalg.norm(got.mean(axis=0) - truth.mean(axis=0)) <= 0.05
    assert full.array.shape == shape and full.array.sum() == mask.array.sum()


def _via_resample_nearest(mask, target, shape):
    return GridArray(resample_nearest(mask, target, shape), target)


def _via_territories(mask, target, shape):
    from SurgicalPlanningLib.territories import on_grid

    return GridArray(on_grid(mask, target, shape), target)


def _via_compare(mask, target, shape):
    from SurgicalPlanningLib.segmentation.compare import resample_onto_lattice

    return resample_onto_lattice(mask, target)  # the lattice only: it covers the mask whole


NEAREST_PATHS = {
    "arrays.resample_nearest": _via_resample_nearest,
    "territories.on_grid": _via_territories,
    "compare.resample_onto_lattice": _via_compare,
}


@pytest.mark.parametrize("path", list(NEAREST_PATHS))
def test_every_nearest_neighbour_path_is_exact_on_subdividing_grids(organ, path):
    """Identical, shifted by whole voxels, finer by 2 and 3: the same voxels exactly; centres
    half-way (ties on every axis): volume and centroid kept up to the boundary planes' share."""
    *_, source, _ = organ
    resample = NEAREST_PATHS[path]
    truth = points_of(source)
    truth_volume = len(truth) * source.voxel_volume_mm3
    for factor, shift in ((1, (0, 0, 0)), (1, (-3, -2, -5)), (2, (-2, -1, -1)), (3, (-1, -2, -1))):
        target, shape = reference_grid(source, factor, shift)
        got = resample(source, target, shape)
        points = points_of(got)
        assert len(points) * got.voxel_volume_mm3 == pytest.approx(truth_volume, rel=1e-9), (factor, shift)
        assert np.linalg.norm(points.mean(axis=0) - truth.mean(axis=0)) <= 0.05, (factor, shift)
    target = source.ijk_to_ras.copy()
    target[:3, :3] /= 2.0
    got = resample(source, target, tuple(2 * n for n in source.array.shape))
    points = points_of(got)
    assert len(points) * got.voxel_volume_mm3 == pytest.approx(truth_volume, rel=0.01)
    shift = np.abs(np.linalg.solve(source.ijk_to_ras[:3, :3], points.mean(axis=0) - truth.mean(axis=0)))
    assert shift.max() <= 0.1, shift  # source voxels; all ties up: 0.25


@pytest.mark.parametrize("aligned", [True, False], ids=["corners-aligned", "centres-aligned-ties"])
def test_edit_session_resampling_onto_a_finer_volume(organ, aligned):
    """A segmentation opened with a volume twice as fine is resampled onto it: the same voxels
    exactly when corners align; with every other centre on a tie, volume and centroid kept up to
    the boundary planes' share (Slicer's resampler rounds every tie up: 0.25 voxel)."""
    from SurgicalPlanningLib.segmentation import editing

    app, segmentation, segment_id, source, _ = organ
    if aligned:
        target, shape = reference_grid(source, 2, (-2, -2, -2))
    else:
        target = source.ijk_to_ras.copy()
        target[:3, :3] /= 2.0
        shape = tuple(2 * n for n in source.array.shape)
    volume = add_volume(app.scene, np.zeros(shape, np.uint8), target)
    copy = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "copy")
    copy.Copy(segmentation)
    try:
        session = editing.EditSession(copy, volume)
        assert session.warnings and "resampled" in session.warnings[0]
        mask = session.mask(segment_id)
        session.close()
    finally:
        app.scene.RemoveNode(copy)
        app.scene.RemoveNode(volume)
    truth = points_of(source)
    got = points_of(mask)
    volume_ratio = len(got) * mask.voxel_volume_mm3 / (len(truth) * source.voxel_volume_mm3)
    shift = np.abs(np.linalg.solve(source.ijk_to_ras[:3, :3], got.mean(axis=0) - truth.mean(axis=0)))
    if aligned:
        assert volume_ratio == pytest.approx(1.0, abs=1e-9)
        assert np.linalg.norm(got.mean(axis=0) - truth.mean(axis=0)) <= 0.05
    else:
        assert volume_ratio == pytest.approx(1.0, abs=0.01)
        assert shift.max() <= 0.1, shift


def test_ties_alternate_deterministically():
    # Targets twice as fine with centres on the source's: every other sample is a tie.
    first = nearest_along_axis(0.5, 0.0, 0, 400)
    noisy = nearest_along_axis(0.5 + 1e-13, 1e-9, 0, 400)
    assert np.array_equal(first, noisy)  # rounding noise does not flip a tie
    positions = np.arange(400) / 2.0
    ties = positions % 1.0 == 0.5
    assert np.array_equal(first[~ties], positions[~ties].astype(int))
    went_up = first[ties] == np.ceil(positions[ties])
    assert np.array_equal(went_up[::2], np.ones(100, bool)) and not went_up[1::2].any()  # in turn
    # A part of the target grid agrees with the whole.
    assert np.array_equal(nearest_along_axis(0.5, 0.0, 37, 100), first[37:137])
    # Twice as coarse, corners aligned: every sample is a tie, and half go each way.
    coarse = nearest_along_axis(2.0, 0.5, 0, 300)
    assert np.mean(coarse % 2 == 1) == 0.5
    # The general rule: ties where told, the rest to the nearest voxel.
    assert list(nearest_voxel(np.array([0.5, 0.5, 1.2, 1.7]), [True, False, True, True])) == [1, 0, 1, 2]


def test_tied_resampling_keeps_the_centroid(organ):
    """Centres on the source's and half-way between them (ties on every axis): the mask keeps its
    volume and, up to its boundary planes' share, its centroid."""
    *_, source, _ = organ
    target = source.ijk_to_ras.copy()
    target[:3, :3] = source.ijk_to_ras[:3, :3] / 2.0
    shape = tuple(2 * n for n in source.array.shape)
    resampled = GridArray(resample_nearest(source, target, shape), target)
    noisy = target.copy()
    noisy[:3] += np.random.default_rng(2).uniform(-1e-10, 1e-10, (3, 4))  # a saved and reloaded grid
    again = resample_nearest(source, noisy, shape)
    assert np.array_equal(resampled.array, again)
    truth = points_of(source)
    got = points_of(resampled)
    volume = len(got) * resampled.voxel_volume_mm3
    assert volume == pytest.approx(len(truth) * source.voxel_volume_mm3, rel=0.01)
    # In source voxels. Rounding every tie up shifts it by exactly 0.25 along each axis; ties in
    # turn leave only the boundary planes' share (measured: 0.024 axis-aligned, 0.076 oblique).
    shift = np.abs(np.linalg.solve(source.ijk_to_ras[:3, :3], got.mean(axis=0) - truth.mean(axis=0)))
    assert shift.max() <= 0.1, shift
    assert shift.mean() <= 0.05, shift


def test_seg_import_onto_a_finer_reference_keeps_volume_and_centroid(app, dcmqi_dir):
    """DICOM SEG import onto a reference volume twice as fine (corners aligned) and onto one
    shifted by whole voxels: the SEG's voxels exactly."""
    own = import_seg(app, dcmqi_dir / "liver.dcm")
    own_id = own.GetSegmentation().GetNthSegmentID(0)
    truth = segment_mask(own, own_id)
    truth_points = points_of(truth)
    assert len(truth_points) > 1000
    image = own.GetSegmentation().GetSegment(own_id).GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    lattice = GridArray(
        truth.array, np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    )
    box = GridArray(truth.array, truth.ijk_to_ras)  # the liver's crop, on that lattice
    for factor, shift in ((2, (-2, -2, -1)), (1, (-7, -3, -1))):
        target, shape = reference_grid(box, factor, shift)
        assert np.allclose(np.linalg.solve(lattice.ijk_to_ras, target)[:3, :3], np.eye(3) / factor)
        volume = add_volume(app.scene, np.zeros(shape, np.uint8), target)
        node = import_seg(app, dcmqi_dir / "liver.dcm", reference_volume=volume)
        mask = segment_mask(node, node.GetSegmentation().GetNthSegmentID(0))
        got = points_of(mask)
        assert len(got) * mask.voxel_volume_mm3 == pytest.approx(
            len(truth_points) * truth.voxel_volume_mm3, rel=1e-9
        )
        assert np.linalg.norm(got.mean(axis=0) - truth_points.mean(axis=0)) <= 0.05
        app.scene.RemoveNode(node)
        app.scene.RemoveNode(volume)


def test_seg_import_with_ties_keeps_the_centroid(app, dcmqi_dir):
    """Onto a grid twice as fine in-plane with centres on the SEG's (a tie between two columns
    and two rows every other voxel): ties go both ways, so the liver stays where it is."""
    own = import_seg(app, dcmqi_dir / "liver.dcm")
    truth = segment_mask(own, own.GetSegmentation().GetNthSegmentID(0))
    truth_points = points_of(truth)
    target = truth.ijk_to_ras.copy()
    target[:3, :2] /= 2.0
    target[:3, 3] -= truth.ijk_to_ras[:3, :3] @ np.array([4.0, 4.0, 1.0])
    shape = (truth.array.shape[0] + 2, 2 * truth.array.shape[1] + 16, 2 * truth.array.shape[2] + 16)
    volume = add_volume(app.scene, np.zeros(shape, np.uint8), target)
    node = import_seg(app, dcmqi_dir / "liver.dcm", reference_volume=volume)
    mask = segment_mask(node, node.GetSegmentation().GetNthSegmentID(0))
    got = points_of(mask)
    volume_ratio = len(got) * mask.voxel_volume_mm3 / (len(truth_points) * truth.voxel_volume_mm3)
    assert volume_ratio == pytest.approx(1.0, abs=0.01)
    # In SEG voxels, along the columns and rows; rounding every tie up gives 0.25 on both.
    shift = np.linalg.solve(truth.ijk_to_ras[:3, :3], got.mean(axis=0) - truth_points.mean(axis=0))
    assert np.abs(shift[:2]).max() <= 0.05, shift
    assert abs(shift[2]) < 1e-5


# --- 3. the thin-plate spline ----------------------------------------------------------------------


def hand_written_spline(xy: np.ndarray, z: np.ndarray, smoothing: float, probe: np.ndarray) -> np.ndarray:
    """The thin-plate spline solved directly (the planner's former implementation): the reference."""
    centre = xy.mean(axis=0)
    scale = float(np.ptp(xy, axis=0).max())
    nodes = (xy - centre) / scale
    n = len(nodes)

    def kernel(a, b):
        r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num(0.5 * r2 * np.log(r2), nan=0.0)

    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = kernel(nodes, nodes) + smoothing * np.eye(n)
    system[:n, n:] = np.column_stack([np.ones(n), nodes])
    system[n:, :n] = system[:n, n:].T
    solution = np.linalg.lstsq(system, np.concatenate([z, np.zeros(3)]), rcond=None)[0]
    p = (probe - centre) / scale
    return solution[n] + p @ solution[n + 1 :] + kernel(p, nodes) @ solution[:n]


@pytest.mark.parametrize(
    "count, smoothing",
    [(25, 1e-9), (49, 1e-9), (300, 1e-3)],  # the surfaces' control grids, and a closed-curve fit
    ids=["5x5", "7x7", "curve"],
)
def test_scipy_thin_plate_spline_gives_the_hand_written_heights(count, smoothing):
    from SurgicalPlanningLib.resection.surfaces import ThinPlateSpline, height_field_from_control_points

    rng = np.random.default_rng(count)
    if count < 100:  # a control grid (rows, columns, 3) in mm, bent like a dragged surface
        side = int(np.sqrt(count))
        s, t = np.meshgrid(np.linspace(-45, 45, side), np.linspace(-35, 35, side))
        points = np.stack([s, t, rng.normal(0.0, 4.0, s.shape)], axis=-1) @ rotation([1, 2, 2], 30).T
        field = height_field_from_control_points(points, 0.5)
        uv = np.stack(
            np.meshgrid(
                field.u_range[0] + 0.5 * np.arange(field.heights.shape[1]),
                field.v_range[0] + 0.5 * np.arange(field.heights.shape[0]),
            ),
            axis=-1,
        ).reshape(-1, 2)
        local = (points.reshape(-1, 3) - field.origin) @ np.column_stack([field.u, field.v, field.w])
        reference = hand_written_spline(local[:, :2], local[:, 2], 1e-9, uv)
        assert np.abs(field.heights.ravel() - reference).max() < 1e-6
        assert np.abs(field.height_at(local[:, :2]) - local[:, 2]).max() < 0.05  # through its points
    else:  # a smoothing fit to a drawn closed curve
        angle = np.linspace(0, 2 * np.pi, count, endpoint=False)
        xy = np.column_stack([30 * np.cos(angle), 22 * np.sin(angle)])
        z = 3 * np.sin(2 * angle) + rng.normal(0, 0.3, count)
        probe = rng.uniform(-50, 50, (5000, 2))
        got = ThinPlateSpline(xy, z, smoothing=smoothing)(probe)
        assert np.abs(got - hand_written_spline(xy, z, smoothing, probe)).max() < 1e-6
