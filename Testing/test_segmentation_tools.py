"""Segmentation tools on Slicer's engine (segmentation.editing, threshold, grow, islands,
morphology, logical, vessels): Dice against the sample case's ground truth, sizes in mm on
analytic shapes, undo/redo, overlap, and clear errors for bad input."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import slicer
from scipy import ndimage

from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
from SurgicalPlanningLib.segmentation import editing, grow, islands, logical, morphology, threshold, vessels
from SurgicalPlanningLib.structures import structure_key_of_segment
from VSPCoreLib import storage, terminology
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import array_to_vtk_matrix, volume_ijk_to_ras
from VSPCoreLib.errors import InputDataError
from VSPCoreLib.sampledata.phantom import AORTA, LABELS

# The "medium" grid: the standard field of view at 1.4 x 1.4 x 2 mm.
SHAPE = (256, 256, 150)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def label_values(key: str) -> list[int]:
    if key in LABELS:
        return [LABELS[key]]
    values: list[int] = []
    for part in terminology.term(key).parts:
        values += label_values(part)
    return values


@dataclass
class Case:
    app: VSPApplication
    volume: object
    truth_node: object
    labels: np.ndarray  # ground-truth label map [k, j, i] on the CT's grid
    facts: dict

    def truth(self, key: str) -> np.ndarray:
        return np.isin(self.labels, label_values(key))


@pytest.fixture(scope="session")
def case(tmp_path_factory) -> Case:
    sample = create_sample_case(tmp_path_factory.mktemp("tools_case"), shape=SHAPE, seed=5)
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, sample.case_dir)
    labelmap = storage.load_volume(app, sample.nrrd_files["labels"], labelmap=True)
    assert np.allclose(volume_ijk_to_ras(labelmap), volume_ijk_to_ras(loaded.volume_node))
    labels = slicer.util.arrayFromVolume(labelmap).copy()
    app.scene.RemoveNode(labelmap)
    return Case(app, loaded.volume_node, loaded.segmentation_node, labels, sample.facts["ground_truth"])


@pytest.fixture
def plan(case):
    """An empty planning segmentation on the case's CT, in an edit session."""
    node = case.app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Plan")
    node.CreateDefaultDisplayNodes()
    session = editing.EditSession(node, case.volume)
    yield session
    session.close()
    case.app.scene.RemoveNode(node)


def ras_of(session: editing.EditSession, kji: np.ndarray) -> np.ndarray:
    return session.grid.ijk_to_ras(np.atleast_2d(kji)[:, ::-1].astype(float))


def deep_points(session: editing.EditSession, mask: np.ndarray, count: int, min_depth_mm: float = 2.0):
    """`count` spread-out RAS points deep inside a mask (as a planner clicks inside a structure)."""
    box = editing.content_box(mask, session.grid.box).expand(1).intersect(session.grid.box)
    sub = mask[box.slices_in(session.grid.box)]
    spacing = session.grid.spacing_mm[::-1]
    depth = ndimage.distance_transform_edt(sub, sampling=spacing)
    candidates = np.argwhere(depth >= min(min_depth_mm, 0.7 * depth.max()))
    chosen = [np.array(np.unravel_index(np.argmax(depth), depth.shape))]
    distance = np.linalg.norm((candidates - chosen[0]) * spacing, axis=1)
    for _ in range(count - 1):
        chosen.append(candidates[int(np.argmax(distance))])
        distance = np.minimum(distance, np.linalg.norm((candidates - chosen[-1]) * spacing, axis=1))
    offset = np.array(box.lo[::-1])
    return ras_of(session, np.array(chosen) + offset)


def ras_box(session: editing.EditSession, mask: np.ndarray, margin_mm: float):
    """Two RAS corners around a mask, `margin_mm` outside it."""
    kji = np.argwhere(mask)
    corners = ras_of(session, np.array([kji.min(axis=0), kji.max(axis=0)]))
    return corners.min(axis=0) - margin_mm, corners.max(axis=0) + margin_mm


def full(session: editing.EditSession, segment) -> np.ndarray:
    return session.mask(segment, session.grid.box).array


