"""The store client against a real Orthanc (Testing/orthanc_server.py): worklist, download,
resume, errors (credentials, unreachable, TLS, 404), and the `vsp store` commands."""

from __future__ import annotations

import copy
import io
import json
import os
import re

import numpy as np
import pydicom
import pytest
import requests
import urllib3
from pydicom.uid import generate_uid

from CasePortalConnectorLib.store import (
    IncompleteSeriesError,
    StoreClient,
    StoreNotFoundError,
    StoreSettings,
    WorklistQuery,
    cached_files,
    download_series,
    load_cached_series,
    search_worklist,
    set_state,
)
from VSPCoreLib.errors import (
    EXIT_CREDENTIALS,
    EXIT_UNREACHABLE,
    CredentialsError,
    ServerUnreachableError,
)

WORKLIST_STUDIES = 25


def _settings(server, **options) -> StoreSettings:
    values = dict(
        url=server.url,
        username=server.user,
        retries=1,
        backoff_s=0.05,
        connect_timeout_s=3,
        read_timeout_s=20,
    )
    values.update(options)
    return StoreSettings(**values)


def _client(server, password=None, **options) -> StoreClient:
    return StoreClient(_settings(server, **options), secret=server.password if password is None else password)


def _bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def template_slices(tmp_path_factory):
    """Two tiny CT slices from the phantom DICOM writer (datasets to copy into many studies)."""
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    files = write_dicom_series(generate_phantom((8, 8, 2), seed=11), tmp_path_factory.mktemp("tiny"))
    return [pydicom.dcmread(path) for path in files]


def _upload_study(server, template, *, patient_id, name, date, description, accession, modality=None) -> str:
    study, series = generate_uid(), generate_uid()
    for source in template:
        ds = copy.deepcopy(source)
        ds.PatientID, ds.PatientName, ds.StudyDate = patient_id, name, date
        ds.StudyDescription, ds.AccessionNumber = description, accession
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if modality:
            ds.Modality = modality
        server.rest("POST", "/instances", _bytes(ds))
    return study


@pytest.fixture(scope="module")
def worklist_studies(orthanc, template_slices):
    """25 tiny studies with their own PatientIDs, names, dates, descriptions, accessions."""
    studies = {}
    for n in range(WORKLIST_STUDIES):
        uid = _upload_study(
            orthanc,
            template_slices,
            patient_id=f"WL-P{n:03d}",
            name=f"Testpatient^Number{n:03d}",
            date=f"2024{1 + n % 12:02d}{1 + n:02d}",
            description=f"WLTEST {'kidney' if n % 2 else 'liver'} plan {n}",
            accession=f"WLACC{n:03d}",
        )
        studies[uid] = n
    return studies


# --- worklist ------------------------------------------------------------------------------
def test_worklist_paging_visits_each_study_once(orthanc, worklist_studies):
    client = _client(orthanc)
    query = WorklistQuery(description="WLTEST")
    seen, pages, offset = [], [], 0
    while True:
        page = search_worklist(client, query, limit=10, offset=offset, with_state=False)
        pages.append((len(page.studies), page.more))
        seen += [study.study_uid for study in page.studies]
        if not page.more:
            break
        offset += 10
    assert pages == [(10, True), (10, True), (5, False)]
    assert sorted(seen) == sorted(worklist_studies)  # each exactly once


