"""We test: every object of every example, and every agent Job the reconciler would build from the
chart's job templates, is valid Kubernetes (strict: unknown fields fail) for the oldest supported
version (kubeVersion >=1.27) and the newest one kubernetes-validate knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, example_files, render_example
from chart_reconciler import agent_jobs
from kubernetes_validate import utils as kv_utils

# agent.buildkit needs Kubernetes 1.30 (native sidecars, securityContext.appArmorProfile): the chart refuses
# older clusters (test_chart_bad_values), so its example is validated from there.
BUILDKIT_FLOOR = (1, 30)


def _versions(floor: tuple[int, ...] | None = None) -> list[str]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    floor = floor or tuple(int(p) for p in chart["kubeVersion"].removeprefix(">=").split("-")[0].split(".")[:2])
    available = sorted({v for v in kv_utils.all_versions()}, key=lambda v: tuple(int(p) for p in v.split(".")))
    supported = [v for v in available if tuple(int(p) for p in v.split(".")[:2]) >= floor]
    return sorted({supported[0], kubernetes_validate.latest_version()})


VERSIONS = _versions()


def _cases() -> list[tuple[Path, str]]:
    """(example, version) pairs: every example at the chart's floor and the newest version; one that
    enables agent.buildkit at its own floor instead of the chart's."""
    cases = []
    for example in example_files():
        document = yaml.safe_load(example.read_text(encoding="utf-8")) or {}
        buildkit = ((document.get("agent") or {}).get("buildkit") or {}).get("enabled")
        cases += [(example, version) for version in (_versions(BUILDKIT_FLOOR) if buildkit else VERSIONS)]
    return cases


def _validate(obj: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(
            f"{obj['kind']}/{obj['metadata'].get('name')} invalid for {version}: {error.message} at {error.path}"
        )


@pytest.mark.parametrize(("example", "version"), _cases(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_rendered_objects_are_valid(example: Path, version: str) -> None:
    """We test: each rendered object validates strictly against this Kubernetes version's schema."""
    for obj in render_example(example):
        _validate(obj, version)


def test_validated_versions_span_the_supported_range() -> None:
    """We test: we validate against at least the oldest supported and the newest known version."""
    assert VERSIONS[0].startswith("1.27")
    assert VERSIONS[-1] == kubernetes_validate.latest_version()


@pytest.mark.parametrize(("example", "version"), _cases(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_agent_jobs_built_from_the_templates_are_valid(example: Path, version: str, tmp_path: Path) -> None:
    """We test: the Job the reconciler builds from each job template in the ConfigMap is valid."""
    for job in agent_jobs(render_example(example), tmp_path):
        _validate(job, version)
