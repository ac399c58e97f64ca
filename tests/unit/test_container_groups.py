"""ACI container groups as data: template checks, the rendered group, a listed group read back, and the
configuration that selects the ACI backend (file keys and ado-agent-orchestrator's HOST_TYPE/AZ_*)."""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import backend, container_groups, names
from reconciler import config as config_module
from reconciler.config import Credentials
from reconciler.errors import ConfigError
from reconciler.model import AciConfig, Config, PoolConfig, RegistryCredential, TemplateConfig, frozen_map

IMAGE = "contoso.azurecr.io/agent-linux:4.269.0"
SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
IDENTITY = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/p"
)
SUBNET = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/agents"
)
NOW = "2026-12-01T10:00:00.000000Z"
NOW_TIME = datetime(2026, 12, 1, 10, tzinfo=UTC)

OWNER = names.Owner(prefix="azp", release="rel")


def template_file(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "group.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def load_error(tmp_path: Path, document: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        container_groups.load_template(template_file(tmp_path, document), key="pools[0].jobTemplate", source="cfg")
    return str(caught.value)


def aci_config(**aci: Any) -> Config:
    settings = AciConfig(subscription_id=SUBSCRIPTION, resource_group="agents", location="westeurope", **aci)
    pool = PoolConfig(name="linux", namespace="agents", templates=(TemplateConfig("default", "group.yaml"),))
    return Config(organization="https://dev.azure.com/contoso", pools=(pool,), backend="aci", aci=settings)


def rendered(config: Config, group: dict[str, Any], *, request_id: int | None = 7) -> dict[str, Any]:
    pool = config.pools[0]
    template = TemplateConfig("default", "group.yaml", capabilities=frozen_map({"docker": ""}))
    tags = container_groups.tags_for(config=config, pool=pool, template=template, request_id=request_id, now=NOW_TIME)
    return container_groups.render_group(
        config=config,
        pool=pool,
        template=template,
        group_template=group,
        name="azp-linux-7",
        tags=tags,
        token="the-pat",
        registry_password=lambda registry: f"password-from-{registry.password_file}",
    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["properties"].get("environmentVariables") or []}


def test_arm_template_with_one_group_loads_as_its_group(tmp_path: Path) -> None:
    """We test: an ARM template holding one containerGroups resource loads as that group's body."""
    group = container_groups.image_template(image=IMAGE)
    arm = {"resources": [{"type": "Microsoft.ContainerInstance/containerGroups", "name": "x", **group}]}
    loaded = container_groups.load_template(template_file(tmp_path, arm), key="k", source="cfg")
    assert loaded == group


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"kind": "Job"}, "is a Kubernetes Job, not a container group (backend: aci)"),
        ({"properties": {"containers": []}}, "properties.containers is missing"),
        (
            {"properties": {"restartPolicy": "Always", "containers": [{"name": "a", "properties": {"image": "i"}}]}},
            "properties.restartPolicy is 'Always'",
        ),
        ({"properties": {"containers": [{"name": "a", "properties": {}}]}}, "container 0 needs a name"),
        (
            {
                "properties": {
                    "containers": [
                        {"name": "a", "properties": {"image": "i"}},
                        {"name": "b", "properties": {"image": "i"}},
                    ]
                }
            },
            "name the one that runs the agent 'agent'",
        ),
        (
            {
                "properties": {
                    "containers": [
                        {
                            "name": "agent",
                            "properties": {
                                "image": "i",
                                "environmentVariables": [{"name": "AZP_TOKEN", "secureValue": "x"}],
                            },
                        }
                    ]
                }
            },
            "sets AZP_TOKEN: remove it",
        ),
        ({"resources": []}, "exactly one resource of type Microsoft.ContainerInstance/containerGroups"),
    ],
)
def test_bad_templates_are_refused_with_the_key(tmp_path: Path, document: Any, expected: str) -> None:
    """We test: each template mistake is one ConfigError naming the key and the fix."""
    message = load_error(tmp_path, document)
    assert "cfg: pools[0].jobTemplate" in message and expected in message