def paint(session: editing.EditSession, name: str, mask: np.ndarray) -> str:
    with session.operation("paint"):
        segment_id = session.add_segment(name)
        session.apply(segment_id, session.grid.grid_array(mask, session.grid.box))
    return segment_id


# --------------------------------------------------------------------------------------------
# Kidney, tumour and arteries of the sample case
# --------------------------------------------------------------------------------------------


def kidney_seeds(session: editing.EditSession, case: Case):
    """Seed points a planner would click: inside each part of the kidney and the tumour, and on
    the structures around it (vein and artery at the hilum, psoas)."""
    points = []
    for key, count, name in (
        ("kidney_left_cortex", 6, "Kidney"),
        ("kidney_left_medulla", 4, "Kidney"),
        ("renal_pelvis_left", 2, "Kidney"),
        ("calyx_left", 2, "Kidney"),
        ("tumour", 3, "Tumour"),
        ("renal_vein_left", 3, "Background"),
        ("renal_artery_left", 2, "Background"),
        ("psoas_left", 2, "Background"),
    ):
        points += [
            (f"{name}-{n + 1}", p) for n, p in enumerate(deep_points(session, case.truth(key), count, 1.0))
        ]
    # The planner also seeds the kidney where it borders the tumour (lower-pole parenchyma).
    near = (
        ndimage.distance_transform_edt(~case.truth("tumour"), sampling=session.grid.spacing_mm[::-1]) <= 15.0
    )
    for key, count in (("kidney_left_cortex", 3), ("kidney_left_medulla", 2), ("calyx_left", 2)):
        points += [("Kidney", p) for p in deep_points(session, case.truth(key) & near, count, 1.0)]
    return points


def test_threshold_grow_and_islands_reproduce_the_left_kidney_and_tumour(case, plan):
    kidney, tumour = case.truth("kidney_left"), case.truth("tumour")
    roi = ras_box(plan, kidney, 15.0)
    # Background: the fat of the region (threshold preset) and a ring 4-7 mm around the kidney.
    fat = threshold.threshold(plan, "Fat seeds", preset="fat", roi=roi)
    assert fat.lower_hu == -190 and fat.voxels > 10_000
    outside = ndimage.distance_transform_edt(~kidney, sampling=plan.grid.spacing_mm[::-1])
    paint(plan, "Ring seeds", (outside > 4.0) & (outside <= 7.0))
    seeds_before = {name: full(plan, name).copy() for name in ("Fat seeds", "Ring seeds")}
    progress: list[float] = []
    result = grow.grow_from_seeds(
        plan,
        {"Kidney": [], "Tumour": [], "Background": ["Fat seeds", "Ring seeds"]},
        points=kidney_seeds(plan, case),
        background=["Background"],
        roi=roi,
        progress=lambda fraction, message: progress.append(fraction),
    )
    assert set(result.segment_ids) == {"Kidney", "Tumour"}  # the background is not written
    assert plan.find_segment("Background") is None
    assert result.levels == 1 and progress[0] == 0.0 and progress[-1] == 1.0
    islands.keep_largest_island(plan, "Kidney")
    islands.keep_largest_island(plan, "Tumour")
    grown_kidney, grown_tumour = full(plan, "Kidney"), full(plan, "Tumour")
    assert dice(grown_kidney | grown_tumour, kidney) >= 0.9
    assert dice(grown_tumour, tumour) >= 0.85
    assert not np.any(grown_kidney & grown_tumour)  # one grow cut label per voxel
    # The seeds are kept, untouched.
    for name, before in seeds_before.items():
        assert np.array_equal(full(plan, name), before)


