"""We test the built-in Linux job template stored in the ConfigMap: register init container plus agent
container sharing /azp/state, the agent ServiceAccount without a token, the security context, cache
mounts, the risky opt-ins, `once` mode, and user templates keeping their content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import (
    REPO,
    config_of,
    helm_template,
    job_templates_of,
    only,
    parse_documents,
    render_chart,
    render_failure,
    with_defaults,
)
from chart_reconciler import agent_jobs

from reconciler import render

AGENT_VERSION = json.loads((REPO / "agent-images" / "agent-version.json").read_text(encoding="utf-8"))["version"]
SHOW = ["templates/reconciler-configmap.yaml"]


def _template(name: str = "linux", **overrides: Any) -> dict[str, Any]:
    return job_templates_of(render_chart(with_defaults(**overrides), show_only=SHOW))[name]


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def test_split_mode_registers_in_an_init_container() -> None:
    """We test: `register` init container and `run` agent container share the agent-state emptyDir."""
    job = _template()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = _pod(job)
    (register,) = pod["initContainers"]
    (agent,) = pod["containers"]
    assert (register["name"], register["args"]) == ("register", ["register"])
    assert (agent["name"], agent["args"]) == ("agent", ["run"])
    assert register["image"] == agent["image"] == f"ghcr.io/azp-agents/agent-linux:{AGENT_VERSION}"
    state = {"name": "agent-state", "mountPath": "/azp/state"}
    assert state in register["volumeMounts"] and state in agent["volumeMounts"]
    # The state holds the agent's private key: in memory, as agent-images/README.md says.
    assert {"name": "agent-state", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}} in pod["volumes"]
    assert pod["restartPolicy"] == "Never"


def test_agent_pods_have_no_api_token_and_run_as_agent_user() -> None:
    """We test: agent ServiceAccount, no token, uid/gid 10001, no escalation, all capabilities dropped."""
    pod = _pod(_template())
    assert pod["serviceAccountName"] == "azp-agents-agent"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"]


def test_no_token_or_secret_in_the_template() -> None:
    """We test: the template carries no token: the reconciler injects the Secret volume at run time."""
    pod = _pod(_template())
    assert not [v for v in pod["volumes"] if "secret" in v]
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert not [e for e in container.get("env", []) if "TOKEN" in e["name"] or "PAT" in e["name"]]


def test_reconciler_puts_the_token_only_in_the_init_container(tmp_path: Path) -> None:
    """We test: after the reconciler renders it, only `register` mounts the token; `agent` never does."""
    (job,) = agent_jobs(render_chart(with_defaults()), tmp_path)
    pod = _pod(job)
    (register,) = pod["initContainers"]
    (agent,) = pod["containers"]
    assert {"name": "AZP_TOKEN_FILE", "value": render.TOKEN_FILE} in register["env"]
    assert render.TOKEN_VOLUME in {m["name"] for m in register["volumeMounts"]}
    assert render.TOKEN_VOLUME not in {m["name"] for m in agent["volumeMounts"]}
    assert "AZP_TOKEN_FILE" not in {e["name"] for e in agent.get("env", [])}
    token = next(v for v in pod["volumes"] if v["name"] == render.TOKEN_VOLUME)
    assert token["secret"]["secretName"] == "azp-agents-pat"
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "azp-agents"


def test_once_mode_is_a_single_container_and_needs_the_opt_in(tmp_path: Path) -> None:
    """We test: agent.mode=once gives one `once` container, which then receives the token, only with
    agent.allowTokenInAgentContainer (passed to the config, warned about in NOTES); without it helm fails
    naming both keys."""
    once = {"mode": "once", "allowTokenInAgentContainer": True}
    pod = _pod(_template(agent=once))
    assert "initContainers" not in pod
    assert pod["containers"][0]["args"] == ["once"]
    objects = render_chart(with_defaults(agent=once))
    assert config_of(objects)["allowTokenInAgentContainer"] is True
    (job,) = agent_jobs(objects, tmp_path)
    assert {"name": "AZP_TOKEN_FILE", "value": render.TOKEN_FILE} in _pod(job)["containers"][0]["env"]
    error = render_failure(with_defaults(agent={"mode": "once"}))
    assert "agent.mode=once" in error and "agent.allowTokenInAgentContainer=true" in error
    assert "allowTokenInAgentContainer" not in config_of(render_chart(with_defaults()))


def test_caches_are_mounted_where_the_tools_look() -> None:
    """We test: each enabled cache claim is mounted at its path; disabled ones are absent."""
    caches = {
        "tasks": {"enabled": True},
        "tool": {"enabled": True},
        "npm": {"enabled": True},
        "nuget": {"enabled": False},
        "maven": {"enabled": True, "existingClaim": "shared-m2"},
    }
    pod = _pod(_template(caches=caches))
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["cache-tasks"] == "/azp/_work/_tasks"
    assert mounts["cache-tool"] == "/azp/_work/_tool"
    assert mounts["cache-npm"] == "/home/agent/.npm"
    assert mounts["cache-maven"] == "/home/agent/.m2/repository"
    assert "cache-nuget" not in mounts
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {
        "cache-tasks": "azp-agents-cache-tasks",
        "cache-tool": "azp-agents-cache-tool",
        "cache-npm": "azp-agents-cache-npm",
        "cache-maven": "shared-m2",
    }


def test_docker_socket_is_opt_in() -> None:
    """We test: no hostPath by default; agent.dockerSocket.enabled mounts the socket from the node and gives
    the pod the socket's group (root:docker 0660 on the node), so the agent user can open it."""
    pod = _pod(_template())
    assert not [v for v in pod["volumes"] if "hostPath" in v]
    assert "supplementalGroups" not in pod["securityContext"]
    pod = _pod(_template(agent={"dockerSocket": {"enabled": True, "path": "/run/docker.sock", "groupId": 998}}))
    assert {"name": "docker-socket", "hostPath": {"path": "/run/docker.sock", "type": "Socket"}} in pod["volumes"]
    assert {"name": "docker-socket", "mountPath": "/var/run/docker.sock"} in pod["containers"][0]["volumeMounts"]
    assert pod["securityContext"]["supplementalGroups"] == [998]


