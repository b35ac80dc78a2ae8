"""DICOM 3D models (Encapsulated STL/OBJ/MTL, modality M3D) and Encapsulated PDF.

Source series: a small phantom CT written by the suite's DICOM writer (standard and with the
real-scanner quirks) and dcmqi's three real CT slices. Models: a box at the patient's left made
as a Slicer model node in RAS and saved by Slicer (STL, LPS), so every check of place is a check
of the whole chain.
"""

from __future__ import annotations

import datetime
import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import vtk
from pydicom.sr.codedict import codes

from CasePortalConnectorLib.dicom_objects import (
    ENCAPSULATED_MTL_STORAGE,
    ENCAPSULATED_OBJ_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
    ENCAPSULATED_STL_STORAGE,
    ModelFile,
    export_model_dicom,
    export_models_dicom,
    export_pdf_dicom,
    read_model_dicom,
)
from CasePortalConnectorLib.errors import DicomObjectError
from SurgicalPlanningLib.cli import main
from VSPCoreLib import storage
from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
from VSPCoreLib.sampledata.phantom import generate_phantom

DCIODVFY = shutil.which("dciodvfy")
#: The box in RAS (mm): x -60..-40 is the patient's left (RAS x grows to the right), y -15..-5
#: posterior, z 0..30. No axis is symmetric about 0, so a flipped axis shows.
BOX_RAS = (-60.0, -40.0, -15.0, -5.0, 0.0, 30.0)
CREATED = datetime.datetime(2026, 3, 4, 5, 6, 7)
FIXED = {
    "series_instance_uid": "1.2.826.0.1.3680043.8.498.101",
    "model_group_uid": "1.2.826.0.1.3680043.8.498.102",
    "created": CREATED,
}


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("m3d-ct") / "ct"
    write_dicom_series(generate_phantom((40, 40, 12), seed=5), folder)
    return folder


@pytest.fixture(scope="module")
def quirks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("m3d-quirks") / "ct"
    write_dicom_series(
        generate_phantom((40, 40, 12), seed=6, spacing_mm=(4.0, 4.0, 2.0)), folder, variant="real-quirks"
    )
    return folder


def box_polydata(bounds=BOX_RAS) -> vtk.vtkPolyData:
    source = vtk.vtkCubeSource()
    source.SetBounds(*bounds)
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputConnection(source.GetOutputPort())
    triangles.Update()
    return triangles.GetOutput()


@pytest.fixture
def box_stl(app, tmp_path) -> Path:
    """The box as Slicer saves a model: binary STL in LPS (header SPACE=LPS)."""
    node = app.scene.AddNewNodeByClass("vtkMRMLModelNode", "Box")
    node.SetAndObservePolyData(box_polydata())
    return storage.save_node(node, tmp_path / "box.stl")


def ras_bounds(node) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return np.array(bounds)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dciodvfy; warnings about DICOMDIR keys are not counted."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning") and "DICOMDIR" not in line]
    return errors, warnings


