"""The connection to a store: a configured ``requests.Session`` under ``dicomweb-client``.

Every request has a timeout (the session sets one on any call that has none: dicomweb-client
passes none in some versions), idempotent calls (GET, HEAD, PUT, DELETE) retry with exponential
backoff on connection errors and 502/503/504 (POST is never retried here: the outbox does that,
checking for duplicates), TLS is verified (CA bundle setting; off only when the settings say so
for that server, with a warning), and every failure becomes a message naming the server and what
to do, with the `vsp` exit code of its class (:mod:`VSPCoreLib.errors`).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from VSPCoreLib.errors import CredentialsError, RemoteError, ServerResponseError, ServerUnreachableError

from ..errors import ConnectorError
from .settings import StoreSettings, resolve_secret

log = logging.getLogger(__name__)

USER_AGENT = "SlicerVSP-store"


class StoreNotFoundError(ConnectorError):
    """A study, series or instance that the store does not hold (404): a bad request (exit 2)."""


#: Percent-escapes that may stand unescaped in a URL query (RFC 3986) and that Orthanc 1.10's
#: DICOMweb plugin does not decode (seen: ``StudyDescription=%2AWLTEST%2A`` matches nothing,
#: ``*WLTEST*`` matches): wildcards ``*`` ``?``, the PN separator ``^`` and a few more.
_QUERY_UNESCAPE = {"%2A": "*", "%3F": "?", "%5E": "^", "%2C": ",", "%3A": ":", "%40": "@", "%2F": "/"}


def _plain_query(url: str) -> str:
    base, mark, query = url.partition("?")
    if not mark:
        return url
    for escape, char in _QUERY_UNESCAPE.items():
        query = query.replace(escape, char).replace(escape.lower(), char)
    return base + mark + query


class TimeoutSession(requests.Session):
    """A Session whose every request has a (connect, read) timeout unless the call gives one,
    and whose query strings keep wildcards unescaped (equivalent by RFC 3986; some stores do not
    decode them)."""

    def __init__(self, timeout: tuple[float, float]):
        super().__init__()
        self.default_timeout = timeout

    def request(self, method, url, *args, **kwargs):  # noqa: D401 (requests' signature)
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        if kwargs.get("verify") is None:
            # explicit, or requests takes $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE over the session's
            kwargs["verify"] = self.verify
        return super().request(method, url, *args, **kwargs)

    def send(self, request, **kwargs):
        request.url = _plain_query(request.url)
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().send(request, **kwargs)


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:  # never show the token
        return "BearerAuth(***)"


class OAuth2Auth(requests.auth.AuthBase):
    """OAuth2 from a token endpoint: the password grant when a user name is set, else client
    credentials. The access token is renewed before it expires (with the refresh token when
    the endpoint gave one), and once more when the store answers 401."""

    def __init__(self, settings: StoreSettings, secret: str, *, margin_s: float = 30.0):
        self.settings = settings
        self._secret = secret
        self._margin = margin_s
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires = 0.0
        self.token_requests = 0  # for tests and diagnostics

    def __repr__(self) -> str:
        return f"OAuth2Auth({self.settings.token_url})"

    def _token_call(self, data: dict[str, str]) -> dict:
        self.token_requests += 1
        with translate_errors(self.settings, "token endpoint"):
            answer = requests.post(
                self.settings.token_url,
                data=data,
                timeout=self.settings.timeout,
                verify=_verify(self.settings),
            )
            if answer.status_code in (400, 401):
                raise CredentialsError(
                    f"The token endpoint refused the credentials (HTTP {answer.status_code}).",
                    subject=self.settings.server,
                    fix="Check the user name/client id and run `vsp store login` again.",
                )
            answer.raise_for_status()
            payload = answer.json()
        if "access_token" not in payload:
            raise ServerResponseError(
                "The token endpoint answered without an access_token.", subject=self.settings.server
            )
        return payload

    def _fetch(self, force: bool = False) -> str:
        with self._lock:
            if not force and self._access and time.monotonic() < self._expires - self._margin:
                return self._access
            payload = None
            if self._refresh:
                with contextlib.suppress(CredentialsError):
                    payload = self._token_call(
                        {
                            "grant_type": "refresh_token",
                            "refresh_token": self._refresh,
                            "client_id": self.settings.client_id,
                        }
                    )
            if payload is None:
                data = {"client_id": self.settings.client_id}
                if self.settings.username:
                    data.update(grant_type="password", username=self.settings.username, password=self._secret)
                else:
                    data.update(grant_type="client_credentials", client_secret=self._secret)
                if self.settings.scope:
                    data["scope"] = self.settings.scope
                payload = self._token_call(data)
            self._access = payload["access_token"]
            self._refresh = payload.get("refresh_token") or self._refresh
            self._expires = time.monotonic() + float(payload.get("expires_in", 300))
            return self._access

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._fetch()}"
        request.register_hook("response", self._on_response)
        return request

    def _on_response(self, response, **kwargs):
        if response.status_code != 401 or getattr(response.request, "_vsp_retried", False):
            return response
        token = self._fetch(force=True)
        retry = response.request.copy()
        retry._vsp_retried = True
        retry.headers["Authorization"] = f"Bearer {token}"
        response.content  # noqa: B018 (release the connection)
        response.close()
        again = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again


def _verify(settings: StoreSettings):
    if not settings.verify_tls:
        return False
    return settings.ca_bundle or True


def make_session(settings: StoreSettings, secret: str | None) -> TimeoutSession:
    """A Session configured from the settings: auth, TLS, client certificate, retries, timeout."""
    session = TimeoutSession(settings.timeout)
    session.headers["User-Agent"] = USER_AGENT
    session.verify = _verify(settings)
    if not settings.verify_tls:
        log.warning(
            "TLS certificate verification is OFF for %s (verify_tls=false in its settings): "
            "anyone on the network path can read and alter patient data.",
            settings.server,
        )
    if settings.client_cert:
        session.cert = (
            (settings.client_cert, settings.client_key) if settings.client_key else settings.client_cert
        )
    if settings.auth == "basic":
        session.auth = requests.auth.HTTPBasicAuth(settings.username, secret or "")
    elif settings.auth == "bearer":
        session.auth = BearerAuth(secret or "")
    elif settings.auth == "oauth2":
        session.auth = OAuth2Auth(settings, secret or "")
    retry = Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=settings.backoff_s,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=max(8, settings.parallel * 2))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextlib.contextmanager
def translate_errors(settings: StoreSettings, what: str) -> Iterator[None]:
    """Turn requests' exceptions into VSPError subclasses naming the server and the fix."""
    server = settings.server
    try:
        yield
    except RemoteError:
        raise
    except requests.exceptions.SSLError as error:
        raise ServerUnreachableError(
            f"The TLS connection for {what} failed: the server's certificate is not trusted "
            f"or the handshake failed ({_short(error)}).",
            subject=server,
            fix="If the store uses a hospital certificate authority, set ca_bundle to its PEM file "
            "(VSP_STORE_CA_BUNDLE); check the server name in the URL.",
        ) from None
    except requests.exceptions.Timeout:
        raise _timeout(settings, what) from None
    except requests.exceptions.ConnectionError as error:
        text = _short(error)
        if "timed out" in text or "Timeout" in text:  # a read timeout after the retries
            raise _timeout(settings, what) from None
        reason = (
            "the server closed the connection"
            if "Aborted" in text or "reset" in text or "closed" in text
            else "the connection was refused or the name is unknown"
        )
        raise ServerUnreachableError(
            f"Cannot reach the store for {what}: {reason} (after {settings.retries} retries).",
            subject=server,
            fix="Check the URL, that the store is running, and the network/VPN.",
        ) from None
    except requests.exceptions.HTTPError as error:
        raise http_error(settings, error.response, what) from None
    except requests.exceptions.RequestException as error:
        raise ServerResponseError(f"{what} failed: {_short(error)}.", subject=server) from None


