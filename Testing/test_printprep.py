"""Print preparation (PrintPrepLib): the sample case's five parts printed, checked and recorded;
an asymmetric label map that is not the phantom; bad input.

The sample case runs once per module (small grid, 2.8 × 2.8 × 4 mm): surfaces, repair,
fidelity, export in every format, PrusaSlicer G-code for every STL, ADMesh on every STL, the
device record. Orientation is read back from every file by independent readers (trimesh, the
standard library's XML reader for 3MF) and compared with the spine's position in the scene.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from PrintPrepLib import pipeline, profiles, repair
from PrintPrepLib.pipeline import KIDNEY_TUMOUR_PARTS_LEFT, PrintOptions, prepare_print
from VSPCoreLib.errors import InputDataError

SHAPE = (128, 128, 75)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The sample case's five left kidney-tumour parts, prepared once (PrusaSlicer where installed)."""
    from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
    from SurgicalPlanningLib.territories import structure_segment_ids
    from VSPCoreLib.app import VSPApplication

    case = create_sample_case(tmp_path_factory.mktemp("case"), shape=SHAPE, seed=3)
    app = VSPApplication.create_headless()
    loaded = load_sample_case(app, case.case_dir)
    out = tmp_path_factory.mktemp("print") / "out"
    result = prepare_print(
        app,
        loaded.segmentation_node,
        out_dir=out,
        segments=list(KIDNEY_TUMOUR_PARTS_LEFT),
        options=PrintOptions(),
    )
    # The spine's centroid (RAS) from the segmentation itself.
    spine_rows = [
        row
        for row in loaded.summary["segments"]
        if row["structure_key"] == "spine" and row["centroid_ras_mm"]
    ]
    assert structure_segment_ids(loaded.segmentation_node, "spine")
    spine_ras = np.array(spine_rows[0]["centroid_ras_mm"])
    spacing = min(loaded.summary["volume"]["spacing_mm"])
    return result, spine_ras, spacing


def _part(result, key):
    return next(p for p in result.parts if p["key"] == key)


def test_five_parts_found_by_terminology(prepared):
    result, _, _ = prepared
    assert [p["key"] for p in result.parts] == list(KIDNEY_TUMOUR_PARTS_LEFT)
    kidney = _part(result, "kidney_left")
    # The kidney takes its cortex and medulla; the tumour and collecting system are parts of their own.
    assert sorted(kidney["segments"]) == ["Renal cortex, left", "Renal medulla, left"]
    assert (
        _part(result, "collecting_system_left")["segments"] == ["Renal pelvis, left", "Renal calyces, left"]
        or len(_part(result, "collecting_system_left")["segments"]) == 2
    )
    assert len(_part(result, "renal_arterial_tree_left")["segments"]) == 6
    assert kidney["terminology"]["type"] == "SCT^64033007^Kidney"


def _surface_step(result, key):
    name = _part(result, key)["name"]
    return next(
        s
        for s in result.record["processing"]
        if s.get("part") == name and s["step"] == "labelmap to closed surface"
    )


def test_repaired_and_faithful(prepared):
    """Issue #9's tolerance on the small grid (2.8 × 2.8 × 4 mm): every part, the renal arteries
    (one voxel across) and the collecting system included, within one voxel (P95) and 2 %."""
    result, _, spacing = prepared
    for part in result.parts:
        after = part["repair"]["after"]
        assert after["watertight"] and after["winding_consistent"], part["name"]
        assert after["boundary_edges"] == after["non_manifold_edges"] == after["degenerate_faces"] == 0
        assert after["self_intersecting_face_pairs"] == 0
        fid = part["fidelity"]
        assert fid["tolerance"] == {"p95_distance_mm": spacing, "volume_difference_percent": 2.0}
        assert fid["p95_distance_mm"] <= spacing, (part["name"], fid)
        assert abs(fid["volume_difference_percent"]) <= 2.0, (part["name"], fid)
        assert fid["passed"], (part["name"], fid)
    # No part is flagged for fidelity: the overall QA fails only where wall thickness, fit or
    # slicing does (the thickness check is on by default).
    others = [
        p["name"]
        for p in result.parts
        if not (p["fit"]["fits"] and p.get("thickness", {}).get("passed", True))
        or p.get("slicing", {}).get("exit_code", 0) != 0
    ]
    assert result.record["qa"]["failed_parts"] == others
    assert result.record["qa"]["passed"] == (not others)
    # Automatic supersampling went finer for the thin tubes only, each factor recorded: the
    # arteries miss the voxel volume by over 4 % at 3x (corner cutting), not at the factor kept.
    arteries = _surface_step(result, "renal_arterial_tree_left")
    tried = arteries["tried"]
    assert [t["supersampling"] for t in tried] == [3.0, 5.0, 7.0]  # 7: the finest "auto" tries
    assert [t["volume_difference_percent"] < -4 for t in tried] == [True, False, False]
    assert arteries["parameters"]["supersampling"] == 7.0
    assert abs(tried[-1]["volume_difference_percent"]) <= 1.5
    tumour = _surface_step(result, "tumour")
    assert [t["supersampling"] for t in tumour["tried"]] == [3.0]


