"""Service jobs in the case manifest (store-case.json): recorded there when the output lies in a
case folder, picked up after a client restart without a second submit, carried into the
manifest `vsp store save` uploads; MONAI Label sessions reused on resume (real MONAI Label
server, real Orthanc)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from monailabel_server import MonaiLabelServer
from store_case_data import case_store, small_case, upload_source
from test_service_monailabel import write_test_volume
from test_store_cases import store_config, vsp

from CasePortalConnectorLib.cases import CASE_STATE_FILE, MANIFEST_ATTACHMENT, read_case_state
from CasePortalConnectorLib.service.base import (
    CASE_FILE,
    CaseJobStore,
    InferRequest,
    JobStore,
    ServiceRequestError,
    ServiceUnreachable,
    case_folder_of,
    job_store_for,
    load_settings,
    manifest_jobs,
    open_job_store,
)
from CasePortalConnectorLib.service.runner import make_backend, resume, run_infer

VSP = [sys.executable, "-m", "SurgicalPlanningLib.cli"]


@pytest.fixture(scope="module")
def monai(tmp_path_factory):
    server = MonaiLabelServer(tmp_path_factory.mktemp("monailabel")).start()
    yield server
    server.stop()


def test_the_rule_where_a_job_is_recorded(tmp_path):
    assert CASE_FILE == CASE_STATE_FILE
    case = tmp_path / "case"
    (case / "ai").mkdir(parents=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    # no case folder: service-jobs.json beside the output
    store = job_store_for(plain / "x.seg.nrrd")
    assert type(store) is JobStore and store.path == plain / "service-jobs.json"
    (case / CASE_FILE).write_text(json.dumps({"study_instance_uid": "1.2.3", "plan_version": "abc"}))
    # an output anywhere inside a case folder: its manifest
    for out in (case / "x.seg.nrrd", case / "ai" / "y.seg.nrrd"):
        store = job_store_for(out)
        assert isinstance(store, CaseJobStore) and store.path == case / CASE_FILE
    assert case_folder_of(case / "ai") == case and case_folder_of(plain / "x") is None
    # --case-folder names it (made when missing); --jobs wins; both: a user error
    assert (
        job_store_for(plain / "x.seg.nrrd", case_folder=tmp_path / "new").path == tmp_path / "new" / CASE_FILE
    )
    assert type(job_store_for(case / "x.seg.nrrd", jobs=plain)) is JobStore
    assert isinstance(open_job_store(case), CaseJobStore) and isinstance(
        open_job_store(case / CASE_FILE), CaseJobStore
    )
    with pytest.raises(ServiceRequestError, match="--jobs and --case-folder"):
        job_store_for(case / "x.seg.nrrd", jobs=plain, case_folder=case)
    # jobs are added next to what open-case wrote, which stays as it was
    from CasePortalConnectorLib.service.base import Job

    job = Job.new("local", "local:classical", InferRequest("classical", volume=str(plain / "Doe_Jane.nrrd")))
    job.provenance = {"backend": "local"}
    CaseJobStore(case).save(job)
    document = json.loads((case / CASE_FILE).read_text())
    assert document["study_instance_uid"] == "1.2.3" and document["plan_version"] == "abc"
    assert document["service_jobs"][job.job_id]["backend"] == "local"
    assert read_case_state(case)["plan_version"] == "abc"
    # what is uploaded with the case carries no local path (a file name may name the patient)
    (entry,) = manifest_jobs(document)
    assert entry["job_id"] == job.job_id and entry["backend"] == "local" and entry["provenance"]
    assert "volume" not in entry and "output" not in entry and "Doe_Jane" not in json.dumps(entry)
    # an older service-jobs.json in the case folder is still found
    legacy = Job.new("local", "local:classical", InferRequest("classical", volume="/x.nrrd"))
    JobStore(case).save(legacy)
    assert {j.job_id for j in CaseJobStore(case).jobs()} == {job.job_id, legacy.job_id}


def test_case_folder_job_survives_a_restart_and_is_saved_with_the_case(
    monai, orthanc_factory, tmp_path, capsys, monkeypatch
):
    orthanc = orthanc_factory()
    monkeypatch.setenv("VSP_STORE_CONFIG", str(store_config(orthanc, tmp_path / "cfg")))
    monkeypatch.setenv("VSP_OUTBOX", str(tmp_path / "box" / "outbox.sqlite"))
    case = small_case(tmp_path / "data", seed=11)
    upload_source(orthanc, case.dicom_dir)
    study = str(pydicom.dcmread(next(case.dicom_dir.iterdir()), stop_before_pixels=True).StudyInstanceUID)
    folder = tmp_path / "case"
    code, _, err = vsp(capsys, "open-case", "--study", study, "--out", folder, "-q")
    assert code == 0, err
    assert read_case_state(folder)["plan_version"] is None  # a new case

    volume = write_test_volume(tmp_path / "ct.nrrd")
    out = folder / "ai.seg.nrrd"  # inside the case folder: the job goes into its manifest
    before = monai.infer_count()
    env = {**os.environ, "VSP_TEST_HOLD": "importing the result", "VSP_TEST_HOLD_S": "120"}
    command = [*VSP, "service", "infer", "--url", monai.url, "--model", "threshold_organs", "--volume", str(volume), "--out", str(out)]  # fmt: skip
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if (folder / CASE_FILE).exists() and any(
            j.state == "result_saved" for j in CaseJobStore(folder).jobs()
        ):
            break
        time.sleep(0.2)
    else:
        pytest.fail(str(first.communicate(timeout=5)))
    first.send_signal(signal.SIGKILL)  # the client dies after the answer arrived, before the import
    first.wait(10)
    assert monai.infer_count() == before + 1 and not out.exists()
    assert not (folder / "service-jobs.json").exists()
    document = json.loads((folder / CASE_FILE).read_text())
    assert document["study_instance_uid"] == study  # what open-case wrote is kept
    (record,) = document["service_jobs"].values()
    assert record["backend"] == "monailabel" and record["service_url"] == monai.url
    assert record["model"] == "threshold_organs" and record["state"] == "result_saved"
    result = folder / record["result_file"]
    assert hashlib.sha256(result.read_bytes()).hexdigest() == record["result_sha256"]

    # Restart: the same infer finds the job in the manifest and imports the saved result.
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "not submitted again" in again.stdout and out.is_file()
    # ... and `vsp service resume` with the case folder as job store does not submit either.
    resumed = subprocess.run([*VSP, "service", "resume", record["job_id"][:8], "--jobs", str(folder), "--url", monai.url], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert monai.infer_count() == before + 1  # one submit in all
    (job,) = CaseJobStore(folder).jobs()
    assert job.state == "done" and job.attempts == 1
    assert job.provenance["backend"] == "monailabel" and job.provenance["job_id"] == job.job_id

    # Saved with the case: the stored manifest lists the job (no local path in it).
    code, _, err = vsp(capsys, "save", "--dicom", case.dicom_dir, "--plan", case.plan, "--case-folder", folder, "-q")  # fmt: skip
    assert code == 0, err
    stored = json.loads(case_store(orthanc).get_attachment(study, MANIFEST_ATTACHMENT))
    (entry,) = stored["service_jobs"]
    assert entry["job_id"] == job.job_id and entry["backend"] == "monailabel"
    assert entry["service_url"] == monai.url and entry["result_sha256"] == record["result_sha256"]
    assert entry["state"] == "done" and entry["provenance"]["model"] == "threshold_organs"
    assert str(volume) not in json.dumps(stored) and "volume" not in entry

    # Opening the case again into the same folder keeps this workstation's jobs.
    code, _, err = vsp(capsys, "open-case", "--study", study, "--out", folder, "--plan-only", "-q")
    assert code == 0, err
    state = read_case_state(folder)
    assert state["plan_version"] is not None and list(state["service_jobs"]) == [job.job_id]


def test_session_is_recorded_before_the_infer_and_reused_on_resume(monai, app, tmp_path):
    volume = write_test_volume(tmp_path / "ct.nrrd")
    store = job_store_for(None, case_folder=tmp_path / "case")
    calls: list[tuple[str, str]] = []

    def counted(backend, fail: bool):
        infer, create = backend.client.infer, backend.client.create_session

        def infer_then_lose(*args, **kwargs):
            # The session id is in the case manifest before the infer is sent.
            (recorded,) = store.jobs()[-1:]
            calls.append(("infer", kwargs["session_id"]))
            assert recorded.session_id == kwargs["session_id"] != ""
            if fail:
                raise ServiceUnreachable("the connection was lost during POST /infer.", subject="test")
            return infer(*args, **kwargs)

        def create_session(path):
            session_id = create(path)
            calls.append(("session", session_id))
            return session_id

        backend.client.infer, backend.client.create_session = infer_then_lose, create_session
        return backend

    settings = load_settings(None, backend="monailabel", url=monai.url)
    before = monai.infer_count()
    request = InferRequest("threshold_organs", volume=str(volume))
    with pytest.raises(ServiceUnreachable):
        run_infer(app, counted(make_backend(settings), fail=True), store, request, session=True)
    (job,) = store.jobs()
    first_session = job.session_id
    assert calls == [("session", first_session), ("infer", first_session)] and job.state == "failed"
    assert monai.infer_count() == before  # nothing reached the infer

    # Resumed (a new client): the server still has the session, the volume is not sent again.
    calls.clear()
    outcome = resume(app, counted(make_backend(settings), fail=False), store, job.job_id)
    assert calls == [("infer", first_session)] and monai.infer_count() == before + 1
    assert outcome.job.state == "done" and outcome.job.session_id == first_session
    assert {s["class_name"] for s in outcome.job.segments} >= {"kidney_left"}

    # A session the server no longer has: the volume is sent again, in a new session.
    calls.clear()
    with pytest.raises(ServiceUnreachable):
        run_infer(
            app, counted(make_backend(settings), fail=True), store, InferRequest("threshold_organs", volume=str(volume), params={"v": 2}), session=True
        )  # fmt: skip
    second = store.jobs()[-1]
    assert requests.delete(f"{monai.url}/session/{second.session_id}", timeout=10).status_code == 200
    assert requests.get(f"{monai.url}/session/{second.session_id}", timeout=10).status_code == 404
    calls.clear()
    outcome = resume(app, counted(make_backend(settings), fail=False), store, second.job_id)
    new_session = outcome.job.session_id
    assert calls == [("session", new_session), ("infer", new_session)] and new_session != second.session_id
    assert outcome.job.state == "done" and monai.infer_count() == before + 2
    assert Path(store.path).name == CASE_FILE
