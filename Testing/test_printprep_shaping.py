"""PrintPrepLib.shaping: hollowing, wall thickness, connectors, labels, build volume.

Every test builds its models in RAS millimetres from trimesh/manifold3d primitives, placed off
the origin and made asymmetric, so that a mirrored or misplaced result would fail.
"""

from __future__ import annotations

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
manifold3d = pytest.importorskip("manifold3d")

from PrintPrepLib.errors import BooleanError, PrintPrepError  # noqa: E402
from PrintPrepLib.shaping import (  # noqa: E402
    THICKNESS_ARRAY,
    add_label,
    connect_parts,
    fit_check,
    hollow,
    split_to_fit,
    suggest_orientation,
    thickness_polydata,
    wall_thickness,
)
from PrintPrepLib.shaping._common import from_manifold, to_manifold  # noqa: E402
from VSPCoreLib.errors import InputDataError  # noqa: E402

Manifold = manifold3d.Manifold


def sphere(radius, centre, subdivisions=5):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.apply_translation(centre)
    return mesh


def box(size, corner):
    return from_manifold(Manifold.cube(tuple(size)).translate(tuple(corner)))


def added_material(after, before):
    """The material in `after` but not in `before` (manifold3d)."""
    return to_manifold(after) - to_manifold(before)


def solid_at(mesh, point) -> bool:
    """Whether the model has material at point (a 0.05 mm cube there intersects it)."""
    probe = Manifold.cube((0.05, 0.05, 0.05), True).translate(tuple(np.asarray(point, dtype=float)))
    return (to_manifold(mesh) ^ probe).volume() > 1e-6


def broken_sphere():
    mesh = sphere(10, (3, 4, 5), subdivisions=3)
    mesh.update_faces(np.arange(1, len(mesh.faces)))  # one triangle missing: a hole
    return mesh


# --------------------------------------------------------------------------------------------
# Hollowing and drain holes
# --------------------------------------------------------------------------------------------


def test_hollow_sphere_gives_the_analytic_shell_volume():
    radius, wall = 20.0, 2.0
    model = sphere(radius, (10.0, -5.0, 30.0))
    shell, report = hollow(model, wall)
    analytic = 4 / 3 * np.pi * (radius**3 - (radius - wall) ** 3)
    error = abs(shell.volume - analytic) / analytic
    assert error < 0.03, (shell.volume, analytic)
    assert error < 0.01  # measured 0.07 %
    assert report["volume_after_mm3"] == pytest.approx(shell.volume, rel=1e-6)
    assert report["cavity_volume_mm3"] == pytest.approx(4 / 3 * np.pi * (radius - wall) ** 3, rel=0.01)
    # Without drain holes: one closed cavity, i.e. an outer and an inner shell, both watertight.
    assert shell.is_watertight and report["closed_cavities"] == 1
    assert len(shell.split(only_watertight=False)) == 2
    # The cavity is centred in the sphere: the wall is even all round.
    inner = [part for part in shell.split(only_watertight=False) if part.volume < 0][0]
    radii = np.linalg.norm(inner.vertices - (10.0, -5.0, 30.0), axis=1)
    assert radii.min() > radius - wall - 0.1 and radii.max() < radius - wall + 0.1


def test_hollow_box_cavity_is_the_box_shrunk_by_the_wall():
    model = box((40, 25, 15), (-7, 12, 3))
    shell, report = hollow(model, 2.5)
    expected = (40 - 5) * (25 - 5) * (15 - 5)
    assert report["cavity_volume_mm3"] == pytest.approx(expected, rel=0.03)
    inner = [part for part in shell.split(only_watertight=False) if part.volume < 0][0]
    np.testing.assert_allclose(inner.bounds, [[-4.5, 14.5, 5.5], [30.5, 34.5, 15.5]], atol=0.3)


