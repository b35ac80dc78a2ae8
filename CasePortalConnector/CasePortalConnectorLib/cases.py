"""Cases in the store: save a case (results as DICOM, the plan and the case manifest), read a
saved case back, case locks and the plan-version check.

What a saved case is in the store:

- the segmentation as a DICOM SEG, the models as Encapsulated STL (one series), the report as an
  Encapsulated PDF, all in the source study and Frame of Reference;
- a **case record**: a Raw Data Storage instance (modality PLAN, series "SlicerVSP case
  records") holding ``plan.json`` and the case manifest byte for byte in private elements
  (creator ``SlicerVSP case``). Every save makes a new one, so every store, DICOMweb-only ones
  included, keeps every plan version ever saved, and a conflict never loses one;
- on Orthanc, in addition: the current plan and manifest as study attachments ``vsp-plan`` and
  ``vsp-manifest``, the plan's version (the SHA-256 of ``plan.json``) in study metadata
  ``VSPPlanVersion``, and the case lock in ``VSPLock``.

The plan-version check: a workstation records the version of the plan it opened (the SHA-256 of
the ``vsp-plan`` it downloaded; none for a new case). When its save reaches the store, the stored
plan is read and hashed: when it is still the version this workstation started from (or there is
none, or it is already ours), ours replaces it; otherwise ours is **not** written over it: the
other plan stays the current one, ours stays in its case record, and the save reports the
conflict. Orthanc's default SQLite index has no revisions (no ETag/If-Match), so the check is a
read-compare-write: two saves that pass the check in the same fraction of a second could still
both write; the case lock (taken when the case is opened for planning) is what keeps two
planners apart, and the check catches the planner who did not take it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import getpass
import hashlib
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from VSPCoreLib import __version__

from .errors import ConnectorError
from .outbox import CASE_FILE, INSTANCE, NewItem, Outbox, SendReport, sha256_file

PathLike = str | os.PathLike

#: Orthanc names agreed for SlicerVSP (see the README for a hospital's Orthanc configuration).
PLAN_ATTACHMENT, MANIFEST_ATTACHMENT = "vsp-plan", "vsp-manifest"
LOCK_METADATA, PLAN_VERSION_METADATA, STATE_METADATA = "VSPLock", "VSPPlanVersion", "VSPState"

RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
RECORD_CREATOR = "SlicerVSP case"
RECORD_GROUP = 0x0071
RECORD_SERIES_DESCRIPTION = "SlicerVSP case records"
MANIFEST_FORMAT = "SlicerVSP case manifest"

#: A lock lasts this long unless renewed (seconds).
DEFAULT_LOCK_TTL_S = 4 * 3600


class CaseLockedError(ConnectorError):
    """The case is locked by another planner."""

    exit_code = 7


class CaseStoreError(ConnectorError):
    """The store answered something a case cannot be read from or saved with."""


def default_owner() -> str:
    """``user@host`` of this workstation (never a patient identifier)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 (no user name in the environment)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def plan_version(data: bytes) -> str:
    """A plan's version: the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


class _Refused(ConnectorError):
    """The store refused an item (the outbox marks it failed)."""

    outbox_kind = "rejected"

    def __init__(self, reason: str):
        self.outbox_reason = reason
        super().__init__(reason)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class CaseStore:
    """A DICOMweb store, with Orthanc's REST API beside it when ``orthanc_url`` is given.

    ``session`` carries authentication and TLS settings (a ``requests.Session``); every call has
    ``timeout`` (connect, read) seconds. DICOMweb calls use ``dicomweb-client`` (its own
    retries off: the outbox retries); Orthanc's extras use ``requests``.
    """

    def __init__(
        self,
        dicomweb_url: str,
        *,
        orthanc_url: str | None = None,
        session=None,
        timeout: tuple[float, float] = (5.0, 120.0),
    ):
        from dicomweb_client.api import DICOMwebClient

        from .store.client import TimeoutSession

        self.key = dicomweb_url.rstrip("/")
        self.orthanc_url = orthanc_url.rstrip("/") if orthanc_url else None
        # a TimeoutSession puts ``timeout`` on any call that has none
        self.session = session or TimeoutSession(timeout)
        self.timeout = timeout
        try:  # dicomweb-client 0.61.0 (Slicer 5.12) and later take a timeout for every call
            self.client = DICOMwebClient(url=self.key, session=self.session, timeout=timeout)
        except TypeError:  # an older one has none: the session gives its calls ours
            self.client = DICOMwebClient(url=self.key, session=self.session)
        self.client.set_http_retry_params(retry=False)

    @classmethod
    def from_client(cls, client) -> CaseStore:
        """The case store of a ``store.StoreClient`` (its session: auth, TLS, timeouts)."""
        settings = client.settings
        return cls(
            settings.dicomweb_url,
            orthanc_url=settings.base_url if client.is_orthanc() else None,
            session=client.session,
            timeout=settings.timeout,
        )

    # ---- DICOMweb ----------------------------------------------------------------------------

    def instance_exists(self, study_uid: str, sop_uid: str) -> bool:
        if self.orthanc_url:
            return any(hit.get("Type") == "Instance" for hit in self._lookup(sop_uid))
        found = self.client.search_for_instances(
            study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid}
        )
        return bool(found)

    def store_instance(self, path: Path, sop_uid: str | None = None) -> None:
        if self.store_instances([path], sop_uids=[sop_uid] if sop_uid else None):
            raise _Refused("the store refused the instance (FailedSOPSequence, or not listed as stored)")

    def stored_instances(self, study_uid: str) -> set[str]:
        """The SOP Instance UIDs the store holds in the study (every page of the answer)."""
        if self.orthanc_url:
            study = self.study_id(study_uid)
            if study is None:
                return set()
            response = self._request("GET", f"/studies/{study}/instances")
            response.raise_for_status()
            return {str(item["MainDicomTags"].get("SOPInstanceUID", "")) for item in response.json()}
        found = self.client.search_for_instances(
            study_instance_uid=study_uid, fields=["SOPInstanceUID"], get_remaining=True
        )
        return {str(item["00080018"]["Value"][0]) for item in found if item.get("00080018", {}).get("Value")}

    def store_instances(self, paths: Sequence[Path], sop_uids: Sequence[str] | None = None) -> set[str]:
        """Store several instances in one STOW-RS request; returns the SOP UIDs the store refused
        (in its FailedSOPSequence, or missing from its ReferencedSOPSequence).

        The files' bytes are posted as they are (multipart/related, one application/dicom part
        each, read from disk while sending, with a Content-Length: no re-encoding) through the
        configured session (its auth, TLS and timeouts). ``sop_uids`` are the files' SOP
        Instance UIDs when the caller knows them (else read from their headers)."""
        import pydicom

        paths = [Path(path) for path in paths]
        if sop_uids is None:
            sop_uids = [
                str(
                    pydicom.dcmread(
                        path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
                    ).SOPInstanceUID
                )
                for path in paths
            ]
        body = _MultipartFiles(paths)
        response = self.session.post(
            f"{self.key}/studies",
            data=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={body.boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=self.timeout,
        )
        response.raise_for_status()
        return stow_refused(response, sop_uids)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str):
        return self.client.retrieve_instance(study_uid, series_uid, sop_uid)

    def case_records(self, study_uid: str) -> list[dict]:
        """The study's case records (QIDO), as DICOM JSON, oldest first."""
        found = self.client.search_for_instances(
            study_instance_uid=study_uid,
            search_filters={"SOPClassUID": RAW_DATA_STORAGE},
            fields=["ContentDate", "ContentTime", "SeriesInstanceUID", "SeriesDescription"],
        )

        def value(item, tag):
            return (item.get(tag, {}).get("Value") or [""])[0]

        records = [item for item in found if value(item, "0008103E") in ("", RECORD_SERIES_DESCRIPTION)]
        return sorted(records, key=lambda item: (value(item, "00080023"), value(item, "00080033")))

    # ---- Orthanc extras ------------------------------------------------------------------------

    def _need_orthanc(self, what: str) -> str:
        if not self.orthanc_url:
            raise CaseStoreError(
                f"{what} needs Orthanc's REST API; this store is DICOMweb only.",
                subject=self.key,
                fix="give the Orthanc URL of the store (--orthanc-url), or work without locks.",
            )
        return self.orthanc_url

    def _request(self, method: str, path: str, **kwargs):
        response = self.session.request(
            method, f"{self._need_orthanc('this')}{path}", timeout=self.timeout, **kwargs
        )
        return response

    def _lookup(self, uid: str) -> list[dict]:
        response = self._request("POST", "/tools/lookup", data=uid)
        response.raise_for_status()
        return response.json()

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of the study, None when the store does not hold it."""
        for hit in self._lookup(study_uid):
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def _study_path(self, study_uid: str) -> str:
        study = self.study_id(study_uid)
        if study is None:
            raise CaseStoreError(
                "is not in the store.",
                subject=f"study {study_uid}",
                fix="upload the source series first, or check the Study Instance UID.",
            )
        return f"/studies/{study}"

    def get_metadata(self, study_uid: str, name: str) -> str | None:
        response = self._request("GET", f"{self._study_path(study_uid)}/metadata/{name}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.text

    def put_metadata(self, study_uid: str, name: str, value: str) -> None:
        self._request(
            "PUT", f"{self._study_path(study_uid)}/metadata/{name}", data=value.encode()
        ).raise_for_status()

    def delete_metadata(self, study_uid: str, name: str) -> None:
        response = self._request("DELETE", f"{self._study_path(study_uid)}/metadata/{name}")
        if response.status_code != 404:
            response.raise_for_status()

    def get_attachment(self, study_uid: str, name: str) -> bytes | None:
        response = self._request("GET", f"{self._study_path(study_uid)}/attachments/{name}/data")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.content

    def put_attachment(self, study_uid: str, name: str, data: bytes) -> None:
        self._request(
            "PUT",
            f"{self._study_path(study_uid)}/attachments/{name}",
            data=data,
            headers={"Content-Type": "application/json"},
        ).raise_for_status()

    # ---- what the outbox calls for case files ----------------------------------------------------

    def put_case_file(self, study_uid: str, name: str, data: bytes, options: dict) -> str:
        """Store the plan or the manifest (the outbox sends it after the case's instances).

        Returns "stored" or a note saying why it was not written (a conflict: the other version
        stays; ours is in its case record, which the outbox has already stored)."""
        if not self.orthanc_url:
            return "kept in the case record (a DICOMweb-only store has no attachments)"
        ours = options.get("plan_version", "")
        if name == MANIFEST_ATTACHMENT:
            current = self.get_attachment(study_uid, PLAN_ATTACHMENT)
            if current is not None and plan_version(current) != ours:
                return "not written: the store's current plan is another version (conflict)"
            self.put_attachment(study_uid, MANIFEST_ATTACHMENT, data)
            return "stored"
        if name != PLAN_ATTACHMENT:
            raise _Refused(f"unknown case file {name!r}")
        lock = read_lock(self, study_uid)
        owner = options.get("owner", "")
        if lock is not None and not lock.expired and lock.owner != owner:
            return (
                f"conflict: the case is locked by {lock.owner} until {lock.expires}; the stored plan"
                f" was kept and ours is in case record {options.get('record_uid', '')}"
            )
        current = self.get_attachment(study_uid, PLAN_ATTACHMENT)
        base = options.get("base_version") or None
        if current is not None:
            stored = plan_version(current)
            if stored not in (base, ours):
                return (
                    f"conflict: the store holds plan version {stored[:12]}, not {(base or 'none')[:12]}"
                    f" that this workstation started from; the stored plan was kept and ours is in"
                    f" case record {options.get('record_uid', '')}"
                )
        self.put_attachment(study_uid, PLAN_ATTACHMENT, data)
        self.put_metadata(study_uid, PLAN_VERSION_METADATA, ours)
        return "stored"


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------


class _MultipartFiles:
    """A multipart/related body made of files, read in pieces while it is sent; its length is
    known before (so it goes with a Content-Length, not chunked)."""

    PIECE = 1 << 20

    def __init__(self, paths: Sequence[Path]):
        self.boundary = secrets.token_hex(16)
        self.paths = list(paths)
        self._head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._end = f"--{self.boundary}--\r\n".encode()
        self._sizes = [path.stat().st_size for path in self.paths]

    def __len__(self) -> int:
        return sum(self._sizes) + len(self.paths) * (len(self._head) + 2) + len(self._end)

    def __iter__(self):
        for path, size in zip(self.paths, self._sizes, strict=True):
            yield self._head
            sent = 0
            with open(path, "rb") as handle:
                while piece := handle.read(self.PIECE):
                    sent += len(piece)
                    yield piece
            if sent != size:  # changed while queued: stop (the length would lie)
                raise OSError(f"{path.name} changed size while it was being sent")
            yield b"\r\n"
        yield self._end


def push_instances(
    store: CaseStore,
    paths: Sequence[Path],
    *,
    batch_count: int = 64,
    batch_bytes: int = 32 * 2**20,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Send DICOM files straight to a store (STOW-RS, batches of at most ``batch_count``
    instances or ``batch_bytes``), without the outbox: for a copy that is not the hospital's
    own (a de-identified case pushed to a partner). Returns counts and the refused SOP UIDs;
    HTTP errors are raised (``requests``), a refused instance is only counted."""
    import pydicom

    entries = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        entries.append((Path(path), str(ds.SOPInstanceUID), Path(path).stat().st_size))
    batches: list[list[tuple[Path, str, int]]] = []
    size = 0
    for entry in entries:
        if not batches or len(batches[-1]) >= batch_count or size + entry[2] > batch_bytes:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += entry[2]
    refused: set[str] = set()
    done = 0
    for batch in batches:
        refused |= store.store_instances(
            [path for path, _, _ in batch], sop_uids=[uid for _, uid, _ in batch]
        )
        done += len(batch)
        if progress:
            progress(done / max(len(entries), 1), f"pushed {done}/{len(entries)} instances")
    return {
        "instances": len(entries),
        "stored": len(entries) - len(refused),
        "refused": sorted(refused),
        "requests": len(batches),
        "bytes": sum(size for _, _, size in entries),
    }


def stow_refused(response, sop_uids: Sequence[str]) -> set[str]:
    """The SOP UIDs a STOW-RS answer (DICOM JSON) does not confirm: listed in its
    FailedSOPSequence (tested for emptiness: Orthanc sends it empty), or absent from its
    ReferencedSOPSequence (which must list every instance stored)."""

    def uids(sequence: str) -> set[str]:
        items = (answer.get(sequence) or {}).get("Value") or []
        found = set()
        for item in items:
            value = (item.get("00081155") or {}).get("Value") or []
            if value:
                found.add(str(value[0]))
        return found

    try:
        answer = response.json() if response.content else {}
    except ValueError:
        answer = {}
    if isinstance(answer, list):  # a store that wraps the dataset in a list
        answer = answer[0] if answer else {}
    failed = uids("00081198")  # FailedSOPSequence
    stored = uids("00081199")  # ReferencedSOPSequence
    return {uid for uid in sop_uids if uid in failed or uid not in stored}


@dataclasses.dataclass(frozen=True)
class CaseLock:
    """A case lock: who holds it and until when (UTC, ISO 8601)."""

    owner: str
    expires: str

    @property
    def expired(self) -> bool:
        return _dt.datetime.fromisoformat(self.expires) <= _utc_now()

    def to_json(self) -> str:
        return json.dumps({"owner": self.owner, "expires": self.expires}, sort_keys=True)


def read_lock(store: CaseStore, study_uid: str) -> CaseLock | None:
    """The study's lock (VSPLock metadata), None when there is none or it is unreadable."""
    text = store.get_metadata(study_uid, LOCK_METADATA)
    if not text:
        return None
    try:
        values = json.loads(text)
        lock = CaseLock(owner=str(values["owner"]), expires=str(values["expires"]))
        lock.expired  # noqa: B018 (checks the date parses)
    except (ValueError, KeyError, TypeError):
        return None
    return lock


def acquire_lock(
    store: CaseStore, study_uid: str, *, owner: str | None = None, ttl_s: float = DEFAULT_LOCK_TTL_S
) -> CaseLock:
    """Lock the case for ``owner`` (default user@host) for ``ttl_s`` seconds (renewing ours).

    An expired lock is taken over; a lock held by another is refused, naming its owner and
    expiry. The lock is read back after writing, which catches most (not all: no revisions on
    Orthanc's SQLite index) simultaneous takers.
    """
    owner = owner or default_owner()
    current = read_lock(store, study_uid)
    if current is not None and not current.expired and current.owner != owner:
        raise CaseLockedError(
            f"is locked by {current.owner} until {current.expires}.",
            subject=f"study {study_uid}",
            fix="ask them to save and unlock it, or wait until the lock expires.",
        )
    lock = CaseLock(owner=owner, expires=(_utc_now() + _dt.timedelta(seconds=ttl_s)).isoformat())
    store.put_metadata(study_uid, LOCK_METADATA, lock.to_json())
    back = read_lock(store, study_uid)
    if back is None or back.owner != owner:
        holder = back.owner if back else "someone"
        raise CaseLockedError(
            f"was locked by {holder} at the same moment.",
            subject=f"study {study_uid}",
            fix="ask them to save and unlock it, or try again later.",
        )
    return lock


def release_lock(store: CaseStore, study_uid: str, *, owner: str | None = None, force: bool = False) -> bool:
    """Remove our lock (``force``: anyone's); returns whether a lock was removed."""
    owner = owner or default_owner()
    current = read_lock(store, study_uid)
    if current is None:
        return False
    if current.owner != owner and not current.expired and not force:
        raise CaseLockedError(
            f"is locked by {current.owner} until {current.expires}, not by {owner}.",
            subject=f"study {study_uid}",
            fix="only its owner unlocks it; --force removes another's lock (tell them first).",
        )
    store.delete_metadata(study_uid, LOCK_METADATA)
    return True


# --------------------------------------------------------------------------------------------
# The case record (Raw Data Storage holding plan.json and the manifest)
# --------------------------------------------------------------------------------------------


def write_case_record(
    source, plan: bytes, manifest: bytes, out_path: Path, *, sop_uid: str, series_uid: str
) -> Path:
    """A Raw Data Storage instance in the source study holding the plan and the manifest."""
    from CasePortalConnectorLib.dicom_objects.encapsulated import Equipment, base_dataset, write_dataset

    ds = base_dataset(
        sop_class_uid=RAW_DATA_STORAGE,
        sop_instance_uid=sop_uid,
        source=source,
        modality="PLAN",
        series_instance_uid=series_uid,
        series_number=700,
        series_description=RECORD_SERIES_DESCRIPTION,
        instance_number=1,
        created=_dt.datetime.now(),
        equipment=Equipment(),
    )
    ds.FrameOfReferenceUID = source.frame_of_reference_uid
    block = ds.private_block(RECORD_GROUP, RECORD_CREATOR, create=True)
    block.add_new(0x01, "LO", plan_version(plan))
    block.add_new(0x10, "OB", plan)
    block.add_new(0x11, "UL", len(plan))
    block.add_new(0x20, "OB", manifest)
    block.add_new(0x21, "UL", len(manifest))
    return write_dataset(ds, out_path)


def read_case_record(ds) -> tuple[bytes, bytes]:
    """(plan.json bytes, manifest bytes) of a case record dataset."""
    try:
        block = ds.private_block(RECORD_GROUP, RECORD_CREATOR)
        plan = bytes(block[0x10].value)[: int(block[0x11].value)]
        manifest = bytes(block[0x20].value)[: int(block[0x21].value)]
    except (KeyError, ValueError) as error:
        raise CaseStoreError(
            f"is not a readable SlicerVSP case record ({error}).", subject=f"instance {ds.SOPInstanceUID}"
        ) from None
    return plan, manifest


# --------------------------------------------------------------------------------------------
# Saving a case
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SaveResult:
    batch: str
    study_uid: str
    plan_version: str
    base_version: str | None
    manifest: dict
    item_ids: list[int]
    send: SendReport | None = None

    @property
    def conflict(self) -> str:
        """The conflict note, empty when there was none (or nothing was sent yet)."""
        if self.send is None:
            return ""
        return next((note for note in self.send.notes.values() if note.startswith("conflict")), "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "study_uid": self.study_uid,
            "plan_version": self.plan_version,
            "base_version": self.base_version,
            "items": self.item_ids,
            "manifest": self.manifest,
            "send": self.send.to_dict() if self.send else None,
            "conflict": self.conflict,
        }


def _entry(kind: str, path: Path, ds_uids: dict, content_sha256: str, **extra) -> dict:
    return {
        "kind": kind,
        **ds_uids,
        "file_sha256": sha256_file(path),
        "content_sha256": content_sha256,
        "software_version": __version__,
        **extra,
    }


def save_case(
    store: CaseStore,
    outbox: Outbox,
    *,
    source: PathLike,
    plan: PathLike,
    segmentation=None,
    models: Sequence[PathLike] = (),
    report: PathLike | None = None,
    base_version: str | None = None,
    owner: str | None = None,
    send: bool = True,
    app=None,
    progress: Callable[[float, str], None] | None = None,
    service_jobs: Sequence[dict] = (),
) -> SaveResult:
    """Save a case: results as DICOM, the plan and the manifest, all through the outbox.

    ``source`` is the source CT series folder (its UIDs are the case's study and Frame of
    Reference); ``segmentation`` a segmentation node or a ``.seg.nrrd`` file (exported as DICOM
    SEG); ``models`` STL files (Encapsulated STL, one series); ``report`` a PDF (Encapsulated
    PDF); ``plan`` the plan.json. ``base_version`` is the plan version this workstation started
    from (:func:`open_saved_case` records it; None for a new case). Everything is queued in the outbox
    first (all or nothing); with ``send`` the outbox then sends what it can, and what it cannot
    stays queued.
    """
    from CasePortalConnectorLib.dicom_objects import (
        export_models_dicom,
        export_pdf_dicom,
        export_seg,
        read_seg_dataset,
    )
    from CasePortalConnectorLib.dicom_objects.encapsulated import new_uid, read_source

    def step(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, message)

    plan_path = Path(plan)
    try:
        plan_bytes = plan_path.read_bytes()
        json.loads(plan_bytes)
    except OSError as error:
        raise ConnectorError(
            f"cannot be read ({error.strerror}).", subject=str(plan_path), fix="check the path."
        ) from None
    except ValueError as error:
        raise ConnectorError(
            f"is not valid JSON ({error}).",
            subject=str(plan_path),
            fix="give the plan.json that vsp plan wrote.",
        ) from None
    owner = owner or default_owner()
    identity = read_source(source)
    ours = plan_version(plan_bytes)
    staging = Path(tempfile.mkdtemp(prefix=".save-", dir=outbox.folder))
    try:
        items: list[NewItem] = []
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "format_version": 1,
            "software": f"SlicerVSP {__version__}",
            "saved": _utc_now().isoformat(),
            "saved_by": owner,
            "study_instance_uid": identity.study_uid,
            "source_series": [
                {
                    "series_instance_uid": identity.series_uid,
                    "frame_of_reference_uid": identity.frame_of_reference_uid,
                    "instances": len(identity.instances),
                }
            ],
            "base_plan_version": base_version,
            "plan": {
                "file": "plan.json",
                "plan_version": ours,
                "sha256": ours,
                "bytes": len(plan_bytes),
                "software_version": __version__,
            },
            "segmentation": None,
            "models": [],
            "report": None,
            "service_jobs": [dict(job) for job in service_jobs],
        }

        def add_instance(path: Path, sop_uid: str, series_uid: str) -> None:
            items.append(NewItem(INSTANCE, path, identity.study_uid, sop_uid=sop_uid, series_uid=series_uid))

        if segmentation is not None:
            step(0.05, "writing the DICOM SEG")
            node = segmentation
            if isinstance(segmentation, str | os.PathLike):
                from VSPCoreLib import storage
                from VSPCoreLib.app import VSPApplication

                app = app or VSPApplication.create_headless()
                node = storage.load_segmentation(app, segmentation)
            seg_path = export_seg(node, source, staging / "seg.dcm")
            ds = read_seg_dataset(seg_path)
            segments = [str(item.SegmentLabel) for item in ds.SegmentSequence]
            uids = {
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "series_instance_uid": str(ds.SeriesInstanceUID),
            }
            manifest["segmentation"] = _entry(
                "seg", seg_path, uids, hashlib.sha256(bytes(ds.PixelData)).hexdigest(), segments=segments
            )
            add_instance(seg_path, uids["sop_instance_uid"], uids["series_instance_uid"])
        if models:
            step(0.4, f"writing {len(models)} Encapsulated STL model(s)")
            by_name = {Path(m).name + ".dcm": Path(m) for m in models}
            for written in export_models_dicom(list(models), source, staging / "models"):
                model_path = by_name.get(written.path.name)
                content = sha256_file(model_path) if model_path else ""
                uids = {
                    "sop_instance_uid": written.sop_instance_uid,
                    "series_instance_uid": written.series_instance_uid,
                }
                manifest["models"].append(
                    _entry(
                        written.kind,
                        written.path,
                        uids,
                        content,
                        name=written.title,
                        model_group_uid=written.model_group_uid,
                    )
                )
                add_instance(written.path, written.sop_instance_uid, written.series_instance_uid)
        if report is not None:
            step(0.6, "writing the Encapsulated PDF report")
            written = export_pdf_dicom(report, source, staging / "report.dcm")
            uids = {
                "sop_instance_uid": written.sop_instance_uid,
                "series_instance_uid": written.series_instance_uid,
            }
            manifest["report"] = _entry(
                "pdf", written.path, uids, sha256_file(Path(report)), title=written.title
            )
            add_instance(written.path, written.sop_instance_uid, written.series_instance_uid)
        record_uid, record_series = new_uid(), new_uid()
        manifest["case_record"] = {"sop_instance_uid": record_uid, "series_instance_uid": record_series}
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        step(0.7, "writing the case record")
        record = write_case_record(
            identity,
            plan_bytes,
            manifest_bytes,
            staging / "record.dcm",
            sop_uid=record_uid,
            series_uid=record_series,
        )
        add_instance(record, record_uid, record_series)
        (staging / "plan.json").write_bytes(plan_bytes)
        (staging / "manifest.json").write_bytes(manifest_bytes)
        options = {
            "plan_version": ours,
            "base_version": base_version,
            "owner": owner,
            "record_uid": record_uid,
        }
        items.append(
            NewItem(
                CASE_FILE, staging / "plan.json", identity.study_uid, name=PLAN_ATTACHMENT, options=options
            )
        )
        items.append(
            NewItem(
                CASE_FILE,
                staging / "manifest.json",
                identity.study_uid,
                name=MANIFEST_ATTACHMENT,
                options=options,
            )
        )
        step(0.75, f"queueing {len(items)} items in the outbox")
        ids = outbox.add(store.key, items)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    batch = outbox.item(ids[0]).batch
    result = SaveResult(batch, identity.study_uid, ours, base_version, manifest, ids)
    if send:
        step(0.8, "sending")
        result.send = outbox.send(store, ids=ids)
    step(1.0, "saved" if result.send and result.send.complete else "queued")
    return result


