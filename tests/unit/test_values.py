"""We test: --values says clearly when helm or the chart is missing, and the chart's in-pod template paths
become files of a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler import values
from reconciler.errors import ConfigError


def test_missing_helm_is_a_clear_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """We test: with no helm on PATH nor in the clone's .tools/bin, the error says to install helm or use
    --config."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(values, "CLONE", tmp_path)
    with pytest.raises(ConfigError, match=r"helm, which is not on PATH: install helm 3 or 4 .* --config"):
        values.find_helm()


def test_helm_in_the_clones_tools_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """We test: a clone's .tools/bin/helm (what `make tools` fetches) serves when PATH has none."""
    helm = tmp_path / ".tools" / "bin" / "helm"
    helm.parent.mkdir(parents=True)
    helm.write_text("#!/bin/sh\n")
    helm.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(values, "CLONE", tmp_path)
    assert values.find_helm() == str(helm)


def test_no_chart_beside_the_package_says_to_pass_chart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """We test: an installed package without a clone around it asks for --chart."""
    monkeypatch.setattr(values, "CLONE", tmp_path)
    with pytest.raises(ConfigError, match=r"no chart beside the package .*: pass --chart PATH"):
        values.find_chart(None)


def test_templates_are_written_and_the_config_points_at_them(tmp_path: Path) -> None:
    """We test: every jobTemplate of the rendered config (single and per-template) is replaced by a file
    holding the ConfigMap's text, and a template the ConfigMap lacks is named."""
    document: dict[str, Any] = {
        "pools": [
            {"name": "a", "jobTemplate": "/etc/azp-agents/templates/built-in-linux.yaml"},
            {"name": "b", "templates": [{"name": "java", "jobTemplate": "/etc/azp-agents/templates/java.yaml"}]},
        ]
    }
    data = {"built-in-linux.yaml": "kind: Job\n", "java.yaml": "kind: Job # java\n"}
    values._local_templates(document, data, tmp_path)
    single = Path(document["pools"][0]["jobTemplate"])
    nested = Path(document["pools"][1]["templates"][0]["jobTemplate"])
    assert single.read_text() == "kind: Job\n" and nested.read_text() == "kind: Job # java\n"
    assert single.parent == nested.parent == tmp_path / "templates"
    (tmp_path / "other").mkdir()
    missing: dict[str, Any] = {"pools": [{"name": "c", "jobTemplate": "/etc/azp-agents/templates/gone.yaml"}]}
    with pytest.raises(ConfigError, match=r"has no gone.yaml for pool 'c'"):
        values._local_templates(missing, data, tmp_path / "other")
