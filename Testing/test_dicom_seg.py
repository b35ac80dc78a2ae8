"""DICOM SEG export and import (CasePortalConnectorLib.dicom_objects.seg).

Real data: dcmqi's liver and partial-overlap SEGs on three real CT slices, and the sample case
(a synthetic CT series with its ground-truth segmentation) exported by us and imported back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import vtk
from slicer.util import arrayFromVolume

from CasePortalConnectorLib.dicom_objects import AlgorithmInfo, export_seg, import_seg
from CasePortalConnectorLib.dicom_objects.seg import (
    ALGORITHM_TYPE_TAG,
    IMPORT_WARNINGS_ATTRIBUTE,
    LABELMAP_SEG_STORAGE,
    SEG_STORAGE,
)
from CasePortalConnectorLib.errors import ConnectorError, DicomObjectError
from SurgicalPlanningLib.sample_case import create_sample_case, load_sample_case
from SurgicalPlanningLib.structures import structure_key_of_segment
from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import (
    GridArray,
    grid_array_to_oriented_image,
    segment_mask,
    volume_ijk_to_ras,
)
from VSPCoreLib.dicom import load_series
from VSPCoreLib.terminology import TERMINOLOGY_CONTEXT, parse_terminology_entry

LIVER_VOXELS = 107_098
#: A few structures of the sample case, chosen to include the tumour, the spine and laterality.
SAMPLE_KEYS = ("spine", "tumour", "kidney_left_cortex", "kidney_right_cortex", "liver", "aorta")
DCIODVFY = shutil.which("dciodvfy")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def tag(segment, name: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def segments_by_name(node) -> dict[str, str]:
    """{segment name: segment ID}."""
    segmentation = node.GetSegmentation()
    return {
        segmentation.GetNthSegment(n).GetName(): segmentation.GetNthSegmentID(n)
        for n in range(segmentation.GetNumberOfSegments())
    }


def mask_on(node, segment_id: str, volume) -> np.ndarray:
    """The segment on the volume's whole grid (Slicer's own resampling, nearest neighbour)."""
    return segment_mask(node, segment_id, reference_volume=volume, crop=False).array.astype(bool)


def ids_for_keys(node, keys) -> list[str]:
    segmentation = node.GetSegmentation()
    by_key = {
        structure_key_of_segment(segmentation.GetNthSegment(n)): segmentation.GetNthSegmentID(n)
        for n in range(segmentation.GetNumberOfSegments())
    }
    return [by_key[key] for key in keys]


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def centroid_ras(node, segment_id: str) -> np.ndarray:
    grid = segment_mask(node, segment_id)
    k, j, i = np.nonzero(grid.array)
    return grid.ras_of(np.stack([i, j, k], axis=1).mean(axis=0))


def assert_round_trip(original, imported, ids, volume, *, context: str | None = None) -> None:
    """Every segment: same voxels on the CT grid, name, codes, colour, algorithm type."""
    source = original.GetSegmentation()
    back = segments_by_name(imported)
    assert imported.GetSegmentation().GetNumberOfSegments() == len(ids)
    for segment_id in ids:
        segment = source.GetSegment(segment_id)
        name = segment.GetName()
        assert name in back, f"segment {name!r} lost"
        copy = imported.GetSegmentation().GetSegment(back[name])
        expected = mask_on(original, segment_id, volume)
        got = mask_on(imported, back[name], volume)
        assert expected.sum() > 0
        assert np.array_equal(expected, got), f"{name}: {int((expected != got).sum())} voxels differ"
        entry, entry_back = tag(segment, "TerminologyEntry"), tag(copy, "TerminologyEntry")
        codes, codes_back = parse_terminology_entry(entry), parse_terminology_entry(entry_back)
        for field in ("category", "type", "modifier", "region", "region_modifier"):
            assert codes[field] == codes_back[field], f"{name}: {field} {codes[field]} != {codes_back[field]}"
        if context is not None:
            assert entry_back == entry
        assert np.allclose(segment.GetColor(), copy.GetColor(), atol=1.0 / 255 + 1e-9), name
        assert tag(copy, ALGORITHM_TYPE_TAG) == "MANUAL"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_case(tmp_path_factory):
    return create_sample_case(tmp_path_factory.mktemp("seg-case"), shape=(96, 96, 48), seed=3)


@pytest.fixture
def loaded(app, sample_case):
    return load_sample_case(app, sample_case.case_dir)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sample_case):
    """The sample case's six chosen segments exported once (BINARY), with the app that holds them."""
    app = VSPApplication.create_headless()
    case = load_sample_case(app, sample_case.case_dir)
    ids = ids_for_keys(case.segmentation_node, SAMPLE_KEYS)
    path = export_seg(
        case.segmentation_node,
        sample_case.dicom_dir,
        tmp_path_factory.mktemp("seg") / "six.dcm",
        segment_ids=ids,
    )
    return {"app": app, "case": case, "ids": ids, "path": path, "dicom_dir": sample_case.dicom_dir}


