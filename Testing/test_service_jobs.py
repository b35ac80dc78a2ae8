"""Service jobs: resumed after a client restart without a second submit (real MONAI Label
server), token authentication and retries (a tiny local HTTP stub: the MONAI Label server's own
auth needs a Keycloak, which the tests do not run), settings, and the local engine in its own
process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from monailabel_server import MonaiLabelServer
from test_service_monailabel import write_test_volume

from CasePortalConnectorLib.service.base import (
    CancelToken,
    InferRequest,
    JobCancelled,
    JobStore,
    ServiceAuthError,
    ServiceRequestError,
    load_settings,
)
from CasePortalConnectorLib.service.monailabel import MonaiLabelClient
from CasePortalConnectorLib.service.runner import make_backend, run_infer

VSP = [sys.executable, "-m", "SurgicalPlanningLib.cli"]


def test_resume_after_client_restart_is_not_submitted_twice(tmp_path):
    server = MonaiLabelServer(tmp_path / "server").start()
    try:
        volume = write_test_volume(tmp_path / "ct.nrrd")
        case = tmp_path / "case"
        case.mkdir()
        out = case / "ai.seg.nrrd"
        env = {**os.environ, "VSP_TEST_HOLD": "importing the result", "VSP_TEST_HOLD_S": "120"}
        command = [*VSP, "service", "infer", "--url", server.url, "--model", "threshold_organs", "--volume", str(volume), "--out", str(out)]  # fmt: skip
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        held = False
        while time.monotonic() < deadline and first.poll() is None:
            store = JobStore(case)
            if store.path.exists() and any(j.state == "result_saved" for j in store.jobs()):
                held = True
                break
            time.sleep(0.2)
        assert held, first.communicate(timeout=5)
        time.sleep(0.5)
        first.send_signal(signal.SIGKILL)  # the client dies after the answer arrived, before the import
        first.wait(10)
        assert server.infer_count() == 1 and not out.exists()
        (job,) = JobStore(case).jobs()
        assert job.state == "result_saved"
        jobs = subprocess.run(
            [*VSP, "service", "jobs", "--jobs", str(case)], capture_output=True, text=True, timeout=120
        )
        assert job.job_id in jobs.stdout and "result_saved" in jobs.stdout
        again = subprocess.run([*VSP, "service", "resume", job.job_id[:8], "--jobs", str(case), "--url", server.url], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert "not submitted again" in again.stdout and out.is_file()
        assert server.infer_count() == 1  # no second submit
        (job,) = JobStore(case).jobs()
        assert job.state == "done" and job.attempts == 1
    finally:
        server.stop()


# --- a local stub for authentication and transient errors -------------------------------------


class _Stub(BaseHTTPRequestHandler):
    token = "sesame-token"
    failures_left = 0
    calls: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        type(self).calls.append(f"GET {self.path} {self.headers.get('Authorization')}")
        if self.path == "/auth/":
            return self._send(200, {"enabled": True})
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            return self._send(503, {"detail": "busy"})
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(401, {"detail": "Not authenticated"})
        return self._send(
            200,
            {
                "name": "stub",
                "version": "1",
                "models": {"m": {"type": "segmentation", "labels": {"aorta": 1}}},
            },
        )

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode()
        type(self).calls.append(f"POST {self.path}")
        if self.path == "/auth/token" and "username=planner" in body and "password=right" in body:
            return self._send(200, {"access_token": self.token, "token_type": "Bearer"})
        return self._send(401, {"detail": "Incorrect username or password"})


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    _Stub.calls, _Stub.failures_left = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _token_file(path: Path, content: dict | str, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(content) if isinstance(content, dict) else content)
    path.chmod(mode)
    return path


def test_token_authentication(stub, tmp_path):
    good = _token_file(tmp_path / "good.json", {"username": "planner", "password": "right"})
    info = MonaiLabelClient(load_settings(None, url=stub, token_file=str(good))).info()
    assert info["name"] == "stub" and "GET /info/ Bearer sesame-token" in _Stub.calls
    bad = _token_file(tmp_path / "bad.json", {"username": "planner", "password": "wrong"})
    with pytest.raises(
        ServiceAuthError, match=r"refused the credentials \(401 on POST /auth/token\)"
    ) as caught:
        MonaiLabelClient(load_settings(None, url=stub, token_file=str(bad))).info()
    assert caught.value.exit_code == 5
    wrong_token = _token_file(tmp_path / "token.txt", "not-the-token")
    with pytest.raises(ServiceAuthError, match=r"401 on GET /info/"):
        MonaiLabelClient(load_settings(None, url=stub, token_file=str(wrong_token))).info()
    with pytest.raises(ServiceAuthError, match="no token file is set"):
        MonaiLabelClient(load_settings(None, url=stub)).info()
    readable = _token_file(tmp_path / "open.json", {"username": "planner", "password": "right"}, 0o644)
    with pytest.raises(ServiceAuthError, match="can be read by other users"):
        MonaiLabelClient(load_settings(None, url=stub, token_file=str(readable))).info()
    # The CLI: exit code 5, and the password never printed.
    run = subprocess.run([*VSP, "service", "info", "--url", stub], env={**os.environ, "VSP_SERVICE_TOKEN_FILE": str(bad)}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 5 and "wrong" not in run.stderr + run.stdout


def test_transient_errors_are_retried_with_backoff(stub, tmp_path):
    token = _token_file(tmp_path / "t.txt", "sesame-token")
    _Stub.failures_left = 2
    began = time.monotonic()
    info = MonaiLabelClient(load_settings(None, url=stub, token_file=str(token), backoff_s=0.2)).info()
    assert info["name"] == "stub" and _Stub.failures_left == 0
    assert time.monotonic() - began >= 0.2 + 0.4  # 0.2 s, then 0.4 s
    _Stub.failures_left = 5
    with pytest.raises(Exception, match=r"\(503\)"):
        MonaiLabelClient(
            load_settings(None, url=stub, token_file=str(token), retries=1, backoff_s=0.05)
        ).info()


def test_settings_and_url_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("VSP_SERVICE_URL", "https://gpu.example.org:8000/")
    settings = load_settings(None)
    assert settings.backend == "monailabel" and settings.url == "https://gpu.example.org:8000"
    for url, message in (
        ("http://gpu.example.org", "unencrypted"),
        ("https://user:secret@gpu.example.org", "user name or password"),
        ("ftp://gpu", "must start with https"),
    ):
        with pytest.raises(ServiceRequestError, match=message) as caught:
            load_settings(None, url=url)
        assert "secret" not in str(caught.value)
    file = tmp_path / "service.json"
    file.write_text(
        json.dumps({"url": "https://gpu.example.org", "external": True, "timeout_s": 30, "colour": 1})
    )
    with pytest.raises(ServiceRequestError, match="unknown settings"):
        load_settings(file)
    file.write_text(json.dumps({"url": "https://gpu.example.org", "external": True, "timeout_s": 30}))
    settings = load_settings(file)
    assert settings.external and settings.timeout_s == 30.0


# --- the local engine --------------------------------------------------------------------------


def test_local_engine_on_the_sample_case_in_a_child_process(tmp_path):
    import numpy as np

    from VSPCoreLib import storage
    from VSPCoreLib.app import VSPApplication
    from VSPCoreLib.arrays import segment_mask
    from VSPCoreLib.sampledata.phantom import generate_phantom

    phantom = generate_phantom((128, 128, 75))
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(phantom.ct_hu)
    image.SetSpacing(tuple(float(s) for s in phantom.spacing_mm))
    image.SetOrigin(tuple(float(o) for o in phantom.origin_lps))
    volume = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(volume))
    app = VSPApplication.create_headless()
    backend = make_backend(load_settings(None, backend="local"))
    store = JobStore(tmp_path / "case")
    cancel = CancelToken()
    timer = threading.Timer(1.0, cancel.cancel)
    timer.start()
    with pytest.raises(JobCancelled):
        run_infer(
            app,
            backend,
            store,
            InferRequest("classical", volume=str(volume), params={"sleep_s": 30}),
            cancel=cancel,
        )
    assert store.jobs()[0].state == "cancelled"
    outcome = run_infer(
        app,
        backend,
        store,
        InferRequest("classical", volume=str(volume)),
        out=tmp_path / "case" / "local.seg.nrrd",
    )
    by_class = {s["class_name"]: s for s in outcome.job.segments}
    assert {"aorta", "kidney_left", "kidney_right"} <= set(by_class)
    reference = storage.load_volume(app, volume, name="CT")
    node = outcome.imported.segmentation_node
    left_id = node.GetSegmentation().GetSegmentIdBySegmentName(by_class["kidney_left"]["segment"])
    grid = segment_mask(node, left_id, reference_volume=reference, crop=False)
    k, j, i = np.nonzero(grid.array)
    centre_ras = grid.ras_of(np.stack([i, j, k], axis=1)).mean(axis=0)
    truth_lps = np.array(phantom.truth.kidney_centres_lps["kidney_left"])
    assert np.linalg.norm(centre_ras - truth_lps * [-1, -1, 1]) < 15.0  # the left kidney, on the left
    assert centre_ras[0] < 0


def test_local_info_says_when_totalsegmentator_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    run = subprocess.run([*VSP, "service", "info", "--backend", "local"], capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": os.path.dirname(sys.executable)})  # fmt: skip
    assert (
        run.returncode == 0
        and "TotalSegmentator is not installed" in run.stdout
        and "classical" in run.stdout
    )


_WRITER = """
import sys, time
from CasePortalConnectorLib.service.base import InferRequest, Job, JobStore
store, name, count, start = JobStore(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
while time.time() < start:
    time.sleep(0.001)
for n in range(count):
    job = Job.new("local", "local", InferRequest("classical", volume=f"/{name}/{n}.nrrd"))
    job.job_id = f"{name}-{n:03d}"
    store.save(job)
"""


def test_two_processes_writing_one_job_store_lose_no_job(tmp_path):
    """Two clients save 60 jobs each into one store at the same moment: all 120 are there (a
    file lock around each read-modify-write; without it, the later write drops the other's)."""
    start = time.time() + 3.0
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name, "60", str(start)])
        for name in ("a", "b")
    ]
    for writer in writers:
        assert writer.wait(120) == 0
    jobs = {job.job_id for job in JobStore(tmp_path).jobs()}
    assert jobs == {f"{name}-{n:03d}" for name in ("a", "b") for n in range(60)}
    assert JobStore(tmp_path).lock_file.is_file()


