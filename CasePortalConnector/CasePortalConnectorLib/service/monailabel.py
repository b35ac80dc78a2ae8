"""The MONAI Label backend: the REST protocol that Slicer users' GPU segmentation servers speak.

Routes, in the exact forms the server answers without a redirect (a redirect would resend a
multipart body): ``GET /info/``, ``POST /infer/{model}?image=<id>`` (multipart form: ``params``
a JSON string, optional ``file`` part with the volume), ``PUT /session/`` (a large volume sent
once, then inferred by ``session_id``), ``PUT /datastore/label?image=<id>&tag=<tag>`` (save a
corrected label back for active learning), ``GET /auth/`` (404: authentication off) and
``POST /auth/token`` (form: username, password, grant_type=password).

Every call has a timeout (connect, read) and verifies TLS (``ca_bundle`` or the system's CAs;
``verify_tls: false`` is explicit, per service, and logged as a warning). Transient failures
(no connection, 502/503/504) are retried with exponential backoff; an infer whose request
reached the server is never retried here (the job store decides about a second submit).
The answer is multipart (a JSON ``params`` part and the label file) or plain JSON: the
Content-Type decides. The server's file name is never used as a path: the label is written to
the job's own result path, with the suffix taken only from a fixed list.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import io
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from VSPCoreLib import files

from .base import (
    Backend,
    BackendResult,
    CancelToken,
    Job,
    ProgressCallback,
    ServiceAuthError,
    ServiceError,
    ServiceRequestError,
    ServiceSettings,
    ServiceTimeout,
    ServiceUnreachable,
    read_credentials,
    redact_url,
    wait_with_progress,
)

log = logging.getLogger(__name__)

TRANSIENT_STATUS = (502, 503, 504)
RESULT_SUFFIXES = (".nii.gz", ".nrrd", ".nii", ".seg.nrrd", ".mha")


class MonaiLabelClient:
    """A thin, careful client of one MONAI Label server."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.base = settings.url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment for patient data
        if not settings.verify_tls:
            log.warning(
                "TLS verification is OFF for %s (verify_tls: false in its settings)", redact_url(self.base)
            )
            self.session.verify = False
        elif settings.ca_bundle:
            self.session.verify = settings.ca_bundle
        self._auth_header: str | None = None
        self._auth_checked = False

    @property
    def subject(self) -> str:
        return f"service {redact_url(self.base)}"

    def close(self) -> None:
        self.session.close()

    # --- one call ---------------------------------------------------------------------------

    def _timeout(self, read_s: float | None = None) -> tuple[float, float]:
        return (self.settings.connect_timeout_s, read_s if read_s is not None else self.settings.timeout_s)

    def request(
        self,
        method: str,
        route: str,
        *,
        retry: bool = True,
        read_timeout_s: float | None = None,
        authenticate: bool = True,
        **kwargs,
    ) -> requests.Response:
        """One call with a timeout; retried with backoff on transient errors when ``retry``
        (only requests that are safe to repeat). Raises the service errors of :mod:`.base`."""
        if authenticate:
            self._ensure_auth()
        headers = dict(kwargs.pop("headers", {}) or {})
        if authenticate and self._auth_header:
            headers["Authorization"] = self._auth_header
        attempts = 1 + (max(0, self.settings.retries) if retry else 0)
        url = self.base + route
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                delay = self.settings.backoff_s * (2 ** (attempt - 1))
                log.info(
                    "retrying %s %s in %.1f s (attempt %d of %d)", method, route, delay, attempt + 1, attempts
                )
                time.sleep(delay)
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=headers,
                    timeout=self._timeout(read_timeout_s),
                    allow_redirects=False,
                    **kwargs,
                )
            except requests.exceptions.SSLError as error:
                raise ServiceUnreachable(
                    f"the TLS certificate could not be verified ({type(error).__name__}).",
                    subject=self.subject,
                    fix="set ca_bundle to the hospital's CA bundle in the service settings.",
                ) from None
            except requests.exceptions.ConnectTimeout:
                last = ServiceUnreachable(
                    f"no connection within {self.settings.connect_timeout_s:g} s.",
                    subject=self.subject,
                    fix="check the URL, the network and that the server runs.",
                )
                continue
            except requests.exceptions.ReadTimeout:
                raise ServiceTimeout(
                    f"no answer to {method} {route.split('?')[0]} within "
                    f"{read_timeout_s if read_timeout_s is not None else self.settings.timeout_s:g} s.",
                    subject=self.subject,
                    fix="try again later, or raise timeout_s in the service settings for large volumes.",
                ) from None
            except requests.exceptions.ConnectionError as error:
                text = str(error)
                refused = (
                    "refused" in text.lower() or "NewConnectionError" in text or "resolve" in text.lower()
                )
                if refused:
                    last = ServiceUnreachable(
                        "cannot be reached (connection refused or no such host).",
                        subject=self.subject,
                        fix="check the URL and that the server runs; then try again.",
                    )
                    continue
                raise ServiceUnreachable(
                    f"the connection was lost during {method} {route.split('?')[0]}.",
                    subject=self.subject,
                    fix="check that the server still runs; then `vsp service resume` the job.",
                ) from None
            if response.status_code in TRANSIENT_STATUS and attempt + 1 < attempts:
                last = ServiceError(f"answered {response.status_code}.", subject=self.subject)
                continue
            return self._checked(response, method, route)
        assert last is not None
        raise last

    def _checked(self, response: requests.Response, method: str, route: str) -> requests.Response:
        status = response.status_code
        where = f"{method} {route.split('?')[0]}"
        if status < 300:
            return response
        if status in (401, 403):
            raise ServiceAuthError(
                f"refused the credentials ({status} on {where}).",
                subject=self.subject,
                fix="check the token file (token_file / VSP_SERVICE_TOKEN_FILE) and the account's rights.",
            )
        if 300 <= status < 400:
            raise ServiceError(
                f"answered {where} with a redirect ({status}) to {redact_url(response.headers.get('location', ''))}.",
                subject=self.subject,
                fix="set the service URL to the server's root (e.g. https://host:8000).",
            )
        detail = _detail(response)
        if status == 404:
            raise ServiceRequestError(
                f"has no {where} (404){detail}.", subject=self.subject, fix="check the URL."
            )
        if status == 422:
            raise ServiceRequestError(
                f"refused the request as malformed (422){detail}.",
                subject=self.subject,
                fix="check the model parameters.",
            )
        raise ServiceError(
            f"failed on {where} ({status}){detail}.",
            subject=self.subject,
            fix="see the server's log; try again, or ask the service's administrator.",
        )

    # --- authentication ---------------------------------------------------------------------

    def _ensure_auth(self) -> None:
        if self._auth_checked:
            return
        self._auth_checked = True
        try:
            response = self.session.get(
                self.base + "/auth/", timeout=self._timeout(30.0), allow_redirects=False
            )
        except requests.exceptions.RequestException:
            self._auth_checked = False
            # The next call reports the connection problem with its own retries.
            return
        if response.status_code == 404:
            return  # authentication is off
        if not self.settings.token_file:
            raise ServiceAuthError(
                "requires authentication, and no token file is set.",
                subject=self.subject,
                fix="set token_file (or VSP_SERVICE_TOKEN_FILE) to a file (chmod 600) with the token "
                'or {"username": ..., "password": ...}.',
            )
        credentials = read_credentials(self.settings.token_file)
        if "access_token" in credentials:
            self._auth_header = f"{credentials['token_type']} {credentials['access_token']}"
            return
        token = self.request(
            "POST",
            "/auth/token",
            authenticate=False,
            read_timeout_s=30.0,
            data={
                "username": credentials["username"],
                "password": credentials["password"],
                "grant_type": "password",
            },
        )
        data = _json(token, self.subject, "POST /auth/token")
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise ServiceError("answered /auth/token without an access token.", subject=self.subject)
        self._auth_header = f"{data.get('token_type') or 'Bearer'} {data['access_token']}"

    # --- routes -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        response = self.request("GET", "/info/", read_timeout_s=min(60.0, self.settings.timeout_s))
        data = _json(response, self.subject, "GET /info/")
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ServiceError(
                "answered /info/ with something that is not MONAI Label server information.",
                subject=self.subject,
                fix="check that the URL is a MONAI Label server's.",
            )
        return data

    def create_session(self, volume_file: Path) -> str:
        """Send a volume once (``PUT /session/``); infer it later by its session id."""
        with _MultipartUpload({}, "files", volume_file) as body:
            response = self.request(
                "PUT", "/session/", retry=False, data=body, headers={"Content-Type": body.content_type}
            )
        data = _json(response, self.subject, "PUT /session/")
        if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
            raise ServiceError("answered PUT /session/ without a session id.", subject=self.subject)
        return data["session_id"]

    def session_exists(self, session_id: str) -> bool:
        """Whether the server still holds the session (``GET /session/{id}``: 200 yes, 404 no --
        sessions expire on the server)."""
        route = "/session/" + urllib.parse.quote(session_id, safe="")
        try:
            self.request("GET", route)
        except ServiceRequestError:  # 404: expired or removed
            return False
        return True

    def infer(
        self,
        model: str,
        params: dict[str, Any],
        *,
        image_id: str = "",
        volume_file: Path | None = None,
        session_id: str = "",
    ) -> tuple[dict[str, Any], bytes | None, str]:
        """(params answer, label bytes or None, label suffix) of ``POST /infer/{model}``."""
        query: dict[str, str] = {}
        if image_id:
            query["image"] = image_id
        if session_id:
            query["session_id"] = session_id
        form = {"params": json.dumps(params)}
        route = f"/infer/{requests.utils.quote(model, safe='')}"
        if volume_file is not None:
            with _MultipartUpload(form, "file", volume_file) as body:
                response = self.request(
                    "POST",
                    route,
                    retry=False,
                    params=query,
                    data=body,
                    headers={"Content-Type": body.content_type},
                )
        else:
            # A multipart body even without a file, as the server's form parser expects.
            response = self.request(
                "POST", route, retry=False, params=query, files={"params": (None, form["params"])}
            )
        return parse_infer_answer(response, self.subject)

    def save_label(
        self, image_id: str, label_file: Path, tag: str = "final", params: dict | None = None
    ) -> dict:
        with open(label_file, "rb") as stream:
            response = self.request(
                "PUT",
                "/datastore/label",
                retry=False,
                params={"image": image_id, "tag": tag},
                data={"params": json.dumps(params or {})},
                files={"label": (_upload_name(label_file), stream, "application/octet-stream")},
            )
        answer = _json(response, self.subject, "PUT /datastore/label")
        return answer if isinstance(answer, dict) else {"answer": answer}


