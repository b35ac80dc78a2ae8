"""Sample case folders and flows (SurgicalPlanningLib.case_folders, .sample_flow): the rules the
Slicer panel, its Sample Data button, `vsp` and the module self-test share."""

from __future__ import annotations

import json
import os

import pytest

from SurgicalPlanningLib import case_folders, sample_flow
from SurgicalPlanningLib.case_folders import CASE_FILE, GRID_SIZES
from SurgicalPlanningLib.plan import PLAN_FILE, load_plan_file
from VSPCoreLib.errors import InputDataError, VSPError

SMALL = "Small (128 × 128 × 75)"


def test_grid_sizes_name_their_shapes():
    assert case_folders.DEFAULT_GRID_SIZE in GRID_SIZES
    for label, shape in GRID_SIZES.items():
        assert case_folders.grid_shape(label) == shape
        # The label shows the shape it stands for.
        assert " × ".join(str(n) for n in shape) in label
    with pytest.raises(VSPError) as raised:
        case_folders.grid_shape("Huge")
    assert "'Huge'" in str(raised.value) and SMALL in str(raised.value)


def test_case_folder_name_holds_grid_and_seed():
    assert case_folders.case_folder_name((128, 128, 75), 0) == "kidney-phantom-128x128x75-seed0"
    assert case_folders.case_folder_name((256, 200, 150), 42) == "kidney-phantom-256x200x150-seed42"
    for shape, seed in (((128, 128), 0), ((128, 0, 75), 0), ((128, 128, 75), -1)):
        with pytest.raises(VSPError):
            case_folders.case_folder_name(shape, seed)


def test_a_new_case_never_goes_into_an_existing_folder(tmp_path):
    output = tmp_path / "cases" / "nested"
    first = case_folders.new_case_folder(output, (128, 128, 75), 3)
    assert output.is_dir() and not first.exists()  # the writer makes the case folder
    assert first == output / "kidney-phantom-128x128x75-seed3"
    first.mkdir()
    second = case_folders.new_case_folder(output, (128, 128, 75), 3)
    assert second.name == "kidney-phantom-128x128x75-seed3-2"
    second.mkdir()
    (output / "kidney-phantom-128x128x75-seed3-3").write_text("a file takes the name too")
    assert case_folders.new_case_folder(output, (128, 128, 75), 3).name == "kidney-phantom-128x128x75-seed3-4"


@pytest.mark.parametrize("unset", ["", ".", None, os.curdir])
def test_an_unset_output_folder_is_a_user_error(unset):
    # The parameter node stores an unset path as "." (pathlib.Path()).
    with pytest.raises(VSPError, match="No output folder"):
        case_folders.new_case_folder(unset, (128, 128, 75), 0)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    with pytest.raises(VSPError) as raised:
        case_folders.new_case_folder(path, (128, 128, 75), 0)
    assert str(path) in str(raised.value)


def test_cache_keeps_complete_cases_and_discards_interrupted_ones(tmp_path):
    cache = tmp_path / "cache"
    case_dir, complete = case_folders.cached_case_folder(cache, (128, 128, 75), 1)
    assert (case_dir, complete) == (cache / "kidney-phantom-128x128x75-seed1", False)
    assert cache.is_dir() and not case_dir.exists()

    # What an interrupted generation leaves: files but no case.json.
    (case_dir / "dicom").mkdir(parents=True)
    (case_dir / "dicom" / "slice-000.dcm").write_bytes(b"partial")
    again, complete = case_folders.cached_case_folder(cache, (128, 128, 75), 1)
    assert again == case_dir and complete is False and not case_dir.exists()

    case_dir.mkdir()
    (case_dir / CASE_FILE).write_text(json.dumps({"seed": 1, "ground_truth": {}}))
    (case_dir / "kept.txt").write_text("kept")
    again, complete = case_folders.cached_case_folder(cache, (128, 128, 75), 1)
    assert complete is True and (again / "kept.txt").read_text() == "kept"
    # Another seed is another folder.
    other, complete = case_folders.cached_case_folder(cache, (128, 128, 75), 2)
    assert other != case_dir and complete is False and (case_dir / "kept.txt").is_file()


def test_read_case_facts_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(InputDataError) as raised:
        case_folders.read_case_facts(tmp_path)
    assert str(tmp_path) in str(raised.value) and "Generate the sample case" in str(raised.value)
    (tmp_path / CASE_FILE).write_text("{not json")
    with pytest.raises(InputDataError, match="not valid JSON"):
        case_folders.read_case_facts(tmp_path)
    (tmp_path / CASE_FILE).write_text(json.dumps({"seed": 5}))
    with pytest.raises(InputDataError, match="no ground truth"):
        case_folders.read_case_facts(tmp_path)
    (tmp_path / CASE_FILE).write_text(json.dumps({"seed": 5, "ground_truth": {"tumour_diameter_mm": 30}}))
    assert case_folders.read_case_facts(tmp_path)["seed"] == 5


