"""DICOM-in/DICOM-out: an AI node (Kaapana, a MONAI Deploy pipeline, ...) that works through the store.

The source series is in the hospital store; the client asks the node to process it (the
*trigger*), the node writes its result into the store as a DICOM SEG that references the series,
and the client finds it (polling with exponential backoff), downloads it and imports it onto the
source CT (:func:`CasePortalConnectorLib.dicom_objects.import_seg`, checked by
:func:`.results.import_seg_result`).

**The trigger contract** (what an AI node must implement):

- ``trigger: "http"``: ``POST trigger_url`` with ``Content-Type: application/json`` and the body
  ``{"request_id", "study_uid", "series_uid", "model", "params", "store", "requested"}``
  (``store``: the DICOMweb root it must read from and write to, without credentials;
  ``requested``: UTC ISO time). With ``token_file``, ``Authorization: Bearer <token>``. Any 2xx
  answer means accepted; 401/403 exit 5, 400/404/422 exit 2 (a request the node refuses),
  other answers exit 6, no connection exits 4. The request is sent once per job (a restart or
  ``vsp service resume`` polls again without a second POST).
- ``trigger: "orthanc"``: on the store (an Orthanc with the user metadata ``VSPRequest``, see
  the README), the client writes the request record above as the study's metadata
  ``VSPRequest`` (JSON, plus ``"status": "requested"``) and then sets ``VSPState`` to
  ``segmenting``. A node watches for studies in ``segmenting`` whose request is ``requested``.
  It may set the record's ``status`` to ``failed`` with a ``message`` (no patient data): the
  client then stops with exit 6 and that message. Otherwise it sets ``status`` to ``done`` (and
  may set ``VSPState`` to ``planning``) when the SEG is stored.
- **The answer**: one DICOM SEG instance (Segmentation Storage, BINARY, FRACTIONAL or LABELMAP)
  stored (STOW-RS or C-STORE) in the same study, whose Referenced Series Sequence names the
  source series and whose Frame of Reference is the CT's, each segment with its coded
  Segmented Property Category/Type and Segmentation Algorithm Identification (name, version).
  Found by QIDO-RS (``Modality=SEG`` series in the study) among the SEG series that were *not*
  in the study when the request was made (the set is recorded in the job: clocks of the node and
  the client need not agree), then by the series' WADO-RS metadata; a SEG that references
  another series is ignored (recorded, never imported).
- Time: ``timeout_s`` is the longest wait for the answer in one run (exit 6: the service did not
  deliver, the job stays resumable); searches start ``poll_s`` apart and back off (x2) to
  ``poll_max_s``.

**Privacy**: a node marked ``external: true`` never sees the original. The client downloads the
source series from the hospital store (``source_store``), de-identifies it
(:mod:`CasePortalConnectorLib.deid`, Basic Profile, UIDs remapped with the local pseudonym key
``key_file``) and pushes the copy (STOW-RS) to the store the node watches (``store``); the
request names the pseudonymised study and series. The node's SEG references the pseudonymised
UIDs: the client maps them (and the pseudonym) back with the same local key before importing
the SEG onto the original CT. The key never leaves this computer.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from VSPCoreLib import files
from VSPCoreLib.progress import report

from .base import (
    Backend,
    BackendResult,
    CancelToken,
    Job,
    JobCancelled,
    ProgressCallback,
    ServiceAuthError,
    ServiceError,
    ServiceRequestError,
    ServiceSettings,
    ServiceTimeout,
    ServiceUnreachable,
    check_service_url,
    now_iso,
    read_credentials,
    redact_url,
)

log = logging.getLogger(__name__)

TRIGGERS = ("http", "orthanc")
REQUEST_METADATA = "VSPRequest"
STATE_METADATA = "VSPState"
SEG_MODALITY = "SEG"
SEG_SUFFIX = ".dcm"

# DICOM JSON tags (PS3.18 F.2) read from WADO-RS metadata
_MODALITY = "00080060"
_SOP_INSTANCE = "00080018"
_SERIES_UID = "0020000E"
_REFERENCED_SERIES = "00081115"
_INSTANCE_NUMBER = "00200013"


def check_dicom_settings(settings: ServiceSettings) -> None:
    """Refuse settings the DICOM-in/out backend cannot use (ServiceRequestError, exit 2)."""
    subject = "service settings (backend dicom)"
    if settings.trigger not in TRIGGERS:
        raise ServiceRequestError(
            f"unknown trigger {settings.trigger!r}.",
            subject=subject,
            fix="use trigger 'http' (with trigger_url) or 'orthanc' (study metadata on the store).",
        )
    if settings.trigger == "http":
        if not settings.trigger_url:
            raise ServiceRequestError(
                "trigger 'http' needs trigger_url (the AI node's endpoint).",
                subject=subject,
                fix="set trigger_url, or use trigger 'orthanc'.",
            )
        settings.trigger_url = check_service_url(settings.trigger_url)
    if not settings.poll_s > 0 or settings.poll_max_s < settings.poll_s or not settings.timeout_s > 0:
        raise ServiceRequestError(
            f"poll_s {settings.poll_s:g}, poll_max_s {settings.poll_max_s:g} and timeout_s "
            f"{settings.timeout_s:g} must be positive, with poll_max_s >= poll_s.",
            subject=subject,
            fix="correct the polling settings.",
        )


def _value(item: dict, tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


class DicomInOutBackend(Backend):
    """An AI node that reads the source series from a store and writes a SEG back into it."""

    name = "dicom"
    #: the runner passes ``save_job`` to :meth:`run` (the trigger is recorded before polling)
    records_progress = True

    def __init__(self, settings: ServiceSettings, *, store_client=None, source_client=None):
        super().__init__(settings)
        check_dicom_settings(settings)
        self._store = store_client
        self._source = source_client
        if store_client is None:
            from ..store.settings import load_settings

            self._store_settings = load_settings(settings.store_config or None, server=settings.store or None)
        else:
            self._store_settings = store_client.settings
        self._sleep = time.sleep  # tests may replace it

    # --- connections -----------------------------------------------------------------------
    @property
    def service_url(self) -> str:
        return "dicom+" + redact_url(self._store_settings.dicomweb_url)

    @property
    def store(self):
        """The store the AI node watches (for an external node: outside the hospital)."""
        if self._store is None:
            from ..store.client import StoreClient

            self._store = StoreClient(self._store_settings)
        return self._store

    @property
    def source(self):
        """The hospital store holding the source series (the same store unless external)."""
        if not self.settings.external:
            return self.store
        if self._source is None:
            from ..store.client import StoreClient
            from ..store.settings import load_settings

            source = load_settings(
                self.settings.store_config or None, server=self.settings.source_store or None
            )
            if source.dicomweb_url == self._store_settings.dicomweb_url:
                raise ServiceRequestError(
                    "an external node must watch another store than the one holding the original.",
                    subject="service settings (external: true)",
                    fix="set store to the external node's store and source_store to the hospital's.",
                )
            self._source = StoreClient(source)
        return self._source

    def info(self) -> dict[str, Any]:
        models = {self.settings.model: {"labels": {}}} if self.settings.model else {}
        return {
            "backend": self.name,
            "url": self.service_url,
            "trigger": self.settings.trigger,
            "trigger_url": redact_url(self.settings.trigger_url) if self.settings.trigger == "http" else "",
            "external": self.settings.external,
            "models": models,
            "note": "the AI node decides what a model name means; its labels come coded in the SEG",
        }

    def check_model(self, model: str) -> dict[str, Any]:
        if not model:
            raise ServiceRequestError("no model named.", subject="service request", fix="give --model.")
        return {"labels": {}}

    # --- reference volume ------------------------------------------------------------------
    def load_reference(self, app, job: Job, progress: ProgressCallback | None = None):
        """The source CT from the hospital store (downloaded into the private cache, checked)."""
        from ..store.download import cache_dir, download_series, load_cached_series

        client = self.source
        result = download_series(
            client, job.study_uid, job.series_uid, cache_dir(client.settings), progress=progress
        )
        node, _ = load_cached_series(app.scene, result.folder, name="CT")
        return node

    # --- the job -----------------------------------------------------------------------------
    def run(
        self,
        job: Job,
        result_path: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        save_job=None,
    ) -> BackendResult:
        save = save_job or (lambda: None)
        remote = job.remote
        if not remote.get("triggered_at"):
            if not remote.get("study_uid"):
                if self.settings.external:
                    report(progress, 0.0, "pushing a de-identified copy to the external store")
                    remote.update(self._push_deidentified(job))
                else:
                    remote.update(study_uid=job.study_uid, series_uid=job.series_uid)
                remote["known_segs"] = sorted(self._seg_series(remote["study_uid"]))
                remote["trigger"] = self.settings.trigger
                save()
            report(progress, 0.05, f"asking the AI node ({self.settings.trigger} trigger)")
            self._trigger(job, remote)
            remote["triggered_at"] = now_iso()
            remote["triggered_epoch"] = time.time()
            save()  # a restart polls from here: never a second trigger
        found = self._poll(job, remote, progress=progress, cancel=cancel, save=save)
        seg_series, sop_uid = found
        found_epoch = time.time()
        data = self.store.retrieve_instance_bytes(remote["study_uid"], seg_series, sop_uid)
        path = Path(str(result_path) + SEG_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset = _read_bytes(data, seg_series)
        if self.settings.external:
            reidentify_seg(dataset, self._key())
        with files.atomic_path(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        name, version = _algorithm(dataset)
        remote["result_series"] = seg_series
        return BackendResult(
            label_file=path,
            label_names={},
            model_version=" ".join(x for x in (name, version) if x),
            server_latency_s=round(found_epoch - float(remote.get("triggered_epoch", found_epoch)), 3),
            extra={"kind": "seg", "algorithm_name": name, "algorithm_version": version},
        )

    # --- trigger -------------------------------------------------------------------------------
    def _request_record(self, job: Job, remote: dict) -> dict[str, Any]:
        return {
            "request_id": job.job_id,
            "study_uid": remote["study_uid"],
            "series_uid": remote["series_uid"],
            "model": job.model,
            "params": {k: v for k, v in job.params.items() if not k.startswith("_")},
            "store": redact_url(self._store_settings.dicomweb_url),
            "requested": now_iso(),
        }

    def _trigger(self, job: Job, remote: dict) -> None:
        record = self._request_record(job, remote)
        if self.settings.trigger == "orthanc":
            record["status"] = "requested"
            self.store.set_study_metadata(remote["study_uid"], REQUEST_METADATA, json.dumps(record))
            self.store.set_study_metadata(remote["study_uid"], STATE_METADATA, "segmenting")
            return
        url = self.settings.trigger_url
        headers = {"Content-Type": "application/json", "User-Agent": "SlicerVSP-service"}
        if self.settings.token_file:
            credentials = read_credentials(self.settings.token_file)
            if "access_token" not in credentials:
                raise ServiceAuthError(
                    "holds a user name and password; the trigger endpoint takes a token.",
                    subject=f"token file {self.settings.token_file}",
                    fix="put the node's access token in the file.",
                )
            headers["Authorization"] = f"Bearer {credentials['access_token']}"
        verify = (self.settings.ca_bundle or True) if self.settings.verify_tls else False
        if not self.settings.verify_tls:
            log.warning("TLS certificate verification is OFF for %s (verify_tls=false)", redact_url(url))
        subject = f"AI node {redact_url(url)}"
        try:  # POST once: a lost answer is not resent (the node may have started)
            answer = requests.post(
                url,
                data=json.dumps(record),
                headers=headers,
                timeout=(self.settings.connect_timeout_s, 30.0),
                verify=verify,
            )
        except requests.exceptions.SSLError as error:
            raise ServiceUnreachable(
                f"the TLS connection failed ({str(error)[:160]}).",
                subject=subject,
                fix="set ca_bundle to the hospital CA's PEM file; check the host name.",
            ) from None
        except requests.exceptions.RequestException as error:
            raise ServiceUnreachable(
                f"cannot be reached to start the job ({type(error).__name__}).",
                subject=subject,
                fix="check trigger_url, that the node runs, and the network; then `vsp service resume`.",
            ) from None
        if answer.status_code in (401, 403):
            raise ServiceAuthError(
                f"refused the credentials (HTTP {answer.status_code}).",
                subject=subject,
                fix="check the token file.",
            )
        if answer.status_code in (400, 404, 422):
            raise ServiceRequestError(
                f"refused the request (HTTP {answer.status_code}).",
                subject=subject,
                fix="check the model name and the series; see the node's log.",
            )
        if not 200 <= answer.status_code < 300:
            raise ServiceError(
                f"failed to accept the request (HTTP {answer.status_code}).",
                subject=subject,
                fix="see the node's log; try again with `vsp service resume`.",
            )

    # --- polling -------------------------------------------------------------------------------
    def _seg_series(self, study_uid: str) -> list[str]:
        client = self.store
        with client.translate(f"the SEG series of study {study_uid}"):
            found = client.dicomweb.search_for_series(
                study_uid, search_filters={"Modality": SEG_MODALITY}, fields=["SeriesInstanceUID"]
            )
        return [str(_value(item, _SERIES_UID)) for item in found or [] if _value(item, _SERIES_UID)]

    def _candidate(self, study_uid: str, seg_series: str, source_series: str) -> tuple[str | None, str]:
        """(SOP instance UID of the SEG, "") when it references the source series, else (None, why)."""
        client = self.store
        with client.translate(f"the metadata of series {seg_series}"):
            items = client.dicomweb.retrieve_series_metadata(study_uid, seg_series)
        chosen = None
        for item in sorted(items or [], key=lambda i: int(_value(i, _INSTANCE_NUMBER) or 0)):
            if _value(item, _MODALITY) != SEG_MODALITY:
                continue
            referenced = [
                _value(ref, _SERIES_UID) for ref in (item.get(_REFERENCED_SERIES) or {}).get("Value") or []
            ]
            if source_series in referenced:
                chosen = str(_value(item, _SOP_INSTANCE))
            else:
                return None, "references another series"
        return (chosen, "") if chosen else (None, "holds no SEG instance")

    def _node_failure(self, remote: dict) -> str | None:
        if self.settings.trigger != "orthanc":
            return None
        text = self.store.get_study_metadata(remote["study_uid"], REQUEST_METADATA)
        try:
            record = json.loads(text or "{}")
        except ValueError:
            return None
        if isinstance(record, dict) and record.get("status") == "failed":
            return str(record.get("message") or "no reason given")[:300]
        return None

    def _poll(self, job, remote, *, progress, cancel, save) -> tuple[str, str]:
        began = time.monotonic()
        wait = self.settings.poll_s
        known = set(remote.get("known_segs", []))
        ignored = remote.setdefault("ignored_segs", {})
        searches = 0
        while True:
            searches += 1
            for seg_series in self._seg_series(remote["study_uid"]):
                if seg_series in known or seg_series in ignored:
                    continue
                sop_uid, why = self._candidate(remote["study_uid"], seg_series, remote["series_uid"])
                if sop_uid is None:
                    log.warning("job %s: SEG series %s %s: ignored", job.job_id, seg_series, why)
                    ignored[seg_series] = why
                    save()
                    continue
                return seg_series, sop_uid
            failure = self._node_failure(remote)
            if failure:
                raise ServiceError(
                    f"the AI node reports that job {job.job_id} failed: {failure}",
                    subject=self.service_url,
                    fix="see the node's log; submit again when it is fixed.",
                )
            waited = time.monotonic() - began
            if waited >= self.settings.timeout_s:
                raise ServiceTimeout(
                    f"no SEG referencing series {remote['series_uid']} appeared in study "
                    f"{remote['study_uid']} within {self.settings.timeout_s:g} s ({searches} searches).",
                    subject=self.service_url,
                    fix="check that the AI node runs and received the request; `vsp service resume "
                    f"{job.job_id}` waits again without a second request.",
                )
            report(
                progress,
                0.1 + 0.8 * min(waited / self.settings.timeout_s, 1.0),
                f"waiting for the AI node's SEG ({waited:.0f} s)",
            )
            pause = min(wait, self.settings.timeout_s - waited)
            if cancel is not None:
                if cancel.wait(pause):
                    raise JobCancelled(
                        f"job {job.job_id} was cancelled while waiting (the node may still answer).",
                        subject="service job",
                        fix=f"`vsp service resume {job.job_id}` picks its answer up later.",
                    )
            else:
                self._sleep(pause)
            wait = min(wait * 2.0, self.settings.poll_max_s)

    # --- privacy -------------------------------------------------------------------------------
    def _key(self):
        from ..deid import PseudonymKey, default_key_path

        return PseudonymKey.load_or_create(self.settings.key_file or default_key_path())

    def _push_deidentified(self, job: Job) -> dict[str, str]:
        """De-identify the source series (local key) and store the copy in the external store."""
        import pydicom

        from ..cases import CaseStore, push_instances
        from ..deid import DeidOptions, deidentify_dataset, identifying_values
        from ..store.download import cache_dir, cached_files, download_series

        source = self.source
        result = download_series(source, job.study_uid, job.series_uid, cache_dir(source.settings))
        datasets = [pydicom.dcmread(path) for path in cached_files(result.folder)]
        key = self._key()
        identifying = identifying_values(datasets)
        for ds in datasets:
            deidentify_dataset(ds, key, DeidOptions(), identifying)
        key.save()
        study, series = key.uid(job.study_uid), key.uid(job.series_uid)
        client = self.store
        what = f"storing the de-identified series ({len(datasets)} instances)"
        # The copies are written once into a private folder (0700) and their bytes posted as
        # they are (STOW-RS through the store connection's session, in batches), then removed.
        with tempfile.TemporaryDirectory(prefix=".vsp-deid-") as folder:
            paths = []
            for number, ds in enumerate(datasets):
                path = Path(folder) / f"{number:06d}.dcm"
                ds.save_as(path)
                paths.append(path)
            del datasets
            with client.translate(what):
                pushed = push_instances(CaseStore.from_client(client), paths)
        if pushed["refused"]:
            raise ServiceError(
                f"the store the node watches refused {len(pushed['refused'])} of "
                f"{pushed['instances']} de-identified instances.",
                subject=client.server,
                fix="see the store's log; then `vsp service resume` the job.",
            )
        return {"study_uid": study, "series_uid": series, "deidentified": "yes"}


def _read_bytes(data: bytes, series: str):
    import io

    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # noqa: BLE001 - any parse failure is a malformed answer
        raise ServiceError(
            f"the SEG of series {series} cannot be read ({type(error).__name__}).",
            subject="AI node result",
            fix="check the node's DICOM writer.",
        ) from None


def _algorithm(ds) -> tuple[str, str]:
    """The algorithm name and version of the SEG's segment descriptions (the first that has them)."""
    for description in ds.get("SegmentSequence", []):
        items = description.get("SegmentationAlgorithmIdentificationSequence") or []
        name = str(description.get("SegmentAlgorithmName", "") or "")
        version = ""
        if items:
            name = name or str(items[0].get("AlgorithmName", "") or "")
            version = str(items[0].get("AlgorithmVersion", "") or "")
        if name:
            return name, version
    return "", ""


