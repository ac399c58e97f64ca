"""Fixtures of the chart tests: the pinned helm binaries, fetched once if missing."""

from __future__ import annotations

import pytest
from chart_helpers import HELMS, helm_path


@pytest.fixture(scope="session", autouse=True)
def chart_tools() -> None:
    """helm 4 and helm 3 exist (scripts/fetch-tools.sh runs if they do not)."""
    for helm in HELMS:
        helm_path(helm)


@pytest.fixture(params=HELMS)
def helm(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once with helm 4 (`helm`) and once with helm 3 (`helm3`)."""
    name: str = request.param
    return name