def vsp(*args, capsys) -> tuple[int, str, str]:
    code = main(["-q", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------
# What is written
# --------------------------------------------------------------------------------------------


def test_encapsulated_stl_carries_the_m3d_fields_and_the_source_identity(box_stl, ct_dir, tmp_path):
    written = export_model_dicom(
        ModelFile(box_stl, name="Tumour", color=(230, 50, 20)), ct_dir, tmp_path / "tumour.dcm", **FIXED
    )
    ds = pydicom.dcmread(written.path)
    source = pydicom.dcmread(next(p for p in sorted(ct_dir.iterdir())), stop_before_pixels=True)
    assert ds.SOPClassUID == ENCAPSULATED_STL_STORAGE
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "M3D"
    assert ds.MIMETypeOfEncapsulatedDocument == "model/stl"
    assert bytes(ds.EncapsulatedDocument) == box_stl.read_bytes()
    assert ds.EncapsulatedDocumentLength == box_stl.stat().st_size
    # Identity and place from the source series.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.StudyID == source.get("StudyID", "")
    assert ds.AccessionNumber == source.get("AccessionNumber", "")
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.SeriesInstanceUID == FIXED["series_instance_uid"] != source.SeriesInstanceUID
    # Manufacturing 3D Model module.
    (unit,) = ds.MeasurementUnitsCodeSequence
    assert (unit.CodingSchemeDesignator, unit.CodeValue) == ("UCUM", "mm")
    (usage,) = ds.ModelUsageCodeSequence
    assert (usage.CodingSchemeDesignator, usage.CodeValue, usage.CodeMeaning) == (
        "DCM",
        "129013",
        "Planning Intent",
    )
    assert ds.ModelGroupUID == FIXED["model_group_uid"]
    assert ds.ModelModification == "NO" and ds.ModelMirroring == "NO"
    assert ds.DocumentTitle == "Tumour" and ds.ContentDescription == "Tumour"
    assert len(ds.RecommendedDisplayCIELabValue) == 3
    # Enhanced General Equipment (all type 1).
    for keyword in ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions"):
        assert str(ds[keyword].value), keyword
    # Every source image referenced, in the Source Instance Sequence and Referenced Series.
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct_dir.iterdir()}
    assert {item.ReferencedSOPInstanceUID for item in ds.SourceInstanceSequence} == sources
    purposes = {item.PurposeOfReferenceCodeSequence[0].CodeValue for item in ds.SourceInstanceSequence}
    assert purposes == {codes.cid7060.SourceImage.value}
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence} == sources
    assert written.sop_instance_uid == ds.SOPInstanceUID and written.model_group_uid == ds.ModelGroupUID


def test_no_uid_is_ever_empty(box_stl, ct_dir, tmp_path):
    written = export_model_dicom(box_stl, ct_dir, tmp_path / "box.dcm")
    ds = pydicom.dcmread(written.path)
    uids = []

    def visit(dataset):
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    visit(item)
            elif element.VR == "UI":
                uids.append((element.keyword, str(element.value)))

    visit(ds)
    visit(ds.file_meta)
    assert len(uids) > 10
    for keyword, value in uids:
        assert value and pydicom.uid.UID(value).is_valid, (keyword, value)


