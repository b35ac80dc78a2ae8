"""Shared pytest fixtures: a fresh headless Slicer application per test, shared test data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def app():
    """A new headless application with its own MRML scene."""
    from VSPCoreLib.app import VSPApplication

    return VSPApplication.create_headless()


@pytest.fixture(scope="session")
def dcmqi_dir() -> Path:
    path = SHARED_DATA / "dcmqi"
    if not path.is_dir():
        pytest.fail(f"shared test data missing: {path} (the checkout needs ../shared beside it)")
    return path


# --- A real Orthanc for the store tests (Testing/orthanc_server.py) -------------------------


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """One Orthanc (HTTP Basic, DICOMweb plugin, SlicerVSP metadata) shared by the session.

    Tests that upload must use their own patients/studies (fresh UIDs) or clear it first; tests
    that stop, kill or reconfigure a server use ``orthanc_factory`` instead."""
    from orthanc_server import OrthancServer, orthanc_available

    missing = orthanc_available()
    if missing:
        pytest.fail(f"Orthanc is needed for the store tests: {missing} (Testing/setup.sh installs it)")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def orthanc_factory(tmp_path):
    """Makes private Orthanc servers for one test (for fault tests: kill, restart, TLS).

    ``orthanc_factory(tls=True, users={...}, start=True)``; all are killed when the test ends."""
    from orthanc_server import OrthancServer, orthanc_available

    missing = orthanc_available()
    if missing:
        pytest.fail(f"Orthanc is needed for the store tests: {missing} (Testing/setup.sh installs it)")
    servers = []

    def make(*, start: bool = True, **options):
        server = OrthancServer(tmp_path / f"orthanc{len(servers)}", **options)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.close()
