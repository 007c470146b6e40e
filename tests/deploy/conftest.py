"""Fixtures for tests/deploy (helpers live in support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import OVERLAYS, render, require_xds_python


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(overlay) -> list[dict]:
    return render(overlay)


@pytest.fixture(scope="session")
def xds_python() -> Path:
    return require_xds_python()