@pytest.fixture
def ct3(app, dcmqi_dir):
    volume, _ = load_series(app.scene, dcmqi_dir / "ct-3slice")
    return volume


# --------------------------------------------------------------------------------------------
# Import of dcmqi's SEGs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_reference", [False, True], ids=["own-geometry", "on-ct"])
def test_liver_seg_equals_the_nrrd_voxel_for_voxel(app, dcmqi_dir, with_reference):
    reference = load_series(app.scene, dcmqi_dir / "ct-3slice")[0] if with_reference else None
    node = import_seg(app, dcmqi_dir / "liver.dcm", reference_volume=reference)
    truth = storage.load_volume(app, dcmqi_dir / "liver_seg.nrrd", labelmap=True)
    names = segments_by_name(node)
    assert list(names) == ["Liver"]
    got = mask_on(node, names["Liver"], truth)
    expected = arrayFromVolume(truth) > 0
    assert expected.sum() == LIVER_VOXELS
    assert got.sum() == LIVER_VOXELS
    assert np.array_equal(got, expected)
    # On its own geometry the grid is the three CT slices; on the CT, it is the CT's grid.
    image = node.GetSegmentation().GetSegment(names["Liver"]).GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(ijk_to_ras, volume_ijk_to_ras(truth), atol=1e-4)
    assert (
        node.GetAttribute("DICOM.FrameOfReferenceUID")
        == pydicom.dcmread(dcmqi_dir / "liver.dcm").FrameOfReferenceUID
    )
    assert node.GetAttribute(IMPORT_WARNINGS_ATTRIBUTE) is None


def test_liver_seg_restores_name_colour_codes(app, dcmqi_dir):
    node = import_seg(app, dcmqi_dir / "liver.dcm")
    segment = node.GetSegmentation().GetNthSegment(0)
    entry = parse_terminology_entry(tag(segment, "TerminologyEntry"))
    assert (entry["category"].meaning, entry["type"].meaning) == ("Tissue", "Liver")
    assert entry["modifier"] is None and entry["region"] is None
    assert tag(segment, ALGORITHM_TYPE_TAG) == "SEMIAUTOMATIC"
    # dcmqi wrote RGB (221, 130, 101) as CIELab (41661, 41167, 40792).
    assert np.allclose(np.array(segment.GetColor()) * 255, (221, 130, 101), atol=0.51)


def test_partial_overlaps_keeps_five_overlapping_segments(app, dcmqi_dir, ct3):
    node = import_seg(app, dcmqi_dir / "partial_overlaps.dcm", reference_volume=ct3)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 5
    assert segmentation.GetNumberOfLayers() >= 2, "overlapping segments must not share one labelmap layer"
    # Truth: the three NRRDs dcmqi built it from; labelID -> SegmentLabel from its metadata JSON.
    meta = json.loads((dcmqi_dir / "doc_examples" / "seg-example_partial_overlaps.json").read_text())
    names = segments_by_name(node)
    stacked = []
    for file_index, attributes in enumerate(meta["segmentAttributes"], start=1):
        labels = arrayFromVolume(
            storage.load_volume(app, dcmqi_dir / f"partial_overlaps-{file_index}.nrrd", labelmap=True)
        )
        for attribute in attributes:
            expected = labels == attribute["labelID"]
            got = mask_on(node, names[attribute["SegmentLabel"]], ct3)
            assert expected.sum() > 0
            assert np.array_equal(got, expected), attribute["SegmentLabel"]
            stacked.append(got)
    coverage = np.sum(stacked, axis=0)
    assert int((coverage >= 2).sum()) > 1000, "the overlap voxels must be in two segments"
    # GREEN and ORANGE overlap on the middle slice: those voxels are in both.
    green, orange = mask_on(node, names["GREEN"], ct3), mask_on(node, names["ORANGE"], ct3)
    assert int((green & orange).sum()) > 0