def _timeout(settings: StoreSettings, what: str) -> ServerUnreachableError:
    return ServerUnreachableError(
        f"No answer for {what} within {settings.connect_timeout_s:g} s (connect) / "
        f"{settings.read_timeout_s:g} s (read).",
        subject=settings.server,
        fix="Check that the store is running and reachable; raise read_timeout_s for slow stores.",
    )


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "..."


def http_error(settings: StoreSettings, response: requests.Response | None, what: str) -> Exception:
    """The VSPError for an HTTP error answer."""
    server = settings.server
    status = response.status_code if response is not None else 0
    if status == 401:
        who = f"user {settings.username!r}" if settings.username else "these credentials"
        return CredentialsError(
            f"The store refused {who} (HTTP 401: wrong user name, password or token).",
            subject=server,
            fix="Check the user name; run `vsp store login` to store the right password, or fix "
            "the password/token file.",
        )
    if status == 403:
        return CredentialsError(
            f"The store does not allow this user to do {what} (HTTP 403).",
            subject=server,
            fix="Ask the store's administrator for the right permissions.",
        )
    if status == 404:
        return StoreNotFoundError(
            f"The store holds no such {what} (HTTP 404).",
            subject=server,
            fix="Check the UID (`vsp store worklist` lists the studies) and dicomweb_root.",
        )
    if status == 413:
        return ServerResponseError(
            f"The store refused {what} as too large (HTTP 413).",
            subject=server,
            fix="Raise the store's (or its proxy's) maximum request size.",
        )
    if status in (502, 503, 504):
        return ServerUnreachableError(
            f"The store's gateway answered HTTP {status} for {what} (after {settings.retries} retries).",
            subject=server,
            fix="The store or its proxy is down or overloaded; try again later.",
        )
    if status >= 500:
        return ServerResponseError(
            f"The store failed on {what} (HTTP {status}).",
            subject=server,
            fix="See the store's log; try again later.",
        )
    return ServerResponseError(f"The store answered HTTP {status} to {what}.", subject=server)


