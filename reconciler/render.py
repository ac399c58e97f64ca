"""Turn a user's job.yaml into the Job for one agent, without text templating of YAML.

The template is parsed, checked (a batch/v1 Job, a Pod or a bare pod template), and then changed
as data: our name, namespace, labels and annotations, `restartPolicy: Never`, `backoffLimit: 0`,
`ttlSecondsAfterFinished`, the AZP_* environment and the registration token as a Secret volume.
Only a fixed set of `${NAME}` variables is substituted in string values; anything else is kept.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler import capabilities, names
from reconciler.errors import ConfigError
from reconciler.model import Config, PodPolicy, PoolConfig, TemplateConfig

VARIABLES = (
    "AZP_URL",
    "AZP_POOL",
    "AZP_TEMPLATE",
    "AZP_SECRET_NAME",
    "AZP_SECRET_KEY",
    "JOB_NAME",
    "NAMESPACE",
    "RELEASE",
    "REQUEST_ID",
)
_VARIABLE = re.compile(r"\$\{(" + "|".join(VARIABLES) + r")\}")
TOKEN_VOLUME = "azp-token"
TOKEN_DIR = "/var/run/secrets/azp"
TOKEN_FILE = f"{TOKEN_DIR}/token"
AGENT_FILES_VOLUME = "azp-agent-files"
AGENT_FILES_DIR = "/var/run/secrets/azp-agent"
"""Where the container that registers the agent finds the agent's files (agents.registration: reconciler)."""
TOKEN_ENV_NAMES = (
    "AZP_TOKEN",  # Microsoft's container start script (MS:pipelines/agents/docker)
    "VSTS_TOKEN",  # the retired microsoft/vsts-agent images
    "VSTS_AGENT_INPUT_TOKEN",  # config.sh reads --token from it (agent CommandSettings)
    "ORG_PAT",  # akanieski/ado-agent-orchestrator
    "AZURE_DEVOPS_EXT_PAT",  # az devops CLI
    "AZURE_DEVOPS_TOKEN",
    "AZDO_PERSONAL_ACCESS_TOKEN",  # terraform provider azuredevops
    "AZP_PAT",
    "ADO_PAT",
    "SYSTEM_ACCESSTOKEN",
)
"""Names real images and tools read a PAT from: never set by a template, the reconciler mounts the token."""
AGENT_CONTAINER_ANNOTATION = "azp-agents.dev/agent-container"
"""Pod template annotation naming the container that runs the agent, when the template has several."""
REGISTER_CONTAINER_ANNOTATION = "azp-agents.dev/register-container"
"""Pod template annotation naming the init container that registers the agent (gets the token)."""
OWNED_ENV = ("AZP_URL", "AZP_POOL", "AZP_AGENT_NAME", "AZP_TEMPLATE")
"""The reconciler's values always win over a template's: the agent must join this pool under its pod's name."""
_TOKEN_ARGUMENT = re.compile(r"--token(?:=|\s+)[\"']?(?P<value>[^\s\"'$-]\S*)")
_TOKEN_ASSIGNMENT = re.compile(r"\b(?P<name>" + "|".join(TOKEN_ENV_NAMES) + r")=[\"']?(?P<value>[^\s\"'$-]\S*)")


def _is_pod_spec(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("containers"), list)