# --------------------------------------------------------------------------------------------
# Export of the sample case and import back
# --------------------------------------------------------------------------------------------


def test_sample_case_export_references_the_source_series(exported, sample_case):
    ds = pydicom.dcmread(exported["path"])
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(sample_case.dicom_dir.iterdir())]
    assert ds.SOPClassUID == SEG_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in source
    }
    assert len(ds.SegmentSequence) == len(SAMPLE_KEYS)
    tumour = next(d for d in ds.SegmentSequence if d.SegmentLabel == "Renal tumour, left")
    assert tumour.AnatomicRegionSequence[0].CodeValue == "64033007"
    assert tumour.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == "7771000"
    cortex = next(d for d in ds.SegmentSequence if d.SegmentLabel == "Renal cortex, left")
    modifier = cortex.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeValue == "7771000"
    assert all(d.SegmentAlgorithmType == "MANUAL" for d in ds.SegmentSequence)
    assert all("SegmentationAlgorithmIdentificationSequence" not in d for d in ds.SegmentSequence)
    # Every frame sits exactly on the source slice it names.
    positions = {s.SOPInstanceUID: [float(v) for v in s.ImagePositionPatient] for s in source}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, positions[uid], atol=1e-4)


def test_sample_case_round_trip_is_identical(exported):
    app, case = exported["app"], exported["case"]
    node = import_seg(app, exported["path"], reference_volume=case.volume_node)
    assert_round_trip(case.segmentation_node, node, exported["ids"], case.volume_node)
    assert node.GetAttribute(IMPORT_WARNINGS_ATTRIBUTE) is None


def test_round_trip_keeps_the_terminology_entry_byte_for_byte(exported):
    app, case = exported["app"], exported["case"]
    node = import_seg(
        app, exported["path"], reference_volume=case.volume_node, terminology_context=TERMINOLOGY_CONTEXT
    )
    assert_round_trip(
        case.segmentation_node, node, exported["ids"], case.volume_node, context=TERMINOLOGY_CONTEXT
    )


def test_seg_without_its_source_series_imports_on_its_own_geometry(exported):
    app, case = exported["app"], exported["case"]
    node = import_seg(app, exported["path"])
    assert_round_trip(case.segmentation_node, node, exported["ids"], case.volume_node)
    # Its own grid: the CT's spacing and axes (the frames are CT slices), k along the normal.
    image = node.GetSegmentation().GetNthSegment(0).GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    own = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(own[:3, :3], volume_ijk_to_ras(case.volume_node)[:3, :3], atol=1e-6)


def test_tumour_stays_on_the_patients_left_after_export_and_import(exported):
    app, case = exported["app"], exported["case"]
    for reference in (case.volume_node, None):
        node = import_seg(app, exported["path"], reference_volume=reference)
        names = segments_by_name(node)
        tumour = centroid_ras(node, names["Renal tumour, left"])
        spine = centroid_ras(node, names["Vertebral column"])
        assert tumour[0] < spine[0] - 10.0, f"tumour R {tumour[0]:.1f} mm, spine R {spine[0]:.1f} mm"
        # And both sit where they were before export (RAS, mm).
        before = centroid_ras(case.segmentation_node, exported["ids"][SAMPLE_KEYS.index("tumour")])
        assert np.allclose(tumour, before, atol=1e-3)


