"""Azure Container Instances container groups as data: load a user's group template, render the group for one
agent, and read a listed group back as the AgentJob/AgentPod pair the plan works on. No I/O (aci.py calls ARM).

The REST shape is ContainerGroup of Microsoft.ContainerInstance 2023-05-01 (azure-rest-api-specs
specification/containerinstance/.../2023-05-01/containerInstance.json): `location`, `tags`, `identity`,
`properties.{containers, initContainers, osType, restartPolicy, volumes, imageRegistryCredentials, subnetIds}`,
each container `{name, properties: {image, command, environmentVariables: [{name, value | secureValue}],
resources.requests {cpu, memoryInGB}, volumeMounts}}`. ACI has no `args`: `command` replaces the image's
ENTRYPOINT and CMD, so a template that sets none runs the image's default (start.sh `once`).

One agent per group, `restartPolicy: Never`: the group ends when its agent's one job ends; a template with
`instances` has named groups with `restartPolicy: Always` instead, whose agent container ACI restarts after
each job (a listed group whose ended container will restart reads as Running). The token reaches
only the container that registers the agent. With an init container `register` (same image, command
[start.sh, register]) and a main container `agent` ([start.sh, run]) sharing an emptyDir for the agent's
state, it is a `secret` volume (ACI keeps secret volume contents out of every GET and list) mounted in the
init container at AZP_TOKEN_FILE's directory: the container running pipeline steps never has it, as on
Kubernetes. A single-container group (Windows: ACI has no init containers or volumes for Windows groups)
gets it as a secure environment variable AZP_TOKEN, which the start script removes before any step runs
(start.sh re-executes itself without it; start.ps1 removes it), and which ARM never returns.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from reconciler import names
from reconciler.errors import ConfigError
from reconciler.lease import format_time, parse_time
from reconciler.model import AciConfig, AgentJob, AgentPod, Config, PoolConfig, RegistryCredential, TemplateConfig
from reconciler.render import OWNED_ENV, TOKEN_DIR, TOKEN_ENV_NAMES, TOKEN_FILE, TOKEN_VOLUME

RESOURCE_TYPE = "Microsoft.ContainerInstance/containerGroups"
# ARM tag names may not contain < > % & \ ? / (Azure Resource Manager tag rules), so no label keys here.
TAG_MANAGED_BY = "azp-agents.managed-by"
TAG_RELEASE = "azp-agents.release"
TAG_SHARD = "azp-agents.shard"
TAG_POOL = "azp-agents.pool"
TAG_POOL_NAME = "azp-agents.pool-name"
TAG_TEMPLATE = "azp-agents.template"
TAG_REQUEST_ID = "azp-agents.request-id"
TAG_STANDBY = "azp-agents.standby"
TAG_CREATED = "azp-agents.created"
TAG_CRASH_FAILURES = "azp-agents.crash-failures"
TOKEN_ENV = "AZP_TOKEN"
AGENT_CONTAINER = "agent"
REGISTER_CONTAINER = "register"
_FINISHED_GROUP_STATES = ("Succeeded", "Failed", "Stopped")


def load_template(path: Path, *, key: str, source: str) -> dict[str, Any]:
    """Read a container group template (YAML or JSON): a group body, an ARM resource of type
    Microsoft.ContainerInstance/containerGroups, or an ARM template holding exactly one such resource."""
    where = f"{source}: {key}: container group template {str(path)!r}"
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where} not found: check the path") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{where} is not valid YAML or JSON") from None
    if isinstance(document, dict) and isinstance(document.get("resources"), list):
        groups = [r for r in document["resources"] if isinstance(r, dict) and r.get("type") == RESOURCE_TYPE]
        if len(groups) != 1:
            raise ConfigError(f"{where}: an ARM template must hold exactly one resource of type {RESOURCE_TYPE}")
        document = groups[0]
    if isinstance(document, dict) and "kind" in document:
        raise ConfigError(
            f"{where}: is a Kubernetes {document['kind']}, not a container group (backend: aci): give a "
            f"{RESOURCE_TYPE} body with properties.containers"
        )
    if not isinstance(document, dict) or document.get("type", RESOURCE_TYPE) != RESOURCE_TYPE:
        raise ConfigError(f"{where}: is not a container group: give a {RESOURCE_TYPE} body with properties.containers")
    group = {k: copy.deepcopy(v) for k, v in document.items() if k in ("location", "tags", "identity", "properties")}
    check_template(group, where=where)
    return group


def _containers(group: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    found = (group.get("properties") or {}).get(kind) or []
    return found if isinstance(found, list) else []


def check_template(group: Mapping[str, Any], *, where: str) -> None:
    """Refuse what ACI or the agent would refuse later: no containers, a container without an image, a
    restart policy that restarts a one-job agent, a token set in the template."""
    properties = group.get("properties")
    containers = _containers(group, "containers")
    if not isinstance(properties, dict) or not containers:
        raise ConfigError(f"{where}: properties.containers is missing: a container group needs one container")
    if properties.get("restartPolicy", "Never") != "Never":
        raise ConfigError(
            f"{where}: properties.restartPolicy is {properties['restartPolicy']!r}: remove it; the reconciler sets "
            "Never (one job per group), or Always for a template with instances"
        )
    if properties.get("osType", "Linux") not in ("Linux", "Windows"):
        raise ConfigError(f"{where}: properties.osType must be Linux or Windows")
    for index, container in enumerate([*_containers(group, "initContainers"), *containers]):
        props = container.get("properties") if isinstance(container, dict) else None
        if not isinstance(props, dict) or not container.get("name") or not props.get("image"):
            raise ConfigError(f"{where}: container {index} needs a name and properties.image")
        for entry in props.get("environmentVariables") or []:
            if entry.get("name") in TOKEN_ENV_NAMES:
                raise ConfigError(
                    f"{where}: container {container['name']!r} sets {entry['name']}: remove it; the reconciler "
                    "gives the token to the container that registers the agent (AZP_TOKEN_FILE)"
                )
    agent_containers(group, where=where)


def agent_containers(group: Mapping[str, Any], *, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the container that runs the agent, the one that registers it): the only main container or the one
    named `agent`; the init container named `register`, else the agent container itself (`once`)."""
    containers = _containers(group, "containers")
    named = [c for c in containers if c.get("name") == AGENT_CONTAINER]
    if len(containers) != 1 and not named:
        raise ConfigError(
            f"{where}: containers {[c.get('name') for c in containers]}: name the one that runs the agent "
            f"{AGENT_CONTAINER!r}"
        )
    runner = named[0] if named else containers[0]
    registrar = next((c for c in _containers(group, "initContainers") if c.get("name") == REGISTER_CONTAINER), runner)
    return runner, registrar


