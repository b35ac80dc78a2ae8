"""De-identification of a case (CasePortalConnectorLib.deid): PS3.15 Annex E Basic Profile.

The case: a small phantom CT series with patient name, ID, birth date, institution, operator,
accession number, descriptions (some quoting the patient's name) and a private attribute filled
in; a DICOM SEG made by export_seg on it; an Encapsulated STL made by export_models_dicom; an
Encapsulated PDF report. Every element (sequences included) of every output file is checked
against the original values of the profile's attributes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import vtk
from pydicom.sr.codedict import codes

from CasePortalConnectorLib import deid
from CasePortalConnectorLib.deid import DeidentificationError, DeidOptions, deidentify_case, profile_table
from CasePortalConnectorLib.dicom_objects import export_models_dicom, export_pdf_dicom, export_seg, import_seg
from SurgicalPlanningLib.cli import main
from VSPCoreLib import storage
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import segment_mask
from VSPCoreLib.dicom import load_series
from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
from VSPCoreLib.sampledata.phantom import generate_phantom

DCIODVFY = shutil.which("dciodvfy")
NAME = "Doe^Jane^Q"
PATIENT_ID = "MRN-4711-0815"
IDENTIFIERS = {
    "PatientName": NAME,
    "PatientID": PATIENT_ID,
    "PatientBirthDate": "19620314",
    "InstitutionName": "Saint Example Hospital",
    "OperatorsName": "Operator^Otto",
    "AccessionNumber": "ACC99887766",
    "ReferringPhysicianName": "Referrer^Rita",
    "StudyDescription": "CT abdomen Doe Jane pre-op",
    "SeriesDescription": "Venous phase MRN-4711-0815",
    "StationName": "CTSTATION7",
}


# --------------------------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------------------------


def _fill_identifiers(folder: Path) -> None:
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.ImageComments = "Scanned for Jane Doe"
        block = ds.private_block(0x0029, "ACME Private", create=True)
        block.add_new(0x01, "LO", "private text " + PATIENT_ID)
        ds.save_as(path)


def _segmentation_on(app, volume):
    """Two segments, asymmetric: a box on the patient's left and a smaller one anterior."""
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    import slicer

    from VSPCoreLib.arrays import GridArray, grid_array_to_oriented_image, volume_ijk_to_ras

    dims = volume.GetImageData().GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    for name, box, colour in (
        ("Left box", (slice(4, 20), slice(10, 30), slice(30, 44)), (0.9, 0.2, 0.2)),
        ("Front box", (slice(8, 14), slice(2, 8), slice(10, 18)), (0.2, 0.9, 0.2)),
    ):
        mask = np.zeros(shape, dtype=np.uint8)
        mask[box] = 1
        image = grid_array_to_oriented_image(GridArray(mask, volume_ijk_to_ras(volume)))
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.SetColor(*colour)
        segment.AddRepresentation("Binary labelmap", image)
        node.GetSegmentation().AddSegment(segment)
    return node


def _stl(app, folder: Path) -> Path:
    source = vtk.vtkCubeSource()
    source.SetBounds(-60, -40, -15, -5, 0, 30)
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputConnection(source.GetOutputPort())
    triangles.Update()
    node = app.scene.AddNewNodeByClass("vtkMRMLModelNode", "Box")
    node.SetAndObservePolyData(triangles.GetOutput())
    return storage.save_node(node, folder / "box.stl")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("deid-case")
    ct = root / "case" / "ct"
    write_dicom_series(generate_phantom((48, 48, 24), seed=7), ct)
    _fill_identifiers(ct)
    app = VSPApplication.create_headless()
    volume, _ = load_series(app.scene, ct)
    seg_node = _segmentation_on(app, volume)
    seg_path = export_seg(seg_node, ct, root / "case" / "seg" / "seg.dcm", content_creator="Planner^Paula")
    stl = _stl(app, root / "work")
    models = export_models_dicom([stl], ct, root / "case" / "models")
    pdf_source = root / "work" / "report.pdf"
    pdf_source.write_bytes(b"%PDF-1.4\n% report for Doe Jane\n%%EOF\n")
    export_pdf_dicom(pdf_source, ct, root / "case" / "report" / "report.dcm")
    originals = {path: pydicom.dcmread(path) for path in sorted((root / "case").rglob("*.dcm"))}
    return {
        "root": root,
        "folder": root / "case",
        "ct": ct,
        "seg": seg_path,
        "models": [m.path for m in models],
        "originals": originals,
        "app": app,
        "seg_node": seg_node,
        "volume": volume,
    }