def test_round_trip_with_source_instances_in_reversed_order(app, sample_case, tmp_path):
    # Copy the series with file names and InstanceNumbers reversed relative to the position.
    files = sorted(sample_case.dicom_dir.iterdir())
    reversed_dir = tmp_path / "reversed"
    reversed_dir.mkdir()
    copies = []
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = len(files) - n
        target = reversed_dir / f"{len(files) - n:04d}.dcm"
        ds.save_as(target)
        copies.append(target)
    case = load_sample_case(app, sample_case.case_dir)
    ids = ids_for_keys(case.segmentation_node, SAMPLE_KEYS)
    out = tmp_path / "reversed.dcm"
    # Files handed over in reverse slice order.
    export_seg(case.segmentation_node, list(reversed(copies)), out, segment_ids=ids)
    node = import_seg(app, out, reference_volume=case.volume_node)
    assert_round_trip(case.segmentation_node, node, ids, case.volume_node)
    # Also when the CT itself is loaded from the reversed copy.
    ct, _ = load_series(app.scene, reversed_dir)
    node = import_seg(app, out, reference_volume=ct)
    assert_round_trip(case.segmentation_node, node, ids, case.volume_node)


def test_all_segments_round_trip(app, sample_case, tmp_path):
    case = load_sample_case(app, sample_case.case_dir)
    out = export_seg(case.segmentation_node, sample_case.dicom_dir, tmp_path / "all.dcm")
    node = import_seg(app, out, reference_volume=case.volume_node)
    segmentation = case.segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    assert len(ids) > 30
    assert_round_trip(case.segmentation_node, node, ids, case.volume_node)


@pytest.mark.skipif(
    DCIODVFY is None and not os.environ.get("CI"), reason="dciodvfy (dicom3tools) is not installed"
)
def test_dciodvfy_reports_no_errors_on_our_export(exported):
    errors = dciodvfy_errors(exported["path"])
    assert not errors, "\n".join(errors)


@pytest.mark.skipif(
    DCIODVFY is None and not os.environ.get("CI"), reason="dciodvfy (dicom3tools) is not installed"
)
@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL"])
def test_dciodvfy_reports_no_errors_with_algorithm_identification(exported, tmp_path, seg_type):
    algorithm = AlgorithmInfo(name="TinyNet", version="1.2.3", type="AUTOMATIC", source="SlicerVSP tests")
    out = export_seg(
        exported["case"].segmentation_node,
        exported["dicom_dir"],
        tmp_path / f"{seg_type}.dcm",
        segment_ids=exported["ids"][:2],
        algorithm=algorithm,
        seg_type=seg_type,
    )
    errors = dciodvfy_errors(out)
    assert not errors, "\n".join(errors)


@pytest.mark.skipif(
    DCIODVFY is None and not os.environ.get("CI"), reason="dciodvfy (dicom3tools) is not installed"
)
def test_export_on_real_ct_round_trips_and_validates(app, dcmqi_dir, ct3, tmp_path):
    liver = import_seg(app, dcmqi_dir / "partial_overlaps.dcm", reference_volume=ct3)
    out = export_seg(liver, dcmqi_dir / "ct-3slice", tmp_path / "again.dcm")
    errors = dciodvfy_errors(out)
    assert not errors, "\n".join(errors)
    back = import_seg(app, out, reference_volume=ct3)
    segmentation = liver.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    source, again = segments_by_name(liver), segments_by_name(back)
    assert list(source) == list(again)
    for name in source:
        assert np.array_equal(mask_on(liver, source[name], ct3), mask_on(back, again[name], ct3)), name
    assert len(ids) == 5 and pydicom.dcmread(out).SegmentsOverlap == "YES"


# --------------------------------------------------------------------------------------------
# Types, algorithms, overlaps, geometry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seg_type, sop_class", [("FRACTIONAL", SEG_STORAGE), ("LABELMAP", LABELMAP_SEG_STORAGE)]
)
def test_fractional_and_labelmap_round_trip(exported, tmp_path, seg_type, sop_class):
    app, case = exported["app"], exported["case"]
    out = export_seg(
        case.segmentation_node,
        exported["dicom_dir"],
        tmp_path / "x.dcm",
        segment_ids=exported["ids"],
        seg_type=seg_type,
    )
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == sop_class and ds.SegmentationType == seg_type
    node = import_seg(app, out, reference_volume=case.volume_node)
    assert_round_trip(case.segmentation_node, node, exported["ids"], case.volume_node)
    warnings_text = node.GetAttribute(IMPORT_WARNINGS_ATTRIBUTE) or ""
    assert ("0.5" in warnings_text) == (seg_type == "FRACTIONAL")


