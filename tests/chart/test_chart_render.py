"""We test: every example values file renders and lints with helm 4 and helm 3, identically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chart_helpers import (
    REPO,
    base_values_for,
    example_files,
    helm_lint,
    helm_template,
    render_example,
)

EXAMPLES = example_files()


def test_examples_exist() -> None:
    """We test: the example values files the README promises are all there."""
    names = {p.name for p in EXAMPLES}
    assert names >= {
        "minimal.yaml",
        "multi-pool.yaml",
        "windows.yaml",
        "caches.yaml",
        "existing-secret.yaml",
        "orchestrator-compat.yaml",
        "container-builds.yaml",
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_has_a_header_comment(example: Path) -> None:
    """We test: each example starts with a comment saying what it demonstrates."""
    first = example.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and len(first) > 20


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_helm3_and_helm4_render_the_same_objects(example: Path) -> None:
    """We test: helm 3 and helm 4 render an example into the same objects."""
    helm4 = render_example(example, helm="helm")
    helm3 = render_example(example, helm="helm3")
    assert helm4, "nothing rendered"
    assert helm4 == helm3


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_lint_strict_passes(example: Path, helm: str) -> None:
    """We test: `helm lint --strict` passes for the example, on this helm version."""
    code, output = helm_lint(base_values_for(example), values_files=[example], helm=helm)
    assert code == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_rendered_output_passes_yamllint(example: Path, tmp_path: Path) -> None:
    """We test: what helm renders is clean YAML by the repository's yamllint rules."""
    code, stdout, stderr = helm_template(values=base_values_for(example), values_files=[example])
    assert code == 0, stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(stdout, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", str(REPO / ".yamllint"), str(rendered)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_values_files_and_chart_metadata_pass_yamllint() -> None:
    """We test: chart/values.yaml, Chart.yaml, the examples, ct.yaml and the workflows pass yamllint (as ct lint)."""
    paths = ["chart/values.yaml", "chart/Chart.yaml", "values", "ct.yaml", ".yamllint", ".github"]
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", ".yamllint", *paths], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout


def test_default_values_alone_ask_for_the_organization(helm: str) -> None:
    """We test: with no values at all, helm names the first thing to set (organization.url)."""
    code, _, stderr = helm_template(helm=helm)
    assert code != 0
    assert "organization.url" in stderr
