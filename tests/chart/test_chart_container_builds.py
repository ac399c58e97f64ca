"""We test the container-build option agent.buildkit of the built-in Linux template (issue 18): the rootless
BuildKit sidecar as moby/buildkit's own Kubernetes examples run it, BUILDKIT_HOST pointing at it, the Job the
reconciler builds from it (the sidecar gets nothing of the registration), the Pod Security level of the
namespaces it needs, and the values example. Admission by a real API server: tests/realkube."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from chart_helpers import (
    CHART,
    REPO,
    helm_template,
    job_templates_of,
    only,
    render_chart,
    render_example,
    with_defaults,
)
from chart_reconciler import agent_jobs

SHOW = ["templates/reconciler-configmap.yaml"]
EXAMPLE = REPO / "values" / "container-builds.yaml"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def _pod(**agent: Any) -> dict[str, Any]:
    template = job_templates_of(render_chart(with_defaults(agent=agent), show_only=SHOW))["linux"]
    pod: dict[str, Any] = template["spec"]["template"]["spec"]
    return pod


def _sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod.get("initContainers") or [] if c["name"] == "buildkitd")


def test_buildkit_is_off_by_default() -> None:
    """We test: no sidecar, no BUILDKIT_HOST and no BuildKit volume unless agent.buildkit.enabled."""
    pod = _pod()
    assert [c["name"] for c in pod["initContainers"]] == ["register"]
    assert "env" not in pod["containers"][0]
    assert "buildkit-state" not in {v["name"] for v in pod["volumes"]}


def test_buildkit_sidecar_is_rootless_buildkit_as_its_docs_run_it() -> None:
    """We test: a native sidecar (after `register`, restartPolicy Always) running the pinned rootless image
    with --oci-worker-no-process-sandbox on the pod's loopback, as uid 1000 with seccomp and AppArmor
    Unconfined, never privileged, its state in an emptyDir at the path the image declares, started only
    when `buildctl debug workers` answers; the agent container's BUILDKIT_HOST is that address."""
    pod = _pod(buildkit={"enabled": True, "stateSizeLimit": "30Gi"}, extraEnv=[{"name": "A", "value": "1"}])
    assert [c["name"] for c in pod["initContainers"]] == ["register", "buildkitd"]
    sidecar = _sidecar(pod)
    assert sidecar["image"] == f"moby/buildkit:{VALUES['agent']['buildkit']['image']['tag']}"
    assert sidecar["image"].endswith("-rootless")
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["--addr", "tcp://127.0.0.1:1234", "--oci-worker-no-process-sandbox"]
    probe = sidecar["startupProbe"]["exec"]["command"]
    assert probe == ["buildctl", "--addr", "tcp://127.0.0.1:1234", "debug", "workers"]
    assert sidecar["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
    }
    assert sidecar["volumeMounts"] == [{"name": "buildkit-state", "mountPath": "/home/user/.local/share/buildkit"}]
    assert {"name": "buildkit-state", "emptyDir": {"sizeLimit": "30Gi"}} in pod["volumes"]
    assert pod["containers"][0]["env"] == [
        {"name": "A", "value": "1"},
        {"name": "BUILDKIT_HOST", "value": "tcp://127.0.0.1:1234"},
    ]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_buildkit_port_moves_daemon_probe_and_client_together() -> None:
    """We test: agent.buildkit.port changes the listening address, the probe and BUILDKIT_HOST alike."""
    pod = _pod(buildkit={"enabled": True, "port": 7777})
    addresses = {a for a in _sidecar(pod)["args"] if a.startswith("tcp://")}
    addresses |= {a for a in _sidecar(pod)["startupProbe"]["exec"]["command"] if a.startswith("tcp://")}
    addresses |= {e["value"] for e in pod["containers"][0]["env"] if e["name"] == "BUILDKIT_HOST"}
    assert addresses == {"tcp://127.0.0.1:7777"}


def test_buildkit_in_once_mode_is_the_only_init_container() -> None:
    """We test: in `once` mode (no register init container) the sidecar still runs beside the agent."""
    pod = _pod(mode="once", allowTokenInAgentContainer=True, buildkit={"enabled": True})
    assert [c["name"] for c in pod["initContainers"]] == ["buildkitd"]