def test_drain_holes_sit_at_the_lowest_points_and_open_the_cavity():
    centre = np.array([10.0, -5.0, 30.0])
    model = sphere(20.0, centre)
    down = np.array([1.0, 0.0, -1.0]) / np.sqrt(2)  # lowest point: down and to the patient's right... +R
    solid, _ = hollow(model, 2.0)
    drained, report = hollow(model, 2.0, drain_holes=1, drain_diameter_mm=4.0, down=down)
    hole = report["drain_holes"][0]
    np.testing.assert_allclose(hole["centre_ras_mm"], centre + 20.0 * down, atol=0.5)
    np.testing.assert_allclose(hole["axis_ras"], -down, atol=0.05)
    # The cavity is open: one shell (outer and inner surfaces joined through the hole), no closed cavity.
    assert report["closed_cavities"] == 0
    assert len(drained.split(only_watertight=False)) == 1
    assert drained.is_watertight
    # The removed material is a plug through the wall at the lowest point.
    removed = to_manifold(solid) - to_manifold(drained)
    plug = np.pi * 2.0**2 * 2.0
    assert removed.volume() == pytest.approx(plug, rel=0.25)
    np.testing.assert_allclose(from_manifold(removed).center_mass, centre + 19.0 * down, atol=0.5)


def test_two_drain_holes_are_the_two_lowest_points_apart():
    model = sphere(20.0, (10.0, -5.0, 30.0))
    drained, report = hollow(model, 2.0, drain_holes=2, drain_diameter_mm=3.0)
    first, second = (np.array(h["centre_ras_mm"]) for h in report["drain_holes"])
    np.testing.assert_allclose(first, (10.0, -5.0, 10.0), atol=0.5)
    assert np.linalg.norm(first - second) >= 12.0  # 4 diameters apart
    assert second[2] < 30.0 - 15.0  # still near the bottom
    assert report["closed_cavities"] == 0 and drained.is_watertight


def test_each_pocket_of_a_dumbbell_gets_its_drain_hole():
    # Two balls joined by a 3 mm rod: with a 2 mm wall the cavity is two separate pockets.
    left, right = np.array([-20.0, 6.0, 4.0]), np.array([18.0, 6.0, 9.0])
    solid = to_manifold(sphere(12.0, left, 4)) + to_manifold(sphere(9.0, right, 4))
    solid = solid + Manifold.cylinder(40.0, 1.5, -1, 24).rotate((0, 90, 0)).translate((-21.0, 6.0, 6.5))
    model = from_manifold(solid)
    with pytest.raises(PrintPrepError, match="2 separate pockets"):
        hollow(model, 2.0, drain_holes=1)
    drained, report = hollow(model, 2.0, drain_holes=2, drain_diameter_mm=3.0)
    assert report["cavity_pockets"] == 2 and report["closed_cavities"] == 0
    assert len(drained.split(only_watertight=False)) == 1 and drained.is_watertight
    holes = sorted((np.array(h["centre_ras_mm"]) for h in report["drain_holes"]), key=lambda c: c[0])
    np.testing.assert_allclose(holes[0], left - (0, 0, 12.0), atol=0.6)
    np.testing.assert_allclose(holes[1], right - (0, 0, 9.0), atol=0.6)


def test_hollow_refuses_bad_input():
    with pytest.raises(PrintPrepError, match="nothing to hollow"):
        hollow(sphere(5.0, (0, 0, 0), 3), 6.0)
    with pytest.raises(PrintPrepError, match="wall thickness"):
        hollow(sphere(5.0, (0, 0, 0), 3), -1.0)
    with pytest.raises(InputDataError, match="2-manifold"):
        hollow(broken_sphere(), 1.0, name="Kidney")
    with pytest.raises(PrintPrepError, match="Kidney: "):
        hollow(broken_sphere(), 1.0, name="Kidney")


# --------------------------------------------------------------------------------------------
# Wall thickness
# --------------------------------------------------------------------------------------------


def plate_model():
    """A block with a 0.8 mm plate sticking out of its +R side and a post on top (asymmetric)."""
    block = Manifold.cube((20, 15, 10))
    plate = Manifold.cube((10, 0.8, 8)).translate((19.5, 5, 1))
    post = Manifold.cylinder(6, 3, -1, 48).translate((5, 11, 10))
    solid = (block + plate + post).translate((-30, 40, -12))
    mesh = from_manifold(solid)
    vertices, faces = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, 1.0)
    return trimesh.Trimesh(vertices, faces)