def registers_where_steps_run(group: Mapping[str, Any], *, where: str) -> bool:
    """True when a Linux group's agent container registers too, where an init container could instead (on
    Windows there is no other way): the token is then in the container that runs pipeline steps."""
    runner, registrar = agent_containers(group, where=where)
    return runner is registrar and group["properties"].get("osType", "Linux") == "Linux"


def _set_env(container: dict[str, Any], entries: list[dict[str, Any]], *, replace: bool) -> None:
    properties = container["properties"]
    env = [e for e in properties.get("environmentVariables") or [] if isinstance(e, dict)]
    declared = {e.get("name") for e in env}
    wanted = {e["name"] for e in entries}
    kept = [e for e in env if not (replace and e.get("name") in wanted)]
    properties["environmentVariables"] = kept + [e for e in entries if replace or e["name"] not in declared]


def tags_for(
    *,
    config: Config,
    pool: PoolConfig,
    template: TemplateConfig,
    request_id: int | None,
    now: datetime,
    crash_failures: int = 0,
) -> dict[str, str]:
    """The release, shard, pool, template and request identity every group of ours carries; a named instance
    re-created after failing carries its failures in a row too (its crash backoff outlives the failed group)."""
    tags = {
        TAG_MANAGED_BY: names.MANAGED_BY,
        TAG_RELEASE: config.release,
        TAG_SHARD: str(config.owner.shard),
        TAG_POOL: names.pool_slug(pool.name),
        TAG_POOL_NAME: pool.name[:256],
        TAG_TEMPLATE: template.name,
        TAG_CREATED: format_time(now),
    }
    if request_id is None:
        tags[TAG_STANDBY] = "true"
    else:
        tags[TAG_REQUEST_ID] = str(request_id)
    if crash_failures:
        tags[TAG_CRASH_FAILURES] = str(crash_failures)
    return tags


def _registries(aci: AciConfig, password: Callable[[RegistryCredential], str]) -> list[dict[str, Any]]:
    """imageRegistryCredentials: {server, identity} or {server, username, password} (ARM never returns it)."""
    credentials = []
    for registry in aci.registries:
        entry: dict[str, Any] = {"server": registry.server}
        if registry.identity:
            entry["identity"] = registry.identity
        if registry.username:
            entry["username"] = registry.username
            entry["password"] = password(registry)
        credentials.append(entry)
    return credentials


