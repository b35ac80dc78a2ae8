"""The plan model: typed, versioned, validated; stored in the scene and in the case folder."""

from __future__ import annotations

import json

import jsonschema
import pytest

from SurgicalPlanningLib.plan import (
    SCHEMA_FILE,
    CaseReference,
    MarginResection,
    Plan,
    PlaneResection,
    PlanFormatError,
    PlanVariant,
    SurfaceResection,
    comparison_rows,
    comparison_table_node,
    load_plan_file,
    load_plan_from_scene,
    save_plan_file,
    store_plan_in_scene,
)
from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication


def make_plan() -> Plan:
    grid = [(x * 10.0, y * 10.0, -5.0 + 0.1 * x * y) for y in range(4) for x in range(5)]
    plan = Plan(
        case=CaseReference(
            case_id="VSP-PHANTOM-0",
            series_instance_uid="1.2.3.4",
            frame_of_reference_uid="1.2.3.5",
            organ_key="kidney_left",
            tumour_key="tumour",
            vessel_tree={"renal_artery_left": None, "segmental_artery_left_lower": "renal_artery_left"},
        )
    )
    plan.add_variant(
        PlanVariant(
            name="lower pole plane",
            resections=[PlaneResection("cut 1", (95.0, 10.0, -60.0), (0.0, 0.2, -1.0), remove="negative")],
        )
    )
    plan.add_variant(
        PlanVariant(
            name="enucleation",
            description="5 mm margin, clipped",
            resections=[
                MarginResection("margin", 5.0, clip_plane=PlaneResection("clip", (90.0, 0, -50), (1, 0, 0))),
                SurfaceResection("surface", rows=4, columns=5, control_points_ras_mm=grid),
            ],
            clamped_branches=["segmental_artery_left_lower"],
        )
    )
    plan.record_results("lower pole plane", {"resected_volume_mL": 31.5, "margin": {"min_margin_mm": 4.2}})
    plan.record_results("enucleation", {"resected_volume_mL": 22.0, "margin": {"min_margin_mm": 5.0}})
    return plan


def test_plan_round_trips_through_json_exactly():
    plan = make_plan()
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() | {"modified_at": ""} == plan.to_dict() | {"modified_at": ""}
    assert again.variant("enucleation").resections[0].clip_plane.normal_ras == (1.0, 0.0, 0.0)
    assert again.active_variant == "enucleation"
    assert again.variant("lower pole plane").computed_with.startswith("SlicerVSP ")


def test_plan_json_follows_the_published_schema():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(make_plan().to_dict(), schema)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["variants"][0]["resections"][0].pop("normal_ras"), "missing 'normal_ras'"),
        (lambda d: d["variants"][0]["resections"][0].update(remove="left"), "remove"),
        (lambda d: d["variants"][0]["resections"][0].update(normal_ras=[0, 0, 0]), "must not be zero"),
        (lambda d: d["variants"][1]["resections"][1].update(rows=3), "at least 4×4"),
        (lambda d: d["variants"][1]["resections"][0].update(margin_mm=-1), "between 0 and 50"),
        (lambda d: d["variants"][0]["resections"][0].update(kind="laser"), "unknown resection kind"),
        (lambda d: d.update(active_variant="nope"), "is not a variant"),
    ],
)
def test_invalid_plans_are_refused_by_the_parser_and_the_schema(mutate, message):
    data = make_plan().to_dict()
    mutate(data)
    with pytest.raises(PlanFormatError, match=message):
        Plan.from_dict(data)
    # A zero normal or an unknown active variant is valid JSON-Schema-wise; only the parser knows.
    if message not in ("must not be zero", "is not a variant"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))


def test_a_plan_from_a_newer_version_is_refused_clearly():
    data = make_plan().to_dict() | {"schema_version": 99}
    with pytest.raises(PlanFormatError, match="newer than this SlicerVSP understands"):
        Plan.from_dict(data)


def test_plan_file_is_written_atomically_and_read_back(tmp_path):
    plan = make_plan()
    path = save_plan_file(plan, tmp_path)
    assert load_plan_file(tmp_path).to_dict() | {"modified_at": ""} == plan.to_dict() | {"modified_at": ""}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    path.write_text("{ not json")
    with pytest.raises(PlanFormatError, match="plan.json: is not valid JSON"):
        load_plan_file(path)


