"""The connector's settings that are saved with a scene, and the checks they must pass.

The store URL is saved in the scene's parameter node, so it must never carry credentials, and
patient data must not travel unencrypted to another computer.
"""

from __future__ import annotations

import urllib.parse

from .errors import ConnectorError

#: Hosts for which plain http is accepted (a store on this computer, e.g. a test Orthanc).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def check_server_url(
    url: str | None,
    *,
    kind: str = "store",
    example: str = "https://pacs.example.org/dicom-web",
    error: type[ConnectorError] = ConnectorError,
    unset_fix: str = "",
) -> str:
    """A server's root URL (the store's DICOMweb root, a GPU service), stripped of surrounding
    spaces and of a trailing slash; raises `error` saying what is wrong and how to fix it when
    it cannot be used. A message never repeats the URL: it may hold a password."""
    text = (url or "").strip()
    subject = f"{kind.capitalize()} URL"
    enter = f"Enter an address like {example}."
    if not text:
        raise error(f"No {kind} URL is set.", subject=subject, fix=unset_fix or enter)
    try:
        parts = urllib.parse.urlsplit(text)
        hostname = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number 0-65535)
    except ValueError as problem:
        raise error(f"This is not a valid URL ({problem}).", subject=subject, fix=enter) from None
    if parts.scheme not in ("https", "http"):
        raise error(
            f"The {kind} URL must start with https:// (or http:// for a {kind} on this computer).",
            subject=subject,
            fix=enter,
        )
    if not hostname:
        raise error(f"The {kind} URL has no server name.", subject=subject, fix=enter)
    if parts.username is not None or parts.password is not None:
        raise error(
            f"The {kind} URL contains a user name or password, and URLs are saved with scenes and jobs.",
            subject=subject,
            fix="Remove the user name and password from the URL; give credentials as a file (0600) or at the prompt.",
        )
    if parts.scheme == "http" and hostname not in LOCAL_HOSTS:
        raise error(
            "http sends patient data unencrypted to another computer.",
            subject=subject,
            fix=f"Use https:// for a {kind} on another computer.",
        )
    if parts.query or parts.fragment:
        raise error(
            f"The {kind} URL has a query or fragment (after ? or #); a server root has none.",
            subject=subject,
            fix=f"Enter the root only, e.g. {example}.",
        )
    return text.rstrip("/")


def check_store_url(url: str | None) -> str:
    """The store's DICOMweb root URL (see `check_server_url`)."""
    return check_server_url(url, unset_fix="Enter the store's DICOMweb address.")