@pytest.fixture
def key_dir(tmp_path, monkeypatch):
    folder = tmp_path / "private"
    monkeypatch.setenv("VSP_KEY_DIR", str(folder))
    return folder


def _walk(ds: pydicom.Dataset):
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _walk(item)


def _values(element) -> list[str]:
    value = element.value
    if value is None or element.VR == "SQ":
        return []
    if isinstance(value, bytes):
        return [value.hex()] if value else []
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value).strip()] if str(value).strip() else []


def _original_values(originals) -> dict[int, set[str]]:
    """Every non-empty value of every profile attribute, at any depth, in the original files."""
    table = profile_table()
    found: dict[int, set[str]] = {}
    for ds in originals.values():
        for element in [*_walk(ds), *(_walk(ds.file_meta))]:
            if table.action(element.tag) is not None:
                found.setdefault(int(element.tag), set()).update(_values(element))
    return found


def _outputs(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(p.relative_to(folder)): pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))}


def _by_modality(outputs, modality):
    return [ds for ds in outputs.values() if ds.Modality == modality]


@pytest.fixture(scope="module")
def exported(case, tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("private")
    out = tmp_path_factory.mktemp("share") / "basic"
    result = deidentify_case(case["folder"], out, key_path=key_dir / "key.json")
    return {"result": result, "out": out, "outputs": _outputs(out), "key": key_dir / "key.json"}


# --------------------------------------------------------------------------------------------
# The profile
# --------------------------------------------------------------------------------------------


def test_the_table_comes_from_the_standard_via_dicom_anonymizer():
    table = profile_table()
    # A few rows of PS3.15 Table E.1-1 (Basic Profile column).
    assert table.action(pydicom.tag.Tag("PatientName")) == "Z"
    assert table.action(pydicom.tag.Tag("StudyInstanceUID")) == "U"
    assert table.action(pydicom.tag.Tag("ReferencedSOPInstanceUID")) == "U"
    assert table.action(pydicom.tag.Tag("InstitutionName")) == "X/Z/D"
    assert table.action(pydicom.tag.Tag("SourceImageSequence")) == "X/Z/U*"
    assert table.action(pydicom.tag.Tag(0x6002, 0x3000)) is not None  # overlay data, a repeating group
    assert table.action(pydicom.tag.Tag("Rows")) is None
    assert len(table.actions) > 500


def test_codes_are_pydicoms():
    for code, expected in (
        (deid.BASIC_PROFILE_CODE, codes.DCM.BasicApplicationConfidentialityProfile),
        (deid.MODIFIED_DATES_CODE, codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption),
        (deid.CLEAN_DESCRIPTORS_CODE, codes.DCM.CleanDescriptorsOption),
    ):
        assert code == (expected.scheme_designator, expected.value, expected.meaning)


def test_no_profile_attribute_keeps_its_original_value(case, exported):
    originals = _original_values(case["originals"])
    table = profile_table()
    assert originals[int(pydicom.tag.Tag("PatientName"))] == {NAME}
    checked = 0
    for name, ds in exported["outputs"].items():
        for element in [*_walk(ds), *_walk(ds.file_meta)]:
            if element.tag.is_private:
                pytest.fail(f"{name}: private attribute {element.tag} kept")
            if table.action(element.tag) is None:
                continue
            checked += 1
            kept = set(_values(element)) & originals.get(int(element.tag), set())
            assert not kept, f"{name}: {element.keyword or element.tag} keeps an original value"
    assert checked > 500  # UIDs (the SEG frames' references too), dates, names, ...
    # No identifying text anywhere in the files' bytes either (the PDF, which quotes the name, is left out).
    for path in exported["out"].rglob("*.dcm"):
        data = path.read_bytes()
        for text in ("Doe", "Jane", "MRN-4711", "ACC99887766", "Saint Example", "Otto", "19620314", "Paula"):
            assert text.encode() not in data, f"{path.name} holds {text!r}"


def test_what_is_recorded_and_what_is_kept(case, exported):
    result = exported["result"]
    outputs = exported["outputs"]
    assert len(outputs) == 24 + 1 + 1
    assert [s.split(":")[0] for s in result.skipped] == ["report.dcm"]
    pseudonyms = {str(ds.PatientID) for ds in outputs.values()}
    assert len(pseudonyms) == 1
    pseudonym = pseudonyms.pop()
    assert pseudonym.startswith("VSP-") and len(pseudonym) == 14
    for ds in outputs.values():
        assert str(ds.PatientName) == pseudonym
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100"]
        assert "Basic Profile" in ds.DeidentificationMethod[0]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert "StudyDate" in ds and not ds.StudyDate  # Type 2: emptied, not removed
        assert "InstitutionName" not in ds or not ds.InstitutionName
    ct = _by_modality(outputs, "CT")
    original_ct = [ds for ds in case["originals"].values() if ds.Modality == "CT"]
    # Pixels and geometry are untouched.
    by_position = {tuple(float(v) for v in ds.ImagePositionPatient): ds for ds in original_ct}
    for ds in ct:
        original = by_position[tuple(float(v) for v in ds.ImagePositionPatient)]
        assert ds.PixelData == original.PixelData
        assert ds.ImageOrientationPatient == original.ImageOrientationPatient


def test_uids_are_remapped_consistently_and_references_stay_valid(case, exported):
    outputs = exported["outputs"]
    ct = _by_modality(outputs, "CT")
    (seg,) = _by_modality(outputs, "SEG")
    (model,) = _by_modality(outputs, "M3D")
    ct_uids = {str(ds.SOPInstanceUID) for ds in ct}
    original_uids = {str(ds.SOPInstanceUID) for ds in case["originals"].values()}
    assert not ct_uids & original_uids
    assert len({str(ds.SeriesInstanceUID) for ds in ct}) == 1
    # One study, one frame of reference, across CT, SEG and model.
    assert len({str(ds.StudyInstanceUID) for ds in outputs.values()}) == 1
    assert {str(ds.FrameOfReferenceUID) for ds in outputs.values()} == {str(ct[0].FrameOfReferenceUID)}
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == ct_uids
    sources = {
        str(source.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    assert sources and sources <= ct_uids
    assert model.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    # The key maps each original UID to its new one.
    key = json.loads(exported["key"].read_text())
    for original in case["originals"].values():
        if original.Modality == "CT":
            assert key["uids"][str(original.SOPInstanceUID)] in ct_uids


def test_deidentified_seg_imports_onto_the_deidentified_ct_with_dice_one(case, exported, app):
    out = exported["out"]
    ct_folder = next(p for p in out.iterdir() if p.name.endswith("-CT"))
    seg_path = next(out.glob("*-SEG/*.dcm"))
    volume, _ = load_series(app.scene, ct_folder)
    imported = import_seg(app, seg_path, reference_volume=volume)
    original = import_seg(app, case["seg"], reference_volume=load_series(app.scene, case["ct"])[0])
    segmentation = imported.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    for n in range(2):
        a = (
            segment_mask(imported, segmentation.GetNthSegmentID(n), reference_volume=volume, crop=False).array
            > 0
        )
        b_id = original.GetSegmentation().GetNthSegmentID(n)
        b = segment_mask(original, b_id, reference_volume=volume, crop=False).array > 0
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert a.sum() > 100
        assert dice == 1.0


def test_model_keeps_its_mesh_and_loses_its_text(case, exported):
    (model,) = _by_modality(exported["outputs"], "M3D")
    original = next(ds for ds in case["originals"].values() if ds.Modality == "M3D")
    length = int(model.EncapsulatedDocumentLength)
    data, before = bytes(model.EncapsulatedDocument)[:length], bytes(original.EncapsulatedDocument)
    assert length == int(original.EncapsulatedDocumentLength)
    assert data[80:] == before[80 : int(original.EncapsulatedDocumentLength)]  # every triangle
    assert data[:80].rstrip() == b"SPACE=LPS"


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_new_errors(case, exported):
    def errors(path) -> set[str]:
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
        return {line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}

    originals = {ds.Modality: path for path, ds in case["originals"].items() if ds.Modality != "DOC"}
    for name, ds in exported["outputs"].items():
        if not name.endswith("0001.dcm"):
            continue
        new = errors(exported["out"] / name) - errors(originals[ds.Modality])
        assert not new, f"{name}: {sorted(new)}"


# --------------------------------------------------------------------------------------------
# Options, the key, the command
# --------------------------------------------------------------------------------------------


def test_modified_dates_and_clean_descriptors(case, tmp_path):
    key = tmp_path / "private" / "key.json"
    out = tmp_path / "share.zip"
    deidentify_case(
        case["folder"],
        out,
        key_path=key,
        options=DeidOptions(keep_dates_shifted=True, clean_descriptors=True),
    )
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(folder)
    outputs = _outputs(folder)
    offset = json.loads(key.read_text())["patients"][PATIENT_ID]["date_offset_days"]
    assert -3650 <= offset <= -365
    import datetime

    def shifted(text):
        day = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8])) + datetime.timedelta(days=offset)
        return day.strftime("%Y%m%d")

    for name, ds in outputs.items():
        original = next(o for o in case["originals"].values() if o.Modality == ds.Modality)
        assert ds.StudyDate == shifted(original.StudyDate), name
        assert ds.PatientBirthDate == shifted(IDENTIFIERS["PatientBirthDate"]), name
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113107", "113105"]
    ct = _by_modality(outputs, "CT")[0]
    # Descriptors kept, with the patient's name and ID cut out.
    assert ct.StudyDescription == "CT abdomen pre-op"
    assert ct.SeriesDescription == "Venous phase"
    assert ct.ImageComments == "Scanned for"
    seg = _by_modality(outputs, "SEG")[0]
    assert seg.SeriesDescription == "Segmentation"


