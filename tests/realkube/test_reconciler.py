"""We test: the real `azp-reconciler reconcile`, authenticated as the chart's reconciler
ServiceAccount, against the real API server and controllers: a burst served end to end (Jobs ->
the Job controller's pods -> the simulated kubelet runs them -> agents register, take their jobs and
exit -> the reconciler prunes them), placeholders, a stuck pod, and least privilege as the server
evaluates the chart's Role and RoleBinding."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from check_pod import CheckPods
from control_plane import REPO, ControlPlane
from realkube_helpers import api, run
from release import Release, install

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.kubelet import Kubelet, SimulatedAgents
from reconciler import names

RBAC = json.loads((REPO / "reconciler" / "rbac.json").read_text(encoding="utf-8"))
# What every authenticated user may do (the system:basic-user and system:public-info-viewer roles).
BASIC_USER_RESOURCES = {
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}


def _pool(azdo: AzureDevOpsEmulator, namespace: str) -> tuple[str, int]:
    name = f"Pool-{namespace}"
    return name, int(azdo.add_pool(name)["id"])


def _release(plane: ControlPlane, organization: str, namespace: str, tmp_path: Path, **pool: Any) -> Release:
    values = {"pools": [{"name": f"Pool-{namespace}", "maxAgents": 5} | pool], "reconciler": {"suspend": True}}
    return install(plane, organization, namespace, tmp_path, values)


def _ours(azdo: AzureDevOpsEmulator, pool_id: int) -> list[dict[str, Any]]:
    return [a for a in azdo.agents(pool_id) if str(a["name"]).startswith("azp-") and "placeholder" not in a["name"]]


def test_burst_end_to_end(
    control_plane: ControlPlane,
    kubelet: Kubelet,
    azdo: AzureDevOpsEmulator,
    organization: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    """We test: six queued jobs are all served and succeed; every agent Job's pod was created by the
    real Job controller in a `restricted` namespace and run by the kubelet; at the end no agent of
    ours is online and the finished agents are deregistered."""
    pool, pool_id = _pool(azdo, namespace)
    release = _release(control_plane, organization, namespace, tmp_path)
    # The first pass registers the placeholder; before it, Azure DevOps fails jobs queued to an empty pool.
    assert release.reconcile("--loop-for", "0").returncode == 0
    requests = [azdo.queue_request(pool_id, duration=2.0) for _ in range(6)]
    result = release.reconcile("--loop-for", "40", "--interval", "1", "--idle-interval", "2")
    assert result.returncode == 0, result.stderr
    finished = {r["requestId"]: r.get("result") for r in azdo.requests(pool_id)}
    assert [finished[r] for r in requests] == ["succeeded"] * 6, result.stderr[-3000:]
    jobs = api(control_plane, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    assert len(jobs) >= 6
    assert all(j["status"].get("succeeded") == 1 for j in jobs), [j["status"] for j in jobs]
    assert _ours(azdo, pool_id) == []
    placeholder = names.placeholder_prefix(names.Owner(prefix="azp", release=release.name), pool_name=pool)
    assert any(str(a["name"]).lower().startswith(placeholder) for a in azdo.agents(pool_id)), azdo.agents(pool_id)


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(resource.group, verb) pairs of RBAC rules, as `kubectl auth can-i --list` names them."""
    return {
        (f"{resource}.{group}" if group else resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_least_privilege_as_the_server_evaluates_it(
    control_plane: ControlPlane, kubelet: Kubelet, organization: str, namespace: str, tmp_path: Path
) -> None:
    """We test: `kubectl auth can-i --list` as the chart's reconciler ServiceAccount, in the release
    namespace (which is also the agent and lease namespace here), shows exactly the resource
    permissions of reconciler/rbac.json beyond what every authenticated user has; and the
    ServiceAccount may not read Secrets or touch another namespace's Jobs."""
    release = _release(control_plane, organization, namespace, tmp_path)
    kubeconfig = release.service_account_kubeconfig()
    listed = run("kubectl", "auth", "can-i", "--list", "-n", namespace, kubeconfig=kubeconfig).stdout
    rows = [re.match(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$", line) for line in listed.splitlines()[1:]]
    granted = {
        (row.group(1), verb)
        for row in rows
        if row and row.group(1) and row.group(1) not in BASIC_USER_RESOURCES
        for verb in row.group(4).split()
    }
    assert granted == _granted(RBAC["agentNamespace"] + RBAC["leaseNamespace"]), listed
    for args in (["get", "secrets"], ["create", "jobs.batch", "-n", "default"], ["delete", "pods"]):
        answer = run("kubectl", "auth", "can-i", "-n", namespace, *args, kubeconfig=kubeconfig, check=False)
        assert answer.stdout.strip() == "no", args


def _pods(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api(plane, "GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    return items


def _reconcile_until(release: Release, done: Any, what: str, timeout: float = 60, **pool: Any) -> str:
    """Run passes until done() holds; returns the passes' logs."""
    logs = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = release.reconcile("--loop-for", "0", **pool)
        assert result.returncode == 0, result.stderr
        logs += result.stderr
        if done():
            return logs
        time.sleep(1)
    raise AssertionError(f"{what} not reached in {timeout}s:\n{logs[-3000:]}")


def test_stuck_pod_is_deleted_after_provisioning_timeout(
    control_plane: ControlPlane,
    kubelet: Kubelet,
    check_pods: CheckPods,
    azdo: AzureDevOpsEmulator,
    organization: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    """We test: an agent pod whose registration never ends (init container running) is found stuck
    after provisioningTimeout; its Job is deleted and the real garbage collector removes the pod;
    the queued job is then served by a new agent."""
    agents = check_pods.other
    assert isinstance(agents, SimulatedAgents)
    _, pool_id = _pool(azdo, namespace)
    release = _release(control_plane, organization, namespace, tmp_path, provisioningTimeout=3)
    agents.stall_next = 1
    assert release.reconcile("--loop-for", "0").returncode == 0
    (request,) = [azdo.queue_request(pool_id, duration=1.0)]
    logs = _reconcile_until(
        release,
        lambda: any(r["requestId"] == request and r.get("result") == "succeeded" for r in azdo.requests(pool_id)),
        "the queued job served after the stuck pod",
    )
    assert '"stuck": 1' in logs, logs[-3000:]
    events = api(control_plane, "GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any(e["reason"] == "AgentStuck" for e in events), [e["reason"] for e in events]


def test_idle_agent_is_drained(
    control_plane: ControlPlane,
    kubelet: Kubelet,
    azdo: AzureDevOpsEmulator,
    organization: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    """We test: minIdle 1 brings one idle agent online; with minIdle 0 and past idleTimeout the
    reconciler drains it: the agent is deregistered, its Job deleted and its pod removed by the real
    garbage collector (the kubelet sees the deletion and stops the agent)."""
    _, pool_id = _pool(azdo, namespace)
    release = _release(control_plane, organization, namespace, tmp_path, minIdle=1, idleTimeout=2)
    _reconcile_until(
        release, lambda: any(a["status"] == "online" for a in _ours(azdo, pool_id)), "an idle agent online"
    )
    time.sleep(2.5)
    logs = _reconcile_until(
        release,
        lambda: _ours(azdo, pool_id) == [] and not _pods(control_plane, namespace),
        "the idle agent drained and its pod gone",
        timeout=45,
        minIdle=0,
    )
    assert "drain" in logs