def test_linux_group_gives_the_pat_to_the_register_container_only() -> None:
    """We test: the rendered Linux group restarts Never, carries our tags, the owned AZP_* variables and the
    declared capabilities in the agent and register containers, and the PAT only as a secret volume mounted
    in the register init container (base64, as ACI wants secret volume values)."""
    group = rendered(aci_config(), container_groups.image_template(image=IMAGE))
    properties = group["properties"]
    assert properties["restartPolicy"] == "Never" and group["location"] == "westeurope"
    (register,), (agent,) = properties["initContainers"], properties["containers"]
    for container in (register, agent):
        env = env_of(container)
        assert env["AZP_AGENT_NAME"]["value"] == "azp-linux-7" and env["AZP_POOL"]["value"] == "linux"
        assert env["docker"]["value"] == ""
    assert "the-pat" not in json.dumps(agent) and "AZP_TOKEN_FILE" not in env_of(agent)
    assert env_of(register)["AZP_TOKEN_FILE"]["value"] == "/var/run/secrets/azp/token"
    (secret,) = [v for v in properties["volumes"] if "secret" in v]
    assert base64.b64decode(secret["secret"]["token"]).decode() == "the-pat"
    assert group["tags"][container_groups.TAG_REQUEST_ID] == "7"
    assert group["tags"][container_groups.TAG_MANAGED_BY] == "azp-agents"


def test_windows_group_gets_the_pat_as_a_secure_value() -> None:
    """We test: a Windows group (one container) gets the PAT as the secure value AZP_TOKEN, no volume."""
    group = rendered(aci_config(), container_groups.image_template(image="w:1", windows=True))
    (agent,) = group["properties"]["containers"]
    assert env_of(agent)["AZP_TOKEN"] == {"name": "AZP_TOKEN", "secureValue": "the-pat"}
    assert "volumes" not in group["properties"]


def test_identity_registries_and_subnets_apply_to_every_group() -> None:
    """We test: aci.identity, aci.registries (identity or user name with a password file) and aci.subnetIds
    are added to every group; a standby group is tagged standby, with no request id. A registry's identity
    that is not aci.identity is assigned to the group too (ACI pulls only with an identity the group has)."""
    registries = (
        RegistryCredential(server="contoso.azurecr.io", identity=IDENTITY),
        RegistryCredential(server="other.io", username="bot", password_file="/secrets/registry"),
    )
    config = aci_config(identity=IDENTITY, registries=registries, subnet_ids=(SUBNET,))
    group = rendered(config, container_groups.image_template(image=IMAGE), request_id=None)
    assert group["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}
    puller = IDENTITY.replace("/p", "/puller")
    other = aci_config(registries=(RegistryCredential(server="contoso.azurecr.io", identity=puller),))
    assert rendered(other, container_groups.image_template(image=IMAGE))["identity"]["userAssignedIdentities"] == {
        puller: {}
    }
    assert group["properties"]["imageRegistryCredentials"] == [
        {"server": "contoso.azurecr.io", "identity": IDENTITY},
        {"server": "other.io", "username": "bot", "password": "password-from-/secrets/registry"},
    ]
    assert group["properties"]["subnetIds"] == [{"id": SUBNET}]
    assert group["tags"][container_groups.TAG_STANDBY] == "true"
    assert container_groups.TAG_REQUEST_ID not in group["tags"]


def listed(
    *,
    provisioning: str,
    states: dict[str, dict[str, Any]],
    tags: dict[str, str] | None = None,
    restart_policy: str = "Never",
) -> dict[str, Any]:
    group = container_groups.image_template(image=IMAGE)
    group["properties"]["restartPolicy"] = restart_policy
    for container in [*group["properties"]["initContainers"], *group["properties"]["containers"]]:
        if container["name"] in states:
            container["properties"]["instanceView"] = {"currentState": states[container["name"]], "events": []}
    group["properties"]["provisioningState"] = provisioning
    default_tags = {
        container_groups.TAG_MANAGED_BY: "azp-agents",
        container_groups.TAG_RELEASE: "rel",
        container_groups.TAG_SHARD: "0",
        container_groups.TAG_POOL: "linux",
        container_groups.TAG_TEMPLATE: "default",
        container_groups.TAG_REQUEST_ID: "12",
        container_groups.TAG_CREATED: NOW,
    }
    group_id = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/Agents/providers/Microsoft.ContainerInstance/containerGroups/g"
    )
    return {"id": group_id, "name": "g", "tags": tags if tags is not None else default_tags, **group}