def test_wall_thickness_finds_the_thin_plate_with_its_value_and_place():
    model = plate_model()
    measured, report = wall_thickness(model, 1.0)
    assert report["min_thickness_mm"] == pytest.approx(0.8, abs=0.25)
    assert report["min_thickness_mm"] == pytest.approx(0.8, abs=0.01)  # flat walls: exact
    assert not report["passes"]
    # The plate's two faces (outside the block: 9.5 x 8 mm each) and nothing else are thin.
    assert report["thin_area_mm2"] == pytest.approx(2 * 9.5 * 8, rel=0.02)
    centres = sorted(region["centre_ras_mm"] for region in report["thin_regions"])
    assert len(centres) == 2
    np.testing.assert_allclose(centres[0], (-30 + 24.75, 40 + 5.0, -12 + 5.0), atol=0.5)
    np.testing.assert_allclose(centres[1], (-30 + 24.75, 40 + 5.8, -12 + 5.0), atol=0.5)
    for region in report["thin_regions"]:
        assert region["min_thickness_mm"] == pytest.approx(0.8, abs=0.25)
    # Per-vertex scalar for a colour map: the plate's broad faces 0.8 mm, its top 8 mm, the
    # block's far corner 10 mm (the least of 20, 15, 10).
    values = measured.vertex_attributes[THICKNESS_ARRAY]
    assert len(values) == len(measured.vertices) and not np.isnan(values).any()
    x, y, z = measured.vertices.T
    on_plate = (x > -30 + 21) & (x < -30 + 29) & (z > -12 + 2) & (z < -12 + 8)
    broad = on_plate & (np.isclose(y, 45.0) | np.isclose(y, 45.8))
    assert broad.sum() > 50
    np.testing.assert_allclose(values[broad], 0.8, atol=0.01)
    top = (x > -30 + 21) & (x < -30 + 29) & np.isclose(z, -12 + 9) & (y > 45.1) & (y < 45.7)
    np.testing.assert_allclose(values[top], 8.0, atol=0.01)
    corner = np.argmin(np.linalg.norm(measured.vertices - (-30, 40, -12), axis=1))
    assert values[corner] == pytest.approx(10.0, abs=0.01)
    polydata = thickness_polydata(measured)
    assert polydata.GetPointData().GetArray(THICKNESS_ARRAY).GetNumberOfTuples() == len(measured.vertices)
    # Below the plate's thickness nothing is thin.
    _, relaxed = wall_thickness(model, 0.7)
    assert relaxed["passes"] and relaxed["thin_area_mm2"] == 0 and relaxed["thin_regions"] == []


def test_wall_thickness_of_a_hollow_sphere_is_its_wall():
    shell, _ = hollow(sphere(15.0, (4.0, 9.0, -2.0), 4), 1.5)
    _, report = wall_thickness(shell, 1.0)
    assert report["median_thickness_mm"] == pytest.approx(1.5, abs=0.1)
    assert report["passes"]


def test_drain_hole_rims_do_not_fail_a_hollowed_sphere_with_a_2mm_wall():
    centre = np.array([6.0, -4.0, 11.0])
    drained, hollowed = hollow(sphere(18.0, centre, 4), 2.0, drain_holes=2, drain_diameter_mm=3.5)
    holes = [{**hole, "wall_mm": 2.0} for hole in hollowed["drain_holes"]]
    # A 2 mm wall passes the pipeline's rule for a 0.8 mm printer minimum.
    _, report = wall_thickness(drained, 0.8, drain_holes=holes, min_region_area_mm2=4.0)
    assert report["passes"] and report["counted_thin_area_mm2"] == 0
    assert report["median_thickness_mm"] == pytest.approx(2.0, abs=0.15)
    # Against a 1.6 mm minimum, counting every thin face, only the rims (the sharp edges where
    # the holes meet the wall) are thin, and they fail it ...
    _, strict = wall_thickness(drained, 1.6)
    assert not strict["passes"] and strict["min_thickness_mm"] < 1.6 and strict["thin_regions"]
    for region in strict["thin_regions"]:
        nearest = min(np.linalg.norm(np.subtract(region["centre_ras_mm"], h["centre_ras_mm"])) for h in holes)
        assert nearest < 1.75 + 2.0  # every thin place is at a hole
    # ... and with the holes' rims excluded (no area rule) it passes; still reported, not hidden.
    _, rims = wall_thickness(drained, 1.6, drain_holes=holes)
    assert rims["passes"] and rims["counted_thin_area_mm2"] == 0
    assert rims["ignored"]["drain_hole_rims_mm2"] == pytest.approx(strict["thin_area_mm2"], rel=1e-6)
    assert rims["thin_area_mm2"] == strict["thin_area_mm2"] > 0
    assert all(region["ignored_because"] == "drain-hole rim" for region in rims["thin_regions"])


