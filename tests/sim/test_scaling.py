"""We test demand-aware routing, placeholders, safe scale-down and stuck pods end to end (issue 7)."""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from conftest import PAT, WORLD, Sim

from reconciler import names

TWO_TEMPLATES = {
    **WORLD,
    "pools": [
        {
            "name": "linux",
            "maxAgents": 20,
            "provisioningTimeout": 4,
            "idleTimeout": 2,
            "templates": [
                {"name": "linux-docker", "capabilities": {"docker": "", "Agent.OS": "Linux"}},
                {"name": "linux-java", "capabilities": {"java": "17", "Agent.OS": "Linux"}},
            ],
        }
    ],
}

OWNER = names.Owner(prefix="azp", release="azp-agents")


def templates_of(jobs: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        template = job["metadata"]["labels"][names.LABEL_TEMPLATE]
        counts[template] = counts.get(template, 0) + 1
    return counts


def test_two_templates_route_by_demands(make_sim: Any) -> None:
    """We test: 5 docker and 3 java jobs give exactly 5 + 3 Jobs of the right templates; a job demanding
    something no template has is reported and creates nothing."""
    sim: Sim = make_sim(TWO_TEMPLATES)
    first = sim.reconcile()  # registers the placeholders, so demand-matched jobs queue instead of failing
    assert first.code == 0, first.text
    sim.queue("linux", 5, demands=("docker",), duration=60)
    sim.queue("linux", 3, demands=("java -equals 17",), duration=60)
    result = sim.reconcile()
    assert result.code == 0, result.text
    assert templates_of(sim.jobs()) == {"linux-docker": 5, "linux-java": 3}


def test_unroutable_request_is_reported_not_served(make_sim: Any) -> None:
    """We test: a request whose demands match a registered (foreign) agent but no template is reported once
    per pass with its demands and gets no Job."""
    sim: Sim = make_sim(TWO_TEMPLATES)
    sim.azdo.add_agent(sim.pool_ids["linux"], "gpu-box", status="offline", enabled=False, capabilities={"cuda": "12"})
    sim.queue("linux", 1, demands=("cuda",), duration=60)
    result = sim.reconcile()
    assert result.code == 0, result.text
    assert "demands ['cuda'], which no template of the pool satisfies" in result.err
    assert result.err.count("which no template of the pool satisfies") == 1
    assert sim.jobs() == []


def test_placeholder_keeps_demanding_jobs_queued_and_is_recreated(make_sim: Any) -> None:
    """We test: with no agents at all, a job with demands is queued (not failed) because the placeholder
    exists; deleting the placeholder by hand gets it recreated on the next pass."""
    sim: Sim = make_sim(TWO_TEMPLATES)
    assert sim.reconcile().code == 0
    placeholder = names.placeholder_name(OWNER, pool_name="linux", template="linux-java")
    agents = {a["name"]: a for a in sim.agents()}
    assert agents[placeholder]["enabled"] is False and agents[placeholder]["status"] == "offline"
    request_id = sim.queue("linux", 1, demands=("java -equals 17",), duration=60)[0]
    time.sleep(0.3)
    request = next(r for r in sim.requests() if r["requestId"] == request_id)
    assert request.get("result") is None
    # A person deletes the placeholder in the web UI (the same DELETE the UI sends).
    gone = requests.delete(
        f"{sim.simulation.organization_url}/_apis/distributedtask/pools/{sim.pool_ids['linux']}"
        f"/agents/{agents[placeholder]['id']}",
        params={"api-version": "7.1"},
        auth=("", PAT),
        timeout=5,
    )
    assert gone.status_code == 204
    # The next run lists agents when sweepInterval has passed; forget the last scan by deleting the Lease.
    lease = requests.delete(
        f"{sim.simulation.kube_url}/apis/coordination.k8s.io/v1/namespaces/azp-agents/leases/azp-agents-reconciler",
        timeout=5,
    )
    assert lease.status_code == 200
    assert sim.reconcile().code == 0
    assert placeholder in {a["name"] for a in sim.agents()}


def test_stuck_image_pull_is_removed_with_reason(make_sim: Any) -> None:
    """We test: a pod in ImagePullBackOff past provisioningTimeout is deleted and the reason reported
    in the summary and as a Kubernetes Event."""
    world = {**WORLD, "images": {"ghcr.io/azp-agents/agent-linux:broken": "ImagePullBackOff"}}
    world["pools"] = [
        {
            **WORLD["pools"][0],
            "provisioningTimeout": 2,
            "templates": [
                {"name": "default", "image": "ghcr.io/azp-agents/agent-linux:broken", "capabilities": {"docker": ""}}
            ],
        }
    ]
    sim: Sim = make_sim(world)
    sim.queue("linux", 1, demands=("docker",), duration=60)
    assert sim.reconcile().code == 0
    assert len(sim.jobs()) == 1
    time.sleep(2.5)
    result = sim.reconcile("--log-format", "json")
    assert result.code == 0, result.text
    assert '"stuck": 1' in result.err
    assert "ImagePullBackOff" in result.err
    events = sim.kube.objects("events", "azp-agents")
    assert any(e.get("reason") == "AgentStuck" and "ImagePullBackOff" in e.get("message", "") for e in events)


def test_drain_race_reenables_and_keeps_the_job(make_sim: Any) -> None:
    """We test: when a job is assigned to an idle agent between the reconciler's decision and its disable,
    the re-read sees it, the agent is re-enabled, its Job survives and the pipeline job completes."""
    sim: Sim = make_sim(TWO_TEMPLATES)
    pool_id = sim.pool_ids["linux"]
    assert sim.reconcile().code == 0
    sim.queue("linux", 1, demands=("docker",), duration=0.5)
    assert sim.reconcile().code == 0
    sim.wait_for(lambda: not sim.requests(unfinished_only=True), timeout=20, what="the first job")
    # A standby-like idle agent: start a Job whose agent stays online and idle past idleTimeout.
    config = sim.config()
    config["pools"][0]["templates"][0]["minIdle"] = 1
    sim.write_config(config)
    assert sim.reconcile().code == 0
    sim.wait_for(lambda: any(a.get("status") == "online" for a in sim.agents()), timeout=10, what="an idle agent")
    config["pools"][0]["templates"][0]["minIdle"] = 0
    sim.write_config(config)
    time.sleep(2.5)  # past idleTimeout
    # During the reconciler's PATCH (held back by a delay), a job arrives and is assigned to the idle agent.
    sim.azdo.inject_fault("PATCH", "pools/{poolId}/agents/{agentId}", kind="delay", delay=1.0, times=1)

    listed = sim.azdo.call_counts().get("GET pools/{poolId}/agents", 0)

    def queue_soon() -> None:
        # Right after the reconciler read the agents (and decided to drain), a job arrives.
        deadline = time.monotonic() + 20
        while sim.azdo.call_counts().get("GET pools/{poolId}/agents", 0) == listed and time.monotonic() < deadline:
            time.sleep(0.01)
        # Long enough to be still running when the reconciler re-reads the agent after its delayed PATCH.
        sim.azdo.queue_request(pool_id, demands=("docker",), duration=5.0)

    threading.Thread(target=queue_soon, daemon=True).start()
    before = {j["metadata"]["name"] for j in sim.jobs(active_only=True)}
    result = sim.reconcile("--log-format", "json")
    assert result.code == 0, result.text
    assert "while draining: re-enabled, its Job stays" in result.err
    assert before <= {j["metadata"]["name"] for j in sim.jobs()}
    sim.wait_for(lambda: not sim.requests(unfinished_only=True), timeout=20, what="the raced job to finish")
    assert all(r.get("result") == "succeeded" for r in sim.requests())
    assert sim.azdo.stats.jobs_aborted_by_agent_loss == 0