def add_mask_segment(node, volume, mask: np.ndarray, name: str) -> str:
    image = grid_array_to_oriented_image(GridArray(mask.astype(np.uint8), volume_ijk_to_ras(volume)))
    return node.AddSegmentFromBinaryLabelmapRepresentation(image, name, (0.2, 0.4, 0.9))


def test_overlapping_segments_stay_overlapping(loaded, app, sample_case, tmp_path):
    from scipy import ndimage

    case = loaded
    tumour_id, cortex_id = ids_for_keys(case.segmentation_node, ("tumour", "kidney_left_cortex"))
    tumour = mask_on(case.segmentation_node, tumour_id, case.volume_node)
    zone = ndimage.binary_dilation(tumour, iterations=3)  # overlaps tumour and cortex
    zone_id = add_mask_segment(case.segmentation_node, case.volume_node, zone, "Resection zone")
    cortex = mask_on(case.segmentation_node, cortex_id, case.volume_node)
    assert (zone & cortex).sum() > 0
    ids = [tumour_id, zone_id, cortex_id]
    out = export_seg(case.segmentation_node, sample_case.dicom_dir, tmp_path / "overlap.dcm", segment_ids=ids)
    assert pydicom.dcmread(out).SegmentsOverlap == "YES"
    node = import_seg(app, out, reference_volume=case.volume_node)
    assert node.GetSegmentation().GetNumberOfLayers() >= 2
    names = segments_by_name(node)
    zone_back = mask_on(node, names["Resection zone"], case.volume_node)
    tumour_back = mask_on(node, names["Renal tumour, left"], case.volume_node)
    assert np.array_equal(zone_back, zone) and np.array_equal(tumour_back, tumour)
    assert (zone_back & tumour_back).sum() == tumour.sum() > 0
    # A segment without terminology is exported as Tissue.
    entry = parse_terminology_entry(
        tag(node.GetSegmentation().GetSegment(names["Resection zone"]), "TerminologyEntry")
    )
    assert entry["type"].value == "85756007"
    with pytest.raises(DicomObjectError, match="overlapping"):
        export_seg(
            case.segmentation_node,
            sample_case.dicom_dir,
            tmp_path / "lm.dcm",
            segment_ids=ids,
            seg_type="LABELMAP",
        )


def test_algorithm_identification_and_per_segment_type(loaded, sample_case, tmp_path):
    node = loaded.segmentation_node
    spine_id, liver_id = ids_for_keys(node, ("spine", "liver"))
    node.GetSegmentation().GetSegment(liver_id).SetTag(ALGORITHM_TYPE_TAG, "MANUAL")
    algorithm = AlgorithmInfo(name="TinyNet", version="1.2.3", type="AUTOMATIC")
    out = export_seg(
        node, sample_case.dicom_dir, tmp_path / "a.dcm", segment_ids=[spine_id, liver_id], algorithm=algorithm
    )
    spine, liver = pydicom.dcmread(out).SegmentSequence
    assert spine.SegmentAlgorithmType == "AUTOMATIC" and spine.SegmentAlgorithmName == "TinyNet"
    identification = spine.SegmentationAlgorithmIdentificationSequence[0]
    assert (identification.AlgorithmName, identification.AlgorithmVersion) == ("TinyNet", "1.2.3")
    assert identification.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    assert (
        liver.SegmentAlgorithmType == "MANUAL" and "SegmentationAlgorithmIdentificationSequence" not in liver
    )
    # Without an algorithm an AUTOMATIC segment cannot be described.
    node.GetSegmentation().GetSegment(spine_id).SetTag(ALGORITHM_TYPE_TAG, "AUTOMATIC")
    with pytest.raises(DicomObjectError, match="no algorithm"):
        export_seg(node, sample_case.dicom_dir, tmp_path / "b.dcm", segment_ids=[spine_id])
    with pytest.raises(DicomObjectError):
        AlgorithmInfo(name="x", version="1", type="GUESSED")