class _MultipartUpload:
    """A multipart/form-data body streamed from the file (read in blocks of at least 1 MiB as it
    is sent, whatever smaller size the HTTP layer asks for): no
    copy of a large volume in memory. Its length is known, so the request has a
    Content-Length (no chunked encoding)."""

    def __init__(self, fields: dict[str, str], file_field: str, path: Path):
        import uuid

        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode("utf-8")
            + b"\r\n"
            for name, value in fields.items()
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
            f'filename="{_upload_name(path)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        self._stream = open(path, "rb")  # noqa: SIM115 (closed by __exit__)
        self._parts = [io.BytesIO(head), self._stream, io.BytesIO(tail)]
        self._length = len(head) + Path(path).stat().st_size + len(tail)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        out = b""
        while self._parts and (size < 0 or len(out) < size):
            chunk = self._parts[0].read(-1 if size < 0 else max(size - len(out), 1 << 20))
            if not chunk:
                self._parts.pop(0)
                continue
            out += chunk
        return out

    def __enter__(self) -> _MultipartUpload:
        return self

    def __exit__(self, *exc) -> None:
        self._stream.close()


def _upload_name(path: Path) -> str:
    """A neutral upload name that keeps the suffix the server reads the format from."""
    name = path.name.lower()
    for suffix in RESULT_SUFFIXES:
        if name.endswith(suffix):
            return "volume" + suffix
    return "volume" + path.suffix