def test_grow_runs_again_after_seeds_change_and_replaces_the_result(case, plan):
    tumour = case.truth("tumour")
    roi = ras_box(plan, tumour, 12.0)
    centre = deep_points(plan, tumour, 1)[0]
    outside = ndimage.distance_transform_edt(~tumour, sampling=plan.grid.spacing_mm[::-1])
    paint(plan, "Outside", (outside > 3.0) & (outside <= 5.0))
    points = slicer.vtkMRMLMarkupsFiducialNode()
    case.app.scene.AddNode(points)
    try:
        points.AddControlPoint(*centre, "Tumour")
        grower = grow.GrowFromSeeds(
            plan, {"Tumour": [], "Outside": ["Outside"]}, points=points, background=["Outside"], roi=roi
        )
        first = grower.run()
        assert not first.incremental
        # A planner adds a seed: only the new seed propagates; the result is replaced.
        extra = deep_points(plan, tumour, 3)[2]
        points.AddControlPoint(*extra, "Tumour-2")
        second = grower.run()
        assert second.incremental and second.box == first.box
        after_second = full(plan, "Tumour").copy()
        grow.GrowFromSeeds(
            plan, {"Tumour": [], "Outside": ["Outside"]}, points=points, background=["Outside"], roi=roi
        ).run()
        # The same as from scratch, up to ties between equally cheap paths (integer HU steps).
        assert dice(after_second, full(plan, "Tumour")) > 0.99
        assert dice(after_second, tumour) > 0.85
        # Removing a seed restarts the search.
        points.RemoveNthControlPoint(1)
        third = grower.run()
        assert not third.incremental and third.voxels["Tumour"] == first.voxels["Tumour"]
        assert plan.segment_ids().count(plan.find_segment("Tumour")) == 1  # replaced, not added
    finally:
        case.app.scene.RemoveNode(points)


def test_renal_artery_tree_connected_to_a_seed_leaves_bone_out(case, plan):
    tree = case.truth("renal_arterial_tree_left")
    low, high = ras_box(plan, case.truth("kidney_left"), 10.0)
    high[0] = -(AORTA["x"] + AORTA["r"] + 1.0)  # medial limit: 1 mm lateral of the aortic wall
    roi = slicer.vtkMRMLMarkupsROINode()
    case.app.scene.AddNode(roi)
    try:
        roi.SetCenter(*((low + high) / 2))
        roi.SetSize(*(high - low))
        seed = deep_points(plan, case.truth("renal_artery_left"), 1, 1.0)[0]
        result = vessels.connected_to_seed(plan, "Renal arteries", seed, preset="contrast_vessels", roi=roi)
        bright = threshold.threshold(plan, "Bright", preset="contrast_vessels", roi=roi)
    finally:
        case.app.scene.RemoveNode(roi)
    arteries = full(plan, "Renal arteries")
    bone = case.truth("spine") | case.truth("ribs")
    assert np.count_nonzero(full(plan, "Bright") & bone) > 1000  # the threshold alone has bone
    assert not np.any(arteries & bone)
    assert result.islands_in_threshold > 1 and bright.voxels > result.voxels
    assert dice(arteries, tree) >= 0.8


def test_vessel_tree_split_into_branches_from_labelled_seeds(case, plan):
    tree = case.truth("renal_arterial_tree_left")
    paint(plan, "Tree", tree)
    seeds = [("renal_artery_left", deep_points(plan, case.truth("renal_artery_left"), 1, 1.0)[0])]
    for key, line in case.facts["segmental_centrelines_lps"].items():
        if "_left_" in key:  # the entry of each segmental artery into the renal sinus
            x, y, z = line[0]
            seeds.append((key, np.array([-x, -y, z])))
    result = vessels.split_tree(plan, "Tree", seeds)
    assert len(result.segment_ids) == 6 and result.unassigned_voxels == 0
    branches = {name: full(plan, name) for name in result.segment_ids}
    assert np.array_equal(np.logical_or.reduce(list(branches.values())), tree)  # a partition
    for name, branch in branches.items():
        assert dice(branch, case.truth(name)) >= 0.8, name


# --------------------------------------------------------------------------------------------
# Synthetic shapes with known sizes
# --------------------------------------------------------------------------------------------