def test_files_hashes_and_record(prepared):
    result, _, _ = prepared
    record = json.loads((result.out_dir / "device_record.json").read_text())
    kinds = {f["kind"] for f in record["files"]}
    assert {"stl", "obj", "mtl", "3mf", "glb", "mrb"} <= kinds
    import hashlib

    for entry in record["files"]:
        path = result.out_dir / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    html = (result.out_dir / "device_record.html").read_text()
    assert record["device"]["device_id"] in html and "Renal tumour, left" in html
    assert record["printer"]["key"] == "prusa-mk4" and record["material"]["key"] == "petg"
    assert record["units"] == "mm" and record["software"].startswith("SlicerVSP")
    stl = next(f for f in record["files"] if f["kind"] == "stl")
    assert (stl["frame"], stl["units"]) == ("LPS", "mm")
    assert b"SPACE=LPS" in (result.out_dir / stl["path"]).read_bytes()[:80]
    # No partial folders left beside the output.
    assert not list(result.out_dir.parent.glob(".print-prep-*"))
    # DICOM objects added later keep the record whole.
    from PrintPrepLib.record import add_dicom_objects

    updated = add_dicom_objects(result.out_dir, [{"part": "tumour", "sop_instance_uid": "1.2.3"}])
    assert updated["dicom_objects"][0]["sop_instance_uid"] == "1.2.3"


