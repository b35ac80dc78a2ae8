"""The DICOM-in/DICOM-out backend against a real Orthanc (Testing/orthanc_server.py).

A small test AI node (a thread here) watches for the trigger (an HTTP stub endpoint, or the
study metadata ``VSPState``/``VSPRequest`` on Orthanc), downloads the series from Orthanc,
thresholds it into three coded classes (kidney_left on the patient's left, aorta, liver on the
right), writes a DICOM SEG with ``export_seg`` and stores it with STOW-RS. The client finds,
downloads and imports it: the segments must be exactly the node's label map on the source grid
(Dice 1.0) at the right RAS place, with their codes.

The CT is a phantom series whose voxels are replaced by asymmetric boxes (off-centre, unequal
extents), with fresh UIDs for every study.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc_server import VSP_USER_METADATA, OrthancServer, free_port
from pydicom.uid import generate_uid

from CasePortalConnectorLib.service.base import (
    InferRequest,
    JobStore,
    ServiceRequestError,
    ServiceTimeout,
    load_settings,
)
from CasePortalConnectorLib.service.dicom_inout import DicomInOutBackend
from CasePortalConnectorLib.service.runner import make_backend, resume, run_infer
from CasePortalConnectorLib.store import StoreClient, StoreSettings

VSP = [sys.executable, "-m", "SurgicalPlanningLib.cli"]
EXTRA_CONFIG = {"UserMetadata": {**VSP_USER_METADATA, "VSPRequest": 1027}}

SHAPE_KJI = (12, 20, 24)
# k, j, i boxes; high i is LPS +x, the patient's left
BOXES = {
    "kidney_left": ((slice(2, 7), slice(4, 10), slice(16, 22)), 300),
    "aorta": ((slice(1, 11), slice(10, 13), slice(10, 13)), 600),
    "liver": ((slice(5, 10), slice(12, 18), slice(1, 7)), 100),
}
BANDS = {"liver": (50, 200, 3), "kidney_left": (200, 450, 1), "aorta": (450, 800, 2)}  # HU low, high, value
CODES = {"kidney_left": "SCT 64033007", "aorta": "SCT 15825003", "liver": "SCT 10200004"}


# --------------------------------------------------------------------------------------------
# The store, the CT, the test AI node
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    server = OrthancServer(tmp_path_factory.mktemp("hospital"), extra_config=EXTRA_CONFIG)
    server.start()
    yield server
    server.kill()


def client_for(server, **options) -> StoreClient:
    values = dict(url=server.url, username=server.user, retries=1, backoff_s=0.05, read_timeout_s=30)
    values.update(options)
    return StoreClient(StoreSettings(**values), secret=server.password)


@pytest.fixture(scope="module")
def ct_template(tmp_path_factory):
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    phantom = generate_phantom((SHAPE_KJI[2], SHAPE_KJI[1], SHAPE_KJI[0]), spacing_mm=(3.0, 2.5, 4.0), seed=5)
    paths = write_dicom_series(phantom, tmp_path_factory.mktemp("template"))
    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.full(SHAPE_KJI, -1000, np.int16)
    for box, value in BOXES.values():
        hu[box] = value
    for k, ds in enumerate(datasets):
        assert (ds.Rows, ds.Columns) == SHAPE_KJI[1:] and [float(v) for v in ds.ImageOrientationPatient] == [
            1,
            0,
            0,
            0,
            1,
            0,
        ]
        stored = (hu[k] - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
        ds.PixelData = stored.astype(np.uint16 if ds.PixelRepresentation == 0 else np.int16).tobytes()
    return datasets


def upload_ct(server, template) -> tuple[str, str]:
    """A fresh study (new UIDs) with the CT series; returns (study UID, series UID)."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for source in template:
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName = "HOSP-4711", "DOE^JANE"
        server.rest("POST", "/instances", _bytes(ds))
    return study, series