def synthetic(app, spacing, size_mm=(48.0, 48.0, 48.0), values: Callable | None = None):
    """A CT-like volume centred on RAS (0, 0, 0) with LPS-style axes, and an empty segmentation."""
    spacing = np.asarray(spacing, float)
    dims = np.round(np.asarray(size_mm) / spacing).astype(int)
    matrix = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    matrix[:3, 3] = -(matrix[:3, :3] @ ((dims - 1) / 2.0))
    volume = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(volume, np.zeros(dims[::-1], np.int16))
    volume.SetIJKToRASMatrix(array_to_vtk_matrix(matrix))
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Shapes")
    node.CreateDefaultDisplayNodes()
    session = editing.EditSession(node, volume)
    if values is not None:
        r, a, s = session.grid.centres_ras(session.grid.box)
        slicer.util.arrayFromVolume(volume)[:] = values(r, a, s)
        slicer.util.arrayFromVolumeModified(volume)
    return session


def centres(session):
    r, a, s = session.grid.centres_ras(session.grid.box)
    return np.broadcast_arrays(r, a, s)


def ball(session, radius, centre=(0.0, 0.0, 0.0)):
    r, a, s = centres(session)
    return (r - centre[0]) ** 2 + (a - centre[1]) ** 2 + (s - centre[2]) ** 2 <= radius**2


def radius_of(session, segment) -> float:
    """Radius of the sphere with the segment's volume."""
    volume = np.count_nonzero(full(session, segment)) * session.grid.voxel_volume_mm3
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


SPACINGS = [(1.0, 1.0, 1.0), (0.8, 0.8, 1.0)]


@pytest.mark.parametrize("spacing", SPACINGS)
def test_margin_grows_and_shrinks_a_sphere_by_millimetres(app, spacing):
    session = synthetic(app, spacing)
    half_voxel = 0.5 * min(spacing)
    sphere = paint(session, "Sphere", ball(session, 10.0))
    r0 = radius_of(session, sphere)
    assert abs(r0 - 10.0) < 0.05
    morphology.margin(session, sphere, margin_mm=5.0)
    assert abs(radius_of(session, sphere) - (r0 + 5.0)) <= half_voxel
    session.undo()
    morphology.margin(session, sphere, margin_mm=-3.0)
    assert abs(radius_of(session, sphere) - (r0 - 3.0)) <= half_voxel


@pytest.mark.parametrize("spacing", SPACINGS)
def test_hollow_shell_thickness_within_half_a_voxel(app, spacing):
    session = synthetic(app, spacing)
    half_voxel = 0.5 * min(spacing)
    sphere = paint(session, "Sphere", ball(session, 12.0))
    volume = np.count_nonzero(full(session, sphere)) * session.grid.voxel_volume_mm3

    def radius(v):
        return (3.0 * v / (4.0 * math.pi)) ** (1.0 / 3.0)

    for shell, thickness in (("inside", 3.0), ("outside", 3.0), ("medial", 4.0)):
        morphology.hollow(session, sphere, thickness_mm=thickness, shell=shell)
        shell_mask = full(session, sphere)
        shell_volume = np.count_nonzero(shell_mask) * session.grid.voxel_volume_mm3
        if shell == "inside":
            measured = radius(volume) - radius(volume - shell_volume)
            assert np.all(shell_mask <= ball(session, 12.0))
        elif shell == "outside":
            measured = radius(volume + shell_volume) - radius(volume)
            assert not np.any(shell_mask & ball(session, 12.0))
        else:
            # Centred on the surface: half outside, half inside.
            outer = np.count_nonzero(shell_mask & ~ball(session, 12.0)) * session.grid.voxel_volume_mm3
            measured = (radius(volume + outer) - radius(volume)) + (
                radius(volume) - radius(volume - (shell_volume - outer))
            )
        assert abs(measured - thickness) <= half_voxel, (shell, measured)
        session.undo()


def _fin_and_slot(session):
    """A 16 mm ball with a 3 mm thick fin sticking out and a 3 mm wide slot cut into it."""
    r, a, s = centres(session)
    body = ball(session, 8.0, (-6.0, 0.0, 0.0))
    fin = (np.abs(a) <= 1.5) & (r > 0.0) & (r <= 14.0) & (np.abs(s) <= 6.0)
    slot = (np.abs(s) <= 1.5) & (r < -4.0) & (np.abs(a) <= 3.0)
    return body & ~slot, fin, slot


