"""The segmentation service behind one interface: settings, errors, jobs and the job store.

A *backend* (MONAI Label server, local engine, ...) takes a :class:`InferRequest` and runs it as
a :class:`Job`: ``submit`` records the job (state ``submitted``) in the :class:`JobStore` *before*
anything is sent, ``run`` does the work and saves the result label map beside the job store
(state ``result_saved``), and the caller imports it (:mod:`.results`, state ``done``). After a
restart, ``vsp service resume`` picks a job up from its record: a result already saved is
imported again without a second submit; a job whose answer never arrived is submitted again
(the attempt is counted).

Exit codes of ``vsp service`` (the error's ``exit_code``): 2 bad input (including an unknown
model), 4 the service cannot be reached (or the connection was lost), 5 credentials refused
(401/403), 6 the service failed (server error, timeout, malformed answer), 130/143 interrupted.

The errors are one hierarchy with the store's (:mod:`VSPCoreLib.errors`): :class:`ServiceError`
is a :class:`~VSPCoreLib.errors.RemoteError`, :class:`ServiceUnreachable` a
:class:`~VSPCoreLib.errors.ServerUnreachableError` (4), :class:`ServiceAuthError` a
:class:`~VSPCoreLib.errors.CredentialsError` (5) and :class:`ServiceTimeout` a
:class:`~VSPCoreLib.errors.ServerResponseError` (6): a service that does not finish an infer in
the time allowed (the connection stood; the *service* failed to deliver) exits 6, unlike a
store or service that cannot be reached at all (a connect timeout: 4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from VSPCoreLib import files
from VSPCoreLib.errors import (
    EXIT_CREDENTIALS,
    EXIT_SERVER,
    CredentialsError,
    RemoteError,
    ServerResponseError,
    ServerUnreachableError,
    VSPError,
)
from VSPCoreLib.errors import EXIT_UNREACHABLE as EXIT_UNREACHABLE

from ..errors import ConnectorError

EXIT_AUTH = EXIT_CREDENTIALS  # the same numbers as the store's (VSPCoreLib.errors)
EXIT_SERVICE = EXIT_SERVER


SETTINGS_ENV = "VSP_SERVICE_SETTINGS"
URL_ENV = "VSP_SERVICE_URL"
TOKEN_FILE_ENV = "VSP_SERVICE_TOKEN_FILE"
MODEL_ENV = "VSP_SERVICE_MODEL"


class ServiceError(ConnectorError, RemoteError):
    """The service could not do what was asked (exit code 6 unless a subclass says otherwise)."""

    exit_code = EXIT_SERVICE


class ServiceUnreachable(ServiceError, ServerUnreachableError):
    """No connection to the service, or the connection was lost during a request."""

    exit_code = EXIT_UNREACHABLE


class ServiceAuthError(ServiceError, CredentialsError):
    """The service refused the credentials (401/403), or they are missing or unreadable."""

    exit_code = EXIT_AUTH


class ServiceTimeout(ServiceError, ServerResponseError):
    """The service did not deliver within the time allowed (exit 6: the service failed; a
    service or store that cannot be reached at all is :class:`ServiceUnreachable`, 4)."""

    exit_code = EXIT_SERVICE


class ServiceRequestError(ServiceError):
    """A request the service cannot serve as asked (unknown model, image, ...): a user's input."""

    exit_code = 2


