"""The headless application and round trips through Slicer's storage nodes.

Every object is asymmetric (a blob on the patient's left, oblique geometry), so that a flipped
axis or a lost transform cannot pass unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from slicer.util import arrayFromVolume, updateVolumeFromArray, vtkMatrixFromArray

from VSPCoreLib import storage
from VSPCoreLib.errors import InputDataError, VSPError

# An oblique, non-isotropic IJK→RAS: rotated 20° about S and 10° about R, spacing 0.8/0.9/2.5 mm.
_a, _b = np.radians(20), np.radians(10)
_ROT = np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]]) @ np.array(
    [[1, 0, 0], [0, np.cos(_b), -np.sin(_b)], [0, np.sin(_b), np.cos(_b)]]
)
IJK_TO_RAS = np.eye(4)
IJK_TO_RAS[:3, :3] = _ROT @ np.diag([0.8, 0.9, 2.5])
IJK_TO_RAS[:3, 3] = [-30.5, 12.25, -80.0]

TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^7771000^Left"
    "~Anatomic codes - DICOM master list~^^~^^"
)


def asymmetric_array() -> np.ndarray:
    """[k, j, i] int16 with a bright blob near high i (one corner only) and a gradient."""
    k, j, i = np.mgrid[0:12, 0:20, 0:30]
    array = (i + 3 * j + 7 * k).astype(np.int16)
    array[3:6, 4:9, 20:27] = 1000
    return array


def add_volume(app, name="ct"):
    node = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    updateVolumeFromArray(node, asymmetric_array())
    node.SetIJKToRASMatrix(vtkMatrixFromArray(IJK_TO_RAS))
    node.CreateDefaultDisplayNodes()
    return node


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def blob_centre_ras(node) -> np.ndarray:
    """RAS centroid of the bright blob, through the node's own geometry."""
    k, j, i = np.nonzero(arrayFromVolume(node) >= 1000)
    ijk = np.array([i.mean(), j.mean(), k.mean(), 1.0])
    return (ijk_to_ras(node) @ ijk)[:3]


def add_segmentation(app, volume):
    seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segs")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lab")
    labels = np.zeros(asymmetric_array().shape, np.uint8)
    labels[3:6, 4:9, 20:27] = 1
    labels[6:10, 10:18, 2:8] = 2
    updateVolumeFromArray(labelmap, labels)
    labelmap.SetIJKToRASMatrix(vtkMatrixFromArray(IJK_TO_RAS))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    app.scene.RemoveNode(labelmap)
    segment = seg.GetSegmentation().GetNthSegment(0)
    segment.SetName("Left kidney")
    segment.SetColor(0.73, 0.35, 0.29)
    segment.SetTag("TerminologyEntry", TERMINOLOGY)
    return seg


def segment_tag(segment, key: str) -> str:
    value = vtk.reference("")
    assert segment.GetTag(key, value), f"segment has no {key} tag"
    return str(value)


def segment_voxels(seg, volume, index) -> np.ndarray:
    """The segment as a [k, j, i] array on the volume's grid, via Slicer's export logic."""
    segment_id = seg.GetSegmentation().GetNthSegmentID(index)
    labelmap = seg.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, labelmap, volume)
    array = arrayFromVolume(labelmap).copy()
    seg.GetScene().RemoveNode(labelmap)
    return array


# --- the application ---------------------------------------------------------------------------


def test_headless_application_builds_what_slicer_core_builds(app):
    scene = app.scene
    assert scene.GetFirstNodeByClass("vtkMRMLSelectionNode") is not None
    assert scene.GetFirstNodeByClass("vtkMRMLInteractionNode") is not None
    assert scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is not None
    assert scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems() > 10
    assert app.subject_hierarchy is not None
    for name in ("Volumes", "Models", "Markups", "Segmentations", "SubjectHierarchy", "Colors"):
        assert app.app_logic.GetModuleLogic(name) is app.logic(name)
    rules = {
        r.GetClassName() for r in slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules()
    }
    assert "vtkBinaryLabelmapToClosedSurfaceConversionRule" in rules
    assert "vtkClosedSurfaceToBinaryLabelmapConversionRule" in rules


def test_two_applications_have_independent_scenes():
    from VSPCoreLib.app import VSPApplication

    first, second = VSPApplication.create_headless(), VSPApplication.create_headless()
    first.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "only-here")
    assert second.scene.GetFirstNodeByName("only-here") is None


def test_closed_surface_conversion_works_headless(app):
    seg = add_segmentation(app, add_volume(app))
    assert seg.CreateClosedSurfaceRepresentation()
    polydata = vtk.vtkPolyData()
    seg.GetClosedSurfaceRepresentation(seg.GetSegmentation().GetNthSegmentID(0), polydata)
    assert polydata.GetNumberOfPoints() > 50
    # The surface sits where the blob is (RAS), not mirrored.
    centre = np.array(polydata.GetCenter())
    assert np.linalg.norm(centre - blob_centre_ras(app.scene.GetFirstNodeByName("ct"))) < 3.0


