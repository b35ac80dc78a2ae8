"""How to reach the hospital store: address, authentication, TLS, timeouts — and where secrets live.

Settings come, lowest to highest priority, from the defaults, a JSON settings file
(``--store-config FILE``, else ``$VSP_STORE_CONFIG``, else ``~/.config/slicervsp/store.json``),
environment variables (``VSP_STORE_*``, see :data:`ENVIRONMENT`) and explicit overrides (command
line flags). A settings file holds one server's settings, or several under ``"servers"`` with a
``"default"`` name.

Secrets (password, bearer token, OAuth2 client secret) are never in a settings file, a scene, a
case folder, a log or a command line. They come from a file readable only by the user (mode 0600:
``password_file`` / ``token_file``, or ``$VSP_STORE_PASSWORD_FILE`` / ``$VSP_STORE_TOKEN_FILE``),
from the OS keyring (the ``keyring`` package, when it has a usable backend; ``vsp store login``
puts it there), or from a prompt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConnectorError
from ..settings import check_store_url

log = logging.getLogger(__name__)

AUTH_KINDS = ("none", "basic", "bearer", "oauth2")
KEYRING_SERVICE = "slicervsp-store"

#: Environment variable -> settings field.
ENVIRONMENT = {
    "VSP_STORE_URL": "url",
    "VSP_STORE_DICOMWEB_ROOT": "dicomweb_root",
    "VSP_STORE_AUTH": "auth",
    "VSP_STORE_USER": "username",
    "VSP_STORE_PASSWORD_FILE": "password_file",
    "VSP_STORE_TOKEN_FILE": "token_file",
    "VSP_STORE_TOKEN_URL": "token_url",
    "VSP_STORE_CLIENT_ID": "client_id",
    "VSP_STORE_CA_BUNDLE": "ca_bundle",
    "VSP_STORE_CLIENT_CERT": "client_cert",
    "VSP_STORE_CLIENT_KEY": "client_key",
    "VSP_STORE_CACHE": "cache_dir",
}
CONFIG_ENV = "VSP_STORE_CONFIG"

#: Keys a settings file must not hold: secrets go into a 0600 file or the keyring.
SECRET_KEYS = ("password", "token", "access_token", "refresh_token", "client_secret", "secret")


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "slicervsp" / "store.json"


@dataclasses.dataclass
class StoreSettings:
    """One store. ``url`` is the server's base address (Orthanc's REST root); the DICOMweb
    service is at ``url + dicomweb_root``. ``verify_tls=False`` is for one named server only,
    and warned about at every connection."""

    url: str = ""
    dicomweb_root: str = "/dicom-web"
    name: str = ""
    kind: str = "auto"  # auto (ask the server), orthanc, dicomweb (no Orthanc extras)
    auth: str = "basic"
    username: str = ""
    password_file: str = ""
    token_file: str = ""
    token_url: str = ""  # OAuth2 token endpoint
    client_id: str = ""
    scope: str = ""
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""
    verify_tls: bool = True
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    parallel: int = 4
    cache_dir: str = ""

    def __post_init__(self) -> None:
        for key in ("connect_timeout_s", "read_timeout_s", "backoff_s"):
            setattr(self, key, float(getattr(self, key)))
        self.retries, self.parallel = int(self.retries), int(self.parallel)

    # --- derived ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return check_store_url(self.url)

    @property
    def dicomweb_url(self) -> str:
        root = (self.dicomweb_root or "").strip()
        if root.startswith(("http://", "https://")):
            return check_store_url(root)
        return self.base_url + "/" + root.strip("/") if root.strip("/") else self.base_url

    @property
    def server(self) -> str:
        """How messages name the server: its settings name, else scheme://host:port."""
        if self.name:
            return self.name
        parts = urllib.parse.urlsplit(self.url.strip())
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    def check(self) -> StoreSettings:
        """Raise ConnectorError naming what is wrong; returns self."""
        subject = f"Store settings ({self.server or 'no server'})"
        self.base_url  # noqa: B018 (check_store_url raises on a bad URL)
        self.dicomweb_url  # noqa: B018
        if self.auth not in AUTH_KINDS:
            raise ConnectorError(
                f"Unknown authentication {self.auth!r}.", subject=subject, fix=f"Use one of {AUTH_KINDS}."
            )
        if self.kind not in ("auto", "orthanc", "dicomweb"):
            raise ConnectorError(
                f"Unknown store kind {self.kind!r}.", subject=subject, fix="Use auto, orthanc or dicomweb."
            )
        if self.auth == "basic" and not self.username:
            raise ConnectorError(
                "HTTP Basic authentication needs a user name.",
                subject=subject,
                fix="Set username in the settings file or VSP_STORE_USER.",
            )
        if self.auth == "oauth2" and not (self.token_url and self.client_id):
            raise ConnectorError(
                "OAuth2 needs token_url and client_id.", subject=subject, fix="Set both in the settings file."
            )
        for key in ("ca_bundle", "client_cert", "client_key"):
            value = getattr(self, key)
            if value and not Path(value).expanduser().is_file():
                raise ConnectorError(
                    f"{key} {value} is not a file.", subject=subject, fix=f"Point {key} at a PEM file."
                )
        if self.client_key and not self.client_cert:
            raise ConnectorError(
                "client_key without client_cert.", subject=subject, fix="Set client_cert too."
            )
        if min(self.connect_timeout_s, self.read_timeout_s) <= 0:
            raise ConnectorError("Timeouts must be positive.", subject=subject, fix="Set seconds > 0.")
        if not 1 <= self.parallel <= 32 or not 0 <= self.retries <= 10:
            raise ConnectorError(
                "parallel must be 1-32 and retries 0-10.", subject=subject, fix="Change them."
            )
        return self

    def public(self) -> dict[str, Any]:
        """The settings as shown to the user (there are no secrets in them)."""
        return dataclasses.asdict(self)


