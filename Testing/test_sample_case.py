"""The sample case end to end: `vsp demo`, `vsp info`, and the tumour on the patient's LEFT
after DICOM import, and after save and reload in every format the suite writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk
from slicer.util import arrayFromVolume

from SurgicalPlanningLib.cli import main
from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
from SurgicalPlanningLib.segmentation.statistics import compute_segment_statistics, to_json
from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication

SHAPE = (128, 128, 75)  # the "small" grid: the same anatomy at 2.8 × 2.8 × 4 mm


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return create_sample_case(tmp_path_factory.mktemp("case"), shape=SHAPE, seed=3)


@pytest.fixture
def loaded(case):
    app = VSPApplication.create_headless()
    return app, load_sample_case(app, case.case_dir)


def truth(case) -> dict:
    return case.facts["ground_truth"]


def lps_to_ras(point) -> np.ndarray:
    return np.array([-point[0], -point[1], point[2]], dtype=float)


def hu_at_ras(volume_node, ras) -> float:
    """The CT value at a RAS point, through the node's own geometry (nearest voxel)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    ijk = slicer.util.arrayFromVTKMatrix(matrix) @ np.append(ras, 1.0)
    i, j, k = np.round(ijk[:3]).astype(int)
    return float(arrayFromVolume(volume_node)[k, j, i])


def assert_ct_not_mirrored(volume_node, case) -> None:
    """The hypo-enhancing tumour is where the truth says (LEFT), not at its mirror image."""
    centre = lps_to_ras(truth(case)["tumour_centre_lps"])
    spine_r = -truth(case)["spine_x_mm"]
    mirrored = centre.copy()
    mirrored[0] = 2 * spine_r - centre[0]
    assert centre[0] < spine_r, "truth itself: the tumour is on the patient's left (smaller R)"
    assert 0 <= hu_at_ras(volume_node, centre) <= 90  # tumour ≈ 40 HU
    assert abs(hu_at_ras(volume_node, mirrored) - 40) > 50  # the right kidney's side is not tumour


def by_key(rows: list[dict]) -> dict:
    return {row["structure_key"]: row for row in rows}


def segment_statistics(segmentation_node, volume_node) -> list[dict]:
    return to_json(compute_segment_statistics(segmentation_node, volume_node))


def assert_tumour_left_of_spine(rows: list[dict]) -> None:
    rows = by_key(rows)
    tumour, spine = rows["tumour"]["centroid_ras_mm"], rows["spine"]["centroid_ras_mm"]
    assert tumour[0] < spine[0] - 40, f"tumour R {tumour[0]} is not well left of spine R {spine[0]}"


# --- import ----------------------------------------------------------------------------------------


def test_loaded_case_matches_the_ground_truth(case, loaded):
    app, result = loaded
    assert result.warnings == []
    volume = result.volume_node
    assert volume.GetImageData().GetDimensions() == SHAPE
    assert_ct_not_mirrored(volume, case)
    rows = by_key(result.summary["segments"])
    facts = truth(case)
    # Segment centroid (computed by Slicer's export on the imported CT's grid) is the truth centre.
    np.testing.assert_allclose(
        rows["tumour"]["centroid_ras_mm"], lps_to_ras(facts["tumour_centre_lps"]), atol=1.5
    )
    # Tumour volume: the analytic 30 mm sphere (14.14 mL), voxelised at 2.8 × 2.8 × 4 mm.
    analytic = facts["analytic_volumes_ml"]["tumour"]
    assert analytic == pytest.approx(4 / 3 * np.pi * 15**3 / 1000, rel=1e-3)
    assert rows["tumour"]["volume_mL"] == pytest.approx(analytic, rel=0.06)
    assert result.summary["laterality_check"]["tumour_on_patient_left"] is True


def test_segments_carry_terminology_codes_not_just_names(loaded):
    _, result = loaded
    segmentation = result.segmentation_node.GetSegmentation()
    entries = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", value)
        entries[segment.GetName()] = str(value)
    # The tumour: a neoplasm (morphologically altered structure) in the LEFT kidney, as Slicer's
    # own parser reads the entry.
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic().DeserializeTerminologyEntry(
        entries["Renal tumour, left"], entry
    )
    assert entry.GetCategoryObject().GetCodeValue() == "49755003"
    assert entry.GetTypeObject().GetCodeValue() == "108369006"
    assert entry.GetRegionObject().GetCodeValue() == "64033007"  # kidney
    assert entry.GetRegionModifierObject().GetCodeValue() == "7771000"  # left
    assert slicer.vtkSlicerTerminologiesModuleLogic().DeserializeTerminologyEntry(
        entries["Renal cortex, right"], entry
    )
    assert entry.GetTypeModifierObject().GetCodeValue() == "24028007"  # right