@pytest.mark.skipif(
    shutil.which("admesh") is None, reason="admesh is not installed (Testing/setup.sh installs it)"
)
def test_admesh_finds_nothing_to_fix(prepared):
    result, _, _ = prepared
    stls = sorted((result.out_dir / "stl").glob("*.stl"))
    assert len(stls) == 5
    for stl in stls:
        done = subprocess.run(["admesh", str(stl)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        text = done.stdout
        assert "Binary STL file" in text
        for label in (
            "Degenerate facets",
            "Edges fixed",
            "Facets removed",
            "Facets added",
            "Facets reversed",
            "Backwards edges",
            "Normals fixed",
        ):
            value = int(re.search(rf"{label}\s*:\s*(\d+)", text).group(1))
            assert value == 0, (stl.name, label, value)
        assert int(re.search(r"Total disconnected facets\s*:\s*(\d+)\s+(\d+)", text).group(2)) == 0


@pytest.mark.skipif(
    shutil.which("prusa-slicer") is None,
    reason="prusa-slicer is not installed (Testing/setup.sh installs it)",
)
def test_every_stl_sliced_by_prusaslicer(prepared):
    result, _, _ = prepared
    for part in result.parts:
        slicing = part["slicing"]
        assert slicing["sliced"] and slicing["exit_code"] == 0, part["name"]
        assert slicing["filament_mm"] > 0 and slicing["print_time"]
        gcode = result.out_dir / "gcode" / f"{part['key']}.gcode"
        assert gcode.stat().st_size > 1000


def _read_3mf(path: Path) -> dict[str, np.ndarray]:
    ns = {"m": "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"}
    with zipfile.ZipFile(path) as archive:
        root = ET.fromstring(archive.read("3D/3dmodel.model"))
    assert root.get("unit") == "millimeter"
    out = {}
    for obj in root.iter(f"{{{ns['m']}}}object"):
        vertices = np.array(
            [[float(v.get(a)) for a in "xyz"] for v in obj.iter(f"{{{ns['m']}}}vertex")], dtype=float
        )
        out[obj.get("name")] = vertices
    return out


def test_tumour_left_of_spine_in_every_format(prepared):
    """Read back independently: STL/OBJ/3MF in LPS mm (left = +x), GLB in glTF (x = L, metres)."""
    result, spine_ras, _ = prepared
    spine_left_mm = -spine_ras[0]  # L = -R
    tumour_ras = None
    stl = trimesh.load(result.out_dir / "stl" / "tumour.stl")
    obj = trimesh.load(result.out_dir / "obj" / "tumour.obj", force="mesh")
    three = _read_3mf(result.out_dir / "print.3mf")["Renal tumour, left"]
    glb = trimesh.load(result.out_dir / "print.glb")
    glb_tumour = glb.geometry["Renal tumour, left"]
    readings = {
        "stl": stl.vertices.mean(axis=0)[0],
        "obj": obj.vertices.mean(axis=0)[0],
        "3mf": three.mean(axis=0)[0],
        "glb": glb_tumour.vertices.mean(axis=0)[0] * 1000.0,
    }
    for fmt, tumour_left in readings.items():
        assert tumour_left > spine_left_mm + 20.0, (fmt, tumour_left, spine_left_mm)
    # All formats agree on where the tumour is (to a fraction of a mm), and with the scene.
    values = np.array(list(readings.values()))
    assert np.ptp(values) < 0.01
    tumour_ras = stl.vertices.mean(axis=0) * np.array([-1, -1, 1])
    assert tumour_ras[0] < spine_ras[0]
    # GLB is upright: its y is Superior, equal to the STL's z.
    assert glb_tumour.vertices.mean(axis=0)[1] * 1000 == pytest.approx(stl.vertices.mean(axis=0)[2], abs=0.01)


# --- not the phantom: an asymmetric label map made here ------------------------------------


def _asymmetric_segmentation(app, *, extent_mm=None):
    """An L-shaped block on the patient's right (R > 0), its long arm anterior, on an oblique-free
    grid with non-zero origin. Returns the segmentation node and the block's RAS centroid."""
    import slicer
    from slicer.util import updateVolumeFromArray

    spacing = (1.5, 1.2, 2.0)
    shape_kji = (30, 50, 60)
    labels = np.zeros(shape_kji, np.uint8)
    labels[8:22, 10:20, 30:50] = 1  # base of the L
    labels[8:22, 20:42, 30:38] = 1  # the arm, toward +j
    volume = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    volume.SetSpacing(*spacing)
    volume.SetOrigin(10.0, -40.0, 100.0)
    updateVolumeFromArray(volume, labels)
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "asymmetric")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(volume, segmentation)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("block")
    k, j, i = np.nonzero(labels)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag(spacing)  # IJK = RAS axes for a label map volume made this way
    matrix = __import__("vtk").vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    centroid = (m @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]
    return segmentation, centroid, m


def test_asymmetric_labelmap_printable_in_place(app, tmp_path):
    segmentation, centroid_ras, ijk_to_ras = _asymmetric_segmentation(app)
    options = PrintOptions(
        slice=shutil.which("prusa-slicer") is not None, save_scene=False, formats=("stl", "glb")
    )
    result = prepare_print(app, segmentation, out_dir=tmp_path / "out", options=options)
    (part,) = result.parts
    assert part["fidelity"]["passed"], part["fidelity"]
    assert part["repair"]["after"]["watertight"]
    if options.slice:
        assert part["slicing"]["exit_code"] == 0
    stl = trimesh.load(tmp_path / "out" / "stl" / "block.stl")
    ras = stl.vertices * np.array([-1, -1, 1])  # LPS -> RAS
    # Where it was made (mesh vs voxel centroid of an L: within half a voxel) ...
    assert np.allclose(trimesh.Trimesh(ras, stl.faces).center_mass, centroid_ras, atol=0.75)
    # ... on the patient's right (R > 0 in RAS, L < 0 in the file) ...
    assert centroid_ras[0] > 0 and stl.vertices[:, 0].max() < 0
    # ... and not mirrored: the arm (toward +A in RAS, -y in LPS) holds less than half the width.
    a_axis = ijk_to_ras[:3, 1]
    assert a_axis[1] > 0  # j runs anterior here
    front = ras[:, 1] > centroid_ras[1] + 10
    assert np.ptp(ras[front, 0]) < 0.6 * np.ptp(ras[:, 0])


def _block_and_thin_tube(app):
    """The L-shaped block of :func:`_asymmetric_segmentation` (label 1) and, apart from it, a thin
    tube one voxel across (label 2) climbing in a staircase toward +R, +A, +S (the steps along i,
    j, i, j, k, j: every voxel shares a face with the next). Returns the segmentation node, the
    segments' IDs and RAS voxel centres."""
    import slicer
    from slicer.util import updateVolumeFromArray

    spacing = (1.5, 1.2, 2.0)
    labels = np.zeros((30, 50, 60), np.uint8)
    labels[8:22, 10:20, 30:50] = 1
    labels[8:22, 20:42, 30:38] = 1
    k, j, i = 4, 4, 6
    labels[k, j, i] = 2
    for t in range(66):
        axis = "ijijkj"[t % 6]
        k, j, i = k + (axis == "k"), j + (axis == "j"), i + (axis == "i")
        labels[k, j, i] = 2
    volume = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "block and tube")
    volume.SetSpacing(*spacing)
    volume.SetOrigin(10.0, -40.0, 100.0)
    updateVolumeFromArray(volume, labels)
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "block and tube")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(volume, segmentation)
    names = {}
    for n, name in enumerate(("block", "tube")):
        segment = segmentation.GetSegmentation().GetNthSegment(n)
        segment.SetName(name)
        names[name] = segmentation.GetSegmentation().GetNthSegmentID(n)
    matrix = __import__("vtk").vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    centres = {}
    for value, name in ((1, "block"), (2, "tube")):
        kk, jj, ii = np.nonzero(labels == value)
        centres[name] = (np.stack([ii, jj, kk, np.ones_like(ii)], axis=1) @ m.T)[:, :3]
    return segmentation, names, centres


