"""A world whose next pass takes the two write paths of issue 20 that a clean world never takes: the rescue
(delete the agent that holds a request it will never start: Azure DevOps gave the job to a `--once` agent
that had already exited, the emulator's `once_exit_window`) and the crash backoff (a pod that failed before
its agent came online: no new Job for the template yet, the reason reported as a Warning Event)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from invariants import leftovers
from reliability_support import Rig, start_rig

from azp_simulation.world import NAMESPACE
from reconciler import names
from reconciler.plan import CRASH_BACKOFF_BASE, FINISH_SLACK

RESCUE_POOL = "linux"
BACKOFF_POOL = "gpu"
CONFIG_401 = "config.sh: VS30063: You are not authorized to access https://dev.azure.com/contoso"
RESCUE_BACKOFF_WORLD: dict[str, Any] = {
    "name": "rescue-backoff",
    "timeout": 60,
    "reconciler": {"loopFor": 0, "interval": 0.2, "idleInterval": 0.2, "sweepInterval": 10},
    # The exiting agent shows online this long after its job: the setup's passes must not rescue yet.
    "once_exit_window": 1,
    "crash_pods": [{"pool": BACKOFF_POOL, "first": 1, "count": 1, "exit_code": 3, "message": CONFIG_401}],
    "pools": [
        {
            "name": RESCUE_POOL,
            "maxAgents": 3,
            "provisioningTimeout": 60,
            "idleTimeout": 60,
            "templates": [{"name": "default", "capabilities": {"docker": ""}}],
        },
        {
            "name": BACKOFF_POOL,
            "maxAgents": 3,
            "provisioningTimeout": 60,
            "idleTimeout": 60,
            "templates": [{"name": "cuda", "capabilities": {"cuda": "12"}}],
        },
    ],
}


@dataclass
class RescueBackoffWorld:
    """The rig, the request reserved by the exited agent (`held`), and the request whose pod crashed."""

    rig: Rig
    held: int
    waiting: int


def _created(obj: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(obj["metadata"]["creationTimestamp"].replace("Z", "+00:00"))


def _ended(rig: Rig, pool: str, request: int) -> bool:
    return any(r["requestId"] == request and r.get("result") for r in rig.azdo.requests(rig.pool_id(pool)))


def _crashed_pod(rig: Rig) -> dict[str, Any] | None:
    pods = rig.kube.objects("pods", NAMESPACE)
    failed = [p for p in pods if f"-{BACKOFF_POOL}-" in p["metadata"]["name"] and p["status"]["phase"] == "Failed"]
    return failed[0] if failed else None


def _crashed_at(pod: dict[str, Any]) -> datetime:
    [status] = pod["status"]["containerStatuses"]
    return datetime.fromisoformat(status["state"]["terminated"]["finishedAt"].replace("Z", "+00:00"))


def build_rescue_backoff_world(directory: Path) -> RescueBackoffWorld:
    """Start the world and bring it to the moment before the pass that rescues and backs off: a request of
    the linux pool reserved by an agent whose pod has finished and who shows offline, and in the gpu pool
    a queued request whose Job's pod failed (exit 3, config.sh's 401) a few seconds ago: longer than
    FINISH_SLACK (a pod that finished just before the queue was read may have run its request), well within
    the first backoff (CRASH_BACKOFF_BASE)."""
    rig = start_rig(RESCUE_BACKOFF_WORLD, directory)
    assert rig.reconcile().code == 0  # the placeholders: requests wait for an agent instead of failing
    first = rig.azdo.queue_request(rig.pool_id(RESCUE_POOL), demands=("docker",), duration=0.2)
    waiting = rig.azdo.queue_request(rig.pool_id(BACKOFF_POOL), demands=("cuda",), duration=0.2)
    assert rig.reconcile().code == 0
    rig.wait_for(lambda: _ended(rig, RESCUE_POOL, first), timeout=20, what="the first job")
    held = rig.azdo.queue_request(rig.pool_id(RESCUE_POOL), demands=("docker",), duration=0.2)
    rig.azdo.tick()  # assigned to the agent that has just exited (still shown online)

    def ready() -> bool:
        pod = _crashed_pod(rig)
        online = [a for a in rig.agents(RESCUE_POOL) if a.get("status") == "online" and "placeholder" not in a["name"]]
        aged = pod is not None and datetime.now(UTC) - _crashed_at(pod) > FINISH_SLACK + timedelta(seconds=0.5)
        return aged and not online

    rig.wait_for(ready, timeout=15, what="the gpu pod to crash and the exited agent to show offline")
    rig.azdo.tick()
    reserved = {r["requestId"]: r for r in rig.azdo.requests(rig.pool_id(RESCUE_POOL), unfinished_only=True)}
    assert "receiveTime" not in reserved[held] and (reserved[held].get("reservedAgent") or {}).get("name")
    # No stand-in for the agent scan: the finished pod holding a request makes the next pass list the agents.
    rig.azdo.reset_calls()
    rig.kube.reset_calls()
    return RescueBackoffWorld(rig=rig, held=held, waiting=waiting)


def rescue_backoff_left(world: RescueBackoffWorld) -> list[str]:
    """What still differs from what the passes must reach (empty: done): the held request ended, no agent of
    ours offline or idle, one placeholder per pool; in the gpu pool no Job but the crashed one made before the
    backoff ends (CRASH_BACKOFF_BASE after the crash), its request served once it has, and the reason reported
    as an AgentCrashBackoff Event on the crashed Job."""
    rig = world.rig
    left = [
        item
        for item in leftovers(rig.simulation, min_idle={RESCUE_POOL: 0, BACKOFF_POOL: 0})
        if item != f"pool {BACKOFF_POOL!r} still has unfinished requests"
    ]
    if not _ended(rig, RESCUE_POOL, world.held):
        left.append(f"request {world.held} still held by the exited agent")
    gpu_jobs = [j for j in rig.jobs() if f"-{BACKOFF_POOL}-" in j["metadata"]["name"]]
    crashed = _crashed_pod(rig)
    assert crashed is not None
    retry_at = _crashed_at(crashed) + CRASH_BACKOFF_BASE
    early = [j["metadata"]["name"] for j in gpu_jobs if _created(j) < retry_at - timedelta(seconds=1)]
    if len(early) != 1:
        left.append(f"gpu Jobs made within the backoff: {early}")
    if not _ended(rig, BACKOFF_POOL, world.waiting) and datetime.now(UTC) > retry_at + timedelta(seconds=5):
        left.append(f"request {world.waiting} not served after the backoff")
    events = [e for e in rig.kube.objects("events", NAMESPACE) if e.get("reason") == "AgentCrashBackoff"]
    if not any(e["involvedObject"]["name"] in {j["metadata"]["name"] for j in gpu_jobs} for e in events):
        left.append("no AgentCrashBackoff Event on the crashed Job")
    for pool in (RESCUE_POOL, BACKOFF_POOL):
        prefix = names.placeholder_prefix(names.Owner(prefix="azp", release="azp-agents"), pool_name=pool)
        placeholders = [a["name"] for a in rig.agents(pool) if a["name"].startswith(prefix)]
        if len(placeholders) != 1:
            left.append(f"pool {pool!r} placeholders: {placeholders}")
    return left