@pytest.mark.parametrize(
    ("usage", "value", "meaning"),
    [("educational", "129012", "Educational Intent"), ("tool", "129014", "Tool Fabrication")],
)
def test_model_usage_codes(box_stl, ct_dir, tmp_path, usage, value, meaning):
    written = export_model_dicom(box_stl, ct_dir, tmp_path / "box.dcm", usage=usage)
    (item,) = pydicom.dcmread(written.path).ModelUsageCodeSequence
    assert (item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning) == ("DCM", value, meaning)
    assert read_model_dicom(written.path).usage == meaning


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_is_byte_identical_and_deterministic(box_stl, ct_dir, tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.103"
    first = export_model_dicom(
        ModelFile(box_stl, name="Kidney, left", color=(200, 80, 60)), ct_dir, tmp_path / "a.dcm",
        sop_instance_uid=uid, **FIXED,
    )  # fmt: skip
    second = export_model_dicom(
        ModelFile(box_stl, name="Kidney, left", color=(200, 80, 60)), ct_dir, tmp_path / "b.dcm",
        sop_instance_uid=uid, **FIXED,
    )  # fmt: skip
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256
    document = read_model_dicom(first.path)
    assert document.data == box_stl.read_bytes()
    back = document.save(tmp_path / "back.stl")
    assert back.read_bytes() == box_stl.read_bytes()
    assert document.kind == "stl" and document.units == "mm"
    assert document.name == "Kidney, left"
    assert (
        document.color is not None
        and max(abs(a - b) for a, b in zip(document.color, (200, 80, 60), strict=True)) <= 1
    )
    assert document.frame_of_reference_uid == first.frame_of_reference_uid
    assert document.model_group_uid == FIXED["model_group_uid"]
    assert document.source_series_uids == (first.source_series_uid,)
    # Without fixed UIDs every export is a new series and instance.
    third = export_model_dicom(box_stl, ct_dir, tmp_path / "c.dcm")
    assert third.series_instance_uid != first.series_instance_uid
    assert third.sop_instance_uid != first.sop_instance_uid


def test_odd_length_document_gets_a_pad_byte_that_read_back_drops(ct_dir, tmp_path):
    stl = tmp_path / "tri.stl"
    text = "solid t\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex 0 1 0\nendloop\nendfacet\nendsolid t\n"
    if len(text) % 2 == 0:
        text += "\n"
    stl.write_text(text)
    written = export_model_dicom(stl, ct_dir, tmp_path / "tri.dcm")
    ds = pydicom.dcmread(written.path)
    assert ds.EncapsulatedDocumentLength == len(text) and len(text) % 2 == 1
    assert len(ds.EncapsulatedDocument) == len(text) + 1 and ds.EncapsulatedDocument[-1:] == b"\x00"
    assert read_model_dicom(written.path).data == text.encode()


def test_real_scanner_quirks_source_gets_valid_uids(box_stl, quirks_dir, tmp_path, caplog):
    """Empty study/series/SOP UIDs in the source datasets: SOP UIDs from the file meta, study and
    series UIDs derived (the same as the SEG export would use), a warning says so."""
    written = export_model_dicom(box_stl, quirks_dir, tmp_path / "box.dcm")
    ds = pydicom.dcmread(written.path)
    assert pydicom.uid.UID(ds.StudyInstanceUID).is_valid
    (series,) = ds.ReferencedSeriesSequence
    assert pydicom.uid.UID(series.SeriesInstanceUID).is_valid
    metas = {
        pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
        for p in quirks_dir.iterdir()
    }
    assert {item.ReferencedSOPInstanceUID for item in ds.SourceInstanceSequence} == metas
    assert "StudyInstanceUID empty" in caplog.text and "SeriesInstanceUID empty" in caplog.text


# --------------------------------------------------------------------------------------------
# 3D Slicer's DICOM M3D plugin
# --------------------------------------------------------------------------------------------


def slicer_m3d_plugin_steps(path: Path, tmp_path: Path, app, *, keep_pad_byte: bool):
    """The reading steps of Slicer's M3D plugin, reproduced (not copied).

    Slicer/Slicer Modules/Scripted/DICOMPlugins/DICOMM3DPlugin.py (read 2026 via the code search):
    - examineFiles: a file is a candidate when its Modality (0008,0060) is exactly "M3D"; it needs
      a non-empty SOP Instance UID (otherwise nothing is offered); the loadable is named by the
      Series Description ("Unknown" when empty).
    - getFrameOfReferenceUID: FrameOfReferenceUID read with pydicom.
    - load: reads EncapsulatedDocument and EncapsulatedDocumentLength with pydicom; when the
      length is odd it takes a view without the last (pad) byte, but then copies the whole
      buffer, pad byte included, to temp.STL (``keep_pad_byte=True`` does what the code does;
      False what its comment intends), loads it with slicer.util.loadModel (LPS unless the STL
      header says otherwise) and imports the model into a segmentation.
    """
    ds = pydicom.dcmread(path)
    assert ds.Modality == "M3D"
    assert str(ds.SOPInstanceUID)
    assert str(ds.get("SeriesDescription", "")) not in ("",)
    assert str(ds.FrameOfReferenceUID)
    document = bytes(ds.EncapsulatedDocument)
    length = int(ds.EncapsulatedDocumentLength)
    buffer = io.BytesIO(document).getbuffer()
    if length % 2 and not keep_pad_byte:
        buffer = buffer[: len(document) - 1]
    stl = tmp_path / "temp.STL"
    stl.write_bytes(bytes(buffer))
    return storage.load_model(app, stl), ds


@pytest.mark.parametrize("keep_pad_byte", [False, True], ids=["as-intended", "as-coded"])
def test_slicer_m3d_plugin_loads_it_in_the_same_ras_place(app, box_stl, ct_dir, tmp_path, keep_pad_byte):
    written = export_model_dicom(ModelFile(box_stl, name="Box"), ct_dir, tmp_path / "box.dcm")
    node, ds = slicer_m3d_plugin_steps(written.path, tmp_path, app, keep_pad_byte=keep_pad_byte)
    assert np.allclose(ras_bounds(node), BOX_RAS, atol=1e-4), ras_bounds(node)
    assert ras_bounds(node)[1] < 0  # wholly on the patient's left
    assert (
        ds.FrameOfReferenceUID
        == pydicom.dcmread(next(ct_dir.iterdir()), stop_before_pixels=True).FrameOfReferenceUID
    )
    assert node.GetPolyData().GetNumberOfCells() == 12


def test_slicer_m3d_plugin_loads_an_odd_length_stl_with_or_without_the_pad(app, ct_dir, tmp_path):
    """An ASCII STL of odd length (LPS coordinates): the plugin's whole-buffer copy keeps the pad
    byte; the model still loads, at the same place as without it."""
    lps = [(50.0, 10.0, 1.0), (52.0, 10.0, 1.0), (50.0, 13.0, 1.0)]
    text = "solid t\nfacet normal 0 0 1\nouter loop\n"
    text += "".join(f"vertex {x} {y} {z}\n" for x, y, z in lps) + "endloop\nendfacet\nendsolid t\n"
    if len(text) % 2 == 0:
        text = text.replace("solid t\n", "solid tt\n", 1)
    stl = tmp_path / "odd.stl"
    stl.write_text(text)
    written = export_model_dicom(stl, ct_dir, tmp_path / "odd.dcm")
    expected = (-52.0, -50.0, -13.0, -10.0, 1.0, 1.0)  # RAS: x and y negated
    for keep in (False, True):
        node, ds = slicer_m3d_plugin_steps(written.path, tmp_path, app, keep_pad_byte=keep)
        assert ds.EncapsulatedDocumentLength % 2 == 1
        assert np.allclose(ras_bounds(node), expected, atol=1e-4), (keep, ras_bounds(node))


def test_read_back_stl_loads_on_the_patients_left(app, box_stl, ct_dir, tmp_path):
    written = export_model_dicom(box_stl, ct_dir, tmp_path / "box.dcm")
    path = read_model_dicom(written.path).save(tmp_path / "back.stl")
    assert np.allclose(ras_bounds(storage.load_model(app, path)), BOX_RAS, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Assemblies, OBJ/MTL, PDF
# --------------------------------------------------------------------------------------------


def write_obj(folder: Path) -> Path:
    (folder / "vessel.mtl").write_text("newmtl red\nKd 0.9 0.1 0.1\n")
    obj = folder / "vessel.obj"
    obj.write_text("mtllib vessel.mtl\nv 50 10 1\nv 52 10 1\nv 50 13 1\nusemtl red\nf 1 2 3\n")
    return obj


def test_assembly_is_one_series_and_one_group_with_obj_referencing_its_mtl(box_stl, ct_dir, tmp_path):
    obj = write_obj(tmp_path)
    written = export_models_dicom(
        [ModelFile(box_stl, name="Tumour", color=(230, 50, 20)), ModelFile(obj, name="Vessel")],
        ct_dir,
        tmp_path / "out",
        usage="educational",
    )
    assert [w.kind for w in written] == ["stl", "obj", "mtl"]
    assert [w.path.name for w in written] == ["box.stl.dcm", "vessel.obj.dcm", "vessel.mtl.dcm"]
    datasets = [pydicom.dcmread(w.path) for w in written]
    assert [ds.SOPClassUID for ds in datasets] == [
        ENCAPSULATED_STL_STORAGE,
        ENCAPSULATED_OBJ_STORAGE,
        ENCAPSULATED_MTL_STORAGE,
    ]
    assert [ds.MIMETypeOfEncapsulatedDocument for ds in datasets] == ["model/stl", "model/obj", "model/mtl"]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.ModelGroupUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert [int(ds.InstanceNumber) for ds in datasets] == [1, 2, 3]
    (reference,) = datasets[1].ReferencedInstanceSequence
    assert reference.ReferencedSOPClassUID == ENCAPSULATED_MTL_STORAGE
    assert reference.ReferencedSOPInstanceUID == datasets[2].SOPInstanceUID
    assert reference.RelativeURIReferenceWithinEncapsulatedDocument == "vessel.mtl"
    obj_back = read_model_dicom(written[1].path)
    assert obj_back.data == obj.read_bytes() and obj_back.references == (
        (datasets[2].SOPInstanceUID, "vessel.mtl"),
    )
    assert read_model_dicom(written[2].path).data == (tmp_path / "vessel.mtl").read_bytes()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".partial")]