@pytest.mark.parametrize("method", ["opening", "closing", "median", "gaussian"])
def test_smoothing_kernel_in_mm_acts_the_same_at_two_voxel_sizes(app, method):
    """4.5 mm is 9 voxels at 0.5 mm and 3 voxels at 1.5 mm: the same kernel in mm."""
    volumes, effects = [], []
    for spacing in ((0.5, 0.5, 0.5), (1.5, 1.5, 1.5)):
        session = synthetic(app, spacing, size_mm=(42.0, 30.0, 30.0))
        body, fin, slot = _fin_and_slot(session)
        segment = paint(session, "Shape", body | fin)
        before = np.count_nonzero(body | fin) * session.grid.voxel_volume_mm3
        morphology.smooth(session, segment, method=method, kernel_mm=4.5 if method != "gaussian" else 1.5)
        smoothed = full(session, segment)
        volumes.append(np.count_nonzero(smoothed) * session.grid.voxel_volume_mm3 / before)
        fin_left = np.count_nonzero(smoothed & fin & ~body) / np.count_nonzero(fin & ~body)
        slot_filled = np.count_nonzero(smoothed & slot) / np.count_nonzero(slot)
        effects.append((fin_left, slot_filled))
        if method == "opening":
            assert fin_left < 0.05 and slot_filled == 0  # the thin fin goes, nothing is added
        if method == "closing":
            assert slot_filled > 0.45 and fin_left > 0.95  # the narrow slot closes, the fin stays
    assert abs(volumes[0] - volumes[1]) <= 0.05, volumes  # relative volume change
    assert np.allclose(effects[0], effects[1], atol=0.15), effects


def test_smoothing_with_a_small_kernel_keeps_the_fin(app):
    session = synthetic(app, (0.5, 0.5, 0.5), size_mm=(42.0, 30.0, 30.0))
    body, fin, _ = _fin_and_slot(session)
    segment = paint(session, "Shape", body | fin)
    morphology.smooth(session, segment, method="opening", kernel_mm=1.0)
    assert np.count_nonzero(full(session, segment) & fin) > 0.9 * np.count_nonzero(fin)


def test_joint_smoothing_keeps_touching_segments_apart_and_refuses_overlap(app):
    session = synthetic(app, (1.0, 1.0, 1.0))
    r, a, s = centres(session)
    sphere = ball(session, 12.0)
    left, right = sphere & (r < 0), sphere & (r >= 0)
    ids = [paint(session, "Left", left), paint(session, "Right", right)]
    results = morphology.joint_smooth(session, ids, smoothing_factor=0.5)
    smoothed_left, smoothed_right = full(session, ids[0]), full(session, ids[1])
    assert not np.any(smoothed_left & smoothed_right)
    assert dice(smoothed_left | smoothed_right, sphere) > 0.95
    assert all(abs(x.voxels_after - x.voxels_before) < 0.1 * x.voxels_before for x in results)
    paint(session, "Overlapping", ball(session, 5.0))
    with pytest.raises(InputDataError, match="overlap"):
        morphology.joint_smooth(session, [ids[0], "Overlapping"])


def test_fill_holes_closes_an_internal_cavity_only(app):
    session = synthetic(app, (1.0, 1.0, 1.0))
    r, a, s = centres(session)
    cavity = ball(session, 4.0)  # enclosed
    pit = (np.abs(a) <= 1.5) & (np.abs(s) <= 1.5) & (r > 6.0)  # a channel open to the outside
    segment = paint(session, "Shell", ball(session, 12.0) & ~cavity & ~pit)
    before = full(session, segment).copy()
    morphology.fill_holes(session, segment)
    after = full(session, segment)
    assert np.count_nonzero(cavity) > 200
    assert np.array_equal(after, before | cavity)  # exactly the cavity is filled, not the channel


def _cube(r, a, s, x, side):
    half = side / 2 - 1e-6
    return (np.abs(r - x) <= half) & (np.abs(a) <= half) & (np.abs(s) <= half)