# --- save and reload in every format ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_ct_saved_and_reloaded_is_not_mirrored(case, loaded, tmp_path, suffix):
    app, result = loaded
    path = storage.save_node(result.volume_node, tmp_path / f"ct{suffix}")
    reloaded = storage.load_volume(VSPApplication.create_headless(), path)
    assert_ct_not_mirrored(reloaded, case)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_label_map_saved_and_reloaded_keeps_the_tumour_left(loaded, tmp_path, suffix):
    app, result = loaded
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        result.segmentation_node, labelmap
    )
    path = storage.save_node(labelmap, tmp_path / f"labels{suffix}")
    other = VSPApplication.create_headless()
    reloaded = storage.load_volume(other, path, labelmap=True)
    array = arrayFromVolume(reloaded)
    matrix = vtk.vtkMatrix4x4()
    reloaded.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    segmentation = result.segmentation_node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]

    def centre(name):
        k, j, i = np.nonzero(array == names.index(name) + 1)
        return (ijk_to_ras @ [i.mean(), j.mean(), k.mean(), 1.0])[:3]

    assert centre("Renal tumour, left")[0] < centre("Vertebral column")[0] - 40


def test_segmentation_saved_and_reloaded_keeps_the_tumour_left(loaded, tmp_path):
    app, result = loaded
    path = storage.save_node(result.segmentation_node, tmp_path / "truth.seg.nrrd")
    other = VSPApplication.create_headless()
    reloaded = storage.load_segmentation(other, path)
    volume = storage.load_volume(other, storage.save_node(result.volume_node, tmp_path / "ct.nrrd"))
    assert_tumour_left_of_spine(segment_statistics(reloaded, volume))


@pytest.mark.parametrize("file_format", ["STL", "OBJ"])
def test_surface_models_written_in_lps_keep_the_tumour_left(loaded, tmp_path, file_format):
    """Closed surfaces exported with Slicer's own exporter (LPS), read back by the suite."""
    app, result = loaded
    segmentation_node = result.segmentation_node
    segmentation = segmentation_node.GetSegmentation()
    files = []
    for name in ("Renal tumour, left", "Vertebral column"):
        # One folder per segment: Slicer's OBJ export puts all given segments into one file.
        folder = tmp_path / name.split(",")[0].replace(" ", "_")
        folder.mkdir()
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentation.GetSegmentIdBySegmentName(name))
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(folder), segmentation_node, ids, file_format, True, 1.0, False
        )
        [path] = folder.glob(f"*.{file_format.lower()}")
        files.append(path)
    other = VSPApplication.create_headless()
    centres = {}
    for path in files:
        model = storage.load_model(other, path)
        centres["tumour" if "tumour" in str(path).lower() else "spine"] = np.array(
            model.GetPolyData().GetCenter()
        )
    assert centres["tumour"][0] < centres["spine"][0] - 40
    # And on disk the coordinates are LPS: the tumour's L coordinate exceeds the spine's.
    reader = vtk.vtkSTLReader() if file_format == "STL" else vtk.vtkOBJReader()
    raw = {}
    for path in files:
        reader.SetFileName(str(path))
        reader.Update()
        raw["tumour" if "tumour" in str(path).lower() else "spine"] = reader.GetOutput().GetCenter()
    assert raw["tumour"][0] > raw["spine"][0] + 40


@pytest.mark.parametrize("suffix", [".mrml", ".mrb"])
def test_scene_saved_and_reloaded_keeps_the_tumour_left(case, loaded, tmp_path, suffix):
    app, result = loaded
    path = storage.save_scene(app, tmp_path / f"case{suffix}")
    other = VSPApplication.create_headless()
    storage.load_scene(other, path)
    volume = other.scene.GetFirstNodeByName("CT")
    segmentation = other.scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert_ct_not_mirrored(volume, case)
    rows = segment_statistics(segmentation, volume)
    assert_tumour_left_of_spine(rows)
    assert len(rows) == len(result.summary["segments"])
    for before, after in zip(result.summary["segments"], rows, strict=True):
        assert after["voxel_count"] == before["voxel_count"]
    # The DICOM references survive: later steps cite the source series.
    assert volume.GetAttribute("DICOM.SeriesInstanceUID") == result.summary["volume"]["series_instance_uid"]


# --- the command line ------------------------------------------------------------------------------