# --- volumes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_round_trip_keeps_voxels_and_geometry(app, tmp_path, suffix):
    volume = add_volume(app)
    path = storage.save_node(volume, tmp_path / f"ct{suffix}")
    loaded = storage.load_volume(app, path)
    np.testing.assert_array_equal(arrayFromVolume(loaded), asymmetric_array())
    np.testing.assert_allclose(ijk_to_ras(loaded), IJK_TO_RAS, atol=1e-4)
    np.testing.assert_allclose(blob_centre_ras(loaded), blob_centre_ras(volume), atol=1e-4)


def test_nrrd_on_disk_is_lps(app, tmp_path):
    """The file says LPS and its origin is the RAS origin with R and A negated."""
    path = storage.save_node(add_volume(app), tmp_path / "ct.nrrd")
    header = path.read_bytes()[:2000].decode("latin-1")
    assert "space: left-posterior-superior" in header
    origin = header.split("space origin: (")[1].split(")")[0]
    np.testing.assert_allclose([float(v) for v in origin.split(",")], [30.5, -12.25, -80.0], atol=1e-6)


def test_missing_and_unknown_files_give_clear_errors(app, tmp_path):
    with pytest.raises(InputDataError, match="no volume file here"):
        storage.load_volume(app, tmp_path / "absent.nrrd")
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    with pytest.raises(InputDataError, match="unknown file type"):
        storage.load_file(app, bogus)
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100 100 100\nencoding: raw\n\n" + b"\0" * 10
    )
    with pytest.raises(InputDataError, match="corrupt.nrrd"):
        storage.load_volume(app, corrupt)