def test_thin_tube_and_block_not_the_phantom_within_tolerance(app, tmp_path):
    """Issue #9's tolerance on a label map made here: a tube one voxel across keeps its voxel
    volume within 2 % (automatic supersampling up to 7x) and stays where its voxels are."""
    from PrintPrepLib import surface

    segmentation, ids, centres = _block_and_thin_tube(app)
    options = PrintOptions(slice=False, save_scene=False, formats=("stl",))
    result = prepare_print(app, segmentation, out_dir=tmp_path / "out", options=options)
    assert [p["name"] for p in result.parts] == ["block", "tube"]
    for part in result.parts:
        fid = part["fidelity"]
        assert fid["tolerance"]["p95_distance_mm"] == 1.2  # the smallest spacing
        assert fid["passed"] and abs(fid["volume_difference_percent"]) <= 2.0, (part["name"], fid)
        assert part["repair"]["after"]["watertight"]
    tube_step = next(
        s for s in result.record["processing"] if s.get("part") == "tube" and s["step"].startswith("labelmap")
    )
    assert [t["supersampling"] for t in tube_step["tried"]] == [3.0, 5.0, 7.0]
    assert tube_step["tried"][0]["volume_difference_percent"] < -4.0  # 3x alone would be flagged
    # The same tube at a fixed 3x: over tolerance, so the test above can fail.
    labelmap = surface.part_labelmap(segmentation, [ids["tube"]], subject="tube")
    coarse, _ = surface.part_surface(labelmap, surface.SurfaceOptions(supersampling=3), subject="tube")
    assert not surface.fidelity(coarse, labelmap)["passed"]
    # In place: the STL (LPS) read back is where the voxels are, not shifted or mirrored.
    for name in ("block", "tube"):
        stl = trimesh.load(tmp_path / "out" / "stl" / f"{name}.stl")
        ras = stl.vertices * np.array([-1, -1, 1])
        mesh = trimesh.Trimesh(ras, stl.faces)
        np.testing.assert_allclose(mesh.center_mass, centres[name].mean(axis=0), atol=0.6)
    tube = trimesh.load(tmp_path / "out" / "stl" / "tube.stl").vertices * np.array([-1, -1, 1])
    voxels = centres["tube"]
    top, bottom = tube[:, 2] > voxels[:, 2].max() - 4.0, tube[:, 2] < voxels[:, 2].min() + 4.0
    top_voxels = voxels[:, 2] > voxels[:, 2].max() - 4.0
    bottom_voxels = voxels[:, 2] < voxels[:, 2].min() + 4.0
    # The upper end lies toward +R and +A of the lower end, as made (mirroring would swap it).
    np.testing.assert_allclose(tube[top, :2].mean(axis=0), voxels[top_voxels, :2].mean(axis=0), atol=1.5)
    np.testing.assert_allclose(
        tube[bottom, :2].mean(axis=0), voxels[bottom_voxels, :2].mean(axis=0), atol=1.5
    )
    assert np.all(tube[top, :2].mean(axis=0) > tube[bottom, :2].mean(axis=0) + 10.0)


