"""The connector's settings that are saved with a scene, and the checks they must pass.

The store URL is saved in the scene's parameter node, so it must never carry credentials, and
patient data must not travel unencrypted to another computer.
"""

from __future__ import annotations

import urllib.parse

from .errors import ConnectorError

#: Hosts for which plain http is accepted (a store on this computer, e.g. a test Orthanc).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def check_store_url(url: str) -> str:
    """The store's DICOMweb root URL, stripped of surrounding spaces and of a trailing slash;
    raises ConnectorError saying what is wrong and how to fix it when it cannot be used."""
    text = (url or "").strip()
    subject = "Store URL"
    if not text:
        raise ConnectorError(
            "No store URL is set.", subject=subject, fix="Enter the store's DICOMweb address."
        )
    try:
        parts = urllib.parse.urlsplit(text)
        hostname = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number 0-65535)
    except ValueError as error:
        raise ConnectorError(
            f"This is not a valid URL ({error}).",
            subject=subject,
            fix="Enter an address like https://pacs.example.org/dicom-web.",
        ) from None
    if parts.scheme not in ("https", "http"):
        raise ConnectorError(
            "The store URL must start with https:// (or http:// for a store on this computer).",
            subject=subject,
            fix="Enter an address like https://pacs.example.org/dicom-web.",
        )
    if not hostname:
        raise ConnectorError(
            "The store URL has no server name.",
            subject=subject,
            fix="Enter an address like https://pacs.example.org/dicom-web.",
        )
    if parts.username is not None or parts.password is not None:
        # The message never repeats the URL: it holds the password.
        raise ConnectorError(
            "The store URL contains a user name or password, and it is saved with the scene.",
            subject=subject,
            fix="Remove the user name and password from the URL.",
        )
    if parts.scheme == "http" and hostname not in LOCAL_HOSTS:
        raise ConnectorError(
            "http sends patient data unencrypted to another computer.",
            subject=subject,
            fix="Use https:// for a store on another computer.",
        )
    if parts.query or parts.fragment:
        raise ConnectorError(
            "The store URL has a query or fragment (after ? or #); a DICOMweb root has none.",
            subject=subject,
            fix="Enter the DICOMweb root only, e.g. https://pacs.example.org/dicom-web.",
        )
    return text.rstrip("/")
