"""Computing a plan: resections, territories at risk, clamping and tumour complexity together.

`compute_variant` puts one variant of a `plan.Plan` into the scene (markups nodes for its
planes and surfaces, a resection planner), computes everything the variant means and records
the results in the plan:
- `resection`: resected and remnant volume (mL, %) per organ and segment, the margin (mm, where),
  positive margin, the cut vessel branches (where, diameter);
- `territories`: every organ voxel's supplying branch (geodesic inside the organ), volumes;
- `at_risk`: territories downstream of the cut branches, and the remnant at risk (mL, %);
- `clamping`: the ischaemic volume of the variant's clamped branches (selective clamping);
- `nephrometry` (kidney): the R.E.N.A.L. score with each component measured, contact area;
- `future_liver_remnant` (liver): the remnant as a share of the whole liver.
Everything is computed before the plan changes; an error leaves the plan as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from VSPCoreLib import terminology
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.progress import ProgressCallback, report, scaled

from .plan import (
    CaseReference,
    MarginResection,
    Plan,
    PlaneResection,
    PlanVariant,
    comparison_rows,
    comparison_table_node,
    store_plan_in_scene,
)

# The numbers a planner compares first between variants (dotted paths into the results).
KEY_METRICS = [
    "resection.resected_volume_mL",
    "resection.remnant_volume_mL",
    "resection.remnant_fraction_percent",
    "resection.min_margin_mm",
    "resection.positive_margin",
    "at_risk.branches_at_risk",
    "at_risk.remnant_at_risk_mL",
    "at_risk.remnant_at_risk_percent_of_remnant",
    "clamping.ischaemic_volume_mL",
    "clamping.ischaemic_percent_of_organ",
    "nephrometry.score",
    "nephrometry.notation",
    "future_liver_remnant.remnant_percent",
]


@dataclass
class PlanningInputs:
    """The scene nodes a plan is computed on."""

    app: object
    segmentation_node: object
    volume_node: object


def _organ_parts(segmentation_node, organ_key: str, tumour_key: str) -> tuple[list[str], str | None]:
    """Segment IDs of the organ's parts (without the tumour) and of the tumour."""
    from .resection import segment_ids_for_keys

    structure = terminology.term(organ_key)
    parts = [key for key in (structure.parts or (organ_key,)) if key != tumour_key]
    organ_ids = segment_ids_for_keys(segmentation_node, parts)
    tumour_ids = segment_ids_for_keys(segmentation_node, [tumour_key]) if tumour_key else []
    return organ_ids, (tumour_ids[0] if tumour_ids else None)


def _side(organ_key: str) -> str | None:
    for side in ("left", "right"):
        if organ_key.endswith(f"_{side}"):
            return side
    return None