def test_failed_save_leaves_the_previous_file_untouched(app, tmp_path):
    volume = add_volume(app)
    path = storage.save_node(volume, tmp_path / "ct.nrrd")
    before = path.read_bytes()
    empty = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")  # no image data
    with pytest.raises(VSPError, match="could not write"):
        storage.save_node(empty, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nrrd"]  # no partial file left behind


# --- segmentations ------------------------------------------------------------------------------


def test_segmentation_round_trip_keeps_segments_colours_and_terminology(app, tmp_path):
    volume = add_volume(app)
    seg = add_segmentation(app, volume)
    expected = [segment_voxels(seg, volume, n) for n in range(2)]
    path = storage.save_node(seg, tmp_path / "segs.seg.nrrd")
    loaded = storage.load_segmentation(app, path)
    segmentation = loaded.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "Left kidney"
    np.testing.assert_allclose(segment.GetColor(), (0.73, 0.35, 0.29), atol=1e-3)
    assert segment_tag(segment, "TerminologyEntry") == TERMINOLOGY
    for n in range(2):
        np.testing.assert_array_equal(segment_voxels(loaded, volume, n), expected[n])
    assert expected[0].sum() == 3 * 5 * 7


# --- models --------------------------------------------------------------------------------------


def _asymmetric_model(app):
    """A cone whose tip points to patient left (+L = −R) and up, away from the origin."""
    cone = vtk.vtkConeSource()
    cone.SetCenter(-40.0, 15.0, 60.0)
    cone.SetDirection(-1.0, 0.2, 0.5)
    cone.SetResolution(12)
    cone.Update()
    node = app.models_logic.AddModel(cone.GetOutput())
    return node


@pytest.mark.parametrize("suffix", [".stl", ".obj", ".vtk", ".ply"])
def test_model_is_written_in_lps_and_reloads_in_place(app, tmp_path, suffix):
    model = _asymmetric_model(app)
    ras = slicer.util.arrayFromModelPoints(model).copy()
    path = storage.save_node(model, tmp_path / f"cone{suffix}")
    # Read the raw file with plain VTK: the coordinates on disk are LPS.
    reader = {
        ".stl": vtk.vtkSTLReader,
        ".obj": vtk.vtkOBJReader,
        ".vtk": vtk.vtkPolyDataReader,
        ".ply": vtk.vtkPLYReader,
    }[suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    raw = vtk.util.numpy_support.vtk_to_numpy(reader.GetOutput().GetPoints().GetData())
    assert np.allclose(np.sort(raw[:, 0]), np.sort(-ras[:, 0]), atol=1e-4)  # R → L
    assert np.allclose(np.sort(raw[:, 2]), np.sort(ras[:, 2]), atol=1e-4)  # S stays S
    if suffix in (".stl", ".obj", ".vtk"):
        assert b"SPACE=LPS" in path.read_bytes()[:400]
    loaded = storage.load_model(app, path)
    reloaded = slicer.util.arrayFromModelPoints(loaded)
    np.testing.assert_allclose(np.sort(reloaded, axis=0), np.sort(ras, axis=0), atol=1e-4)


def test_model_file_without_header_follows_the_requested_system(app, tmp_path):
    """An STL from another tool has no SPACE= header: the caller says what it is."""
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(50.0, -20.0, 5.0)
    sphere.Update()
    writer = vtk.vtkSTLWriter()
    writer.SetInputData(sphere.GetOutput())
    path = tmp_path / "foreign.stl"
    writer.SetFileName(str(path))
    writer.Write()
    lps = storage.load_model(app, path)  # default: files are LPS
    ras = storage.load_model(app, path, coordinate_system=storage.RAS)
    np.testing.assert_allclose(lps.GetPolyData().GetCenter(), (-50.0, 20.0, 5.0), atol=1e-3)
    np.testing.assert_allclose(ras.GetPolyData().GetCenter(), (50.0, -20.0, 5.0), atol=1e-3)


# --- markups -------------------------------------------------------------------------------------


def test_markups_round_trip_in_ras(app, tmp_path):
    plane = app.markups_logic.AddNewMarkupsNode("vtkMRMLMarkupsPlaneNode", "cut")
    plane.SetCenter(35.0, -12.0, 40.0)
    plane.SetNormal(0.6, 0.0, 0.8)
    points = app.markups_logic.AddNewMarkupsNode("vtkMRMLMarkupsFiducialNode", "seeds")
    points.AddControlPoint(-25.0, 10.0, -5.0, "tumour")
    storage.save_node(plane, tmp_path / "cut.mrk.json")
    storage.save_node(points, tmp_path / "seeds.mrk.json")
    assert '"coordinateSystem": "LPS"' in (tmp_path / "seeds.mrk.json").read_text()
    plane2 = storage.load_markups(app, tmp_path / "cut.mrk.json")
    points2 = storage.load_markups(app, tmp_path / "seeds.mrk.json")
    np.testing.assert_allclose(plane2.GetCenter(), (35.0, -12.0, 40.0), atol=1e-4)
    np.testing.assert_allclose(plane2.GetNormal(), (0.6, 0.0, 0.8), atol=1e-4)
    position = [0.0, 0.0, 0.0]
    points2.GetNthControlPointPosition(0, position)
    np.testing.assert_allclose(position, (-25.0, 10.0, -5.0), atol=1e-4)
    assert points2.GetNthControlPointLabel(0) == "tumour"


# --- scenes --------------------------------------------------------------------------------------


def _populate(app):
    volume = add_volume(app)
    add_segmentation(app, volume)
    _asymmetric_model(app).SetName("cone")
    plane = app.markups_logic.AddNewMarkupsNode("vtkMRMLMarkupsPlaneNode", "cut")
    plane.SetCenter(35.0, -12.0, 40.0)
    return volume


@pytest.mark.parametrize("suffix", [".mrml", ".mrb"])
def test_scene_round_trip_keeps_every_node_geometry_and_terminology(tmp_path, suffix):
    from VSPCoreLib.app import VSPApplication

    first = VSPApplication.create_headless()
    volume = _populate(first)
    blob = blob_centre_ras(volume)
    path = storage.save_scene(first, tmp_path / f"scene{suffix}")

    second = VSPApplication.create_headless()
    storage.load_scene(second, path)
    scene = second.scene

    def data_nodes(app):
        return sorted((n.GetClassName(), n.GetName()) for n in storage.storable_nodes(app.scene))

    assert data_nodes(second) == data_nodes(first)  # every data node, none lost, none doubled
    assert len(data_nodes(first)) == 4
    loaded = scene.GetFirstNodeByName("ct")
    np.testing.assert_array_equal(arrayFromVolume(loaded), asymmetric_array())
    np.testing.assert_allclose(ijk_to_ras(loaded), IJK_TO_RAS, atol=1e-4)
    np.testing.assert_allclose(blob_centre_ras(loaded), blob, atol=1e-4)
    seg = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    assert segment_tag(seg.GetSegmentation().GetNthSegment(0), "TerminologyEntry") == TERMINOLOGY
    cone = scene.GetFirstNodeByName("cone")
    np.testing.assert_allclose(
        cone.GetPolyData().GetCenter(),
        first.scene.GetFirstNodeByName("cone").GetPolyData().GetCenter(),
        atol=1e-4,
    )
    plane = scene.GetFirstNodeByName("cut")
    np.testing.assert_allclose(plane.GetCenter(), (35.0, -12.0, 40.0), atol=1e-4)


def test_scene_with_a_missing_data_file_is_an_error(app, tmp_path):
    _populate(app)
    path = storage.save_scene(app, tmp_path / "scene.mrml")
    (tmp_path / "Data" / "scene_ct.nrrd").unlink()  # data files are named after their scene
    from VSPCoreLib.app import VSPApplication

    with pytest.raises(InputDataError, match="scene.mrml"):
        storage.load_scene(VSPApplication.create_headless(), path)