def test_vsp_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--size", "small"]) == 0
    printed = capsys.readouterr().out
    assert "tumour is on the patient's LEFT" in printed
    for relative in ("case/case.json", "case/nrrd/ct.nrrd", "scene/SampleCase.mrml", "SampleCase.mrb"):
        assert (out / relative).is_file(), relative
    assert len(list((out / "case" / "dicom").glob("*"))) == 75
    summary = json.loads((out / "summary.json").read_text())
    assert summary["volume"]["dimensions_ijk"] == list(SHAPE)
    assert summary["laterality_check"]["tumour_on_patient_left"] is True
    assert len(summary["segments"]) >= 30
    # Running again into the same folder replaces the earlier demo.
    assert main(["-q", "demo", "--out", str(out), "--size", "small", "--seed", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


def test_vsp_demo_refuses_a_folder_with_other_files(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["-q", "demo", "--out", str(tmp_path), "--size", "small"]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "choose an empty or new folder" in error
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_vsp_info_describes_without_patient_identifiers(case, capsys):
    assert main(["-q", "info", str(case.dicom_dir), "--json"]) == 0
    output = capsys.readouterr().out
    description = json.loads(output)
    [series] = description["series"]
    assert series["files"] == SHAPE[2] and series["rows"] == SHAPE[1] and series["columns"] == SHAPE[0]
    assert series["modality"] == "CT"
    assert "VSP^Phantom" not in output and "VSP-PHANTOM" not in output

    assert main(["-q", "info", str(case.nrrd_files["ct"])]) == 0
    text = capsys.readouterr().out
    assert "dimensions_ijk: [128, 128, 75]" in text
    assert "scalar_type: short" in text


def test_vsp_info_on_a_missing_path_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["-q", "info", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_vsp_rejects_a_bad_size_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path), "--size", "huge"])
    assert exit_info.value.code == 2
    assert "use small, medium, full or COLUMNSxROWSxSLICES" in capsys.readouterr().err


def test_vsp_console_script_is_installed():
    import shutil
    import subprocess
    import sys

    vsp = shutil.which("vsp") or str(Path(sys.executable).with_name("vsp"))
    completed = subprocess.run([vsp, "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0
    assert "demo" in completed.stdout and "info" in completed.stdout


def _series_without_one_slice(case, tmp_path) -> tuple[Path, Path]:
    """A copy of the case's series with the 31st slice (by position) removed."""
    import shutil

    import pydicom

    folder = tmp_path / "gap"
    shutil.copytree(case.dicom_dir, folder)
    files = sorted(
        folder.iterdir(),
        key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]),
    )
    files[30].unlink()
    return folder, files[30]


def test_vsp_info_reports_a_missing_slice_and_names_the_files(case, tmp_path, capsys):
    folder, _ = _series_without_one_slice(case, tmp_path)
    assert main(["-q", "info", str(folder), "--json"]) == 0
    [series] = json.loads(capsys.readouterr().out)["series"]
    assert "1 slice(s) missing" in series["problem"]
    assert "geometry" not in series
    assert series["problem"].count(str(folder)) >= 2  # the files either side of the gap


def test_vsp_import_dicom_refuses_a_gap_unless_told_and_keeps_laterality(case, tmp_path, capsys):
    folder, _ = _series_without_one_slice(case, tmp_path)
    out = tmp_path / "ct.nrrd"
    assert main(["-q", "import-dicom", str(folder), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "--allow-irregular-spacing" in error and not out.exists()
    assert main(["-q", "import-dicom", str(folder), "--out", str(out), "--allow-irregular-spacing"]) == 0
    volume = storage.load_volume(VSPApplication.create_headless(), out)
    assert volume.GetImageData().GetDimensions() == SHAPE  # the gap is filled by interpolation
    assert_ct_not_mirrored(volume, case)
    bundle = tmp_path / "ct.mrb"
    assert main(["-q", "import-dicom", str(case.dicom_dir), "--out", str(bundle)]) == 0
    app = VSPApplication.create_headless()
    storage.load_scene(app, bundle)
    assert_ct_not_mirrored(app.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode"), case)


def test_vsp_export_and_import_seg_round_trip(case, loaded, tmp_path, capsys):
    app, result = loaded
    seg_file = storage.save_node(result.segmentation_node, tmp_path / "truth.seg.nrrd")
    dcm = tmp_path / "truth-seg.dcm"
    args = ["-q", "export-seg", str(seg_file), "--dicom", str(case.dicom_dir), "--out", str(dcm)]
    assert main([*args, "--segment", "Renal tumor, left"]) == 2  # misspelt: named in the error
    assert "has no segment named 'Renal tumor, left'" in capsys.readouterr().err
    assert not dcm.exists()
    assert main([*args, "--segment", "Vertebral column", "--segment", "Aorta"]) == 0
    assert dcm.is_file()
    out = tmp_path / "back.seg.nrrd"
    assert main(["-q", "import-seg", str(dcm), "--reference", str(case.dicom_dir), "--out", str(out)]) == 0
    other = VSPApplication.create_headless()
    back = storage.load_segmentation(other, out)
    segmentation = back.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(2)] == ["Vertebral column", "Aorta"]
    volume = storage.load_volume(other, storage.save_node(result.volume_node, tmp_path / "ct.nrrd"))
    original = {row["segment"]: row for row in result.summary["segments"]}
    for row in segment_statistics(back, volume):
        assert row["voxel_count"] == original[row["segment"]]["voxel_count"]
        np.testing.assert_allclose(
            row["centroid_ras_mm"], original[row["segment"]]["centroid_ras_mm"], atol=1e-6
        )


def test_vsp_import_seg_of_a_non_seg_file_is_a_clear_error(case, tmp_path, capsys):
    ct_file = next(case.dicom_dir.iterdir())
    assert main(["-q", "import-seg", str(ct_file), "--out", str(tmp_path / "x.seg.nrrd")]) == 2
    error = capsys.readouterr().err
    assert ct_file.name in error and "not a DICOM Segmentation" in error


def test_vsp_segment_stats_and_compare_on_the_tumour(case, loaded, tmp_path, capsys):
    """A +5 mm margin turns the 15 mm-radius tumour into a 20 mm sphere (clipped by nothing):
    the recipe, the statistics and the comparison all see it, in mL and mm."""
    app, result = loaded
    truth_file = storage.save_node(result.segmentation_node, tmp_path / "truth.seg.nrrd")
    ct = str(case.nrrd_files["ct"])
    grown = tmp_path / "grown.seg.nrrd"
    step = '{"tool": "margin", "segment": "Renal tumour, left", "margin_mm": 5}'
    args = ["-q", "segment", "--volume", ct, "--input", str(truth_file), "--out", str(grown)]
    # A misspelt parameter is refused before any work, naming the step and the parameters.
    bad = '{"tool": "margin", "segment": "Renal tumour, left", "margin": 5}'
    assert main([*args, "--step", bad]) == 2
    error = capsys.readouterr().err
    assert "step 1 (margin)" in error and "margin_mm" in error and not grown.exists()
    assert main([*args, "--step", step]) == 0
    assert "step 1 margin:" in capsys.readouterr().out

    stats_json = tmp_path / "stats.json"
    assert main(["-q", "stats", str(grown), "--volume", ct, "--segment", "Renal tumour, left",
                 "--json", str(stats_json)]) == 0  # fmt: skip
    assert "Renal tumour, left" in capsys.readouterr().out
    [row] = json.loads(stats_json.read_text())
    sphere_20_mm = 4 / 3 * np.pi * 20**3 / 1000  # 33.5 mL
    assert row["volume_mL"] == pytest.approx(sphere_20_mm, rel=0.10)
    assert row["max_diameter_mm"] == pytest.approx(40.0, abs=2 * 2.8)

    assert (
        main(["-q", "compare", str(truth_file), str(grown), "--segment", "Renal tumour, left", "--json"]) == 0
    )
    comparison = json.loads(capsys.readouterr().out)
    expected_dice = 2 * 14.137 / (14.137 + sphere_20_mm)  # nested spheres: 0.59
    assert comparison["dice"] == pytest.approx(expected_dice, abs=0.05)
    assert comparison["hausdorff_95_mm"] == pytest.approx(5.0, abs=2.8)
    assert comparison["surface_distance_mean_mm"] == pytest.approx(5.0, abs=1.5)


def test_vsp_segment_recipe_builds_the_left_kidney_from_nothing(case, tmp_path, capsys):
    """The README's recipe: a new segment, threshold in an ROI on the patient's LEFT, largest
    island, fill holes; against the ground truth's left cortex + medulla."""
    import SimpleITK as sitk

    from VSPCoreLib.arrays import segment_mask

    recipe = tmp_path / "kidney.json"
    recipe.write_text(
        json.dumps(
            [
                {"tool": "add-segment", "name": "Kidney"},
                {
                    "tool": "threshold",
                    "segment": "Kidney",
                    "preset": "enhanced_parenchyma",
                    "roi": [[-110, -80, -50], [-38, -12, 75]],
                },
                {"tool": "keep-largest-island", "segment": "Kidney"},
                {"tool": "fill-holes", "segment": "Kidney"},
            ]
        )
    )
    out = tmp_path / "kidney.seg.nrrd"
    ct = str(case.nrrd_files["ct"])
    assert main(["-q", "segment", "--volume", ct, "--recipe", str(recipe), "--out", str(out)]) == 0
    app = VSPApplication.create_headless()
    volume = storage.load_volume(app, ct)
    segmentation = storage.load_segmentation(app, out)
    mask = segment_mask(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), volume, crop=False)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case.nrrd_files["labels"])))
    values = [int(v) for v, e in json.loads(case.labels_json.read_text())["labels"].items()
              if e["key"] in ("kidney_left_cortex", "kidney_left_medulla")]  # fmt: skip
    truth = np.isin(labels, values)
    dice = 2 * np.count_nonzero(mask.array & truth) / (np.count_nonzero(mask.array) + np.count_nonzero(truth))
    assert dice >= 0.85