def test_worklist_search_criteria(orthanc, worklist_studies):
    client = _client(orthanc)

    def found(**criteria) -> list[int]:
        page = search_worklist(client, WorklistQuery(**criteria), limit=100, with_state=False)
        return sorted(worklist_studies[s.study_uid] for s in page.studies if s.study_uid in worklist_studies)

    assert found(patient_id="WL-P007") == [7]
    assert found(accession="WLACC013") == [13]
    assert found(patient_name="Number02") == [20, 21, 22, 23, 24]  # substring of the name
    assert found(description="WLTEST kidney") == list(range(1, 25, 2))
    # dates: n -> 2024-(1 + n % 12)-(1 + n); March is n = 2 and 14
    assert found(description="WLTEST", date_from="2024-03-01", date_to="2024-03-31") == [2, 14]
    assert found(description="WLTEST", date_from="20240303", date_to="20240303") == [2]
    assert found(description="WLTEST", modality="CT") == list(range(25))
    assert found(description="WLTEST", modality="MR") == []
    entry = search_worklist(client, WorklistQuery(accession="WLACC005"), with_state=False).studies[0]
    assert (entry.study_date, entry.modalities, entry.series_count, entry.instance_count) == (
        "20240606",
        ["CT"],
        1,
        2,
    )
    assert "Testpatient" not in repr(entry) and "WL-P005" not in repr(entry)


def test_worklist_states_derived_and_from_metadata(orthanc, template_slices):
    client = _client(orthanc)
    plain = _upload_study(
        orthanc,
        template_slices,
        patient_id="ST-1",
        name="S^One",
        date="20240101",
        description="STATETEST a",
        accession="STA1",
    )
    with_seg = _upload_study(
        orthanc,
        template_slices,
        patient_id="ST-2",
        name="S^Two",
        date="20240101",
        description="STATETEST b",
        accession="STA2",
    )
    # a second series in the same study with modality SEG stands for our segmentation
    seg = copy.deepcopy(template_slices[0])
    seg.StudyInstanceUID, seg.SeriesInstanceUID, seg.Modality = with_seg, generate_uid(), "SEG"
    seg.PatientID, seg.PatientName = "ST-2", "S^Two"
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    orthanc.rest("POST", "/instances", _bytes(seg))
    page = search_worklist(client, WorklistQuery(description="STATETEST"), limit=10)
    states = {
        s.study_uid: (s.state, s.state_source, s.stored["seg"], s.stored["source_series"])
        for s in page.studies
    }
    assert states[plain] == ("requested", "derived", 0, 1)
    assert states[with_seg] == ("planning", "derived", 1, 1)
    set_state(client, plain, "approved")
    client.put_attachment(with_seg, "vsp-plan", b'{"v": 1}')
    page = search_worklist(client, WorklistQuery(description="STATETEST"), limit=10)
    states = {s.study_uid: (s.state, s.state_source, s.stored["plan"]) for s in page.studies}
    assert states[plain] == ("approved", "metadata", False)
    assert states[with_seg] == ("review", "derived", True)
    assert client.get_attachment(with_seg, "vsp-plan") == b'{"v": 1}'


# --- download ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_series(orthanc, tmp_path_factory):
    """The sample phantom series at the small grid (128 x 128 x 75), uploaded once."""
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    folder = tmp_path_factory.mktemp("sample")
    files = write_dicom_series(generate_phantom((128, 128, 75), seed=21), folder)
    orthanc.upload_folder(folder)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return folder, str(first.StudyInstanceUID), str(first.SeriesInstanceUID), len(files)


def test_download_equals_uploaded_voxels_and_geometry(orthanc, sample_series, tmp_path, app):
    from VSPCoreLib.dicom import read_series

    folder, study, series, count = sample_series
    client = _client(orthanc)
    steps = []
    result = download_series(client, study, series, tmp_path / "cache", progress=lambda f, m: steps.append(f))
    assert (result.expected, result.fetched, result.reused) == (count, count, 0)
    assert result.complete and steps[-1] == 1.0
    assert oct(os.stat(tmp_path / "cache").st_mode & 0o777) == "0o700"
    names = sorted(path.name for path in result.folder.iterdir())
    assert "series.json" in names and len(names) == count + 1
    assert all(name[:-4].replace(".", "").isdigit() for name in names if name.endswith(".dcm"))
    node, downloaded = load_cached_series(app.scene, result.folder)
    source = read_series(folder)
    assert downloaded.array.shape == source.array.shape == (75, 128, 128)
    assert np.array_equal(downloaded.array, source.array)
    assert np.allclose(downloaded.spacing_mm, source.spacing_mm)
    assert np.allclose(downloaded.origin_lps, source.origin_lps)
    assert np.allclose(downloaded.direction_lps, source.direction_lps)
    assert node.GetImageData().GetDimensions() == (128, 128, 75)
    again = download_series(client, study, series, tmp_path / "cache")
    assert (again.fetched, again.reused) == (0, count)