def test_algorithm_survives_import_and_re_export(app, loaded, sample_case, dcmqi_dir, ct3, tmp_path):
    spine_id = ids_for_keys(loaded.segmentation_node, ("spine",))
    algorithm = AlgorithmInfo(name="TinyNet", version="1.2.3", type="AUTOMATIC")
    first = export_seg(
        loaded.segmentation_node,
        sample_case.dicom_dir,
        tmp_path / "1.dcm",
        segment_ids=spine_id,
        algorithm=algorithm,
    )
    imported = import_seg(app, first, reference_volume=loaded.volume_node)
    segment = imported.GetSegmentation().GetNthSegment(0)
    assert tag(segment, ALGORITHM_TYPE_TAG) == "AUTOMATIC"
    assert tag(segment, "SlicerVSP.AlgorithmFamily") == "DCM^123110^Artificial Intelligence"
    second = export_seg(imported, sample_case.dicom_dir, tmp_path / "2.dcm")  # no algorithm given
    description = pydicom.dcmread(second).SegmentSequence[0]
    assert description.SegmentAlgorithmType == "AUTOMATIC"
    assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "1.2.3"
    # dcmqi's liver is SEMIAUTOMATIC with a name but no version: re-export needs the algorithm.
    liver = import_seg(app, dcmqi_dir / "liver.dcm", reference_volume=ct3)
    with pytest.raises(DicomObjectError, match="SEMIAUTOMATIC but no algorithm"):
        export_seg(liver, dcmqi_dir / "ct-3slice", tmp_path / "3.dcm")


def test_empty_slices_are_not_stored_and_come_back_as_zeros(app, ct3, dcmqi_dir, tmp_path):
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "boxes")
    node.SetReferenceImageGeometryParameterFromVolumeNode(ct3)
    mask = np.zeros((3, 512, 512), bool)
    mask[0, 100:140, 300:320] = True  # asymmetric boxes on the first and last slice only
    mask[2, 200:210, 50:90] = True
    segment_id = add_mask_segment(node, ct3, mask, "Boxes")
    out = export_seg(node, dcmqi_dir / "ct-3slice", tmp_path / "boxes.dcm")
    assert int(pydicom.dcmread(out).NumberOfFrames) == 2
    back = import_seg(app, out)  # no source series: the SEG's own grid
    image = back.GetSegmentation().GetNthSegment(0).GetRepresentation("Binary labelmap")
    assert image.GetExtent()[4:] == (0, 2)
    got = mask_on(back, back.GetSegmentation().GetNthSegmentID(0), ct3)
    assert np.array_equal(got, mask) and not got[1].any()
    assert segment_id


def test_reference_grid_that_differs_is_resampled_with_a_warning(app, dcmqi_dir):
    coarse = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "coarse")
    image = vtk.vtkImageData()
    image.SetDimensions(256, 256, 3)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    coarse.SetAndObserveImageData(image)
    coarse.SetSpacing(2 * 0.810547, 2 * 0.810547, 1.0)
    coarse.SetOrigin(235.199997, 226.800003, -128.690002)  # RAS of the CT's first voxel
    coarse.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)
    node = import_seg(app, dcmqi_dir / "liver.dcm", reference_volume=coarse)
    text = node.GetAttribute(IMPORT_WARNINGS_ATTRIBUTE)
    assert "resampled by nearest neighbour" in text and "Frame of Reference" in text
    count = int(mask_on(node, node.GetSegmentation().GetNthSegmentID(0), coarse).sum())
    assert abs(count - LIVER_VOXELS / 4) < 0.02 * LIVER_VOXELS / 4