def test_islands_sizes_are_in_cubic_millimetres(app):
    for spacing in ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)):
        session = synthetic(app, spacing, size_mm=(40.0, 20.0, 20.0))
        r, a, s = centres(session)

        # Cubes of 512, 64 and 8 mm³.
        big, medium, small = (_cube(r, a, s, x, side) for x, side in ((-10.0, 8.0), (4.0, 4.0), (14.0, 2.0)))
        segment = paint(session, "Blobs", big | medium | small)
        result = islands.remove_small_islands(session, segment, min_size_mm3=30.0)
        assert result.islands_found == 3 and result.islands_kept == 2
        assert np.array_equal(full(session, segment), big | medium)
        session.undo()
        result = islands.split_islands(session, segment)
        names = [session.segment_name(i) for i in result.segment_ids]
        assert names == ["Blobs", "Blobs_2", "Blobs_3"]
        assert [
            np.count_nonzero(full(session, i)) * session.grid.voxel_volume_mm3 for i in result.segment_ids
        ] == pytest.approx([512, 64, 8])
        session.undo()
        assert session.find_segment("Blobs_2") is None  # undo removes the split segments
        islands.keep_largest_island(session, segment)
        assert np.array_equal(full(session, segment), big)


def test_logical_operations_give_exact_voxel_counts(app):
    session = synthetic(app, (1.0, 1.0, 1.0), size_mm=(30.0, 30.0, 30.0))
    r, a, s = centres(session)
    box_a = (np.abs(r) <= 5.0) & (np.abs(a) <= 5.0) & (np.abs(s) <= 5.0)  # 10³ voxel centres
    box_b = (np.abs(r - 5.0) <= 5.0) & (np.abs(a) <= 5.0) & (np.abs(s) <= 2.0)
    n_a, n_b, n_ab = (int(np.count_nonzero(m)) for m in (box_a, box_b, box_a & box_b))
    assert (n_a, n_b, n_ab) == (1000, 400, 200)
    seg_a, seg_b = paint(session, "A", box_a), paint(session, "B", box_b)
    assert logical.union(session, seg_a, seg_b).voxels_after == n_a + n_b - n_ab
    session.undo()
    assert logical.subtract(session, seg_a, seg_b).voxels_after == n_a - n_ab
    session.undo()
    assert logical.intersect(session, seg_a, seg_b).voxels_after == n_ab
    session.undo()
    assert logical.invert(session, seg_a).voxels_after == session.grid.box.voxels - n_a
    session.undo()
    copied = logical.copy(session, "Copy of B", seg_b)
    assert np.array_equal(full(session, copied.segment_id), box_b)
    assert logical.clear(session, seg_a).voxels_after == 0
    session.undo()
    assert np.array_equal(full(session, seg_a), box_a) and np.array_equal(full(session, seg_b), box_b)


def test_threshold_in_a_mask_segment_and_otsu(app):
    def values(r, a, s):
        rng = np.random.default_rng(1)
        inside = r**2 + a**2 + s**2 <= 8.0**2
        return (np.where(inside, 200, 20) + rng.normal(0, 10, inside.shape)).astype(np.int16)

    session = synthetic(app, (1.0, 1.0, 1.0), size_mm=(40.0, 40.0, 40.0), values=values)
    bright = ball(session, 8.0)
    result = threshold.threshold(session, "Otsu", method="otsu")
    assert 60 < result.lower_hu < 160  # between the two intensity classes
    assert dice(full(session, "Otsu"), bright) > 0.99
    r, a, s = centres(session)
    left_half = paint(session, "Left half", r < 0)
    masked = threshold.threshold(session, "Bright left", lower_hu=110, upper_hu=400, mask_segment=left_half)
    hu = slicer.util.arrayFromVolume(session.source_volume)
    expected = (hu >= 110) & (hu <= 400) & (r < 0)
    assert masked.voxels == np.count_nonzero(expected)
    assert np.array_equal(full(session, "Bright left"), expected)


# --------------------------------------------------------------------------------------------
# Undo/redo and overlap
# --------------------------------------------------------------------------------------------


