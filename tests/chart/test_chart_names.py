"""We test: object names come from one helper and stay within Kubernetes limits for the longest release
name helm allows; nameOverride/fullnameOverride apply everywhere; the chart refuses clusters older
than its kubeVersion."""

from __future__ import annotations

import re

import pytest
from chart_helpers import CHART, config_of, helm_lint, helm_template, render_chart, with_defaults

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LONGEST_RELEASE = "r" * 53


def test_names_fit_for_the_longest_release_name() -> None:
    """We test: with a 53-character release every name is a DNS label and the CronJob name fits 52."""
    objects = render_chart(with_defaults(pools=[{"name": "a", "namespace": "team-a"}]), release=LONGEST_RELEASE)
    for obj in objects:
        name = obj["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        if obj["kind"] == "CronJob":
            assert len(name) <= 52, name
    assert config_of(objects)["release"] == LONGEST_RELEASE


@pytest.mark.parametrize(
    ("overrides", "prefix"),
    [({"nameOverride": "runners"}, "azp-agents-runners"), ({"fullnameOverride": "ci"}, "ci")],
)
def test_name_overrides_apply_to_every_object(overrides: dict[str, str], prefix: str) -> None:
    """We test: every object name starts with the overridden prefix."""
    for obj in render_chart(with_defaults(**overrides)):
        assert obj["metadata"]["name"].startswith(f"{prefix}-"), obj["metadata"]["name"]


def test_release_name_containing_the_chart_name_is_not_repeated() -> None:
    """We test: release "azp-agents" gives "azp-agents-reconciler", not "azp-agents-azp-agents-reconciler"."""
    names = {o["metadata"]["name"] for o in render_chart(with_defaults())}
    assert "azp-agents-reconciler" in names
    assert not [n for n in names if "azp-agents-azp-agents" in n]


def test_old_clusters_are_refused(helm: str) -> None:
    """We test: kubeVersion >=1.27 makes helm refuse an older cluster version."""
    code, _, stderr = helm_template(values=with_defaults(), helm=helm, extra_args=["--kube-version", "1.26.0"])
    assert code != 0
    assert "1.27" in stderr or "kubeVersion" in stderr


def test_chart_testing_values_render_and_lint(helm: str) -> None:
    """We test: the values chart-testing installs with (chart/ci/) render and lint cleanly."""
    ci_values = sorted((CHART / "ci").glob("*-values.yaml"))
    assert ci_values
    for path in ci_values:
        code, _, stderr = helm_template(values_files=[path], helm=helm)
        assert code == 0, stderr
        code, output = helm_lint(None, values_files=[path], helm=helm)
        assert code == 0, output
