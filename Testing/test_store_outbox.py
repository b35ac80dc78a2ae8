"""The durable outbox: queued uploads survive restarts, are retried with backoff while the store
is down, and arrive exactly once (checked by SOP Instance UID).

Unit tests use an in-memory store that counts every upload; the fault tests use a real Orthanc
(Testing/orthanc_server.py) killed with SIGKILL in the middle of a case upload.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from store_case_data import case_store, instances_per_sop, small_case, upload_source

from CasePortalConnectorLib.cases import MANIFEST_ATTACHMENT, PLAN_ATTACHMENT, save_case
from CasePortalConnectorLib.outbox import (
    CASE_FILE,
    DROPPED,
    FAILED,
    INSTANCE,
    PENDING,
    SENT,
    Busy,
    NewItem,
    Outbox,
    backoff_delay,
)
from VSPCoreLib.sampledata.dicom_writer import write_dicom_series
from VSPCoreLib.sampledata.phantom import generate_phantom


class MemoryStore:
    """A store in memory that counts uploads per SOP Instance UID; ``down`` makes it unreachable."""

    key = "memory://store"

    def __init__(self):
        self.instances: dict[str, bytes] = {}
        self.uploads: dict[str, int] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self.down = False
        self.refuse: set[str] = set()
        self.calls = 0

    def _check(self):
        self.calls += 1
        if self.down:
            raise requests.ConnectionError("connection refused")

    def instance_exists(self, study_uid, sop_uid):
        self._check()
        return sop_uid in self.instances

    def store_instance(self, path):
        self._check()
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        if uid in self.refuse:
            response = requests.Response()
            response.status_code = 400
            raise requests.HTTPError("bad", response=response)
        self.uploads[uid] = self.uploads.get(uid, 0) + 1
        self.instances[uid] = Path(path).read_bytes()

    def put_case_file(self, study_uid, name, data, options):
        self._check()
        self.files[(study_uid, name)] = data
        return "stored"


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("outbox-ct") / "ct"
    write_dicom_series(generate_phantom((24, 24, 6), seed=4), folder)
    return sorted(folder.iterdir())


def as_items(files) -> list[NewItem]:
    items = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items.append(NewItem(INSTANCE, path, str(ds.StudyInstanceUID), sop_uid=str(ds.SOPInstanceUID)))
    return items


def test_queue_survives_a_restart_and_sends_what_was_queued_not_later_edits(series, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    files = []
    for path in series[:3]:
        copy = work / path.name
        copy.write_bytes(path.read_bytes())
        files.append(copy)
    original = files[0].read_bytes()
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    ids = outbox.add(MemoryStore.key, as_items(files))
    outbox.close()
    files[0].write_bytes(b"edited after the save")  # the user's later edit
    for path in files[1:]:
        path.unlink()  # or deletes the working copy

    reopened = Outbox(tmp_path / "box" / "outbox.sqlite")  # a new process after a restart
    assert [item.state for item in reopened.items()] == [PENDING] * 3
    store = MemoryStore()
    report = reopened.send(store)
    assert report.sent == ids and report.complete
    first_uid = reopened.item(ids[0]).sop_uid
    assert store.instances[first_uid] == original
    assert set(store.uploads.values()) == {1}
    assert list((tmp_path / "box" / "files").iterdir()) == []  # copies removed once sent


def test_outbox_is_private_and_durable(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    outbox.add(MemoryStore.key, as_items(series[:1]))
    assert stat.S_IMODE(os.stat(outbox.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(outbox.files).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(outbox.path).st_mode) == 0o600
    db = sqlite3.connect(outbox.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_store_down_keeps_items_with_backoff_and_an_error_without_patient_data(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite", backoff_base_s=5.0)
    ids = outbox.add(MemoryStore.key, as_items(series[:4]))
    store = MemoryStore()
    store.down = True
    now = 1_000_000.0
    report = outbox.send(store, now=now)
    assert report.unreachable == "the store cannot be reached"
    assert report.sent == [] and report.pending == 4
    assert store.calls == 1  # the pass stopped at the first failure: no hammering
    first = outbox.item(ids[0])
    assert first.attempts == 1 and 4.0 <= first.next_try - now <= 6.0
    patient = str(pydicom.dcmread(series[0], stop_before_pixels=True).PatientName)
    assert patient and patient not in first.last_error
    # Not due yet: nothing is tried.
    assert outbox.send(store, now=now + 1).sent == []
    assert store.calls == 1
    # Second failure doubles the wait.
    outbox.send(store, now=now + 10)
    second = outbox.item(ids[0])
    assert second.attempts == 2 and 8.0 <= second.next_try - (now + 10) <= 12.0
    # The store is back: everything arrives once.
    store.down = False
    report = outbox.send(store, now=now + 100)
    assert sorted(report.sent) == ids and report.complete
    assert list(store.uploads.values()) == [1, 1, 1, 1]


def test_backoff_doubles_and_is_capped():
    delays = [backoff_delay(n, base=5, maximum=60) for n in range(1, 8)]
    assert 4 <= delays[0] <= 6 and 8 <= delays[1] <= 12 and 16 <= delays[2] <= 24
    assert all(d <= 72 for d in delays) and delays[-1] >= 48


def test_crash_between_send_and_commit_does_not_duplicate(series, tmp_path):
    path = tmp_path / "box" / "outbox.sqlite"
    outbox = Outbox(path)
    ids = outbox.add(MemoryStore.key, as_items(series[:3]))
    store = MemoryStore()

    class Crash(BaseException):
        pass

    def crash_after_second(item):
        if item.id == ids[1]:
            raise Crash()

    with pytest.raises(Crash):
        outbox.send(store, before_commit=crash_after_second)
    outbox.close()
    reopened = Outbox(path)
    assert [item.state for item in reopened.items()] == [SENT, PENDING, PENDING]
    report = reopened.send(store)
    assert report.already_there == [ids[1]] and report.sent == [ids[2]]
    assert list(store.uploads.values()) == [1, 1, 1]  # the second was uploaded once, not twice


def test_refused_item_fails_alone_and_waits_for_the_user(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    items = as_items(series[:3])
    ids = outbox.add(MemoryStore.key, items)
    store = MemoryStore()
    store.refuse = {items[0].sop_uid}
    report = outbox.send(store)
    assert report.failed == [ids[0]] and report.sent == ids[1:]
    assert outbox.item(ids[0]).state == FAILED
    assert outbox.item(ids[0]).last_error == "HTTP 400: the store refused the item"
    assert outbox.send(store).sent == []  # failed items are not retried on their own
    store.refuse = set()
    assert outbox.retry([ids[0]]) == 1
    assert outbox.send(store).sent == [ids[0]]


def test_drop_removes_the_copy_and_keeps_a_record(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    ids = outbox.add(MemoryStore.key, as_items(series[:2]))
    copy = outbox.file_of(outbox.item(ids[0]))
    assert copy.is_file()
    assert outbox.drop([ids[0]]) == 1
    assert not copy.exists() and outbox.item(ids[0]).state == DROPPED
    store = MemoryStore()
    assert outbox.send(store).sent == [ids[1]]
    assert outbox.drop([ids[1]]) == 0  # a sent item cannot be dropped


def test_case_files_wait_for_their_instances(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    items = as_items(series[:2])
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    items.append(NewItem(CASE_FILE, plan, items[0].study_uid, name=PLAN_ATTACHMENT))
    store = MemoryStore()
    store.refuse = {items[1].sop_uid}
    ids = outbox.add(MemoryStore.key, items)
    report = outbox.send(store)
    assert report.failed == [ids[1]] and ids[2] not in report.sent
    assert outbox.item(ids[2]).state == PENDING and not store.files
    store.refuse = set()
    outbox.retry()
    assert outbox.send(store).sent == [ids[1], ids[2]]


def test_a_failed_add_leaves_nothing_behind(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    items = [*as_items(series[:2]), NewItem(INSTANCE, tmp_path / "missing.dcm", "1.2.3", sop_uid="1.2.3.4")]
    with pytest.raises(Exception, match="no such file"):
        outbox.add(MemoryStore.key, items)
    assert outbox.items() == [] and list(outbox.files.iterdir()) == []


def test_a_second_process_sending_is_refused(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    outbox.add(MemoryStore.key, as_items(series[:1]))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(30)\n",
            str(outbox.folder / "send.lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(Busy, match="another process"):
            outbox.send(MemoryStore())
    finally:
        holder.kill()
        holder.wait()
    assert outbox.send(MemoryStore()).complete


# --------------------------------------------------------------------------------------------
# Fault test with a real Orthanc
# --------------------------------------------------------------------------------------------


class CountingStore:
    """A CaseStore that counts the STOW uploads it makes per SOP Instance UID (Orthanc would
    silently replace a duplicate, so the store's own count cannot show one)."""

    def __init__(self, store):
        self.store = store
        self.key = store.key
        self.uploads: dict[str, int] = {}
        self.before_store = None

    def instance_exists(self, study_uid, sop_uid):
        return self.store.instance_exists(study_uid, sop_uid)

    def store_instance(self, path):
        if self.before_store:
            self.before_store(path)
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        self.store.store_instance(path)
        self.uploads[uid] = self.uploads.get(uid, 0) + 1

    def put_case_file(self, *args):
        return self.store.put_case_file(*args)


def test_orthanc_killed_mid_upload_then_everything_arrives_exactly_once(orthanc_factory, tmp_path):
    server = orthanc_factory()
    case = small_case(tmp_path / "case")
    upload_source(server, case.dicom_dir)
    store = CountingStore(case_store(server))
    outbox_path = tmp_path / "box" / "outbox.sqlite"
    outbox = Outbox(outbox_path, backoff_base_s=0.01, backoff_max_s=0.05)

    # Queue the whole case, then send: Orthanc is SIGKILLed right after the second instance
    # reached it and before the outbox committed it as sent (a crash of both ends at once).
    result = save_case(
        store.store,
        outbox,
        source=case.dicom_dir,
        plan=case.plan,
        segmentation=case.segmentation_node,
        models=[case.model],
        report=case.report,
        send=False,
    )
    ids = result.item_ids
    instance_ids = [i for i in ids if outbox.item(i).kind == INSTANCE]
    assert len(instance_ids) == 4  # SEG, model, report, case record

    class Crash(BaseException):
        pass

    def kill_after_second(item):
        if item.id == instance_ids[1]:
            server.kill()
            raise Crash()

    with pytest.raises(Crash):
        outbox.send(store, before_commit=kill_after_second)
    outbox.close()

    # The workstation restarts while Orthanc is still down: everything stays queued.
    outbox = Outbox(outbox_path, backoff_base_s=0.01, backoff_max_s=0.05)
    report = outbox.send(store)
    assert report.unreachable == "the store cannot be reached"
    states = [outbox.item(i).state for i in ids]
    assert states == [SENT] + [PENDING] * (len(ids) - 1)
    assert outbox.item(instance_ids[1]).attempts == 1

    # Orthanc is killed again in the middle of the next attempt (while the upload starts).
    server.restart()
    calls = {"n": 0}

    def kill_on_third(_path):
        calls["n"] += 1
        if calls["n"] == 2:
            server.kill()

    store.before_store = kill_on_third
    time.sleep(0.1)
    report = outbox.send(store)
    assert report.unreachable
    store.before_store = None

    server.restart()
    time.sleep(0.1)
    report = outbox.send(store)
    assert report.complete, report
    assert all(outbox.item(i).state == SENT for i in ids)
    counts = instances_per_sop(server, result.study_uid)
    expected = {outbox.item(i).sop_uid for i in instance_ids}
    assert expected <= set(counts) and all(counts[uid] == 1 for uid in expected)
    # Each instance was uploaded exactly once over all attempts (the one uploaded just before
    # the crash was found in the store by its SOP Instance UID and not sent again).
    assert store.uploads == dict.fromkeys(expected, 1)
    assert store.store.get_attachment(result.study_uid, PLAN_ATTACHMENT) == case.plan.read_bytes()
    manifest = store.store.get_attachment(result.study_uid, MANIFEST_ATTACHMENT)
    assert json.loads(manifest)["plan"]["sha256"] == result.plan_version


class BatchStore(MemoryStore):
    """A MemoryStore that also lists a study's instances and stores several per request."""

    def __init__(self):
        super().__init__()
        self.requests = 0
        self.listings = 0

    def stored_instances(self, study_uid):
        self._check()
        self.listings += 1
        return set(self.instances)

    def store_instance(self, path):
        self.requests += 1
        super().store_instance(path)

    def store_instances(self, paths, sop_uids=None):
        self._check()
        self.requests += 1
        refused = set()
        for path in paths:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            if uid in self.refuse:
                refused.add(uid)
                continue
            self.uploads[uid] = self.uploads.get(uid, 0) + 1
            self.instances[uid] = Path(path).read_bytes()
        return refused


def test_instances_go_in_batches_and_the_store_is_listed_once(series, tmp_path):
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite", batch_count=2)
    items = as_items(series[:5])
    ids = outbox.add(MemoryStore.key, items)
    store = BatchStore()
    store.instances[items[0].sop_uid] = b"already there"  # e.g. sent before a crash
    store.refuse = {items[3].sop_uid}
    report = outbox.send(store)
    assert report.already_there == [ids[0]]
    assert report.sent == [ids[1], ids[2], ids[4]] and report.failed == [ids[3]]
    assert outbox.item(ids[3]).last_error == "the store refused the instance (FailedSOPSequence)"
    assert store.listings == 1 and store.requests == 3  # [0,1] -> 1 sent, [2,3] -> 1 request, [4]
    assert items[0].sop_uid not in store.uploads and set(store.uploads.values()) == {1}


class _Answer:
    def __init__(self, body):
        self.content = json.dumps(body).encode() if body is not None else b""

    def json(self):
        return json.loads(self.content)


def _item(uid):
    return {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }


def test_stow_answer_is_read_for_emptiness_and_every_instance():
    from CasePortalConnectorLib.cases import stow_refused

    sent = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    stored = {"00081199": {"vr": "SQ", "Value": [_item(uid) for uid in sent]}}
    # Orthanc: an empty FailedSOPSequence is present in every answer; it refuses nothing
    assert stow_refused(_Answer({"00081198": {"vr": "SQ"}, **stored}), sent) == set()
    assert stow_refused(_Answer({"00081198": {"vr": "SQ", "Value": []}, **stored}), sent) == set()
    # a failed instance, and one the answer does not list as stored, are refused
    failed = {"00081198": {"vr": "SQ", "Value": [_item("1.2.3.2")]}}
    partial = {"00081199": {"vr": "SQ", "Value": [_item("1.2.3.1")]}}
    assert stow_refused(_Answer({**failed, **stored}), sent) == {"1.2.3.2"}
    assert stow_refused(_Answer(partial), sent) == {"1.2.3.2", "1.2.3.3"}
    assert stow_refused(_Answer(None), sent) == set(sent)  # nothing confirmed: nothing stored


def test_stow_posts_the_files_bytes_unchanged_with_a_length(orthanc_factory, series):
    server = orthanc_factory()
    store = case_store(server)
    seen = []
    store.session.hooks["response"].append(lambda r, *a, **k: seen.append(r.request.headers))
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in series]
    assert store.store_instances(series, sop_uids=uids) == set()
    assert seen[-1]["Content-Length"] == str(sum(p.stat().st_size for p in series) + len(series) * 73 + 38)
    assert "Transfer-Encoding" not in seen[-1]
    for path, uid in zip(series, uids, strict=True):
        found = server.rest("POST", "/tools/lookup", uid.encode())
        stored = server.rest("GET", f"/instances/{found[0]['ID']}/file")
        assert stored == path.read_bytes()  # byte for byte: no decode and re-encode
    # one instance alone (the outbox's single path) reads its UID from the file
    store.store_instance(series[0])
