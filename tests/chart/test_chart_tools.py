"""We test scripts/fetch-tools.sh: shellcheck-clean, and a rerun with the tools present is fast,
quiet on stdin, and prints the pinned versions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from chart_helpers import FETCH_TOOLS, REPO, TOOLS_BIN


def test_fetch_tools_is_shellcheck_clean() -> None:
    """We test: shellcheck finds nothing in the script."""
    shellcheck = Path(sys.executable).parent / "shellcheck"
    completed = subprocess.run([str(shellcheck), str(FETCH_TOOLS)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout


def test_rerun_is_idempotent_and_fast() -> None:
    """We test: with everything fetched, a CI rerun without stdin only prints versions, in well under a second."""
    before = {p.name: p.stat().st_mtime_ns for p in TOOLS_BIN.iterdir()}
    started = time.monotonic()
    completed = subprocess.run(
        ["bash", str(FETCH_TOOLS)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, "CI": "true"},
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr
    assert "v4." in completed.stdout and "v3." in completed.stdout and "Client Version" in completed.stdout
    assert elapsed < 3
    assert {p.name: p.stat().st_mtime_ns for p in TOOLS_BIN.iterdir()} == before
