"""A plan computed end to end on the sample case: resections, cut vessels, territories at risk,
clamping and nephrometry together; reproduced in a fresh scene; on the patient's LEFT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SurgicalPlanningLib.cli import main
from SurgicalPlanningLib.plan import Plan, PlaneResection, PlanVariant, load_plan_from_scene, save_plan_file
from SurgicalPlanningLib.planning import PlanningInputs, compute_plan, compute_variant, sample_plan
from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import segment_mask
from VSPCoreLib.errors import InputDataError


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return create_sample_case(tmp_path_factory.mktemp("plan-case"), shape=(160, 160, 100), seed=4)


@pytest.fixture
def planned(case):
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, case.case_dir)
    plan = sample_plan(case.facts, loaded.volume_node, case_id="VSP-PHANTOM-4")
    inputs = PlanningInputs(app, loaded.segmentation_node, loaded.volume_node)
    compute_plan(inputs, plan)
    return app, loaded, plan


def results(plan, name):
    return plan.variant(name).results


def test_the_lower_pole_plane_cuts_the_lower_branch_and_removes_most_of_its_territory(planned):
    _, _, plan = planned
    r = results(plan, "lower pole plane")
    resection = r["resection"]
    assert resection["positive_margin"] is False
    assert 6.0 <= resection["min_margin_mm"] <= 10.0  # the plane is 8 mm above the tumour
    assert resection["resected_volume_mL"] + resection["remnant_volume_mL"] == pytest.approx(
        resection["organ_volume_mL"], rel=1e-6
    )
    cut = [vessel["structure_key"] for vessel in resection["cut_vessels"]]
    assert "segmental_artery_left_lower" in cut
    risk = r["at_risk"]
    assert "segmental_artery_left_lower" in risk["branches_at_risk"]
    # The lower pole goes: of that branch's territory, almost nothing stays in the patient.
    assert risk["remnant_at_risk_mL"] < 0.1 * risk["at_risk_volume_mL"]
    assert r["nephrometry"]["components"]["R"]["points"] == 1  # a 3 cm tumour


def test_enucleation_keeps_parenchyma_but_leaves_the_cut_branch_territory_at_risk(planned):
    _, _, plan = planned
    plane, enucleation = results(plan, "lower pole plane"), results(plan, "enucleation 5 mm")
    assert enucleation["resection"]["remnant_volume_mL"] > plane["resection"]["remnant_volume_mL"] + 15
    assert enucleation["resection"]["min_margin_mm"] == pytest.approx(5.0, abs=1.2)
    # Selective clamping of the lower branch: its whole territory is ischaemic.
    clamping = enucleation["clamping"]
    territory = {t["branch"]: t for t in enucleation["territories"]["territories"]}
    assert clamping["ischaemic_volume_mL"] == pytest.approx(
        territory["segmental_artery_left_lower"]["volume_mL"], rel=1e-6
    )


def test_a_plan_loaded_into_a_fresh_scene_reproduces_its_results(planned, tmp_path):
    app, _, plan = planned
    path = storage.save_scene(app, tmp_path / "planned.mrb")
    other = VSPApplication.create_headless()
    storage.load_scene(other, path)
    reloaded = load_plan_from_scene(other.scene)
    stored = {v.name: v.results for v in reloaded.variants}
    volume = other.scene.GetFirstNode("CT", "vtkMRMLScalarVolumeNode")
    segmentation = other.scene.GetFirstNode("Ground truth", "vtkMRMLSegmentationNode")
    compute_plan(PlanningInputs(other, segmentation, volume), reloaded)
    for variant in reloaded.variants:
        before, after = stored[variant.name], variant.results
        for key in ("resected_volume_mL", "remnant_volume_mL", "min_margin_mm"):
            assert after["resection"][key] == pytest.approx(before["resection"][key], abs=1e-3), key
        assert after["resection"]["cut_vessels"] == before["resection"]["cut_vessels"]
        assert after["territories"]["territories"] == before["territories"]["territories"]


def test_the_left_plan_acts_on_the_left_kidney_after_reload(planned, tmp_path):
    app, _, plan = planned
    path = storage.save_scene(app, tmp_path / "planned.mrb")
    other = VSPApplication.create_headless()
    storage.load_scene(other, path)
    regions = other.scene.GetFirstNode("Resection lower pole plane regions", "vtkMRMLSegmentationNode")
    resected = segment_mask(regions, "resection_resected")
    k, j, i = np.nonzero(resected.array)
    centre = resected.ras_of(np.column_stack([i, j, k]).mean(axis=0))
    ground = other.scene.GetFirstNode("Ground truth", "vtkMRMLSegmentationNode")
    spine = segment_mask(ground, ground.GetSegmentation().GetSegmentIdBySegmentName("Vertebral column"))
    ks, js, is_ = np.nonzero(spine.array)
    spine_r = spine.ras_of(np.column_stack([is_, js, ks]).mean(axis=0))[0]
    assert centre[0] < spine_r - 40  # the resected lower pole is on the patient's left


def test_a_failed_variant_leaves_the_plan_as_it_was(planned):
    app, loaded, plan = planned
    before = json.dumps(plan.variant("lower pole plane").results, sort_keys=True)
    # A plane far above the body: it does not cut the organ.
    plan.add_variant(
        PlanVariant(name="miss", resections=[PlaneResection("far", (0.0, 0.0, 900.0), (0.0, 0.0, 1.0))])
    )
    with pytest.raises(InputDataError, match="does not cut"):
        compute_variant(PlanningInputs(app, loaded.segmentation_node, loaded.volume_node), plan, "miss")
    assert plan.variant("miss").results == {}
    assert json.dumps(plan.variant("lower pole plane").results, sort_keys=True) == before


def test_a_plan_naming_an_absent_structure_is_a_clear_error(planned):
    app, loaded, plan = planned
    data = plan.to_dict()
    data["case"]["organ_key"] = "liver"
    data["case"]["tumour_key"] = "tumour"
    wrong = Plan.from_dict(data)
    # The phantom's liver exists but the tumour is not in it: refused, naming the problem.
    with pytest.raises(InputDataError):
        compute_variant(
            PlanningInputs(app, loaded.segmentation_node, loaded.volume_node), wrong, "lower pole plane"
        )


def test_vsp_plan_computes_and_compares_the_variants(planned, tmp_path, capsys):
    app, _, plan = planned
    scene = storage.save_scene(app, tmp_path / "case.mrb")
    plan_file = save_plan_file(plan, tmp_path)
    out = tmp_path / "out"
    assert main(["-q", "plan", str(scene), "--plan", str(plan_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resection.resected_volume_mL" in printed and "enucleation 5 mm" in printed
    rows = {row["metric"]: row for row in json.loads((out / "comparison.json").read_text())}
    assert rows["resection.resected_volume_mL"]["lower pole plane"] == pytest.approx(
        results(plan, "lower pole plane")["resection"]["resected_volume_mL"], abs=1e-3
    )
    assert (out / "comparison.csv").read_text().splitlines()[0] == "metric,lower pole plane,enucleation 5 mm"
    assert (out / "Plan.mrb").is_file()


def test_every_result_is_in_a_table_node_with_units_in_the_names(planned):
    app, _, plan = planned
    table = app.scene.GetFirstNode("Plan comparison", "vtkMRMLTableNode").GetTable()
    assert table.GetNumberOfColumns() == 3  # metric + two variants
    rows = {table.GetValue(r, 0).ToString(): r for r in range(table.GetNumberOfRows())}
    territory = "territories.territories[segmental_artery_left_lower].volume_mL"
    expected = next(
        t["volume_mL"]
        for t in results(plan, "lower pole plane")["territories"]["territories"]
        if t["branch"] == "segmental_artery_left_lower"
    )
    assert float(table.GetValue(rows[territory], 1).ToString()) == pytest.approx(expected, rel=1e-3)
    for name in (
        "nephrometry.components.R.max_diameter_mm",
        "resection.min_margin_mm",
        "clamping.ischaemic_volume_mL",
    ):
        assert name in rows
    assert "segmental_artery_left_lower" in table.GetValue(rows["at_risk.branches_at_risk"], 1).ToString()
    # Recomputing refills the same table: one node, not two.
    loaded = planned[1]
    compute_plan(PlanningInputs(app, loaded.segmentation_node, loaded.volume_node), plan)
    assert app.scene.GetNodesByName("Plan comparison").GetNumberOfItems() == 1


def test_a_vessel_tree_branch_missing_from_the_segmentation_is_a_warning_not_silence(planned):
    app, loaded, plan = planned
    data = plan.to_dict()
    data["case"]["vessel_tree"]["segmental_artery_left_accessory"] = "renal_artery_left"
    extended = Plan.from_dict(data)
    result = compute_variant(
        PlanningInputs(app, loaded.segmentation_node, loaded.volume_node), extended, "lower pole plane"
    )
    assert any("segmental_artery_left_accessory" in w for w in result["warnings"])
    assert any(w.startswith("resection: ") for w in result["warnings"])  # the engine's own warnings too


def test_the_territories_are_shown_as_coded_segments_once(planned):
    app, loaded, plan = planned

    def territory_nodes():
        nodes = app.scene.GetNodesByClass("vtkMRMLSegmentationNode")
        found = [nodes.GetItemAsObject(n) for n in range(nodes.GetNumberOfItems())]
        return [node for node in found if node.GetAttribute("SlicerVSP.Role") == "territories"]

    [node] = territory_nodes()
    segmentation = node.GetSegmentation()
    names = {segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())}
    assert "Territory Segmental artery, left, lower" in names and len(names) == 5
    import vtk

    entry = vtk.reference("")
    assert segmentation.GetNthSegment(0).GetTag("TerminologyEntry", entry)
    assert "SCT^7771000^Left" in str(entry)  # coded as the LEFT kidney
    compute_plan(PlanningInputs(app, loaded.segmentation_node, loaded.volume_node), plan)
    assert len(territory_nodes()) == 1  # replaced, not doubled
