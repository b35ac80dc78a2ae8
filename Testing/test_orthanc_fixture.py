"""The Orthanc test fixture itself: configuration, authentication, restart, kill, TLS."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request

import pytest


def _get(url: str, user: str | None, password: str | None, context=None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_orthanc_requires_authentication_and_has_dicomweb(orthanc):
    assert orthanc.url.startswith("http://127.0.0.1:")
    assert _get(orthanc.url + "/system", None, None) == 401
    assert _get(orthanc.url + "/system", orthanc.user, "wrong") == 401
    assert _get(orthanc.url + "/system", orthanc.user, orthanc.password) == 200
    assert _get(orthanc.dicomweb_url + "/studies", orthanc.user, orthanc.password) == 200
    plugins = orthanc.rest("GET", "/plugins")
    assert "dicom-web" in plugins
    assert orthanc.config()["DicomServerEnabled"] is False


def test_orthanc_user_metadata_and_attachments_declared(orthanc, tmp_path):
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    phantom = generate_phantom(shape=(16, 16, 4), seed=3)
    files = write_dicom_series(phantom, tmp_path / "dcm")
    answer = orthanc.upload_file(files[0])
    study = answer["ParentStudy"]
    orthanc.rest("PUT", f"/studies/{study}/metadata/VSPState", b"planning")
    assert orthanc.rest("GET", f"/studies/{study}/metadata/VSPState") == b"planning"
    orthanc.rest("PUT", f"/studies/{study}/attachments/vsp-plan", b'{"version": 1}')
    assert orthanc.rest("GET", f"/studies/{study}/attachments/vsp-plan/data") == {"version": 1}
    assert "vsp-plan" in orthanc.rest("GET", f"/studies/{study}/attachments")
    orthanc.rest("DELETE", f"/studies/{study}")


def test_orthanc_restart_keeps_storage_and_kill_stops_it(orthanc_factory, tmp_path):
    server = orthanc_factory()
    server.rest("PUT", "/tools/default-encoding", b"Utf8")
    before = server.rest("GET", "/statistics")
    server.kill()
    assert not server.running
    with pytest.raises(OSError):
        server.rest("GET", "/system", timeout=2)
    server.restart()
    assert server.rest("GET", "/statistics")["CountStudies"] == before["CountStudies"]
    server.stop()
    assert not server.running


def test_orthanc_tls_self_signed(orthanc_factory):
    server = orthanc_factory(tls=True)
    assert server.url.startswith("https://")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/system", timeout=5)
    context = ssl.create_default_context(cafile=str(server.ca_bundle))
    assert _get(server.url + "/system", server.user, server.password, context) == 200