def _bytes(ds) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class AiNode:
    """A tiny AI node: on a request it downloads the series, thresholds it, writes a SEG and
    stores it (STOW-RS) in the same study. ``decoy`` first stores a SEG that references another
    series; ``trigger`` is "http" (a stub endpoint) or "orthanc" (study metadata)."""

    def __init__(self, server, folder: Path, *, trigger="http", decoy=False, answer=True):
        self.server, self.folder, self.trigger = server, folder, trigger
        self.decoy, self.answer = decoy, answer
        self.requests: list[dict] = []
        self.labels: dict[str, np.ndarray] = {}
        self.ijk_to_ras: np.ndarray | None = None
        self.seg_series = ""
        self.decoy_series = ""
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._httpd = None
        self._thread = None

    # --- trigger endpoints -------------------------------------------------------------------
    def start(self) -> AiNode:
        if self.trigger == "http":
            node = self

            class Handler(BaseHTTPRequestHandler):
                def do_POST(self):  # noqa: N802
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    node.requests.append(body)
                    self.send_response(202)
                    self.end_headers()
                    if node.answer:
                        threading.Thread(target=node.process, args=(body,), daemon=True).start()

                def log_message(self, *args):
                    pass

            self._httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
            self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        else:
            self._thread = threading.Thread(target=self._watch_metadata, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/process"

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _watch_metadata(self) -> None:
        while not self._stop.is_set():
            for study_id in self.server.rest("GET", "/studies"):
                try:
                    state = self.server.rest("GET", f"/studies/{study_id}/metadata/VSPState")
                    record = json.loads(self.server.rest("GET", f"/studies/{study_id}/metadata/VSPRequest"))
                except Exception:  # noqa: BLE001 - no request on this study
                    continue
                state = state.decode() if isinstance(state, bytes) else state
                if state == "segmenting" and record.get("status") == "requested":
                    self.requests.append(record)
                    record["status"] = "processing"
                    self.server.rest(
                        "PUT", f"/studies/{study_id}/metadata/VSPRequest", json.dumps(record).encode()
                    )
                    if self.answer:
                        self.process(record)
                        record["status"] = "done"
                        self.server.rest(
                            "PUT", f"/studies/{study_id}/metadata/VSPRequest", json.dumps(record).encode()
                        )
            time.sleep(0.1)

    # --- the work ------------------------------------------------------------------------------
    def process(self, request: dict) -> None:
        try:
            self._process(request)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            self.done.set()

    def _process(self, request: dict) -> None:
        import slicer.util

        from CasePortalConnectorLib.dicom_objects.seg import AlgorithmInfo, export_seg
        from CasePortalConnectorLib.service.runner import write_clean_nrrd
        from CasePortalConnectorLib.store import download_series
        from VSPCoreLib.app import VSPApplication
        from VSPCoreLib.arrays import volume_ijk_to_ras
        from VSPCoreLib.labels import LabelClass, LabelTable, import_label_map

        study, series = request["study_uid"], request["series_uid"]
        client = client_for(self.server)
        result = download_series(client, study, series, self.folder / "cache")
        app = VSPApplication.create_headless()
        from CasePortalConnectorLib.store import load_cached_series

        ct, _ = load_cached_series(app.scene, result.folder, name="node CT")
        hu = slicer.util.arrayFromVolume(ct)
        labels = np.zeros(hu.shape, np.uint8)
        for name, (low, high, value) in BANDS.items():
            labels[(hu >= low) & (hu < high)] = value
            self.labels[name] = labels == value
        self.ijk_to_ras = volume_ijk_to_ras(ct)
        label_node = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "node labels")
        label_node.CopyOrientation(ct)
        slicer.util.updateVolumeFromArray(label_node, labels)
        path = write_clean_nrrd(label_node, self.folder / "labels.nrrd")
        table = LabelTable({v: LabelClass(v, n) for n, (_, _, v) in BANDS.items()}, source="test node")
        imported = import_label_map(app, path, table, reference_volume=ct)
        seg_path = export_seg(
            imported.segmentation_node,
            result.folder,
            self.folder / "result.dcm",
            algorithm=AlgorithmInfo("VSP test node", "0.3"),
            series_description="AI organs",
        )
        seg = pydicom.dcmread(seg_path)
        if self.decoy:
            decoy = copy.deepcopy(seg)
            decoy.SeriesInstanceUID = self.decoy_series = generate_uid()
            decoy.SOPInstanceUID = decoy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            decoy.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
            client.dicomweb.store_instances([decoy])
            time.sleep(1.0)  # the client sees the decoy alone first
        client.dicomweb.store_instances([seg])
        self.seg_series = str(seg.SeriesInstanceUID)
        client.close()