def render_group(
    *,
    config: Config,
    pool: PoolConfig,
    template: TemplateConfig,
    group_template: Mapping[str, Any],
    name: str,
    tags: Mapping[str, str],
    token: str,
    registry_password: Callable[[RegistryCredential], str],
) -> dict[str, Any]:
    """The container group body that runs one agent of `template` (ARM takes its name from the URL)."""
    aci = config.aci
    assert aci is not None
    group = copy.deepcopy(dict(group_template))
    group.setdefault("location", aci.location)
    group["tags"] = {**(group.get("tags") or {}), **tags}
    properties = group["properties"]
    # Named instances restart after each job (ACI restarts every container of the group that exits, whatever
    # its code, with Always: container-instances-restart-policy); one-job groups end with their agent.
    properties["restartPolicy"] = "Always" if template.instances else "Never"
    properties.setdefault("osType", "Linux")
    # An identity that pulls images must be one the group runs as (MicrosoftDocs container-instances/
    # using-azure-container-registry-mi.md): aci.identity and every registry's identity are assigned to the group.
    identities = [i for i in (aci.identity, *(r.identity for r in aci.registries)) if i]
    if identities:
        group["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {i: {} for i in identities}}
    if aci.registries:
        properties["imageRegistryCredentials"] = _registries(aci, registry_password)
    if aci.subnet_ids:
        properties["subnetIds"] = [{"id": subnet} for subnet in aci.subnet_ids]
    runner, registrar = agent_containers(group, where=f"template {pool.name}/{template.name}")
    agent_env = [
        {"name": "AZP_URL", "value": config.organization},
        {"name": "AZP_POOL", "value": pool.name},
        {"name": "AZP_TEMPLATE", "value": template.name},
        # No downward API on ACI: the group's name is written in, and agent name = group name.
        {"name": "AZP_AGENT_NAME", "value": name},
    ]
    declared = [{"name": k, "value": str(v)} for k, v in template.capabilities.items()]
    for container in {id(c): c for c in (runner, registrar)}.values():
        _set_env(container, [e for e in agent_env if e["name"] in OWNED_ENV], replace=True)
        _set_env(container, declared, replace=False)
    if registrar is runner:
        # One container (Windows groups have neither init containers nor secret volumes): the PAT is a secure
        # value, which start.sh/start.ps1 remove from the environment before the agent runs any step.
        _set_env(registrar, [{"name": TOKEN_ENV, "secureValue": token}], replace=True)
        return group
    volumes = properties["volumes"] = [v for v in properties.get("volumes") or [] if v.get("name") != TOKEN_VOLUME]
    volumes.append({"name": TOKEN_VOLUME, "secret": {"token": base64.b64encode(token.encode()).decode()}})
    mounts = registrar["properties"]["volumeMounts"] = list(registrar["properties"].get("volumeMounts") or [])
    mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
    _set_env(registrar, [{"name": "AZP_TOKEN_FILE", "value": TOKEN_FILE}], replace=True)
    return group


def _container_state(container: Mapping[str, Any]) -> Mapping[str, Any]:
    view = (container.get("properties") or {}).get("instanceView") or {}
    return view.get("currentState") or {}


def _restarted(properties: Mapping[str, Any], state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A main container's state as the group's life sees it: one that ended and that its restart policy
    restarts (Always, the ACI default; OnFailure after a non-zero exit) is running again in a moment."""
    policy = properties.get("restartPolicy") or "Always"
    ended = state.get("state") == "Terminated"
    if ended and (policy == "Always" or (policy == "OnFailure" and state.get("exitCode") != 0)):
        return {**state, "state": "Running"}
    return state


def _phase(group: Mapping[str, Any]) -> tuple[str, str | None, str | None, int | None]:
    """(pod phase, reason, message, failing exit code) of a group, from its provisioning state and the
    instance views of its containers (Waiting, Running, Terminated with an exit code)."""
    properties = group.get("properties") or {}
    provisioning = str(properties.get("provisioningState") or "Pending")
    if provisioning == "Failed":
        return "Failed", "ProvisioningFailed", _last_event(group), None
    states = [_restarted(properties, _container_state(c)) for c in _containers(group, "containers")]
    inits = [_container_state(c) for c in _containers(group, "initContainers")]
    for state in [*inits, *states]:
        code = state.get("exitCode")
        if state.get("state") == "Terminated" and isinstance(code, int) and code != 0:
            return "Failed", str(state.get("detailStatus") or "Error"), _last_event(group), code
    if states and all(s.get("state") == "Terminated" for s in states):
        return "Succeeded", None, None, None
    if states and all(s.get("state") in ("Running", "Terminated") for s in states):
        return "Running", None, None, None
    waiting = next((s for s in [*inits, *states] if s.get("state") == "Waiting"), {})
    return "Pending", str(waiting.get("detailStatus") or provisioning) or None, _last_event(group), None


def _last_event(group: Mapping[str, Any]) -> str | None:
    events: list[Mapping[str, Any]] = []
    for container in [*_containers(group, "initContainers"), *_containers(group, "containers")]:
        events.extend(((container.get("properties") or {}).get("instanceView") or {}).get("events") or [])
    return str(events[-1].get("message")) if events else None


def _times(group: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """When the agent container started and when the last main container finished."""
    states = [_container_state(c) for c in _containers(group, "containers")]
    started = [t for t in (parse_time(s.get("startTime")) for s in states) if t is not None]
    finished = [t for t in (parse_time(s.get("finishTime")) for s in states) if t is not None]
    return (min(started) if started else None), (max(finished) if finished else None)


def workload_from_json(group: Mapping[str, Any], *, owner: names.Owner) -> tuple[AgentJob, AgentPod] | None:
    """The Job and pod a listed group of this release's shard stands for; None for anyone else's group."""
    tags = group.get("tags") or {}
    name = group.get("name")
    ours = tags.get(TAG_RELEASE) == owner.release and tags.get(TAG_SHARD) == str(owner.shard)
    if tags.get(TAG_MANAGED_BY) != names.MANAGED_BY or not ours or not name:
        return None
    if not tags.get(TAG_POOL) or not tags.get(TAG_TEMPLATE):
        return None
    resource_group = resource_group_of(str(group.get("id") or ""))
    created = parse_time(tags.get(TAG_CREATED))
    phase, reason, message, exit_code = _phase(group)
    started, finished = _times(group)
    if phase == "Failed" and finished is None:
        finished = created
    raw_request = tags.get(TAG_REQUEST_ID) or ""
    raw_failures = tags.get(TAG_CRASH_FAILURES) or ""
    job = AgentJob(
        name=str(name),
        namespace=resource_group,
        pool_slug=str(tags[TAG_POOL]),
        pool_name=tags.get(TAG_POOL_NAME),
        template=str(tags[TAG_TEMPLATE]),
        request_id=int(raw_request) if raw_request.isascii() and raw_request.isdigit() else None,
        standby=tags.get(TAG_STANDBY) == "true",
        created=created,
        finished=finished if phase in ("Succeeded", "Failed") else None,
        failed=phase == "Failed",
        crash_failures=int(raw_failures) if raw_failures.isascii() and raw_failures.isdigit() else 0,
    )
    pod = AgentPod(
        name=str(name),
        namespace=resource_group,
        job_name=str(name),
        phase=phase,
        created=created,
        started=started,
        finished=job.finished,
        reason=reason,
        message=message,
        exit_code=exit_code,
    )
    return job, pod


def resource_group_of(resource_id: str) -> str:
    """The resource group named in an ARM resource id (/subscriptions/s/resourceGroups/rg/...)."""
    parts = resource_id.split("/")
    lowered = [p.lower() for p in parts]
    return parts[lowered.index("resourcegroups") + 1] if "resourcegroups" in lowered[:-1] else ""


def image_template(*, image: str, windows: bool = False) -> dict[str, Any]:
    """The container group template for an agent image alone (ado-agent-orchestrator's JOB_IMAGE): on Linux an
    init container `register` and the `agent` container sharing the agent's state in an emptyDir; on Windows
    (no init containers or volumes on ACI) one container that registers and runs the agent (`once`)."""
    resources = {"requests": {"cpu": 1, "memoryInGB": 2}}
    if windows:
        command = ["powershell", "C:\\azp\\start.ps1", "once"]
        agent = {"name": AGENT_CONTAINER, "properties": {"image": image, "command": command, "resources": resources}}
        return {"properties": {"osType": "Windows", "containers": [agent]}}
    state = [{"name": "agent-state", "mountPath": "/azp/state"}]
    command = ["/azp/start.sh", "register"]
    register = {"name": REGISTER_CONTAINER, "properties": {"image": image, "command": command, "volumeMounts": state}}
    agent = {
        "name": AGENT_CONTAINER,
        "properties": {
            "image": image,
            "command": ["/azp/start.sh", "run"],
            "resources": resources,
            "volumeMounts": state,
        },
    }
    return {
        "properties": {
            "osType": "Linux",
            "initContainers": [register],
            "containers": [agent],
            "volumes": [{"name": "agent-state", "emptyDir": {}}],
        }
    }