def test_key_file_is_private_reused_and_never_in_the_output(case, tmp_path, key_dir):
    first = deidentify_case(case["folder"], tmp_path / "a")
    assert first.key_path == key_dir / "deid-key.json"
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    key = json.loads(first.key_path.read_text())
    assert key["patients"][PATIENT_ID]["original_name"] == NAME
    assert not list((tmp_path / "a").rglob("*.json"))
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert key["secret"].encode() not in path.read_bytes()
    # The same key gives the same pseudonyms and UIDs; another key gives others.
    second = deidentify_case(case["folder"], tmp_path / "b")
    a, b = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    assert [str(ds.SOPInstanceUID) for ds in a.values()] == [str(ds.SOPInstanceUID) for ds in b.values()]
    assert second.files == first.files
    other = deidentify_case(case["folder"], tmp_path / "c", key_path=tmp_path / "other" / "key.json")
    c = _outputs(tmp_path / "c")
    assert not {str(ds.SOPInstanceUID) for ds in a.values()} & {str(ds.SOPInstanceUID) for ds in c.values()}
    assert other.key_path != first.key_path
    # A key readable by others is refused; a key inside the output is refused.
    os.chmod(first.key_path, 0o644)
    with pytest.raises(DeidentificationError, match="readable by other users"):
        deidentify_case(case["folder"], tmp_path / "d")
    with pytest.raises(DeidentificationError, match="inside the shared output"):
        deidentify_case(case["folder"], tmp_path / "e", key_path=tmp_path / "e" / "key.json")
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_burned_in_annotation_is_refused_and_nothing_written(case, tmp_path, key_dir):
    folder = tmp_path / "case"
    shutil.copytree(case["folder"], folder)
    path = sorted((folder / "ct").glob("*.dcm"))[3]
    ds = pydicom.dcmread(path)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path)
    with pytest.raises(DeidentificationError, match="Burned In Annotation") as error:
        deidentify_case(folder, tmp_path / "out")
    assert path.name in str(error.value)
    assert not (tmp_path / "out").exists()
    assert not (key_dir / "deid-key.json").exists()