@pytest.mark.parametrize(
    ("provisioning", "states", "phase", "failed", "finished", "restart_policy"),
    [
        ("Creating", {}, "Pending", False, False, "Never"),
        ("Succeeded", {"agent": {"state": "Waiting", "detailStatus": "Pulling"}}, "Pending", False, False, "Never"),
        (
            "Succeeded",
            {"register": {"state": "Terminated", "exitCode": 0}, "agent": {"state": "Running"}},
            "Running",
            False,
            False,
            "Never",
        ),
        (
            "Succeeded",
            {"agent": {"state": "Terminated", "exitCode": 0, "finishTime": NOW}},
            "Succeeded",
            False,
            True,
            "Never",
        ),
        ("Succeeded", {"register": {"state": "Terminated", "exitCode": 1}}, "Failed", True, True, "Never"),
        ("Failed", {}, "Failed", True, True, "Never"),
        ("Succeeded", {"agent": {"state": "Terminated", "exitCode": 0}}, "Running", False, False, "Always"),
        ("Succeeded", {"agent": {"state": "Terminated", "exitCode": 1}}, "Running", False, False, "OnFailure"),
        (
            "Succeeded",
            {"agent": {"state": "Terminated", "exitCode": 0, "finishTime": NOW}},
            "Succeeded",
            False,
            True,
            "OnFailure",
        ),
        ("Failed", {}, "Failed", True, True, "Always"),
    ],
)
def test_listed_group_reads_as_job_and_pod(
    provisioning: str,
    states: dict[str, dict[str, Any]],
    phase: str,
    failed: bool,
    finished: bool,
    restart_policy: str,
) -> None:
    """We test: provisioning state and container instance views map to the pod phases the plan knows (a
    container its restart policy restarts is not finished: a named instance between two jobs), the resource
    group is the namespace, and the request id, pool and template come from the tags."""
    group = listed(provisioning=provisioning, states=states, restart_policy=restart_policy)
    found = container_groups.workload_from_json(group, owner=OWNER)
    assert found is not None
    job, pod = found
    assert (pod.phase, job.failed, job.finished is not None) == (phase, failed, finished)
    assert (job.namespace, job.request_id, job.pool_slug, job.template, pod.job_name) == (
        "Agents",
        12,
        "linux",
        "default",
        "g",
    )


def test_crash_failures_of_a_re_created_instance_round_trip_in_a_tag() -> None:
    """We test: a named instance created again after failing carries its failures in a row as a tag, which the
    listed group reads back (so the backoff outlives the deleted group); no tag reads as 0, a bad one too."""
    config = aci_config()
    template = TemplateConfig("default", "group.yaml", instances=1)
    tags = container_groups.tags_for(
        config=config, pool=config.pools[0], template=template, request_id=None, now=NOW_TIME, crash_failures=3
    )
    assert tags[container_groups.TAG_CRASH_FAILURES] == "3"
    plain = container_groups.tags_for(
        config=config, pool=config.pools[0], template=template, request_id=None, now=NOW_TIME
    )
    assert container_groups.TAG_CRASH_FAILURES not in plain
    for value, expected in (("3", 3), (None, 0), ("-1", 0), ("²", 0)):
        extra = {} if value is None else {container_groups.TAG_CRASH_FAILURES: value}
        group = listed(provisioning="Failed", states={}, tags={**tags, **extra} if value else plain)
        found = container_groups.workload_from_json(group, owner=config.owner)
        assert found is not None and found[0].crash_failures == expected


def test_groups_of_others_are_ignored() -> None:
    """We test: a group without our tags, or of another release or shard, is not ours."""
    assert container_groups.workload_from_json(listed(provisioning="Creating", states={}, tags={}), owner=OWNER) is None
    group = listed(provisioning="Creating", states={})
    assert container_groups.workload_from_json(group, owner=names.Owner(prefix="azp", release="another")) is None
    assert container_groups.workload_from_json(group, owner=names.Owner(prefix="azp", release="rel", shard=1)) is None


