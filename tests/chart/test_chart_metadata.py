"""We test Chart.yaml: the shape chart-testing checks (yamale), helm 3/4 compatibility (apiVersion v2),
the supported Kubernetes range, and Artifact Hub annotations that parse."""

from __future__ import annotations

from pathlib import Path

import yamale  # type: ignore[import-untyped]  # yamale ships no type hints
import yaml
from chart_helpers import CHART

CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))


def test_chart_yaml_has_the_shape_ct_lint_checks() -> None:
    """We test: Chart.yaml validates with yamale against the chart-testing shape."""
    schema = yamale.make_schema(str(Path(__file__).with_name("chart_schema.yaml")))
    yamale.validate(schema, yamale.make_data(str(CHART / "Chart.yaml")))


def test_versions() -> None:
    """We test: apiVersion v2 (helm 3 and 4), appVersion 0.1.0, Kubernetes 1.27 or newer."""
    assert CHART_YAML["apiVersion"] == "v2"
    assert CHART_YAML["appVersion"] == "0.1.0"
    assert CHART_YAML["kubeVersion"] == ">=1.27.0-0"


def test_artifact_hub_annotations_parse() -> None:
    """We test: the Artifact Hub list annotations are YAML lists and name the project's images."""
    annotations = CHART_YAML["annotations"]
    assert annotations["artifacthub.io/license"] == "MIT"
    images = yaml.safe_load(annotations["artifacthub.io/images"])
    assert {i["image"].split(":")[0] for i in images} == {
        "ghcr.io/azp-agents/reconciler",
        "ghcr.io/azp-agents/agent-linux",
        "ghcr.io/azp-agents/agent-windows",
    }
    for key in ("artifacthub.io/links", "artifacthub.io/changes"):
        assert isinstance(yaml.safe_load(annotations[key]), list)