def reidentify_seg(ds, key) -> int:
    """Map the pseudonymised UIDs of a SEG made on a de-identified copy back to the originals
    (every UI element at every depth that the key maps: study, Frame of Reference, referenced
    series and instances) and the pseudonym back to the patient. The SEG's own series and SOP
    instance UIDs (not in the key) stay. Returns the number of UIDs mapped back."""
    from pydicom.dataset import Dataset

    inverse = {new: old for old, new in key.uids.items()}
    mapped = 0

    def visit(dataset: Dataset) -> None:
        nonlocal mapped
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    visit(item)
            elif element.VR == "UI" and element.value:
                values = element.value if element.VM > 1 else [element.value]
                new = [inverse.get(str(v), str(v)) for v in values]
                if new != [str(v) for v in values]:
                    mapped += sum(1 for a, b in zip(new, values, strict=True) if a != str(b))
                    element.value = new if element.VM > 1 else new[0]

    visit(ds)
    pseudonym = str(ds.get("PatientID", "") or "")
    for original_id, entry in key.patients.items():
        if entry.get("pseudonym") == pseudonym and pseudonym:
            ds.PatientID = original_id
            ds.PatientName = entry.get("original_name", "")
            break
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    return mapped


__all__ = ["DicomInOutBackend", "check_dicom_settings", "reidentify_seg", "REQUEST_METADATA"]
