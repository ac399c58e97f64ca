"""Fixtures for the image tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_support import Sandbox, make_sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    """A fresh fake pod: agent dir with fake scripts, empty state/work dirs, a Secret dir with the PAT."""
    return make_sandbox(tmp_path)