# --------------------------------------------------------------------------------------------
# Opening a saved case
# --------------------------------------------------------------------------------------------

CASE_STATE_FILE = "store-case.json"


def open_saved_case(
    store: CaseStore,
    study_uid: str,
    folder: PathLike,
    *,
    results: bool = True,
) -> dict:
    """Download the case's current plan and manifest (and with ``results`` the SEG, models and
    report the manifest lists, checked against its hashes) into ``folder``; records the plan
    version this workstation starts from in ``folder/store-case.json`` (the case folder's
    manifest; the segmentation-service jobs it already lists are kept).

    On Orthanc the current plan is the ``vsp-plan`` attachment; on a DICOMweb-only store, the
    newest case record. Returns the state written (study, plan version, files).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = manifest = None
    if store.orthanc_url:
        plan = store.get_attachment(study_uid, PLAN_ATTACHMENT)
        manifest = store.get_attachment(study_uid, MANIFEST_ATTACHMENT)
    if plan is None:
        records = store.case_records(study_uid)
        if records:
            newest = records[-1]
            ds = store.retrieve_instance(
                study_uid, newest["0020000E"]["Value"][0], newest["00080018"]["Value"][0]
            )
            plan, manifest = read_case_record(ds)
    state: dict[str, Any] = {
        "store": store.key,
        "study_instance_uid": study_uid,
        "plan_version": None,
        "files": {},
    }
    if plan is None:
        return _write_case_state(folder, state)  # a new case: nothing saved yet
    manifest_dict = json.loads(manifest) if manifest else {}
    version = plan_version(plan)
    expected = (manifest_dict.get("plan") or {}).get("sha256")
    if expected and expected != version:
        raise CaseStoreError(
            "the stored plan does not match its manifest (saved by another version, or damaged).",
            subject=f"study {study_uid}",
            fix="open the case records (`vsp store outbox` on the saving workstation) or save the case again.",
        )
    _write_bytes(folder / "plan.json", plan)
    state["files"]["plan"] = "plan.json"
    if manifest:
        _write_bytes(folder / "manifest.json", manifest)
        state["files"]["manifest"] = "manifest.json"
    state["plan_version"] = version
    if results and manifest_dict:
        state["files"].update(_download_results(store, study_uid, manifest_dict, folder))
    return _write_case_state(folder, state)


def _write_case_state(folder: Path, state: dict) -> dict:
    """Write the case folder's manifest: ``state`` replaces what open-case wrote before, and the
    service jobs recorded there (``service_jobs``) stay, under the job store's lock."""
    from .service.base import CASE_JOBS_KEY, CaseJobStore

    def change(document: dict) -> None:
        jobs = document.get(CASE_JOBS_KEY)
        document.clear()
        document.update(state)
        if jobs:
            document[CASE_JOBS_KEY] = jobs

    return CaseJobStore(folder).update(change)


