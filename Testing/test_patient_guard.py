"""The wrong-patient guard: a segmentation, plan or SEG meeting another patient's series is refused.

Fixture: the small sample case (`vsp demo --size 64x64x48`) and a second patient's series written
with the phantom's DICOM writer: other PatientID, study, series and Frame of Reference UIDs, and
the grid shifted 40 mm to the patient's left. Every command where a segmentation meets a series
(export-seg, stats --volume, plan, import-seg --reference, segment --input) refuses it with exit
2 and says what differs; --accept-other-series overrides and the output records it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from SurgicalPlanningLib import cli
from VSPCoreLib import identity

VSP = [sys.executable, "-m", "SurgicalPlanningLib.cli"]
PATIENT_ID_OTHER = "GUARD-OTHER-PATIENT-77"


def run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run([*VSP, "-q", *args], capture_output=True, text=True, cwd=tmp, env=env, timeout=300)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    root = tmp_path_factory.mktemp("guard")
    demo = root / "demo"
    assert cli.main(["-q", "demo", "--out", str(demo), "--size", "64x64x48"]) == 0
    # The second patient: other identity, other frame of reference, 40 mm to the left (L in LPS).
    phantom = generate_phantom((64, 64, 48), seed=7)
    patient = dataclasses.replace(
        phantom.patient,
        patient_id=PATIENT_ID_OTHER,
        study_uid=pydicom.uid.generate_uid(),
        series_uid=pydicom.uid.generate_uid(),
        frame_of_reference_uid=pydicom.uid.generate_uid(),
    )
    origin = tuple(np.array(phantom.origin_lps) + np.array([40.0, 0.0, 0.0]))
    other = dataclasses.replace(phantom, patient=patient, origin_lps=origin)
    write_dicom_series(other, root / "other_dicom")
    scratch = root / "scratch"
    scratch.mkdir()
    seg = root / "truth.seg.nrrd"
    assert cli.main(["-q", "import-dicom", str(demo / "case" / "dicom"), "--out", str(root / "ct.nrrd")]) == 0
    # A bare .seg.nrrd of the first patient, made by `vsp segment` (tagged with its series).
    recipe = [
        {"tool": "add-segment", "name": "Kidney"},
        {"tool": "threshold", "segment": "Kidney", "preset": "enhanced_parenchyma", "roi": [[-110, -80, -50], [-38, -12, 75]]},
        {"tool": "keep-largest-island", "segment": "Kidney"},
    ]  # fmt: skip
    (root / "recipe.json").write_text(json.dumps(recipe))
    assert (
        cli.main(
            ["-q", "segment", "--volume", str(demo / "case" / "dicom"), "--recipe", str(root / "recipe.json"), "--out", str(seg)]
        )
        == 0
    )  # fmt: skip
    return {"root": root, "demo": demo, "other": root / "other_dicom", "seg": seg, "scratch": scratch}


def test_seg_nrrd_carries_the_source_identity_and_no_patient_id(case):
    header = case["seg"].read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    ds = pydicom.dcmread(next((case["demo"] / "case" / "dicom").iterdir()), stop_before_pixels=True)
    assert f"SlicerVSP.Source.FrameOfReferenceUID|{ds.FrameOfReferenceUID}" in header
    assert f"SlicerVSP.Source.StudyInstanceUID|{ds.StudyInstanceUID}" in header
    assert f"SlicerVSP.Source.PatientHash|{identity.patient_hash(str(ds.PatientID))}" in header
    assert str(ds.PatientID) not in header  # only the salted hash
    assert identity.patient_hash("A") != identity.patient_hash("B")
    assert identity.patient_hash("") == ""


def test_export_seg_to_other_patient_is_refused(case):
    out = case["scratch"] / "refused.dcm"
    result = run(
        ["export-seg", str(case["seg"]), "--dicom", str(case["other"]), "--out", str(out)], case["scratch"]
    )
    assert result.returncode == 2, result.stderr
    for words in (
        "other patient",
        "other study",
        "other Frame of Reference",
        "--accept-other-series",
        "Fix:",
    ):
        assert words in result.stderr
    assert PATIENT_ID_OTHER not in result.stderr and not out.exists()


def test_export_seg_override_is_recorded_in_the_seg(case):
    out = case["scratch"] / "accepted.dcm"
    result = run(
        [
            "export-seg",
            str(case["seg"]),
            "--dicom",
            str(case["other"]),
            "--out",
            str(out),
            "--accept-other-series",
        ],
        case["scratch"],
    )
    assert result.returncode == 0, result.stderr
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert ds.ContentDescription.startswith("ACCEPTED OTHER SERIES: other patient")
    assert "--accept-other-series" in result.stderr  # and a warning says so


def test_export_seg_same_patient_passes(case):
    out = case["scratch"] / "own.dcm"
    result = run(["export-seg", str(case["seg"]), "--dicom", str(case["demo"] / "case" / "dicom"), "--out", str(out)], case["scratch"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ContentDescription" in pydicom.dcmread(out, stop_before_pixels=True)
    assert not str(pydicom.dcmread(out, stop_before_pixels=True).ContentDescription).startswith("ACCEPTED")


def test_stats_with_other_patients_volume_is_refused_and_override_recorded(case, capsys):
    code = cli.main(["-q", "stats", str(case["seg"]), "--volume", str(case["other"])])
    err = capsys.readouterr().err
    assert code == 2 and "other patient" in err and "other Frame of Reference" in err
    out = case["scratch"] / "stats.json"
    code = cli.main(["-q", "stats", str(case["seg"]), "--volume", str(case["other"]), "--json", str(out), "--accept-other-series"])  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())
    assert rows[0]["accepted_other_series"] == ["other patient", "other study", "other Frame of Reference"]
    # Its own series passes, with no such record.
    code = cli.main(["-q", "stats", str(case["seg"]), "--volume", str(case["demo"] / "case" / "dicom"), "--json", str(out)])  # fmt: skip
    assert code == 0 and "accepted_other_series" not in json.loads(out.read_text())[0]


def test_plan_on_a_scene_with_another_patients_ct_is_refused(case, capsys):
    from VSPCoreLib import storage
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.dicom import load_series

    app = VSPApplication.create_headless()
    storage.load_scene(app, case["demo"] / "SampleCase.mrb")
    own = app.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    app.scene.RemoveNode(own)
    load_series(app.scene, case["other"], name="CT")
    mixed = case["scratch"] / "mixed.mrb"
    storage.save_scene(app, mixed)
    plan = case["demo"] / "case" / "plan.json"
    code = cli.main(
        ["-q", "plan", str(mixed), "--plan", str(plan), "--out", str(case["scratch"] / "plan_refused")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "other patient" in err and "other Frame of Reference" in err and "Fix:" in err
    refused = case["scratch"] / "plan_refused"
    assert not refused.exists() or not [p for p in refused.rglob("*") if p.is_file()]  # nothing written
    out = case["scratch"] / "plan_accepted"
    code = cli.main(
        ["-q", "plan", str(mixed), "--plan", str(plan), "--out", str(out), "--accept-other-series"]
    )
    assert code == 0
    variants = json.loads((out / "plan.json").read_text())["variants"]
    assert all(
        any("--accept-other-series: other patient" in w for w in v["results"]["warnings"]) for v in variants
    )


def test_import_seg_onto_another_patients_series_is_refused(case, capsys):
    seg_dcm = case["scratch"] / "own_for_import.dcm"
    code = cli.main(["-q", "export-seg", str(case["seg"]), "--dicom", str(case["demo"] / "case" / "dicom"), "--out", str(seg_dcm)])  # fmt: skip
    assert code == 0
    out = case["scratch"] / "imported.seg.nrrd"
    code = cli.main(["-q", "import-seg", str(seg_dcm), "--reference", str(case["other"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "other patient" in err and "other Frame of Reference" in err and not out.exists()
    code = cli.main(["-q", "import-seg", str(seg_dcm), "--reference", str(case["other"]), "--out", str(out), "--accept-other-series"])  # fmt: skip
    assert code == 0
    header = out.read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    assert "SlicerVSP.AcceptedOtherSeries|accepted other series: other patient" in header
    # On its own series it passes, and the result carries the source identity.
    code = cli.main(["-q", "import-seg", str(seg_dcm), "--reference", str(case["demo"] / "case" / "dicom"), "--out", str(out)])  # fmt: skip
    assert code == 0
    header = out.read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    assert "SlicerVSP.AcceptedOtherSeries" not in header and "SlicerVSP.Source.PatientHash|pbkdf2" in header


def test_segment_input_from_another_patient_is_refused(case, capsys):
    out = case["scratch"] / "more.seg.nrrd"
    step = json.dumps({"tool": "margin", "segment": "Kidney", "margin_mm": 2})
    code = cli.main(["-q", "segment", "--volume", str(case["other"]), "--input", str(case["seg"]), "--step", step, "--out", str(out)])  # fmt: skip
    assert code == 2 and "other patient" in capsys.readouterr().err and not out.exists()


def test_geometry_alone_refuses_boxes_40_mm_apart():
    a = identity.Identity("segmentation 'a'", bounds_ras=(0.0, 10.0, 0.0, 10.0, 0.0, 10.0))
    b = identity.Identity("the volume 'b'", bounds_ras=(50.0, 90.0, 0.0, 10.0, 0.0, 10.0))
    assert identity.gap_mm(a.bounds_ras, b.bounds_ras) == pytest.approx(40.0)
    with pytest.raises(identity.IdentityMismatchError) as error:
        identity.check_same_series(a, b)
    assert "no spatial overlap: 40 mm apart" in str(error.value) and "--accept-other-series" in str(
        error.value
    )
    assert identity.check_same_series(a, b, accept_other_series=True) == ["no spatial overlap: 40 mm apart"]
    touching = identity.Identity("c", bounds_ras=(10.0, 20.0, 5.0, 6.0, 0.0, 1.0))
    assert identity.differences(a, touching) == []
    # Unknown identities are never a difference; a known one that matches is none either.
    assert identity.differences(identity.Identity("x", study_uid="1.2"), identity.Identity("y")) == []
    assert (
        identity.differences(identity.Identity("x", study_uid="1.2"), identity.Identity("y", study_uid="1.2"))
        == []
    )