def load_template(path: Path, *, key: str, source: str) -> dict[str, Any]:
    """Read a job template and return it as a batch/v1 Job (a Pod or pod template is wrapped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: {key}: job template {str(path)!r} not found: check the path") from None
    except OSError as exc:
        raise ConfigError(f"{source}: {key}: cannot read job template {str(path)!r}: {exc.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        raise ConfigError(f"{source}: {key}: job template {str(path)!r} is not valid YAML") from None
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise ConfigError(f"{source}: {key}: job template {str(path)!r} must hold exactly one object (a batch/v1 Job)")
    return as_job(documents[0], where=f"{source}: {key}: job template {str(path)!r}")


def as_job(document: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Normalise a Job, a Pod, a PodTemplate body or a bare pod spec into a batch/v1 Job."""
    kind = document.get("kind")
    api_version = document.get("apiVersion")
    if kind == "Job":
        if api_version != "batch/v1":
            raise ConfigError(f"{where}: apiVersion {api_version!r} is not supported for a Job: use batch/v1")
        spec = document.get("spec")
        template = spec.get("template") if isinstance(spec, dict) else None
        if not isinstance(template, dict) or not _is_pod_spec(template.get("spec")):
            raise ConfigError(f"{where}: spec.template.spec.containers is missing: a Job needs at least one container")
        return copy.deepcopy(document)
    if kind == "Pod" or (kind is None and _is_pod_spec(document.get("spec"))):
        if not _is_pod_spec(document.get("spec")):
            raise ConfigError(f"{where}: spec.containers is missing: a Pod needs at least one container")
        pod_meta = document.get("metadata") or {}
        template_meta = {k: v for k, v in pod_meta.items() if k in ("labels", "annotations")}
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {},
            "spec": {"template": {"metadata": template_meta, "spec": copy.deepcopy(document["spec"])}},
        }
    if kind is None and _is_pod_spec(document):
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {},
            "spec": {"template": {"spec": copy.deepcopy(document)}},
        }
    raise ConfigError(
        f"{where}: is a {kind or 'document without kind'}, not a Job: give a batch/v1 Job (or a Pod template)"
    )


def _containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]


def check_policy(job: Mapping[str, Any], *, policy: PodPolicy, key: str, source: str) -> None:
    """Refuse templates that ask for more than the pod policy allows, or carry a token literal."""
    pod = job["spec"]["template"]["spec"]
    where = f"{source}: {key}"
    _check_shape(pod, where)
    if pod.get("hostNetwork") and not policy.allow_host_network:
        raise ConfigError(f"{where}: the template sets hostNetwork: remove it or set podPolicy.allowHostNetwork: true")
    if pod.get("hostPID") or pod.get("hostIPC"):
        raise ConfigError(f"{where}: the template sets hostPID/hostIPC, which agent pods never need: remove it")
    for volume in pod.get("volumes", []) or []:
        sources = ((volume.get("projected") or {}).get("sources")) or []
        if any("serviceAccountToken" in source for source in sources) and not policy.allow_service_account_token:
            raise ConfigError(
                f"{where}: volume {volume.get('name')!r} projects a service account token: remove it or set "
                "podPolicy.allowServiceAccountToken: true"
            )
        if "hostPath" in volume and not policy.allow_host_path:
            raise ConfigError(
                f"{where}: volume {volume.get('name')!r} is a hostPath: remove it or set podPolicy.allowHostPath: true"
            )
    if pod.get("automountServiceAccountToken") and not policy.allow_service_account_token:
        raise ConfigError(
            f"{where}: the template mounts a service account token: remove automountServiceAccountToken "
            "or set podPolicy.allowServiceAccountToken: true"
        )
    for container in _containers(pod):
        context = container.get("securityContext") or {}
        if (context.get("privileged") or context.get("allowPrivilegeEscalation")) and not policy.allow_privileged:
            raise ConfigError(
                f"{where}: container {container.get('name')!r} asks for privilege: remove privileged/"
                "allowPrivilegeEscalation or set podPolicy.allowPrivileged: true"
            )
        _check_token(container, where=where)


