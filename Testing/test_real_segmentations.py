"""Plans on segmentations shaped like the real thing: a whole kidney as ONE segment (as every AI
model delivers it), a tumour coded without a side, no vessels, no parts, or no tumour at all.

Structures are found by their terminology codes (or by the segment name/ID the plan or the
`--organ`/`--tumour` flags give), never by a private tag. Numbers are checked against analytic
or partial-voxel truth, and the phantom's plan against the numbers `main` computed before
structures were found by code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from slicer.util import updateVolumeFromArray, vtkMatrixFromArray

from SurgicalPlanningLib import structures
from SurgicalPlanningLib.cli import main
from SurgicalPlanningLib.plan import Plan, PlaneResection, PlanVariant
from SurgicalPlanningLib.planning import PlanningInputs, compute_plan, sample_plan
from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
from SurgicalPlanningLib.territories import segments_mask
from VSPCoreLib import storage, terminology
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import GridArray, grid_array_to_oriented_image
from VSPCoreLib.errors import InputDataError

# A DICOM-like geometry (RAS = -i, -j, +k), 1 mm voxels, the kidney on the patient's LEFT.
SHAPE_KJI = (120, 64, 80)
IJK_TO_RAS = np.array(
    [[-1.0, 0, 0, -40.0], [0, -1.0, 0, 40.0], [0, 0, 1.0, -60.0], [0, 0, 0, 1.0]]
)  # i=0 at R -40: R runs -40 .. -119 (patient left)
KIDNEY_CENTRE = np.array([-80.0, 10.0, 0.0])
KIDNEY_SEMI_AXES = np.array([22.0, 17.0, 48.0])  # R, A, S: asymmetric
TUMOUR_CENTRE = np.array([-96.0, 12.0, -33.0])  # lateral lower pole, partly exophytic
TUMOUR_RADIUS = 12.0
PLANE_ORIGIN = np.array([-80.0, 10.0, -13.37])
PLANE_NORMAL = np.array([0.0, 0.25, 1.0])  # oblique; everything below is removed


def _centres_ras() -> np.ndarray:
    k, j, i = np.indices(SHAPE_KJI)
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk @ IJK_TO_RAS.T)[..., :3]


def analytic_masks() -> tuple[np.ndarray, np.ndarray]:
    """Kidney (the ellipsoid without the tumour, as an AI label map has it) and tumour."""
    ras = _centres_ras()
    ellipsoid = (((ras - KIDNEY_CENTRE) / KIDNEY_SEMI_AXES) ** 2).sum(axis=-1) <= 1.0
    tumour = np.linalg.norm(ras - TUMOUR_CENTRE, axis=-1) <= TUMOUR_RADIUS
    return ellipsoid & ~tumour, tumour


def partial_voxel_volume_ml(mask: np.ndarray, ijk_to_ras: np.ndarray, origin, normal, sub: int = 8) -> float:
    """Exact volume of the mask's voxel boxes on the negative side of a plane (supersampled
    only where a voxel straddles the plane)."""
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    k, j, i = np.nonzero(mask)
    ijk = np.column_stack([i, j, k, np.ones(len(i))]).astype(float)
    centres = (ijk @ ijk_to_ras.T)[:, :3]
    distance = (centres - origin) @ normal
    along = ijk_to_ras[:3, :3].T @ normal  # a step along i, j, k moves this far along the normal
    half = 0.5 * np.abs(along).sum()
    fraction = (distance < -half).astype(float)
    near = np.abs(distance) <= half
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), axis=-1).reshape(-1, 3)
    shift = grid @ along
    fraction[near] = ((distance[near][:, None] + shift[None, :]) < 0).mean(axis=1)
    voxel_mm3 = abs(np.linalg.det(ijk_to_ras[:3, :3]))
    return float(fraction.sum()) * voxel_mm3 / 1000.0


def add_coded_segment(node, mask: np.ndarray, ijk_to_ras: np.ndarray, name: str, key: str) -> str:
    t = terminology.term(key)
    image = grid_array_to_oriented_image(GridArray(mask.astype(np.uint8), ijk_to_ras))
    segment_id = node.AddSegmentFromBinaryLabelmapRepresentation(image, name, t.colour)
    node.GetSegmentation().GetSegment(segment_id).SetTag("TerminologyEntry", terminology.terminology_entry(t))
    return segment_id


@pytest.fixture(scope="module")
def whole_kidney(tmp_path_factory):
    """A CT and a segmentation holding only "Kidney, left" (one segment, SNOMED CT Kidney + Left)
    and "Kidney tumour" (Neoplasm in the kidney, no side: what a kidney-tumour model gives)."""
    app = VSPApplication.create_headless()
    kidney, tumour = analytic_masks()
    volume = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    updateVolumeFromArray(volume, np.where(kidney | tumour, 180, -50).astype(np.int16))
    volume.SetIJKToRASMatrix(vtkMatrixFromArray(IJK_TO_RAS))
    volume.CreateDefaultDisplayNodes()
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AI segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    kidney_id = add_coded_segment(segmentation, kidney, IJK_TO_RAS, "Kidney, left", "kidney_left")
    tumour_id = add_coded_segment(segmentation, tumour, IJK_TO_RAS, "Kidney tumour", "renal_tumour")
    scene = storage.save_scene(app, tmp_path_factory.mktemp("whole-kidney") / "case.mrb")
    return {
        "app": app,
        "volume": volume,
        "segmentation": segmentation,
        "kidney": kidney,
        "tumour": tumour,
        "kidney_id": kidney_id,
        "tumour_id": tumour_id,
        "scene": scene,
    }


def plan_json(case: dict, variants: list[dict]) -> dict:
    return {"schema_version": 1, "case": {"case_id": "AI-1", **case}, "variants": variants}


PLANE_VARIANT = {
    "name": "lower pole plane",
    "resections": [
        {
            "kind": "plane",
            "name": "lower pole",
            "origin_ras_mm": PLANE_ORIGIN.tolist(),
            "normal_ras": PLANE_NORMAL.tolist(),
            "remove": "negative",
        }
    ],
}
MARGIN_VARIANT = {
    "name": "enucleation 5 mm",
    "resections": [{"kind": "margin", "name": "5 mm", "margin_mm": 5.0}],
}


def run_plan(tmp_path, scene, data: dict, *flags: str) -> tuple[int, dict | None]:
    path = tmp_path / "in.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    code = main(["-q", "plan", str(scene), "--plan", str(path), "--out", str(out), *flags])
    if code != 0:
        return code, None
    return code, json.loads((out / "plan.json").read_text())


def test_vsp_plan_on_a_whole_kidney_segment_without_vessels(whole_kidney, tmp_path):
    data = plan_json(
        {"organ": {"name": "Kidney, left"}, "tumour": {"name": "Kidney tumour"}},
        [PLANE_VARIANT, MARGIN_VARIANT],
    )
    code, saved = run_plan(tmp_path, whole_kidney["scene"], data)
    assert code == 0
    plane = next(v for v in saved["variants"] if v["name"] == "lower pole plane")["results"]
    resection = plane["resection"]
    # Volumes: the whole organ (kidney ∪ tumour) as segmented, split exactly.
    organ_truth = float(np.count_nonzero(whole_kidney["kidney"] | whole_kidney["tumour"])) / 1000.0
    assert resection["organ_volume_mL"] == pytest.approx(organ_truth, rel=0.005)
    assert resection["resected_volume_mL"] + resection["remnant_volume_mL"] == pytest.approx(
        resection["organ_volume_mL"], rel=0.001
    )
    resected_truth = partial_voxel_volume_ml(
        whole_kidney["kidney"] | whole_kidney["tumour"], IJK_TO_RAS, PLANE_ORIGIN, PLANE_NORMAL
    )
    assert resection["resected_volume_mL"] == pytest.approx(resected_truth, rel=0.005)
    # The margin: the tumour's distance to the plane (analytic sphere, 1 mm voxels).
    normal = PLANE_NORMAL / np.linalg.norm(PLANE_NORMAL)
    margin_truth = (PLANE_ORIGIN - TUMOUR_CENTRE) @ normal - TUMOUR_RADIUS
    assert resection["min_margin_mm"] == pytest.approx(margin_truth, abs=1.0)
    assert resection["positive_margin"] is False and resection["cut_vessels"] == []
    # The structures as found, and what was not computed (stated, not silently missing).
    found = plane["structures"]
    assert found["organ"]["segment_ids"] == [whole_kidney["kidney_id"]]
    assert found["organ"]["found_by"] == "segment name" and found["organ"]["structure_key"] == "kidney_left"
    assert "kidney_left_cortex" in found["organ"]["parts_absent"]
    assert found["tumour"]["segment_ids"] == [whole_kidney["tumour_id"]]
    assert "territories" not in plane and "vessel tree" in plane["not_computed"]["territories"]
    assert "at_risk" in plane["not_computed"]
    # Nephrometry: R and E measured; N needs the collecting system, so the score is incomplete.
    nephrometry = plane["nephrometry"]
    assert nephrometry["components"]["R"]["points"] == 1  # 24 mm
    assert nephrometry["components"]["N"]["points"] is None
    assert "collecting system" in nephrometry["components"]["N"]["not_computed"]
    assert nephrometry["score"] is None and nephrometry["complete"] is False
    assert "incomplete" in nephrometry["notation"] and "N" in nephrometry["not_computed"]
    assert "nephrometry.N" in plane["not_computed"]
    low, high = nephrometry["score_range"]
    assert low <= nephrometry["partial_score"] + 2 <= high
    enucleation = next(v for v in saved["variants"] if v["name"] == "enucleation 5 mm")["results"]
    assert enucleation["resection"]["min_margin_mm"] == pytest.approx(5.0, abs=1.0)
    assert enucleation["resection"]["tumour_in_remnant_mL"] == pytest.approx(0.0, abs=0.05)


def test_a_missing_structure_names_the_plan_field_the_flag_and_the_candidates(whole_kidney, tmp_path, capsys):
    # An older plan: keys only. The kidney is found by its code; the tumour key "tumour" (a
    # LEFT renal tumour) does not match a tumour coded without a side.
    data = plan_json({"organ_key": "kidney_left", "tumour_key": "tumour"}, [PLANE_VARIANT])
    code, _ = run_plan(tmp_path, whole_kidney["scene"], data)
    assert code == 2
    error = capsys.readouterr().err
    assert "plan.case.tumour_key" in error and "--tumour" in error
    assert "'Kidney tumour'" in error and whole_kidney["tumour_id"] in error and "key renal_tumour" in error
    # The flag fixes it without editing the plan; the saved plan records how the tumour was found.
    code, saved = run_plan(tmp_path, whole_kidney["scene"], data, "--tumour", "Kidney tumour")
    assert code == 0
    assert saved["case"]["tumour"] == {"name": "Kidney tumour"}
    # The organ by segment ID, overriding the plan's key.
    code, saved = run_plan(
        tmp_path,
        whole_kidney["scene"],
        data,
        "--organ",
        whole_kidney["kidney_id"],
        "--tumour",
        "key:renal_tumour",
    )
    assert code == 0
    assert saved["case"]["organ"] == {"segment_id": whole_kidney["kidney_id"]}
    assert saved["case"]["tumour"] == {"key": "renal_tumour"}
    # A name that no segment has: exit 2, the candidates listed.
    code, _ = run_plan(tmp_path, whole_kidney["scene"], data, "--organ", "Left kidney")
    assert code == 2
    error = capsys.readouterr().err
    assert "--organ" in error and "'Kidney, left'" in error


def test_an_ambiguous_structure_is_refused_with_its_candidates(whole_kidney):
    segmentation = whole_kidney["segmentation"]
    extra = add_coded_segment(
        segmentation, whole_kidney["tumour"], IJK_TO_RAS, "Kidney, left (copy)", "kidney_left"
    )
    try:
        with pytest.raises(InputDataError, match="ambiguous: 2 segments match") as error:
            structures.resolve(
                segmentation,
                structures.StructureRef.key("kidney_left"),
                what="organ",
                field_name="plan.case.organ",
            )
        assert whole_kidney["kidney_id"] in str(error.value) and extra in str(error.value)
        assert "plan.case.organ" in str(error.value)
        # By name, the same segments are told apart.
        match = structures.resolve(
            segmentation, structures.StructureRef("name", "kidney, LEFT"), what="organ", field_name="x"
        )
        assert match.segment_ids == [whole_kidney["kidney_id"]]
    finally:
        segmentation.GetSegmentation().RemoveSegment(extra)


def test_a_plan_without_a_tumour_gives_volumes_and_says_what_was_not_computed(whole_kidney):
    plan = Plan.from_dict(plan_json({"organ": {"key": "kidney_left"}}, [PLANE_VARIANT]))
    inputs = PlanningInputs(whole_kidney["app"], whole_kidney["segmentation"], whole_kidney["volume"])
    compute_plan(inputs, plan)
    results = plan.variant("lower pole plane").results
    resection = results["resection"]
    # Without a tumour the organ is the kidney segment alone.
    kidney_truth = float(np.count_nonzero(whole_kidney["kidney"])) / 1000.0
    assert resection["organ_volume_mL"] == pytest.approx(kidney_truth, rel=0.005)
    resected_truth = partial_voxel_volume_ml(whole_kidney["kidney"], IJK_TO_RAS, PLANE_ORIGIN, PLANE_NORMAL)
    assert resection["resected_volume_mL"] == pytest.approx(resected_truth, rel=0.005)
    assert resection["min_margin_mm"] is None and resection["tumour_volume_mL"] is None
    assert set(results["not_computed"]) >= {"margins", "nephrometry", "territories"}
    assert "nephrometry" not in results and results["structures"]["tumour"] is None


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    case = create_sample_case(tmp_path_factory.mktemp("phantom"), shape=(160, 160, 100), seed=4)
    app = VSPApplication.create_headless()
    return case, app, load_sample_case(app, case.case_dir)


# The phantom's sample plan computed on `main` before structures were found by code (the private
# tag), same case (160 x 160 x 100, seed 4), default 0.5 mm working grid; recomputed when the
# working grid was aligned with the source voxels (0.448 x 0.448 x 0.5 mm): the organ is now
# exactly the segmentation's 123.794 mL (it was 124.418), and the plane's resected volume 48.304
# mL against an exact partial-voxel 48.644 mL (it was 49.189; an axial plane through a working
# layer is off by up to half a layer).
MAIN_NUMBERS = {
    "lower pole plane": {"organ": 123.794, "resected": 48.304, "remnant": 75.49, "margin": 6.73},
    "enucleation 5 mm": {"organ": 123.794, "resected": 21.737, "remnant": 102.058, "margin": 4.72},
}
MAIN_TERRITORIES = {"apical": 23.512, "upper": 18.921, "middle": 22.082, "lower": 34.32, "posterior": 24.958}


def test_the_phantom_with_its_parts_gives_the_numbers_of_main(phantom):
    case, app, loaded = phantom
    plan = sample_plan(case.facts, loaded.volume_node, case_id="VSP-PHANTOM-4")
    compute_plan(PlanningInputs(app, loaded.segmentation_node, loaded.volume_node), plan)
    for name, expected in MAIN_NUMBERS.items():
        results = plan.variant(name).results
        resection = results["resection"]
        assert resection["organ_volume_mL"] == pytest.approx(expected["organ"], rel=0.01), name
        assert resection["resected_volume_mL"] == pytest.approx(expected["resected"], rel=0.01), name
        assert resection["remnant_volume_mL"] == pytest.approx(expected["remnant"], rel=0.01), name
        assert resection["min_margin_mm"] == pytest.approx(expected["margin"], rel=0.01), name
        territories = {t["branch"]: t["volume_mL"] for t in results["territories"]["territories"]}
        for segment, volume in MAIN_TERRITORIES.items():
            assert territories[f"segmental_artery_left_{segment}"] == pytest.approx(volume, rel=0.01)
        assert results["nephrometry"]["score"] == 7 and results["nephrometry"]["notation"] == "7x"
        assert results["structures"]["organ"]["found_by"] == "code (its parts)"
        assert results["structures"]["organ"]["parts_absent"] == []
        assert "territories" not in results["not_computed"]
    assert plan.variant("lower pole plane").results["resection"]["cut_vessels"][0]["branch"] == (
        "segmental_artery_left_lower"
    )
    assert plan.variant("enucleation 5 mm").results["clamping"]["ischaemic_volume_mL"] == pytest.approx(
        MAIN_TERRITORIES["lower"], rel=0.01
    )


def test_the_phantom_kidney_as_one_segment_plans_like_its_parts(phantom):
    """The phantom's kidney parts unioned into one coded segment, the tumour kept, no vessels:
    the same organ, so the same volumes; no territories; N not computed."""
    case, app, loaded = phantom
    source = loaded.segmentation_node
    parts = [
        structures.structure_segment_ids(source, key)[0]
        for key in ("kidney_left_cortex", "kidney_left_medulla", "renal_pelvis_left", "calyx_left")
    ]
    tumour_id = structures.structure_segment_ids(source, "tumour")[0]
    kidney = segments_mask(source, parts, loaded.volume_node)
    tumour = segments_mask(source, [tumour_id], loaded.volume_node)
    whole = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Whole kidney")
    whole.CreateDefaultDisplayNodes()
    whole.SetReferenceImageGeometryParameterFromVolumeNode(loaded.volume_node)
    add_coded_segment(whole, kidney.array, kidney.ijk_to_ras, "Kidney, left", "kidney_left")
    add_coded_segment(whole, tumour.array, tumour.ijk_to_ras, "Renal tumour, left", "tumour")
    plan = sample_plan(case.facts, loaded.volume_node, case_id="VSP-PHANTOM-4")
    compute_plan(PlanningInputs(app, whole, loaded.volume_node), plan)
    for name, expected in MAIN_NUMBERS.items():
        results = plan.variant(name).results
        resection = results["resection"]
        assert resection["organ_volume_mL"] == pytest.approx(expected["organ"], rel=0.001), name
        assert resection["resected_volume_mL"] == pytest.approx(expected["resected"], rel=0.005), name
        assert results["structures"]["organ"]["found_by"] == "code (whole structure)"
        assert len(results["structures"]["organ"]["segment_ids"]) == 1
        assert results["structures"]["absent_vessel_branches"][0] == "renal_artery_left"
        assert "none of the vessel tree's branches" in results["not_computed"]["territories"]
        assert "clamping" not in results and ("clamping" in results["not_computed"]) == bool(
            plan.variant(name).clamped_branches
        )
        assert results["nephrometry"]["components"]["N"]["points"] is None
        assert results["nephrometry"]["components"]["R"]["points"] == 1


def test_plan_structure_references_round_trip_and_are_checked():
    data = plan_json(
        {
            "organ": {"segment_id": "Segment_1"},
            "tumour": {"name": "Kidney tumour"},
            "vessel_tree": {
                "renal_artery_left": None,
                "upper branch": {"parent": "renal_artery_left", "name": "Segmental artery 1"},
            },
        },
        [{"name": "v", "resections": [], "clamped_branches": ["upper branch"]}],
    )
    plan = Plan.from_dict(data)
    assert plan.case.organ_ref == structures.StructureRef("segment_id", "Segment_1")
    assert plan.case.branch_ref("upper branch") == structures.StructureRef("name", "Segmental artery 1")
    assert plan.case.branch_ref("renal_artery_left") == structures.StructureRef.key("renal_artery_left")
    again = Plan.from_dict(plan.to_dict())
    assert (
        again.to_dict()["case"]
        == plan.to_dict()["case"]
        == {
            **data["case"],
            "study_instance_uid": "",
            "series_instance_uid": "",
            "frame_of_reference_uid": "",
            "segmentation": "",
            "organ_key": "",
            "tumour_key": "",
        }
    )
    plan.add_variant(PlanVariant("w", resections=[PlaneResection("p", (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))]))
    assert Plan.from_dict(plan.to_dict()).variant("w").resections[0].normal_ras == (0.0, 0.0, 1.0)
