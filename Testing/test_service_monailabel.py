"""The segmentation service against a REAL MONAI Label server (monailabel 0.8.5 in its own venv,
Testing/monailabel/app: intensity bands as labels, no weights), started on 127.0.0.1.

The test volume is asymmetric: an off-centre box of intensity 1000 ("kidney_left") on the
patient's left (LPS +x), a "tumor" box (3000) on the right and an "aorta" box (4000) elsewhere,
on a grid with unequal spacings and an off-origin. The imported label must land on the source
grid in RAS exactly where the boxes are.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel_server import MonaiLabelServer, free_port

from CasePortalConnectorLib.service.base import (
    InferRequest,
    JobStore,
    ServiceError,
    ServiceRequestError,
    ServiceTimeout,
    ServiceUnreachable,
    load_settings,
)
from CasePortalConnectorLib.service.runner import make_backend, run_infer, write_clean_nrrd

SPACING = (1.5, 1.2, 2.0)  # i, j, k (mm)
ORIGIN_LPS = (-30.0, -20.0, 10.0)
SHAPE_KJI = (24, 32, 40)
LEFT_BOX = (slice(3, 10), slice(5, 13), slice(28, 36))  # k, j, i: high i = LPS +x = patient's left
TUMOR_BOX = (slice(15, 20), slice(20, 26), slice(4, 10))
AORTA_BOX = (slice(2, 22), slice(14, 18), slice(18, 22))


def box_centre_ras(box) -> np.ndarray:
    centre_ijk = np.array(
        [
            (box[2].start + box[2].stop - 1) / 2,
            (box[1].start + box[1].stop - 1) / 2,
            (box[0].start + box[0].stop - 1) / 2,
        ]
    )
    lps = np.array(ORIGIN_LPS) + centre_ijk * np.array(SPACING)
    return lps * np.array([-1.0, -1.0, 1.0])


def write_test_volume(path: Path) -> Path:
    voxels = np.zeros(SHAPE_KJI, np.int16)
    voxels[LEFT_BOX] = 1000
    voxels[TUMOR_BOX] = 3000
    voxels[AORTA_BOX] = 4000
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    # A patient name in the header: it must never travel to the service.
    image.SetMetaData("PatientName", "DOE^JANE")
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MonaiLabelServer(tmp_path_factory.mktemp("monailabel")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    return write_test_volume(tmp_path_factory.mktemp("volume") / "ct.nrrd")


@pytest.fixture
def app():
    from VSPCoreLib.app import VSPApplication

    return VSPApplication.create_headless()


def settings_for(url: str, **kwargs):
    return load_settings(None, url=url, backend="monailabel", **kwargs)


def centroid_ras(segmentation_node, segment_name: str, reference) -> np.ndarray:
    from VSPCoreLib.arrays import segment_mask

    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
    assert segment_id, f"no segment {segment_name!r}"
    grid = segment_mask(segmentation_node, segment_id, reference_volume=reference, crop=False)
    k, j, i = np.nonzero(grid.array)
    return grid.ras_of(np.stack([i, j, k], axis=1)).mean(axis=0)


def test_info_lists_the_model_and_its_labels(server):
    info = make_backend(settings_for(server.url)).info()
    assert info["models"]["threshold_organs"]["labels"] == {
        "kidney_left": 1,
        "kidney_right": 2,
        "tumor": 3,
        "aorta": 4,
    }
    assert info["name"] == "SlicerVSP test app" and info["url"] == server.url


def test_infer_by_upload_lands_where_the_server_put_it(server, volume, app, tmp_path):
    from VSPCoreLib import storage

    store = JobStore(tmp_path)
    before = server.infer_count()
    outcome = run_infer(
        app, make_backend(settings_for(server.url)), store, InferRequest("threshold_organs", volume=str(volume)),
        out=tmp_path / "ai.seg.nrrd",
    )  # fmt: skip
    assert server.infer_count() == before + 1
    job = outcome.job
    assert job.state == "done" and job.attempts == 1 and job.server_latency_s is not None
    by_class = {s["class_name"]: s for s in job.segments}
    assert set(by_class) == {"kidney_left", "tumor", "aorta"}  # kidney_right: absent from the image
    assert by_class["kidney_left"]["structure"] == "kidney_left"
    assert by_class["kidney_left"]["code"].startswith("SCT 64033007")  # Kidney, left
    assert by_class["aorta"]["structure"] == "aorta"
    assert by_class["tumor"]["structure"] is None and "85756007" in by_class["tumor"]["code"]  # generic
    assert any("'tumor'" in w for w in job.warnings) and any("kidney_right" in w for w in job.warnings)
    assert by_class["kidney_left"]["voxels"] == 7 * 8 * 8
    reference = storage.load_volume(app, volume, name="source")
    node = outcome.imported.segmentation_node
    assert not outcome.imported.resampled
    left = centroid_ras(node, by_class["kidney_left"]["segment"], reference)
    np.testing.assert_allclose(left, box_centre_ras(LEFT_BOX), atol=1e-6)
    assert left[0] < 0  # RAS x < 0: the patient's left
    np.testing.assert_allclose(centroid_ras(node, "tumor", reference), box_centre_ras(TUMOR_BOX), atol=1e-6)
    # Saved with codes and provenance: read back from the .seg.nrrd.
    saved = storage.load_segmentation(app, tmp_path / "ai.seg.nrrd")
    header = (tmp_path / "ai.seg.nrrd").read_bytes()[:20000].decode("latin-1")
    assert "SlicerVSP.Provenance" in header and "threshold_organs" in header and server.url in header
    np.testing.assert_allclose(
        centroid_ras(saved, by_class["kidney_left"]["segment"], reference),
        box_centre_ras(LEFT_BOX),
        atol=1e-6,
    )
    record = json.loads(store.path.read_text())["jobs"][job.job_id]
    assert record["state"] == "done" and record["service_url"] == server.url


def test_clean_upload_has_geometry_only(volume, app, tmp_path):
    from CasePortalConnectorLib.service.runner import CLEAN_NRRD_FIELDS
    from VSPCoreLib import storage

    assert "DOE^JANE" in volume.read_bytes()[:4000].decode("latin-1")
    node = storage.load_volume(app, volume, name="source")
    clean = write_clean_nrrd(node, tmp_path / "upload.nrrd")
    head = clean.read_bytes().split(b"\n\n", 1)[0].decode("ascii").splitlines()
    assert head[0] == "NRRD0004"
    assert [line.split(":")[0] for line in head[1:]] == list(CLEAN_NRRD_FIELDS)
    image = sitk.ReadImage(str(clean))
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN_LPS)
    np.testing.assert_allclose(image.GetSpacing(), SPACING)
    assert sitk.GetArrayFromImage(image)[LEFT_BOX].min() == 1000


def test_infer_by_datastore_id_and_save_label_back(server, volume, app, tmp_path):
    from CasePortalConnectorLib.service.runner import save_label_to_server
    from VSPCoreLib import storage

    server.add_image(volume, "case001")
    backend = make_backend(settings_for(server.url))
    reference = storage.load_volume(app, volume, name="source")
    store = JobStore(tmp_path)
    outcome = run_infer(
        app, backend, store, InferRequest("threshold_organs", image_id="case001"), reference_volume=reference
    )
    node = outcome.imported.segmentation_node
    np.testing.assert_allclose(
        centroid_ras(
            node,
            "Kidney, left"
            if False
            else outcome.job.segments[[s["class_name"] for s in outcome.job.segments].index("kidney_left")][
                "segment"
            ],
            reference,
        ),
        box_centre_ras(LEFT_BOX),
        atol=1e-6,
    )
    answer = save_label_to_server(backend, outcome.job, node, reference, store)
    saved = list((server.studies / "labels" / "final").glob("case001*"))
    assert saved, answer
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(saved[0])))
    assert label[LEFT_BOX].min() == 1 and label[TUMOR_BOX].min() == 3 and (label == 2).sum() == 0


def test_unknown_model_is_named_with_the_known_ones(server, volume, app, tmp_path):
    with pytest.raises(ServiceRequestError, match="no model 'liver_magic'.*threshold_organs") as caught:
        run_infer(
            app,
            make_backend(settings_for(server.url)),
            JobStore(tmp_path),
            InferRequest("liver_magic", volume=str(volume)),
        )
    assert caught.value.exit_code == 2
    assert not (tmp_path / JobStore.FILE_NAME).exists()  # nothing was submitted


def test_server_error_500(server, volume, app, tmp_path):
    store = JobStore(tmp_path)
    with pytest.raises(ServiceError, match=r"failed on POST /infer/threshold_organs \(500\)") as caught:
        run_infer(
            app,
            make_backend(settings_for(server.url, retries=0)),
            store,
            InferRequest("threshold_organs", volume=str(volume), params={"fail": True}),
        )
    assert caught.value.exit_code == 6
    (job,) = store.jobs()
    assert job.state == "failed" and "500" in job.error


def test_slow_server_times_out(server, volume, app, tmp_path):
    began = time.monotonic()
    with pytest.raises(
        ServiceTimeout, match="no answer to POST /infer/threshold_organs within 1 s"
    ) as caught:
        run_infer(
            app,
            make_backend(settings_for(server.url, timeout_s=1.0)),
            JobStore(tmp_path),
            InferRequest("threshold_organs", volume=str(volume), params={"sleep_s": 4}),
        )
    assert time.monotonic() - began < 4
    assert caught.value.exit_code == 6
    time.sleep(4)  # let the server finish the slow request (it serves one at a time)


def test_server_not_started(volume, app, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(ServiceUnreachable, match="cannot be reached") as caught:
        run_infer(
            app,
            make_backend(settings_for(url, retries=2, backoff_s=0.1)),
            JobStore(tmp_path),
            InferRequest("threshold_organs", volume=str(volume)),
        )
    assert caught.value.exit_code == 4 and time.monotonic() - began < 5


def test_server_killed_during_infer(volume, app, tmp_path):
    server = MonaiLabelServer(tmp_path / "server").start()
    try:
        store = JobStore(tmp_path / "case")
        errors = []

        def killer():
            deadline = time.monotonic() + 60
            while server.infer_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            server.kill()

        thread = threading.Thread(target=killer)
        thread.start()
        with pytest.raises(ServiceUnreachable, match="connection was lost during POST /infer") as caught:
            run_infer(
                app,
                make_backend(settings_for(server.url)),
                store,
                InferRequest("threshold_organs", volume=str(volume), params={"sleep_s": 30}),
            )
        thread.join()
        assert caught.value.exit_code == 4 and not errors
        (job,) = store.jobs()
        assert job.state == "failed" and job.attempts == 1
    finally:
        server.stop()


def test_cli_info_and_infer(server, volume, tmp_path):
    vsp = [sys.executable, "-m", "SurgicalPlanningLib.cli"]
    info = subprocess.run(
        [*vsp, "service", "info", "--url", server.url, "--json"], capture_output=True, text=True, timeout=120
    )
    assert info.returncode == 0, info.stderr
    assert "threshold_organs" in json.loads(info.stdout)["models"]
    out = tmp_path / "ai.seg.nrrd"
    run = subprocess.run(
        [
            *vsp,
            "service",
            "infer",
            "--url",
            server.url,
            "--model",
            "threshold_organs",
            "--volume",
            str(volume),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "kidney_left" in run.stdout and "SCT 64033007" in run.stdout and out.is_file()
    bad = subprocess.run(
        [
            *vsp,
            "service",
            "infer",
            "--url",
            server.url,
            "--model",
            "nope",
            "--volume",
            str(volume),
            "--out",
            str(tmp_path / "x.seg.nrrd"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no model 'nope'" in bad.stderr
    down = subprocess.run(
        [*vsp, "service", "info", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 4 and "cannot be reached" in down.stderr


def test_infer_through_a_session(server, volume, app, tmp_path):
    """--session: the clean volume goes once to PUT /session/, the infer names the session and
    sends no file; the result lands where the server put it."""
    from VSPCoreLib import storage

    backend = make_backend(settings_for(server.url))
    calls = []
    infer, create = backend.client.infer, backend.client.create_session
    backend.client.infer = lambda *a, **k: calls.append(("infer", k)) or infer(*a, **k)
    backend.client.create_session = lambda f: calls.append(("session", f)) or create(f)
    store = JobStore(tmp_path)
    before = server.infer_count()
    request = InferRequest("threshold_organs", volume=str(volume))
    outcome = run_infer(app, backend, store, request, session=True)
    assert [c[0] for c in calls] == ["session", "infer"] and server.infer_count() == before + 1
    job = outcome.job
    assert job.state == "done" and job.session_id
    assert calls[1][1]["session_id"] == job.session_id and calls[1][1]["volume_file"] is None
    sent = server.folder / "sessions" / job.session_id / "volume.nrrd"
    assert sent.is_file() and b"DOE^JANE" not in sent.read_bytes()  # the clean NRRD
    reference = storage.load_volume(app, volume, name="source")
    by_class = {s["class_name"]: s for s in job.segments}
    np.testing.assert_allclose(
        centroid_ras(outcome.imported.segmentation_node, by_class["kidney_left"]["segment"], reference),
        box_centre_ras(LEFT_BOX),
        atol=1e-6,
    )
    assert by_class["kidney_left"]["voxels"] == 7 * 8 * 8
    # The same request again through a session is the finished job's twin, not a pending one.
    assert store.find_pending(backend.name, backend.service_url, request) is None


def test_cli_infer_save_label_lands_in_the_datastore(server, volume, tmp_path):
    """`vsp service infer --image ID --save-label`: the imported result goes back to the
    server's datastore as the image's final label, with the model's values at the right voxels."""
    server.add_image(volume, "case_cli")
    out = tmp_path / "ai.seg.nrrd"
    command = [sys.executable, "-m", "SurgicalPlanningLib.cli", "service", "infer", "--url", server.url,
               "--model", "threshold_organs", "--image", "case_cli", "--reference", str(volume),
               "--out", str(out), "--save-label"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    saved = list((server.studies / "labels" / "final").glob("case_cli*"))
    assert len(saved) == 1, run.stdout
    assert "label saved back to the server's datastore: image case_cli" in run.stdout
    label = sitk.ReadImage(str(saved[0]))
    np.testing.assert_allclose(label.GetOrigin(), ORIGIN_LPS, atol=1e-6)
    np.testing.assert_allclose(label.GetSpacing(), SPACING, atol=1e-6)
    voxels = sitk.GetArrayFromImage(label)
    assert (voxels == 1).sum() == 7 * 8 * 8 and voxels[LEFT_BOX].min() == 1
    assert (voxels == 3).sum() == 5 * 6 * 6 and (voxels == 4).sum() == 20 * 4 * 4
    assert b"DOE^JANE" not in saved[0].read_bytes()
    # --save-label needs a datastore image: with --volume it is refused before anything is sent.
    before = server.infer_count()
    refused = subprocess.run(
        [*command[:9], "--volume", str(volume), "--out", str(tmp_path / "b.seg.nrrd"), "--save-label"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "--save-label" in refused.stderr
    assert server.infer_count() == before