# --- loading -------------------------------------------------------------------------------
def _from_mapping(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    fields = {field.name for field in dataclasses.fields(StoreSettings)}
    found = [key for key in data if key.lower() in SECRET_KEYS]
    if found:
        raise ConnectorError(
            f"The settings hold a secret ({', '.join(found)}); settings files are not protected.",
            subject=source,
            fix="Remove it; use password_file/token_file (a file only you can read, mode 0600) "
            "or `vsp store login` (OS keyring).",
        )
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConnectorError(
            f"Unknown setting(s): {', '.join(unknown)}.",
            subject=source,
            fix=f"Known settings: {', '.join(sorted(fields))}.",
        )
    return dict(data)


def load_settings(
    config: str | os.PathLike | None = None,
    *,
    server: str | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> StoreSettings:
    """The effective settings: defaults < settings file < environment < ``overrides`` (None
    values are ignored). ``server`` picks one entry of a file's ``"servers"``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = Path(config) if config else Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None
    explicit = path is not None
    path = path or default_config_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConnectorError(
                f"Cannot read the store settings ({error}).", subject=str(path), fix="Fix the JSON."
            ) from None
        if not isinstance(data, dict):
            raise ConnectorError("Store settings must be a JSON object.", subject=str(path))
        if "servers" in data:
            servers = data["servers"]
            chosen = server or data.get("default") or (next(iter(servers)) if len(servers) == 1 else None)
            if chosen not in servers:
                raise ConnectorError(
                    f"No server {chosen!r} in the settings (known: {', '.join(servers)}).",
                    subject=str(path),
                    fix='Pass --store NAME or set "default".',
                )
            values.update(_from_mapping(servers[chosen], str(path)))
            values.setdefault("name", chosen)
        else:
            values.update(_from_mapping(data, str(path)))
    elif explicit:
        raise ConnectorError("Store settings file not found.", subject=str(path), fix="Check the path.")
    elif server:
        raise ConnectorError(
            f"--store {server} given but there is no settings file.", subject=str(path), fix="Create it."
        )
    for variable, key in ENVIRONMENT.items():
        if environ.get(variable):
            values[key] = environ[variable]
    values.update({key: value for key, value in overrides.items() if value is not None})
    if values.get("password_file") or values.get("token_file"):
        values.setdefault(
            "auth", "bearer" if values.get("token_file") and not values.get("password_file") else "basic"
        )
    if not values.get("url"):
        raise ConnectorError(
            "No store is configured.",
            subject="Store settings",
            fix=f'Create {default_config_path()} with {{"url": ...}}, pass --store-config FILE, '
            "or set VSP_STORE_URL.",
        )
    return StoreSettings(**_from_mapping(values, "Store settings")).check()


# --- secrets -------------------------------------------------------------------------------
def read_secret_file(path: str | os.PathLike, what: str = "password") -> str:
    """A secret from a file that only its owner can read (no group/other bits), first line."""
    file = Path(path).expanduser()
    try:
        info = file.stat()
    except OSError:
        raise ConnectorError(
            f"The {what} file does not exist.", subject=str(file), fix="Check the path."
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConnectorError(
            f"The {what} file can be read by other users (mode {stat.S_IMODE(info.st_mode):o}).",
            subject=str(file),
            fix=f"chmod 600 {file}",
        )
    text = file.read_text(encoding="utf-8").splitlines()
    if not text or not text[0]:
        raise ConnectorError(f"The {what} file is empty.", subject=str(file), fix=f"Write the {what} in it.")
    return text[0]


def write_secret_file(path: str | os.PathLike, secret: str) -> Path:
    """Write a secret into a file created with mode 0600 (its folder 0700)."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    return file


def _keyring():
    """The keyring module when it has a usable (not the fail/null) backend, else None."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 (a broken keyring setup means: no keyring)
        return None
    if isinstance(backend, fail.Keyring) or type(backend).__module__.startswith("keyring.backends.null"):
        return None
    return keyring


def keyring_available() -> bool:
    return _keyring() is not None


def _keyring_key(settings: StoreSettings) -> str:
    return f"{settings.base_url}|{settings.auth}|{settings.username or settings.client_id}"


def keyring_get(settings: StoreSettings) -> str | None:
    module = _keyring()
    if module is None:
        return None
    try:
        return module.get_password(KEYRING_SERVICE, _keyring_key(settings))
    except Exception:  # noqa: BLE001 (a locked or broken keyring: fall back to the next source)
        log.warning("The OS keyring could not be read; trying the next credential source.")
        return None


def keyring_set(settings: StoreSettings, secret: str) -> bool:
    module = _keyring()
    if module is None:
        return False
    module.set_password(KEYRING_SERVICE, _keyring_key(settings), secret)
    return True


def resolve_secret(settings: StoreSettings, prompt: Callable[[str], str] | None = None) -> str | None:
    """The password (basic), token (bearer) or client secret (oauth2), from, in order: the
    secret file, the keyring, ``prompt`` (the CLI passes getpass on a terminal). None when
    authentication is off."""
    if settings.auth == "none":
        return None
    file = settings.token_file if settings.auth == "bearer" else settings.password_file
    if file:
        return read_secret_file(file, "token" if settings.auth == "bearer" else "password")
    secret = keyring_get(settings)
    if secret:
        return secret
    if prompt is not None:
        return prompt(f"{'Token' if settings.auth == 'bearer' else 'Password'} for {settings.server}: ")
    raise ConnectorError(
        f"No {'token' if settings.auth == 'bearer' else 'password'} is available for this store.",
        subject=settings.server,
        fix="Run `vsp store login`, or set password_file/token_file (mode 0600) or VSP_STORE_PASSWORD_FILE.",
    )