def _download_results(store: CaseStore, study_uid: str, manifest: dict, folder: Path) -> dict:
    from CasePortalConnectorLib.dicom_objects.encapsulated import write_dataset

    files: dict[str, Any] = {}
    entries: list[tuple[str, dict]] = []
    if manifest.get("segmentation"):
        entries.append(("segmentation", manifest["segmentation"]))
    entries += [(f"model:{entry.get('name', '')}", entry) for entry in manifest.get("models", [])]
    if manifest.get("report"):
        entries.append(("report", manifest["report"]))
    results = folder / "results"
    results.mkdir(exist_ok=True)
    for label, entry in entries:
        sop = entry["sop_instance_uid"]
        ds = store.retrieve_instance(study_uid, entry["series_instance_uid"], sop)
        if entry["kind"] == "seg":
            content = hashlib.sha256(bytes(ds.PixelData)).hexdigest()
        else:
            data = bytes(ds.EncapsulatedDocument)[
                : int(ds.get("EncapsulatedDocumentLength", len(ds.EncapsulatedDocument)))
            ]
            content = hashlib.sha256(data).hexdigest()
        if entry.get("content_sha256") and content != entry["content_sha256"]:
            raise CaseStoreError(
                "differs from what the case manifest recorded (SHA-256).",
                subject=f"{label} (instance {sop})",
                fix="save the case again from the workstation that made it.",
            )
        # The file is named by its SOP Instance UID, never by a name the server chose.
        path = results / f"{sop}.dcm"
        ds.preamble = b"\x00" * 128
        write_dataset(ds, path)
        files[label] = str(path.relative_to(folder))
    return files


def read_case_state(folder: PathLike) -> dict | None:
    path = Path(folder) / CASE_STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` in one piece (a temporary renamed into place)."""
    from VSPCoreLib.files import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