class JobCancelled(ServiceError):
    """The job was cancelled by the user."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass
class ServiceSettings:
    """Where and how to reach a segmentation service. Never holds credentials themselves:
    ``token_file`` names a file readable only by the user (0600) holding a token or
    ``{"username": ..., "password": ...}``."""

    backend: str = "local"  # "monailabel" | "local" | "dicom"
    url: str = ""
    model: str = ""
    name: str = ""
    token_file: str = ""
    ca_bundle: str = ""  # a CA bundle file for TLS; default: the system's
    verify_tls: bool = True  # False only explicitly, per service, and warned about
    external: bool = False  # outside the hospital network: de-identified data only
    connect_timeout_s: float = 5.0
    timeout_s: float = 600.0  # the longest a single answer may take (an infer on a large volume)
    retries: int = 3
    backoff_s: float = 0.5
    save_label: bool = False  # send the corrected label back to the server's datastore
    engine: str = "classical"  # local backend: "classical" or "totalsegmentator"
    # DICOM-in/DICOM-out backend (service/dicom_inout.py): the store is the hand-over
    trigger: str = "http"  # "http" (POST to trigger_url) | "orthanc" (study metadata)
    trigger_url: str = ""  # the AI node's endpoint for trigger "http"
    store_config: str = ""  # the store settings file (default: vsp store's)
    store: str = ""  # the store the AI node watches (a server name in it; default: its default)
    source_store: str = ""  # external: the hospital store holding the source (default: store's default)
    key_file: str = ""  # external: the pseudonym key (default: deid's private key file)
    poll_s: float = 2.0  # first wait between two searches for the result
    poll_max_s: float = 30.0  # the longest wait between two searches (exponential backoff)

    def public(self) -> dict[str, Any]:
        """The settings as saved in job records and provenance (no credentials in them)."""
        data = dataclasses.asdict(self)
        data["url"] = redact_url(self.url)
        return data


def check_service_url(url: str | None) -> str:
    """The service's root URL without a trailing slash; ServiceRequestError when it cannot be used."""
    from ..settings import check_server_url

    example = "https://gpu.example.org:8000"
    return check_server_url(
        url,
        kind="service",
        example=example,
        error=ServiceRequestError,
        unset_fix=f"Enter an address like {example} (or {URL_ENV}).",
    )


def redact_url(url: str) -> str:
    """The URL without user name, password, query or fragment (what logs and records may hold)."""
    try:
        parts = urllib.parse.urlsplit(url or "")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid URL>"


_FIELDS = {f.name: f for f in dataclasses.fields(ServiceSettings)}


