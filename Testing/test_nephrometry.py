"""R.E.N.A.L. nephrometry: point rules, synthetic kidneys of known geometry, the sample phantom.

The synthetic kidney is drawn analytically (kidney frame u lateral, v anterior, w superior, in
mm, tilted 15 degrees like a real left kidney and stored on an LPS-ordered grid), so every
component has an exact answer: the exophytic share and the contact area by Monte Carlo on the
tumour sphere, the gaps to the collecting system and hilar vessels in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import slicer

from SurgicalPlanningLib import nephrometry as neph
from SurgicalPlanningLib.sample_case import labelmap_to_segmentation
from VSPCoreLib.arrays import GridArray
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.sampledata import phantom as sample_data
from VSPCoreLib.terminology import terminology_entry

# --------------------------------------------------------------------------------------------
# The synthetic kidney
# --------------------------------------------------------------------------------------------

SEMI_MM = np.array([30.0, 20.0, 58.0])  # kidney ellipsoid along u, v, w
SINUS_CENTRE, SINUS_SEMI_MM = np.array([-10.0, 0.0, 0.0]), np.array([14.0, 9.0, 30.0])
# The hilum: a slot from the sinus out through the medial border; its ends are the polar lines.
SLOT_HALF_W_MM, SLOT_HALF_V_MM = 15.0, 7.0
PELVIS_CENTRE, PELVIS_RADIUS_MM = np.array([-12.0, 0.0, 0.0]), 7.0
INFUNDIBULA = [  # (start, end, radius): upper, lower and middle calyx necks
    ((-12.0, 0.0, 0.0), (-4.0, 0.0, 24.0), 3.0),
    ((-12.0, 0.0, 0.0), (-4.0, 0.0, -24.0), 3.0),
    ((-12.0, 0.0, 0.0), (-2.0, 0.0, 0.0), 3.0),
]
ARTERY = ((-45.0, 2.0, 3.0), (-23.0, 2.0, 3.0), 3.0)
VEIN = ((-45.0, -5.0, -3.0), (-24.0, -5.0, -3.0), 4.0)
TILT = math.radians(15.0)
CENTRE_RAS = np.array([-70.0, -40.0, 20.0])  # patient's left (R < 0)
# Columns: u (lateral: toward -R for a left kidney), v (anterior, +A), w (superior, upper pole
# tilted medially).
AXES_RAS = np.column_stack(
    [[-math.cos(TILT), 0.0, math.sin(TILT)], [0.0, 1.0, 0.0], [math.sin(TILT), 0.0, math.cos(TILT)]]
)


def _capsule_distance(points: np.ndarray, a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = np.clip(((points - a) @ d) / (d @ d), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * d), axis=-1)


def _in_envelope(p: np.ndarray) -> np.ndarray:
    return ((p / SEMI_MM) ** 2).sum(-1) <= 1.0


def _in_sinus(p: np.ndarray) -> np.ndarray:
    ellipsoid = (((p - SINUS_CENTRE) / SINUS_SEMI_MM) ** 2).sum(-1) <= 1.0
    slot = (
        (p[..., 0] <= SINUS_CENTRE[0])
        & (np.abs(p[..., 1]) <= SLOT_HALF_V_MM)
        & (np.abs(p[..., 2]) <= SLOT_HALF_W_MM)
    )
    return ellipsoid | slot


def _in_collecting_system(p: np.ndarray) -> np.ndarray:
    inside = np.linalg.norm(p - PELVIS_CENTRE, axis=-1) <= PELVIS_RADIUS_MM
    for a, b, r in INFUNDIBULA:
        inside |= _capsule_distance(p, a, b) <= r
    return inside


def synthetic_kidney(
    tumour_centre, tumour_diameter_mm: float, spacing_mm: float = 1.0
) -> dict[str, GridArray]:
    """Masks of a left kidney with a spherical tumour (centre in the kidney frame, mm)."""
    centre = np.asarray(tumour_centre, float)
    r = tumour_diameter_mm / 2.0
    box = [
        [(2 * x - 1) * s for x, s in zip(signs, SEMI_MM + 2.0, strict=True)] for signs in np.ndindex(2, 2, 2)
    ]
    cube = [centre + (np.array(signs) * 2 - 1) * (r + 2.0) for signs in np.ndindex(2, 2, 2)]
    local = np.vstack([box, cube, [ARTERY[0], VEIN[0]]])
    ras = CENTRE_RAS + local @ AXES_RAS.T
    low, high = ras.min(axis=0) - 2.0, ras.max(axis=0) + 2.0
    s = spacing_mm
    ni, nj, nk = (np.ceil((high - low) / s).astype(int) + 1).tolist()
    # DICOM-like: i toward -R (patient left), j toward -A (posterior), k toward +S.
    ijk_to_ras = np.diag([-s, -s, s, 1.0])
    ijk_to_ras[:3, 3] = (high[0], high[1], low[2])
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    points = np.stack([high[0] - i * s, high[1] - j * s, low[2] + k * s], axis=-1)
    p = (points - CENTRE_RAS) @ AXES_RAS
    tumour = np.linalg.norm(p - centre, axis=-1) <= r
    collecting = _in_collecting_system(p) & ~tumour
    artery = (_capsule_distance(p, *ARTERY[:2]) <= ARTERY[2]) & ~tumour & ~collecting
    vein = (_capsule_distance(p, *VEIN[:2]) <= VEIN[2]) & ~tumour & ~collecting & ~artery
    kidney = ((_in_envelope(p) & ~_in_sinus(p)) | collecting | tumour) & ~artery & ~vein
    return {
        name: GridArray(mask, ijk_to_ras)
        for name, mask in (
            ("kidney", kidney),
            ("tumour", tumour),
            ("collecting_system", collecting),
            ("renal_artery", artery),
            ("renal_vein", vein),
        )
    }


def synthetic_truth(tumour_centre, tumour_diameter_mm: float, samples: int = 400_000) -> dict:
    """The exact answers for the synthetic kidney (Monte Carlo where there is no closed form)."""
    rng = np.random.default_rng(2009)
    c = np.asarray(tumour_centre, float)
    r = tumour_diameter_mm / 2.0
    directions = rng.standard_normal((samples, 3))
    directions /= np.linalg.norm(directions, axis=1)[:, None]
    volume = c + directions * (r * rng.random(samples) ** (1.0 / 3.0))[:, None]
    surface = c + directions * r
    in_kidney = (_in_envelope(surface) & ~_in_sinus(surface)) | _in_collecting_system(surface)
    gaps = [np.linalg.norm(c - PELVIS_CENTRE) - PELVIS_RADIUS_MM] + [
        float(_capsule_distance(c, a, b)) - radius for a, b, radius in INFUNDIBULA
    ]
    w = volume[:, 2]
    return {
        "exophytic_fraction": float(1.0 - _in_envelope(volume).mean()),
        "contact_area_mm2": float(in_kidney.mean() * 4.0 * math.pi * r * r),
        "collecting_system_gap_mm": max(min(gaps) - r, 0.0),
        "artery_gap_mm": max(float(_capsule_distance(c, *ARTERY[:2])) - ARTERY[2] - r, 0.0),
        "vein_gap_mm": max(float(_capsule_distance(c, *VEIN[:2])) - VEIN[2] - r, 0.0),
        "anterior_fraction": float((volume[:, 1] > 0).mean()),
        "between_polar_lines": float(((w > -SLOT_HALF_W_MM) & (w < SLOT_HALF_W_MM)).mean()),
        "w_range_mm": (c[2] - r, c[2] + r),
    }


# Each case: tumour centre (kidney frame, mm), diameter (mm), expected R, E, N, A, L, hilar.
CASES = {
    # A small lower-pole tumour bulging mostly out of the lateral border, far from everything.
    "lower pole, exophytic": ((26.4, 0.0, -40.0), 20.0, (1, 1, 1, "x", 1, False)),
    # Entirely inside the parenchyma, anterior, against the middle calyx, between the lines.
    "interpolar, endophytic, anterior": ((8.0, 6.0, 0.0), 24.0, (1, 3, 3, "a", 3, False)),
    # Upper pole, posterior, partly exophytic, 4-7 mm from the upper calyx, crossing the line.
    "upper pole, posterior": ((18.0, -8.0, 26.0), 30.0, (1, 2, 2, "p", 2, False)),
    # At the hilum, touching the renal artery.
    "hilar": ((-24.0, 10.0, 4.0), 20.0, (1, 2, 3, "a", 3, True)),
    # 5 cm, lateral, crossing the axial midline.
    "5 cm lateral": ((35.0, 0.0, -20.0), 50.0, (2, 1, 1, "x", 3, False)),
    # 8 cm, off the lower pole.
    "8 cm lower pole": ((20.0, 0.0, -75.0), 80.0, (3, 1, 1, "x", 1, False)),
}


@pytest.fixture(scope="module", params=list(CASES))
def scored(request):
    centre, diameter, expected = CASES[request.param]
    spacing = 1.5 if diameter > 60 else 1.0  # the 8 cm case on a coarser grid: it is large
    masks = synthetic_kidney(centre, diameter, spacing)
    return request.param, neph.renal_score(**masks), synthetic_truth(centre, diameter), expected, diameter


# --------------------------------------------------------------------------------------------
# Point rules
# --------------------------------------------------------------------------------------------


def test_point_rules_at_their_thresholds():
    assert [neph.radius_points(d) for d in (15.0, 40.0, 40.1, 69.9, 70.0, 95.0)] == [1, 1, 2, 2, 3, 3]
    assert [neph.exophytic_points(f) for f in (1.0, 0.5, 0.49, 0.02, 0.0)] == [1, 1, 2, 2, 3]
    assert [neph.nearness_points(d) for d in (12.0, 7.0, 6.9, 4.01, 4.0, 0.0)] == [1, 1, 2, 2, 3, 3]
    assert [neph.anterior_posterior(f) for f in (0.9, 0.67, 0.5, 0.34, 0.1)] == ["a", "a", "x", "x", "p"]

    def l_points(low: float, high: float) -> int:
        axis = np.linspace(low, high, 101)  # a tumour's voxel positions along the long axis
        return neph.location_points(axis, -15.0, 15.0, tolerance_mm=0.5)[0]

    assert l_points(-50, -20) == 1  # entirely below the lower polar line
    assert l_points(20, 45) == 1  # entirely above the upper one
    assert l_points(-40, -15.3) == 1  # touching the line within the tolerance
    assert l_points(-30, -10) == 2  # crosses the lower line, 25 % between the lines
    assert l_points(-25, 0) == 3  # crosses it with 60 % between the lines
    assert l_points(-10, 12) == 3  # entirely between
    assert l_points(-8, 25) == 3  # crosses the axial midline


# --------------------------------------------------------------------------------------------
# Synthetic kidneys of known geometry
# --------------------------------------------------------------------------------------------


def test_components_match_the_known_geometry(scored):
    name, score, truth, expected, diameter = scored
    r_points, e_points, n_points, descriptor, l_points, hilar = expected
    # The expected points follow from the exact geometry (the cases sit clear of thresholds).
    assert neph.radius_points(diameter) == r_points
    assert neph.exophytic_points(truth["exophytic_fraction"]) == e_points, truth
    assert neph.nearness_points(truth["collecting_system_gap_mm"]) == n_points, truth
    assert neph.anterior_posterior(truth["anterior_fraction"]) == descriptor, truth
    assert (min(truth["artery_gap_mm"], truth["vein_gap_mm"]) <= 1.0) == hilar, truth

    # Measured values against the exact ones.
    spacing = max(score.details["voxel_spacing_mm"])
    assert score.max_diameter_mm == pytest.approx(diameter, abs=spacing), name
    assert score.exophytic_fraction == pytest.approx(truth["exophytic_fraction"], abs=0.03), name
    assert score.nearest_collecting_system_mm == pytest.approx(
        truth["collecting_system_gap_mm"], abs=0.6 * spacing
    )
    assert score.anterior_fraction == pytest.approx(truth["anterior_fraction"], abs=0.04), name
    assert score.contact_surface_area_mm2 == pytest.approx(truth["contact_area_mm2"], rel=0.05), name
    assert score.hilar_gaps_mm["renal_artery"] == pytest.approx(truth["artery_gap_mm"], abs=0.6 * spacing)
    # The long axis is the tilted w axis; the kidney centre the ellipsoid's (sinus filled). A
    # tumour replacing a pole moves the measured centre along the axis: positions along the axis
    # are compared in the true kidney frame.
    axis = np.array(score.details["long_axis_ras"])
    centre = np.array(score.details["kidney_centre_ras_mm"])
    assert abs(np.dot(axis, AXES_RAS[:, 2])) > 0.995
    assert np.linalg.norm(centre - CENTRE_RAS) < 4.0

    def in_kidney_frame(position_mm: float) -> float:
        return float((centre + position_mm * axis - CENTRE_RAS) @ AXES_RAS[:, 2])

    location = score.location
    assert location["polar_lines_from"].startswith("renal sinus opening")
    assert in_kidney_frame(location["lower_polar_line_mm"]) == pytest.approx(-SLOT_HALF_W_MM, abs=2 * spacing)
    assert in_kidney_frame(location["upper_polar_line_mm"]) == pytest.approx(SLOT_HALF_W_MM, abs=2 * spacing)
    assert location["percent_between_polar_lines"] / 100 == pytest.approx(
        truth["between_polar_lines"], abs=0.05
    )
    extent = [in_kidney_frame(v) for v in location["tumour_extent_mm"]]
    assert extent == pytest.approx(truth["w_range_mm"], abs=spacing)

    # The scores.
    assert score.radius_points == r_points
    assert score.exophytic_points == e_points
    assert score.nearness_points == n_points
    assert score.anterior_posterior == descriptor
    assert score.location_points == l_points
    assert score.hilar is hilar
    assert score.score == r_points + e_points + n_points + l_points
    assert score.notation == f"{score.score}{descriptor}{'h' if hilar else ''}"
    assert not score.warnings


def test_score_json_names_units_and_components(scored):
    _, score, _, _, _ = scored
    data = score.to_json()
    assert set(data["components"]) == {"R", "E", "N", "A", "L", "h"}
    assert data["components"]["R"]["max_diameter_mm"] == pytest.approx(score.max_diameter_mm, abs=0.01)
    assert data["components"]["N"]["nearest_collecting_system_mm"] >= 0
    assert data["complexity"] in ("low", "moderate", "high")
    assert data["contact_surface_area_mm2"] > 0 and data["tumour_volume_mL"] > 0
    assert data["suffix"] == score.suffix


def test_contact_area_of_a_sphere_half_embedded_in_a_block():
    """Interface area of a sphere whose lower half is in a flat block: 2 pi r^2 within 5 %."""
    for spacing, radius in (((0.7, 0.7, 1.0), 15.0), ((1.0, 1.0, 1.0), 10.0), ((0.8, 0.8, 2.0), 20.0)):
        spacing = np.array(spacing)
        shape = np.ceil((2 * radius + 12.0) / spacing).astype(int)
        k, j, i = np.indices(shape[::-1])
        x, y, z = i * spacing[0], j * spacing[1], k * spacing[2]
        # The sphere's centre on the block's top surface (a voxel face), off-lattice in x, y.
        top_k = int(round((radius + 6.0) / spacing[2]))
        centre = np.array([radius + 6.3, radius + 5.8, (top_k + 0.5) * spacing[2]])
        sphere = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
        block = k <= top_k
        area = neph.contact_surface_area_mm2(sphere, block & ~sphere, spacing)
        assert area == pytest.approx(2.0 * math.pi * radius**2, rel=0.05), (spacing, radius, area)
    # Apart, they have no contact.
    assert neph.contact_surface_area_mm2(sphere, (k < 2) & ~sphere, spacing) == 0.0


# --------------------------------------------------------------------------------------------
# The sample phantom
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("diameter_mm", [20.0, 30.0])
def test_phantom_tumour(diameter_mm):
    phantom = sample_data.generate_phantom((192, 192, 112), seed=3, tumour_diameter_mm=diameter_mm)
    ijk_to_ras = phantom.ijk_to_ras()

    def mask(key: str) -> GridArray:
        return GridArray(phantom.mask(key), ijk_to_ras)

    score = neph.renal_score(
        mask("kidney_left"),
        mask("tumour"),
        mask("collecting_system_left"),
        renal_artery=mask("renal_artery_left"),
        renal_vein=mask("renal_vein_left"),
    )
    truth = phantom.truth
    assert score.max_diameter_mm == pytest.approx(truth.tumour_diameter_mm, abs=1.9)
    assert score.radius_points == 1
    # The phantom's exophytic share: 28.5 % (20 mm) and 43.4 % (30 mm).
    assert score.exophytic_fraction == pytest.approx(truth.tumour_exophytic_fraction, abs=0.04)
    assert score.exophytic_points == 2
    assert score.hilar is False
    assert score.tumour_volume_ml == pytest.approx(math.pi / 6 * diameter_mm**3 / 1000, rel=0.08)
    # The lower-pole tumour lies below the lower polar line, which the hilum sets.
    assert score.location["tumour_extent_mm"][1] < score.location["lower_polar_line_mm"]
    assert score.location_points == 1


@pytest.fixture(scope="module")
def phantom_segmentation():
    """The phantom's label map as a segmentation with tagged segments (no DICOM round trip)."""
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.arrays import array_to_vtk_matrix

    phantom = sample_data.generate_phantom((192, 192, 112), seed=4)
    app = VSPApplication.create_headless()
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    labelmap.SetIJKToRASMatrix(array_to_vtk_matrix(phantom.ijk_to_ras()))
    slicer.util.updateVolumeFromArray(labelmap, phantom.labels)
    terms = {s.label: s.key for s in phantom.structures}
    segmentation = labelmap_to_segmentation(app, labelmap, terms, reference_volume=labelmap)
    return app, phantom, segmentation, labelmap


