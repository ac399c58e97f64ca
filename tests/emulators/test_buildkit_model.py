"""We test the simulated world's model of container builds (azp_simulation/container_builds.py): a build
step in the agent container reaches a BuildKit daemon of its pod, and the daemon works only with what
BuildKit's rootless docs demand. The pods here follow moby/buildkit's examples/kubernetes, not the chart."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from azp_simulation import agent_images
from azp_simulation.container_builds import run_step

AGENT = "ghcr.io/azp-agents/agent-linux:4.269.0"
DOCKER_CLI = "ghcr.io/azp-agents/agent-linux:4.269.0-docker-cli"
TCP = "tcp://127.0.0.1:1234"


def lookup(image: str) -> agent_images.ImageEntry | None:
    return agent_images.lookup(agent_images.BUILT_IN, image)


def _pod(**sidecar: Any) -> dict[str, Any]:
    """An agent pod (uid 10001, RuntimeDefault seccomp) with BuildKit's rootless example as a native sidecar."""
    buildkitd = {
        "name": "buildkitd",
        "image": "moby/buildkit:v0.32.2-rootless",
        "restartPolicy": "Always",
        "args": ["--addr", "tcp://0.0.0.0:1234", "--oci-worker-no-process-sandbox"],
        "securityContext": {
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
            "runAsUser": 1000,
            "runAsGroup": 1000,
        },
    }
    for key, value in sidecar.items():
        if value is None:
            buildkitd.pop(key, None)
        else:
            buildkitd[key] = value
    return {
        "metadata": {"name": "agent-1", "annotations": {}},
        "spec": {
            "securityContext": {"runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [buildkitd],
            "containers": [{"name": "agent", "image": AGENT}],
        },
    }


def _run(pod: dict[str, Any], step: str = "buildctl-build", env: dict[str, str] | None = None) -> str:
    runner = pod["spec"]["containers"][0]
    return run_step(step, pod=pod, runner=runner, env={"BUILDKIT_HOST": TCP} if env is None else env, lookup=lookup)


def _context(**changes: Any) -> dict[str, Any]:
    context = copy.deepcopy(_pod()["spec"]["initContainers"][0]["securityContext"])
    for key, value in changes.items():
        if value is None:
            context.pop(key)
        else:
            context[key] = value
    return context


def test_rootless_sidecar_on_loopback_builds() -> None:
    """We test: buildctl in the agent container reaches the rootless sidecar over the pod's loopback."""
    assert _run(_pod()) == ""


@pytest.mark.parametrize(
    ("sidecar", "printed"),
    [
        ({"securityContext": _context(seccompProfile=None)}, "unshare: operation not permitted"),
        ({"securityContext": _context(appArmorProfile=None)}, "failed to share mount point"),
        ({"securityContext": _context(runAsUser=None)}, "uid 10001 has no /etc/subuid entry"),
        ({"securityContext": _context(allowPrivilegeEscalation=False)}, "write to uid_map failed"),
        ({"securityContext": _context(capabilities={"drop": ["ALL"]})}, "write to uid_map failed"),
        ({"args": ["--addr", "tcp://0.0.0.0:1234"]}, "mount proc:/proc"),
        ({"args": ["--addr", "tcp://0.0.0.0:4321", "--oci-worker-no-process-sandbox"]}, "connection refused"),
        ({"args": ["--oci-worker-no-process-sandbox"]}, "connection refused"),
        ({"image": "moby/buildkit:v0.32.2"}, "needs privileged"),
        ({"command": ["sleep", "infinity"]}, "connection refused"),
    ],
    ids=[
        "seccomp-inherited-runtime-default",
        "apparmor-runtime-default",
        "uid-inherited-10001",
        "no-new-privs",
        "capabilities-dropped",
        "process-sandbox",
        "other-port",
        "default-unix-socket-only",
        "root-image-unprivileged",
        "entrypoint-replaced",
    ],
)
def test_what_rootless_buildkit_needs(sidecar: dict[str, Any], printed: str) -> None:
    """We test: each requirement of BuildKit's rootless docs, missing, fails the step with what the tools print
    (the pod's RuntimeDefault seccomp and uid 10001 reach a sidecar that does not set its own)."""
    assert printed in _run(_pod(**sidecar))


def test_privileged_and_pre_1_30_annotation_also_work() -> None:
    """We test: `privileged` lifts every rootless requirement (BuildKit: "almost safe for rootless"), the root
    image works privileged, and the AppArmor annotation Kubernetes used before 1.30 counts as Unconfined."""
    assert _run(_pod(securityContext={"privileged": True, "runAsUser": 1000})) == ""
    assert _run(_pod(image="moby/buildkit:v0.32.2", securityContext={"privileged": True})) == ""
    pod = _pod(securityContext=_context(appArmorProfile=None))
    pod["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/buildkitd"] = "unconfined"
    assert _run(pod) == ""


def test_unix_socket_needs_a_volume_both_containers_mount() -> None:
    """We test: a unix socket address works when the agent mounts the sidecar's socket directory (an
    emptyDir), and is refused when only the sidecar has it; the default socket when BUILDKIT_HOST is unset."""
    socket = "unix:///run/buildkit/buildkitd.sock"
    pod = _pod(args=["--addr", socket, "--oci-worker-no-process-sandbox"])
    pod["spec"]["initContainers"][0]["volumeMounts"] = [{"name": "sock", "mountPath": "/run/buildkit"}]
    assert "connection refused" in _run(pod, env={"BUILDKIT_HOST": socket})
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "sock", "mountPath": "/run/buildkit"}]
    assert _run(pod, env={"BUILDKIT_HOST": socket}) == ""
    assert _run(pod, env={}) == ""


def test_clients_come_from_the_agent_image() -> None:
    """We test: `docker buildx` needs the docker-cli image and a remote endpoint; an address outside the pod
    finds nothing here (not emulated); every Linux agent image has buildctl."""
    assert _run(_pod(), step="docker-buildx-build") == "docker: command not found"
    pod = _pod()
    pod["spec"]["containers"][0]["image"] = DOCKER_CLI
    assert _run(pod, step="docker-buildx-build") == ""
    assert "endpoint is required" in _run(pod, step="docker-buildx-build", env={})
    assert "connection refused" in _run(pod, env={"BUILDKIT_HOST": "tcp://buildkitd.builds.svc:1234"})
    pod["spec"]["containers"][0]["image"] = "ubuntu:24.04"
    assert _run(pod) == "buildctl: command not found"
