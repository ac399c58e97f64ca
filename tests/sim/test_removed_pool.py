"""Simulation test of a pool removed from the configuration (issue 20 item 6): the next pass cleans it as
`azp-reconciler cleanup` cleans a release, knowing the pool only from the cluster and the organization."""

from __future__ import annotations

from typing import Any

from conftest import WORLD, Sim

from reconciler import names

BROKEN = "ghcr.io/azp-agents/agent-linux:missing"
OWNER = names.Owner("azp", "azp-agents")
GONE: dict[str, Any] = {
    "name": "gone",
    "maxAgents": 4,
    "provisioningTimeout": 600,
    "idleTimeout": 600,
    "templates": [
        {"name": "default", "capabilities": {"docker": ""}, "minIdle": 1},
        {"name": "java", "capabilities": {"java": "17"}},
        {"name": "broken", "capabilities": {"broken": ""}, "image": BROKEN, "minIdle": 1, "placeholder": False},
    ],
}


def _agents(sim: Sim) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in sim.agents("gone")}


def _jobs(sim: Sim) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["name"]: j for j in sim.jobs() if not j["metadata"].get("deletionTimestamp")}


def _set_up(sim: Sim) -> tuple[int, str]:
    """Pool gone with an idle standby agent, a standby Job whose image cannot be pulled, and a Job whose
    agent runs a pipeline job; returns that request and that Job."""
    [request] = sim.queue("gone", demands=("java",), duration=45)
    assert sim.reconcile().code == 0
    busy = names.request_job_name(OWNER, pool_name="gone", request_id=request)
    idle = names.standby_job_name(OWNER, pool_name="gone", template="default", slot=0)

    def ready() -> bool:
        agents = _agents(sim).values()
        running = any(a["name"].startswith(busy) and a.get("assignedRequest") for a in agents)
        return running and any(a["name"].startswith(idle) and a.get("status") == "online" for a in agents)

    sim.wait_for(ready, timeout=30, what="an idle and a busy agent in pool gone")
    return request, busy


def test_a_pool_removed_from_the_configuration_is_cleaned_on_the_next_pass(make_sim: Any) -> None:
    """We test: after pool `gone` is removed from the configuration, the next pass (a new process, which
    knows the pool only from its Jobs' labels and from agents named with its identity) deregisters the pool's
    placeholders, drains its idle agent, deletes its Job whose pod cannot start, and keeps the Job whose agent
    runs a pipeline job, which then succeeds; once that job ended a later pass deletes its Job and agent. Pool
    linux and another release's placeholder in pool gone are not touched."""
    sim = make_sim({**WORLD, "images": {BROKEN: "ErrImagePull"}, "pools": [*WORLD["pools"], GONE]})
    foreign = names.placeholder_name(names.Owner("azp", "beta"), pool_name="gone", template="default")
    sim.azdo.add_agent(sim.pool_ids["gone"], foreign, enabled=False, status="offline")
    request, busy = _set_up(sim)
    linux_before = {a["name"] for a in sim.agents()}
    broken = names.standby_job_name(OWNER, pool_name="gone", template="broken", slot=0)
    assert {busy, broken} <= set(_jobs(sim))
    document = sim.config()
    document["pools"] = [p for p in document["pools"] if p["name"] != "gone"]
    sim.write_config(document)
    sim.forget_agents_scan()  # as after sweepInterval

    result = sim.reconcile()
    assert result.code == 0, result.text
    assert "pool 'gone' is no longer configured" in result.text, result.text
    left = _agents(sim)
    for template in ("default", "java"):
        assert names.placeholder_name(OWNER, pool_name="gone", template=template) not in left, left
    assert set(_jobs(sim)) == {busy}, result.text
    assert [n for n in left if n.startswith(names.agent_prefix(OWNER, pool_name="gone"))] == [
        n for n in left if n.startswith(busy)
    ], left
    assert foreign in left and {a["name"] for a in sim.agents()} == linux_before

    sim.wait_for(
        lambda: any(r["requestId"] == request and r.get("result") for r in sim.requests("gone")), timeout=60, what="job"
    )
    assert next(r for r in sim.requests("gone") if r["requestId"] == request)["result"] == "succeeded"
    sim.forget_agents_scan()
    later = sim.reconcile()
    assert later.code == 0, later.text
    assert _jobs(sim) == {} and set(_agents(sim)) == {foreign}, (_jobs(sim), _agents(sim))
    assert {a["name"] for a in sim.agents()} == linux_before
