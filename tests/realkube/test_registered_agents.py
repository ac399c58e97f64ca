"""We test agent.registration: reconciler against the real API server and controllers: the chart's Role lets
the reconciler create each agent's Secret, the real kubelet rule (a pod waits for its Secret volume) and the
real garbage collector (the Secret goes with the Job that owns it), and agents that come online through the
emulated OAuth flow with the files alone."""

from __future__ import annotations

import time
from pathlib import Path

from control_plane import ControlPlane
from realkube_helpers import api
from release import install

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.kubelet import Kubelet


def test_agents_registered_by_the_reconciler_serve_jobs_and_their_secrets_go_with_their_jobs(
    control_plane: ControlPlane,
    kubelet: Kubelet,
    azdo: AzureDevOpsEmulator,
    organization: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    """We test: three queued jobs succeed on agents the reconciler registered; the only Secrets of the release
    namespace are the reconciler's PAT and one per agent Job, each owned by its Job; once the Jobs are deleted
    the garbage collector of kube-controller-manager deletes those Secrets."""
    pool = f"Pool-{namespace}"
    pool_id = int(azdo.add_pool(pool)["id"])
    values = {
        "pools": [{"name": pool, "maxAgents": 5}],
        "reconciler": {"suspend": True},
        "agent": {"registration": "reconciler"},
    }
    release = install(control_plane, organization, namespace, tmp_path, values)
    assert release.reconcile("--loop-for", "0").returncode == 0
    requests = [azdo.queue_request(pool_id, duration=2.0) for _ in range(3)]
    result = release.reconcile("--loop-for", "30", "--interval", "1", "--idle-interval", "2")
    assert result.returncode == 0, result.stderr
    finished = {r["requestId"]: r.get("result") for r in azdo.requests(pool_id)}
    assert [finished[r] for r in requests] == ["succeeded"] * 3, result.stderr[-3000:]

    jobs = {
        j["metadata"]["name"]: j
        for j in api(control_plane, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    }
    secrets = api(control_plane, "GET", f"/api/v1/namespaces/{namespace}/secrets")["items"]
    agent_secrets = [s for s in secrets if s["metadata"].get("ownerReferences")]
    assert {s["metadata"]["name"] for s in agent_secrets} == set(jobs)
    for secret in agent_secrets:
        [owner] = secret["metadata"]["ownerReferences"]
        assert owner["uid"] == jobs[secret["metadata"]["name"]]["metadata"]["uid"]
        assert set(secret["data"]) == {".agent", ".credentials", ".credentials_rsaparams"}

    for name in jobs:
        api(
            control_plane,
            "DELETE",
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
            propagationPolicy="Background",
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = api(control_plane, "GET", f"/api/v1/namespaces/{namespace}/secrets")["items"]
        if not [s for s in left if s["metadata"].get("ownerReferences")]:
            break
        time.sleep(1)
    else:
        raise AssertionError("the agents' Secrets outlived their Jobs")