def test_reconciler_job_gives_the_sidecar_nothing_of_the_agent(tmp_path: Path) -> None:
    """We test: in the Job the reconciler builds from the example, the sidecar is kept as written and gets
    no AZP_* variable and no volume but its own state; the token volume goes to `register` only."""
    (job,) = agent_jobs(render_example(EXAMPLE), tmp_path)
    pod = job["spec"]["template"]["spec"]
    sidecar = _sidecar(pod)
    assert not [e for e in sidecar.get("env") or [] if e["name"].startswith(("AZP_", "VSTS_"))]
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["buildkit-state"]
    register = next(c for c in pod["initContainers"] if c["name"] == "register")
    assert any(e["name"] == "AZP_TOKEN_FILE" for e in register["env"])
    assert job["metadata"]["namespace"] == "azp-builds"


def test_example_creates_a_privileged_namespace_and_keeps_the_release_one_restricted() -> None:
    """We test: values/container-builds.yaml puts agents in a namespace the chart labels Pod Security
    `privileged` (baseline refuses Unconfined profiles), while the release's own pods stay `restricted`
    (the CronJob's pod: RuntimeDefault, non-root, no capabilities)."""
    objects = render_example(EXAMPLE)
    labels = only(objects, "Namespace", "azp-builds")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "privileged"
    cron = only(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_buildkit_needs_kubernetes_1_30() -> None:
    """We test: on a cluster older than 1.30 (no appArmorProfile field; native sidecars on by default since
    1.29) the chart refuses agent.buildkit.enabled and says what to do; 1.30 renders."""
    values = with_defaults(agent={"buildkit": {"enabled": True}})
    code, _, error = helm_template(values=values, extra_args=["--kube-version", "1.29.4"])
    assert code != 0
    assert re.search(r"agent\.buildkit\.enabled: needs Kubernetes 1\.30 or later.*v1\.29\.4", error), error
    code, _, error = helm_template(values=values, extra_args=["--kube-version", "1.30.0"])
    assert code == 0, error


def test_agent_image_buildctl_matches_the_sidecar() -> None:
    """We test: the agent image's pinned buildctl (checksums for amd64 and arm64) is the version of the
    chart's BuildKit image, so client and daemon speak the same protocol."""
    dockerfile = (REPO / "agent-images" / "linux" / "Dockerfile").read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (BUILDKIT_[A-Z0-9_]+)=(\S+)$", dockerfile, flags=re.MULTILINE))
    tag = VALUES["agent"]["buildkit"]["image"]["tag"]
    assert tag == f"v{args['BUILDKIT_VERSION']}-rootless"
    assert re.fullmatch(r"[0-9a-f]{64}", args["BUILDKIT_SHA256"])
    assert re.fullmatch(r"[0-9a-f]{64}", args["BUILDKIT_SHA256_ARM64"])
    assert "sha256sum -c -" in dockerfile and "/usr/local/bin/buildctl" in dockerfile


def test_buildkit_sidecar_pulls_through_the_proxy_with_the_ca_bundle() -> None:
    """We test: behind proxy.url (credentials from proxy.existingSecret) and with caBundle, buildkitd, which
    pulls base images itself, gets HTTPS_PROXY with the credentials defined before it (Kubernetes expands
    only earlier variables), NO_PROXY with the pod's loopback, and SSL_CERT_FILE on the mounted bundle."""
    values = with_defaults(
        agent={"buildkit": {"enabled": True}},
        proxy={"url": "http://proxy.example.com:3128", "existingSecret": "proxy-credentials"},
        caBundle={"configMap": "corporate-ca"},
    )
    template = job_templates_of(render_chart(values, show_only=SHOW))["linux"]
    sidecar = _sidecar(template["spec"]["template"]["spec"])
    names = [e["name"] for e in sidecar["env"]]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["HTTPS_PROXY"] == "http://$(AZP_PROXY_USERNAME):$(AZP_PROXY_PASSWORD)@proxy.example.com:3128"
    assert names.index("AZP_PROXY_USERNAME") < names.index("HTTPS_PROXY")
    assert "127.0.0.1" in env["NO_PROXY"].split(",")
    assert env["SSL_CERT_FILE"] == "/etc/azp-agents/ca/ca.crt"
    assert {"name": "azp-ca-bundle", "mountPath": "/etc/azp-agents/ca", "readOnly": True} in sidecar["volumeMounts"]
