"""Configuration loading: every rule gives one message that names the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import config as config_module
from reconciler import container_groups
from reconciler.errors import ConfigError

JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "x"},
    "spec": {
        "template": {
            "spec": {
                "initContainers": [{"name": "register", "image": "agent:1", "args": ["register"]}],
                "containers": [
                    {
                        "name": "agent",
                        "image": "agent:1",
                        "args": ["run"],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                    }
                ],
            }
        }
    },
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(JOB))
    return tmp_path


def write(workdir: Path, document: Any) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(document) if not isinstance(document, str) else document)
    return path


def base(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "organization": "https://dev.azure.com/contoso",
        "pools": [{"name": "linux", "jobTemplate": "job.yaml"}],
    }
    document.update(overrides)
    return document


def error_of(workdir: Path, document: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        config_module.load_file(write(workdir, document))
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_minimal_config_loads_with_defaults(workdir: Path) -> None:
    """We test: the smallest valid file gives the documented defaults and one 'default' template."""
    config, _ = config_module.load_file(write(workdir, base()))
    pool = config.pools[0]
    assert (pool.max_agents, pool.min_idle, pool.provisioning_timeout, pool.idle_timeout) == (10, 0, 600, 300)
    assert [t.name for t in pool.templates] == ["default"]
    assert pool.templates[0].job_template == str(workdir / "job.yaml")
    assert pool.templates[0].cost == (500, 2**30)
    assert config.namespace == "azp-agents" and config.release == "azp-agents"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (base(organisation="x"), "unknown key 'organisation'"),
        ({"pools": [{"name": "linux", "jobTemplate": "job.yaml"}]}, "organization: is required"),
        (base(pools="linux"), "pools: expected array"),
        (base(pools=[]), "pools: must not be empty"),
        (
            base(pools=[{"name": "linux", "jobTemplate": "job.yaml", "maxAgents": -1}]),
            "pools[0].maxAgents: -1 is out of range",
        ),
        (
            base(pools=[{"name": "linux", "jobTemplate": "job.yaml", "maxAgents": "ten"}]),
            "pools[0].maxAgents: expected integer",
        ),
        (base(pools=[{"name": "linux"}]), "pools[0]: give either jobTemplate"),
        (base(logFormat="xml"), "logFormat: 'xml' is not one of"),
        (base(organization="https://dev.azure.com/contoso/web/_build"), "points inside a project"),
        (base(organization="http://ado.local/tfs/DefaultCollection"), "allowInsecureHttp"),
        (
            base(pools=[{"name": "a", "jobTemplate": "job.yaml"}, {"name": "a", "jobTemplate": "job.yaml"}]),
            "listed twice",
        ),
        (base(shard={"index": 2, "count": 2}), "shard.index: 2 must be below"),
        (base(jobNamePrefix="Bad_Prefix"), "jobNamePrefix"),
        (base(pools=[{"name": "linux", "jobTemplate": "missing.yaml"}]), "pools[0].jobTemplate: job template"),
    ],
)
def test_bad_config_names_the_key(workdir: Path, document: Any, expected: str) -> None:
    """We test: each invalid input exits 2 with a message naming the key."""
    assert expected in error_of(workdir, document)


def test_not_yaml(workdir: Path) -> None:
    """We test: a YAML syntax error says where."""
    assert "not valid YAML at line" in error_of(workdir, "pools: [\n  - name: x\n bad")


def test_server_collection_url_is_valid(workdir: Path) -> None:
    """We test: Azure DevOps Server collection URLs and http with the opt-in are accepted."""
    config_module.load_file(write(workdir, base(organization="https://ado.contoso.local/tfs/DefaultCollection")))
    config_module.load_file(write(workdir, base(organization="http://ado.local/tfs/Default", allowInsecureHttp=True)))


def test_template_that_is_not_a_job(workdir: Path) -> None:
    """We test: a job.yaml holding a Deployment is refused with the key and the fix."""
    (workdir / "job.yaml").write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}}))
    message = error_of(workdir, base())
    assert "pools[0].jobTemplate" in message and "is a Deployment, not a Job" in message


@pytest.mark.parametrize(
    ("pod_change", "expected"),
    [
        ({"hostNetwork": True}, "podPolicy.allowHostNetwork"),
        ({"volumes": [{"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}]}, "podPolicy.allowHostPath"),
        ({"automountServiceAccountToken": True}, "podPolicy.allowServiceAccountToken"),
    ],
)
def test_pod_policy(workdir: Path, pod_change: dict[str, Any], expected: str) -> None:
    """We test: templates asking for host access or a token are refused unless the policy allows it."""
    job = yaml.safe_load(yaml.safe_dump(JOB))
    job["spec"]["template"]["spec"].update(pod_change)
    (workdir / "job.yaml").write_text(yaml.safe_dump(job))
    assert expected in error_of(workdir, base())
    allowed = {"podPolicy": {"allowHostNetwork": True, "allowHostPath": True, "allowServiceAccountToken": True}}
    config_module.load_file(write(workdir, base(**allowed)))


def test_privileged_and_literal_token_refused(workdir: Path) -> None:
    """We test: privileged containers and a PAT literal in the template are refused."""
    job = yaml.safe_load(yaml.safe_dump(JOB))
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    (workdir / "job.yaml").write_text(yaml.safe_dump(job))
    assert "podPolicy.allowPrivileged" in error_of(workdir, base())
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {}
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "AZP_TOKEN", "value": "secret"}]
    (workdir / "job.yaml").write_text(yaml.safe_dump(job))
    assert "sets AZP_TOKEN as a literal" in error_of(workdir, base())


def test_credentials_from_file_and_env(tmp_path: Path) -> None:
    """We test: the PAT is read from the file or variable named, stripped, and never shown by repr."""
    token = tmp_path / "pat"
    token.write_text("abc123\n")
    credentials = config_module.read_credentials({"auth": {"patFile": str(token)}})
    assert credentials.pat == "abc123" and "abc123" not in repr(credentials)
    assert config_module.read_credentials({"auth": {"patEnv": "MY_PAT"}}, env={"MY_PAT": " xyz "}).pat == "xyz"
    with pytest.raises(ConfigError, match=r"auth\.patFile: cannot read"):
        config_module.read_credentials({"auth": {"patFile": str(tmp_path / "none")}})
    with pytest.raises(ConfigError, match=r"auth.patEnv \(AZP_TOKEN\): the PAT is empty: set \$AZP_TOKEN to a"):
        config_module.read_credentials({}, env={})


def test_orchestrator_environment(tmp_path: Path) -> None:
    """We test: ado-agent-orchestrator's variables alone give a working configuration."""
    env = {
        "ORG_URL": "https://dev.azure.com/contoso",
        "ORG_PAT": "p",
        "AGENT_POOLS": "Pool1, Pool2",
        "JOB_IMAGE": "ghcr.io/akanieski/ado-pipelines-linux:latest",
        "JOB_NAMESPACE": "ado",
        "JOB_PREFIX": "agent-job-",
        "POLLING_DELAY": "2000",
        "MINIMUM_AGENT_COUNT": "1",
        "MINIMUM_IDLE_AGENT_COUNT": "2",
        "JOB_DOCKER_SOCKET_PATH": "/var/run/docker.sock",
    }
    config, document = config_module.load(None, env=env, work_dir=tmp_path)
    assert [p.name for p in config.pools] == ["Pool1", "Pool2"]
    assert {p.namespace for p in config.pools} == {"ado"}
    assert config.job_name_prefix == "agent-job"
    assert config.loop.interval == 2.0 and config.loop.loop_for > 0
    assert (config.pools[0].min_agents, config.pools[0].min_idle) == (1, 2)
    assert config.pod_policy.allow_host_path
    assert config_module.read_credentials(document, env=env).pat == "p"
    generated = yaml.safe_load(Path(config.pools[0].templates[0].job_template).read_text())
    pod = generated["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == pod["initContainers"][0]["image"] == env["JOB_IMAGE"]
    assert (pod["initContainers"][0]["args"], pod["containers"][0]["args"]) == (["register"], ["run"])
    assert not config.allow_token_in_agent_container


def test_orchestrator_once_mode_needs_the_opt_in(tmp_path: Path) -> None:
    """We test: JOB_IMAGE gives one `once` container (the orchestrator's shape) only with
    ALLOW_TOKEN_IN_AGENT_CONTAINER, and the configuration then accepts it."""
    env = {"ORG_URL": "https://dev.azure.com/c", "AGENT_POOLS": "a", "JOB_IMAGE": "agent:1", "ORG_PAT": "p"}
    config, _ = config_module.load(None, env={**env, "ALLOW_TOKEN_IN_AGENT_CONTAINER": "true"}, work_dir=tmp_path)
    generated = yaml.safe_load(Path(config.pools[0].templates[0].job_template).read_text())
    pod = generated["spec"]["template"]["spec"]
    assert "initContainers" not in pod and pod["containers"][0]["args"] == ["once"]
    assert config.allow_token_in_agent_container


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ORG_URL": "https://dev.azure.com/c", "JOB_IMAGE": "x"}, "AGENT_POOLS is required"),
        ({"ORG_URL": "https://dev.azure.com/c", "AGENT_POOLS": "a"}, "set JOB_IMAGE"),
        (
            {"ORG_URL": "https://dev.azure.com/c", "AGENT_POOLS": "a", "JOB_IMAGE": "x", "POLLING_DELAY": "soon"},
            "POLLING_DELAY='soon' is not a whole number",
        ),
        (
            {"ORG_URL": "https://dev.azure.com/c", "AGENT_POOLS": "a", "JOB_IMAGE": "x", "JOB_PREFIX": "9lives"},
            "JOB_PREFIX",
        ),
        ({}, "no configuration"),
    ],
)
def test_orchestrator_environment_errors(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    """We test: a wrong orchestrator variable names the variable."""
    with pytest.raises(ConfigError, match=expected):
        config_module.load(None, env=env, work_dir=tmp_path)


def test_api_version_is_auto_by_default_and_pinned_versions_are_checked(workdir: Path) -> None:
    """We test: azureDevOps.apiVersion defaults to auto, 6.0 (Azure DevOps Server 2020) is kept, and a version
    the client does not speak is refused naming the key and the versions it takes."""
    config, _ = config_module.load_file(write(workdir, base()))
    assert config.azdo_api_version == "auto"
    pinned, _ = config_module.load_file(write(workdir, base(azureDevOps={"apiVersion": "6.0"})))
    assert pinned.azdo_api_version == "6.0"
    message = error_of(workdir, base(azureDevOps={"apiVersion": "5.1"}))
    assert "azureDevOps.apiVersion" in message and "'6.0'" in message


def test_named_instances_beyond_max_agents_are_refused_naming_both_keys(workdir: Path) -> None:
    """We test: a config file whose templates' instances add up to more than the pool's maxAgents is refused
    (exit 2) naming each template's instances, the pool's maxAgents and the fix; the same instances within a
    raised maxAgents load."""
    (workdir / "group.yaml").write_text(yaml.safe_dump(container_groups.image_template(image="agent:1")))
    templates = [
        {"name": "small", "jobTemplate": "group.yaml", "instances": 4},
        {"name": "large", "jobTemplate": "group.yaml", "instances": 3},
    ]
    aci = {
        "subscriptionId": "00000000-0000-0000-0000-000000000001",
        "resourceGroup": "agents",
        "location": "westeurope",
    }
    document = base(backend="aci", aci=aci, pools=[{"name": "linux", "maxAgents": 6, "templates": templates}])
    assert error_of(workdir, document) == (
        f"{workdir / 'config.yaml'}: pools[0].templates[0].instances (4) + pools[0].templates[1].instances (3) is 7 "
        "but pools[0].maxAgents is 6: raise pools[0].maxAgents to at least 7, or lower instances"
    )
    document["pools"][0]["maxAgents"] = 7
    loaded, _ = config_module.load_file(write(workdir, document))
    assert [t.instances for t in loaded.pools[0].templates] == [4, 3]