def test_score_from_a_segmentation_node(phantom_segmentation):
    app, phantom, segmentation, reference = phantom_segmentation
    score = neph.renal_score_from_segmentation(segmentation, reference, side="left")
    ijk_to_ras = phantom.ijk_to_ras()
    direct = neph.renal_score(
        GridArray(phantom.mask("kidney_left"), ijk_to_ras),
        GridArray(phantom.mask("tumour"), ijk_to_ras),
        GridArray(phantom.mask("collecting_system_left"), ijk_to_ras),
        renal_artery=GridArray(phantom.mask("renal_artery_left"), ijk_to_ras),
        renal_vein=GridArray(phantom.mask("renal_vein_left"), ijk_to_ras),
    )
    assert score.to_json() == direct.to_json()
    # The tumour centroid in RAS: the phantom's LPS centre with x and y negated.
    lps = np.array(phantom.truth.tumour_centre_lps)
    assert np.allclose(score.details["tumour_centroid_ras_mm"], lps * [-1, -1, 1], atol=1.5)


def test_bad_input_gives_clear_messages(phantom_segmentation):
    app, phantom, segmentation, reference = phantom_segmentation
    masks = synthetic_kidney((26.4, 0.0, -40.0), 20.0, spacing_mm=1.5)
    empty = GridArray(np.zeros((0, 0, 0), bool), np.eye(4))
    with pytest.raises(InputDataError, match="tumour: is empty or missing") as error:
        neph.renal_score(masks["kidney"], empty, masks["collecting_system"])
    assert "Fix:" in str(error.value)
    # An empty collecting system is no collecting system: N is not computed (see below).
    partial = neph.renal_score(
        masks["kidney"], masks["tumour"], GridArray(np.zeros((4, 4, 4), bool), np.eye(4))
    )
    assert partial.nearness_points is None and partial.score is None
    # A tumour away from the kidney (the same sphere moved 200 mm to the right).
    moved = GridArray(masks["tumour"].array, masks["tumour"].ijk_to_ras.copy())
    moved.ijk_to_ras[0, 3] += 200.0
    with pytest.raises(InputDataError, match="does not touch the kidney"):
        neph.renal_score(masks["kidney"], moved, masks["collecting_system"])
    # Without the main renal vessels "h" is not assessed, and the result says so.
    score = neph.renal_score(masks["kidney"], masks["tumour"], masks["collecting_system"])
    assert score.hilar is None and score.suffix == "x"
    assert any("'h' suffix is not assessed" in w for w in score.warnings)
    # A segmentation without the structure, or with an empty segment for it.
    with pytest.raises(InputDataError, match="has no segment coded as 'pancreas'"):
        neph.renal_score_from_segmentation(segmentation, reference, kidney_key="pancreas")
    with pytest.raises(InputDataError, match="does not touch the kidney"):
        neph.renal_score_from_segmentation(segmentation, reference, side="right")
    with pytest.raises(InputDataError, match="unknown side"):
        neph.renal_score_from_segmentation(segmentation, reference, side="middle")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("empty_tumour", "Liver tumour")
    segmentation.GetSegmentation().GetSegment(segment_id).SetTag(
        "TerminologyEntry", terminology_entry("liver_tumour")
    )
    try:
        with pytest.raises(InputDataError, match="segment\\(s\\) for 'liver_tumour' are empty"):
            neph.renal_score_from_segmentation(segmentation, reference, tumour_key="liver_tumour")
    finally:
        segmentation.GetSegmentation().RemoveSegment(segment_id)


