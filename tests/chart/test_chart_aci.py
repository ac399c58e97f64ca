"""We test the chart with backend: aci: the reconciler's CronJob and Lease without agent namespaces, caches or
agent RBAC, a config the reconciler loads, container group templates, and the errors of wrong ACI values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_helpers import config_of, find, only, render_chart, render_failure, with_defaults
from chart_reconciler import load_config

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
IDENTITY = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/p"
)
ACI = {"subscriptionId": SUBSCRIPTION, "resourceGroup": "agents", "location": "westeurope"}


def aci_values(**aci: Any) -> dict[str, Any]:
    return with_defaults(backend="aci", aci={**ACI, **aci}, caches={"tasks": {"enabled": True}})


def test_aci_release_has_no_agent_namespace_objects(tmp_path: Path) -> None:
    """We test: on ACI the chart renders the reconciler (CronJob, its Lease Role, ConfigMap, PAT Secret) but no
    Namespace, PersistentVolumeClaim or agent ServiceAccount, and the reconciler loads its config: backend aci,
    the built-in container group template, every pool's groups in aci.resourceGroup."""
    objects = render_chart(aci_values(registries=[{"server": "contoso.azurecr.io", "identity": IDENTITY}]))
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"Namespace", "PersistentVolumeClaim"}
    assert [o["metadata"]["name"] for o in find(objects, "ServiceAccount")] == ["azp-agents-reconciler"]
    assert [o["metadata"]["name"] for o in find(objects, "Role")] == ["azp-agents-reconciler-lease"]
    only(objects, "CronJob")
    config = load_config(objects, tmp_path)
    assert config.backend == "aci" and config.aci is not None
    assert config.aci.registries[0].identity == IDENTITY
    assert {pool.namespace for pool in config.pools} == {"agents"}


def test_service_principal_secret_is_mounted_as_a_file() -> None:
    """We test: credential servicePrincipal mounts aci.clientSecret.existingSecret into the reconciler and the
    config names that file, never the secret itself."""
    values = aci_values(
        credential="servicePrincipal", tenantId="t", clientId="c", clientSecret={"existingSecret": "sp"}
    )
    objects = render_chart(values)
    config = config_of(objects)
    assert config["aci"]["clientSecretFile"] == "/var/run/secrets/azure/client-secret"
    pod = only(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "azure-client-secret"]
    assert volume["secret"]["secretName"] == "sp"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["azure-client-secret"] == "/var/run/secrets/azure"


def test_user_container_group_template_is_passed_through(tmp_path: Path) -> None:
    """We test: a jobTemplates entry on ACI is a container group template, kept as given for the reconciler."""
    group = {"properties": {"osType": "Windows", "containers": [{"name": "agent", "properties": {"image": "w:1"}}]}}
    values = aci_values() | {"jobTemplates": {"linux": group}}
    config = load_config(render_chart(values), tmp_path)
    assert config.pools[0].templates[0].job_template.endswith("linux.yaml")


@pytest.mark.parametrize(
    ("aci", "extra", "expected"),
    [
        ({"resourceGroup": ""}, {}, "aci.resourceGroup is required with backend: aci"),
        ({"credential": "servicePrincipal"}, {}, "aci.credential=servicePrincipal needs aci.tenantId"),
        ({}, {"pools": [{"name": "p", "namespace": "x", "maxAgents": 1}]}, "with backend: aci its container groups"),
        (
            {},
            {"jobTemplates": {"linux": {"apiVersion": "batch/v1", "kind": "Job", "spec": {}}}},
            "jobTemplates.linux: with backend: aci a template is a container group",
        ),
        ({"credential": "kubeconfig"}, {}, "at '/aci/credential': value must be one of"),
        ({"subscriptionId": "contoso"}, {}, 'aci.subscriptionId: "contoso" is not a subscription id'),
        ({"subnetIds": ["agents-subnet"]}, {}, '"agents-subnet" is not an Azure resource id'),
    ],
)
def test_wrong_aci_values_are_refused(aci: dict[str, Any], extra: dict[str, Any], expected: str) -> None:
    """We test: each wrong ACI value fails the install with a message naming the key."""
    assert expected in render_failure(aci_values(**aci) | extra)


