"""The invariants of a running simulation, checked after every step of every reliability test and of
the soak: what must never happen, whatever the faults, crashes or hostile input.

`violations(simulation, max_agents=...)` is the safety check (must hold at every moment);
`leftovers(simulation, min_idle=...)` is the liveness check (must hold within a few passes after the
queue empties). Both return human-readable findings; an empty list means the invariant holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from azp_simulation.world import NAMESPACE, RELEASE
from reconciler import names

AGENT_DELETED_MARKERS = ("deleted", "removed from the pool")


def _ours(obj: Mapping[str, Any], release: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(names.LABEL_MANAGED_BY) == names.MANAGED_BY and labels.get(names.LABEL_INSTANCE) == release


def _finished(job: Mapping[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def active_jobs_by_pool(kube: Any, *, namespace: str = NAMESPACE, release: str = RELEASE) -> Counter[str]:
    """Jobs of ours not finished and not being deleted, per exact pool name (from the annotation)."""
    counts: Counter[str] = Counter()
    for job in kube.objects("jobs", namespace):
        metadata = job.get("metadata") or {}
        if not _ours(job, release) or _finished(job) or metadata.get("deletionTimestamp"):
            continue
        pool = (metadata.get("annotations") or {}).get(names.ANNOTATION_POOL_NAME) or "?"
        counts[pool] += 1
    return counts


OWNER = names.Owner(prefix="azp", release=RELEASE)


def _is_ephemeral(name: str, pool: str, owner: names.Owner) -> bool:
    return name.lower().startswith(names.agent_prefix(owner, pool_name=pool).lower())


def violations(
    simulation: Any,
    *,
    max_agents: Mapping[str, int],
    owner: names.Owner = OWNER,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    environment_aborts: int = 0,
) -> list[str]:
    """Safety invariants; `simulation` has `.azdo`, `.kube` and `.pool_ids` (a world.Simulation).

    - agents of a pool <= maxAgents: active Jobs of ours, and online agents of ours, per pool;
    - no pipeline job aborted by agent loss (a pod killed under a running job);
    - no agent of ours deleted while it had an assigned request (the emulator refuses and counts it),
      and no request failed because its agent was deleted (`environment_aborts`: jobs the test itself
      lost by killing busy agents, which do not count);
    - no Kubernetes object without our labels written (update, patch, delete)."""
    found: list[str] = []
    azdo, kube = simulation.azdo, simulation.kube
    for pool, count in active_jobs_by_pool(kube, namespace=namespace, release=release).items():
        limit = max_agents.get(pool)
        if limit is None:
            found.append(f"{count} active Jobs of ours for pool {pool!r}, which is not configured")
        elif count > limit:
            found.append(f"pool {pool!r}: {count} active Jobs > maxAgents {limit}")
    for pool, pool_id in simulation.pool_ids.items():
        online = [
            a
            for a in azdo.agents(pool_id)
            if a.get("status") == "online" and _is_ephemeral(str(a.get("name", "")), pool, owner)
        ]
        limit = max_agents.get(pool, 0)
        if len(online) > limit:
            found.append(f"pool {pool!r}: {len(online)} online agents of ours > maxAgents {limit}")
        for request in azdo.requests(pool_id):
            message = str(request.get("statusMessage") or request.get("message") or "")
            if (
                request.get("result") == "failed"
                and "agent" in message.lower()
                and any(m in message.lower() for m in AGENT_DELETED_MARKERS)
            ):
                found.append(f"request {request.get('requestId')} failed because its agent was deleted: {message}")
    stats = azdo.stats
    if stats.jobs_aborted_by_agent_loss > environment_aborts:
        found.append(f"{stats.jobs_aborted_by_agent_loss - environment_aborts} pipeline jobs aborted by agent loss")
    if stats.busy_agent_deletes_refused:
        found.append(f"{stats.busy_agent_deletes_refused} attempts to delete an agent running a job")
    if kube.touched_foreign:
        found.append(f"{kube.touched_foreign} writes to Kubernetes objects without our labels")
    return found


def leftovers(
    simulation: Any,
    *,
    min_idle: Mapping[str, int] | None = None,
    owner: names.Owner = OWNER,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> list[str]:
    """Liveness once the queue is empty: no idle agent, no offline agent of ours, and no Job of ours
    beyond minIdle (per pool) left over."""
    found: list[str] = []
    allowance = dict(min_idle or {})
    azdo, kube = simulation.azdo, simulation.kube
    for pool, pool_id in simulation.pool_ids.items():
        if azdo.requests(pool_id, unfinished_only=True):
            found.append(f"pool {pool!r} still has unfinished requests")
        ours = [a for a in azdo.agents(pool_id) if _is_ephemeral(str(a.get("name", "")), pool, owner)]
        offline = [a["name"] for a in ours if a.get("status") != "online"]
        idle = [a["name"] for a in ours if a.get("status") == "online" and not a.get("assignedRequest")]
        if offline:
            found.append(f"pool {pool!r}: offline agents of ours left: {offline}")
        if len(idle) > allowance.get(pool, 0):
            found.append(f"pool {pool!r}: idle agents beyond minIdle: {idle}")
    for pool, count in active_jobs_by_pool(kube, namespace=namespace, release=release).items():
        if count > allowance.get(pool, 0):
            found.append(f"pool {pool!r}: {count} Jobs of ours left beyond minIdle {allowance.get(pool, 0)}")
    return found


def max_agents_of(config: Mapping[str, Any]) -> dict[str, int]:
    """maxAgents per pool name from a reconciler configuration document (schema default 10)."""
    return {str(p["name"]): int(p.get("maxAgents", 10)) for p in config.get("pools") or []}


def min_idle_of(config: Mapping[str, Any]) -> dict[str, int]:
    """minIdle per pool (pool and template values summed) from a configuration document."""
    result = {}
    for pool in config.get("pools") or []:
        templates = pool.get("templates") or []
        result[str(pool["name"])] = int(pool.get("minIdle", 0)) + sum(int(t.get("minIdle", 0)) for t in templates)
    return result