def _check_token(container: Mapping[str, Any], *, where: str) -> None:
    """A PAT in a template (literal, or from a Secret under a name images read a token from, or on
    a command line) would reach a container the reconciler cannot keep steps out of: refused."""
    name = container.get("name")
    for env in container.get("env") or []:
        if env["name"] in TOKEN_ENV_NAMES:
            how = "as a literal" if "value" in env else "from a Secret"
            raise ConfigError(
                f"{where}: container {name!r} sets {env['name']} {how}: remove it; the reconciler mounts the "
                f"token from its own Secret into the one container that registers the agent (AZP_TOKEN_FILE)"
            )
    line = " ".join(str(word) for word in [*(container.get("command") or []), *(container.get("args") or [])])
    found = _TOKEN_ARGUMENT.search(line) or _TOKEN_ASSIGNMENT.search(line)
    if found and found.group("value"):
        raise ConfigError(
            f"{where}: container {name!r} passes a token in its command/args: remove it; the reconciler mounts "
            "the token from a Secret into the container that registers the agent, which reads AZP_TOKEN_FILE"
        )


@dataclass(frozen=True)
class AgentContainers:
    """The container that runs the agent (`runner`) and the one that registers it (`registrar`, the
    only one that gets the token); the same container in `once` mode."""

    runner: dict[str, Any]
    registrar: dict[str, Any]

    @property
    def once(self) -> bool:
        return self.runner is self.registrar


def _names(containers: list[dict[str, Any]]) -> str:
    return ", ".join(repr(c.get("name")) for c in containers)


def _wired_as_agent(container: Mapping[str, Any]) -> bool:
    """A container the user set up as the agent: AZP_*/VSTS_AGENT_* variables, or a built-in agent image."""
    env_names = [str(e["name"]) for e in container.get("env") or []]
    return any(n.startswith(("AZP_", "VSTS_AGENT_")) for n in env_names) or bool(
        capabilities.image_capabilities(str(container.get("image", "")))
    )


def _runner(pod: Mapping[str, Any], annotations: Mapping[str, Any], where: str) -> dict[str, Any]:
    mains: list[dict[str, Any]] = list(pod.get("containers") or [])
    named = annotations.get(AGENT_CONTAINER_ANNOTATION)
    if named is not None:
        found = next((c for c in mains if c.get("name") == named), None)
        if found is None:
            raise ConfigError(
                f"{where}: annotation {AGENT_CONTAINER_ANNOTATION}: {named!r} is not one of the containers "
                f"({_names(mains)}): name the container that runs the agent"
            )
        return found
    wired = mains if len(mains) == 1 else [c for c in mains if _wired_as_agent(c)]
    if len(wired) != 1:
        raise ConfigError(
            f"{where}: cannot tell which of the containers {_names(mains)} runs the agent: add the annotation "
            f"{AGENT_CONTAINER_ANNOTATION}: <container name> to spec.template.metadata.annotations"
        )
    return wired[0]


def _registrar(
    pod: Mapping[str, Any], runner: dict[str, Any], annotations: Mapping[str, Any], where: str
) -> dict[str, Any]:
    # Native sidecars (init containers with restartPolicy Always) run beside the agent: never the registrar.
    inits: list[dict[str, Any]] = [c for c in pod.get("initContainers") or [] if c.get("restartPolicy") != "Always"]
    named = annotations.get(REGISTER_CONTAINER_ANNOTATION)
    if named is not None:
        if named == runner.get("name"):
            return runner
        found = next((c for c in inits if c.get("name") == named), None)
        if found is None:
            raise ConfigError(
                f"{where}: annotation {REGISTER_CONTAINER_ANNOTATION}: {named!r} is neither an init container "
                f"({_names(inits) or 'none'}; native sidecars excluded) nor the agent container {runner.get('name')!r}"
            )
        return found
    # The chart's pattern: an init container of the agent's own image registers (start.sh register).
    same_image = [c for c in inits if c.get("image") == runner.get("image")]
    if len(same_image) > 1:
        raise ConfigError(
            f"{where}: cannot tell which of the init containers {_names(same_image)} registers the agent: add the "
            f"annotation {REGISTER_CONTAINER_ANNOTATION}: <container name> to spec.template.metadata.annotations"
        )
    return same_image[0] if same_image else runner


