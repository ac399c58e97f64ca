"""We test the chart's Azure DevOps Server, proxy and private CA values: what reaches config.yaml, the
reconciler's pod and the agent containers."""

from __future__ import annotations

from chart_helpers import config_of, render_chart, render_failure, with_defaults

from reconciler.config import validate_document


def test_api_version_defaults_to_auto_and_a_pinned_one_reaches_the_config() -> None:
    """We test: organization.apiVersion is auto by default, 6.0 reaches azureDevOps.apiVersion for a Server 2020
    collection URL and the reconciler accepts the result; a version the client does not speak is refused."""
    assert config_of(render_chart(with_defaults()))["azureDevOps"]["apiVersion"] == "auto"
    server = with_defaults(organization={"url": "https://tfs.example.com/tfs/DefaultCollection", "apiVersion": "6.0"})
    document = config_of(render_chart(server))
    assert document["azureDevOps"]["apiVersion"] == "6.0"
    validate_document(document, source="chart")
    error = render_failure(with_defaults(organization={"apiVersion": "5.1"}))
    assert "apiVersion" in error
