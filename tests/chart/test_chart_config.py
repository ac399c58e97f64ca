"""We test: the config.yaml the chart renders is what the reconciler accepts (its JSON Schema and its
own validation), points at the mounted files, and carries the values it was given."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from chart_helpers import (
    NAMESPACE,
    ORGANIZATION,
    REPO,
    config_of,
    example_files,
    helm_template,
    only,
    render_chart,
    render_example,
    with_defaults,
)
from chart_reconciler import load_config

from reconciler.config import validate_document
from reconciler.errors import ConfigError

EXAMPLES = example_files()
SCHEMA = json.loads((REPO / "reconciler" / "config.schema.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_config_validates_against_the_reconciler_schema(example: Path) -> None:
    """We test: config.yaml validates against reconciler/config.schema.json."""
    jsonschema.Draft202012Validator(SCHEMA).validate(config_of(render_example(example)))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_config_passes_the_reconciler_validation(example: Path) -> None:
    """We test: reconciler.config.validate_document accepts config.yaml (schema plus cross-field rules)."""
    validate_document(config_of(render_example(example)), source=f"chart with {example.name}")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_reconciler_loads_config_and_templates(example: Path, tmp_path: Path) -> None:
    """We test: the reconciler loads config.yaml and every job template, and its pod policy accepts them."""
    config = load_config(render_example(example), tmp_path)
    assert config.pools
    assert all(pool.templates for pool in config.pools)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_paths_point_at_the_mounted_files(example: Path) -> None:
    """We test: patFile (an Entra ID method has none) and every jobTemplate are paths the CronJob mounts."""
    objects = render_example(example)
    document = config_of(objects)
    if "method" not in document["auth"]:
        assert document["auth"] == {"patFile": "/var/run/secrets/azp/pat"}
    cron_job = only(objects, "CronJob")
    volumes = {v["name"]: v for v in cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]}
    mounted = {f"/etc/azp-agents/{item['path']}" for item in volumes["config"]["configMap"]["items"]}
    for pool in document["pools"]:
        paths = [t["jobTemplate"] for t in pool.get("templates", [])] or [pool["jobTemplate"]]
        for path in paths:
            assert path in mounted


def test_minimal_config_carries_release_and_namespaces() -> None:
    """We test: release, namespace, lease namespace and agent Secret follow the release."""
    document = config_of(render_chart(with_defaults()))
    assert document["organization"] == ORGANIZATION
    assert document["release"] == "azp-agents"
    assert document["namespace"] == NAMESPACE
    assert document["lease"] == {"enabled": True, "namespace": NAMESPACE, "durationSeconds": 60}
    assert document["agentSecret"] == {"name": "azp-agents-pat", "key": "pat"}
    assert "shard" not in document and "allowInsecureHttp" not in document


def test_release_name_with_dots_is_made_a_valid_label() -> None:
    """We test: a release name with dots becomes a label-safe release in config.yaml."""
    document = config_of(render_chart(with_defaults(), release="team.a"))
    validate_document(document, source="chart")
    assert document["release"] == "team-a"


def test_existing_secret_is_referenced() -> None:
    """We test: with auth.existingSecret, agents and the reconciler read that Secret and key."""
    values = with_defaults(auth={"pat": "", "existingSecret": "my-pat", "existingSecretKey": "token"})
    document = config_of(render_chart(values))
    assert document["agentSecret"] == {"name": "my-pat", "key": "token"}


def test_opt_ins_widen_the_pod_policy() -> None:
    """We test: the docker socket and privileged opt-ins allow what the built-in template then asks for."""
    values = with_defaults(agent={"dockerSocket": {"enabled": True, "groupId": 999}, "privileged": True})
    policy = config_of(render_chart(values))["podPolicy"]
    assert policy["allowHostPath"] is True and policy["allowPrivileged"] is True
    assert policy["allowHostNetwork"] is False and policy["allowServiceAccountToken"] is False


def test_pool_options_and_templates_pass_through() -> None:
    """We test: pool fields are copied, template names map to files, single-template pools get a path."""
    values = with_defaults(
        pools=[
            {
                "name": "Build Pool",
                "namespace": "builds",
                "maxAgents": 3,
                "minIdle": 1,
                "idleTimeout": 120,
                "templates": [
                    {"name": "small", "jobTemplate": "linux", "capabilities": {"size": "small"}},
                    {"name": "linux", "priority": 5, "placeholder": False},
                ],
            },
            {"name": "Other", "capabilities": {"gpu": ""}},
        ],
        reconciler={"shard": {"index": 1, "count": 2, "takeoverAfterSeconds": 0}},
        organization={"url": "http://ado.local/tfs/Coll", "allowInsecureHttp": True},
    )
    document = config_of(render_chart(values))
    validate_document(document, source="chart")
    first, second = document["pools"]
    assert first == {
        "name": "Build Pool",
        "namespace": "builds",
        "maxAgents": 3,
        "minIdle": 1,
        "idleTimeout": 120,
        "templates": [
            {"name": "small", "jobTemplate": "/etc/azp-agents/templates/linux.yaml", "capabilities": {"size": "small"}},
            {
                "name": "linux",
                "jobTemplate": "/etc/azp-agents/templates/linux.yaml",
                "priority": 5,
                "placeholder": False,
            },
        ],
    }
    assert second == {
        "name": "Other",
        "jobTemplate": "/etc/azp-agents/templates/linux.yaml",
        "capabilities": {"gpu": ""},
    }
    assert document["shard"] == {"index": 1, "count": 2, "takeoverAfterSeconds": 0}
    assert document["allowInsecureHttp"] is True


@pytest.mark.parametrize(
    "url",
    [
        "https://dev.azure.com/contoso",
        "https://dev.azure.com/contoso/",
        "https://contoso.visualstudio.com",
        "https://ado.contoso.local/tfs/DefaultCollection",
        "https://ado.contoso.local:8443/tfs/DefaultCollection",
        "https://dev.azure.com/contoso/web/_build",
        "https://dev.azure.com/contoso/web",
        "https://dev.azure.com",
        "https://ado.contoso.local/tfs/_apis",
        "http://ado.contoso.local/tfs/DefaultCollection",
    ],
)
def test_chart_and_reconciler_agree_on_organization_urls(url: str) -> None:
    """We test: helm accepts an organization URL exactly when the reconciler's validation does."""
    code, _, _ = helm_template(values=with_defaults(organization={"url": url}))
    try:
        validate_document({"organization": url, "pools": [{"name": "p", "jobTemplate": "t.yaml"}]}, source="test")
        reconciler_accepts = True
    except ConfigError:
        reconciler_accepts = False
    assert (code == 0) == reconciler_accepts