def test_a_real_thin_region_of_150mm2_still_fails_and_tiny_slivers_do_not():
    model = plate_model()  # the 0.8 mm plate: two broad faces of 76 mm² each, 152 mm² thin
    far_hole = {
        "centre_ras_mm": [-25.0, 48.0, -12.0],
        "axis_ras": [0, 0, 1],
        "diameter_mm": 3.0,
        "wall_mm": 2.0,
    }
    _, report = wall_thickness(model, 1.0, min_region_area_mm2=4.0, drain_holes=[far_hole])
    assert not report["passes"]
    assert report["counted_thin_area_mm2"] == pytest.approx(2 * 9.5 * 8, rel=0.02)
    counted = [region for region in report["thin_regions"] if region["counted"]]
    assert len(counted) == 2
    for region in counted:
        assert region["min_thickness_mm"] == pytest.approx(0.8, abs=0.01)
        assert region["centre_ras_mm"][0] == pytest.approx(-30 + 24.75, abs=0.5)
        assert region["centre_ras_mm"][2] == pytest.approx(-12 + 5.0, abs=0.5)
    # A region larger than the plate's faces is needed to ignore them: the rule is an area.
    _, lenient = wall_thickness(model, 1.0, min_region_area_mm2=80.0)
    assert lenient["passes"] and lenient["ignored"]["small_regions"] == 2
    assert lenient["ignored"]["small_regions_mm2"] == pytest.approx(2 * 9.5 * 8, rel=0.02)
    # A hole whose rim takes in the plate's +R end excludes only the faces inside its rim.
    hole = {
        "centre_ras_mm": [-30 + 29.5, 45.4, -7.0],
        "axis_ras": [-1, 0, 0],
        "diameter_mm": 3.0,
        "wall_mm": 1.0,
    }
    _, partly = wall_thickness(model, 1.0, drain_holes=[hole])
    assert not partly["passes"]
    assert 0 < partly["ignored"]["drain_hole_rims_mm2"] < 2 * 2.5 * 5.0
    assert partly["counted_thin_area_mm2"] == pytest.approx(
        152 - partly["ignored"]["drain_hole_rims_mm2"], rel=0.02
    )


def test_embree_and_vtk_rays_measure_the_same_thickness():
    from PrintPrepLib.shaping.thickness import face_thickness, ray_engine

    assert ray_engine() == "embree"  # embreex is a dependency: the fast path is the one used
    model = plate_model()
    np.testing.assert_allclose(face_thickness(model, "embree"), face_thickness(model, "vtk"), atol=1e-6)


def test_wall_thickness_refuses_an_open_model():
    with pytest.raises(PrintPrepError, match="not watertight"):
        wall_thickness(broken_sphere(), 1.0)
    with pytest.raises(PrintPrepError, match="minimum wall"):
        wall_thickness(sphere(5, (0, 0, 0), 2), 0)


# --------------------------------------------------------------------------------------------
# Connectors
# --------------------------------------------------------------------------------------------