# --- bad input -------------------------------------------------------------------------------


def test_empty_segment_is_a_clear_error_and_nothing_is_written(app, tmp_path):
    segmentation, _, _ = _asymmetric_segmentation(app)
    segmentation.GetSegmentation().AddEmptySegment("empty", "empty")
    with pytest.raises(InputDataError, match="empty"):
        prepare_print(
            app, segmentation, out_dir=tmp_path / "out", segments=["empty"], options=PrintOptions(slice=False)
        )
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_part_larger_than_every_printer(app, tmp_path):
    import slicer
    from slicer.util import updateVolumeFromArray

    labels = np.zeros((12, 12, 100), np.uint8)
    labels[2:10, 2:10, 2:98] = 1  # 96 voxels × 5 mm = 480 mm long
    volume = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "long")
    volume.SetSpacing(5.0, 5.0, 5.0)
    updateVolumeFromArray(volume, labels)
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "long")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(volume, segmentation)
    with pytest.raises(profiles.ProfileError, match="larger than every printer"):
        prepare_print(
            app, segmentation, out_dir=tmp_path / "out", options=PrintOptions(slice=False, save_scene=False)
        )
    assert list(tmp_path.iterdir()) == []


def test_sterile_field_with_incompatible_material_is_refused(app, tmp_path):
    segmentation, _, _ = _asymmetric_segmentation(app)
    for material, method, reason in (
        ("pla", "steam-134", "not compatible with steam autoclave 134"),
        ("petg", "h2o2-plasma", "biocompatibility"),
    ):
        options = PrintOptions(
            material=material, intended_use="intraoperative", sterilisation=method, slice=False
        )
        with pytest.raises(profiles.ProfileError, match=reason):
            prepare_print(app, segmentation, out_dir=tmp_path / "out", options=options)
    check = profiles.check_sterile_use(profiles.material("abs-m30i"), "intraoperative", "h2o2-plasma")
    assert check["passed"] and check["material_compatible"]
    assert not (tmp_path / "out").exists()


def test_non_manifold_mesh_that_cannot_be_repaired():
    # Three triangles on one edge (a "book" with three pages), open everywhere.
    vertices = np.array([[0, 0, 0], [0, 0, 10], [10, 0, 5], [-10, 0, 5], [0, 10, 5]], float)
    faces = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    with pytest.raises(repair.RepairError, match="2-manifold"):
        repair.repair(
            trimesh.Trimesh(vertices, faces, process=False), repair.RepairOptions(min_shell_volume_mm3=0.0)
        )


def test_repair_removes_small_shells_and_keeps_cavities():
    outer = trimesh.creation.icosphere(subdivisions=3, radius=20.0)
    cavity = trimesh.creation.icosphere(subdivisions=3, radius=8.0)
    cavity.invert()
    speck = trimesh.creation.box(extents=(1, 1, 1))
    speck.apply_translation((50, 0, 0))
    flipped = outer.copy()
    flipped.invert()  # inside out: repair turns it outwards
    mesh = trimesh.util.concatenate([flipped, cavity, speck])
    fixed, report = repair.repair(mesh, repair.RepairOptions(min_shell_volume_mm3=10.0))
    expected = outer.volume - abs(cavity.volume)
    assert fixed.volume == pytest.approx(expected, rel=1e-3)
    assert report["removed_shells_mm3"] == [pytest.approx(1.0, abs=1e-3)]
    assert report["before"]["shells"] == 3 and report["after"]["shells"] == 2


def test_profiles_are_data_and_users_add_their_own(tmp_path):
    printers = profiles.printers()
    assert {"prusa-mk4", "formlabs-form3b", "stratasys-j5", "eos-p110"} <= set(printers)
    assert {p.technology for p in printers.values()} == {"FDM", "SLA", "PolyJet", "SLS"}
    (tmp_path / "printers").mkdir()
    (tmp_path / "printers" / "lab-big.json").write_text(
        json.dumps(
            {
                "name": "Lab big",
                "technology": "FDM",
                "build_volume_mm": [600, 600, 600],
                "min_wall_mm": 1,
                "min_feature_mm": 0.5,
                "default_material": "pla",
            }
        )
    )
    assert profiles.printer("lab-big", tmp_path).build_volume_mm == (600.0, 600.0, 600.0)
    with pytest.raises(profiles.ProfileError, match="not a printer profile"):
        profiles.printer("no-such-printer")