def test_privileged_is_opt_in() -> None:
    """We test: agent.privileged makes only the agent container privileged, and root with the variable the
    agent's config.sh and run.sh demand before they run as root (AGENT_ALLOW_RUNASROOT)."""
    pod = _pod(_template(agent={"privileged": True, "extraEnv": [{"name": "A", "value": "1"}]}))
    agent = pod["containers"][0]
    assert agent["securityContext"]["privileged"] is True
    assert agent["securityContext"]["runAsUser"] == 0 and agent["securityContext"]["runAsNonRoot"] is False
    assert agent["env"] == [{"name": "A", "value": "1"}, {"name": "AGENT_ALLOW_RUNASROOT", "value": "1"}]
    assert "privileged" not in pod["initContainers"][0]["securityContext"]
    assert pod["initContainers"][0]["securityContext"]["runAsNonRoot"] is True


def test_agent_settings_reach_the_template() -> None:
    """We test: image, resources, env, scheduling and deadlines of `agent.*` are used."""
    pod = _pod(
        _template(
            agent={
                "image": {"repository": "r.example/agent", "tag": "7"},
                "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
                "tolerations": [{"key": "ci", "operator": "Exists"}],
                "activeDeadlineSeconds": 7200,
                "workSizeLimit": "50Gi",
                "priorityClassName": "ci",
            },
            imagePullSecrets=["regcred", {"name": "mirror"}],
        )
    )
    agent = pod["containers"][0]
    assert agent["image"] == "r.example/agent:7"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in agent["env"]
    assert pod["tolerations"] == [{"key": "ci", "operator": "Exists"}]
    assert pod["activeDeadlineSeconds"] == 7200
    assert pod["priorityClassName"] == "ci"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert {"name": "work", "emptyDir": {"sizeLimit": "50Gi"}} in pod["volumes"]


def test_user_templates_keep_their_content() -> None:
    """We test: a string template and an inline map are stored as the same objects, plus only the pod
    settings they did not set (the agent ServiceAccount and node selector here); `${VAR}`s are kept."""
    text = (
        "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n"
        "        - name: agent\n          image: my/agent:1\n          args: ['${AZP_POOL}']\n\n"
    )
    inline = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "x"}], "nodeSelector": {}}}},
    }
    objects = render_chart(with_defaults(jobTemplates={"linux": "", "custom": text, "inline": inline}), show_only=SHOW)
    data = only(objects, "ConfigMap")["data"]
    defaults = {"serviceAccountName": "azp-agents-agent", "nodeSelector": {"kubernetes.io/os": "linux"}}
    custom = yaml.safe_load(text)
    custom["spec"]["template"]["spec"].update(defaults)
    assert yaml.safe_load(data["custom.yaml"]) == custom
    inline["spec"]["template"]["spec"]["serviceAccountName"] = "azp-agents-agent"  # its own nodeSelector stays
    assert yaml.safe_load(data["inline.yaml"]) == inline


def test_set_file_gives_a_template(tmp_path: Path, helm: str) -> None:
    """We test: `--set-file jobTemplates.linux=job.yaml` (the README's way) stores that file as the template."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n"
        "        - name: agent\n          image: registry.example/agent:2\n",
        encoding="utf-8",
    )
    code, stdout, stderr = helm_template(
        values=with_defaults(), helm=helm, extra_args=["--set-file", f"jobTemplates.linux={job_file}"]
    )
    assert code == 0, stderr
    template = job_templates_of(parse_documents(stdout))["linux"]
    assert template["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/agent:2"


@pytest.mark.parametrize("mode", ["split", "once"])
def test_agents_registered_by_the_reconciler_get_their_files_and_no_pat(tmp_path: Path, mode: str) -> None:
    """We test: with agent.registration reconciler the Job the reconciler makes from the chart's template mounts
    the agent's own Secret (named after the Job) at AZP_AGENT_FILES in the container that sets the agent up (the
    register init container, or the single container in mode once, which needs no allowTokenInAgentContainer
    there: it gets no PAT), and names no PAT Secret anywhere."""
    objects = render_chart(with_defaults(agent={"registration": "reconciler", "mode": mode}))
    (job,) = agent_jobs(objects, tmp_path)
    pod = _pod(job)
    setup = (pod.get("initContainers") or pod["containers"])[0]
    assert {"name": "AZP_AGENT_FILES", "value": render.AGENT_FILES_DIR} in setup["env"]
    files = {v["name"]: v for v in pod["volumes"]}[render.AGENT_FILES_VOLUME]
    assert files["secret"]["secretName"] == job["metadata"]["name"]
    text = json.dumps(job)
    assert "azp-agents-pat" not in text and "AZP_TOKEN_FILE" not in text