def test_backend_aci_needs_its_settings_and_uses_the_resource_group(tmp_path: Path) -> None:
    """We test: backend aci without the aci settings is refused naming them; with them, every pool's groups
    live in aci.resourceGroup, and a Linux template that registers in the agent container needs the opt-in."""
    (tmp_path / "group.yaml").write_text(yaml.safe_dump(container_groups.image_template(image=IMAGE)))
    document: dict[str, Any] = {
        "organization": "https://dev.azure.com/contoso",
        "backend": "aci",
        "pools": [{"name": "linux", "jobTemplate": "group.yaml"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"set aci.subscriptionId, aci.resourceGroup and aci.location"):
        config_module.load_file(tmp_path / "config.yaml")
    document["aci"] = {"subscriptionId": SUBSCRIPTION, "resourceGroup": "agents", "location": "westeurope"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    config, _ = config_module.load_file(tmp_path / "config.yaml")
    assert config.backend == "aci" and config.pools[0].namespace == "agents"
    single = {"properties": {"containers": [{"name": "agent", "properties": {"image": IMAGE}}]}}
    (tmp_path / "group.yaml").write_text(yaml.safe_dump(single))
    with pytest.raises(ConfigError, match="both registers and runs the agent"):
        config_module.load_file(tmp_path / "config.yaml")


ORCHESTRATOR = {
    "ORG_URL": "https://dev.azure.com/contoso",
    "ORG_PAT": "pat",
    "AGENT_POOLS": "linux",
    "JOB_IMAGE": IMAGE,
    "HOST_TYPE": "aci",
    "AZ_SUBSCRIPTION_ID": SUBSCRIPTION,
    "AZ_RESOURCE_GROUP": "agents",
    "AZ_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "AZ_REGION": "EastUS",
}


def test_orchestrator_aci_variables_map(tmp_path: Path) -> None:
    """We test: HOST_TYPE=aci and the AZ_* variables select the ACI backend with DefaultAzureCredential in
    the tenant, a sovereign cloud's endpoints, no Lease outside a cluster, and a group template from JOB_IMAGE."""
    env = {**ORCHESTRATOR, "AZ_ENVIRONMENT": "AzureChinaCloud"}
    document = config_module.document_from_orchestrator_env(env, work_dir=tmp_path)
    assert document["backend"] == "aci" and document["lease"]["enabled"] is False
    assert document["aci"] == {
        "subscriptionId": SUBSCRIPTION,
        "resourceGroup": "agents",
        "location": "EastUS",
        "credential": "default",
        "tenantId": ORCHESTRATOR["AZ_TENANT_ID"],
        "authorityHost": "https://login.chinacloudapi.cn",
        "armEndpoint": "https://management.chinacloudapi.cn",
    }
    config = config_module.build_config(document, source="environment", base_dir=tmp_path)
    assert config.backend == "aci" and config.aci is not None and config.aci.location == "EastUS"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"HOST_TYPE": "nomad"}, "HOST_TYPE='nomad' is not valid"),
        ({"AZ_REGION": ""}, "HOST_TYPE=aci needs AZ_REGION"),
        ({"AZ_ENVIRONMENT": "Mars"}, "AZ_ENVIRONMENT='Mars' is not one of"),
    ],
)
def test_orchestrator_aci_variable_errors(tmp_path: Path, change: dict[str, str], expected: str) -> None:
    """We test: a wrong HOST_TYPE, a missing AZ_* variable and an unknown cloud name the variable."""
    with pytest.raises(ConfigError, match=expected):
        config_module.document_from_orchestrator_env({**ORCHESTRATOR, **change}, work_dir=tmp_path)


def test_missing_azure_sdk_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """We test: backend aci without the Azure SDK installed is one ConfigError saying what to install."""
    monkeypatch.setitem(sys.modules, "azure.mgmt.containerinstance", None)
    monkeypatch.delitem(sys.modules, "reconciler.aci", raising=False)
    with pytest.raises(ConfigError, match=r"backend: aci needs the Azure SDK .*pip install 'azp-agents\[aci\]'"):
        backend.container_instances(aci_config(), Credentials(method="pat", pat="p", source="test"))


def test_named_instance_group_restarts_always() -> None:
    """We test: a template with instances renders its group with restartPolicy Always (ACI restarts the agent
    container after each job), a one-job template with Never."""
    config = aci_config()
    pool = config.pools[0]
    group_template = container_groups.image_template(image=IMAGE)
    for instances, policy in ((2, "Always"), (None, "Never")):
        template = TemplateConfig("default", "group.yaml", instances=instances)
        group = container_groups.render_group(
            config=config,
            pool=pool,
            template=template,
            group_template=group_template,
            name="azp-linux-default-i0",
            tags={},
            token="the-pat",
            registry_password=str,
        )
        assert group["properties"]["restartPolicy"] == policy


@pytest.mark.parametrize(
    ("backend", "settings", "expected"),
    [
        ("kubernetes", {"instances": 2}, r"pools\[0\].templates\[0\].instances: named instances .* need backend: aci"),
        ("aci", {"instances": 2, "minIdle": 1}, r"pools\[0\].templates\[0\]: instances keeps exactly 2 agents, so "),
        ("aci", {"instances": 0}, r"instances"),
        (
            "aci",
            {"instances": 11},
            r"pools\[0\].templates\[0\].instances is 11 but pools\[0\].maxAgents is 10 \(unset: the default\): "
            r"raise pools\[0\].maxAgents to at least 11, or lower instances",
        ),
        (
            "aci",
            {"instances": 4, "maxAgents": 3},
            r"pools\[0\].templates\[0\].instances is 4 but pools\[0\].templates\[0\].maxAgents is 3: lower "
            r"instances to at most 3, or raise maxAgents",
        ),
    ],
)
def test_instances_config_errors(tmp_path: Path, backend: str, settings: dict[str, Any], expected: str) -> None:
    """We test: `instances` outside backend aci, beside minIdle, or below 1 is refused naming the key."""
    (tmp_path / "group.yaml").write_text(yaml.safe_dump(container_groups.image_template(image=IMAGE)))
    document: dict[str, Any] = {
        "organization": "https://dev.azure.com/contoso",
        "backend": backend,
        "pools": [{"name": "linux", "templates": [{"name": "default", "jobTemplate": "group.yaml", **settings}]}],
    }
    if backend == "aci":
        document["aci"] = {"subscriptionId": SUBSCRIPTION, "resourceGroup": "agents", "location": "westeurope"}
    with pytest.raises(ConfigError, match=expected):
        config_module.build_config(document, source="cfg", base_dir=tmp_path, check_templates=False)


