"""Saving cases in a real Orthanc: a second workstation reopens exactly the same plan,
segmentation and models; two planners saving the same case keep both versions; case locks.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from store_case_data import case_store, instances_per_sop, small_case, upload_source

from CasePortalConnectorLib.cases import (
    LOCK_METADATA,
    PLAN_ATTACHMENT,
    PLAN_VERSION_METADATA,
    CaseLockedError,
    CaseStoreError,
    acquire_lock,
    open_saved_case,
    plan_version,
    read_case_record,
    read_case_state,
    read_lock,
    release_lock,
    save_case,
)
from CasePortalConnectorLib.dicom_objects import import_seg, read_model_dicom
from CasePortalConnectorLib.outbox import Outbox
from VSPCoreLib.app import VSPApplication
from VSPCoreLib.arrays import segment_mask


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return small_case(tmp_path_factory.mktemp("store-case"), seed=7)


@pytest.fixture
def uploaded(orthanc, case):
    """The case's source series in the shared Orthanc (a fresh store: previous tests' saves gone)."""
    orthanc.clear()
    upload_source(orthanc, case.dicom_dir)
    return case_store(orthanc)


def segment_masks(node, volume) -> dict[str, np.ndarray]:
    """Every segment as a boolean array on the volume's whole grid, by segment name."""
    segmentation = node.GetSegmentation()
    masks = {}
    for n in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(n)
        array = segment_mask(node, segment_id, reference_volume=volume, crop=False).array
        masks[segmentation.GetSegment(segment_id).GetName()] = array.astype(bool)
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def test_second_workstation_reopens_the_same_plan_segmentation_and_models(uploaded, case, orthanc, tmp_path):
    outbox = Outbox(tmp_path / "ws1" / "outbox.sqlite")
    result = save_case(
        uploaded,
        outbox,
        source=case.dicom_dir,
        plan=case.plan,
        segmentation=case.segmentation_node,
        models=[case.model],
        report=case.report,
    )
    assert result.send.complete and not result.conflict
    counts = instances_per_sop(orthanc, result.study_uid)
    assert all(counts[item.sop_uid] == 1 for item in outbox.items() if item.sop_uid)

    # Workstation 2: its own store connection, an empty folder, a fresh scene.
    store2 = case_store(orthanc)
    folder = tmp_path / "ws2"
    state = open_saved_case(store2, result.study_uid, folder)
    assert (folder / "plan.json").read_bytes() == case.plan.read_bytes()
    assert state["plan_version"] == plan_version(case.plan.read_bytes()) == result.plan_version
    assert read_case_state(folder)["plan_version"] == result.plan_version
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["study_instance_uid"] == result.study_uid
    assert manifest["source_series"][0]["instances"] == len(list(case.dicom_dir.iterdir()))
    for entry in [manifest["segmentation"], *manifest["models"], manifest["report"]]:
        assert len(entry["file_sha256"]) == 64 and entry["software_version"]

    # STL bytes equal.
    model = read_model_dicom(folder / state["files"]["model:box"])
    assert model.data == case.model.read_bytes()
    # The SEG on a fresh scene: Dice 1.0 for every segment on the CT grid.
    app2 = VSPApplication.create_headless()
    imported = import_seg(app2, folder / state["files"]["segmentation"], reference_volume=None)
    original = segment_masks(case.segmentation_node, case.volume_node)
    back = segment_masks(imported, case.volume_node)
    assert set(back) == set(original) and len(original) >= 5
    for name, mask in original.items():
        assert mask.sum() > 0
        assert dice(mask, back[name]) == 1.0, name
    # The report's PDF bytes.
    report = pydicom.dcmread(folder / state["files"]["report"])
    assert bytes(report.EncapsulatedDocument)[: report.EncapsulatedDocumentLength] == case.report.read_bytes()