def load_settings(path: str | os.PathLike | None = None, **overrides) -> ServiceSettings:
    """Settings from a JSON file (``path``, else ``$VSP_SERVICE_SETTINGS``), then the environment
    (``VSP_SERVICE_URL``, ``VSP_SERVICE_TOKEN_FILE``, ``VSP_SERVICE_MODEL``), then ``overrides``
    (the command line; None values ignored). A URL means the MONAI Label backend unless the file
    says otherwise."""
    data: dict[str, Any] = {}
    path = path or os.environ.get(SETTINGS_ENV) or None
    if path:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ServiceRequestError(
                f"cannot be read ({error.strerror}).", subject=str(path), fix="give a readable settings file."
            ) from None
        except ValueError as error:
            raise ServiceRequestError(
                f"is not valid JSON ({error}).", subject=str(path), fix="correct the settings file."
            ) from None
        if not isinstance(data, dict):
            raise ServiceRequestError(
                "is not a JSON object.", subject=str(path), fix="correct the settings file."
            )
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ServiceRequestError(
                f"has unknown settings {unknown}.",
                subject=str(path),
                fix=f"use only: {', '.join(sorted(_FIELDS))}.",
            )
    for env, key in ((URL_ENV, "url"), (TOKEN_FILE_ENV, "token_file"), (MODEL_ENV, "model")):
        if os.environ.get(env):
            data.setdefault(key, os.environ[env])
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("url") and "backend" not in data:
        data["backend"] = "monailabel"
    settings = ServiceSettings()
    for key, value in data.items():
        expected = type(getattr(settings, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected):
            raise ServiceRequestError(
                f"setting {key!r} must be a {expected.__name__}, not {value!r}.",
                subject=str(path) if path else "service settings",
                fix="correct the setting.",
            )
        setattr(settings, key, value)
    if settings.backend not in ("monailabel", "local", "dicom"):
        raise ServiceRequestError(
            f"unknown backend {settings.backend!r}.",
            subject="service settings",
            fix="use backend 'monailabel' (a MONAI Label server), 'dicom' (an AI node working "
            "through the store) or 'local' (this computer).",
        )
    if settings.backend == "monailabel":
        settings.url = check_service_url(settings.url)
    if settings.backend == "dicom":
        from .dicom_inout import check_dicom_settings

        check_dicom_settings(settings)
    return settings


def read_credentials(token_file: str) -> dict[str, str]:
    """{"access_token"} or {"username", "password"} from a file only its owner may read."""
    path = Path(token_file).expanduser()
    subject = f"token file {path}"
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ServiceAuthError(
            f"cannot be read ({error.strerror}).",
            subject=subject,
            fix="create it (chmod 600) or fix its path.",
        ) from None
    if os.name == "posix" and mode & 0o077:
        raise ServiceAuthError(
            f"can be read by other users (mode {oct(mode & 0o777)}).",
            subject=subject,
            fix=f"chmod 600 {path}",
        )
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise ServiceAuthError("is not valid JSON.", subject=subject, fix="correct the file.") from None
        if isinstance(data, dict) and isinstance(data.get("access_token"), str):
            return {"access_token": data["access_token"], "token_type": str(data.get("token_type", "Bearer"))}
        if (
            isinstance(data, dict)
            and isinstance(data.get("username"), str)
            and isinstance(data.get("password"), str)
        ):
            return {"username": data["username"], "password": data["password"]}
        raise ServiceAuthError(
            "holds neither access_token nor username and password.", subject=subject, fix="correct the file."
        )
    if not text:
        raise ServiceAuthError("is empty.", subject=subject, fix="put the token in it.")
    return {"access_token": text, "token_type": "Bearer"}


# --------------------------------------------------------------------------------------------
# Requests, jobs and the job store
# --------------------------------------------------------------------------------------------

#: Job states, in order; ``failed`` and ``cancelled`` can follow any state before ``done``.
STATES = ("submitted", "running", "result_saved", "done", "failed", "cancelled")


@dataclass
class InferRequest:
    """What to segment: a datastore image id on the server, or a volume file to send."""

    model: str
    image_id: str = ""  # a datastore image on the server
    volume: str = ""  # a volume file (NRRD/NIfTI/...) or a DICOM folder on this computer
    params: dict[str, Any] = field(default_factory=dict)
    study_uid: str = ""  # DICOM-in/out: the source series in the store
    series_uid: str = ""


def now_iso() -> str:
    # Microseconds: jobs are listed in creation order, and two jobs made within one second
    # must not tie (a tie fell back to the random job id).
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Job:
    """One request to a backend and what became of it (saved as JSON in the job store)."""

    job_id: str
    backend: str
    service_url: str  # without credentials
    model: str
    image_id: str = ""
    volume: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    study_uid: str = ""  # DICOM-in/out: the source series in the store
    series_uid: str = ""
    remote: dict[str, Any] = field(default_factory=dict)  # DICOM-in/out: trigger and polling state
    state: str = "submitted"
    attempts: int = 0
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    result_file: str = ""  # relative to the job store's folder
    result_sha256: str = ""
    label_names: dict[str, int] = field(default_factory=dict)
    model_version: str = ""
    server_latency_s: float | None = None
    client_latency_s: float | None = None
    output: str = ""  # the imported segmentation
    session_id: str = ""  # MONAI Label: the session the volume was sent in (--session)
    provenance: dict[str, Any] = field(default_factory=dict)  # as written into the segmentation
    segments: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str = ""

    @classmethod
    def new(cls, backend: str, service_url: str, request: InferRequest) -> Job:
        return cls(
            job_id=uuid.uuid4().hex[:16],
            backend=backend,
            service_url=redact_url(service_url),
            model=request.model,
            image_id=request.image_id,
            volume=str(Path(request.volume).resolve()) if request.volume else "",
            params=dict(request.params),
            study_uid=request.study_uid,
            series_uid=request.series_uid,
        )

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def request(self) -> InferRequest:
        return InferRequest(
            model=self.model,
            image_id=self.image_id,
            volume=self.volume,
            params=dict(self.params),
            study_uid=self.study_uid,
            series_uid=self.series_uid,
        )

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON file's content ({} when it does not exist yet); a damaged one is a VSPError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise VSPError(f"cannot be read as {what} ({error}).", subject=str(path), fix=fix) from None


class JobStore:
    """The jobs of a case: a JSON file (``service-jobs.json`` in the case folder, or any path),
    written atomically after every change, and a folder beside it for the results."""

    FILE_NAME = "service-jobs.json"
    LOCK_TIMEOUT_S = 30.0

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / self.FILE_NAME
        self.path = path
        self.folder = path.parent
        self._lock = threading.Lock()

    @property
    def results_folder(self) -> Path:
        return self.folder / "service-results"

    def _read(self) -> dict[str, dict]:
        data = _read_json(
            self.path,
            "a job store",
            "move the damaged file away (its jobs are then forgotten) or give another --jobs.",
        )
        jobs = data.get("jobs", {}) if isinstance(data, dict) else {}
        return jobs if isinstance(jobs, dict) else {}

    def jobs(self) -> list[Job]:
        return sorted((Job.from_dict(d) for d in self._read().values()), key=lambda j: j.created)

    def get(self, job_id: str) -> Job:
        data = self._read().get(job_id)
        if data is None:
            matches = [k for k in self._read() if k.startswith(job_id)] if job_id else []
            if len(matches) == 1:
                data = self._read()[matches[0]]
        if data is None:
            raise VSPError(
                f"holds no job {job_id!r}.",
                subject=str(self.path),
                fix="list the jobs with `vsp service jobs`.",
            )
        return Job.from_dict(data)

    @property
    def lock_file(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self):
        """This process's threads (a threading lock) and other processes (an exclusive lock on
        ``<store>.lock``: POSIX flock, Windows msvcrt) around a read-modify-write."""
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + self.LOCK_TIMEOUT_S
                while True:
                    try:
                        if os.name == "posix":
                            import fcntl

                            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        else:  # pragma: no cover (Windows)
                            import msvcrt

                            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise VSPError(
                                f"is locked by another process for more than {self.LOCK_TIMEOUT_S:g} s.",
                                subject=str(self.lock_file),
                                fix="wait for the other `vsp service` or Slicer to finish, then try again.",
                            ) from None
                        time.sleep(0.01)
                yield
            finally:
                os.close(descriptor)  # closing releases the lock

    def save(self, job: Job) -> None:
        """Record ``job``: read, change and write the store under the lock, so that two clients
        writing one store at once lose no job."""
        with self._locked():
            job.updated = now_iso()
            jobs = self._read()
            jobs[job.job_id] = dataclasses.asdict(job)
            text = json.dumps({"written_by": "SlicerVSP", "jobs": jobs}, indent=1, sort_keys=True)
            with files.atomic_path(self.path) as temporary:
                temporary.write_text(text, encoding="utf-8")

    def find_pending(self, backend: str, service_url: str, request: InferRequest) -> Job | None:
        """An unfinished or finished-with-result job for the same request (no second submit)."""
        probe = Job.new(backend, service_url, request)
        for job in reversed(self.jobs()):
            same = (
                job.backend == probe.backend
                and job.service_url == probe.service_url
                and job.model == probe.model
                and job.image_id == probe.image_id
                and job.volume == probe.volume
                and _without_session(job.params) == _without_session(probe.params)
                and job.study_uid == probe.study_uid
                and job.series_uid == probe.series_uid
            )
            if same and job.state in ("submitted", "running", "result_saved"):
                return job
        return None

    def result_path(self, job: Job, suffix: str) -> Path:
        return self.results_folder / f"{job.job_id}{suffix}"


#: A *case folder* is a folder holding this file, its case manifest (written by `vsp store
#: open-case`, read by `vsp store save --case-folder`; = ``cases.CASE_STATE_FILE``).
CASE_FILE = "store-case.json"
#: The key of the case manifest that holds the case's service jobs ({job_id: record}).
CASE_JOBS_KEY = "service_jobs"
#: What of a job goes into the manifest uploaded with a saved case: no local path (a volume's
#: path may name the patient), no error text, no datastore image id.
MANIFEST_JOB_FIELDS = (
    "job_id",
    "backend",
    "service_url",
    "model",
    "model_version",
    "state",
    "attempts",
    "created",
    "updated",
    "result_file",
    "result_sha256",
    "label_names",
    "server_latency_s",
    "client_latency_s",
    "session_id",
    "study_uid",
    "series_uid",
    "segments",
    "provenance",
)


class CaseJobStore(JobStore):
    """The jobs of a case folder, kept in its case manifest (``store-case.json``, key
    ``service_jobs``) beside what `vsp store open-case` wrote there, which stays as it is; the
    results go to ``service-results/`` in the case folder. Every change is a read-modify-write
    of the whole manifest under the job store's lock (``store-case.json.lock``), written
    atomically. Jobs of an older ``service-jobs.json`` in the same folder are still found."""

    FILE_NAME = CASE_FILE

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        if folder.name == CASE_FILE:
            folder = folder.parent
        super().__init__(folder / CASE_FILE)

    def document(self) -> dict[str, Any]:
        """The whole case manifest ({} when the folder has none yet)."""
        data = _read_json(
            self.path,
            "a case manifest",
            "open the case again with `vsp store open-case --out FOLDER`, or move the damaged file away.",
        )
        if not isinstance(data, dict):
            raise VSPError(
                "is not a case manifest (not a JSON object).",
                subject=str(self.path),
                fix="open the case again with `vsp store open-case --out FOLDER`.",
            )
        return data

    def _read(self) -> dict[str, dict]:
        legacy = self.folder / JobStore.FILE_NAME
        jobs = JobStore(legacy)._read() if legacy.is_file() else {}
        ours = self.document().get(CASE_JOBS_KEY)
        if isinstance(ours, dict):
            jobs.update(ours)
        return jobs

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """``change`` the case manifest in place, under the lock, and write it atomically."""
        with self._locked():
            document = self.document()
            change(document)
            text = json.dumps(document, indent=2, sort_keys=True)
            with files.atomic_path(self.path) as temporary:
                temporary.write_text(text, encoding="utf-8")
            return document

    def save(self, job: Job) -> None:
        def change(document: dict[str, Any]) -> None:
            job.updated = now_iso()
            jobs = document.get(CASE_JOBS_KEY)
            jobs = jobs if isinstance(jobs, dict) else {}
            jobs[job.job_id] = dataclasses.asdict(job)
            document[CASE_JOBS_KEY] = jobs

        self.update(change)


def manifest_jobs(case_manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The service jobs of a local case manifest as they go into the manifest saved with the
    case (only :data:`MANIFEST_JOB_FIELDS`), oldest first."""
    jobs = (case_manifest or {}).get(CASE_JOBS_KEY)
    if not isinstance(jobs, dict):
        return []
    records = [
        {name: record.get(name) for name in MANIFEST_JOB_FIELDS if name in record}
        for record in jobs.values()
        if isinstance(record, dict)
    ]
    return sorted(records, key=lambda record: (str(record.get("created", "")), str(record.get("job_id"))))


def case_folder_of(path: str | os.PathLike) -> Path | None:
    """The case folder ``path`` lies in: the nearest folder holding ``store-case.json``, from
    ``path``'s own folder upwards; None when there is none."""
    here = Path(path).resolve()
    for folder in [here, *here.parents] if here.is_dir() else here.parents:
        if (folder / CASE_FILE).is_file():
            return folder
    return None


def open_job_store(path: str | os.PathLike) -> JobStore:
    """The job store at ``path`` (``--jobs``): a case folder or its ``store-case.json`` gives the
    case manifest's jobs; any other folder its ``service-jobs.json``; any other file itself."""
    path = Path(path)
    if path.name == CASE_FILE or (path.is_dir() and (path / CASE_FILE).is_file()):
        return CaseJobStore(path)
    return JobStore(path)


def job_store_for(
    out: str | os.PathLike | None,
    *,
    jobs: str | os.PathLike | None = None,
    case_folder: str | os.PathLike | None = None,
) -> JobStore:
    """Where a new job is recorded -- the rule, in this order: ``--jobs PATH`` (see
    :func:`open_job_store`); ``--case-folder DIR``: DIR's case manifest (made when missing);
    an output inside a case folder (:func:`case_folder_of`): that case manifest; otherwise
    ``service-jobs.json`` beside the output."""
    if jobs is not None and case_folder is not None:
        raise ServiceRequestError(
            "--jobs and --case-folder both say where the job is recorded.",
            subject="vsp service",
            fix="give one of them.",
        )
    if jobs is not None:
        return open_job_store(jobs)
    if case_folder is not None:
        case_folder = Path(case_folder)
        if case_folder.exists() and not case_folder.is_dir():
            raise ServiceRequestError(
                "is not a folder.", subject=str(case_folder), fix="give the case folder (--case-folder DIR)."
            )
        return CaseJobStore(case_folder)
    if out is None:
        raise ServiceRequestError("no output and no job store.", subject="vsp service", fix="give --out.")
    folder = case_folder_of(out)
    if folder is not None:
        return CaseJobStore(folder)
    return JobStore(Path(out).resolve().parent)


def _without_session(params: dict[str, Any]) -> dict[str, Any]:
    """A request's parameters without the client's own ``_session`` switch."""
    return {k: v for k, v in params.items() if k != "_session"}


class CancelToken:
    """Set by the caller (a GUI button, SIGINT handler) to stop a running job."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


ProgressCallback = Callable[[float, str], None]


@dataclass
class BackendResult:
    """What a backend hands back: the label map file, its classes and the provenance."""

    label_file: Path
    label_names: dict[str, int]
    model_version: str = ""
    server_latency_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend:
    """One interface for every segmentation backend."""

    name = "base"

    def __init__(self, settings: ServiceSettings):
        self.settings = settings

    @property
    def service_url(self) -> str:
        return redact_url(self.settings.url) if self.settings.url else f"local:{self.settings.engine}"

    def info(self) -> dict[str, Any]:
        """{"backend", "url", "models": {name: {"labels": {name: value}, ...}}, ...}."""
        raise NotImplementedError

    def check_model(self, model: str) -> dict[str, Any]:
        """The model's description from :meth:`info`; ServiceRequestError naming the known ones."""
        info = self.info()
        models = info.get("models", {})
        if model not in models:
            raise ServiceRequestError(
                f"has no model {model!r}.",
                subject=f"service {self.service_url}",
                fix=f"use one of: {', '.join(sorted(models)) or '(none)'} (see `vsp service info`).",
            )
        return models[model]

    def run(
        self,
        job: Job,
        result_path: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> BackendResult:
        """Do the job and write the label map to ``result_path`` (atomically)."""
        raise NotImplementedError

    def save_label(self, image_id: str, label_file: Path, tag: str = "final") -> None:
        raise ServiceRequestError(
            f"backend {self.name} has no datastore to save labels into.",
            subject="--save-label",
            fix="use a MONAI Label service.",
        )


def wait_with_progress(
    worker: Callable[[], Any],
    *,
    what: str,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    on_cancel: Callable[[], None] | None = None,
    poll_s: float = 0.2,
    start: float = 0.1,
    stop: float = 0.9,
    expected_s: float = 30.0,
):
    """Run ``worker`` in a thread, reporting progress while waiting and honouring ``cancel``
    (``on_cancel`` aborts the work, e.g. closes the connection). Returns its result or raises its
    error. The waiting bar creeps towards ``stop`` (a synchronous server tells no progress)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = worker()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = error

    thread = threading.Thread(target=target, name=f"vsp-service-{what}", daemon=True)
    began = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(poll_s)
        if cancel is not None and cancel.cancelled:
            if on_cancel is not None:
                on_cancel()
            thread.join(5.0)
            raise JobCancelled(
                f"{what} was cancelled.", subject="service job", fix="submit it again when needed."
            )
        if progress is not None and thread.is_alive():
            waited = time.monotonic() - began
            fraction = start + (stop - start) * (1.0 - 1.0 / (1.0 + waited / expected_s))
            progress(fraction, f"{what}: waiting for the service ({waited:.0f} s)")
    if "error" in box:
        raise box["error"]
    return box.get("result")