class StoreClient:
    """One store: DICOMweb through dicomweb-client, Orthanc extras through the same session."""

    def __init__(
        self,
        settings: StoreSettings,
        *,
        secret: str | None = None,
        prompt: Callable[[str], str] | None = None,
    ):
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings.check()
        if secret is None:
            secret = resolve_secret(settings, prompt)
        self.session = make_session(settings, secret)
        try:  # dicomweb-client (0.61.0, Slicer 5.12's, too) passes its own timeout (20 s): ours
            self.dicomweb = DICOMwebClient(
                url=settings.dicomweb_url, session=self.session, timeout=settings.timeout
            )
        except TypeError:  # an older one takes none: the session sets ours
            self.dicomweb = DICOMwebClient(url=settings.dicomweb_url, session=self.session)
        # dicomweb-client's own retrying (5 attempts, up to 15 s of waits, on ANY exception, POST
        # included) is off: the session's urllib3 Retry does it, for idempotent calls only.
        self.dicomweb.set_http_retry_params(retry=False)
        self._is_orthanc: bool | None = {"orthanc": True, "dicomweb": False}.get(settings.kind)
        self._orthanc_ids: dict[str, str] = {}

    @property
    def server(self) -> str:
        return self.settings.server

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def translate(self, what: str):
        return translate_errors(self.settings, what)

    # --- DICOMweb (QIDO/WADO) through dicomweb-client -------------------------------------------
    def check_connection(self) -> dict[str, Any]:
        """Ask for one study: proves reachability, TLS and credentials. Returns what was learnt."""
        with self.translate("a connection check"):
            self.dicomweb.search_for_studies(limit=1)
        return {"server": self.server, "dicomweb": self.settings.dicomweb_url, "orthanc": self.is_orthanc()}

    def search_studies(
        self, filters: dict[str, Any], *, limit: int | None, offset: int, fields=()
    ) -> list[dict]:
        with self.translate("a study search"):
            return self.dicomweb.search_for_studies(
                limit=limit, offset=offset or None, fields=list(fields) or None, search_filters=filters
            )

    def search_series(self, study_uid: str, *, fields=()) -> list[dict]:
        with self.translate(f"the series of study {study_uid}"):
            return self.dicomweb.search_for_series(study_uid, fields=list(fields) or None)

    def search_instances(self, study_uid: str, series_uid: str) -> list[dict]:
        with self.translate(f"the instances of series {series_uid}"):
            return self.dicomweb.search_for_instances(study_uid, series_uid, fields=["SOPInstanceUID"])

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str):
        """One instance as a pydicom Dataset (WADO-RS, application/dicom)."""
        with self.translate(f"instance {sop_uid}"):
            return self.dicomweb.retrieve_instance(study_uid, series_uid, sop_uid)

    def retrieve_instance_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """One instance as the store sent it (a DICOM Part 10 file), WADO-RS over the same
        session. Faster than :meth:`retrieve_instance` (no parse and re-encode: the 512 x 512 x 300
        download went from 7 % to most of curl's throughput) and byte-exact; the caller checks it."""
        url = f"{self.settings.dicomweb_url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        with self.translate(f"instance {sop_uid}"):
            # identity: Orthanc gzips answers by default, which costs more CPU (both ends) than
            # it saves on a hospital network (measured: 12x slower than curl with gzip)
            answer = self.session.get(
                url,
                headers={
                    "Accept": 'multipart/related; type="application/dicom"',
                    "Accept-Encoding": "identity",
                },
            )
            answer.raise_for_status()
        return _single_part(answer, self.server, sop_uid)

    def stream_series(self, study_uid: str, series_uid: str, *, chunk_bytes: int = 1 << 20):
        """The whole series in one WADO-RS request, streamed: yields ``("part", headers)`` at the
        start of each body part, ``("data", bytes)`` pieces of its body and ``("end", None)`` at
        its end, without holding more than a chunk in memory. Raises a ``requests`` exception
        when the stream is cut (the caller keeps the parts that ended) and
        :class:`ServerResponseError` when the answer is not multipart/related or ends without its
        closing delimiter. Same Accept header and identity encoding as one instance."""
        url = f"{self.settings.dicomweb_url}/studies/{study_uid}/series/{series_uid}"
        with self.translate(f"series {series_uid}"):
            answer = self.session.get(
                url,
                headers={
                    "Accept": 'multipart/related; type="application/dicom"',
                    "Accept-Encoding": "identity",
                },
                stream=True,
            )
            if not answer.ok:
                answer.close()
            answer.raise_for_status()
        try:
            splitter = MultipartSplitter(_boundary(answer, self.server, f"series {series_uid}"))
            try:
                yield from _split_answer(answer, splitter, chunk_bytes)
            except ValueError as error:
                raise ServerResponseError(
                    f"The store's answer for series {series_uid} is not valid multipart: {error}.",
                    subject=self.server,
                ) from None
            if not splitter.finished:
                raise requests.exceptions.ChunkedEncodingError("the answer ended inside a part")
        finally:
            answer.close()

    # --- Orthanc extras through requests ----------------------------------------------------
    def is_orthanc(self) -> bool:
        """True when the server is an Orthanc (its REST API answers /system with its name)."""
        if self._is_orthanc is None:
            try:
                answer = self.session.get(self.settings.base_url + "/system", timeout=self.settings.timeout)
                self._is_orthanc = answer.ok and "Version" in answer.json() and "ApiVersion" in answer.json()
            except (requests.RequestException, ValueError):
                self._is_orthanc = False
        return self._is_orthanc

    def orthanc(
        self, method: str, path: str, *, what: str, data=None, json_body=None, ok404=False, raw=False
    ):
        """One Orthanc REST call (``path`` below the base URL); JSON answers decoded, others
        returned as bytes; None on 404 when ``ok404``."""
        if not self.is_orthanc():
            raise ConnectorError(
                f"{what} needs an Orthanc store; this one speaks DICOMweb only.",
                subject=self.server,
                fix="Use an Orthanc store, or set kind to orthanc if it is one behind a proxy.",
            )
        with self.translate(what):
            answer = self.session.request(method, self.settings.base_url + path, data=data, json=json_body)
            if ok404 and answer.status_code == 404:
                return None
            answer.raise_for_status()
            if not raw and answer.headers.get("Content-Type", "").startswith("application/json"):
                return answer.json()
            return answer.content

    def orthanc_study_id(self, study_uid: str) -> str | None:
        """Orthanc's own identifier of a study (POST /tools/lookup), None when it is not stored."""
        if study_uid not in self._orthanc_ids:
            found = self.orthanc("POST", "/tools/lookup", what=f"lookup of study {study_uid}", data=study_uid)
            ids = [item["ID"] for item in found or [] if item.get("Type") == "Study"]
            if not ids:
                return None
            self._orthanc_ids[study_uid] = ids[0]
        return self._orthanc_ids[study_uid]

    def _study_path(self, study_uid: str) -> str:
        orthanc_id = self.orthanc_study_id(study_uid)
        if orthanc_id is None:
            raise StoreNotFoundError(
                f"The store holds no study {study_uid}.",
                subject=self.server,
                fix="Check the UID (`vsp store worklist`).",
            )
        return f"/studies/{orthanc_id}"

    def study_metadata(self, study_uid: str) -> dict[str, str]:
        """The study's metadata in Orthanc (name -> value), user metadata included."""
        path = self._study_path(study_uid)
        names = self.orthanc("GET", path + "/metadata", what=f"metadata of study {study_uid}") or []
        values = {}
        for name in names:
            value = self.orthanc(
                "GET", f"{path}/metadata/{name}", what=f"metadata {name}", ok404=True, raw=True
            )
            if value is not None:
                values[name] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return values

    def get_study_metadata(self, study_uid: str, name: str) -> str | None:
        value = self.orthanc(
            "GET",
            f"{self._study_path(study_uid)}/metadata/{name}",
            what=f"metadata {name}",
            ok404=True,
            raw=True,
        )
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def set_study_metadata(self, study_uid: str, name: str, value: str) -> None:
        self.orthanc(
            "PUT",
            f"{self._study_path(study_uid)}/metadata/{name}",
            what=f"metadata {name}",
            data=value.encode(),
        )

    def study_attachments(self, study_uid: str) -> list[str]:
        return self.orthanc("GET", f"{self._study_path(study_uid)}/attachments", what="attachments") or []

    def get_attachment(self, study_uid: str, name: str) -> bytes | None:
        return self.orthanc(
            "GET",
            f"{self._study_path(study_uid)}/attachments/{name}/data",
            what=f"attachment {name}",
            ok404=True,
            raw=True,
        )

    def put_attachment(self, study_uid: str, name: str, data: bytes) -> None:
        self.orthanc(
            "PUT", f"{self._study_path(study_uid)}/attachments/{name}", what=f"attachment {name}", data=data
        )


