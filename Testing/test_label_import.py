"""Label maps in: an AI label map with TotalSegmentator's `total` classes, other tables, geometry,
segment names that must pick one segment, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from SurgicalPlanningLib import cli
from VSPCoreLib import storage, terminology
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.labels import import_label_map
from VSPCoreLib.segments import AmbiguousSegmentError, SegmentNotFoundError, find_segment

# An asymmetric grid (i, j, k) with anisotropic spacing, stored with flipped axes: i runs to the
# patient's left (+x in LPS, as RAS-stored NIfTI has it flipped), j runs anterior (-y in LPS).
SIZE = (40, 30, 12)
SPACING = (0.9, 1.1, 1.7)
ORIGIN = (-17.5, 12.0, -8.0)  # LPS, mm
DIRECTION = (1, 0, 0, 0, -1, 0, 0, 0, 1)
VOXEL_MM3 = SPACING[0] * SPACING[1] * SPACING[2]


def _entry(segment) -> str:
    value = vtk.reference("")
    assert segment.GetTag("TerminologyEntry", value)
    return str(value)


def _side(name: str) -> str | None:
    return "left" if "_left" in name else "right" if "_right" in name else None


def _total_label_map() -> tuple[np.ndarray, dict[int, str]]:
    """Every class of `total` as its own block: left classes at i >= 21 (LPS x > 0, the patient's
    left), right classes at i <= 18, the others in between; sizes differ per class."""
    values, _ = terminology.model_label_values("totalsegmentator")
    array = np.zeros(SIZE[::-1], np.uint8)  # [k, j, i]
    slots = {"left": [], "right": [], None: []}
    for j in range(0, 30, 3):
        for k in range(0, 12, 2):
            slots["left"].append((list(range(22, 40, 3)), j, k))
            slots["right"].append((list(range(0, 18, 3)), j, k))
    taken = {"left": 0, "right": 0}
    middle = [(i, j, k) for k in range(0, 12, 2) for j in range(0, 30, 3) for i in (18, 20)]
    for value, name in sorted(values.items()):
        side = _side(name)
        if side is None:
            i, j, k = middle.pop(0)
            array[k, j, i] = value
            if value % 2:
                array[k + 1, j, i] = value  # two voxels for odd values
        else:
            n = taken[side]
            taken[side] += 1
            column, row = divmod(n, 6)
            i = (22 + 3 * row) if side == "left" else (3 * row)
            j, k = 3 * (column % 10), 2 * (column // 10)
            array[k, j : j + 2, i : i + 2] = value
    return array, values


def _write(array: np.ndarray, path, *, direction=DIRECTION, spacing=SPACING, origin=ORIGIN) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def total_map(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    array, values = _total_label_map()
    path = folder / "total.nii.gz"
    _write(array, path)
    return path, array, values


def _expected_centroid_ras(array: np.ndarray, value: int) -> np.ndarray:
    """Mean voxel centre of a class in RAS, through SimpleITK's own index-to-LPS transform."""
    image = sitk.Image(SIZE, sitk.sitkUInt8)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    k, j, i = np.nonzero(array == value)
    lps = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint((float(a), float(b), float(c)))
            for a, b, c in zip(i, j, k, strict=True)
        ]
    )
    return lps.mean(axis=0) * np.array([-1.0, -1.0, 1.0])


