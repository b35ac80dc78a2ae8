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