def _boundary(answer: requests.Response, server: str, what: str) -> bytes:
    kind = answer.headers.get("Content-Type", "")
    boundary = None
    for parameter in kind.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not kind.lower().startswith("multipart/related") or not boundary:
        raise ServerResponseError(
            f"The store answered {kind or 'no content type'} for {what}, not multipart/related DICOM.",
            subject=server,
        )
    return boundary.encode("ascii", "replace")


def _split_answer(answer: requests.Response, splitter: MultipartSplitter, chunk_bytes: int):
    """Feed a streamed answer's body to ``splitter``. An answer sent as it is (no
    Content-Encoding, as asked) is read straight from the standard library's HTTP response into
    one reused buffer (``readinto``: no new memory per piece, no copy; the kernel's page faults
    for fresh buffers cost more than the copies themselves); an encoded one through requests,
    which decodes it."""
    source = getattr(answer.raw, "_fp", None)  # urllib3's http.client.HTTPResponse
    encoded = answer.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    if encoded or not hasattr(source, "readinto"):
        for chunk in answer.iter_content(chunk_size=chunk_bytes):
            yield from splitter.feed(chunk)
        return
    buffer = bytearray(chunk_bytes + len(splitter.delimiter))
    view = memoryview(buffer)
    while True:
        tail = splitter.take_tail()  # a delimiter's length, or a part's headers cut by the read
        if len(tail) + chunk_bytes > len(buffer):
            buffer = bytearray(len(tail) + chunk_bytes)
            view = memoryview(buffer)
        buffer[: len(tail)] = tail
        try:
            count = source.readinto(view[len(tail) :])
        except TimeoutError as error:
            raise requests.exceptions.ReadTimeout(str(error)) from None
        except (OSError, http.client.HTTPException) as error:  # reset, IncompleteRead, ...
            raise requests.exceptions.ChunkedEncodingError(f"{type(error).__name__}: {error}") from None
        if not count:
            splitter.take_tail()
            return
        yield from splitter.feed_buffer(buffer, len(tail) + count)


