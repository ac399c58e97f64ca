"""Turn a user's job.yaml into the Job for one agent, without text templating of YAML.

The template is parsed, checked (a batch/v1 Job, a Pod or a bare pod template), and then changed
as data: our name, namespace, labels and annotations, `restartPolicy: Never`, `backoffLimit: 0`,
`ttlSecondsAfterFinished`, the AZP_* environment and the registration token as a Secret volume.
Only a fixed set of `${NAME}` variables is substituted in string values; anything else is kept.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from reconciler import names
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
_TOKEN_ENV_NAMES = ("AZP_TOKEN", "ORG_PAT", "VSTS_AGENT_INPUT_TOKEN")


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
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def check_policy(job: Mapping[str, Any], *, policy: PodPolicy, key: str, source: str) -> None:
    """Refuse templates that ask for more than the pod policy allows, or carry a token literal."""
    pod = job["spec"]["template"]["spec"]
    where = f"{source}: {key}"
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
        for env in container.get("env", []) or []:
            if env.get("name") in _TOKEN_ENV_NAMES and "value" in env:
                raise ConfigError(
                    f"{where}: container {container.get('name')!r} sets {env['name']} as a literal: remove it; "
                    "the reconciler gives agents the token from a Secret"
                )


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
    env = container.setdefault("env", [])
    declared = {e.get("name") for e in env}
    env.extend(e for e in entries if e["name"] not in declared)


def render_job(
    *,
    config: Config,
    pool: PoolConfig,
    template: TemplateConfig,
    job_template: Mapping[str, Any],
    job_name: str,
    request_id: int | None,
    demands: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The Job that runs one agent of `template` in `pool`: the user's template plus what we own."""
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
    }
    if request_id is None:
        labels[names.LABEL_STANDBY] = "true"
    else:
        labels[names.LABEL_REQUEST_ID] = str(request_id)
    annotations = {names.ANNOTATION_POOL_NAME: pool.name}
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
    pod = pod_template["spec"]
    pod["restartPolicy"] = "Never"
    pod.setdefault("automountServiceAccountToken", False)

    agent_env: list[dict[str, Any]] = [
        {"name": "AZP_URL", "value": config.organization},
        {"name": "AZP_POOL", "value": pool.name},
        {"name": "AZP_TEMPLATE", "value": template.name},
        {"name": "AZP_AGENT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    for container in _containers(pod):
        _add_env(container, agent_env)

    volumes = pod.setdefault("volumes", [])
    if not any(v.get("name") == TOKEN_VOLUME for v in volumes):
        volumes.append(
            {
                "name": TOKEN_VOLUME,
                "secret": {
                    "secretName": config.agent_secret_name,
                    "items": [{"key": config.agent_secret_key, "path": "token"}],
                    "defaultMode": 0o440,
                },
            }
        )
    # Only the container that registers the agent sees the token; the one running steps never does.
    registrars = pod.get("initContainers") or pod["containers"]
    for container in registrars:
        mounts = container.setdefault("volumeMounts", [])
        if not any(m.get("name") == TOKEN_VOLUME for m in mounts):
            mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
        _add_env(container, [{"name": "AZP_TOKEN_FILE", "value": TOKEN_FILE}])
    return job


def single_container_template(*, image: str, docker_socket: str | None = None) -> dict[str, Any]:
    """The job template ado-agent-orchestrator users get from JOB_IMAGE alone: one `once` container."""
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "args": ["once"],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    }
    pod: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if docker_socket:
        container["volumeMounts"] = [{"name": "docker-socket", "mountPath": "/var/run/docker.sock"}]
        pod["volumes"] = [{"name": "docker-socket", "hostPath": {"path": docker_socket, "type": "Socket"}}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {}, "spec": {"template": {"spec": pod}}}