def test_nothing_is_written_when_one_part_is_bad(box_stl, ct_dir, tmp_path):
    bad = tmp_path / "bad.stl"
    bad.write_bytes(b"\x00" * 200)
    with pytest.raises(DicomObjectError, match="bad.stl"):
        export_models_dicom([box_stl, bad], ct_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
def test_dciodvfy_reports_no_errors_on_stl_obj_mtl_and_pdf(box_stl, ct_dir, tmp_path):
    obj = write_obj(tmp_path)
    written = export_models_dicom(
        [ModelFile(box_stl, name="Tumour", color=(230, 50, 20)), obj], ct_dir, tmp_path / "out"
    )
    stl_errors, stl_warnings = dciodvfy(written[0].path)
    assert stl_errors == [], stl_errors
    # The installed dicom3tools (2022) predates Model Group UID and the CIELab value in the M3D
    # module: those two, and nothing else, are reported as not in the IOD.
    assert all(
        "(0x0068,0x7004)" in w or "(0x0062,0x000d)" in w or "Standard Extended" in w for w in stl_warnings
    )
    # It does not know the OBJ and MTL IODs (2023). Their module table is the STL IOD's
    # (PS3.3 A.85.2/A.85.3), so each is checked as an STL with only SOP class and MIME type swapped.
    for model in written[1:]:
        ds = pydicom.dcmread(model.path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_STL_STORAGE
        ds.MIMETypeOfEncapsulatedDocument = "model/stl"
        probe = tmp_path / f"probe-{model.kind}.dcm"
        ds.save_as(probe, enforce_file_format=True)
        errors, _ = dciodvfy(probe)
        assert errors == [], (model.kind, errors)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    report = export_pdf_dicom(pdf, ct_dir, tmp_path / "report.dcm", title="Plan report")
    errors, warnings = dciodvfy(report.path)
    assert errors == [] and warnings == [], errors + warnings
    ds = pydicom.dcmread(report.path)
    assert ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE and ds.Modality == "DOC"
    assert bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength] == pdf.read_bytes()


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
def test_export_on_real_ct_slices_validates(box_stl, dcmqi_dir, tmp_path):
    written = export_model_dicom(box_stl, dcmqi_dir / "ct-3slice", tmp_path / "box.dcm")
    errors, _ = dciodvfy(written.path)
    assert errors == [], errors
    source = pydicom.dcmread(next((dcmqi_dir / "ct-3slice").iterdir()), stop_before_pixels=True)
    assert pydicom.dcmread(written.path).FrameOfReferenceUID == source.FrameOfReferenceUID


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def test_ras_stl_is_refused(app, ct_dir, tmp_path):
    node = app.scene.AddNewNodeByClass("vtkMRMLModelNode", "Box")
    node.SetAndObservePolyData(box_polydata())
    path = storage.save_node(node, tmp_path / "ras.stl", coordinate_system=storage.RAS)
    with pytest.raises(DicomObjectError, match="RAS"):
        export_model_dicom(path, ct_dir, tmp_path / "ras.dcm")
    assert not (tmp_path / "ras.dcm").exists()


def test_read_back_refuses_other_objects_and_units(box_stl, ct_dir, tmp_path, dcmqi_dir):
    with pytest.raises(DicomObjectError, match="liver.dcm.*not a DICOM 3D model"):
        read_model_dicom(dcmqi_dir / "liver.dcm")
    written = export_model_dicom(box_stl, ct_dir, tmp_path / "box.dcm")
    ds = pydicom.dcmread(written.path)
    ds.Modality = "DOC"
    ds.save_as(tmp_path / "doc.dcm")
    with pytest.raises(DicomObjectError, match=r"doc\.dcm.*Modality 'DOC'"):
        read_model_dicom(tmp_path / "doc.dcm")
    ds.Modality = "M3D"
    ds.MeasurementUnitsCodeSequence[0].CodeValue = "cm"
    ds.save_as(tmp_path / "cm.dcm")
    with pytest.raises(DicomObjectError, match=r"cm\.dcm.*units UCUM 'cm'"):
        read_model_dicom(tmp_path / "cm.dcm")
    ds.MeasurementUnitsCodeSequence[0].CodeValue = "mm"
    ds.EncapsulatedDocument = bytes(ds.EncapsulatedDocument)[:-100]
    ds.save_as(tmp_path / "short.dcm")
    with pytest.raises(DicomObjectError, match=r"short\.dcm.*truncated"):
        read_model_dicom(tmp_path / "short.dcm")


def test_bad_stl_inputs_are_refused(ct_dir, tmp_path):
    empty = tmp_path / "empty.stl"
    empty.write_bytes(b"\x00" * 80 + struct.pack("<I", 0))
    with pytest.raises(DicomObjectError, match="without triangles"):
        export_model_dicom(empty, ct_dir, tmp_path / "e.dcm")
    text = tmp_path / "notes.stl"
    text.write_text("these are notes, not a model\n")
    with pytest.raises(DicomObjectError, match=r"notes\.stl.*not an STL"):
        export_model_dicom(text, ct_dir, tmp_path / "n.dcm")


# --------------------------------------------------------------------------------------------
# vsp export-model / import-model
# --------------------------------------------------------------------------------------------


def test_cli_export_and_import_round_trip(app, box_stl, ct_dir, tmp_path, capsys):
    out = tmp_path / "box.dcm"
    group = "1.2.826.0.1.3680043.8.498.104"
    code, stdout, _ = vsp(
        "export-model", box_stl, "--dicom", ct_dir, "--out", out, "--name", "Tumour", "--usage", "tool",
        "--group-uid", group, "--color", "230,50,20", capsys=capsys,
    )  # fmt: skip
    assert code == 0, stdout
    assert group in stdout and "1.2.840.10008.5.1.4.1.1.104.3" in stdout
    ds = pydicom.dcmread(out)
    assert ds.ModelGroupUID == group and ds.DocumentTitle == "Tumour"
    assert ds.ModelUsageCodeSequence[0].CodeValue == "129014"
    code, stdout, _ = vsp("import-model", out, "--out", tmp_path / "back.stl", capsys=capsys)
    assert code == 0
    assert (tmp_path / "back.stl").read_bytes() == box_stl.read_bytes()
    assert "Tumour" in stdout and "Tool Fabrication" in stdout and "mm" in stdout
    assert np.allclose(ras_bounds(storage.load_model(app, tmp_path / "back.stl")), BOX_RAS, atol=1e-4)


def test_cli_bad_inputs_exit_2_with_a_message(box_stl, ct_dir, tmp_path, dcmqi_dir, capsys):
    notes = tmp_path / "notes.stl"
    notes.write_text("not a model\n")
    code, _, err = vsp("export-model", notes, "--dicom", ct_dir, "--out", tmp_path / "a.dcm", capsys=capsys)
    assert code == 2 and "notes.stl" in err and "not an STL" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    code, _, err = vsp("export-model", box_stl, "--dicom", empty, "--out", tmp_path / "b.dcm", capsys=capsys)
    assert code == 2 and "empty" in err and "holds no image" in err
    code, _, err = vsp("import-model", dcmqi_dir / "liver.dcm", "--out", tmp_path / "c.stl", capsys=capsys)
    assert code == 2 and "liver.dcm" in err and "not a DICOM 3D model" in err
    code, _, err = vsp(
        "export-model",
        box_stl,
        "--dicom",
        ct_dir,
        "--out",
        tmp_path / "d.dcm",
        "--group-uid",
        "abc",
        capsys=capsys,
    )
    assert code == 2 and "not a valid DICOM UID" in err
    assert not any((tmp_path / name).exists() for name in ("a.dcm", "b.dcm", "c.stl", "d.dcm"))