@pytest.mark.parametrize("suffix", [".mrml", ".mrb"])
def test_plan_travels_with_the_scene(tmp_path, suffix):
    first = VSPApplication.create_headless()
    plan = make_plan()
    node = store_plan_in_scene(plan, first.scene)
    assert store_plan_in_scene(plan, first.scene) is node  # one plan node per scene
    path = storage.save_scene(first, tmp_path / f"scene{suffix}")
    second = VSPApplication.create_headless()
    storage.load_scene(second, path)
    loaded = load_plan_from_scene(second.scene)
    assert loaded.to_dict() | {"modified_at": ""} == plan.to_dict() | {"modified_at": ""}


def test_variants_are_compared_metric_by_metric(app):
    plan = make_plan()
    rows = {row["metric"]: row for row in comparison_rows(plan)}
    assert rows["resected_volume_mL"] == {
        "metric": "resected_volume_mL",
        "lower pole plane": 31.5,
        "enucleation": 22.0,
    }
    assert rows["margin.min_margin_mm"]["enucleation"] == 5.0
    table = comparison_table_node(plan, app.scene).GetTable()
    assert table.GetNumberOfColumns() == 3
    metrics = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    assert table.GetValue(metrics.index("resected_volume_mL"), 1).ToString() == "31.5"


def test_duplicate_and_unknown_variants_are_clear_errors():
    plan = make_plan()
    with pytest.raises(Exception, match="exists already"):
        plan.add_variant(PlanVariant(name="enucleation"))
    with pytest.raises(Exception, match="no variant 'other'.*lower pole plane"):
        plan.variant("other")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["case"].update(organ_kee="kidney_left"),
            r"plan.case: unknown field\(s\) 'organ_kee' \(did you mean 'organ_key'\?\)",
        ),
        (lambda d: d.update(variant=[]), r"plan: unknown field\(s\) 'variant' \(did you mean 'variants'\?\)"),
        (
            lambda d: d["variants"][0]["resections"][0].update(normal=[0, 0, 1]),
            r"plan.variants\[0\].resections\[0\]: unknown field\(s\) 'normal' \(did you mean 'normal_ras'\?\)",
        ),
        (lambda d: d["case"].update(organ={"nmae": "Kidney, left"}), "plan.case.organ"),
        (lambda d: d["case"].update(organ={"name": "A", "key": "kidney_left"}), "plan.case.organ"),
        (lambda d: d["case"]["vessel_tree"].update(x={"parent": None, "colour": "red"}), "vessel_tree"),
    ],
)
def test_the_parser_validates_against_the_published_schema_and_names_the_closest_field(mutate, message):
    data = make_plan().to_dict()
    mutate(data)
    with pytest.raises(PlanFormatError, match=message):
        Plan.from_dict(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))


def test_structures_by_key_name_or_id_follow_the_schema_and_round_trip():
    from SurgicalPlanningLib.structures import StructureRef

    data = make_plan().to_dict()
    data["case"]["organ"] = {"name": "Kidney, left"}
    data["case"]["tumour"] = {"segment_id": "Segment_7"}
    data["case"]["vessel_tree"]["lower branch"] = {"parent": "renal_artery_left", "name": "Artery 3"}
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    plan = Plan.from_dict(data)
    assert plan.case.organ_ref == StructureRef("name", "Kidney, left")  # wins over organ_key
    assert plan.case.tumour_ref == StructureRef("segment_id", "Segment_7")
    assert plan.case.vessel_tree["lower branch"] == "renal_artery_left"
    assert plan.case.branch_ref("lower branch") == StructureRef("name", "Artery 3")
    assert plan.to_dict()["case"] == data["case"]
    # The older keys alone still name the structures by key.
    legacy = make_plan()
    assert legacy.case.organ_ref == StructureRef.key("kidney_left")
    assert legacy.case.organ_field == "plan.case.organ_key"
    assert "organ" not in legacy.to_dict()["case"]