def test_frame_of_reference_mismatch_is_refused_unless_allowed(app, dcmqi_dir, ct3):
    ct3.SetAttribute("DICOM.FrameOfReferenceUID", "1.2.826.0.1.3680043.8.498.1")
    with pytest.raises(DicomObjectError, match="Frame of Reference") as caught:
        import_seg(app, dcmqi_dir / "liver.dcm", reference_volume=ct3)
    assert caught.value.subject == str(dcmqi_dir / "liver.dcm") and caught.value.fix
    assert app.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    node = import_seg(
        app, dcmqi_dir / "liver.dcm", reference_volume=ct3, allow_frame_of_reference_mismatch=True
    )
    assert "Frame of Reference" in node.GetAttribute(IMPORT_WARNINGS_ATTRIBUTE)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_non_seg_dicom_is_refused_clearly(app, dcmqi_dir):
    path = dcmqi_dir / "ct-3slice" / "01.dcm"
    with pytest.raises(DicomObjectError, match="CT Image Storage, not a DICOM Segmentation") as caught:
        import_seg(app, path)
    assert caught.value.subject == str(path)
    assert isinstance(caught.value, ConnectorError) and str(caught.value).startswith(f"{path}: ")
    assert "Fix:" in str(caught.value)


def test_non_dicom_and_missing_files_are_refused(app, dcmqi_dir, tmp_path):
    with pytest.raises(DicomObjectError, match="not a DICOM file"):
        import_seg(app, dcmqi_dir / "liver_seg.nrrd")
    with pytest.raises(DicomObjectError, match="no such file"):
        import_seg(app, tmp_path / "absent.dcm")


@pytest.mark.parametrize(
    "keep", [100, 200, 3000, -1000, -1], ids=["preamble", "meta", "header", "pixels", "last-byte"]
)
def test_truncated_seg_is_refused_naming_the_file(app, dcmqi_dir, tmp_path, keep):
    data = (dcmqi_dir / "liver.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:keep])
    with pytest.raises(DicomObjectError) as caught:
        import_seg(app, path)
    assert caught.value.subject == str(path)
    assert any(word in caught.value.message for word in ("truncated", "damaged", "incomplete")), (
        caught.value.message
    )
    assert app.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_unsupported_transfer_syntax_is_refused(app, dcmqi_dir, tmp_path):
    ds = pydicom.dcmread(dcmqi_dir / "liver.dcm")
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xd9"] * int(ds.NumberOfFrames))
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path)
    with pytest.raises(DicomObjectError, match="transfer syntax JPEG Baseline") as caught:
        import_seg(app, path)
    assert caught.value.subject == str(path)


def test_seg_without_segments_is_refused(app, dcmqi_dir, tmp_path):
    ds = pydicom.dcmread(dcmqi_dir / "liver.dcm")
    ds.SegmentSequence = []
    path = tmp_path / "empty.dcm"
    ds.save_as(path)
    with pytest.raises(DicomObjectError, match="no segments") as caught:
        import_seg(app, path)
    assert caught.value.subject == str(path)