def _check_shape(pod: Mapping[str, Any], where: str) -> None:
    for key in ("initContainers", "containers"):
        for index, container in enumerate(pod.get(key) or []):
            if not isinstance(container, dict) or not isinstance(container.get("name"), str):
                raise ConfigError(f"{where}: spec.{key}[{index}] must be a container with a name")
            env = container.get("env") or []
            if not isinstance(env, list) or not all(isinstance(e, dict) and "name" in e for e in env):
                raise ConfigError(f"{where}: container {container['name']!r}: env must be a list of {{name, value}}")


def agent_containers(job: Mapping[str, Any], *, where: str) -> AgentContainers:
    """Which container runs the agent and which registers it: marked by annotation, else told from the
    template's shape; a ConfigError naming the containers and the annotation when it cannot be told."""
    pod_template = job["spec"]["template"]
    _check_shape(pod_template["spec"], where)
    annotations = (pod_template.get("metadata") or {}).get("annotations") or {}
    runner = _runner(pod_template["spec"], annotations, where)
    return AgentContainers(runner=runner, registrar=_registrar(pod_template["spec"], runner, annotations, where))


def check_agent_containers(
    job: Mapping[str, Any], *, declared: Mapping[str, str], allow_token_in_agent_container: bool, where: str
) -> list[str]:
    """Refuse a template whose agent container cannot be told, that would put the token where steps run
    without the opt-in, or that sets a declared capability to another value; return a note for each
    AZP_* value of the template the reconciler replaces."""
    containers = agent_containers(job, where=where)
    runner = containers.runner.get("name")
    if containers.once and not allow_token_in_agent_container:
        raise ConfigError(
            f"{where}: container {runner!r} both registers and runs the agent, so pipeline steps could read "
            "the PAT: register in an init container of the same image (args [register], main container args "
            f"[run]; or mark it with the annotation {REGISTER_CONTAINER_ANNOTATION}), or accept the risk with "
            "allowTokenInAgentContainer: true (chart: agent.allowTokenInAgentContainer)"
        )
    literal = {e.get("name"): e.get("value") for e in containers.runner.get("env") or [] if "value" in e}
    for name, value in declared.items():
        if name in literal and str(literal[name]) != str(value):
            raise ConfigError(
                f"{where}: capability {name}={value!r} is declared, but container {runner!r} sets {name}="
                f"{literal[name]!r}, which its agent would advertise instead: make them agree"
            )
    notes = []
    for container in {id(c): c for c in (containers.runner, containers.registrar)}.values():
        for entry in container.get("env") or []:
            if entry.get("name") in OWNED_ENV:
                notes.append(
                    f"{where}: container {container.get('name')!r} sets {entry['name']}: the reconciler's value "
                    "replaces it (agents join the configured pool under their pod's name)"
                )
    return notes


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)$")


def resource_cost(job: Mapping[str, Any]) -> tuple[int, int]:
    """(cpu millicores, memory bytes) the template's containers request: the tie-break between templates."""
    cpu = memory = 0
    for container in job["spec"]["template"]["spec"].get("containers", []):
        requests = (container.get("resources") or {}).get("requests") or {}
        cpu_match = _CPU.match(str(requests.get("cpu", "0")))
        if cpu_match:
            cpu += int(float(cpu_match.group(1)) * (1 if cpu_match.group(2) else 1000))
        memory_match = _MEMORY.match(str(requests.get("memory", "0")))
        if memory_match:
            memory += int(float(memory_match.group(1)) * _MEMORY_UNITS[memory_match.group(2)])
    return cpu, memory


def _substitute(value: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: variables[m.group(1)], value)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


