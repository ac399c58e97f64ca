"""We test the Pod Security level the chart states for agent.buildkit, against the real API server's
PodSecurity admission: the agent pod the reconciler builds from values/container-builds.yaml is refused
under `baseline` (and so `restricted`) for its sidecar's Unconfined seccomp and AppArmor profiles, and
admitted under `privileged`, the level the chart labels its namespaces with; the default template's pod is
admitted under `restricted`. The Kubernetes emulator's Pod Security admission answers these pods alike."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from chart_helpers import REPO, base_values_for, render_chart
from chart_reconciler import agent_jobs
from control_plane import ControlPlane
from realkube_helpers import SERVER_VERSION, api, create_namespace, pod_security_labels

from azp_simulation.kube_emulator import KubernetesEmulator
from azp_simulation.kubelet import ServerError

_names = itertools.count(1)


def _agent_pod(example: str, tmp_path: Path) -> dict[str, Any]:
    """The pod of the agent Job the reconciler would create from the example, as a Pod object."""
    path = REPO / "values" / example
    (job,) = agent_jobs(render_chart(base_values_for(path), values_files=[path]), tmp_path)
    template = job["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent"}, "spec": template["spec"]}


def _admit(plane: ControlPlane, pod: dict[str, Any], level: str) -> None:
    """Create the pod (server-side dry run) in a fresh namespace enforcing `level`, with its ServiceAccount."""
    namespace = create_namespace(plane, f"rk-psa-{level}-{next(_names)}", level)
    try:
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": pod["spec"]["serviceAccountName"]},
        }
        api(plane, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", account)
        api(plane, "POST", f"/api/v1/namespaces/{namespace}/pods", pod, dryRun="All")
    finally:
        plane.server.session().delete(f"{plane.url}/api/v1/namespaces/{namespace}", timeout=30)


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_buildkit_pod_is_refused_below_privileged(control_plane: ControlPlane, level: str, tmp_path: Path) -> None:
    """We test: `baseline` and `restricted` refuse the BuildKit agent pod, naming the sidecar's profiles."""
    with pytest.raises(ServerError) as refused:
        _admit(control_plane, _agent_pod("container-builds.yaml", tmp_path), level)
    assert refused.value.status == 403
    message = str(refused.value)
    assert f'violates PodSecurity \\"{level}:latest\\"' in message, message
    assert 'container \\"buildkitd\\" must not set securityContext.seccompProfile.type to \\"Unconfined\\"' in message
    assert 'container \\"buildkitd\\" must not set AppArmor profile type to \\"Unconfined\\"' in message, message


def test_buildkit_pod_is_admitted_at_privileged(control_plane: ControlPlane, tmp_path: Path) -> None:
    """We test: `privileged`, the level the chart states and sets, admits the BuildKit agent pod."""
    _admit(control_plane, _agent_pod("container-builds.yaml", tmp_path), "privileged")


def test_default_agent_pod_is_admitted_at_restricted(control_plane: ControlPlane, tmp_path: Path) -> None:
    """We test: without container builds the agent pod passes `restricted` (the level the chart keeps)."""
    _admit(control_plane, _agent_pod("minimal.yaml", tmp_path), "restricted")


def _answer(response_status: int, text: str) -> tuple[int, str]:
    """Status and Status message of an answer ("" for an admitted pod)."""
    return response_status, json.loads(text).get("message", "") if response_status >= 400 else ""


@pytest.mark.parametrize(
    ("example", "level"),
    [("container-builds.yaml", "baseline"), ("container-builds.yaml", "restricted"),
     ("container-builds.yaml", "privileged"), ("minimal.yaml", "restricted")],
)  # fmt: skip
def test_emulator_admits_the_chart_pods_like_the_real_server(
    control_plane: ControlPlane, example: str, level: str, tmp_path: Path
) -> None:
    """We test: the emulator's Pod Security admission gives the chart's agent pod the real server's answer
    (status and message) at each level."""
    pod = _agent_pod(example, tmp_path)
    try:
        _admit(control_plane, pod, level)
        real = (201, "")
    except ServerError as error:
        real = _answer(error.status, str(error).split(": ", 1)[1])
    kube = KubernetesEmulator(auto_tick=False, validate_version=SERVER_VERSION)
    kube.start()
    try:
        kube.add_namespace("psa", labels=pod_security_labels(level))
        response = requests.post(f"{kube.base_url}/api/v1/namespaces/psa/pods?dryRun=All", json=pod, timeout=10)
        assert _answer(response.status_code, response.text) == real
    finally:
        kube.stop()