def dicom_settings(**options):
    values = dict(backend="dicom", model="organs", poll_s=0.1, poll_max_s=0.4, timeout_s=60.0)
    values.update(options)
    return load_settings(None, **values)


def segment_array(node, name, reference) -> np.ndarray:
    from VSPCoreLib.arrays import segment_mask

    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment {name!r}"
    return segment_mask(node, segment_id, reference_volume=reference, crop=False).array


def check_result(outcome, node_worker, reference):
    from VSPCoreLib.arrays import volume_ijk_to_ras

    job = outcome.job
    by_name = {s["structure"]: s for s in job.segments}  # names come from the SEG's labels
    assert set(by_name) == set(BANDS) and len(job.segments) == 3
    for name, code in CODES.items():
        assert by_name[name]["code"].startswith(code), by_name[name]
    assert by_name["kidney_left"]["structure"] == "kidney_left"
    np.testing.assert_allclose(volume_ijk_to_ras(reference), node_worker.ijk_to_ras, atol=1e-6)
    seg = outcome.imported.segmentation_node
    for name, expected in node_worker.labels.items():
        got = segment_array(seg, by_name[name]["segment"], reference)
        assert got.shape == expected.shape and expected.sum() > 0
        dice = 2.0 * np.logical_and(got, expected).sum() / (got.sum() + expected.sum())
        assert dice == 1.0, (name, dice)
        assert by_name[name]["voxels"] == int(expected.sum())
    box, _ = BOXES["kidney_left"]
    assert by_name["kidney_left"]["voxels"] == 5 * 6 * 6
    k, j, i = np.nonzero(segment_array(seg, by_name["kidney_left"]["segment"], reference))
    ras = (volume_ijk_to_ras(reference) @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3].mean(axis=1)
    centre_ijk = [(box[2].start + box[2].stop - 1) / 2, (box[1].start + box[1].stop - 1) / 2, (box[0].start + box[0].stop - 1) / 2, 1.0]  # fmt: skip
    np.testing.assert_allclose(ras, (volume_ijk_to_ras(reference) @ centre_ijk)[:3], atol=1e-6)
    assert ras[0] < 0  # RAS x < 0: the patient's left
    provenance = outcome.imported.provenance
    assert provenance["algorithm"] == ["VSP test node 0.3"] and job.model_version == "VSP test node 0.3"
    assert provenance["backend"] == "dicom" and provenance["server_latency_s"] > 0
    assert "planner" not in provenance["service"] and provenance["service"].startswith(
        "dicom+http://127.0.0.1:"
    )
    assert provenance["seg_series_uid"] == node_worker.seg_series


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_http_trigger_seg_found_and_imported_exactly(hospital, ct_template, app, tmp_path):
    study, series = upload_ct(hospital, ct_template)
    node = AiNode(hospital, tmp_path / "node", decoy=True).start()
    try:
        backend = DicomInOutBackend(
            dicom_settings(trigger="http", trigger_url=node.url), store_client=client_for(hospital)
        )
        store = JobStore(tmp_path / "case")
        outcome = run_infer(
            app, backend, store, InferRequest("organs", study_uid=study, series_uid=series),
            out=tmp_path / "case" / "ai.seg.nrrd",
        )  # fmt: skip
        assert node.error is None, node.error
    finally:
        node.stop()
    assert len(node.requests) == 1
    request = node.requests[0]
    assert (request["study_uid"], request["series_uid"], request["model"]) == (study, series, "organs")
    assert request["request_id"] == outcome.job.job_id and "planner" not in json.dumps(request)
    check_result(outcome, node, _reference(app))
    job = store.get(outcome.job.job_id)
    assert job.state == "done" and job.attempts == 1
    assert job.remote["ignored_segs"] == {node.decoy_series: "references another series"}
    assert (tmp_path / "case" / "ai.seg.nrrd").is_file()