def test_two_separate_spheres_become_one_watertight_body():
    kidney = sphere(10.0, (30.0, -4.0, 12.0), 4)
    vessel = sphere(4.0, (30.0 + 25.0, -4.0 + 8.0, 12.0 - 3.0), 4)
    assert (
        len(
            Manifold.batch_boolean(
                [to_manifold(kidney), to_manifold(vessel)], manifold3d.OpType.Add
            ).decompose()
        )
        == 2
    )
    joined, report = connect_parts({"kidney": kidney, "vessel": vessel}, 2.0)
    assert joined.is_watertight and joined.body_count == 1
    assert len(to_manifold(joined).decompose()) == 1
    (strut,) = report["struts"]
    assert strut["joins"] == ["kidney", "vessel"]
    centres_gap = np.linalg.norm([25.0, 8.0, -3.0])
    assert strut["gap_mm"] == pytest.approx(centres_gap - 14.0, abs=0.3)
    # The strut runs along the line between the centres, from surface to surface.
    direction = np.array([25.0, 8.0, -3.0]) / centres_gap
    np.testing.assert_allclose(
        strut["from_ras_mm"], np.array([30.0, -4.0, 12.0]) + 10.0 * direction, atol=0.6
    )
    np.testing.assert_allclose(strut["to_ras_mm"], np.array([55.0, 4.0, 9.0]) - 4.0 * direction, atol=0.6)
    assert report["volume_after_mm3"] > report["volume_parts_mm3"]
    assert report["volume_after_mm3"] - report["volume_parts_mm3"] < np.pi * 1.0**2 * (
        centres_gap - 14.0 + 4.0
    )


def test_three_parts_are_joined_along_the_shortest_gaps_with_a_base():
    a = sphere(10.0, (0, 0, 0), 4)
    b = sphere(4.0, (25, 8, -3), 4)
    c = sphere(3.0, (-20, 0, 5), 3)
    joined, report = connect_parts([a, b, c], 2.0, base_thickness_mm=3.0, base_gap_mm=5.0)
    assert joined.is_watertight and len(to_manifold(joined).decompose()) == 1
    assert sorted(tuple(s["joins"]) for s in report["struts"]) == [("part 1", "part 2"), ("part 1", "part 3")]
    # The plate: 5 mm under the lowest point (S = -10), 3 mm thick.
    assert joined.bounds[0][2] == pytest.approx(-10.0 - 5.0 - 3.0, abs=0.01)


def test_connectors_refuse_a_broken_part():
    with pytest.raises(PrintPrepError, match="vessel: .*2-manifold"):
        connect_parts({"kidney": sphere(10, (0, 0, 0), 3), "vessel": broken_sphere()}, 2.0)


def test_a_strut_that_does_not_fuse_is_an_error_not_a_silent_result(monkeypatch):
    from PrintPrepLib.shaping import connectors

    def missing_strut(start, end, diameter, segments=32):
        return Manifold.cube((0.5, 0.5, 0.5)).translate((500.0, 500.0, 500.0))

    monkeypatch.setattr(connectors, "cylinder_between", missing_strut)
    with pytest.raises(BooleanError, match="separate bodies"):
        connect_parts([sphere(10, (0, 0, 0), 3), sphere(4, (25, 8, -3), 3)], 2.0)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def _label_frame_offsets(added, origin, reading, up):
    centre = from_manifold(added).center_mass - np.asarray(origin)
    return float(centre @ reading), float(centre @ up)


@pytest.mark.parametrize(
    "normal, origin",
    [((1.0, 0.0, 0.0), (35.0, 10.0, 13.0)), ((0.0, -1.0, 0.0), (20.0, -10.0, 13.0))],
)
def test_embossed_label_sits_on_the_plane_reads_right_and_adds_its_volume(normal, origin):
    model = box((30, 40, 20), (5, -10, 3))
    labelled, report = add_label(model, "L", origin=origin, normal=normal, height_mm=8.0, depth_mm=1.0)
    assert labelled.is_watertight
    assert report["volume_change_mm3"] == pytest.approx(report["text_area_mm2"] * 1.0, rel=0.02)
    assert 5.0 < report["text_area_mm2"] < 30.0  # an 8 mm "L" in a stroke font
    added = added_material(labelled, model)
    bounds = np.asarray(from_manifold(added).bounds)
    # It stands 1 mm out of the face, around the requested origin.
    n = np.asarray(normal)
    assert (bounds[1] - bounds[0]) @ np.abs(n) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose((bounds[0] + bounds[1]) / 2 - n * 0.5, origin, atol=2.5)
    # Seen from outside, "L" has its stem on the left and foot at the bottom: the added
    # material's centre is left of and below the label's centre. A mirrored label fails this.
    reading = np.asarray(report["reading_direction_ras"])
    up = np.asarray(report["up_ras"])
    np.testing.assert_allclose(np.cross(reading, up), n, atol=1e-9)  # right-handed, facing out
    np.testing.assert_allclose(up, (0, 0, 1), atol=1e-9)  # upright: superior is up
    across, along_up = _label_frame_offsets(added, origin, reading, up)
    assert across < -0.5 and along_up < -0.5


