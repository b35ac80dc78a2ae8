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

from . import structures
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
from .structures import StructureMatch

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


@dataclass
class PlanStructures:
    """The segments a plan's references name, found once per computation."""

    organ: StructureMatch
    organ_ids: list[str]  # the organ's segments without the tumour
    organ_key: str | None  # the organ's terminology key (from the reference or its codes)
    tumour: StructureMatch | None
    tumour_id: str | None
    branches: dict[str, list[str]]  # vessel tree branch -> its segment IDs (present branches)
    absent_branches: list[str]
    parts_present: list[str]
    parts_absent: list[str]

    @property
    def vessel_ids(self) -> list[str]:
        return list(dict.fromkeys(sid for ids in self.branches.values() for sid in ids))

    def branch_of_segment(self, segment_id: str) -> str | None:
        return next((branch for branch, ids in self.branches.items() if segment_id in ids), None)

    def to_json(self, segmentation_node) -> dict:
        organ = self.organ.to_json(segmentation_node)
        organ["segment_ids"] = list(self.organ_ids)
        organ["segments"] = [
            segmentation_node.GetSegmentation().GetSegment(s).GetName() for s in self.organ_ids
        ]
        organ["parts_present"] = list(self.parts_present)
        organ["parts_absent"] = list(self.parts_absent)
        return {
            "organ": organ,
            "tumour": None if self.tumour is None else self.tumour.to_json(segmentation_node),
            "vessel_branches": {branch: list(ids) for branch, ids in self.branches.items()},
            "absent_vessel_branches": list(self.absent_branches),
        }


def resolve_structures(segmentation_node, case: CaseReference) -> PlanStructures:
    """Find the plan's organ, tumour and vessel branches in the segmentation (by code, name or ID).

    A missing or ambiguous organ or tumour, or a branch named by segment name or ID that is not
    there, is an InputDataError listing the candidates and the plan field to change. A branch
    named by key that the segmentation lacks is only listed (a branch may be too small to
    segment); an unknown key is treated the same way.
    """
    organ_ref = case.organ_ref
    if organ_ref is None:
        raise InputDataError(
            "the plan names no organ.",
            subject="plan",
            fix='set plan.case.organ (e.g. {"key": "kidney_left"} or {"name": "Kidney, left"}), or pass --organ.',
        )
    organ = structures.resolve(
        segmentation_node, organ_ref, what="organ", field_name=case.organ_field, flag="--organ"
    )
    tumour = None
    tumour_ref = case.tumour_ref
    if tumour_ref is not None:
        tumour = structures.resolve(
            segmentation_node, tumour_ref, what="tumour", field_name=case.tumour_field, flag="--tumour"
        )
        if len(tumour.segment_ids) != 1:
            raise InputDataError(
                f"the tumour ({tumour_ref.describe()}) is {len(tumour.segment_ids)} segments; the "
                "planner takes one tumour segment.",
                subject=segmentation_node.GetName(),
                fix=f"set {case.tumour_field} (or pass --tumour) to one segment, by name or ID.",
            )
    tumour_id = tumour.segment_ids[0] if tumour is not None else None
    organ_ids = [sid for sid in organ.segment_ids if sid != tumour_id]
    if not organ_ids:
        raise InputDataError(
            "the organ and the tumour are the same segment.",
            subject=segmentation_node.GetName(),
            fix=f"set {case.organ_field} and {case.tumour_field} to different segments.",
        )
    organ_key = organ.key
    parts_present: list[str] = []
    parts_absent: list[str] = []
    organ_term = terminology.STRUCTURES.get(organ_key) if organ_key else None
    if organ_term is not None and organ_term.parts:
        tumour_keys = {"tumour", tumour.key if tumour is not None else None}
        for part in organ_term.parts:
            if part in tumour_keys:
                continue
            (
                parts_present if structures.structure_segment_ids(segmentation_node, part) else parts_absent
            ).append(part)
    branches: dict[str, list[str]] = {}
    absent: list[str] = []
    for branch in case.vessel_tree:
        ref = case.branch_ref(branch)
        if ref.kind == "key" and ref.value not in terminology.STRUCTURES:
            absent.append(branch)
            continue
        field_name = f"plan.case.vessel_tree[{branch!r}]"
        try:
            match = structures.resolve(
                segmentation_node, ref, what=f"vessel branch {branch!r}", field_name=field_name
            )
        except InputDataError as error:
            if ref.kind == "key" and "was not found" in error.message:
                absent.append(branch)
                continue
            raise
        branches[branch] = match.segment_ids
    return PlanStructures(
        organ, organ_ids, organ_key, tumour, tumour_id, branches, absent, parts_present, parts_absent
    )