def test_totalsegmentator_total_imports_every_class_coded_left_stays_left(total_map, tmp_path):
    path, array, values = total_map
    app = VSPApplication.create_headless()
    result = import_label_map(app, path, "totalsegmentator")
    assert len(result.imported) == 117 and not result.absent and not result.unmapped
    assert not result.warnings
    segmentation = result.segmentation_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 117
    names = [segmentation.GetNthSegment(n).GetName() for n in range(117)]
    assert len(set(names)) == 117, "no two classes merge into one name"
    assert "Rib 3, left" in names and "Vertebra L1" in names and "Renal cyst, right" in names

    by_value = {item.value: item for item in result.imported}
    for value, name in values.items():
        item = by_value[value]
        segment = segmentation.GetSegment(item.segment_id)
        parsed = terminology.parse_terminology_entry(_entry(segment))
        expected = terminology.structure_for_ai_label(name, "totalsegmentator")
        assert parsed["type"].same_concept(expected.type), name
        side = _side(name)
        if side is not None:
            modifier = terminology.LEFT if side == "left" else terminology.RIGHT
            assert modifier.same_concept(parsed["modifier"] or parsed["region_modifier"]) or (
                side in expected.type.meaning.lower()
            ), name
        assert item.voxels == int((array == value).sum()), name
        assert np.allclose(segment.GetColor(), expected.colour), name

    # Left stays left: measured centroids in RAS against SimpleITK's geometry, for every class.
    from SurgicalPlanningLib.segmentation.statistics import compute_segment_statistics

    stats = {s.segment_id: s for s in compute_segment_statistics(result.segmentation_node)}
    for value, name in values.items():
        centroid = np.array(stats[by_value[value].segment_id].centroid_ras_mm)
        assert np.allclose(centroid, _expected_centroid_ras(array, value), atol=1e-3), name
        if _side(name) == "left":
            assert centroid[0] < 0, name  # R < 0: the patient's left
        elif _side(name) == "right":
            assert centroid[0] > 0, name


def test_vsp_import_labels_then_stats_volumes_are_voxel_counts(total_map, tmp_path, capsys):
    path, array, values = total_map
    out = tmp_path / "total.seg.nrrd"
    assert (
        cli.main(["-q", "import-labels", str(path), "--labels", "totalsegmentator", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "117 classes imported (0 without a code), 0 of the table's classes absent" in printed
    report = tmp_path / "stats.json"
    segments = ["Rib 3, left", "Vertebra L1", "Kidney, left", "Liver", "Costal cartilages"]
    argv = ["-q", "stats", str(out), "--json", str(report)]
    for name in segments:
        argv += ["--segment", name]
    assert cli.main(argv) == 0
    data = json.loads(report.read_text())
    measured = {row["segment"]: (row["volume_mm3"], row["voxel_count"]) for row in data}
    class_of = {
        "Rib 3, left": "rib_left_3",
        "Vertebra L1": "vertebrae_L1",
        "Kidney, left": "kidney_left",
        "Liver": "liver",
        "Costal cartilages": "costal_cartilages",
    }
    value_of = {name: value for value, name in values.items()}
    for name in segments:
        voxels = int((array == value_of[class_of[name]]).sum())
        assert measured[name][1] == voxels, name
        assert measured[name][0] == pytest.approx(voxels * VOXEL_MM3, rel=1e-6), name


def _small_map(tmp_path, values=(1, 2, 5)):
    array = np.zeros((5, 7, 9), np.int16)
    array[1:3, 1:3, 5:8] = values[0]  # i 5..7: LPS x > 0 with this origin -> left
    array[2:4, 3:6, 0:3] = values[1]
    array[3:5, 5:7, 3:5] = values[2]
    path = tmp_path / "small.nrrd"
    _write(array, path, spacing=(1.0, 1.0, 2.0), origin=(-4.5, 0.0, 0.0))
    return path, array


def test_itksnap_colour_table_and_json_tables(tmp_path):
    path, array = _small_map(tmp_path)
    itksnap = tmp_path / "labels.txt"
    itksnap.write_text(
        "################################################\n"
        "# ITK-SnAP Label Description File\n"
        "################################################\n"
        '    0     0    0    0        0  0  0    "Clear Label"\n'
        '    1   200   10   10        1  1  1    "kidney_left"\n'
        '    2    10  200   10        1  1  1    "Liver"\n'
        '    5    10   10  200        1  1  1    "Hepatic lesion X"\n'
        '    9    50   50   50        1  1  1    "not in the image"\n'
    )
    ctbl = tmp_path / "labels.ctbl"
    ctbl.write_text(
        "# Color table\n0 background 0 0 0 0\n1 Kidney_Left 200 10 10 255\n2 liver 10 200 10 255\n5 Hepatic_lesion_X 10 10 200 255\n"
    )
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps({"kidney left": 1, "liver": 2, "Hepatic lesion X": 5}))
    for table_path, absent in ((itksnap, 1), (ctbl, 0), (as_json, 0)):
        app = VSPApplication.create_headless()
        result = import_label_map(app, path, table_path)
        by_value = {item.value: item for item in result.imported}
        assert sorted(by_value) == [1, 2, 5], table_path
        assert len(result.absent) == absent, table_path
        assert by_value[1].structure_key == "kidney_left" and by_value[1].segment_name == "Kidney, left"
        assert by_value[2].structure_key == "liver"
        # Slicer colour tables hold one-word names; Slicer's reader turns "_" back into blanks.
        lesion_name = "Hepatic lesion X"
        assert by_value[5].structure_key is None and by_value[5].segment_name == lesion_name
        assert any(lesion_name in w and "generic code" in w for w in result.warnings)
        segmentation = result.segmentation_node.GetSegmentation()
        lesion = terminology.parse_terminology_entry(_entry(segmentation.GetSegment(by_value[5].segment_id)))
        assert lesion["type"] == terminology.TISSUE
        for item in result.imported:
            assert item.voxels == int((array == item.value).sum())
        if table_path != as_json:  # the file's colours
            assert np.allclose(
                segmentation.GetSegment(by_value[5].segment_id).GetColor(), (10 / 255, 10 / 255, 200 / 255)
            )


def test_reference_volume_same_grid_kept_other_grid_resampled_with_warning(tmp_path):
    path, array = _small_map(tmp_path)
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"kidney_left": 1, "liver": 2, "spleen": 5}))
    same = tmp_path / "ct_same.nrrd"
    _write(np.zeros_like(array), same, spacing=(1.0, 1.0, 2.0), origin=(-4.5, 0.0, 0.0))
    app = VSPApplication.create_headless()
    ct = storage.load_volume(app, same)
    result = import_label_map(app, path, table, reference_volume=ct)
    assert not result.resampled and not result.warnings

    # A finer CT grid (half the spacing in every axis) with the same corner: resampled.
    finer = tmp_path / "ct_fine.nrrd"
    _write(np.zeros((10, 14, 18), np.int16), finer, spacing=(0.5, 0.5, 1.0), origin=(-4.75, -0.25, -0.5))
    app = VSPApplication.create_headless()
    ct = storage.load_volume(app, finer)
    result = import_label_map(app, path, table, reference_volume=ct)
    assert result.resampled and any("nearest neighbour" in w for w in result.warnings)
    from SurgicalPlanningLib.segmentation.statistics import compute_segment_statistics

    stats = {s.name: s for s in compute_segment_statistics(result.segmentation_node)}
    kidney = stats["Kidney, left"]
    # 2x2x3 voxels of 2 mm3 = 24 mm3 on the label map's grid; the same on the finer grid.
    assert kidney.volume_mm3 == pytest.approx(int((array == 1).sum()) * 2.0, rel=0.01)
    assert kidney.centroid_ras_mm[0] < 0  # still on the patient's left