def _reference(app):
    nodes = [n for n in app.scene.GetNodesByClass("vtkMRMLScalarVolumeNode") if n.GetName() == "CT"]
    assert len(nodes) == 1
    return nodes[0]


def test_node_that_never_answers_times_out_then_resume_does_not_trigger_twice(
    hospital, ct_template, app, tmp_path
):
    """Orthanc metadata trigger. The first client waits 1.5 s and gives up (exit 6); the job
    keeps its trigger. A new client (a restart) resumes: it polls, finds the SEG the node wrote
    meanwhile, and never writes a second request."""
    study, series = upload_ct(hospital, ct_template)
    store = JobStore(tmp_path / "case")
    silent = AiNode(hospital, tmp_path / "silent", trigger="orthanc", answer=False).start()
    settings = dict(trigger="orthanc", timeout_s=1.5)
    began = time.monotonic()
    try:
        with pytest.raises(ServiceTimeout) as caught:
            run_infer(app, DicomInOutBackend(dicom_settings(**settings), store_client=client_for(hospital)),
                      store, InferRequest("organs", study_uid=study, series_uid=series))  # fmt: skip
        assert caught.value.exit_code == 6 and "resume" in str(caught.value)
        waited_s = time.monotonic() - began
        assert waited_s >= 1.5 and waited_s < 20
        deadline = time.monotonic() + 10
        while not silent.requests and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        silent.stop()
    assert len(silent.requests) == 1
    (job,) = store.jobs()
    assert job.state == "failed" and job.remote["triggered_at"] and job.remote["trigger"] == "orthanc"
    client = client_for(hospital)
    assert client.get_study_metadata(study, "VSPState") == "segmenting"
    first_request = client.get_study_metadata(study, "VSPRequest")
    # the node picks the request up late (it was "processing"; hand it to a working node)
    record = json.loads(first_request)
    record["status"] = "requested"
    client.set_study_metadata(study, "VSPRequest", json.dumps(record))
    node = AiNode(hospital, tmp_path / "node", trigger="orthanc").start()
    try:
        triggers = []
        backend = DicomInOutBackend(
            dicom_settings(**{**settings, "timeout_s": 60.0}), store_client=client_for(hospital)
        )
        original = backend._trigger
        backend._trigger = lambda *a: (triggers.append(a), original(*a))
        outcome = resume(app, backend, JobStore(tmp_path / "case"), job.job_id)
        assert node.error is None, node.error
    finally:
        node.stop()
    assert triggers == [] and len(node.requests) == 1 and node.requests[0]["request_id"] == job.job_id
    assert json.loads(client.get_study_metadata(study, "VSPRequest"))["requested"] == record["requested"]
    check_result(outcome, node, _reference(app))
    assert store.get(job.job_id).state == "done"


def test_node_failure_reported_in_metadata_stops_waiting(hospital, ct_template, app, tmp_path):
    study, series = upload_ct(hospital, ct_template)
    client = client_for(hospital)
    backend = DicomInOutBackend(dicom_settings(trigger="orthanc", timeout_s=30.0), store_client=client)
    original = backend._trigger

    def trigger_then_fail(job, remote):
        original(job, remote)
        record = json.loads(client.get_study_metadata(study, "VSPRequest"))
        record.update(status="failed", message="model crashed: out of GPU memory")
        client.set_study_metadata(study, "VSPRequest", json.dumps(record))

    backend._trigger = trigger_then_fail
    began = time.monotonic()
    with pytest.raises(Exception) as caught:
        run_infer(
            app, backend, JobStore(tmp_path), InferRequest("organs", study_uid=study, series_uid=series)
        )
    assert time.monotonic() - began < 10 and caught.value.exit_code == 6
    assert "out of GPU memory" in str(caught.value)


