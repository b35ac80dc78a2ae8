"""The store URL check (CasePortalConnectorLib.settings.check_store_url): the panel, the module
self-test and scripts all use it. The URL is saved with the scene, so credentials are refused."""

from __future__ import annotations

import pytest

from CasePortalConnectorLib.errors import ConnectorError
from CasePortalConnectorLib.settings import check_store_url
from VSPCoreLib.errors import VSPError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://pacs.example.org/dicom-web", "https://pacs.example.org/dicom-web"),
        ("  https://pacs.example.org/dicom-web/  ", "https://pacs.example.org/dicom-web"),
        (
            "https://pacs.example.org:8443/orthanc/dicom-web",
            "https://pacs.example.org:8443/orthanc/dicom-web",
        ),
        ("http://localhost:8042/dicom-web", "http://localhost:8042/dicom-web"),
        ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web"),
        ("http://[::1]:8042/dicom-web", "http://[::1]:8042/dicom-web"),
    ],
)
def test_usable_urls_are_returned_cleaned(url, expected):
    assert check_store_url(url) == expected


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "No store URL"),
        ("   ", "No store URL"),
        (None, "No store URL"),
        ("ftp://pacs.example.org/", "https://"),
        ("pacs.example.org/dicom-web", "https://"),
        ("https:///dicom-web", "no server name"),
        ("https://user:secret@pacs.example.org/dicom-web", "user name or password"),
        ("https://user@pacs.example.org/dicom-web", "user name or password"),
        ("http://pacs.example.org/dicom-web", "unencrypted"),
        ("http://10.0.0.5/dicom-web", "unencrypted"),
        ("https://pacs.example.org:99999/dicom-web", "not a valid URL"),
        ("https://pacs.example.org/dicom-web?token=abc", "query"),
    ],
)
def test_unusable_urls_are_explained(url, words):
    with pytest.raises(ConnectorError) as raised:
        check_store_url(url)
    error = raised.value
    assert isinstance(error, VSPError)  # `vsp` exits 2, the panel shows the message
    assert words in error.message
    assert error.subject == "Store URL" and error.fix


def test_the_message_never_repeats_a_password():
    for url in ("https://user:secret@pacs.example.org/x", "https://user:secret@pacs.example.org:bad/x"):
        with pytest.raises(ConnectorError) as raised:
            check_store_url(url)
        assert "secret" not in str(raised.value)