def test_registry_password_comes_from_its_file_or_variable_and_stays_out_of_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """We test: a registry's password is read from its passwordFile (a mounted Secret) or passwordEnv, lands in
    the group's imageRegistryCredentials, and is masked in log lines from then on; a variable that is not set
    is a ConfigError naming the registry and the variable."""
    from reconciler import aci, logs

    (tmp_path / "password").write_text("file-pass-1\n")
    monkeypatch.setenv("REGISTRY_PASSWORD", "env-pass-2")
    registries = (
        RegistryCredential(server="one.io", username="bot", password_file=str(tmp_path / "password")),
        RegistryCredential(server="two.io", username="bot", password_env="REGISTRY_PASSWORD"),
    )
    config = aci_config(registries=registries)
    group = container_groups.render_group(
        config=config,
        pool=config.pools[0],
        template=config.pools[0].templates[0],
        group_template=container_groups.image_template(image=IMAGE),
        name="g",
        tags={},
        token="the-pat",
        registry_password=aci.registry_password,
    )
    assert [(r["server"], r["password"]) for r in group["properties"]["imageRegistryCredentials"]] == [
        ("one.io", "file-pass-1"),
        ("two.io", "env-pass-2"),
    ]
    assert "file-pass-1" not in logs.SECRETS.scrub("pulled with file-pass-1 and env-pass-2")
    assert "env-pass-2" not in logs.SECRETS.scrub("pulled with file-pass-1 and env-pass-2")
    monkeypatch.delenv("REGISTRY_PASSWORD")
    with pytest.raises(ConfigError, match=r"aci.registries \(two.io\).passwordEnv: REGISTRY_PASSWORD is not set"):
        aci.registry_password(registries[1])


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ({"server": "r.io", "username": "bot"}, r"aci.registries\[0\]: username 'bot' needs its password in"),
        ({"server": "r.io", "passwordEnv": "P"}, r"aci.registries\[0\]: passwordEnv needs the registry's username"),
        ({"server": "r.io"}, r"registry 'r.io' needs identity \(a managed identity with AcrPull\) or username"),
    ],
)
def test_incomplete_registry_credentials_are_refused(tmp_path: Path, registry: dict[str, Any], expected: str) -> None:
    """We test: a registry with a user name but no password place, a password place but no user name, or
    neither a managed identity nor a user name is refused naming the key (never silently dropped)."""
    document: dict[str, Any] = {
        "organization": "https://dev.azure.com/contoso",
        "backend": "aci",
        "aci": {"subscriptionId": SUBSCRIPTION, "resourceGroup": "agents", "location": "westeurope"},
        "pools": [{"name": "linux", "jobTemplate": "group.yaml"}],
    }
    document["aci"]["registries"] = [registry]
    with pytest.raises(ConfigError, match=expected):
        config_module.build_config(document, source="cfg", base_dir=tmp_path, check_templates=False)


def test_check_reads_each_registry_password_without_showing_it(tmp_path: Path) -> None:
    """We test: `check` on ACI has a row per registry with a user name: ok when its password file can be read
    (the password not in the row), FAILED naming the file when it cannot; a managed-identity registry has none."""
    from reconciler import checks

    (tmp_path / "password").write_text("s3cret-registry\n")
    registries = (
        RegistryCredential(server="acr.io", identity=IDENTITY),
        RegistryCredential(server="one.io", username="bot", password_file=str(tmp_path / "password")),
        RegistryCredential(server="two.io", username="bot", password_file=str(tmp_path / "missing")),
    )
    findings = checks.registry_findings(aci_config(registries=registries))
    assert [(f.check, f.ok) for f in findings] == [
        ("registry one.io password", True),
        ("registry two.io password", False),
    ]
    assert "s3cret-registry" not in str(findings) and "missing" in findings[1].detail