def _detail(response: requests.Response) -> str:
    text = (response.text or "").strip().replace("\n", " ")
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            text = str(response.json().get("detail", text))
        except (ValueError, AttributeError):
            pass
    return f": {text[:200]}" if text else ""


def _json(response: requests.Response, subject: str, where: str):
    try:
        return response.json()
    except ValueError:
        raise ServiceError(
            f"answered {where} with something that is not JSON "
            f"({response.headers.get('content-type', 'no content type')}).",
            subject=subject,
            fix="check that the URL is a MONAI Label server's.",
        ) from None


def _suffix_of(filename: str | None) -> str:
    """The result's format from a server-chosen name, from a fixed list only (never a path)."""
    name = (filename or "").lower()
    for suffix in RESULT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def parse_infer_answer(response: requests.Response, subject: str) -> tuple[dict[str, Any], bytes | None, str]:
    """Branch on Content-Type: multipart (params + label file), JSON (params only) or a bare
    label file (``output=image``)."""
    content_type = response.headers.get("content-type", "")
    malformed = ServiceError(
        f"answered the infer with a malformed result ({content_type or 'no content type'}).",
        subject=subject,
        fix="check the server's version and log; the result was not used.",
    )
    if content_type.startswith("application/json"):
        data = _json(response, subject, "POST /infer")
        if not isinstance(data, dict):
            raise malformed
        return data, None, ""
    if content_type.startswith("multipart/"):
        params: dict[str, Any] | None = None
        label: bytes | None = None
        suffix = ""
        for headers, body in split_multipart(response.content, content_type):
            disposition = headers.get("content-disposition", "")
            part_type = headers.get("content-type", "")
            filename = headers.get_filename() if hasattr(headers, "get_filename") else None
            name = headers.get_param("name", header="content-disposition") if disposition else None
            if filename is None and (name == "params" or part_type.startswith("application/json")):
                try:
                    params = json.loads(bytes(body).decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise malformed from None
            elif filename is not None or body:
                label = body
                suffix = _suffix_of(filename)
        if params is None or not isinstance(params, dict) or label is None:
            raise malformed
        return params, label, suffix
    if content_type.startswith("application/octet-stream") or "gzip" in content_type:
        return {}, response.content, _suffix_of(_filename_of(response.headers.get("content-disposition", "")))
    raise malformed


def _filename_of(disposition: str) -> str | None:
    if not disposition:
        return None
    message = email.message.EmailMessage()
    message["content-disposition"] = disposition
    return message.get_filename()


def split_multipart(body: bytes, content_type: str):
    """The parts of a multipart body: (headers as an email message, payload bytes).

    The boundary split is done on bytes (fast for a large label file); each part's headers are
    parsed with the standard ``email`` package.
    """
    header = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(
        f"Content-Type: {content_type}\r\n\r\n"
    )
    boundary = header.get_param("boundary")
    if not boundary:
        return []
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    parts = []
    start = body.find(delimiter)
    while start >= 0:
        begin = start + len(delimiter)
        if body.startswith(b"--", begin):
            break  # the closing delimiter
        if body.startswith(b"\r\n", begin):
            begin += 2
        elif body.startswith(b"\n", begin):
            begin += 1
        end = body.find(b"\r\n" + delimiter, begin)
        following = end + 2 if end >= 0 else body.find(delimiter, begin)
        if end < 0:
            end = following if following >= 0 else len(body)
        separator = body.find(b"\r\n\r\n", begin, end)
        if separator >= 0:
            head = body[begin:separator]
            headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head + b"\r\n\r\n")
            parts.append((headers, view[separator + 4 : end]))  # no copy of a large label file
        start = following
    return parts


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