def test_two_workstations_saving_the_same_case_keep_both_versions(uploaded, case, orthanc, tmp_path):
    store_a, store_b = case_store(orthanc), case_store(orthanc)
    study = pydicom.dcmread(next(case.dicom_dir.iterdir()), stop_before_pixels=True).StudyInstanceUID
    # Both open the case before either saved: both start from "no plan".
    base_a = open_saved_case(store_a, study, tmp_path / "a")["plan_version"]
    base_b = open_saved_case(store_b, study, tmp_path / "b")["plan_version"]
    assert base_a is None and base_b is None
    plan_a, plan_b = tmp_path / "plan_a.json", tmp_path / "plan_b.json"
    plan_a.write_text(json.dumps({"planner": "A", "margin_mm": 5}))
    plan_b.write_text(json.dumps({"planner": "B", "margin_mm": 8}))
    saved_a = save_case(
        store_a,
        Outbox(tmp_path / "oa" / "o.sqlite"),
        source=case.dicom_dir,
        plan=plan_a,
        base_version=base_a,
        owner="alice@ws-a",
    )
    assert saved_a.send.complete and not saved_a.conflict
    saved_b = save_case(
        store_b,
        Outbox(tmp_path / "ob" / "o.sqlite"),
        source=case.dicom_dir,
        plan=plan_b,
        base_version=base_b,
        owner="bob@ws-b",
    )
    # B's save is reported as a conflict, and nothing was overwritten.
    assert saved_b.send.complete
    assert saved_b.conflict.startswith("conflict: the store holds plan version " + saved_a.plan_version[:12])
    assert store_a.get_attachment(study, PLAN_ATTACHMENT) == plan_a.read_bytes()
    assert store_a.get_metadata(study, PLAN_VERSION_METADATA) == saved_a.plan_version
    # Both versions are kept: each save's case record holds its own plan.
    plans = set()
    for record in store_a.case_records(study):
        ds = store_a.retrieve_instance(study, record["0020000E"]["Value"][0], record["00080018"]["Value"][0])
        plans.add(read_case_record(ds)[0])
    assert plans == {plan_a.read_bytes(), plan_b.read_bytes()}
    # B reopens (now starting from A's version) and saves again: accepted.
    base_b = open_saved_case(store_b, study, tmp_path / "b2")["plan_version"]
    assert base_b == saved_a.plan_version
    again = save_case(
        store_b,
        Outbox(tmp_path / "ob" / "o.sqlite"),
        source=case.dicom_dir,
        plan=plan_b,
        base_version=base_b,
        owner="bob@ws-b",
    )
    assert again.send.complete and not again.conflict
    assert store_a.get_attachment(study, PLAN_ATTACHMENT) == plan_b.read_bytes()


