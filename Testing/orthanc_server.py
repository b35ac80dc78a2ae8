"""A real Orthanc (with its DICOMweb plugin) for the store tests, on 127.0.0.1 and a free port.

Each :class:`OrthancServer` writes its own configuration, storage and index folders under a
private directory, starts ``/usr/sbin/Orthanc config.json``, waits until its REST API answers,
and can be stopped, killed (SIGKILL, for fault tests) and restarted on the same storage. Never
the system service: nothing listens on another address or port than the one chosen here.

The configuration is the one agreed for SlicerVSP (documented in the README for a hospital's
Orthanc): HTTP Basic users, the DICOMweb plugin at ``/dicom-web/``, the user metadata
``VSPState``/``VSPLock``/``VSPPlanVersion`` and the attachments ``vsp-plan``/``vsp-manifest``.

Every server started here is killed at interpreter exit (atexit), whatever the tests did.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = os.environ.get("VSP_TEST_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get(
    "VSP_TEST_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
)

#: The Orthanc configuration SlicerVSP needs (besides users, ports and folders).
VSP_USER_METADATA = {"VSPState": 1024, "VSPLock": 1025, "VSPPlanVersion": 1026}
VSP_USER_CONTENT_TYPE = {
    "vsp-plan": [1024, "application/json"],
    "vsp-manifest": [1025, "application/json"],
}

DEFAULT_USERS = {"planner": "correct horse battery staple"}

_RUNNING: set[OrthancServer] = set()


def orthanc_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else what is missing."""
    if not (os.path.isfile(ORTHANC) and os.access(ORTHANC, os.X_OK)):
        return f"{ORTHANC} not found (apt-get install orthanc)"
    if not os.path.isfile(DICOMWEB_PLUGIN):
        return f"{DICOMWEB_PLUGIN} not found (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    """A TCP port nobody listens on at this moment (127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` made with the openssl command line.

    Returns (server PEM holding certificate and private key — what Orthanc's SslCertificate
    wants —, CA bundle PEM holding the certificate only — what a client trusts)."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / "server.key", folder / "server.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=SlicerVSP test Orthanc",
            "-addext", f"subjectAltName=IP:{host},DNS:localhost",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_pem = folder / "server.pem"
    server_pem.write_bytes(cert.read_bytes() + key.read_bytes())
    os.chmod(server_pem, 0o600)
    return server_pem, cert


class OrthancServer:
    """One Orthanc process with a private storage under ``root``."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        users: dict[str, str] | None = None,
        tls: bool = False,
        port: int | None = None,
        extra_config: dict | None = None,
    ):
        missing = orthanc_available()
        if missing:
            raise RuntimeError(missing)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.tls = tls
        self.port = port or free_port()
        self.extra_config = dict(extra_config or {})
        self.process: subprocess.Popen | None = None
        self.ca_bundle: Path | None = None
        self._server_pem: Path | None = None
        self._tls_proxy: TlsProxy | None = None
        self.http_port = self.port  # where Orthanc itself listens
        if tls:
            if tls not in (True, "proxy", "native"):
                raise ValueError(f"tls must be True, 'proxy' or 'native', not {tls!r}")
            self._server_pem, self.ca_bundle = make_self_signed_certificate(self.root / "tls")
            if tls is True or tls == "proxy":
                self.http_port = free_port()
        self.config_path = self.root / "config.json"
        self.log_path = self.root / "orthanc.log"

    # --- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The Orthanc REST root, e.g. http://127.0.0.1:8042."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + "/dicom-web"

    @property
    def user(self) -> str:
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.user]

    # --- configuration ---------------------------------------------------------------------
    def config(self) -> dict:
        config = {
            "Name": "SlicerVSP-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": self.users,
            "HttpsVerifyPeers": True,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "UserMetadata": VSP_USER_METADATA,
            "UserContentType": VSP_USER_CONTENT_TYPE,
            "StableAge": 2,
            "HttpThreadsCount": 16,
            "ConcurrentJobs": 2,
            "StorageCompression": False,
            "SaveJobs": False,
        }
        if self.tls == "native":
            config["SslEnabled"] = True
            config["SslCertificate"] = str(self._server_pem)
        config.update(self.extra_config)
        return config

    # --- life cycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> OrthancServer:
        if self.running:
            return self
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the process' lifetime)
        self.process = subprocess.Popen(
            [ORTHANC, str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()
        _RUNNING.add(self)
        if self.http_port != self.port and self._tls_proxy is None:
            self._tls_proxy = TlsProxy(self.port, self.http_port, self._server_pem)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited during start-up; log:\n{self.log_tail()}")
            try:
                self.rest("GET", "/system", timeout=2)
                return
            except (OSError, urllib.error.URLError) as error:
                last = error
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"Orthanc not ready after {timeout} s ({last}); log:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """A clean shutdown (SIGTERM, then SIGKILL if it does not end in time)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        _RUNNING.discard(self)

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled cable would: no clean shutdown."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        _RUNNING.discard(self)

    def restart(self, timeout: float = 30.0) -> OrthancServer:
        """Stop (if running) and start again on the same port and storage."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Kill the server and its TLS proxy (if any)."""
        self.kill()
        if self._tls_proxy is not None:
            self._tls_proxy.close()
            self._tls_proxy = None

    def remove(self) -> None:
        """Kill the server and delete its folders."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- a small REST helper for the tests (stdlib only, authenticated) --------------------
    def rest(self, method: str, path: str, body: bytes | dict | None = None, *, timeout: float = 30):
        """Call Orthanc's REST API as the first registered user; JSON answers are decoded."""
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            payload = answer.read()
            if answer.headers.get_content_type() == "application/json":
                return json.loads(payload)
            return payload

    def upload_file(self, path: str | os.PathLike) -> dict:
        """Store one DICOM file through ``POST /instances``."""
        return self.rest("POST", "/instances", Path(path).read_bytes())

    def upload_folder(self, folder: str | os.PathLike) -> int:
        """Store every file under ``folder``; returns how many were stored."""
        count = 0
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                self.upload_file(path)
                count += 1
        return count

    def clear(self) -> None:
        """Delete every patient (and so every study) from the store."""
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")


class TlsProxy:
    """TLS termination in front of Orthanc's plain HTTP port, as a hospital's reverse proxy does.

    Why not Orthanc's own ``SslEnabled``: Debian bookworm's Orthanc 1.10.1 (civetweb 1.15 with
    OpenSSL 3) dies with SIGSEGV at the first TLS handshake (seen here with RSA and with any
    protocol/cipher setting); ``tls="native"`` still tries it, for platforms where it works.
    The client sees the same thing either way: a server certificate it must verify."""

    def __init__(self, port: int, backend_port: int, certificate_pem: Path):
        self.backend_port = backend_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(certificate_pem))
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self._closed = threading.Event()
        threading.Thread(target=self._accept_loop, name="tls-proxy", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            tls = self.context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):
            client.close()
            return
        try:
            backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=5)
        except OSError:
            tls.close()  # Orthanc is down: the client sees the connection closed
            return
        tls.setblocking(False)
        backend.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(tls, selectors.EVENT_READ, backend)
        selector.register(backend, selectors.EVENT_READ, tls)
        try:
            while not self._closed.is_set():
                ready = [(key.fileobj, key.data) for key, _ in selector.select(0.5)]
                if tls.pending():
                    ready.append((tls, backend))
                for source, target in ready:
                    try:
                        data = source.recv(1 << 16)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        continue
                    if not data:
                        return
                    target.setblocking(True)
                    target.sendall(data)
                    target.setblocking(False)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (tls, backend):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.close()


@atexit.register
def _kill_all() -> None:
    for server in list(_RUNNING):
        server.kill()
