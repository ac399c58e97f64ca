"""A world whose next pass takes the write path a clean rich world never takes: the disable of a `--once` agent
whose one job has started (plan._plan_once_disables), for two agents at once, while a third request waits for
its Job. The emulator's `once_exit_window` keeps an exited agent online for a while, so an agent left enabled
after its job could be handed a second job it never runs (the race the disable prevents)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability_support import POOL, Rig, start_rig

from reconciler import names

AGENT_PATCH = "PATCH pools/{poolId}/agents/{agentId}"
RUNNING = 2
JOB_SECONDS = 12.0
DISABLE_WORLD: dict[str, Any] = {
    "name": "disable",
    "timeout": 60,
    "reconciler": {"loopFor": 0, "interval": 0.2, "idleInterval": 0.2, "sweepInterval": 10},
    "once_exit_window": 3,
    "pools": [
        {
            "name": POOL,
            "maxAgents": 4,
            "provisioningTimeout": 60,
            "idleTimeout": 60,
            "templates": [{"name": "default", "capabilities": {"docker": ""}}],
        }
    ],
}


@dataclass
class DisableWorld:
    """The rig, the requests whose jobs run on enabled agents (`running`), and one still queued (`queued`)."""

    rig: Rig
    running: list[int]
    queued: int

    def runner(self, request_id: int) -> dict[str, Any]:
        """The agent a running request is reserved by, as the service shows it in the request."""
        by_id = {r["requestId"]: r for r in self.rig.azdo.requests(self.rig.pool_id())}
        reserved: dict[str, Any] = by_id[request_id]["reservedAgent"]
        return reserved

    def enabled_runners(self) -> list[str]:
        """Names of the running requests' agents that are still enabled, from the agent list."""
        agents = {a["name"]: a for a in self.rig.agents()}
        runners = [self.runner(r)["name"] for r in self.running]
        return [name for name in runners if name in agents and agents[name].get("enabled")]

    def runner_patches(self) -> list[int]:
        """PATCH calls on each running request's agent that the emulator carried out (answered 200)."""
        paths = [f"/agents/{self.runner(r)['id']}" for r in self.running]
        done = [c.path for c in self.rig.azdo.calls() if f"{c.method} {c.short}" == AGENT_PATCH and c.status == 200]
        return [sum(1 for path in done if path.endswith(suffix)) for suffix in paths]


def _received(rig: Rig, request_ids: list[int]) -> bool:
    by_id = {r["requestId"]: r for r in rig.azdo.requests(rig.pool_id())}
    return all(by_id[r].get("receiveTime") for r in request_ids)


def build_disable_world(directory: Path, *, job_seconds: float = JOB_SECONDS) -> DisableWorld:
    """Start the world and bring it to the moment before the pass that disables: RUNNING requests received by
    the agents of their Jobs (enabled: no pass has seen them running yet), jobs of `job_seconds`, and a request
    queued since, with no Job yet. The client gives up on a call after 0.5 s and retries once."""
    rig = start_rig(DISABLE_WORLD, directory)
    document = rig.config()
    document["azureDevOps"] = {"timeoutSeconds": 0.5, "retries": 1}
    rig.write_config(document)
    assert rig.reconcile().code == 0  # the placeholder: requests wait for an agent instead of failing
    running = [rig.azdo.queue_request(rig.pool_id(), demands=("docker",), duration=job_seconds) for _ in range(RUNNING)]
    first = rig.reconcile()
    assert first.code == 0, first.out
    rig.wait_for(lambda: _received(rig, running), timeout=20, what="the jobs to start")
    queued = rig.azdo.queue_request(rig.pool_id(), demands=("docker",), duration=0.3)
    rig.azdo.tick()
    built = DisableWorld(rig=rig, running=running, queued=queued)
    assert len(built.enabled_runners()) == RUNNING, rig.agents()
    assert "reservedAgent" not in {r["requestId"]: r for r in rig.azdo.requests(rig.pool_id())}[queued]
    rig.azdo.reset_calls()
    rig.kube.reset_calls()
    return built


def request_jobs(rig: Rig) -> list[str]:
    """The request ids our Jobs are labelled with (one per served request, never two)."""
    labels = [j["metadata"]["labels"].get(names.LABEL_REQUEST_ID) for j in rig.jobs()]
    return sorted(label for label in labels if label)