def test_export_errors_are_clear(loaded, sample_case, dcmqi_dir, tmp_path):
    node = loaded.segmentation_node
    with pytest.raises(DicomObjectError, match="no segment with ID"):
        export_seg(node, sample_case.dicom_dir, tmp_path / "x.dcm", segment_ids=["nope"])
    with pytest.raises(DicomObjectError, match="no such file or folder"):
        export_seg(node, tmp_path / "absent", tmp_path / "x.dcm")
    # The wrong series: another Frame of Reference than the CT the segmentation was made on.
    with pytest.raises(DicomObjectError, match="Frame of Reference") as caught:
        export_seg(node, dcmqi_dir / "ct-3slice", tmp_path / "x.dcm")
    assert caught.value.subject == node.GetName()
    # Without a known frame of reference, a segmentation that misses the series entirely.
    far = node.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", "far away")
    ijk_to_ras = volume_ijk_to_ras(loaded.volume_node)
    ijk_to_ras[:3, 3] += (0.0, 0.0, 5000.0)
    box = np.zeros((4, 4, 4), np.uint8)
    box[1:3, 1:3, 1:3] = 1
    far.AddSegmentFromBinaryLabelmapRepresentation(
        grid_array_to_oriented_image(GridArray(box, ijk_to_ras)), "box"
    )
    with pytest.raises(DicomObjectError, match="no voxel"):
        export_seg(far, sample_case.dicom_dir, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_failed_write_leaves_the_old_file_and_no_partial_file(loaded, sample_case, tmp_path, monkeypatch):
    import highdicom

    target = tmp_path / "out.dcm"
    target.write_bytes(b"old")

    def broken_save(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(highdicom.seg.Segmentation, "save_as", broken_save)
    ids = ids_for_keys(loaded.segmentation_node, ("spine",))
    with pytest.raises(DicomObjectError, match="could not be written"):
        export_seg(loaded.segmentation_node, sample_case.dicom_dir, target, segment_ids=ids)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dcm"]


def test_no_patient_names_or_ids_in_logs_or_warnings(
    app, loaded, sample_case, dcmqi_dir, tmp_path, caplog, recwarn
):
    caplog.set_level(logging.DEBUG)
    identities = set()
    for path in (next(sample_case.dicom_dir.iterdir()), dcmqi_dir / "ct-3slice" / "01.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identities |= {str(ds.PatientName), str(ds.PatientID)} - {""}
    ids = ids_for_keys(loaded.segmentation_node, SAMPLE_KEYS[:2])
    out = export_seg(loaded.segmentation_node, sample_case.dicom_dir, tmp_path / "a.dcm", segment_ids=ids)
    import_seg(app, out)
    liver = import_seg(app, dcmqi_dir / "liver.dcm")
    algorithm = AlgorithmInfo(name="SlicerEditor", version="4", type="SEMIAUTOMATIC")
    export_seg(liver, dcmqi_dir / "ct-3slice", tmp_path / "b.dcm", algorithm=algorithm)  # real data
    texts = caplog.text + "\n".join(str(w.message) for w in recwarn)
    assert identities and caplog.records
    for identity in identities:
        assert identity not in texts


def test_empty_segment_is_described_and_comes_back_empty(exported, tmp_path):
    app, case = exported["app"], exported["case"]
    segmentation = case.segmentation_node.GetSegmentation()
    empty_id = segmentation.AddEmptySegment("", "Nothing yet")
    try:
        out = export_seg(
            case.segmentation_node,
            exported["dicom_dir"],
            tmp_path / "e.dcm",
            segment_ids=[exported["ids"][0], empty_id],
        )
    finally:
        segmentation.RemoveSegment(empty_id)
    assert [d.SegmentLabel for d in pydicom.dcmread(out).SegmentSequence] == [
        "Vertebral column",
        "Nothing yet",
    ]
    node = import_seg(app, out, reference_volume=case.volume_node)
    names = segments_by_name(node)
    assert mask_on(node, names["Nothing yet"], case.volume_node).sum() == 0
    assert mask_on(node, names["Vertebral column"], case.volume_node).sum() > 0


def test_folder_with_two_series_uses_the_segmentations_own(loaded, sample_case, dcmqi_dir, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(sample_case.dicom_dir, mixed / "case")
    shutil.copytree(dcmqi_dir / "ct-3slice", mixed / "other")
    ids = ids_for_keys(loaded.segmentation_node, ("spine",))
    out = export_seg(loaded.segmentation_node, mixed, tmp_path / "m.dcm", segment_ids=ids)
    series = pydicom.dcmread(out).ReferencedSeriesSequence[0].SeriesInstanceUID
    assert series == loaded.volume_node.GetAttribute("DICOM.SeriesInstanceUID")
    # A segmentation that does not say which series it belongs to must be told.
    plain = loaded.segmentation_node.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", "plain")
    plain.GetSegmentation().CopySegmentFromSegmentation(loaded.segmentation_node.GetSegmentation(), ids[0])
    with pytest.raises(DicomObjectError, match="series_uid="):
        export_seg(plain, mixed, tmp_path / "p.dcm")
    out = export_seg(plain, mixed, tmp_path / "p.dcm", series_uid=series)
    assert pydicom.dcmread(out).ReferencedSeriesSequence[0].SeriesInstanceUID == series