def compute_variant(
    inputs: PlanningInputs,
    plan: Plan,
    variant_name: str | None = None,
    *,
    spacing_mm: float = 0.5,
    progress: ProgressCallback | None = None,
    shared: dict | None = None,
) -> dict:
    """Compute one variant; its results are recorded in `plan` and returned.

    `shared` caches what does not depend on the variant (territories, nephrometry) between the
    variants of one computation; pass the same dict for every variant, or None.
    """
    shared = {} if shared is None else shared
    from .resection import ResectionPlanner, segment_ids_for_keys
    from .territories import clamp, territories_at_risk, territories_from_segmentation

    variant = plan.variant(variant_name)
    case = plan.case
    if not case.organ_key:
        raise InputDataError("the plan names no organ.", subject="plan", fix="set case.organ_key.")
    segmentation_node, volume_node = inputs.segmentation_node, inputs.volume_node
    timings: dict[str, float] = {}
    results: dict = {"variant": variant.name, "warnings": []}
    absent = [key for key in case.vessel_tree if not _has_structure(segmentation_node, key)]
    if absent:
        # Not an error (a branch may be too small to segment), but never silent: the listed
        # branches take over the territories of the missing ones.
        results["warnings"].append(
            f"vessel branch(es) of the plan's tree not in the segmentation: {', '.join(absent)}; "
            "their territories are assigned to the branches that are segmented."
        )

    start = time.perf_counter()
    if variant.resections:
        report(progress, 0.0, f"{variant.name}: resections")
        organ_ids, tumour_id = _organ_parts(segmentation_node, case.organ_key, case.tumour_key)
        branch_keys = [key for key in case.vessel_tree if _has_structure(segmentation_node, key)]
        vessel_ids = segment_ids_for_keys(segmentation_node, branch_keys)
        planner = ResectionPlanner(
            inputs.app,
            segmentation_node,
            organ_ids,
            tumour_id,
            vessel_ids,
            spacing_mm,
            name=f"Resection {variant.name}",
            progress=scaled(progress, 0.0, 0.2),
        )
        for resection in variant.resections:
            planner.add_from_plan(resection)
        resection_result = planner.update(progress=scaled(progress, 0.2, 0.45))
        results["resection"] = resection_result.to_json()
        resected = _resected_mask(planner)
        timings["resection"] = time.perf_counter() - start
    else:
        resection_result, resected = None, None

    if case.vessel_tree:
        t = time.perf_counter()
        report(progress, 0.45, f"{variant.name}: vascular territories")
        branch_keys = [key for key in case.vessel_tree if _has_structure(segmentation_node, key)]
        cache_key = ("territories", case.organ_key, tuple(branch_keys))
        if cache_key not in shared:
            shared[cache_key] = territories_from_segmentation(
                segmentation_node,
                volume_node,
                case.organ_key,
                branch_keys,
                progress=scaled(progress, 0.45, 0.7),
            )
        territories = shared[cache_key]
        results["territories"] = territories.to_json()
        spacing = [round(float(v), 4) for v in territories.labels.spacing_mm]
        results["territories"]["grid_spacing_mm"] = spacing
        if resection_result is not None:
            # Veins can be cut too; the arterial tree decides what loses its supply.
            risk = territories_at_risk(
                territories, resection_result.cut_branch_keys, case.vessel_tree, resected, strict=False
            )
            at_risk = risk.to_json()
            # The remnant's volume is the resection's (0.5 mm grid); a second figure from the
            # territories' CT grid would differ by voxelisation and only confuse.
            at_risk.pop("remnant_volume_mL", None)
            at_risk["grid_spacing_mm"] = spacing
            results["at_risk"] = at_risk
        if variant.clamped_branches:
            results["clamping"] = clamp(territories, variant.clamped_branches, case.vessel_tree).to_json()
        timings["territories"] = time.perf_counter() - t

    side = _side(case.organ_key)
    if case.organ_key.startswith("kidney") and side and case.tumour_key:
        t = time.perf_counter()
        report(progress, 0.75, f"{variant.name}: nephrometry")
        from .nephrometry import renal_score_from_segmentation

        cache_key = ("nephrometry", case.organ_key, case.tumour_key)
        if cache_key not in shared:
            shared[cache_key] = renal_score_from_segmentation(
                segmentation_node,
                volume_node,
                side=side,
                tumour_key=case.tumour_key,
                kidney_key=case.organ_key,
            ).to_json()
        results["nephrometry"] = shared[cache_key]
        timings["nephrometry"] = time.perf_counter() - t
    if case.organ_key == "liver" and resected is not None:
        from .territories import future_liver_remnant, structure_mask

        liver = structure_mask(segmentation_node, "liver", volume_node)
        results["future_liver_remnant"] = future_liver_remnant(liver, resected).to_json()

    for part in ("resection", "territories"):
        results["warnings"] += [f"{part}: {w}" for w in results.get(part, {}).get("warnings", [])]
    timings["total"] = time.perf_counter() - start
    results["timings_s"] = {key: round(value, 3) for key, value in timings.items()}
    plan.record_results(variant.name, results)
    report(progress, 1.0, f"{variant.name}: done")
    return results


def compute_plan(
    inputs: PlanningInputs, plan: Plan, *, spacing_mm: float = 0.5, progress: ProgressCallback | None = None
) -> Plan:
    """Compute every variant, store the plan in the scene, and return it."""
    count = max(len(plan.variants), 1)
    shared: dict = {}  # territories and nephrometry: the same for every variant
    for index, variant in enumerate(plan.variants):
        compute_variant(
            inputs,
            plan,
            variant.name,
            spacing_mm=spacing_mm,
            progress=scaled(progress, index / count, (index + 1) / count),
            shared=shared,
        )
    scene = inputs.segmentation_node.GetScene()
    _show_territories(inputs, plan, shared)
    store_plan_in_scene(plan, scene)
    comparison_table_node(plan, scene)  # every result of every variant, as a table
    return plan