def test_undo_restores_the_exact_voxels_and_redo_reapplies(app):
    session = synthetic(app, (0.8, 0.8, 1.0))
    sphere = paint(session, "Sphere", ball(session, 9.0, (2.0, -1.0, 3.0)))
    before = full(session, sphere).copy()
    morphology.margin(session, sphere, margin_mm=4.0)
    after = full(session, sphere).copy()
    assert np.count_nonzero(after) > np.count_nonzero(before)
    session.undo()
    assert np.array_equal(full(session, sphere), before)
    assert session.can_redo
    session.redo()
    assert np.array_equal(full(session, sphere), after)
    threshold.threshold(session, sphere, lower_hu=-10, upper_hu=10, roi=((-3, -3, -3), (3, 3, 3)))
    session.undo()
    assert np.array_equal(full(session, sphere), after)


def test_overlapping_segments_stay_overlapping(case):
    """The ground truth holds all structures in one shared layer; growing the tumour into the
    cortex must leave the cortex as it is."""
    session = editing.EditSession(case.truth_node, case.volume)
    try:
        keys = {}
        for segment_id in session.segment_ids():
            segment = case.truth_node.GetSegmentation().GetSegment(segment_id)
            keys[structure_key_of_segment(segment)] = segment_id
        tumour, cortex = keys["tumour"], keys["kidney_left_cortex"]
        assert case.truth_node.GetSegmentation().GetNumberOfLayers() == 1  # one shared labelmap
        cortex_before = full(session, cortex).copy()
        tumour_before = full(session, tumour).copy()
        assert not np.any(cortex_before & tumour_before)
        morphology.margin(session, tumour, margin_mm=4.0)
        threshold.threshold(session, cortex, lower_hu=140, upper_hu=230, mask_segment=cortex, mode="set")
        cortex_after = full(session, cortex)
        assert np.count_nonzero(full(session, tumour) & cortex_after) > 100  # they overlap now
        assert np.count_nonzero(cortex_after) > 0.97 * np.count_nonzero(cortex_before)
        assert not np.any(cortex_after & ~cortex_before)
        session.undo()
        session.undo()
        assert np.array_equal(full(session, tumour), tumour_before)
        assert np.array_equal(full(session, cortex), cortex_before)
    finally:
        session.close()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _node_on_grid(app, volume_matrix, dims, name="Other grid"):
    other = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Other")
    slicer.util.updateVolumeFromArray(other, np.zeros(dims[::-1], np.int16))
    other.SetIJKToRASMatrix(array_to_vtk_matrix(volume_matrix))
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(other)
    return node, other


def test_a_segmentation_on_another_grid_is_resampled_or_refused(app):
    session = synthetic(app, (1.0, 1.0, 1.0), size_mm=(40.0, 40.0, 40.0))
    volume = session.source_volume
    coarse = np.diag([-2.0, -2.0, 2.0, 1.0])
    coarse[:3, 3] = -(coarse[:3, :3] @ np.array([9.5, 9.5, 9.5]))
    node, other = _node_on_grid(app, coarse, np.array([20, 20, 20]))
    coarse_session = editing.EditSession(node, other)
    paint(coarse_session, "Ball", ball(coarse_session, 10.0))
    coarse_session.close()
    with pytest.raises(InputDataError, match="different grid") as refused:
        editing.EditSession(node, volume, on_grid_mismatch="refuse")
    assert "Other grid" in str(refused.value) and "Fix:" in str(refused.value)
    resampled = editing.EditSession(node, volume)
    assert len(resampled.warnings) == 1 and "resampled" in resampled.warnings[0]
    assert resampled.grid.same_geometry(editing.Grid.from_volume(volume))
    assert abs(radius_of(resampled, "Ball") - 10.0) < 1.0
    # A finer grid with the volume's axes is the caller's choice: accepted without a warning.
    fine = np.diag([-0.5, -0.5, 0.5, 1.0])
    fine[:3, 3] = -(fine[:3, :3] @ np.array([39.5, 39.5, 39.5]))
    fine_node, _ = _node_on_grid(app, fine, np.array([80, 80, 80]), "Fine")
    fine_session = editing.EditSession(fine_node, volume)
    assert fine_session.warnings == [] and np.allclose(fine_session.grid.spacing_mm, 0.5)
    # The source is resampled (linear) onto the finer grid.
    values = fine_session.source(fine_session.grid.box).array
    assert values.shape == (80, 80, 80)