_SERIES_RETRIEVE = re.compile(r"/series/[0-9.]+$")
_INSTANCE_RETRIEVE = re.compile(r"/instances/[0-9.]+$")


class _CutStream:
    """A response body that breaks off after ``limit`` bytes, like a dropped connection."""

    def __init__(self, raw, limit: int):
        self._raw, self._limit = raw, limit

    def stream(self, amount=None, decode_content=True):
        sent = 0
        for chunk in self._raw.stream(amount, decode_content=decode_content):
            if sent + len(chunk) > self._limit:
                yield chunk[: self._limit - sent]
                raise urllib3.exceptions.ProtocolError("simulated network failure")
            sent += len(chunk)
            yield chunk

    @property
    def _fp(self):  # the standard library's response, read directly by the series stream
        return _CutReader(self._raw._fp, self._limit)

    def __getattr__(self, name):
        return getattr(self._raw, name)


class _CutReader:
    """``readinto`` of an http.client response that breaks off after ``limit`` bytes."""

    def __init__(self, source, limit: int):
        self._source, self._left = source, limit

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            raise ConnectionResetError("simulated network failure")
        count = self._source.readinto(memoryview(buffer)[: self._left])
        self._left -= count
        return count


class _FailingAdapter(requests.adapters.HTTPAdapter):
    """Counts the WADO-RS retrievals: a whole-series answer breaks off after ``cut_after`` bytes;
    single-instance requests fail like a dropped network after ``allowed`` of them."""

    def __init__(self, allowed: int, cut_after: int | None = None):
        super().__init__(pool_maxsize=8)
        self.allowed, self.cut_after = allowed, cut_after
        self.instances = self.series = 0

    def send(self, request, **kwargs):
        path = request.path_url
        if _INSTANCE_RETRIEVE.search(path):
            self.instances += 1
            if self.instances > self.allowed:
                raise requests.exceptions.ConnectionError("simulated network failure")
        response = super().send(request, **kwargs)
        if _SERIES_RETRIEVE.search(path):
            self.series += 1
            if self.cut_after is not None:
                response.raw = _CutStream(response.raw, self.cut_after)
        return response