def test_named_instances_reach_the_config_and_need_aci(tmp_path: Path) -> None:
    """We test: pools[].templates[].instances reaches the reconciler's config on ACI; with backend kubernetes
    the install fails naming the template, the pool and the backend it needs."""
    pools = [{"name": "p", "maxAgents": 4, "templates": [{"name": "linux", "instances": 2}]}]
    config = load_config(render_chart(aci_values() | {"pools": pools}), tmp_path)
    assert config.pools[0].templates[0].instances == 2
    message = render_failure(with_defaults(pools=pools))
    assert 'template "linux" of pool "p" sets instances, which needs backend: aci' in message


def test_registry_password_is_mounted_from_its_secret_never_in_the_config(tmp_path: Path) -> None:
    """We test: a registry with a username and passwordSecret gets its Secret's key mounted into the reconciler
    (a projected volume, file per registry index) and the config names that file; the ConfigMap holds neither
    the Secret's contents nor a password key; the managed-identity registry beside it is passed as it is."""
    registries = [
        {"server": "contoso.azurecr.io", "identity": IDENTITY},
        {"server": "registry.example.com", "username": "bot", "passwordSecret": {"name": "registry-login"}},
    ]
    objects = render_chart(aci_values(registries=registries))
    config = load_config(objects, tmp_path)
    assert config.aci is not None
    assert [(r.server, r.identity, r.username, r.password_file) for r in config.aci.registries] == [
        ("contoso.azurecr.io", IDENTITY, None, None),
        ("registry.example.com", None, "bot", "/var/run/secrets/azure-registries/1"),
    ]
    pod = only(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "registry-passwords"]
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "registry-login", "items": [{"key": "password", "path": "1"}]}}
    ]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["registry-passwords"] == "/var/run/secrets/azure-registries"
    configmaps = str([o.get("data") for o in find(objects, "ConfigMap")])
    assert "registry-login" not in configmaps and "'password'" not in configmaps


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ({"server": "r.io", "username": "bot"}, 'aci.registries[0]: username "bot" needs passwordSecret.name'),
        ({"server": "r.io", "passwordSecret": {"name": "s"}}, "aci.registries[0]: passwordSecret needs the registry's"),
        ({"server": "r.io"}, 'aci.registries[0]: registry "r.io" needs identity'),
    ],
)
def test_incomplete_registry_values_are_refused(registry: dict[str, Any], expected: str) -> None:
    """We test: a registry with a username but no password Secret, a password Secret but no username, or
    neither an identity nor a username fails the install naming aci.registries[index]."""
    assert expected in render_failure(aci_values(registries=[registry]))


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (
            {"templates": [{"name": "linux", "instances": 11}]},
            "pools[0].templates[0].instances is 11 but pools[0].maxAgents is 10 (unset: the default): raise "
            "pools[0].maxAgents to at least 11, or lower instances",
        ),
        (
            {
                "maxAgents": 6,
                "templates": [{"name": "a", "instances": 4}, {"name": "b"}, {"name": "c", "instances": 3}],
            },
            "pools[0].templates[0].instances (4) + pools[0].templates[2].instances (3) is 7 but pools[0].maxAgents is "
            "6: raise pools[0].maxAgents to at least 7, or lower instances",
        ),
        (
            {"maxAgents": 6, "templates": [{"name": "a", "instances": 4, "maxAgents": 3}]},
            "pools[0].templates[0].instances is 4 but pools[0].templates[0].maxAgents is 3: lower instances to at "
            "most 3, or raise maxAgents",
        ),
    ],
)
def test_named_instances_beyond_max_agents_fail_the_install(pool: dict[str, Any], expected: str, helm: str) -> None:
    """We test: `helm template` (helm 4 and 3) refuses instances that do not fit in their pool's maxAgents (set or
    the default 10), or in their template's own maxAgents, naming the instances keys, the maxAgents key and the fix."""
    assert expected in render_failure(aci_values() | {"pools": [{"name": "p", **pool}]}, helm=helm)


def test_named_instances_that_fit_max_agents_render() -> None:
    """We test: instances adding up to exactly the pool's maxAgents install."""
    templates = [{"name": name, "jobTemplate": "linux", "instances": n} for name, n in (("a", 4), ("b", 3))]
    pools = [{"name": "p", "maxAgents": 7, "templates": templates}]
    only(render_chart(aci_values() | {"pools": pools}), "CronJob")