def test_engraved_label_on_an_automatic_flat_region_removes_its_volume():
    model = box((30, 40, 20), (5, -10, 3))
    engraved, report = add_label(model, "R 12", height_mm=5.0, depth_mm=0.6, mode="engrave")
    assert engraved.is_watertight
    assert report["placement"] == "largest flat region"
    # The top (the bottom faces the build plate) is the largest flat face.
    np.testing.assert_allclose(report["normal_ras"], (0, 0, 1), atol=1e-6)
    np.testing.assert_allclose(report["origin_ras_mm"], (20, 10, 23), atol=0.5)
    assert report["volume_change_mm3"] == pytest.approx(-report["text_area_mm2"] * 0.6, rel=0.02)
    removed = to_manifold(model) - to_manifold(engraved)
    bounds = np.asarray(from_manifold(removed).bounds)
    assert bounds[0][2] == pytest.approx(23 - 0.6, abs=1e-3) and bounds[1][2] == pytest.approx(23, abs=1e-3)


def test_label_on_a_curved_surface_stays_rooted_and_watertight():
    model = sphere(20.0, (0.0, 0.0, 0.0))
    labelled, report = add_label(model, "R", origin=(20, 0, 0), normal=(1, 0, 0), height_mm=6.0, depth_mm=1.0)
    assert labelled.is_watertight and len(to_manifold(labelled).decompose()) == 1
    assert report["surface_relief_mm"] > 0.1
    assert report["volume_change_mm3"] >= report["text_area_mm2"] * 1.0


def test_label_refuses_bad_placement():
    model = box((30, 40, 20), (5, -10, 3))
    with pytest.raises(PrintPrepError, match="runs off the model"):
        add_label(model, "CASE 2026-0042", origin=(35, 25, 13), normal=(1, 0, 0), height_mm=10)
    with pytest.raises(PrintPrepError, match="empty"):
        add_label(model, "  ")
    with pytest.raises(PrintPrepError, match="no flat or gently curved region"):
        add_label(sphere(10, (0, 0, 0), 4), "TOO LONG A LABEL", height_mm=8)


def test_label_without_flat_faces_goes_to_the_flattest_site():
    # An ellipsoid 60 x 30 x 20 mm: flattest across its widest sides, none of them flat.
    model = sphere(1.0, (0, 0, 0), 5)
    model.apply_scale((30.0, 15.0, 10.0))
    model.apply_translation((12.0, -8.0, 40.0))
    labelled, report = add_label(model, "L7", height_mm=4.0, depth_mm=0.8)
    assert report["placement"] == "flattest curved site"
    assert labelled.is_watertight
    # On the broad top (not the bottom, which faces the build plate), near the middle.
    assert report["normal_ras"][2] > 0.9
    assert abs(report["origin_ras_mm"][0] - 12.0) < 15.0
    assert report["surface_relief_mm"] <= 2.0


# --------------------------------------------------------------------------------------------
# Build volume
# --------------------------------------------------------------------------------------------


def long_bar():
    """150 mm along R, with a ball on one end (asymmetric)."""
    solid = Manifold.cube((150, 30, 20)) + Manifold.sphere(8, 48).translate((120, 30, 10))
    return from_manifold(solid.translate((-40, 5, 2)))


def test_fit_check_reports_the_axes_that_do_not_fit():
    report = fit_check(long_bar(), (60, 60, 60))
    assert not report["fits_as_is"] and report["axes_too_long"] == ["R"] and not report["fits_rotated"]
    assert report["extent_mm"] == pytest.approx([150, 38, 20], abs=0.01)
    assert fit_check(long_bar(), (200, 60, 60))["fits_as_is"]
    assert fit_check(long_bar(), (60, 60, 200))["fits_rotated"]
    with pytest.raises(PrintPrepError, match="build volume"):
        fit_check(long_bar(), (60, 60))


