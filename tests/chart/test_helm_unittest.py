"""We test the chart with helm-unittest, the chart unit-test tool of the field: the suites under
chart/tests/*_test.yaml (the chart's own rules, beside the pytest chart suite) all run and pass as
the helm plugin `helm unittest`, which helm 4 and helm 3 both load from the project's plugin
directory; and the tool does fail an expectation the chart does not meet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, REPO, TOOLS_BIN, built_tool, helm_path

PLUGINS = REPO / ".tools" / "helm-plugins"
_SUMMARY = re.compile(r"^Test Suites:\s+(\d+) passed, (\d+) total$\n^Tests:\s+(\d+) passed, (\d+) total$", re.M)


def helm_env() -> dict[str, str]:
    """The environment of a helm that finds the project's plugins (helm-unittest built first)."""
    built_tool("helm-unittest")
    return {**os.environ, "HELM_PLUGINS": str(PLUGINS), "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ['PATH']}"}


def unittest(chart: Path) -> subprocess.CompletedProcess[str]:
    """`helm unittest CHART` with helm 4, as a chart author runs it."""
    command = [str(helm_path("helm")), "unittest", str(chart)]
    return subprocess.run(command, capture_output=True, text=True, env=helm_env(), timeout=300, cwd=REPO)


def test_chart_unit_tests_pass() -> None:
    """We test: every suite and every test in it runs (counted from the suite files) and passes."""
    suites = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(CHART.glob("tests/*_test.yaml"))]
    tests = sum(len(suite["tests"]) for suite in suites)
    completed = unittest(CHART)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    summary = _SUMMARY.search(completed.stdout)
    assert summary is not None, output
    assert tuple(map(int, summary.groups())) == (len(suites), len(suites), tests, tests), output


@pytest.mark.parametrize("helm", ["helm", "helm3"])
def test_both_helms_load_the_plugin(helm: str) -> None:
    """We test: helm 4 and helm 3 list the plugin at the pinned version."""
    completed = subprocess.run(
        [str(helm_path(helm)), "plugin", "list"], capture_output=True, text=True, env=helm_env(), timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert re.search(r"^unittest\s+1\.1\.2\s", completed.stdout, re.M), completed.stdout


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """We test: a suite whose expectation the chart does not meet makes helm unittest exit non-zero."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("tests"))
    (chart / "tests").mkdir()
    (chart / "tests" / "wrong_test.yaml").write_text(
        "suite: wrong\n"
        "templates: [reconciler-cronjob.yaml]\n"
        "set: {organization.url: 'https://dev.azure.com/contoso', auth.pat: p}\n"
        "tests:\n"
        "  - it: expects a concurrency policy the chart does not set\n"
        "    asserts:\n"
        "      - equal: {path: spec.concurrencyPolicy, value: Allow}\n",
        encoding="utf-8",
    )
    completed = unittest(chart)
    assert completed.returncode != 0, completed.stdout
    assert "expects a concurrency policy the chart does not set" in completed.stdout


def test_the_package_leaves_the_suites_out_but_keeps_the_helm_test(tmp_path: Path) -> None:
    """We test: `helm package` drops chart/tests/ (.helmignore) but keeps templates/tests/check-pod.yaml."""
    completed = subprocess.run(
        [str(helm_path("helm")), "package", str(CHART), "-d", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    (archive,) = tmp_path.glob("*.tgz")
    with tarfile.open(archive) as package:
        names = package.getnames()
    assert "azp-agents/templates/tests/check-pod.yaml" in names
    assert not [name for name in names if name.startswith("azp-agents/tests/")]