def test_local_infer_to_a_case_scene_then_plan_with_a_plane(tmp_path):
    """End to end on the small phantom: `vsp service infer --backend local --out case.mrb` (the
    CT and the coded segmentation), then `vsp plan` finds the organ and the tumour by code
    ("Kidney, left", "Tumour") and reports the volumes of a plane cut."""
    import numpy as np
    import SimpleITK as sitk

    from VSPCoreLib.sampledata.phantom import generate_phantom

    phantom = generate_phantom((128, 128, 75))
    image = sitk.GetImageFromArray(phantom.ct_hu)
    image.SetSpacing(tuple(float(s) for s in phantom.spacing_mm))
    image.SetOrigin(tuple(float(o) for o in phantom.origin_lps))
    volume = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(volume))
    case = tmp_path / "case.mrb"
    infer = subprocess.run(
        [*VSP, "service", "infer", "--backend", "local", "--model", "classical", "--volume", str(volume),
         "--out", str(case), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr
    segments = {s["class_name"]: s for s in json.loads(infer.stdout)["job"]["segments"]}
    assert segments["kidney_left"]["code"].startswith("SCT 64033007")  # Kidney, left
    assert segments["tumour"]["structure"] == "tumour" and "generic" not in segments["tumour"]["code"]
    assert segments["aorta"]["code"].startswith("SCT 15825003")
    # The classical tumour: centre within 5 mm of the phantom's, 40-110 % of its volume.
    voxel_ml = float(np.prod(phantom.spacing_mm)) / 1000.0
    truth_ml = np.pi / 6 * phantom.truth.tumour_diameter_mm**3 / 1000.0
    assert 0.4 * truth_ml < segments["tumour"]["voxels"] * voxel_ml < 1.1 * truth_ml
    kidney_ras = np.array(phantom.truth.kidney_centres_lps["kidney_left"]) * [-1, -1, 1]
    plan = {
        "schema_version": 1, "software": "SlicerVSP", "active_variant": "lower half",
        "case": {"case_id": "VSP-SERVICE-E2E", "organ_key": "kidney_left", "tumour_key": "tumour"},
        "variants": [{"name": "lower half", "resections": [
            {"kind": "plane", "name": "cut", "origin_ras_mm": [float(v) for v in kidney_ras],
             "normal_ras": [0, 0, 1], "remove": "negative"}]}],
    }  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    run = subprocess.run(
        [*VSP, "plan", str(case), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "planned"),
         "--spacing-mm", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "planned" / "plan.json").read_text())["variants"][0]["results"]
    structures = results["structures"]
    assert structures["organ"]["segments"] == ["Kidney, left"]
    assert structures["organ"]["found_by"] == "code (whole structure)"
    assert structures["tumour"]["found_by"] == "code" and structures["tumour"]["structure_key"] == "tumour"
    resection = results["resection"]
    kidney_ml = segments["kidney_left"]["voxels"] * voxel_ml
    tumour_ml = segments["tumour"]["voxels"] * voxel_ml
    (kidney,) = [s for s in resection["segments"] if s["name"] == "Kidney, left"]
    assert kidney["volume_mL"] == pytest.approx(kidney_ml, abs=1e-3)  # voxel counts, exactly
    assert resection["organ_volume_mL"] == pytest.approx(kidney_ml + tumour_ml, abs=2e-3)
    total = resection["resected_volume_mL"] + resection["remnant_volume_mL"]
    assert total == pytest.approx(resection["organ_volume_mL"], abs=2e-3)
    assert 25 < resection["resected_fraction_percent"] < 75  # a cut through the kidney's centre
    assert "resected" in run.stdout.lower()