def _add_env(container: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Add the entries the container does not set itself."""
    env = container["env"] = list(container.get("env") or [])
    declared = {e.get("name") for e in env}
    env.extend(e for e in entries if e["name"] not in declared)


def _set_env(container: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Set the entries, replacing the container's own values of those names."""
    replaced = {e["name"] for e in entries}
    container["env"] = [e for e in container.get("env") or [] if e.get("name") not in replaced] + entries


ARCH_LABEL = "kubernetes.io/arch"
"""Well-known node label set by the kubelet to Go's GOARCH (amd64, arm64, arm):
https://kubernetes.io/docs/reference/labels-annotations-taints/#kubernetes-io-arch"""


def select_arch(pod_spec: Mapping[str, Any], arch: str | None, *, where: str) -> dict[str, Any]:
    """`pod_spec` whose nodeSelector asks for `arch` (a template's `arch` key); the pod's own
    kubernetes.io/arch selector wins when it agrees, and a different one is a ConfigError."""
    spec = dict(pod_spec)
    if arch is None:
        return spec
    selector = dict(spec.get("nodeSelector") or {})
    own = selector.get(ARCH_LABEL)
    if own is not None and own != arch:
        raise ConfigError(
            f"{where}: arch is {arch!r} but the job template's nodeSelector asks for {ARCH_LABEL}={own!r}: "
            "remove one of them"
        )
    spec["nodeSelector"] = {**selector, ARCH_LABEL: arch}
    return spec


def render_job(
    *,
    config: Config,
    pool: PoolConfig,
    template: TemplateConfig,
    job_template: Mapping[str, Any],
    job_name: str,
    request_id: int | None,
    demands: tuple[str, ...] = (),
    agent_id: int | None = None,
) -> dict[str, Any]:
    """The Job that runs one agent of `template` in `pool`: the user's template plus what we own. With
    agents.registration: reconciler, its pod gets the files of agent `agent_id` (registered under the Job's
    name) from the Secret named after the Job, instead of the PAT."""
    variables = {
        "AZP_URL": config.organization,
        "AZP_POOL": pool.name,
        "AZP_TEMPLATE": template.name,
        "AZP_SECRET_NAME": config.agent_secret_name,
        "AZP_SECRET_KEY": config.agent_secret_key,
        "JOB_NAME": job_name,
        "NAMESPACE": pool.namespace,
        "RELEASE": config.release,
        "REQUEST_ID": "" if request_id is None else str(request_id),
    }
    job: dict[str, Any] = _substitute(copy.deepcopy(dict(job_template)), variables)
    labels = {
        names.LABEL_NAME: names.AGENT_APP_NAME,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_INSTANCE: config.release,
        names.LABEL_POOL: names.pool_slug(pool.name),
        names.LABEL_TEMPLATE: template.name,
        names.LABEL_SHARD: str(config.shard_index),
    }
    if request_id is None:
        labels[names.LABEL_STANDBY] = "true"
    else:
        labels[names.LABEL_REQUEST_ID] = str(request_id)
    annotations = {names.ANNOTATION_POOL_NAME: pool.name, names.ANNOTATION_OWNER: config.owner.annotation}
    if demands:
        annotations[names.ANNOTATION_DEMANDS] = ", ".join(demands)

    metadata = job.setdefault("metadata", {})
    for key in ("generateName", "resourceVersion", "uid", "creationTimestamp", "selfLink"):
        metadata.pop(key, None)
    metadata["name"] = job_name
    metadata["namespace"] = pool.namespace
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}

    spec = job["spec"]
    spec["backoffLimit"] = 0
    spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    for key in ("selector", "manualSelector", "completions", "parallelism"):
        spec.pop(key, None)
    pod_template = spec["template"]
    pod_meta = pod_template.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **annotations}
    pod = pod_template["spec"] = select_arch(pod_template["spec"], template.arch, where=f"template {template.name}")
    pod["restartPolicy"] = "Never"
    pod.setdefault("automountServiceAccountToken", False)

    by_reconciler = config.agent_registration == "reconciler"
    agent_name: dict[str, Any] = (
        {"value": job_name} if by_reconciler else {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    )
    agent_env: list[dict[str, Any]] = [
        {"name": "AZP_URL", "value": config.organization},
        {"name": "AZP_POOL", "value": pool.name},
        {"name": "AZP_TEMPLATE", "value": template.name},
        {"name": "AZP_AGENT_NAME", **agent_name},
    ]
    # A real agent turns its environment into capabilities: the declared ones reach it that way.
    declared = [{"name": k, "value": str(v)} for k, v in template.capabilities.items()]
    containers = agent_containers(job, where=f"template {pool.name}/{template.name}")
    for container in {id(c): c for c in (containers.runner, containers.registrar)}.values():
        _set_env(container, agent_env)
        _add_env(container, declared)
    if by_reconciler:
        pod_meta["annotations"][names.ANNOTATION_AGENT_NAME] = job_name
        if agent_id is not None:
            pod_meta["annotations"][names.ANNOTATION_AGENT_ID] = str(agent_id)
        _mount(pod, containers.registrar, volume=_secret_volume(AGENT_FILES_VOLUME, job_name), path=AGENT_FILES_DIR)
        _set_env(containers.registrar, [{"name": "AZP_AGENT_FILES", "value": AGENT_FILES_DIR}])
        return job
    token = _secret_volume(TOKEN_VOLUME, config.agent_secret_name, items={config.agent_secret_key: "token"})
    # Exactly one container sees the token: the one that registers the agent; sidecars, user init
    # containers and (in split mode) the container running steps never do.
    _mount(pod, containers.registrar, volume=token, path=TOKEN_DIR)
    _set_env(containers.registrar, [{"name": "AZP_TOKEN_FILE", "value": TOKEN_FILE}])
    return job


def _secret_volume(name: str, secret: str, *, items: Mapping[str, str] | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if items:
        source["items"] = [{"key": key, "path": path} for key, path in items.items()]
    return {"name": name, "secret": source}


def _mount(pod: dict[str, Any], container: dict[str, Any], *, volume: dict[str, Any], path: str) -> None:
    """Add `volume` to the pod (unless the template has one of that name) and mount it read-only in `container`."""
    volumes = pod["volumes"] = list(pod.get("volumes") or [])
    if not any(v.get("name") == volume["name"] for v in volumes):
        volumes.append(volume)
    mounts = container["volumeMounts"] = list(container.get("volumeMounts") or [])
    if not any(m.get("name") == volume["name"] for m in mounts):
        mounts.append({"name": volume["name"], "mountPath": path, "readOnly": True})


def agent_files_secret(job: Mapping[str, Any], *, files: Mapping[str, str], job_uid: str) -> dict[str, Any]:
    """The Secret holding one agent's files, named after its Job and owned by it, so the garbage collector
    deletes it with the Job (Kubernetes docs, concepts/architecture/garbage-collection: ownerReferences)."""
    metadata = job["metadata"]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": metadata["name"], "uid": job_uid}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": dict(metadata.get("labels") or {}),
            "ownerReferences": [owner],
        },
        "data": {name: base64.b64encode(text.encode()).decode() for name, text in files.items()},
    }


def image_template(*, image: str, once: bool = False, docker_socket: str | None = None) -> dict[str, Any]:
    """The job template ado-agent-orchestrator users get from JOB_IMAGE alone: a `register` init
    container and a `run` container sharing the agent's state, or with `once` (an explicit opt-in:
    steps could read the token) one container that does both, as the orchestrator's own Jobs do."""
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    state = {"name": "agent-state", "mountPath": "/azp/state"}
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "args": ["once" if once else "run"],
        "securityContext": security,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "volumeMounts": [] if once else [state],
    }
    pod: dict[str, Any] = {"containers": [container], "restartPolicy": "Never", "volumes": []}
    if not once:
        register = {"name": "register", "image": image, "args": ["register"], "securityContext": security}
        pod["initContainers"] = [register | {"volumeMounts": [state]}]
        pod["volumes"].append({"name": "agent-state", "emptyDir": {}})
    if docker_socket:
        container["volumeMounts"].append({"name": "docker-socket", "mountPath": "/var/run/docker.sock"})
        pod["volumes"].append({"name": "docker-socket", "hostPath": {"path": docker_socket, "type": "Socket"}})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {}, "spec": {"template": {"spec": pod}}}