def test_ambiguous_and_missing_segment_names(tmp_path, capsys):
    app = VSPApplication.create_headless()
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    segmentation = node.GetSegmentation()
    first = segmentation.AddEmptySegment("a", "Ribs, left")
    second = segmentation.AddEmptySegment("b", "Ribs, left")
    segmentation.AddEmptySegment("c", "Liver")
    assert find_segment(node, "liver") == "c"  # case does not matter when one matches
    with pytest.raises(AmbiguousSegmentError, match="2 segments named 'Ribs, left'") as caught:
        find_segment(node, "Ribs, left")
    assert first in str(caught.value) and second in str(caught.value)
    with pytest.raises(SegmentNotFoundError, match="'Liver'"):
        find_segment(node, "Spleen")
    # Through the command: exit 2 with the matches listed.
    path = tmp_path / "two.seg.nrrd"
    storage.save_node(node, path)
    assert cli.main(["-q", "stats", str(path), "--segment", "Ribs, left"]) == 2
    err = capsys.readouterr().err
    assert "2 segments named 'Ribs, left'" in err and first in err and second in err


def test_bad_inputs_exit_2_with_clear_messages(tmp_path, capsys):
    path, array = _small_map(tmp_path)
    out = tmp_path / "o.seg.nrrd"

    def run(*argv) -> str:
        assert cli.main(["-q", "import-labels", *map(str, argv), "--out", str(out)]) == 2
        return capsys.readouterr().err

    assert "neither a known label table nor a label table file" in run(
        path, "--labels", tmp_path / "missing.txt"
    )
    assert "neither a known label table" in run(path, "--labels", "nnunet:x")
    assert "unknown label table 'totalsegmentator:organs'" in run(path, "--labels", "totalsegmentator:organs")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert "not valid JSON" in run(path, "--labels", broken)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"liver": 2}))
    err = run(path, "--labels", partial)
    assert "does not name: 1, 5" in err and "Fix:" in err
    floats = tmp_path / "prob.nii.gz"
    _write(array.astype(np.float32) * 0.4, floats)
    assert "non-integer values" in run(floats, "--labels", "totalsegmentator")
    assert not out.exists()