def test_cli_deidentify(case, tmp_path, key_dir, capsys, caplog):
    code = main(
        ["-q", "store", "deidentify", str(case["folder"]), "--out", str(tmp_path / "x.zip"), "--json"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["written"] == 26 and len(report["skipped"]) == 1
    assert report["key_file"] == str(key_dir / "deid-key.json")
    assert zipfile.is_zipfile(tmp_path / "x.zip")
    for text in (NAME, PATIENT_ID, "Doe"):
        assert text not in captured.out + captured.err + caplog.text
    # Bad input: exit 2 with the folder named.
    code = main(["-q", "store", "deidentify", str(tmp_path / "missing"), "--out", str(tmp_path / "y")])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_cli_deidentify_push_to_a_second_store(case, tmp_path, key_dir, capsys, monkeypatch, orthanc_factory):
    """--push sends the de-identified copies to another DICOMweb store (a second Orthanc here),
    with only the credentials given for it — never the hospital store's."""
    partner = orthanc_factory(users={"partner": "partner secret 7"})
    secret = tmp_path / "partner.secret"
    secret.write_text("partner secret 7\n")
    secret.chmod(0o600)
    monkeypatch.setenv("VSP_STORE_CONFIG", str(tmp_path / "none.json"))
    (tmp_path / "none.json").write_text("{}")
    # the hospital store's settings in the environment: a push to a URL must not use them
    monkeypatch.setenv("VSP_STORE_USER", "partner")
    monkeypatch.setenv("VSP_STORE_PASSWORD_FILE", str(secret))
    code = main(
        [
            "-q",
            "store",
            "deidentify",
            str(case["folder"]),
            "--out",
            str(tmp_path / "a"),
            "--push",
            partner.url,
        ]
    )
    assert code == 5 and "401" in capsys.readouterr().err  # no credentials of its own: refused
    assert partner.rest("GET", "/instances") == []
    common = ["--push", partner.url, "--user", "partner", "--password-file", str(secret), "--json"]
    code = main(["-q", "store", "deidentify", str(case["folder"]), "--out", str(tmp_path / "b.zip"), *common])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["push"]["stored"] == report["push"]["instances"] == report["written"] == 26
    assert report["push"]["refused"] == []
    stored = partner.rest("GET", "/instances?expand")
    assert len(stored) == 26
    written = {}
    with zipfile.ZipFile(tmp_path / "b.zip") as archive:
        for name in archive.namelist():
            ds = pydicom.dcmread(io.BytesIO(archive.read(name)))
            written[str(ds.SOPInstanceUID)] = ds
    for item in stored:  # what arrived is the de-identified copy, byte for byte
        sop = item["MainDicomTags"]["SOPInstanceUID"]
        data = partner.rest("GET", f"/instances/{item['ID']}/file")
        ds = pydicom.dcmread(io.BytesIO(data))
        assert sop in written and ds.PatientName == written[sop].PatientName != NAME
        assert str(ds.PatientIdentityRemoved) == "YES"
        assert NAME.encode() not in data and PATIENT_ID.encode() not in data
    for text in (NAME, PATIENT_ID, "partner secret 7"):
        assert text not in captured.out + captured.err
    # again from a folder: the same UIDs (same key), replaced in the store, not doubled
    code = main(["-q", "store", "deidentify", str(case["folder"]), "--out", str(tmp_path / "c"), *common])
    assert code == 0 and len(partner.rest("GET", "/instances")) == 26