def test_cli_print_prep(tmp_path, capsys):
    from SurgicalPlanningLib.cli import main
    from VSPCoreLib import storage
    from VSPCoreLib.app import VSPApplication

    app = VSPApplication.create_headless()
    segmentation, _, _ = _asymmetric_segmentation(app)
    seg_file = storage.save_node(segmentation, tmp_path / "block.seg.nrrd")
    out = tmp_path / "out"
    code = main(
        [
            "-q",
            "print-prep",
            str(seg_file),
            "--profile",
            "prusa-mk4",
            "--no-slice",
            "--no-scene",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["parts"][0]["name"] == "block" and record["qa"]["passed"]
    assert (out / "stl" / "block.stl").is_file()
    # Bad profile, existing output: exit 2 with a message, nothing changed.
    assert main(["-q", "print-prep", str(seg_file), "--profile", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert "not a printer profile" in capsys.readouterr().err
    assert main(["-q", "print-prep", str(seg_file), "--profile", "prusa-mk4", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    _ = pipeline  # the module is the one the CLI uses


# --- speed-ups that must not move or change anything ---------------------------------------


def _oblique_l_segmentation(app):
    """An asymmetric L (its arm toward +j) on an oblique grid (rotated 30° about S, i running
    toward the patient's left) far from the origin, in a segmentation of its own."""
    import slicer
    from slicer.util import updateVolumeFromArray

    labels = np.zeros((30, 50, 60), np.uint8)
    labels[8:22, 10:20, 30:50] = 1
    labels[8:22, 20:42, 30:38] = 1
    volume = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "oblique")
    volume.SetSpacing(1.5, 1.2, 2.0)
    volume.SetOrigin(60.0, -140.0, 300.0)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    directions = np.array([[-c, -s, 0.0], [s, -c, 0.0], [0.0, 0.0, 1.0]])  # columns: i, j, k in RAS
    matrix = __import__("vtk").vtkMatrix4x4()
    for r in range(3):
        for col in range(3):
            matrix.SetElement(r, col, directions[r, col])
    volume.SetIJKToRASDirectionMatrix(matrix)
    updateVolumeFromArray(volume, labels)
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "oblique L")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(volume, segmentation)
    geometry = (labels, np.array([1.5, 1.2, 2.0]), directions, np.array([60.0, -140.0, 300.0]))
    return segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), geometry


def test_cropped_conversion_is_slicers_surface_in_the_same_place(app):
    """The part's labelmap is cropped to its bounding box (+2 voxels) before Slicer's converter:
    the surface is the one Slicer makes from the whole labelmap, vertex for vertex, in RAS."""
    import slicer

    from PrintPrepLib import surface

    segmentation, segment_id, (labels, spacing, directions, origin) = _oblique_l_segmentation(app)
    labelmap = surface.part_labelmap(segmentation, [segment_id], subject="L")
    assert labelmap.grid.array.shape == (14 + 4, 32 + 4, 20 + 4)  # cropped: k, j, i + margins
    assert labelmap.voxel_count == 14 * (10 * 20 + 22 * 8)
    ours, _ = surface.part_surface(
        labelmap, surface.SurfaceOptions(smoothing_factor=0.0, supersampling=1), subject="L"
    )
    segment_image = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(segment_id, segment_image)
    pad = __import__("vtk").vtkImageConstantPad()  # the whole 60 x 50 x 30 grid, as a scan's
    pad.SetInputData(segment_image)
    pad.SetOutputWholeExtent(0, 59, 0, 49, 0, 29)
    pad.Update()
    whole = slicer.vtkOrientedImageData()
    whole.ShallowCopy(pad.GetOutput())
    whole.CopyDirections(segment_image)
    assert whole.GetDimensions() == (60, 50, 30)
    bare = surface.polydata_to_trimesh(
        surface.labelmap_to_surface(whole, smoothing_factor=0.0, decimation_factor=0.0)
    )
    assert len(ours.faces) == len(bare.faces)
    np.testing.assert_allclose(ours.bounds, bare.bounds, atol=1e-6)
    np.testing.assert_allclose(np.sort(ours.vertices, axis=0), np.sort(bare.vertices, axis=0), atol=1e-6)
    # Where the voxels are, computed here from the grid's own geometry (not by Slicer): the
    # mesh's centroid is the voxels' centroid, so nothing was shifted or mirrored.
    k, j, i = np.nonzero(labels)
    voxels_ras = np.stack([i, j, k], axis=1) * spacing @ directions.T + origin
    np.testing.assert_allclose(ours.center_mass, voxels_ras.mean(axis=0), atol=0.3)


def test_supersampling_keeps_the_part_in_place_and_its_volume(app):
    from PrintPrepLib import surface

    segmentation, segment_id, _ = _oblique_l_segmentation(app)
    labelmap = surface.part_labelmap(segmentation, [segment_id], subject="L")
    coarse, _ = surface.part_surface(
        labelmap, surface.SurfaceOptions(smoothing_factor=0.0, supersampling=1), subject="L"
    )
    fine, step = surface.part_surface(
        labelmap, surface.SurfaceOptions(smoothing_factor=0.0, supersampling=3), subject="L"
    )
    assert step["parameters"]["supersampling"] == 3
    # The fine surface's voxel box is the coarse one's: the same outer faces, within a fine voxel.
    np.testing.assert_allclose(fine.bounds, coarse.bounds, atol=1.5 / 3 + 1e-6)
    np.testing.assert_allclose(fine.center_mass, coarse.center_mass, atol=0.2)
    # Corner cutting at a third of the voxel size: nearer the voxel volume than the coarse surface.
    assert abs(fine.volume - labelmap.volume_mm3) < abs(coarse.volume - labelmap.volume_mm3)
    assert abs(fine.volume / labelmap.volume_mm3 - 1.0) < 0.02


def test_self_intersections_counted_exactly():
    # Two triangles that cross (one edge of each through the other): one pair.
    vertices = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [2, 2, -5], [3, 3, 5], [8, -4, 0.5]], dtype=float)
    crossing = trimesh.Trimesh(vertices, [[0, 1, 2], [3, 4, 5]], process=False)
    assert repair.count_self_intersections(crossing) == 1
    apart = trimesh.Trimesh(
        vertices + np.array([[0, 0, 0]] * 3 + [[0, 0, 20]] * 3), [[0, 1, 2], [3, 4, 5]], process=False
    )
    assert repair.count_self_intersections(apart) == 0
    # A closed sphere has none; two overlapping spheres cross along a circle.
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    assert repair.count_self_intersections(sphere) == 0
    other = sphere.copy()
    other.apply_translation((7.0, 1.3, 0.7))
    both = trimesh.util.concatenate([sphere, other])
    count = repair.count_self_intersections(both)
    # The broad phase misses nothing: the same count as the exact test on every pair of faces.
    faces = both.faces
    a, b = np.triu_indices(len(faces), k=1)
    near = np.linalg.norm(both.triangles_center[a] - both.triangles_center[b], axis=1) < 6.0
    a, b = a[near], b[near]
    apart_faces = ~(faces[a][:, :, None] == faces[b][:, None, :]).any(axis=(1, 2))
    a, b = a[apart_faces], b[apart_faces]
    ta, tb = both.triangles[a], both.triangles[b]
    hit = np.zeros(len(a), bool)
    for first, second in ((ta, tb), (tb, ta)):
        for i, j in ((0, 1), (1, 2), (2, 0)):
            hit |= repair._segments_cross_triangles(first[:, i], first[:, j], *second.transpose(1, 0, 2))
    assert count == int(hit.sum()) > 20
    with pytest.raises(repair.RepairError, match="self-intersecting"):
        repair.repair(both)


def test_holes_filled_and_decimation_keeps_a_closed_solid():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=20.0)
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[1:], process=False)
    fixed, report = repair.repair(holed)
    assert report["before"]["boundary_edges"] == 3 and report["after"]["watertight"]
    assert fixed.volume == pytest.approx(sphere.volume, rel=1e-3)
    small = repair.decimate(sphere, 0.9)
    assert len(small.faces) == pytest.approx(0.1 * len(sphere.faces), rel=0.05)
    fixed, report = repair.repair(small)
    assert report["after"]["watertight"] and report["after"]["self_intersecting_face_pairs"] == 0
    assert fixed.volume == pytest.approx(sphere.volume, rel=0.01)