def test_interrupted_download_resumes_and_is_never_loaded_half(orthanc, sample_series, tmp_path, app):
    folder, study, series, count = sample_series
    total = sum(path.stat().st_size for path in folder.glob("*.dcm"))
    client = _client(orthanc)
    failing = _FailingAdapter(allowed=0, cut_after=int(total * 0.4))  # the stream breaks at 40 %
    client.session.mount("http://", failing)
    with pytest.raises(ServerUnreachableError) as caught:
        download_series(client, study, series, tmp_path / "cache", workers=1)
    assert caught.value.exit_code == EXIT_UNREACHABLE
    assert failing.series == 1 and failing.instances >= 1  # then one by one: the network is down
    series_folder = tmp_path / "cache" / study / series
    present = sorted(series_folder.glob("*.dcm"))
    assert abs(len(present) - 0.4 * count) <= 2 and not (series_folder / "series.json").exists()
    assert not [p for p in series_folder.iterdir() if p.name.startswith(".")]  # no partial file left
    for path in present:  # every file kept is whole: the instance the store holds, byte for byte
        ds = pydicom.dcmread(path)
        assert path.name == ds.SOPInstanceUID + ".dcm"
        assert ds.pixel_array.shape == (128, 128)
    with pytest.raises(IncompleteSeriesError, match="incomplete"):
        load_cached_series(app.scene, series_folder)
    with pytest.raises(IncompleteSeriesError):
        cached_files(series_folder)
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    # a damaged cached file is fetched again, not trusted; more than half missing: one series request
    kept = len(present)
    present[0].write_bytes(b"not dicom")
    counting = _FailingAdapter(allowed=10**6)
    client = _client(orthanc)
    client.session.mount("http://", counting)
    result = download_series(client, study, series, tmp_path / "cache")
    assert (result.fetched, result.reused) == (count - kept + 1, kept - 1)
    assert (counting.series, counting.instances) == (1, 0)
    assert (result.series_requests, result.instance_requests) == (1, 0)
    # a few missing: asked for one by one, only those cross the network
    for path in sorted(series_folder.glob("*.dcm"))[:3]:
        path.unlink()
    counting = _FailingAdapter(allowed=10**6)
    client = _client(orthanc)
    client.session.mount("http://", counting)
    result = download_series(client, study, series, tmp_path / "cache")
    assert (result.fetched, result.reused) == (3, count - 3)
    assert (counting.series, counting.instances) == (0, 3)
    node, volume = load_cached_series(app.scene, series_folder)
    assert volume.array.shape == (75, 128, 128)
    # an instance cut short after its name was written (what a power loss can leave: the data
    # is not fsync'd, the names are): its size is not the recorded one, so the series is not
    # complete, and a header that still parses does not make it count as cached
    record = json.loads((series_folder / "series.json").read_text())
    assert sorted(record["bytes"]) == record["instances"] and len(record["bytes"]) == count
    victim = series_folder / (record["instances"][5] + ".dcm")
    assert record["bytes"][record["instances"][5]] == victim.stat().st_size
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IncompleteSeriesError, match="not the size recorded"):
        cached_files(series_folder)
    counting = _FailingAdapter(allowed=10**6)
    client = _client(orthanc)
    client.session.mount("http://", counting)
    result = download_series(client, study, series, tmp_path / "cache")
    assert (result.fetched, result.reused, counting.instances) == (1, count - 1, 1)
    assert victim.read_bytes() == whole and len(cached_files(series_folder)) == count


def test_download_cut_by_killing_orthanc_resumes_after_restart(orthanc_factory, tmp_path, template_slices):
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    server = orthanc_factory()
    # 40 full-size slices (21 MB): more than the socket buffers hold, so killing the server
    # really cuts the series stream
    files = write_dicom_series(generate_phantom((512, 512, 40), seed=4), tmp_path / "src")
    server.upload_folder(tmp_path / "src")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    client = _client(server, retries=0)

    def kill_after_five(fraction, message):
        if message.startswith("Downloaded 5/"):
            server.kill()

    with pytest.raises(ServerUnreachableError, match="Cannot reach"):
        download_series(client, study, series, tmp_path / "cache", workers=1, progress=kill_after_five)
    folder = tmp_path / "cache" / study / series
    kept = len(list(folder.glob("*.dcm")))
    assert 5 <= kept < 40 and not (folder / "series.json").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    server.restart()
    result = download_series(_client(server), study, series, tmp_path / "cache")
    assert (result.fetched, result.reused, result.expected) == (40 - kept, kept, 40)
    assert len(cached_files(folder)) == 40


def test_missing_study_is_a_clear_404(orthanc, tmp_path):
    client = _client(orthanc)
    with pytest.raises(StoreNotFoundError) as caught:
        download_series(client, "1.2.3.4.5", "1.2.3.4.6", tmp_path / "cache")
    assert getattr(caught.value, "exit_code", 2) == 2
    with pytest.raises(Exception, match="not a DICOM UID"):
        download_series(client, "../../etc", "1.2", tmp_path / "cache")


# --- connection errors ----------------------------------------------------------------------
def test_wrong_password_names_server_not_password(orthanc):
    client = _client(orthanc, password="hunter2-wrong")
    with pytest.raises(CredentialsError) as caught:
        client.check_connection()
    text = str(caught.value)
    assert caught.value.exit_code == EXIT_CREDENTIALS
    assert orthanc.url in text and "401" in text and "planner" in text
    assert "hunter2" not in text