def test_split_gives_parts_that_fit_each_watertight_with_pins_and_holes():
    model = long_bar()
    parts, report = split_to_fit(
        model, (60, 60, 60), pin_diameter_mm=4.0, pin_length_mm=8.0, clearance_mm=0.2
    )
    assert len(parts) == 3 and [c["axis"] for c in report["cuts"]] == ["R", "R"]
    for part in parts:
        assert part.is_watertight
        assert np.all(np.ptp(part.bounds, axis=0) <= (60, 60, 60))
        assert len(to_manifold(part).decompose()) == 1
    assert len(report["pins"]) == 4  # two per cut
    pin = np.pi * 2.0**2 * 8.0
    hole_inside = np.pi * 2.2**2 * (4.0 + 0.2)
    total = sum(part.volume for part in parts)
    # Exact accounting: pins add their protruding half, holes remove their depth in the other part.
    assert total == pytest.approx(model.volume + 4 * pin / 2 - 4 * hole_inside, abs=5.0)
    # The first part carries its pins 4 mm beyond the first cut; the second has holes there.
    first_cut = report["cuts"][0]["offset_mm"]
    ordered = sorted(parts, key=lambda part: part.bounds[0][0])
    assert ordered[0].bounds[1][0] == pytest.approx(first_cut + 4.0, abs=0.01)
    for site in [p["centre_ras_mm"] for p in report["pins"] if p["centre_ras_mm"][0] == first_cut]:
        probe = np.asarray(site) + (1.0, 0.0, 0.0)  # 1 mm into the second part, on the pin's axis
        assert solid_at(ordered[0], probe)  # the pin is there
        assert not solid_at(ordered[1], probe)  # and the hole in the next part,
        assert not solid_at(ordered[1], probe + (0.0, 2.1, 0.0))  # with its clearance,
        assert solid_at(ordered[1], probe + (0.0, 2.4, 0.0)) or solid_at(ordered[1], probe - (0.0, 2.4, 0.0))


def test_split_refuses_a_build_volume_without_room():
    with pytest.raises(PrintPrepError, match="no room"):
        split_to_fit(long_bar(), (5, 60, 60))


def mushroom():
    """A 40 x 40 mm cap on an off-centre stem: printed cap-down it needs no support."""
    cap = Manifold.cube((40, 40, 6)).translate((0, 0, 25))
    stem = Manifold.cylinder(25.5, 5, -1, 48).translate((28, 14, 0))
    return from_manifold((cap + stem).translate((12, -30, 7)))


def test_orientation_puts_the_mushroom_cap_down():
    model = mushroom()
    oriented, report = suggest_orientation(model)
    np.testing.assert_allclose(report["down_ras"], (0, 0, 1), atol=1e-6)
    assert report["overhang_area_mm2"] == pytest.approx(0.0, abs=1.0)
    # Upright, the cap's underside (40 x 40 less the stem) overhangs.
    assert report["current_overhang_area_mm2"] == pytest.approx(1600 - np.pi * 25, rel=0.02)
    # The rotated model has its cap at the bottom (along -S) and the stem above it.
    cap_faces = oriented.face_normals[:, 2] < -0.99
    lowest = oriented.bounds[0][2]
    assert np.isclose(oriented.triangles_center[cap_faces][:, 2], lowest).any()
    assert oriented.volume == pytest.approx(model.volume, rel=1e-9)


def test_orientation_of_a_mushroom_lying_on_its_side():
    model = mushroom()
    rotation = trimesh.transformations.rotation_matrix(np.pi / 2, (0, 1, 0))  # cap towards +R
    model.apply_transform(rotation)
    _, report = suggest_orientation(model)
    np.testing.assert_allclose(report["down_ras"], (1, 0, 0), atol=1e-6)
    assert report["overhang_area_mm2"] < 1.0 < report["current_overhang_area_mm2"]