def test_the_sample_case_writer_uses_the_same_case_file():
    from SurgicalPlanningLib import sample_case

    assert sample_case.CASE_FILE is case_folders.CASE_FILE


# --------------------------------------------------------------------------------------------
# The flows, on the small phantom
# --------------------------------------------------------------------------------------------


def test_new_sample_cases_go_into_their_own_folders(tmp_path):
    fractions = []
    created = sample_flow.create_new_sample_case(
        tmp_path, grid_size=SMALL, seed=0, progress=lambda f, m: fractions.append(f)
    )
    assert created.case_dir == tmp_path / "kidney-phantom-128x128x75-seed0"
    assert case_folders.is_complete_case(created.case_dir)
    assert len(list(created.dicom_dir.glob("*.dcm"))) == 75
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    facts = case_folders.read_case_facts(created.case_dir)
    assert facts["shape_ijk"] == [128, 128, 75] and facts["seed"] == 0
    with pytest.raises(VSPError):
        sample_flow.create_new_sample_case(tmp_path, grid_size="Huge")


def test_sample_phantom_is_generated_once_and_regenerated_when_interrupted(tmp_path):
    cache = tmp_path / "SampleData"
    case_dir, reused = sample_flow.sample_phantom_case(cache, grid_size=SMALL, seed=2)
    assert reused is False and case_dir == cache / "kidney-phantom-128x128x75-seed2"
    written = (case_dir / CASE_FILE).stat().st_mtime_ns
    again, reused = sample_flow.sample_phantom_case(cache, grid_size=SMALL, seed=2)
    assert (again, reused) == (case_dir, True)
    assert (case_dir / CASE_FILE).stat().st_mtime_ns == written

    (case_dir / CASE_FILE).unlink()
    (case_dir / "leftover.tmp").write_text("partial")
    again, reused = sample_flow.sample_phantom_case(cache, grid_size=SMALL, seed=2)
    assert reused is False and case_folders.is_complete_case(again)
    assert not (again / "leftover.tmp").exists()


def test_sample_plan_flow_plans_the_left_lower_pole_and_saves_plan_json(tmp_path):
    from SurgicalPlanningLib.sample_case import load_sample_case
    from VSPCoreLib.app import VSPApplication

    created = sample_flow.create_new_sample_case(tmp_path, grid_size=SMALL, seed=0)
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, created.case_dir)

    with pytest.raises(VSPError, match="No volume"):
        sample_flow.compute_sample_plan(app, created.case_dir, loaded.segmentation_node, None)
    with pytest.raises(InputDataError, match="Not a sample case folder"):
        sample_flow.compute_sample_plan(app, tmp_path, loaded.segmentation_node, loaded.volume_node)
    assert not (tmp_path / PLAN_FILE).exists()

    fractions = []
    plan, plan_path = sample_flow.compute_sample_plan(
        app,
        created.case_dir,
        loaded.segmentation_node,
        loaded.volume_node,
        progress=lambda f, m: fractions.append(f),
    )
    assert plan_path == created.case_dir / PLAN_FILE and plan_path.is_file()
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions) and fractions[-1] == 1.0
    assert plan.case.case_id == "VSP-PHANTOM-0"
    assert [v.name for v in plan.variants] == ["lower pole plane", "enucleation 5 mm"]

    # The plane sits 8 mm above the tumour, which is on the patient's LEFT: in RAS the plane's
    # R coordinate is minus the tumour's LPS x (an asymmetric object: a flipped axis shows).
    truth = case_folders.read_case_facts(created.case_dir)["ground_truth"]
    tumour_lps = truth["tumour_centre_lps"]
    plane = plan.variant("lower pole plane").resections[0]
    assert plane.origin_ras_mm[0] == pytest.approx(-tumour_lps[0], abs=0.01)
    assert plane.origin_ras_mm[1] == pytest.approx(-tumour_lps[1], abs=0.01)
    assert plane.origin_ras_mm[2] == pytest.approx(
        tumour_lps[2] + truth["tumour_diameter_mm"] / 2 + 8.0, abs=0.01
    )
    resection = plan.variant("lower pole plane").results["resection"]
    cut = [vessel["structure_key"] for vessel in resection["cut_vessels"]]
    assert "segmental_artery_left_lower" in cut
    assert not any("right" in key for key in cut)
    assert resection["positive_margin"] is False

    # The saved file is the computed plan.
    saved = load_plan_file(plan_path)
    assert saved.variant("lower pole plane").results["resection"]["resected_volume_mL"] == pytest.approx(
        resection["resected_volume_mL"]
    )