def test_an_empty_seed_segment_is_a_clear_error(app):
    session = synthetic(app, (1.0, 1.0, 1.0))
    with session.operation("add"):
        session.add_segment("Kidney seeds")
    paint(session, "Outside seeds", ball(session, 3.0, (15.0, 15.0, 15.0)))
    with pytest.raises(InputDataError, match="'Kidney seeds' is empty"):
        grow.grow_from_seeds(session, {"Kidney": "Kidney seeds", "Outside": "Outside seeds"})
    with pytest.raises(InputDataError, match="has no seeds"):
        grow.grow_from_seeds(session, {"Kidney": [], "Outside": "Outside seeds"})
    with pytest.raises(InputDataError, match="names no result"):
        grow.grow_from_seeds(
            session, {"Kidney": [], "Outside": "Outside seeds"}, points=[("Liver", (0, 0, 0))]
        )
    with pytest.raises(InputDataError, match="has no segment 'Spleen'"):
        morphology.margin(session, "Spleen", margin_mm=1.0)


def test_an_roi_that_misses_the_volume_is_a_clear_error(app):
    session = synthetic(app, (1.0, 1.0, 1.0))
    far = ((500.0, 500.0, 500.0), (520.0, 520.0, 520.0))
    with pytest.raises(InputDataError, match="does not overlap") as error:
        threshold.threshold(session, "Bone", preset="bone", roi=far)
    assert "Fix:" in str(error.value)
    paint(session, "Seeds", ball(session, 3.0))
    paint(session, "Other", ball(session, 3.0, (12.0, 0.0, 0.0)))
    with pytest.raises(InputDataError, match="does not overlap"):
        grow.grow_from_seeds(session, {"A": "Seeds", "B": "Other"}, roi=far)
    assert session.find_segment("Bone") is None and session.find_segment("A") is None  # nothing written


def test_a_failure_inside_an_operation_leaves_nothing_half_done(app):
    session = synthetic(app, (1.0, 1.0, 1.0))
    segment = paint(session, "Ball", ball(session, 6.0))
    before = full(session, segment).copy()
    with pytest.raises(RuntimeError):
        with session.operation("two changes"):
            session.apply(segment, session.grid.grid_array(ball(session, 9.0), session.grid.box))
            session.add_segment("Half")
            raise RuntimeError("second step failed")
    assert np.array_equal(full(session, segment), before)
    assert session.find_segment("Half") is None


def test_the_editable_area_of_the_session_limits_changes(app):
    def values(r, a, s):
        return np.where(r > 0, 100, -100).astype(np.int16)

    session = synthetic(app, (1.0, 1.0, 1.0), values=values)
    allowed = paint(session, "Allowed", ball(session, 10.0))
    grown = paint(session, "Grown", ball(session, 4.0))
    session.set_editable_area("inside_segment", allowed, intensity_range_hu=(0, 200))
    morphology.margin(session, grown, margin_mm=8.0)
    r, _, _ = centres(session)
    result = full(session, grown)
    # Growth lands only inside "Allowed" where the CT is in range; outside the editable area the
    # segment stays as it was (Slicer's editor keeps it there even in "set" mode).
    assert np.all(result <= (ball(session, 10.0) & (r > 0)) | ball(session, 4.0))
    assert np.all(result[ball(session, 4.0) & (r < 0)])
    assert np.count_nonzero(result & (r > 0)) > np.count_nonzero(ball(session, 4.0) & (r > 0))
    session.set_editable_area("everywhere")
    morphology.margin(session, grown, margin_mm=2.0)
    assert np.count_nonzero(full(session, grown) & ~ball(session, 10.0)) > 0
