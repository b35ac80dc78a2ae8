"""Segment statistics and segmentation comparison, against the phantom's ground truth and
analytic shapes (spheres, boxes), in RAS, on Slicer's real segmentation nodes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import slicer
import vtk
from scipy import ndimage
from slicer.util import updateVolumeFromArray
from vtk.util.numpy_support import numpy_to_vtk

from SurgicalPlanningLib.sample_case import create_sample_case, labelmap_to_segmentation, load_sample_case
from SurgicalPlanningLib.segmentation.compare import compare_masks, compare_segments
from SurgicalPlanningLib.segmentation.statistics import (
    compute_segment_statistics,
    intensity_statistics,
    max_diameter_mm,
    statistics_of_mask,
    to_json,
    to_table_node,
)
from SurgicalPlanningLib.structures import structure_key_of_segment
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import GridArray, array_to_vtk_matrix, segment_ids
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.sampledata.phantom import generate_phantom

# The full case's voxel size (0.7 x 0.7 x 1.0 mm) on a field of view around the left kidney,
# its tumour and the great vessels: 231 x 175 x 170 mm.
SHAPE = (330, 250, 170)
SPACING = (0.7, 0.7, 1.0)
VOXEL_MM = max(SPACING)


def lps_to_ras(point) -> np.ndarray:
    return np.array([-point[0], -point[1], point[2]], float)


def add_volume(app, array, ijk_to_ras, name, *, labelmap=False):
    node = app.scene.AddNewNodeByClass(
        "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name
    )
    updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(array_to_vtk_matrix(ijk_to_ras))
    return node


def add_segmentation(app, labels, ijk_to_ras, label_terms, reference_volume, name="Segmentation"):
    """A segmentation built like the ground truth: labelmap imported, reference geometry set."""
    labelmap = add_volume(app, labels.astype(np.uint8), ijk_to_ras, f"{name} labels", labelmap=True)
    try:
        return labelmap_to_segmentation(
            app, labelmap, label_terms, reference_volume=reference_volume or labelmap, name=name
        )
    finally:
        app.scene.RemoveNode(labelmap)


def segment_id_of(segmentation_node, key: str) -> str:
    # The structure a segment holds is decided by its terminology codes.
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        if structure_key_of_segment(segmentation.GetSegment(segment_id)) == key:
            return segment_id
    raise KeyError(key)


def sphere_mask(shape_kji, ijk_to_ras, centre_ras, radius_mm) -> GridArray:
    k, j, i = np.indices(shape_kji)
    ras = np.stack([i, j, k], axis=-1) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    return GridArray(np.linalg.norm(ras - centre_ras, axis=-1) <= radius_mm, ijk_to_ras)


def matrix(spacing, origin=(0.0, 0.0, 0.0), rotation=None) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def rotation_z(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


# An oblique grid in RAS: patient-LPS axes (Slicer's usual CT) turned 20 degrees about S.
OBLIQUE = np.diag([-1.0, -1.0, 1.0]) @ rotation_z(20)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, spacing_mm=SPACING, seed=5)


@pytest.fixture(scope="module")
def case(phantom):
    app = VSPApplication.create_headless()
    volume = add_volume(app, phantom.ct_hu, phantom.ijk_to_ras(), "CT")
    label_terms = {s.label: s.key for s in phantom.structures}
    segmentation = add_segmentation(app, phantom.labels, phantom.ijk_to_ras(), label_terms, volume, "Truth")
    rows = compute_segment_statistics(segmentation, volume)
    return app, volume, segmentation, {row.structure_key: row for row in rows}


# ------------------------------------------------------------------------------------------
# Statistics against the phantom's ground truth
# ------------------------------------------------------------------------------------------


def test_volumes_match_the_ground_truth(phantom, case):
    _, _, _, rows = case
    analytic = phantom.truth.analytic_volumes_ml
    for key in ("tumour", "aorta", "ivc", "spinal_cord"):
        assert rows[key].volume_ml == pytest.approx(analytic[key], rel=0.02), key
    assert rows["tumour"].volume_ml == pytest.approx(math.pi / 6 * 30**3 / 1000, rel=0.02)
    # Nothing is lost on the way through Slicer's segmentation: voxel for voxel the label map.
    voxel_mm3 = float(np.prod(SPACING))
    for structure in phantom.structures:
        row = rows[structure.key]
        assert row.voxel_count == int(np.count_nonzero(phantom.labels == structure.label)), structure.key
        assert row.volume_mm3 == pytest.approx(row.voxel_count * voxel_mm3)
        assert row.volume_ml == pytest.approx(row.volume_mm3 / 1000)
        assert not row.resampled and not row.warnings


def test_tumour_position_size_and_density(phantom, case):
    _, _, _, rows = case
    tumour = rows["tumour"]
    centre = lps_to_ras(phantom.truth.tumour_centre_lps)
    assert np.all(np.abs(np.array(tumour.centroid_ras_mm) - centre) < np.array(SPACING)), (
        tumour.centroid_ras_mm
    )
    assert tumour.centroid_ras_mm[0] < 0, "the tumour is in the LEFT kidney: negative R"
    assert tumour.max_diameter_mm == pytest.approx(30.0, abs=VOXEL_MM)
    assert tumour.hu_mean == pytest.approx(40, abs=5)
    assert tumour.hu_p5 < tumour.hu_p25 < tumour.hu_p50 < tumour.hu_p75 < tumour.hu_p95
    assert tumour.hu_min <= tumour.hu_p5 and tumour.hu_p95 <= tumour.hu_max
    assert 8 < tumour.hu_sd < 25  # 12 HU noise, some partial volume
    assert tumour.islands == 1
    low, high = (np.array(v) for v in tumour.bounding_box_ras_mm)
    assert np.all(np.abs((low + high) / 2 - centre) < np.array(SPACING))
    assert np.all(np.abs((high - low) - 30) < 2 * np.array(SPACING))
    box = tumour.oriented_bounding_box
    assert np.allclose(box.extent_mm, 30, atol=1.5)
    assert np.allclose(box.centre_ras_mm, centre, atol=VOXEL_MM)
    axes = np.array(box.axes_ras)
    assert np.allclose(axes @ axes.T, np.eye(3), atol=1e-6)


def test_cortex_density(case, phantom):
    """Left cortex 180 HU in the phantom; its thin rim shares voxels with fat and medulla."""
    _, volume, segmentation, rows = case
    cortex = rows["kidney_left_cortex"]
    assert cortex.hu_p50 == pytest.approx(180, abs=10)
    # The whole segment's mean includes the partial-volume rim; the core's mean is the tissue's.
    mask = phantom.labels == 20
    core = GridArray(ndimage.binary_erosion(mask), phantom.ijk_to_ras())
    core_row = statistics_of_mask(core, GridArray(phantom.ct_hu, phantom.ijk_to_ras()))
    assert core_row.hu_mean == pytest.approx(180, abs=10)
    assert 150 < cortex.hu_mean < core_row.hu_mean
    assert rows["kidney_left_medulla"].hu_p50 == pytest.approx(90, abs=10)
    assert rows["aorta"].hu_p50 == pytest.approx(300, abs=10)


# ------------------------------------------------------------------------------------------
# Statistics of analytic shapes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spacing, rotation", [((0.5, 0.5, 0.5), None), ((0.7, 0.7, 1.0), OBLIQUE), ((1.0, 0.8, 1.5), None)]
)
def test_sphere_surface_area_volume_and_diameter(spacing, rotation):
    radius = 15.0
    shape_kji = tuple(int(2 * radius / s) + 8 for s in spacing[::-1])
    ijk_to_ras = matrix(spacing, (5.0, -20.0, 30.0), rotation)
    centre = ijk_to_ras[:3, :3] @ (np.array(shape_kji[::-1], float) - 1) / 2 + ijk_to_ras[:3, 3]
    row = statistics_of_mask(sphere_mask(shape_kji, ijk_to_ras, centre, radius))
    assert row.surface_area_mm2 == pytest.approx(4 * math.pi * radius**2, rel=0.03)
    assert row.volume_mm3 == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.02)
    assert row.max_diameter_mm == pytest.approx(2 * radius, abs=max(spacing))
    assert np.allclose(row.centroid_ras_mm, centre, atol=0.05)
    assert row.islands == 1 and row.hu_mean is None


def test_islands_are_counted_with_26_connectivity():
    array = np.zeros((30, 30, 30), bool)
    array[2:6, 2:6, 2:6] = True
    array[10:14, 10:20, 3:5] = True
    array[20:28, 20:28, 20:28] = True
    assert statistics_of_mask(GridArray(array, matrix((1, 1, 1)))).islands == 3
    # Two voxels touching at a corner: one island with 26-connectivity (two with 6).
    corner = np.zeros((4, 4, 4), bool)
    corner[1, 1, 1] = corner[2, 2, 2] = True
    assert ndimage.label(corner)[1] == 2
    assert statistics_of_mask(GridArray(corner, matrix((1, 1, 1)))).islands == 1
    row = statistics_of_mask(GridArray(corner, matrix((1, 1, 1))))
    assert row.to_json()["island_connectivity"] == 26


def itk_feret_diameter(array: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    image.SetSpacing(*spacing)
    image.SetOrigin(*ijk_to_ras[:3, 3])
    image.GetPointData().SetScalars(numpy_to_vtk(array.astype(np.uint8).ravel(), deep=True))
    directions = np.eye(4)
    directions[:3, :3] = ijk_to_ras[:3, :3] / spacing
    shape = slicer.vtkITKLabelShapeStatistics()
    shape.SetInputData(image)
    shape.SetDirections(array_to_vtk_matrix(directions))
    shape.SetComputeShapeStatistic("FeretDiameter", True)
    shape.Update()
    return shape.GetOutput().GetColumnByName("FeretDiameter").GetTuple1(0)


def test_max_diameter_is_itks_feret_diameter():
    rng = np.random.default_rng(7)
    ijk_to_ras = matrix((0.7, 0.7, 1.2), (3, 4, 5), OBLIQUE)
    shapes = []
    blobs = np.zeros((40, 50, 60), bool)
    for _ in range(5):
        centre = rng.uniform([5, 5, 5], [35, 45, 55])
        k, j, i = np.indices(blobs.shape)
        blobs |= (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= rng.uniform(9, 40)
    shapes.append(blobs)
    shapes.append(rng.random((20, 70, 70)) < 0.02)  # scattered voxels: many islands
    flat = np.zeros((5, 40, 40), bool)
    flat[2, 5:30, 8:35] = True  # one slice: a flat (coplanar) set
    shapes.append(flat)
    line = np.zeros((3, 3, 50), bool)
    line[1, 1, 4:45] = True
    shapes.append(line)
    single = np.zeros((3, 3, 3), bool)
    single[1, 1, 1] = True
    shapes.append(single)
    for array in shapes:
        assert max_diameter_mm(array, ijk_to_ras) == pytest.approx(
            itk_feret_diameter(array, ijk_to_ras), abs=1e-6
        )


def test_centroid_boxes_and_axes_are_in_ras_on_an_oblique_grid():
    ijk_to_ras = matrix((0.6, 0.8, 1.1), (-40.0, 25.0, 12.0), OBLIQUE)
    array = np.zeros((30, 40, 50), bool)
    array[5:25, 5:10, 5:45] = True  # an L: long bar ...
    array[5:25, 10:35, 5:12] = True  # ... and a leg, so nothing is symmetric
    row = statistics_of_mask(GridArray(array, ijk_to_ras))
    k, j, i = np.nonzero(array)
    ras = np.column_stack([i, j, k]) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    assert np.allclose(row.centroid_ras_mm, ras.mean(axis=0), atol=1e-6)
    assert np.allclose(row.bounding_box_ras_mm[0], ras.min(axis=0), atol=1e-6)
    assert np.allclose(row.bounding_box_ras_mm[1], ras.max(axis=0), atol=1e-6)
    corners = ras[[np.argmin(ras @ d) for d in np.eye(3)] + [np.argmax(ras @ d) for d in np.eye(3)]]
    assert row.max_diameter_mm >= np.max(np.linalg.norm(corners[:, None] - corners[None], axis=-1))

    # A rotated ellipsoid: the oriented box has the ellipsoid's axes and extents.
    semi = np.array([20.0, 10.0, 5.0])
    axes = rotation_z(30)
    grid = matrix((0.5, 0.6, 0.7), (0, 0, 0), np.diag([-1.0, -1.0, 1.0]))
    centre = np.array([-30.0, -40.0, 30.0])
    k, j, i = np.indices((100, 110, 120))
    ras = np.stack([i, j, k], axis=-1) @ grid[:3, :3].T + grid[:3, 3]
    local = (ras - centre) @ axes
    ellipsoid = np.sum((local / semi) ** 2, axis=-1) <= 1
    box = statistics_of_mask(GridArray(ellipsoid, grid)).oriented_bounding_box
    assert np.allclose(box.extent_mm, 2 * semi, atol=1.2)
    for n in range(3):
        assert abs(np.dot(box.axes_ras[n], axes[:, n])) == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(box.centre_ras_mm, centre, atol=0.7 / 2 + 1e-6)  # voxelised: within half a voxel


def test_intensity_statistics_equal_numpys():
    rng = np.random.default_rng(3)
    values = rng.normal(40, 30, 10_001).round().astype(np.int16)
    stats = intensity_statistics(values)
    assert stats["hu_mean"] == pytest.approx(values.mean(), abs=1e-9)
    assert stats["hu_sd"] == pytest.approx(values.std(), abs=1e-9)
    assert (stats["hu_min"], stats["hu_max"]) == (values.min(), values.max())
    for q in (5, 25, 50, 75, 95):
        assert stats[f"hu_p{q}"] == pytest.approx(np.percentile(values, q), abs=1e-9), q
    floats = rng.normal(0, 1, 999)
    stats = intensity_statistics(floats)
    assert stats["hu_p25"] == pytest.approx(np.percentile(floats, 25))
    assert intensity_statistics(np.zeros(0, np.int16)) == dict.fromkeys(stats)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_empty_segment_gives_zero_statistics(case):
    app, volume, segmentation, _ = case
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "Nothing yet")
    try:
        (row,) = compute_segment_statistics(segmentation, volume, [segment_id])
        assert row.empty and row.voxel_count == 0 and row.volume_ml == 0 and row.surface_area_mm2 == 0
        assert row.centroid_ras_mm is None and row.max_diameter_mm is None and row.hu_mean is None
        assert row.islands == 0 and row.structure_key is None
        json.dumps(to_json([row]))
        table = to_table_node(app.scene, [row])
        assert table.GetNumberOfRows() == 1
        assert math.isnan(table.GetTable().GetColumnByName("hu_mean").GetValue(0))
    finally:
        segmentation.GetSegmentation().RemoveSegment(segment_id)
    with pytest.raises(InputDataError, match="no segment"):
        compute_segment_statistics(segmentation, volume, ["no such segment"])


def test_segmentation_on_another_grid_is_resampled_onto_the_volume(case, phantom):
    app, volume, segmentation, rows = case
    # The tumour labelled on a grid twice as coarse, shifted by half a voxel.
    coarse = phantom.labels[::2, ::2, ::2] == 26
    ijk_to_ras = phantom.ijk_to_ras() @ np.diag([2.0, 2.0, 2.0, 1.0])
    ijk_to_ras[:3, 3] += phantom.ijk_to_ras()[:3, :3] @ np.array([0.5, 0.5, 0.5])
    other = add_segmentation(app, coarse, ijk_to_ras, {1: "tumour"}, None, "Coarse")
    (row,) = compute_segment_statistics(other, volume)
    assert row.resampled and "resampled" in row.warnings[0]
    assert row.volume_ml == pytest.approx(rows["tumour"].volume_ml, rel=0.05)
    assert np.allclose(row.centroid_ras_mm, rows["tumour"].centroid_ras_mm, atol=1.5)
    assert row.hu_mean == pytest.approx(40, abs=8)
    # Without the volume: on the segmentation's own grid, no resampling, no HU.
    (own,) = compute_segment_statistics(other, None)
    assert not own.resampled and own.hu_mean is None
    assert own.voxel_count == int(np.count_nonzero(coarse))


def test_segment_reaching_outside_the_volume_is_refused(case, phantom):
    app, _, segmentation, _ = case
    aorta = segment_id_of(segmentation, "aorta")
    # Volumes holding the slices below / above S = 5 mm: same lattice, the aorta sticks out.
    half = 100
    upper_matrix = phantom.ijk_to_ras().copy()
    upper_matrix[:3, 3] += phantom.ijk_to_ras()[:3, :3] @ np.array([0, 0, half])
    lower = add_volume(app, phantom.ct_hu[:half], phantom.ijk_to_ras(), "CT lower part")
    upper = add_volume(app, phantom.ct_hu[half:], upper_matrix, "CT upper part")
    for partial in (lower, upper):
        with pytest.raises(InputDataError, match="reaches outside the volume; its voxels there") as error:
            compute_segment_statistics(segmentation, partial, [aorta])
        assert "Fix:" in str(error.value)
    # On another lattice (twice as coarse), resampling would silently drop the part outside.
    coarse_matrix = upper_matrix @ np.diag([2.0, 2.0, 1.0, 1.0])
    coarse = add_volume(app, phantom.ct_hu[half:, ::2, ::2], coarse_matrix, "CT upper part, coarse")
    with pytest.raises(InputDataError, match="part of it would be lost") as error:
        compute_segment_statistics(segmentation, coarse, [aorta])
    assert "CT upper part, coarse" in str(error.value) and "Fix:" in str(error.value)
    # The tumour (S -35 to -5 mm) lies in the lower part: that one is fine.
    (row,) = compute_segment_statistics(segmentation, lower, [segment_id_of(segmentation, "tumour")])
    assert row.voxel_count == int(np.count_nonzero(phantom.labels == 26))


# ------------------------------------------------------------------------------------------
# JSON and the table node
# ------------------------------------------------------------------------------------------


def test_json_and_table_carry_units(case):
    app, _, _, rows = case
    selected = [rows[key] for key in ("tumour", "aorta", "kidney_left_cortex")]
    data = json.loads(json.dumps(to_json(selected)))
    tumour = data[0]
    for key in (
        "volume_mL",
        "volume_mm3",
        "surface_area_mm2",
        "centroid_ras_mm",
        "bounding_box_ras_mm",
        "max_diameter_mm",
        "hu_mean",
        "hu_p95",
        "islands",
    ):
        assert key in tumour, key
    assert tumour["structure_key"] == "tumour" and tumour["volume_mL"] == selected[0].volume_ml
    assert set(tumour["oriented_bounding_box"]) == {"axes_ras", "extent_mm", "centre_ras_mm"}

    table_node = to_table_node(app.scene, selected)
    assert table_node.GetNumberOfRows() == 3
    units = {
        "volume_mL": "mL",
        "volume_mm3": "mm3",
        "surface_area_mm2": "mm2",
        "centroid_ras_mm": "mm",
        "max_diameter_mm": "mm",
        "hu_mean": "HU",
        "hu_p5": "HU",
    }
    for column, unit in units.items():
        assert table_node.GetColumnUnitLabel(column) == unit, column
    table = table_node.GetTable()
    assert table.GetColumnByName("segment").GetValue(0) == selected[0].name
    assert table.GetColumnByName("volume_mL").GetValue(1) == pytest.approx(selected[1].volume_ml)
    centroid = table.GetColumnByName("centroid_ras_mm")
    assert centroid.GetNumberOfComponents() == 3
    assert centroid.GetTuple3(0) == pytest.approx(selected[0].centroid_ras_mm)
    assert table.GetColumnByName("islands").GetValue(2) == selected[2].islands


def test_statistics_of_the_imported_sample_case(tmp_path):
    """The DICOM-imported sample case against an independent count: the ground-truth label map
    read from NRRD with SimpleITK (LPS), voxel counts and centroids with numpy."""
    import json

    import SimpleITK as sitk

    case = create_sample_case(tmp_path / "case", shape=(128, 128, 75), seed=2)
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, case.case_dir)
    rows = compute_segment_statistics(loaded.segmentation_node, loaded.volume_node)
    image = sitk.ReadImage(str(case.nrrd_files["labels"]))
    labels = sitk.GetArrayFromImage(image)
    keys = {int(v): e["key"] for v, e in json.loads(case.labels_json.read_text())["labels"].items()}
    assert len(rows) == len(keys)
    for row in rows:
        [value] = [v for v, key in keys.items() if key == row.structure_key]
        k, j, i = np.nonzero(labels == value)
        assert row.voxel_count == len(i), row.structure_key
        centre_lps = image.TransformContinuousIndexToPhysicalPoint((i.mean(), j.mean(), k.mean()))
        centre_ras = (-centre_lps[0], -centre_lps[1], centre_lps[2])
        assert np.allclose(row.centroid_ras_mm, centre_ras, atol=0.01), row.structure_key
        assert not row.resampled
    by_key = {row.structure_key: row for row in rows}
    assert by_key["tumour"].centroid_ras_mm[0] < by_key["spine"].centroid_ras_mm[0]  # patient's left


# ------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------


def test_identical_masks_agree_perfectly():
    ijk_to_ras = matrix((0.7, 0.7, 1.0), (1, 2, 3), OBLIQUE)
    mask = sphere_mask((40, 50, 50), ijk_to_ras, ijk_to_ras[:3, :3] @ [25, 25, 20] + ijk_to_ras[:3, 3], 12)
    result = compare_masks(mask, GridArray(mask.array.copy(), ijk_to_ras))
    assert result.dice == 1.0 and result.jaccard == 1.0
    assert (
        result.surface_distance_mean_mm == 0 and result.hausdorff_95_mm == 0 and result.hausdorff_max_mm == 0
    )
    assert result.volume_difference_ml == 0 and result.volume_difference_percent == 0
    assert not result.resampled


def test_box_shifted_by_two_voxels():
    spacing = (0.7, 0.8, 1.5)
    ijk_to_ras = matrix(spacing, (-10, 5, 0), OBLIQUE)
    length = 30
    a = np.zeros((30, 40, 50), bool)
    a[5:20, 8:30, 10 : 10 + length] = True
    b = np.zeros_like(a)
    b[5:20, 8:30, 12 : 12 + length] = True  # 2 voxels along i
    result = compare_masks(GridArray(a, ijk_to_ras), GridArray(b, ijk_to_ras))
    assert result.dice == pytest.approx((length - 2) / length, abs=1e-12)
    assert result.jaccard == pytest.approx((length - 2) / (length + 2), abs=1e-12)
    assert result.volume_difference_ml == 0
    assert result.hausdorff_max_mm == pytest.approx(2 * spacing[0])
    assert 0 < result.surface_distance_mean_mm <= 2 * spacing[0]
    # The same shift along k (1.5 mm slices) is 3 mm: spacing is anisotropic.
    c = np.zeros_like(a)
    c[7:22, 8:30, 10 : 10 + length] = True
    along_k = compare_masks(GridArray(a, ijk_to_ras), GridArray(c, ijk_to_ras))
    assert along_k.dice == pytest.approx(13 / 15)
    assert along_k.hausdorff_max_mm == pytest.approx(2 * spacing[2])


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.0), (0.5, 0.5, 0.5)])
def test_concentric_spheres_are_d_apart(spacing):
    r, d = 12.0, 3.0
    ijk_to_ras = matrix(spacing, (0, 0, 0), OBLIQUE)
    shape_kji = tuple(int(2 * (r + d) / s) + 8 for s in spacing[::-1])
    centre = ijk_to_ras[:3, :3] @ ((np.array(shape_kji[::-1]) - 1) / 2) + ijk_to_ras[:3, 3]
    inner = sphere_mask(shape_kji, ijk_to_ras, centre, r)
    outer = sphere_mask(shape_kji, ijk_to_ras, centre, r + d)
    result = compare_masks(inner, outer)
    half_voxel = max(spacing) / 2
    assert result.surface_distance_mean_mm == pytest.approx(d, abs=half_voxel)
    assert result.hausdorff_95_mm == pytest.approx(d, abs=half_voxel)
    assert d - half_voxel <= result.hausdorff_max_mm <= d + 2 * half_voxel
    expected_dice = 2 * r**3 / (r**3 + (r + d) ** 3)
    assert result.dice == pytest.approx(expected_dice, abs=0.02)
    assert result.volume_difference_ml == pytest.approx(
        4 / 3 * math.pi * ((r + d) ** 3 - r**3) / 1000, rel=0.03
    )


def test_compare_segments_ai_against_edited(case, phantom):
    app, volume, segmentation, _ = case
    tumour = phantom.labels == 26
    edited = np.roll(tumour, 2, axis=0)  # the edit moved the tumour 2 slices up (S)
    edited_node = add_segmentation(app, edited, phantom.ijk_to_ras(), {1: "tumour"}, volume, "Edited")
    result = compare_segments(
        segmentation, segment_id_of(segmentation, "tumour"), edited_node, segment_ids(edited_node)[0]
    )
    both = np.count_nonzero(tumour & edited)
    assert result.dice == pytest.approx(2 * both / (2 * np.count_nonzero(tumour)), abs=1e-12)
    assert result.hausdorff_max_mm == pytest.approx(2 * SPACING[2])
    assert result.volume_difference_ml == 0 and not result.resampled

    # The edited version on a coarser grid of its own: resampled onto the AI result's grid.
    coarse = tumour[::2, ::2, ::2]
    ijk_to_ras = phantom.ijk_to_ras() @ np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_node = add_segmentation(app, coarse, ijk_to_ras, {1: "tumour"}, None, "Coarse edit")
    resampled = compare_segments(
        segmentation, segment_id_of(segmentation, "tumour"), coarse_node, segment_ids(coarse_node)[0]
    )
    assert resampled.resampled and resampled.warnings
    assert resampled.dice > 0.85
    assert resampled.hausdorff_max_mm <= 2 * 2 * VOXEL_MM
    on_volume = compare_segments(
        segmentation, segment_id_of(segmentation, "tumour"), coarse_node, segment_ids(coarse_node)[0], volume
    )
    assert on_volume.resampled and on_volume.dice == pytest.approx(resampled.dice, abs=0.02)


def test_comparison_with_an_empty_mask_and_a_sheared_grid():
    ijk_to_ras = matrix((1, 1, 1))
    mask = np.zeros((10, 10, 10), bool)
    mask[2:6, 2:6, 2:6] = True
    result = compare_masks(GridArray(mask, ijk_to_ras), GridArray(np.zeros_like(mask), ijk_to_ras))
    assert result.dice == 0 and result.jaccard == 0
    assert result.hausdorff_max_mm is None and result.surface_distance_mean_mm is None
    assert result.volume_difference_percent == -100
    assert any("empty" in w for w in result.warnings)
    json.dumps(result.to_json())
    both_empty = compare_masks(
        GridArray(np.zeros_like(mask), ijk_to_ras), GridArray(np.zeros_like(mask), ijk_to_ras)
    )
    assert both_empty.dice == 1 and both_empty.volume_difference_percent is None
    sheared = matrix((1, 1, 1))
    sheared[0, 1] = 0.5
    with pytest.raises(InputDataError, match="not orthogonal"):
        compare_masks(GridArray(mask, sheared), GridArray(mask, sheared))