def test_server_down_is_unreachable(tmp_path):
    from orthanc_server import free_port

    settings = StoreSettings(url=f"http://127.0.0.1:{free_port()}", username="u", retries=1, backoff_s=0.01)
    client = StoreClient(settings, secret="x")
    with pytest.raises(ServerUnreachableError) as caught:
        client.check_connection()
    assert caught.value.exit_code == EXIT_UNREACHABLE
    assert "Cannot reach the store" in str(caught.value) and settings.url in str(caught.value)


def test_tls_self_signed_refused_by_default_accepted_with_ca_bundle(orthanc_factory, caplog):
    server = orthanc_factory(tls=True)
    with pytest.raises(ServerUnreachableError, match="certificate is not trusted") as caught:
        _client(server).check_connection()
    assert caught.value.exit_code == EXIT_UNREACHABLE
    assert _client(server, ca_bundle=str(server.ca_bundle)).check_connection()["orthanc"] is True
    with caplog.at_level("WARNING"):
        insecure = _client(server, verify_tls=False)
    assert "verification is OFF" in caplog.text and server.url in caplog.text
    insecure.check_connection()


# --- the vsp commands -----------------------------------------------------------------------
@pytest.fixture
def store_env(orthanc, tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text(orthanc.password + "\n")
    secret.chmod(0o600)
    monkeypatch.setenv("VSP_STORE_URL", orthanc.url)
    monkeypatch.setenv("VSP_STORE_USER", orthanc.user)
    monkeypatch.setenv("VSP_STORE_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("VSP_STORE_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    (tmp_path / "none.json").write_text("{}")
    return secret


def test_cli_worklist_hides_identifiers_by_default(store_env, worklist_studies, capsys):
    from SurgicalPlanningLib.cli import main

    assert main(["store", "worklist", "--description", "WLTEST", "--limit", "5", "-q"]) == 0
    out = capsys.readouterr().out
    assert "WLACC" in out and "--offset 5" in out
    assert "Testpatient" not in out and "WL-P0" not in out
    assert main(["store", "worklist", "--patient-id", "WL-P004", "--show-identifiers", "--json", "-q"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [s["patient_name"] for s in payload["studies"]] == ["Testpatient^Number004"]
    assert payload["studies"][0]["state"] == "requested"


def test_cli_open_saves_volume_and_exit_codes(store_env, sample_series, tmp_path, capsys, monkeypatch):
    from SurgicalPlanningLib.cli import main

    folder, study, series, count = sample_series
    out = tmp_path / "ct.nrrd"
    code = main(
        ["store", "open", "--study", study, "--cache", str(tmp_path / "c"), "--out", str(out), "--json", "-q"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["fetched"] == count
        and summary["complete"]
        and summary["volume"]["dimensions_ijk"] == [128, 128, 75]
    )
    assert out.is_file()
    # wrong password: exit 5, the server named
    store_env.write_text("wrong\n")
    assert main(["store", "open", "--study", study, "--cache", str(tmp_path / "c")]) == EXIT_CREDENTIALS
    assert "HTTP 401" in capsys.readouterr().err
    # server down: exit 4
    from orthanc_server import free_port

    monkeypatch.setenv("VSP_STORE_URL", f"http://127.0.0.1:{free_port()}")
    assert main(["store", "worklist", "-q"]) == EXIT_UNREACHABLE
    assert "Cannot reach the store" in capsys.readouterr().err


def test_cli_missing_study_exit_2(store_env, capsys):
    from SurgicalPlanningLib.cli import main

    assert main(["store", "open", "--study", "1.2.3.999", "--cache", str(store_env.parent / "c")]) == 2
    assert "1.2.3.999" in capsys.readouterr().err


def test_secret_file_readable_by_others_is_refused(store_env, capsys):
    from SurgicalPlanningLib.cli import main

    store_env.chmod(0o644)
    assert main(["store", "worklist", "-q"]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_settings_file_env_and_secret_rules(tmp_path, monkeypatch):
    from CasePortalConnectorLib.errors import ConnectorError
    from CasePortalConnectorLib.store import load_settings

    config = tmp_path / "store.json"
    config.write_text(
        json.dumps(
            {
                "default": "pacs",
                "servers": {
                    "pacs": {"url": "https://pacs.example.org", "username": "dr", "read_timeout_s": 30},
                    "test": {"url": "http://127.0.0.1:8042", "auth": "none"},
                },
            }
        )
    )
    settings = load_settings(config, environ={})
    assert (settings.name, settings.dicomweb_url, settings.timeout) == (
        "pacs",
        "https://pacs.example.org/dicom-web",
        (5.0, 30.0),
    )
    assert load_settings(config, server="test", environ={}).auth == "none"
    env = {"VSP_STORE_URL": "https://other.example.org", "VSP_STORE_USER": "nurse"}
    settings = load_settings(config, environ=env, read_timeout_s=None)
    assert (settings.base_url, settings.username) == ("https://other.example.org", "nurse")
    config.write_text(json.dumps({"url": "https://pacs.example.org", "username": "dr", "password": "x"}))
    with pytest.raises(ConnectorError, match="secret"):
        load_settings(config, environ={})
    config.write_text(json.dumps({"url": "http://pacs.example.org", "username": "dr"}))
    with pytest.raises(ConnectorError, match="unencrypted"):
        load_settings(config, environ={})
    with pytest.raises(ConnectorError, match="No store is configured"):
        load_settings(None, environ={"XDG_CONFIG_HOME": str(tmp_path / "x")})


def test_every_request_has_a_timeout(tmp_path):
    """A server that accepts the connection but never answers: the call ends after read_timeout."""
    import socket
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings = StoreSettings(url=f"http://127.0.0.1:{port}", auth="none", read_timeout_s=0.5, retries=0)
    client = StoreClient(settings)
    start = time.monotonic()
    with pytest.raises(ServerUnreachableError, match="No answer"):
        client.check_connection()
    assert time.monotonic() - start < 5
    listener.close()


def test_multipart_splitter_any_chunking():
    """The series stream's splitter gives the same parts whatever the pieces' borders (the
    delimiter split across pieces, a part without headers, preamble, padding, epilogue)."""
    import random

    from CasePortalConnectorLib.store.client import MultipartSplitter

    rng = random.Random(5)
    bodies = [bytes(rng.randrange(256) for _ in range(n)) for n in (0, 1, 700, 5000)]
    bodies.append(b"\r\n--b0undar\r\n--b0und")  # almost the delimiter, inside a body
    body = b"preamble\r\n"
    for n, part in enumerate(bodies):
        body += b"--b0undary  \r\n" + (b"" if n == 1 else b"Content-Type: application/dicom\r\n") + b"\r\n"
        body += part + b"\r\n"
    body += b"--b0undary--\r\nepilogue"
    for trial in range(30):
        splitter = MultipartSplitter(b"b0undary")
        parts, pos = [], 0
        while pos < len(body):
            step = rng.randint(1, 40 if trial % 2 else 3000)
            for event, value in splitter.feed(body[pos : pos + step]):
                if event == "part":
                    parts.append([value, b""])
                elif event == "data":
                    parts[-1][1] += bytes(value)
            pos += step
        assert splitter.finished
        assert [data for _, data in parts] == bodies
        assert parts[0][0] == {"content-type": "application/dicom"} and parts[1][0] == {}
    cut = MultipartSplitter(b"b0undary")
    list(cut.feed(body[: len(body) // 2]))
    assert not cut.finished  # an answer cut off is told apart from a whole one


class _FakeKeyring:
    """Stands in for an OS keyring backend (the tests must not write the user's real one)."""

    def __init__(self):
        self.secrets = {}

    def set_password(self, service, key, secret):
        self.secrets[(service, key)] = secret

    def get_password(self, service, key):
        return self.secrets.get((service, key))


def test_cli_login_checks_keeps_0600_or_keyring_never_echoes(orthanc, tmp_path, monkeypatch, capsys):
    import io as _io

    import CasePortalConnectorLib.store.settings as store_settings
    from SurgicalPlanningLib import cli_store
    from SurgicalPlanningLib.cli import main

    monkeypatch.setenv("VSP_STORE_URL", orthanc.url)
    monkeypatch.setenv("VSP_STORE_USER", orthanc.user)
    monkeypatch.setenv("VSP_STORE_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("VSP_STORE_PASSWORD_FILE", raising=False)
    (tmp_path / "none.json").write_text("{}")
    monkeypatch.setattr(store_settings, "_keyring", lambda: None)
    secret_file = tmp_path / "private" / "store.secret"

    def login(secret, *arguments):
        monkeypatch.setattr("sys.stdin", _io.StringIO(secret + "\n"))
        code = main(["store", "login", "--stdin", *arguments])
        captured = capsys.readouterr()
        assert secret not in captured.out + captured.err  # never echoed, never in a message
        return code, captured

    # a wrong password is refused by the store: exit 5, nothing kept
    code, captured = login("not-the-password", "--to-file", str(secret_file))
    assert code == EXIT_CREDENTIALS and "HTTP 401" in captured.err and not secret_file.exists()
    # the right one: checked, then written to a file only the user can read
    code, captured = login(orthanc.password, "--to-file", str(secret_file))
    assert code == 0 and "mode 0600" in captured.out
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert oct(secret_file.parent.stat().st_mode & 0o777) == "0o700"
    assert secret_file.read_text() == orthanc.password + "\n"
    monkeypatch.setenv("VSP_STORE_PASSWORD_FILE", str(secret_file))
    assert main(["store", "worklist", "--limit", "1", "-q", "--no-state"]) == 0  # the file is used
    capsys.readouterr()
    monkeypatch.delenv("VSP_STORE_PASSWORD_FILE")
    # no keyring and no --to-file: a clear bad-input error
    code, captured = login(orthanc.password)
    assert code == 2 and "--to-file" in captured.err
    # with a keyring: kept there, and found there by the next command (no prompt, no file)
    fake = _FakeKeyring()
    monkeypatch.setattr(store_settings, "_keyring", lambda: fake)
    code, captured = login(orthanc.password)
    assert code == 0 and "keyring" in captured.out
    assert list(fake.secrets.values()) == [orthanc.password]
    assert main(["store", "worklist", "--limit", "1", "-q", "--no-state"]) == 0
    capsys.readouterr()
    # the prompt reads without echo (getpass), on stderr, only from a terminal
    asked = []
    monkeypatch.setattr(cli_store.getpass, "getpass", lambda text, stream=None: asked.append(text) or "x")
    monkeypatch.setattr("sys.stdin", _io.StringIO(""))
    with pytest.raises(Exception, match="no terminal"):
        cli_store._prompt("Secret: ")
    assert asked == []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    assert cli_store._prompt("Secret: ") == "x" and asked == ["Secret: "]


def _pydicom_uids(data: bytes) -> dict[str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    names = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
    return {name: str(ds[name].value or "") for name in names if name in ds}


@pytest.mark.parametrize("syntax", ["explicit-little", "implicit-little", "jpeg2000", "rle", "real-quirks"])
def test_uid_scan_agrees_with_pydicom(tmp_path, syntax):
    """The download names and checks each instance by three UIDs read by a small scan of its
    first bytes; it reads what pydicom reads, on every encoding the writer makes (the
    real-quirks export: JPEG 2000, empty UIDs in the dataset, the file meta keeping the SOP UID),
    with sequences of defined and undefined length and nested items, and leaves to pydicom
    (None) what it does not read."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from CasePortalConnectorLib.store.download import HEAD_BYTES, _header_uids, scan_uids
    from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
    from VSPCoreLib.sampledata.phantom import generate_phantom

    options = {"variant": "real-quirks"} if syntax == "real-quirks" else {"transfer_syntax": syntax}
    files = write_dicom_series(generate_phantom((64, 64, 3), seed=3), tmp_path / "series", **options)
    datas = [path.read_bytes() for path in files]
    # a sequence before and between the UIDs (defined and undefined lengths, a nested item)
    ds = pydicom.dcmread(io.BytesIO(datas[0]))
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D4000", "SRT", "Abdomen"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.AnatomicRegionSequence = Sequence([inner])
    for undefined in (True, False):
        for sequence in (ds.ReferencedImageSequence, ds.AnatomicRegionSequence):
            sequence.is_undefined_length = undefined
            for element in sequence:
                element.is_undefined_length_sequence_item = undefined
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        datas.append(buffer.getvalue())
    for data in datas:
        head = data[:HEAD_BYTES]
        expected = _pydicom_uids(data)
        assert scan_uids(head) == expected
        assert len(expected) == 3
        if syntax == "real-quirks":  # Orthanc would refuse these; the download's check does too
            assert expected["SOPInstanceUID"] == expected["StudyInstanceUID"] == ""
        else:
            assert (
                expected["SOPInstanceUID"]
                == pydicom.dcmread(io.BytesIO(data)).file_meta.MediaStorageSOPInstanceUID
            )
        # cut before the end of the header: undecided (pydicom reads the whole file instead)
        assert scan_uids(head[:400]) is None
        path = tmp_path / "whole.dcm"
        path.write_bytes(data)
        assert _header_uids(head[:400], path) == expected
    # what the scan leaves to pydicom: no preamble, big endian, not DICOM at all
    assert scan_uids(datas[0][128:]) is None
    assert scan_uids(b"\0" * 128 + b"DICM" + b"\xff" * 600) is None
    assert scan_uids(b"not dicom") is None
    assert _header_uids(b"not dicom", None) is None


def test_series_answer_read_into_one_buffer_or_decoded():
    """The series answer is read straight into one reused buffer when sent as it is, through
    requests when it is encoded (gzip: requests decodes); both give the same parts, whatever
    the buffer size; a read that breaks off becomes a requests error (the download keeps what
    arrived whole and resumes)."""
    import random
    from types import SimpleNamespace

    from CasePortalConnectorLib.store.client import MultipartSplitter, _split_answer

    rng = random.Random(7)
    bodies = [bytes(rng.randrange(256) for _ in range(n)) for n in (3000, 1, 0, 70000)]
    body = b"".join(b"\r\n--bnd\r\nContent-Type: application/dicom\r\n\r\n" + part for part in bodies)
    body = body[2:] + b"\r\n--bnd--\r\n"

    def parts(answer, chunk):
        splitter, found = MultipartSplitter(b"bnd"), []
        for event, value in _split_answer(answer, splitter, chunk):
            if event == "part":
                found.append(b"")
            elif event == "data":
                found[-1] += bytes(value)
        assert splitter.finished
        return found

    class Chunks:
        def __init__(self, data):
            self.data = data

        def __call__(self, chunk_size):
            return (self.data[i : i + chunk_size] for i in range(0, len(self.data), chunk_size))

    for chunk in (5, 64, 4096, 1 << 20):
        direct = SimpleNamespace(headers={}, raw=SimpleNamespace(_fp=io.BytesIO(body)), iter_content=None)
        assert parts(direct, chunk) == bodies
        encoded = SimpleNamespace(
            headers={"Content-Encoding": "gzip"}, raw=SimpleNamespace(_fp=None), iter_content=Chunks(body)
        )
        assert parts(encoded, chunk) == bodies

    class Breaking(io.BytesIO):
        def __init__(self, data, error):
            super().__init__(data)
            self.error = error

        def readinto(self, buffer):
            count = super().readinto(buffer)
            if not count:
                raise self.error
            return count

    for error, expected in (
        (ConnectionResetError("reset"), requests.exceptions.ChunkedEncodingError),
        (TimeoutError("timed out"), requests.exceptions.ReadTimeout),
    ):
        cut = SimpleNamespace(headers={}, raw=SimpleNamespace(_fp=Breaking(body[:5000], error)))
        with pytest.raises(expected):
            parts(cut, 4096)