class MonaiLabelBackend(Backend):
    name = "monailabel"
    records_progress = True  # run() records the session id in the job as soon as it exists

    def __init__(self, settings: ServiceSettings):
        super().__init__(settings)
        self.client = MonaiLabelClient(settings)
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        if self._info is None:
            data = self.client.info()
            models = {}
            for name, model in (data.get("models") or {}).items():
                labels = model.get("labels") if isinstance(model, dict) else None
                if isinstance(labels, list):
                    labels = {label: index + 1 for index, label in enumerate(labels)}
                models[name] = {
                    "type": model.get("type", "") if isinstance(model, dict) else "",
                    "labels": labels if isinstance(labels, dict) else {},
                    "description": model.get("description", "") if isinstance(model, dict) else "",
                }
            self._info = {
                "backend": self.name,
                "url": redact_url(self.settings.url),
                "name": data.get("name", ""),
                "version": data.get("version", ""),
                "models": models,
                "external": self.settings.external,
            }
        return self._info

    def run(
        self,
        job: Job,
        result_path: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        volume_file: Path | None = None,
        save_job: Callable[[], None] | None = None,
    ) -> BackendResult:
        model = self.check_model(job.model)  # an unknown model answers 500: find out first
        params = {"result_extension": ".nrrd", "result_dtype": "uint8", **job.params}
        session_id = ""
        if job.params.get("_session") and (volume_file is not None or job.session_id):
            # The volume goes once to the server's session store; the infer names the session.
            # A resumed job reuses its session while the server still has it.
            if job.session_id and self.client.session_exists(job.session_id):
                session_id = job.session_id
                log.info("job %s: session %s reused, the volume is not sent again", job.job_id, session_id)
            elif volume_file is not None:
                if job.session_id:
                    log.info(
                        "job %s: session %s is gone from the server: sent again", job.job_id, job.session_id
                    )
                session_id = self.client.create_session(volume_file)
                job.session_id = session_id
                if save_job is not None:
                    save_job()  # recorded before the infer: a restart finds the session
            else:
                raise ServiceRequestError(
                    f"session {job.session_id} is gone from the server and the job has no volume to send again.",
                    subject=f"job {job.job_id}",
                    fix="run the infer again with --volume.",
                )
            volume_file = None
        params.pop("_session", None)

        def call():
            return self.client.infer(
                job.model, params, image_id=job.image_id, volume_file=volume_file, session_id=session_id
            )

        began = time.monotonic()
        answer, label, suffix = wait_with_progress(
            call,
            what=f"infer {job.model}",
            progress=progress,
            cancel=cancel,
            on_cancel=self.client.close,
            expected_s=10.0,
        )
        elapsed = time.monotonic() - began
        if label is None:
            raise ServiceError(
                "answered the infer without a label image.",
                subject=self.client.subject,
                fix=f"check that model {job.model!r} returns a segmentation.",
            )
        label_names = answer.get("label_names") or model.get("labels") or {}
        if not isinstance(label_names, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in label_names.values()
        ):
            raise ServiceError(
                "answered the infer with label_names that are not a {name: value} table.",
                subject=self.client.subject,
            )
        suffix = suffix or ".nrrd"
        target = result_path.with_name(result_path.name + suffix) if not result_path.suffix else result_path
        target.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(target) as temporary:
            temporary.write_bytes(label)
        latencies = answer.get("latencies") if isinstance(answer.get("latencies"), dict) else {}
        server_total = latencies.get("total")
        return BackendResult(
            label_file=target,
            label_names={str(k): int(v) for k, v in label_names.items()},
            model_version=str(self.info().get("version", "")),
            server_latency_s=float(server_total) if isinstance(server_total, int | float) else None,
            extra={"latencies": latencies, "round_trip_s": round(elapsed, 3)},
        )

    def save_label(self, image_id: str, label_file: Path, tag: str = "final") -> dict:
        return self.client.save_label(image_id, label_file, tag)