def test_without_a_collecting_system_n_is_not_computed_and_the_score_says_it_is_incomplete():
    """A whole kidney as one segment (as AI models give it): the other components are measured
    as with the parts; N is reported as not computed with its reason; the score is a range."""
    masks = synthetic_kidney((8.0, 6.0, 0.0), 24.0, 1.0)  # "interpolar, endophytic, anterior"
    full = neph.renal_score(**masks)
    others = {k: v for k, v in masks.items() if k != "collecting_system"}
    partial = neph.renal_score(**others, collecting_system=None)
    assert partial.nearness_points is None and partial.nearest_collecting_system_mm is None
    assert "collecting system" in partial.not_computed["N"]
    assert (partial.radius_points, partial.exophytic_points, partial.location_points) == (
        full.radius_points,
        full.exophytic_points,
        full.location_points,
    )
    assert partial.anterior_posterior == full.anterior_posterior == "a"
    assert partial.score is None and not partial.complete
    assert partial.partial_score == full.score - full.nearness_points == 7
    assert partial.score_range == (8, 10)
    assert partial.complexity is None  # 8 is moderate, 10 high: undecided
    assert partial.notation == "8-10a (incomplete: N not computed)"
    data = partial.to_json()
    assert data["score"] is None and data["complete"] is False and data["score_range"] == [8, 10]
    assert data["components"]["N"]["points"] is None and "not_computed" in data["components"]["N"]