def test_locks_name_the_owner_expire_and_protect_the_plan(uploaded, case, tmp_path):
    store = uploaded
    study = pydicom.dcmread(next(case.dicom_dir.iterdir()), stop_before_pixels=True).StudyInstanceUID
    lock = acquire_lock(store, study, owner="alice@ws-a", ttl_s=600)
    assert read_lock(store, study) == lock
    expires = dt.datetime.fromisoformat(lock.expires)
    assert 590 <= (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 601
    with pytest.raises(CaseLockedError, match=re.escape(f"locked by alice@ws-a until {lock.expires}")):
        acquire_lock(store, study, owner="bob@ws-b")
    with pytest.raises(CaseLockedError, match="only its owner unlocks it"):
        release_lock(store, study, owner="bob@ws-b")
    assert acquire_lock(store, study, owner="alice@ws-a", ttl_s=1200).owner == "alice@ws-a"  # renewal

    # While alice holds it, bob's save keeps the stored plan and says why.
    plan_bob = tmp_path / "bob.json"
    plan_bob.write_text('{"planner": "bob"}')
    saved = save_case(
        store, Outbox(tmp_path / "o" / "o.sqlite"), source=case.dicom_dir, plan=plan_bob, owner="bob@ws-b"
    )
    assert saved.conflict.startswith("conflict: the case is locked by alice@ws-a")
    assert store.get_attachment(study, PLAN_ATTACHMENT) is None

    # An expired lock may be taken over.
    store.put_metadata(
        study, LOCK_METADATA, json.dumps({"owner": "alice@ws-a", "expires": "2020-01-01T00:00:00+00:00"})
    )
    assert acquire_lock(store, study, owner="bob@ws-b").owner == "bob@ws-b"
    assert release_lock(store, study, owner="bob@ws-b") is True
    assert read_lock(store, study) is None
    assert release_lock(store, study, owner="bob@ws-b") is False


def test_dicomweb_only_store_keeps_the_plan_in_case_records(uploaded, case, orthanc, tmp_path):
    store = case_store(orthanc, dicomweb_only=True)
    result = save_case(
        store, Outbox(tmp_path / "o" / "o.sqlite"), source=case.dicom_dir, plan=case.plan, models=[case.model]
    )
    assert result.send.complete
    assert set(result.send.notes.values()) == {
        "kept in the case record (a DICOMweb-only store has no attachments)"
    }
    state = open_saved_case(store, result.study_uid, tmp_path / "ws2")
    assert (tmp_path / "ws2" / "plan.json").read_bytes() == case.plan.read_bytes()
    assert state["plan_version"] == result.plan_version
    with pytest.raises(CaseStoreError, match="needs Orthanc's REST API"):
        acquire_lock(store, result.study_uid)


def test_a_plan_that_is_not_json_is_refused_before_anything_is_queued(uploaded, case, tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    outbox = Outbox(tmp_path / "o" / "o.sqlite")
    with pytest.raises(Exception, match="is not valid JSON"):
        save_case(uploaded, outbox, source=case.dicom_dir, plan=bad)
    assert outbox.items() == []
    assert not Path(tmp_path / "o").joinpath("files").exists() or not list(
        (tmp_path / "o" / "files").iterdir()
    )


# --------------------------------------------------------------------------------------------
# vsp store save / open-case / outbox / lock / unlock
# --------------------------------------------------------------------------------------------


def store_config(server, folder: Path) -> Path:
    """A settings file (kind orthanc, few retries) and a 0600 password file for the CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / "password"
    secret.write_text(server.password)
    secret.chmod(0o600)
    config = folder / "store.json"
    config.write_text(
        json.dumps(
            {
                "url": server.url,
                "username": server.user,
                "password_file": str(secret),
                "kind": "orthanc",
                "retries": 0,
                "connect_timeout_s": 2,
            }
        )
    )
    return config


def vsp(capsys, *args) -> tuple[int, str, str]:
    from SurgicalPlanningLib.cli import main

    code = main(["store", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_save_outbox_lock_and_conflict(orthanc_factory, case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VSP_STORE_CONFIG", str(store_config(server := orthanc_factory(), tmp_path / "cfg")))
    monkeypatch.setenv("VSP_OUTBOX", str(tmp_path / "box" / "outbox.sqlite"))
    upload_source(server, case.dicom_dir)
    study = pydicom.dcmread(next(case.dicom_dir.iterdir()), stop_before_pixels=True).StudyInstanceUID
    seg = tmp_path / "case.seg.nrrd"
    from VSPCoreLib import storage

    storage.save_node(case.segmentation_node, seg)

    # The store is down: the save is queued, exit 4, nothing lost.
    server.kill()
    code, out, err = vsp(
        capsys,
        "save",
        "--dicom",
        case.dicom_dir,
        "--plan",
        case.plan,
        "--seg",
        seg,
        "--model",
        case.model,
        "--base-version",
        "none",
        "-q",
    )
    assert code == 4, err
    assert "wait in the outbox and nothing is lost" in err
    code, out, _ = vsp(capsys, "outbox", "list")
    assert code == 0 and "5 item(s) waiting" in out and "the store cannot be reached" in out
    # Back up: retry sends everything once.
    server.restart()
    code, out, err = vsp(capsys, "outbox", "retry", "-q")
    assert code == 0, err
    assert "sent 5, already in the store 0, failed 0, waiting 0" in out
    assert vsp(capsys, "outbox", "list")[1].startswith(
        f"outbox {tmp_path / 'box' / 'outbox.sqlite'}: 0 item(s)"
    )

    # Another workstation opens the case, planner alice locks it; bob cannot.
    code, out, _ = vsp(capsys, "open-case", "--study", study, "--out", tmp_path / "ws2", "--plan-only", "-q")
    assert code == 0 and f"plan version {plan_version(case.plan.read_bytes())}" in out
    assert vsp(capsys, "lock", "--study", study, "--owner", "alice@ws-a", "--hours", "1")[0] == 0
    code, out, err = vsp(capsys, "lock", "--study", study, "--owner", "bob@ws-b")
    assert code == 7 and "is locked by alice@ws-a until" in err
    code, out, _ = vsp(capsys, "lock", "--study", study, "--show", "--json")
    assert json.loads(out)["owner"] == "alice@ws-a"
    code, out, err = vsp(capsys, "unlock", "--study", study, "--owner", "bob@ws-b")
    assert code == 7 and "only its owner unlocks it" in err
    assert vsp(capsys, "unlock", "--study", study, "--owner", "alice@ws-a")[0] == 0

    # A save from a workstation that started from no plan: conflict, exit 7, both kept.
    other = tmp_path / "other.json"
    other.write_text('{"planner": "other"}')
    code, out, err = vsp(
        capsys, "save", "--dicom", case.dicom_dir, "--plan", other, "--base-version", "none", "-q"
    )
    assert code == 7 and "CONFLICT: conflict: the store holds plan version" in out
    # From the opened case folder (the current version): accepted.
    code, out, err = vsp(
        capsys, "save", "--dicom", case.dicom_dir, "--plan", other, "--case-folder", tmp_path / "ws2", "-q"
    )
    assert code == 0, out + err
    # A save without saying where it started from is a user error.
    code, _, err = vsp(capsys, "save", "--dicom", case.dicom_dir, "--plan", other)
    assert code == 2 and "--base-version none" in err