def test_external_node_gets_a_deidentified_copy_and_the_seg_is_mapped_back(
    hospital, ct_template, app, tmp_path
):
    """The node is outside: it watches its own store and sees only pseudonyms. Its SEG refers to
    the pseudonymised series; the client maps it back with the local key onto the original CT."""
    external = OrthancServer(tmp_path / "external", extra_config=EXTRA_CONFIG).start()
    try:
        study, series = upload_ct(hospital, ct_template)
        node = AiNode(external, tmp_path / "node").start()
        try:
            key = tmp_path / "private" / "deid-key.json"
            external_client = client_for(external)
            # The copy is pushed as raw bytes (STOW-RS of the written files), not re-encoded by
            # dicomweb-client: count the requests and the instances they carried.
            posts: list[tuple[str, int]] = []
            original_post = external_client.session.post

            def post(url, *args, **kwargs):
                body = kwargs.get("data")
                posts.append((kwargs.get("headers", {}).get("Content-Type", ""), len(body.paths)))
                return original_post(url, *args, **kwargs)

            external_client.session.post = post
            external_client.dicomweb.store_instances = lambda *a, **k: pytest.fail("re-encoded")
            backend = DicomInOutBackend(
                dicom_settings(trigger="http", trigger_url=node.url, external=True, key_file=str(key)),
                store_client=external_client,
                source_client=client_for(hospital),
            )
            outcome = run_infer(app, backend, JobStore(tmp_path / "case"),
                                InferRequest("organs", study_uid=study, series_uid=series))  # fmt: skip
            assert node.error is None, node.error
        finally:
            node.stop()
        (request,) = node.requests
        assert [kind.split(";")[0] for kind, _ in posts] == ["multipart/related"]
        assert posts[0][1] == SHAPE_KJI[0]  # every slice, in one request
        assert request["study_uid"] != study and request["series_uid"] != series
        assert request["study_uid"].startswith("2.25.")
        # nothing identifying reached the external store
        for instance in external.rest("GET", "/instances"):
            tags = external.rest("GET", f"/instances/{instance}/simplified-tags")
            text = json.dumps(tags)
            assert "HOSP-4711" not in text and "DOE" not in text and study not in text and series not in text
            assert tags.get("PatientIdentityRemoved") == "YES" or tags.get("Modality") == "SEG"
        assert (key.stat().st_mode & 0o777) == 0o600
        job = outcome.job
        assert (
            job.remote["deidentified"] == "yes" and outcome.imported.provenance["deidentified_copy"] is True
        )
        reference = _reference(app)
        assert reference.GetAttribute("DICOM.SeriesInstanceUID") == series  # the original CT
        check_result(outcome, node, reference)
        seg = outcome.imported.segmentation_node
        assert seg.GetAttribute("DICOM.ReferencedSeriesInstanceUID") == series
        saved = pydicom.dcmread(next((tmp_path / "case" / "service-results").glob("*.dcm")))
        assert saved.StudyInstanceUID == study and saved.PatientID == "HOSP-4711"
    finally:
        external.kill()


def test_external_monai_label_refuses_a_datastore_image(app, tmp_path):
    backend = make_backend(load_settings(None, backend="monailabel", url="http://127.0.0.1:9", external=True))
    store = JobStore(tmp_path)
    with pytest.raises(ServiceRequestError) as caught:
        run_infer(app, backend, store, InferRequest("segmentation", image_id="DOE_JANE_CT"))
    assert caught.value.exit_code == 2 and "--volume" in str(caught.value)
    assert store.jobs() == []  # nothing recorded, nothing sent


def test_errors_are_one_hierarchy_with_the_stores():
    from CasePortalConnectorLib.service import base
    from VSPCoreLib import errors

    assert issubclass(base.ServiceError, errors.RemoteError)
    assert (
        issubclass(base.ServiceUnreachable, errors.ServerUnreachableError)
        and base.ServiceUnreachable.exit_code == 4
    )
    assert issubclass(base.ServiceAuthError, errors.CredentialsError) and base.ServiceAuthError.exit_code == 5
    assert issubclass(base.ServiceTimeout, errors.ServerResponseError) and base.ServiceTimeout.exit_code == 6
    assert base.ServiceRequestError.exit_code == 2


