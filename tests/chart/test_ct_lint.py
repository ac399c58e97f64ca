"""We test the chart with chart-testing's `ct lint`, configured by the repository's ct.yaml: yamale
on Chart.yaml (tests/chart/chart_schema.yaml), yamllint (.yamllint) and `helm lint` with each
chart/ci values file. And that it does fail a chart either check refuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chart_helpers import CHART, REPO, TOOLS_BIN, built_tool, helm_path


def ct_lint(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`ct lint --config ct.yaml` with helm 4, yamllint and yamale (from the venv) on PATH."""
    ct = built_tool("ct")
    helm_path("helm")
    path = os.pathsep.join([str(TOOLS_BIN), str(Path(sys.executable).parent), os.environ["PATH"]])
    command = [str(ct), "lint", "--config", str(REPO / "ct.yaml"), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PATH": path}, timeout=300, cwd=cwd
    )


def test_ct_lint_passes() -> None:
    """We test: ct lint over the chart, as ct.yaml configures it, succeeds."""
    completed = ct_lint()
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert 'azp-agents => (version: "0.1.0", path: "chart")' in output, output
    assert "All charts linted successfully" in output, output


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("Chart.yaml", "description: >-", "summary: >-", "description: Required field missing"),
        ("values.yaml", 'nameOverride: ""\n', 'nameOverride: ""  \n', "trailing spaces  (trailing-spaces)"),
    ],
    ids=["yamale-chart-yaml", "yamllint-values"],
)
def test_ct_lint_fails_a_broken_chart(tmp_path: Path, file: str, old: str, new: str, expected: str) -> None:
    """We test: ct lint fails a Chart.yaml the schema refuses and a values.yaml yamllint refuses, naming why."""
    repo = tmp_path / "repo"
    shutil.copytree(CHART, repo / "chart", ignore=shutil.ignore_patterns("tests"))
    broken = repo / "chart" / file
    text = broken.read_text(encoding="utf-8")
    assert old in text
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    for name in (".yamllint", "tests/chart/chart_schema.yaml"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, repo / name)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    completed = ct_lint(cwd=repo)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output
    assert expected in output, output