def _side(organ_key: str | None) -> str | None:
    if not organ_key or not organ_key.startswith("kidney"):
        return None
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

    `shared` caches what does not depend on the variant (the structures found, territories,
    nephrometry) between the variants of one computation; pass the same dict for every variant,
    or None. What cannot be computed (no tumour: margins and nephrometry; no vessel tree or no
    vessel segments: territories) is listed in the results' `not_computed` with the reason.
    """
    shared = {} if shared is None else shared
    from .resection import ResectionPlanner
    from .territories import clamp, territories_at_risk, territories_from_segmentation

    variant = plan.variant(variant_name)
    case = plan.case
    segmentation_node, volume_node = inputs.segmentation_node, inputs.volume_node
    if "structures" not in shared:
        shared["structures"] = resolve_structures(segmentation_node, case)
    found: PlanStructures = shared["structures"]
    timings: dict[str, float] = {}
    results: dict = {
        "variant": variant.name,
        "structures": found.to_json(segmentation_node),
        "not_computed": {},
        "warnings": [],
    }
    not_computed = results["not_computed"]
    if found.parts_absent:
        results["warnings"].append(
            f"the organ's part(s) {', '.join(found.parts_absent)} are not in the segmentation"
            + (" (the organ is one segment)" if found.organ.whole else "")
            + "; volumes are reported for the organ as segmented."
        )
    if found.absent_branches:
        # Not an error (a branch may be too small to segment), but never silent: the listed
        # branches take over the territories of the missing ones.
        results["warnings"].append(
            "vessel branch(es) of the plan's tree not in the segmentation: "
            f"{', '.join(found.absent_branches)}; their territories are assigned to the branches "
            "that are segmented."
        )
    if found.tumour is None:
        not_computed["margins"] = (
            "the plan names no tumour (plan.case.tumour): there is no margin to measure."
        )

    start = time.perf_counter()
    if variant.resections:
        report(progress, 0.0, f"{variant.name}: resections")
        planner = ResectionPlanner(
            inputs.app,
            segmentation_node,
            found.organ_ids,
            found.tumour_id,
            found.vessel_ids,
            spacing_mm,
            name=f"Resection {variant.name}",
            progress=scaled(progress, 0.0, 0.2),
        )
        for resection in variant.resections:
            planner.add_from_plan(resection)
        resection_result = planner.update(progress=scaled(progress, 0.2, 0.45))
        results["resection"] = resection_result.to_json()
        for vessel in results["resection"]["cut_vessels"]:
            vessel["branch"] = found.branch_of_segment(vessel["segment_id"])
        cut_branches = list(
            dict.fromkeys(v["branch"] for v in results["resection"]["cut_vessels"] if v["branch"])
        )
        resected = _resected_mask(planner)
        timings["resection"] = time.perf_counter() - start
    else:
        resection_result, resected, cut_branches = None, None, []

    if not case.vessel_tree:
        not_computed["territories"] = "the plan has no vessel tree (plan.case.vessel_tree)."
    elif not found.branches:
        not_computed["territories"] = (
            "none of the vessel tree's branches is in the segmentation "
            f"({', '.join(found.absent_branches)}): territories need vessel segments."
        )
    if "territories" in not_computed:
        if resection_result is not None:
            not_computed["at_risk"] = "no vascular territories: " + not_computed["territories"]
        if variant.clamped_branches:
            not_computed["clamping"] = "no vascular territories: " + not_computed["territories"]
    else:
        t = time.perf_counter()
        report(progress, 0.45, f"{variant.name}: vascular territories")
        organ_ids = list(found.organ.segment_ids)
        if found.tumour_id is not None and found.tumour_id not in organ_ids:
            organ_ids.append(found.tumour_id)  # the tumour is organ tissue a branch supplies
        cache_key = ("territories", tuple(organ_ids), tuple(found.branches))
        if cache_key not in shared:
            shared[cache_key] = territories_from_segmentation(
                segmentation_node,
                volume_node,
                found.organ_key,
                found.branches,
                organ_segment_ids=organ_ids,
                organ_name=found.organ_key
                or segmentation_node.GetSegmentation().GetSegment(organ_ids[0]).GetName(),
                progress=scaled(progress, 0.45, 0.7),
            )
        territories = shared[cache_key]
        results["territories"] = territories.to_json()
        spacing = [round(float(v), 4) for v in territories.labels.spacing_mm]
        results["territories"]["grid_spacing_mm"] = spacing
        if resection_result is not None:
            # Veins can be cut too; the arterial tree decides what loses its supply.
            risk = territories_at_risk(territories, cut_branches, case.vessel_tree, resected, strict=False)
            at_risk = risk.to_json()
            # The remnant's volume is the resection's (0.5 mm grid); a second figure from the
            # territories' CT grid would differ by voxelisation and only confuse.
            at_risk.pop("remnant_volume_mL", None)
            at_risk["grid_spacing_mm"] = spacing
            results["at_risk"] = at_risk
        if variant.clamped_branches:
            results["clamping"] = clamp(territories, variant.clamped_branches, case.vessel_tree).to_json()
        timings["territories"] = time.perf_counter() - t

    side = _side(found.organ_key)
    if side and found.tumour_id is None:
        not_computed["nephrometry"] = "the plan names no tumour: R.E.N.A.L. scores a renal tumour."
    elif side:
        t = time.perf_counter()
        report(progress, 0.75, f"{variant.name}: nephrometry")
        from .nephrometry import renal_score_from_segmentation

        cache_key = ("nephrometry", tuple(found.organ.segment_ids), found.tumour_id)
        if cache_key not in shared:
            shared[cache_key] = renal_score_from_segmentation(
                segmentation_node,
                volume_node,
                side=side,
                kidney_segment_ids=found.organ.segment_ids,
                tumour_segment_ids=[found.tumour_id],
            ).to_json()
        results["nephrometry"] = shared[cache_key]
        for component, reason in results["nephrometry"].get("not_computed", {}).items():
            not_computed[f"nephrometry.{component}"] = reason
        timings["nephrometry"] = time.perf_counter() - t
    if found.organ_key == "liver" and resected is not None:
        from .territories import future_liver_remnant, segments_mask

        liver = segments_mask(segmentation_node, found.organ.segment_ids, volume_node)
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

    maps = [value for key, value in shared.items() if isinstance(key, tuple) and key[0] == "territories"]
    if not maps:
        return
    found: PlanStructures = shared["structures"]
    scene = inputs.segmentation_node.GetScene()
    node = add_territory_segments(
        scene,
        maps[0],
        found.organ_key,
        reference_volume=inputs.volume_node,
        source_segmentation=inputs.segmentation_node,
        organ_segment_id=found.organ.segment_ids[0] if found.organ.whole else None,
        branch_segments=found.branches,
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