class MultipartSplitter:
    """Splits a multipart body (RFC 2046) fed in pieces into events: ``("part", headers)``
    (lower-case names), ``("data", memoryview)`` (valid until the next event is asked for),
    ``("end", None)``. Memory: one piece plus the delimiter's length; every byte is scanned
    once and copied once."""

    def __init__(self, boundary: bytes):
        self.delimiter = b"\r\n--" + boundary
        self._tail = b"\r\n"  # the first delimiter may open the body
        self._state = "preamble"
        self.finished = False
        self.parts = 0

    def feed(self, chunk: bytes):
        data = self._tail + chunk if self._tail else bytes(chunk)
        return self._split(data, len(data))

    def feed_buffer(self, buffer: bytearray, size: int):
        """Like :meth:`feed`, without copying: ``buffer[:size]`` holds the kept tail
        (:meth:`take_tail`, put there by the caller) followed by the new bytes. The slices given
        are views of ``buffer``: valid until the caller refills it."""
        return self._split(buffer, size)

    def take_tail(self) -> bytes:
        """The bytes kept from the last piece (they begin the next one); at most the
        delimiter's length."""
        tail, self._tail = self._tail, b""
        return tail

    def _split(self, data, end: int):
        view = memoryview(data)
        delimiter = self.delimiter
        keep = len(delimiter) - 1  # bytes that may begin a delimiter the next piece completes
        pos = 0
        while True:
            if self._state in ("preamble", "body"):
                at = data.find(delimiter, pos, end)
                if at < 0:
                    safe = max(pos, end - keep)
                    if self._state == "body" and safe > pos:
                        yield "data", view[pos:safe]
                    pos = safe
                    break
                if self._state == "body":
                    if at > pos:
                        yield "data", view[pos:at]
                    yield "end", None
                pos = at + len(delimiter)
                self._state = "delimiter"
            elif self._state == "delimiter":
                if end - pos < 2:
                    break
                if data[pos : pos + 2] == b"--":
                    self._state, self.finished = "epilogue", True
                    continue
                line_end = data.find(b"\r\n", pos, end)  # transport padding up to the line end
                if line_end < 0:
                    break
                pos = line_end + 2
                self._state = "headers"
            elif self._state == "headers":
                if end - pos >= 2 and data[pos : pos + 2] == b"\r\n":
                    block, skip = b"", pos + 2
                else:
                    at = data.find(b"\r\n\r\n", pos, end)
                    if at < 0:
                        if end - pos > 65536:
                            raise ValueError("a multipart part's headers exceed 64 KiB")
                        break
                    block, skip = bytes(data[pos:at]), at + 4
                pos = skip
                headers = {}
                for line in block.split(b"\r\n") if block else ():
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.parts += 1
                self._state = "body"
                yield "part", headers
            else:  # the epilogue is ignored
                pos = end
                break
        self._tail = bytes(data[pos:end])


def _single_part(answer: requests.Response, server: str, sop_uid: str) -> bytes:
    """The one body part of a multipart/related WADO-RS answer."""
    kind = answer.headers.get("Content-Type", "")
    if kind.split(";")[0].strip().lower() == "application/dicom":
        return answer.content
    boundary = None
    for parameter in kind.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not kind.lower().startswith("multipart/related") or not boundary:
        raise ServerResponseError(
            f"The store answered {kind or 'no content type'} for instance {sop_uid}, not DICOM.",
            subject=server,
        )
    parts = answer.content.split(b"--" + boundary.encode())
    bodies = []
    for part in parts[1:]:
        if part.startswith(b"--"):
            break
        _, separator, body = part.partition(b"\r\n\r\n")
        if separator:
            bodies.append(body[:-2] if body.endswith(b"\r\n") else body)
    if len(bodies) != 1:
        raise ServerResponseError(
            f"The store answered {len(bodies)} parts for instance {sop_uid}, not one.", subject=server
        )
    return bodies[0]


def open_store(settings: StoreSettings, **options) -> StoreClient:
    return StoreClient(settings, **options)