def test_import_crops_to_the_labels_box_geometry_exact(tmp_path):
    """The import passes only the labels' bounding box to Slicer: each segment's voxels, RAS
    bounds and centroid are those of the full label map (an off-centre, asymmetric L shape on
    the flipped, anisotropic grid), and the segment's labelmap holds the box, not the grid."""
    import slicer

    from VSPCoreLib.arrays import segment_mask

    array = np.zeros(SIZE[::-1], np.uint8)  # [k, j, i]
    array[2:9, 4:7, 25:37] = 1  # an L: a bar along i (the patient's left) ...
    array[2:4, 7:20, 25:28] = 1  # ... and a leg along j
    array[10, 21:23, 3:6] = 2  # a small block on the right, one slice
    path = tmp_path / "asym.nrrd"
    _write(array, path)
    ct = tmp_path / "ct.nrrd"
    _write(np.zeros_like(array, dtype=np.int16), ct)
    app = VSPApplication.create_headless()
    reference = storage.load_volume(app, ct)
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"kidney_left": 1, "tumor": 2}))
    result = import_label_map(app, path, table, reference)
    assert not result.resampled
    node = result.segmentation_node
    # The oracle: Slicer's import of the whole, uncropped label map.
    full = storage.load_volume(app, path, name="full", labelmap=True)
    oracle = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "oracle")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(full, oracle)
    oracle.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segmentation, expected = node.GetSegmentation(), oracle.GetSegmentation()
    for item in result.imported:
        value = item.value
        mask = segment_mask(node, item.segment_id, reference_volume=reference, crop=False)
        oracle_id = expected.GetNthSegmentID(0 if value == 1 else 1)
        oracle_mask = segment_mask(oracle, oracle_id, reference_volume=reference, crop=False)
        assert int(np.count_nonzero(mask.array)) == int((array == value).sum()), item.segment_name
        assert np.array_equal(mask.array != 0, oracle_mask.array != 0), item.segment_name
        k, j, i = np.nonzero(mask.array)
        ras = mask.ras_of(np.stack([i, j, k], axis=1))
        np.testing.assert_allclose(ras.mean(axis=0), _expected_centroid_ras(array, value), atol=1e-9)
        bounds, oracle_bounds = [0.0] * 6, [0.0] * 6
        segmentation.GetSegment(item.segment_id).GetBounds(bounds)
        expected.GetSegment(oracle_id).GetBounds(oracle_bounds)
        np.testing.assert_allclose(bounds, oracle_bounds, atol=1e-9)
        assert item.voxels == int((array == value).sum())
    left = result.imported[0]
    assert left.structure_key == "kidney_left"
    assert _expected_centroid_ras(array, 1)[0] < 0  # the patient's left
    # Only the box went through the import: the shared layer holds 9 x 19 x 34 voxels (k, j, i).
    layer = segmentation.GetSegmentRepresentation(left.segment_id, "Binary labelmap")
    extent = layer.GetExtent()
    box_voxels = (extent[1] - extent[0] + 1) * (extent[3] - extent[2] + 1) * (extent[5] - extent[4] + 1)
    assert box_voxels == 34 * 19 * 9 < array.size