def test_settings_are_checked():
    with pytest.raises(ServiceRequestError, match="trigger_url"):
        dicom_settings(trigger="http")
    with pytest.raises(ServiceRequestError, match="unknown trigger"):
        dicom_settings(trigger="email")
    with pytest.raises(ServiceRequestError, match="https"):
        dicom_settings(trigger_url="http://node.example.org/process")
    with pytest.raises(ServiceRequestError, match="poll"):
        dicom_settings(trigger="orthanc", poll_s=0)


def test_store_unreachable_and_credentials_exit_codes(hospital, app, tmp_path):
    from VSPCoreLib.errors import CredentialsError, ServerUnreachableError

    request = InferRequest("organs", study_uid="1.2.3", series_uid="1.2.3.4")
    dead = StoreClient(
        StoreSettings(url=f"http://127.0.0.1:{free_port()}", username="x", retries=0), secret="x"
    )
    with pytest.raises(ServerUnreachableError) as caught:
        run_infer(
            app,
            DicomInOutBackend(dicom_settings(trigger="orthanc"), store_client=dead),
            JobStore(tmp_path),
            request,
        )
    assert caught.value.exit_code == 4
    wrong = StoreClient(StoreSettings(url=hospital.url, username=hospital.user, retries=0), secret="wrong")
    with pytest.raises(CredentialsError) as caught:
        run_infer(
            app,
            DicomInOutBackend(dicom_settings(trigger="orthanc"), store_client=wrong),
            JobStore(tmp_path),
            request,
        )
    assert caught.value.exit_code == 5


def test_cli_infer_jobs_resume(hospital, ct_template, tmp_path):
    """`vsp service infer --backend dicom`: a node that does not answer in time exits 6; `jobs`
    lists the job; once the node works, `resume` imports its SEG without a second trigger."""
    study, series = upload_ct(hospital, ct_template)
    password = tmp_path / "password"
    password.write_text(hospital.password)
    password.chmod(0o600)
    store_settings = tmp_path / "store.json"
    store_settings.write_text(
        json.dumps({"url": hospital.url, "username": hospital.user, "password_file": str(password)})
    )
    node = AiNode(hospital, tmp_path / "node", answer=False).start()
    try:
        settings = tmp_path / "service.json"
        settings.write_text(json.dumps({"backend": "dicom", "trigger": "http", "trigger_url": node.url,
                                        "model": "organs", "poll_s": 0.2, "poll_max_s": 0.5}))  # fmt: skip
        out = tmp_path / "case" / "ai.seg.nrrd"
        common = ["--settings", str(settings), "--store-settings", str(store_settings)]
        first = subprocess.run([*VSP, "service", "infer", *common, "--study", study, "--series", series,
                                "--out", str(out), "--timeout-s", "1"], capture_output=True, text=True, timeout=180)  # fmt: skip
        assert first.returncode == 6, first.stderr
        assert "no SEG referencing series" in first.stderr and not out.exists()
        listed = subprocess.run([*VSP, "service", "jobs", "--jobs", str(out.parent)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert listed.returncode == 0 and f"series {series}" in listed.stdout and "failed" in listed.stdout
        (job,) = JobStore(out.parent).jobs()
        node.answer = True
        threading.Thread(target=node.process, args=(node.requests[0],), daemon=True).start()
        second = subprocess.run([*VSP, "service", "resume", job.job_id, "--jobs", str(out.parent), *common],
                                capture_output=True, text=True, timeout=180)  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert node.error is None, node.error
    finally:
        node.stop()
    assert len(node.requests) == 1 and out.is_file()
    assert "SCT 64033007" in second.stdout and "3 segments" in second.stdout
    assert JobStore(out.parent).get(job.job_id).state == "done"