TERRITORIES_NODE_ROLE = "territories"


def _show_territories(inputs: PlanningInputs, plan: Plan, shared: dict) -> None:
    """The plan's vascular territories as segments (coloured from their branches, coded as the
    organ) in one segmentation node, replaced when the plan is recomputed."""
    from .territories import add_territory_segments

    maps = [value for key, value in shared.items() if key[0] == "territories"]
    if not maps:
        return
    scene = inputs.segmentation_node.GetScene()
    node = add_territory_segments(
        scene,
        maps[0],
        plan.case.organ_key,
        reference_volume=inputs.volume_node,
        source_segmentation=inputs.segmentation_node,
    )
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for index in range(nodes.GetNumberOfItems()):
        old = nodes.GetItemAsObject(index)
        if old is not node and old.GetAttribute("SlicerVSP.Role") == TERRITORIES_NODE_ROLE:
            scene.RemoveNode(old)
    node.SetAttribute("SlicerVSP.Role", TERRITORIES_NODE_ROLE)


def key_comparison(plan: Plan) -> list[dict]:
    """The key metrics side by side (only those some variant has)."""
    rows = comparison_rows(plan, KEY_METRICS)
    return [row for row in rows if any(row[v.name] is not None for v in plan.variants)]


def _has_structure(segmentation_node, key: str) -> bool:
    from .resection import segment_ids_for_keys

    try:
        segment_ids_for_keys(segmentation_node, [key])
    except InputDataError:
        return False
    return True


def _resected_mask(planner):
    """The resected region as a boolean GridArray (on the planner's working grid)."""
    from VSPCoreLib.arrays import segment_mask

    node = planner.output_segmentation_node  # regions written by the planner (resection/outputs.py)
    if node is None or node.GetSegmentation().GetSegment("resection_resected") is None:
        return None
    return segment_mask(node, "resection_resected")


# --- the sample plan ----------------------------------------------------------------------------


def sample_plan(case_facts: dict, volume_node, *, case_id: str) -> Plan:
    """Two variants for the sample case's LEFT lower-pole tumour, from its ground-truth facts:
    a lower-pole plane 8 mm above the tumour, and a 5 mm-margin enucleation; the second also
    clamps the lower segmental artery."""
    import numpy as np

    from .territories import kidney_arterial_tree

    truth = case_facts["ground_truth"]
    lps = np.asarray(truth["tumour_centre_lps"], float)
    centre_ras = np.array([-lps[0], -lps[1], lps[2]])
    radius = truth["tumour_diameter_mm"] / 2.0
    origin = centre_ras + np.array([0.0, 0.0, radius + 8.0])
    plan = Plan(
        case=CaseReference(
            case_id=case_id,
            study_instance_uid=volume_node.GetAttribute("DICOM.StudyInstanceUID") or "",
            series_instance_uid=volume_node.GetAttribute("DICOM.SeriesInstanceUID") or "",
            frame_of_reference_uid=volume_node.GetAttribute("DICOM.FrameOfReferenceUID") or "",
            segmentation="Ground truth",
            organ_key="kidney_left",
            tumour_key="tumour",
            vessel_tree=kidney_arterial_tree("left"),
        )
    )
    plan.add_variant(
        PlanVariant(
            name="lower pole plane",
            description="Partial nephrectomy: everything below a plane 8 mm above the tumour.",
            resections=[
                PlaneResection("lower pole", tuple(origin.round(2)), (0.0, 0.0, 1.0), remove="negative")
            ],
        )
    )
    plan.add_variant(
        PlanVariant(
            name="enucleation 5 mm",
            description="Tumour with a 5 mm margin of parenchyma; lower segmental artery clamped.",
            resections=[MarginResection("5 mm margin", 5.0)],
            clamped_branches=["segmental_artery_left_lower"],
        ),
        activate=False,
    )
    return plan
