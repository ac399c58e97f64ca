"""We test scripts/build-chart-tools.sh and scripts/build-keda-harness.sh: shellcheck-clean, and a rerun
of the chart-tools build with everything built copies nothing and prints the pinned versions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from chart_helpers import BUILD_CHART_TOOLS, REPO, built_tool

BUILD_KEDA_HARNESS = REPO / "scripts" / "build-keda-harness.sh"


@pytest.mark.parametrize("script", [BUILD_CHART_TOOLS, BUILD_KEDA_HARNESS], ids=lambda p: p.name)
def test_build_scripts_are_shellcheck_clean(script: Path) -> None:
    """We test: shellcheck finds nothing in the script."""
    shellcheck = Path(sys.executable).parent / "shellcheck"
    completed = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout


def test_rerun_with_the_tools_built_changes_nothing() -> None:
    """We test: with helm-unittest and ct built, a rerun touches no file and prints the pinned versions."""
    tools = [built_tool("helm-unittest"), built_tool("ct"), REPO / ".tools" / "helm-plugins" / "unittest"]
    files = [p for tool in tools for p in ([tool] if tool.is_file() else sorted(tool.iterdir()))]
    before = {p: p.stat().st_mtime_ns for p in files}
    completed = subprocess.run(
        ["bash", str(BUILD_CHART_TOOLS)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, "CI": "true"},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["helm-unittest: v1.1.2", "ct: v3.14.0"]
    assert {p: p.stat().st_mtime_ns for p in files} == before
