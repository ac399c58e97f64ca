"""The scaling rules as one pure function: `plan(config, world, now) -> list[Action]`.

No I/O, no clock, no randomness: everything it needs is in its arguments. DESIGN.md's rules:
- demand of a template = queued requests routed to it by their demands; supply = its Jobs whose
  agent is not busy (pods starting, agents idle); create `demand + minIdle - supply`, at least
  `minAgents - active`, never more than `maxAgents` per template and per pool;
- a request no template can serve is reported, never served by a wrong template;
- Jobs whose pod never brought an agent online within `provisioningTimeout` are deleted;
- offline agents of ours whose pod is gone or finished are deleted; placeholders, busy agents and
  agents not ours never are; idle agents past `idleTimeout` are drained, never killed;
- a request reserved by an agent of ours that will never start it (its pod finished or vanished) cannot be
  served again: the service fails it once that agent is deleted (azure-pipelines-agent #3994), and nothing in
  the agent's sources says a new listener registered under the same name (`config.sh --replace`, same id)
  would receive the job message the old one left. So the race behind it is prevented: a `--once` agent is
  disabled (PATCH enabled=false) as soon as its one job has started, so the service, which alone assigns
  jobs (#2085), hands it no second job while it exits (#2332, #3994; the agent's own notice, PR #2728 since
  agent 2.164.4, did not end the reports). What is left (a job that ends before a pass sees it running, an
  eviction between assignment and pick-up) is rescued by deleting the agent: the job fails at once instead
  of hanging until the service gives up.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

from reconciler import names, standby
from reconciler.demands import Demand, demand_satisfied, satisfies_all
from reconciler.lease import CLOCK_TOLERANCE
from reconciler.model import (
    Action,
    Agent,
    AgentJob,
    AgentPod,
    Capabilities,
    Config,
    CreateJob,
    DeleteAgent,
    DeleteJob,
    DisableAgent,
    DrainAgent,
    JobRequest,
    PoolConfig,
    PoolState,
    RecordStandbyHistory,
    RegisterPlaceholder,
    ReportCrashBackoff,
    ReportMissingPool,
    ReportUnroutable,
    TemplateConfig,
    UpdatePlaceholder,
    World,
    frozen_map,
)

TTL_GRACE = timedelta(seconds=60)
CRASH_BACKOFF_BASE = timedelta(seconds=10)
CRASH_BACKOFF_CAP = timedelta(minutes=5)
FINISH_SLACK = timedelta(seconds=3)
LEARN_RETRY = timedelta(seconds=60)
"""An unroutable request reads the agent list (to learn what agents advertise) at most this often."""
_EPOCH = datetime.min.replace(tzinfo=UTC)
SERVICE_CLOCK_TOLERANCE = timedelta(seconds=2)
"""Azure DevOps' clock offset within this is the measurement's own error (a whole-second Date header, the
answer's latency): its timestamps are taken as they are."""


def _service_stamps(world: World) -> Iterable[datetime | None]:
    for state in world.pools:
        for r in state.requests:
            yield from (r.queue_time, r.assign_time, r.receive_time, r.finish_time)
        for a in state.agents or ():
            yield from (a.created_on, a.status_changed_on)


def on_our_clock(world: World, now: datetime) -> World:
    """The world with Azure DevOps' timestamps (requests' queue, assign, receive and finish times, agents'
    createdOn and statusChangedOn) on our clock: less the service clock's measured offset when it is beyond
    SERVICE_CLOCK_TOLERANCE, and none later than `now` by more than that (a stamp from a clock ahead of ours
    is not trusted beyond the tolerance, whether or not an offset was measured). So a skewed clock never
    makes an agent look idle, a request queued, or a reservation held longer than it was. The world itself
    when no stamp needs it, so a large pool pays one comparison per stamp."""
    offset = world.azdo_clock_offset
    shift = offset if offset is not None and abs(offset) > SERVICE_CLOCK_TOLERANCE else timedelta(0)
    latest = now + SERVICE_CLOCK_TOLERANCE
    if not shift and not any(t is not None and t > latest for t in _service_stamps(world)):
        return world

    def ours(moment: datetime | None) -> datetime | None:
        if moment is None:
            return None
        moment -= shift
        return now if moment > latest else moment

    pools = tuple(
        replace(
            state,
            requests=tuple(
                replace(
                    r,
                    queue_time=ours(r.queue_time),
                    assign_time=ours(r.assign_time),
                    receive_time=ours(r.receive_time),
                    finish_time=ours(r.finish_time),
                )
                for r in state.requests
            ),
            agents=None
            if state.agents is None
            else tuple(
                replace(a, created_on=ours(a.created_on), status_changed_on=ours(a.status_changed_on))
                for a in state.agents
            ),
        )
        for state in world.pools
    )
    return replace(world, pools=pools, azdo_clock_offset=timedelta(0))


def effective_capabilities(
    config: Config, template: TemplateConfig, learned: Capabilities | None = None
) -> Capabilities:
    """What a template's agents advertise, as its placeholder shows it and routing assumes: what they are
    known to advertise before one registered, what a registered one did advertise (`learned`), and the
    declared capabilities, which reach the agent as environment variables and win over a stale learned
    value, unless the known set says the agent overrides them (a tool on PATH); plus the agent's version."""
    known = template.known_capabilities
    declared = {k: v for k, v in template.capabilities.items() if known.get(k, v) == v}
    capabilities = {**template.capabilities, **known, **(learned or {}), **declared}
    if not any(k.lower() == "agent.version" for k in capabilities):
        capabilities["Agent.Version"] = config.agent_version
    return frozen_map(capabilities)


def serves(config: Config, template: TemplateConfig, demands: Iterable[str]) -> bool:
    """Whether the template's agents satisfy every demand (always, if it declares no capabilities)."""
    return template.match_any or satisfies_all(demands, effective_capabilities(config, template))


def route(config: Config, pool: PoolConfig, request: JobRequest) -> TemplateConfig | None:
    """The template that serves a request: its capabilities satisfy every demand; then the
    highest priority, then the cheapest (fewest cpu, then memory), then the first declared."""
    return _Router(config, pool, {}).route(request.demands)


class _Router:
    """`route` and `serves` for one pool within one plan() call, computed once per distinct demands tuple.

    Every queued request is routed on every pass, and a pool's requests mostly share a handful of demand
    sets (one per pipeline job), so routing per request x template (a capability map built, every demand
    parsed) dominated planning a large queue. Both functions are pure, so a memo that lives no longer
    than the call changes nothing but the cost."""

    def __init__(self, config: Config, pool: PoolConfig, learned: Mapping[tuple[str, str], Capabilities]) -> None:
        self._config = config
        self._pool = pool
        self._learned = learned
        self._capabilities: dict[int, Capabilities] = {}
        self._routes: dict[tuple[str, ...], TemplateConfig | None] = {}
        self._serves: dict[tuple[int, tuple[str, ...]], bool] = {}

    def serves(self, index: int, demands: tuple[str, ...]) -> bool:
        """`serves(config, pool.templates[index], demands)`."""
        key = (index, demands)
        served = self._serves.get(key)
        if served is None:
            template = self._pool.templates[index]
            served = template.match_any or satisfies_all(demands, self.capabilities(index))
            self._serves[key] = served
        return served

    def capabilities(self, index: int) -> Capabilities:
        """`effective_capabilities` of pool.templates[index], with what its agents were seen to advertise."""
        capabilities = self._capabilities.get(index)
        if capabilities is None:
            template = self._pool.templates[index]
            learned = self._learned.get((self._pool.name, template.name))
            capabilities = self._capabilities[index] = effective_capabilities(self._config, template, learned)
        return capabilities

    def route(self, demands: tuple[str, ...]) -> TemplateConfig | None:
        """`route(config, pool, request)` for a request with these demands."""
        if demands in self._routes:
            return self._routes[demands]
        candidates = [(index, t) for index, t in enumerate(self._pool.templates) if self.serves(index, demands)]
        best = min(candidates, key=lambda item: (-item[1].priority, item[1].cost, item[0]))[1] if candidates else None
        self._routes[demands] = best
        return best


def in_shard(config: Config, request: JobRequest, now: datetime) -> bool:
    """A request this shard serves: its own share (`request_id % count`), and any other shard's request
    queued longer than `shard.takeoverAfterSeconds`, so one shard whose cluster is down leaves none unserved."""
    if request.request_id % config.shard_count == config.shard_index:
        return True
    takeover = config.shard_takeover_after
    return takeover > 0 and _age(request.queue_time, now) > timedelta(seconds=takeover)


class _JobView(NamedTuple):
    """One of our Jobs as the plan sees it: its pod, its agent and whether it is busy. A named tuple with
    `terminal` worked out once, because planning a large pool builds and asks thousands of them."""

    job: AgentJob
    pod: AgentPod | None
    agent: Agent | None
    busy: bool
    terminal: bool
    """The Job or its pod finished."""

    @property
    def agent_name(self) -> str | None:
        return self.pod.name if self.pod else None

    @property
    def available(self) -> bool:
        """Supply: a pod starting, or an agent idle and enabled (not one that already ran its job)."""
        if self.busy:
            return False
        if self.agent is None:
            return True
        return self.agent.enabled and (self.agent.online or self.agent.completed_request_id is None)

    @property
    def running(self) -> bool:
        return self.pod is not None and self.pod.phase == "Running" and not self.pod.deleting


def _pods_by_job(pods: Iterable[AgentPod]) -> dict[tuple[str, str], AgentPod]:
    """The pod of each Job: the newest (created, then name; the later one listed on a tie) when a Job
    has several. One pass keeping the greatest, which is what sorting all pods and keeping the last
    gave, without sorting every pod of the release on every pass."""
    by_job: dict[tuple[str, str], AgentPod] = {}
    for pod in pods:
        if pod.job_name:
            key = (pod.namespace, pod.job_name)
            held = by_job.get(key)
            if held is None or (pod.created or _EPOCH, pod.name) >= (held.created or _EPOCH, held.name):
                by_job[key] = pod
    return by_job


def _busy_names(state: PoolState) -> set[str]:
    """Lower-case names of the agents running a job: reserved by an unfinished request, or assigned one."""
    busy = set()
    for request in state.requests:
        name = request.reserved_agent_name
        if name and not request.finished:
            busy.add(name.lower())
    for agent in state.agents or ():
        if agent.busy and agent.name:
            busy.add(agent.name.lower())
    return busy


def _age(since: datetime | None, now: datetime) -> timedelta:
    return now - since if since is not None else timedelta(0)


def _states_by_name(world: World) -> dict[str, PoolState]:
    """`world.pool(name)` for every name at once (the first state of a name wins, as there)."""
    states: dict[str, PoolState] = {}
    for state in world.pools:
        states.setdefault(state.name, state)
    return states


def _jobs_by_pool(world: World) -> dict[tuple[str, str], list[AgentJob]]:
    """Jobs grouped by (pool slug, namespace) once, so planning costs pools + jobs, not pools x jobs."""
    grouped: dict[tuple[str, str], list[AgentJob]] = defaultdict(list)
    for job in world.jobs:
        grouped[(job.pool_slug, job.namespace)].append(job)
    return grouped


def _views(
    jobs: Iterable[AgentJob],
    pods_by_job: Mapping[tuple[str, str], AgentPod],
    agents: Mapping[str, Agent],
    busy: set[str],
) -> list[_JobView]:
    """Our Jobs not being deleted with their pod and agent (`agents` and `busy` by lower-case name),
    oldest first."""
    views = []
    for job in jobs:
        if job.deleting:
            continue
        pod = pods_by_job.get((job.namespace, job.name))
        if pod is None:
            views.append(_JobView(job, None, None, False, job.done))
            continue
        name = pod.name.lower()
        views.append(
            _JobView(
                job,
                pod,
                agents.get(name) if name else None,
                name in busy if name else False,
                job.done or pod.terminal,
            )
        )
    views.sort(key=lambda v: (v.job.created or _EPOCH, v.job.name))
    return views


def _stuck_reason(view: _JobView, *, pool: PoolConfig, agents_known: bool, now: datetime) -> str | None:
    """Why a Job counts as stuck (its agent never came online in time), or None."""
    if view.busy or view.terminal:
        return None
    timeout = timedelta(seconds=pool.provisioning_timeout)
    pod = view.pod
    if pod is None:
        return "no pod was created" if _age(view.job.created, now) > timeout else None
    if pod.phase == "Pending":
        if _age(pod.created or view.job.created, now) <= timeout:
            return None
        detail = ": ".join(p for p in (pod.reason, pod.message) if p)
        return detail or "pod stayed Pending"
    if pod.phase == "Running" and agents_known:
        started = pod.started or pod.created or view.job.created
        if view.agent is None and _age(started, now) > timeout:
            return "the agent never registered"
        if view.agent is not None and not view.agent.online and _age(view.agent.status_changed_on, now) > timeout:
            return "the agent went offline but its pod keeps running"
    return None


def _next_free(existing: set[str], make: Iterable[str]) -> str:
    return next(name for name in make if name not in existing)


@dataclass
class _PoolPass:
    """One pool's inputs to plan(), worked out once and shared by its rules."""

    config: Config
    pool: PoolConfig
    state: PoolState
    world: World
    now: datetime
    pool_id: int
    agents_known: bool
    agents: dict[str, Agent]
    """The pool's agents by lower-case name (empty when they were not listed)."""
    busy: set[str]
    views: list[_JobView]
    router: _Router


@dataclass
class _JobCounts:
    """Our unfinished Jobs of a pool after the job rules: kept ones by template, and stuck ones."""

    active: dict[str, list[_JobView]] = field(default_factory=lambda: defaultdict(list))
    stuck: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pool_active: int = 0
    """Every unfinished Job, which counts against maxAgents until it is really gone."""


@dataclass(frozen=True)
class _AgentPass:
    """A pool's inputs to the rules that need its agent list (placeholders, prune, drain), from `_plan_pool`:
    the pool's pass and what its job rules worked out, built once and shared by those rules."""

    p: _PoolPass
    routed: Mapping[str, list[JobRequest]]
    """Queued requests of our shard by the template they route to."""
    queued: list[JobRequest]
    active: Mapping[str, list[_JobView]]
    """The kept unfinished Jobs by template (`_JobCounts.active`)."""
    blocked: int
    """Queued requests maxAgents keeps from getting a Job."""
    limited: frozenset[str]
    """Templates whose queued requests wait on the parallel-job limit."""


def _pool_pass(
    config: Config,
    pool: PoolConfig,
    state: PoolState,
    world: World,
    now: datetime,
    *,
    jobs: list[AgentJob],
    pods_by_job: Mapping[tuple[str, str], AgentPod],
) -> _PoolPass:
    assert state.pool_id is not None
    agents = {a.name.lower(): a for a in state.agents or ()}
    busy = _busy_names(state)
    return _PoolPass(
        config=config,
        pool=pool,
        state=state,
        world=world,
        now=now,
        pool_id=state.pool_id,
        agents_known=state.agents is not None,
        agents=agents,
        busy=busy,
        views=_views(jobs, pods_by_job, agents, busy),
        router=_Router(config, pool, world.learned),
    )


def _taken_since_read(p: _PoolPass) -> set[int]:
    """Requests read as queued that were taken since: the agent list (read after the queue) shows an agent
    holding one, or the request's own Job's pod (or the Job, when its pods are unknown) finished after (or
    just before) the queue was read, so the pod may have run it. They wait for the next read instead of
    getting a second Job. FINISH_SLACK covers Kubernetes' whole seconds and the moment between a job's end
    and its request's finish time; a time further ahead than CLOCK_TOLERANCE is not trusted."""
    taken = {a.assigned_request_id for a in p.agents.values() if a.assigned_request_id is not None}
    read_at = p.state.read_at
    if read_at is None:
        return taken
    earliest, latest = read_at - FINISH_SLACK, read_at + CLOCK_TOLERANCE
    for v in p.views:
        # The pod's end, or the Job's when its pods could not be listed (or are gone already).
        finished = v.pod.finished if v.pod is not None and v.pod.finished is not None else v.job.finished
        if v.job.request_id is not None and finished is not None and earliest <= finished <= latest:
            taken.add(v.job.request_id)
    return taken


def _route_queued(p: _PoolPass) -> tuple[list[JobRequest], dict[str, list[JobRequest]], list[Action]]:
    """Route every queued request of our shard, oldest first; report the ones nothing can serve."""
    taken = _taken_since_read(p)
    queued = sorted(
        (r for r in p.state.requests if r.queued and r.request_id not in taken and in_shard(p.config, r, p.now)),
        key=lambda r: (r.queue_time or _EPOCH, r.request_id),
    )
    routed: dict[str, list[JobRequest]] = defaultdict(list)
    reports: list[Action] = []
    for request in queued:
        template = p.router.route(request.demands)
        if template is None:
            reports.append(ReportUnroutable(pool=p.pool.name, request_id=request.request_id, demands=request.demands))
        else:
            routed[template.name].append(request)
    return queued, routed, reports


def _plan_finished_job(p: _PoolPass, view: _JobView) -> list[Action]:
    """A finished Job: prune its agent without a list when its id is known; delete it past its TTL."""
    actions: list[Action] = []
    if not p.agents_known and view.pod is not None and not view.busy:
        # The agent ran its one job and its pod is done: its id is known from the request it ran,
        # so it is pruned without listing the pool's agents (an API call saved per finished job).
        key = view.pod.name.lower()
        agent_id = p.world.agent_ids.get(key)
        if agent_id is not None and key not in p.world.pruned:
            actions.append(
                DeleteAgent(
                    pool=p.pool.name,
                    pool_id=p.pool_id,
                    agent_id=agent_id,
                    agent_name=view.pod.name,
                    reason="offline and its pod finished",
                )
            )
    ttl = timedelta(seconds=p.config.ttl_seconds_after_finished) + TTL_GRACE
    finished = view.job.finished or (view.pod.finished if view.pod else None)
    if finished is not None and p.now - finished > ttl:
        actions.append(
            DeleteJob(
                pool=p.pool.name, namespace=view.job.namespace, job_name=view.job.name, reason="finished past its TTL"
            )
        )
    return actions


_AgentAction = TypeVar("_AgentAction", DeleteAgent, DisableAgent)


def _per_holding_agent(
    p: _PoolPass, *, received: bool, decide: Callable[[JobRequest, str, int], _AgentAction | None]
) -> list[_AgentAction]:
    """The walk the rescue and the disable share: every unfinished request reserved by an agent (by name and id)
    whose job has started (`received`: the request has a receiveTime) or has not, in the order the service
    listed them, skipping agents already pruned this run; `decide(request, agent name, agent id)` gives the
    action for that agent, or None. One action per agent (by name or id), however many requests it holds. Which
    agents are ours is `decide`'s to say: the two rules derive it differently."""
    actions: list[_AgentAction] = []
    names_done: set[str] = set()
    ids_done: set[int] = set()
    for request in p.state.requests:
        name, agent_id = request.reserved_agent_name, request.reserved_agent_id
        if not name or agent_id is None or request.finished or (request.receive_time is not None) != received:
            continue
        key = name.lower()
        if key in names_done or agent_id in ids_done or key in p.world.pruned:
            continue
        action = decide(request, name, agent_id)
        if action is not None:
            names_done.add(key)
            ids_done.add(agent_id)
            actions.append(action)
    return actions


def _plan_rescues(p: _PoolPass) -> list[DeleteAgent]:
    """Agents of ours holding a request they will never start: Azure DevOps assigned it to an agent whose
    pod has finished (the race of a job given to an exiting `--once` agent, which _plan_once_disables
    prevents for jobs a pass saw running) or vanished (evicted) for longer than TTL_GRACE, and the agent has
    not received it. Deleting the agent ends the wait, which would otherwise last until the service gives up
    on the agent; the service then fails that job (module docstring), it does not queue it again. Only a
    listed agent shown offline is deleted: the service refuses to delete one it still shows online with a job
    assigned (the exiting agent's last seconds), so without the list nothing is rescued (pools_needing_agents
    lists a pool whose finished pod holds a request).

    Ours here is an agent named with our owner's agent prefix for the pool (names.agent_prefix) that the agent
    list shows: its pod may be gone (evicted, its Job deleted), so a live Job of ours cannot be asked for."""
    if not p.agents_known:
        return []
    prefix = names.agent_prefix(p.config.owner, pool_name=p.pool.name).lower()
    pods = {v.pod.name.lower(): v.pod for v in p.views if v.pod is not None}
    # An agent that received a job (the service has not failed it yet) is left to the service.
    started = {
        r.reserved_agent_name.lower()
        for r in p.state.requests
        if r.reserved_agent_name and not r.finished and r.receive_time is not None
    }

    def rescue(request: JobRequest, name: str, agent_id: int) -> DeleteAgent | None:
        key = name.lower()
        agent = p.agents.get(key)
        if not key.startswith(prefix) or key in started or agent is None or agent.online:
            return None
        pod = pods.get(key)
        if pod is None and _age(request.assign_time, p.now) > TTL_GRACE:
            why = "its pod is gone"
        elif pod is not None and pod.terminal:
            why = "its pod finished"
        else:
            return None
        reason = f"request {request.request_id} was assigned to it but {why} before the job started"
        return DeleteAgent(pool=p.pool.name, pool_id=p.pool_id, agent_id=agent_id, agent_name=name, reason=reason)

    return _per_holding_agent(p, received=False, decide=rescue)


def _plan_once_disables(p: _PoolPass) -> list[DisableAgent]:
    """Disable each `--once` agent of ours as soon as its one job has started, so Azure DevOps never hands it a
    second job in the seconds between that job's end and the listener's exit (the race that leaves a request
    reserved by an agent that is gone; module docstring of azdo_emulator, #2332, #3994, #4338). Only the
    service decides assignments, and a disabled agent gets none but finishes the one it runs (Microsoft's
    advice in #2085). Waiting for the request's receiveTime means its job message was delivered before the
    disable, and it still lands long before that job ends. One PATCH per job: an agent already shown disabled
    (the request's agent reference, else the agent list) is left alone, and so is one whose enabled state
    neither shows. Instance templates (ACI groups that restart) are left out: `config.sh --replace` keeps the
    agent's `enabled` (ConfigurationManager.UpdateExistingAgent), so a disabled instance would serve nothing
    again.

    Ours here is the agent of a live pod of one of our Jobs (not of an instance template): the job runs, so its
    pod does, and this works without the agent list."""
    instance_templates = {t.name for t in p.pool.templates if t.instances}
    ours = {
        v.pod.name.lower()
        for v in p.views
        if v.pod is not None and v.job.template not in instance_templates and not v.terminal
    }

    def disable(request: JobRequest, name: str, agent_id: int) -> DisableAgent | None:
        key = name.lower()
        listed = p.agents.get(key)
        enabled = listed.enabled if listed is not None else request.reserved_agent_enabled
        if key not in ours or not enabled:
            return None
        reason = f"it runs request {request.request_id}, its one job: no second job for an agent about to exit"
        return DisableAgent(
            pool=p.pool.name,
            pool_id=p.pool_id,
            agent_id=agent_id,
            agent_name=name,
            request_id=request.request_id,
            reason=reason,
        )

    return _per_holding_agent(p, received=True, decide=disable)


def _delete_stuck(p: _PoolPass, view: _JobView, detail: str) -> DeleteJob:
    return DeleteJob(
        pool=p.pool.name,
        namespace=view.job.namespace,
        job_name=view.job.name,
        reason="stuck: its agent did not come online within provisioningTimeout",
        detail=detail,
        agent_id=view.agent.agent_id if view.agent is not None else None,
        pool_id=p.pool_id,
    )


def _plan_jobs(p: _PoolPass) -> tuple[list[Action], _JobCounts]:
    """Finished Jobs are pruned, stuck ones go, Jobs of a template no longer configured go once
    nothing can be running; the rest are the pool's active Jobs."""
    actions: list[Action] = []
    counts = _JobCounts()
    templates = {t.name: t for t in p.pool.templates}
    instanced = {t.name for t in p.pool.templates if t.instances}
    for view in p.views:
        if view.terminal:
            if view.job.template not in instanced:  # a failed named instance: _plan_instances
                actions.extend(_plan_finished_job(p, view))
            continue
        counts.pool_active += 1
        template = templates.get(view.job.template)
        if template is None:
            if not view.busy and not view.running:
                actions.append(
                    DeleteJob(
                        pool=p.pool.name,
                        namespace=view.job.namespace,
                        job_name=view.job.name,
                        reason="its template was removed from the configuration",
                    )
                )
            continue
        # A busy agent is never stuck: most Jobs of a large pool skip the check.
        reason = None if view.busy else _stuck_reason(view, pool=p.pool, agents_known=p.agents_known, now=p.now)
        if reason is not None:
            actions.append(_delete_stuck(p, view, reason))
            counts.stuck[template.name] += 1
            continue
        if _stale(view, template):
            assert view.agent is not None
            actions.append(_drain(p.pool, p.state, view, view.agent, _STALE_REASON))
            counts.stuck[template.name] += 1
            continue
        counts.active[template.name].append(view)
    return actions, counts


_STALE_REASON = "idle, and its capabilities no longer match what its template declares"


def _stale(view: _JobView, template: TemplateConfig) -> bool:
    """An idle, online agent of ours that lacks a capability its template now declares (or has another
    value): it was started from an older template, so it cannot serve what is routed to the template."""
    agent = view.agent
    if agent is None or view.busy or not agent.online or not view.running or not template.capabilities:
        return False
    return not all(
        demand_satisfied(Demand(name=name, op="equals", value=value), agent.capabilities)
        for name, value in template.capabilities.items()
    )


def _min_idle(pool: PoolConfig, index: int, now: datetime) -> int:
    """The minIdle of the pool's template `index` at `now` (its standby windows), plus the pool's own
    for its first template."""
    template = pool.templates[index]
    own = standby.min_idle(template.min_idle, template.standby, now)
    return own + (standby.min_idle(pool.min_idle, pool.standby, now) if index == 0 else 0)


def _sizes(
    pool: PoolConfig, routed: Mapping[str, list[JobRequest]], counts: _JobCounts, now: datetime
) -> tuple[dict[str, int], dict[str, int]]:
    """Jobs to create per template: for queued demand, and for standby (minIdle, minAgents).

    demand - supply, at least minAgents - active, never past the template's maxAgents; stuck Jobs
    count too (if their deletion fails, replacing them must not run away)."""
    want: dict[str, int] = {}
    standby: dict[str, int] = {}
    for index, template in enumerate(pool.templates):
        if template.instances:
            want[template.name] = standby[template.name] = 0  # _plan_instances keeps their number
            continue
        active = counts.active[template.name]
        cap = template.max_agents if template.max_agents is not None else pool.max_agents
        room = max(0, cap - len(active) - counts.stuck[template.name])
        supply = sum(1 for v in active if not v.busy and v.available)
        demand = len(routed.get(template.name, ()))
        min_idle = _min_idle(pool, index, now)
        min_agents = template.min_agents + (pool.min_agents if index == 0 else 0)
        for_demand = min(room, max(0, demand - supply))
        total = max(demand + min_idle - supply, min_agents - len(active), 0)
        want[template.name] = for_demand
        standby[template.name] = min(room - for_demand, max(0, total - for_demand))
    return want, standby


class _Backoff(NamedTuple):
    failures: int
    last: _JobView
    """The Job whose pod failed last."""
    retry_at: datetime


def _crash_history(p: _PoolPass) -> dict[str, _Backoff]:
    """Templates whose pods failed before their agent came online: their failures in a row and when new Jobs
    may be created again (`retry_at`, past or not).

    A failed Job stays listed until its TTL (ttlSecondsAfterFinished), so the pods of the pool's finished
    Jobs are the failure history: plan() needs nothing outside the World. The failures since the template's
    last pod that succeeded count, plus those a re-created named instance carries (AgentJob.crash_failures:
    the failed group it replaces is gone); after the n-th, new Jobs wait CRASH_BACKOFF_BASE * 2**(n-1), at
    most CRASH_BACKOFF_CAP, from when it failed. A pod whose agent ran a job (an OOM kill mid-job) is no crash."""
    crashes: dict[str, list[tuple[datetime, _JobView]]] = defaultdict(list)
    succeeded: dict[str, datetime] = {}
    for view in p.views:
        pod = view.pod
        when = (pod.finished or view.job.finished or pod.created) if pod is not None else None
        if not view.terminal or pod is None or when is None:
            continue
        template = view.job.template
        if pod.phase == "Succeeded":
            succeeded[template] = max(when, succeeded.get(template, when))
        elif not view.busy and not (view.agent is not None and view.agent.completed_request_id is not None):
            crashes[template].append((when, view))
    backoff: dict[str, _Backoff] = {}
    for template, failed in crashes.items():
        last_success = succeeded.get(template)
        recent = sorted((i for i in failed if last_success is None or i[0] > last_success), key=lambda i: i[0])
        if not recent:
            continue
        when, last = recent[-1]
        failures = len(recent) + max(view.job.crash_failures for _, view in recent)
        retry_at = when + min(CRASH_BACKOFF_CAP, CRASH_BACKOFF_BASE * 2 ** min(failures - 1, 16))
        backoff[template] = _Backoff(failures, last, retry_at)
    return backoff


def _report_backoff(p: _PoolPass, template: str, backoff: _Backoff) -> ReportCrashBackoff:
    pod = backoff.last.pod
    assert pod is not None
    detail = pod.reason or pod.phase
    if pod.exit_code is not None:
        detail += f" (exit code {pod.exit_code})"
    if pod.message:
        detail += f": {pod.message.strip()[:500]}"
    return ReportCrashBackoff(
        pool=p.pool.name,
        template=template,
        namespace=backoff.last.job.namespace,
        job_name=backoff.last.job.name,
        failures=backoff.failures,
        reason=detail,
        retry_at=backoff.retry_at,
    )


def _create_job(p: _PoolPass, template_name: str, request: JobRequest | None, *, job_names: set[str]) -> CreateJob:
    """One CreateJob under a name no Job (finished ones included) has, so it is never a duplicate."""
    owner, pool_name = p.config.owner, p.pool.name
    if request is None:
        candidates = (
            names.standby_job_name(owner, pool_name=pool_name, template=template_name, slot=n) for n in range(10_000)
        )
    else:
        candidates = (
            names.request_job_name(owner, pool_name=pool_name, request_id=request.request_id, generation=n)
            for n in range(10_000)
        )
    job_name = _next_free(job_names, candidates)
    job_names.add(job_name)
    return CreateJob(
        pool=pool_name,
        template=template_name,
        namespace=p.pool.namespace,
        job_name=job_name,
        request_id=None if request is None else request.request_id,
        reason="standby (minIdle/minAgents)" if request is None else f"request {request.request_id} is queued",
        demands=() if request is None else request.demands,
        pool_id=p.pool_id,
    )


def _demand_order(routed: Mapping[str, list[JobRequest]], counts: _JobCounts) -> list[tuple[JobRequest, str]]:
    """Routed requests in queue order across templates: uncovered ones first, then those whose Job
    (one not busy, made for that request) went to someone else."""
    covered = {
        v.job.request_id
        for views in counts.active.values()
        for v in views
        if not v.busy and v.job.request_id is not None
    }
    ordered = sorted(
        ((r, t) for t, requests in routed.items() for r in requests),
        key=lambda item: (item[0].queue_time or _EPOCH, item[0].request_id),
    )
    return [item for item in ordered if item[0].request_id not in covered] + [
        item for item in ordered if item[0].request_id in covered
    ]


def _waiting_on_parallel_limit(p: _PoolPass, queued: list[JobRequest]) -> set[str]:
    """Templates whose queued requests wait on the organization's parallel-job limit, not on agents: an
    agent of theirs has sat idle past idleTimeout although a request it could serve is queued (the service
    assigns a free, matching agent within seconds otherwise). Needs the agent list (idle times)."""
    if not p.agents_known or not queued:
        return set()
    idle_timeout = timedelta(seconds=p.pool.idle_timeout)
    limited = set()
    for index, template in enumerate(p.pool.templates):
        idle_long = any(
            v.job.template == template.name
            and v.agent is not None
            and v.agent.online
            and v.agent.enabled
            and not v.busy
            and v.running
            and _age(v.agent.status_changed_on, p.now) > idle_timeout
            for v in p.views
        )
        if idle_long and any(p.router.serves(index, r.demands) for r in queued):
            limited.add(template.name)
    return limited


def _plan_creates(
    p: _PoolPass,
    routed: Mapping[str, list[JobRequest]],
    counts: _JobCounts,
    *,
    backoff: Mapping[str, _Backoff],
    limited: set[str],
    create_budget: int,
    job_names: set[str],
) -> tuple[list[CreateJob], int, list[str]]:
    """Creation: demand first, in queue order; then standby and minimum counts; none for a template in
    crash backoff. Also returns how many queued requests only maxAgents holds back (standby agents of
    other templates give way to them), and the templates whose wanted Jobs the backoff held back."""
    pool_room = max(0, p.pool.max_agents - counts.pool_active)
    want, standby = _sizes(p.pool, routed, counts, p.now)
    held = [name for name in backoff if want.get(name, 0) + standby.get(name, 0) > 0]
    for name in held:
        want[name] = standby[name] = 0
    for name in limited:
        want[name] = 0  # more agents would only wait too
    creates: list[CreateJob] = []
    # A pool at maxAgents (or a spent brake) creates nothing: skip the ordering work.
    ordered = _demand_order(routed, counts) if pool_room > 0 and create_budget > 0 else []
    for request, template_name in ordered:
        if want[template_name] <= 0 or pool_room <= 0 or len(creates) >= create_budget:
            continue
        creates.append(_create_job(p, template_name, request, job_names=job_names))
        want[template_name] -= 1
        pool_room -= 1
    blocked = sum(max(0, n) for n in want.values()) if pool_room <= 0 else 0
    for template in p.pool.templates:
        for _ in range(standby[template.name]):
            if pool_room <= 0 or len(creates) >= create_budget:
                break
            creates.append(_create_job(p, template.name, None, job_names=job_names))
            pool_room -= 1
    return creates, blocked, held


def _plan_instances(
    p: _PoolPass,
    counts: _JobCounts,
    *,
    history: Mapping[str, _Backoff],
    create_budget: int,
    job_names: set[str],
) -> list[Action]:
    """Templates with `instances`: exactly that many groups under stable names (each restarts after its job and
    its agent re-registers under the same name). A missing one is created, at most `create_budget` in the pass
    (maxCreatePerPass, what the pass has left of it). A failed one, once its template's crash backoff is over,
    is deleted and created again in the same pass (deletes go first), the new group carrying the failures in a
    row, so the next backoff is longer. One beyond the count goes, drained when its agent is idle online, never
    while its agent is busy. Stuck ones are _plan_jobs' (not in `counts.active`)."""
    actions: list[Action] = []
    budget = create_budget
    for template in p.pool.templates:
        if not template.instances:
            continue
        wanted = [
            names.instance_name(p.config.owner, pool_name=p.pool.name, template=template.name, index=index)
            for index in range(template.instances)
        ]
        crashes = history.get(template.name)
        actions.extend(_surplus_instances(p, counts, template, wanted))
        if crashes is not None and crashes.retry_at > p.now:
            actions.append(_report_backoff(p, template.name, crashes))
            continue
        failures = crashes.failures if crashes is not None else 0
        for view in p.views:
            if view.terminal and view.job.name in wanted and not view.busy and budget > 0:
                actions.extend(_recreate_instance(p, template, view, wanted.index(view.job.name), failures))
                budget -= 1
        for index, name in enumerate(wanted):
            if name not in job_names and budget > 0:
                job_names.add(name)
                actions.append(_create_instance(p, template, name, index))
                budget -= 1
    return actions


def _surplus_instances(p: _PoolPass, counts: _JobCounts, template: TemplateConfig, wanted: list[str]) -> list[Action]:
    """The instances beyond the template's count, failed ones included: drained when the agent is idle online,
    deleted when it is not online; never one whose agent is busy."""
    reason = f"beyond the template's {template.instances} instances"
    failed = [v for v in p.views if v.terminal and v.job.template == template.name]
    actions: list[Action] = []
    for view in [*counts.active.get(template.name, []), *failed]:
        if view.job.name in wanted or view.busy:
            continue
        if view.agent is not None and view.agent.online and view.running:
            actions.append(_drain(p.pool, p.state, view, view.agent, reason))
        else:
            actions.append(
                DeleteJob(pool=p.pool.name, namespace=view.job.namespace, job_name=view.job.name, reason=reason)
            )
    return actions


def _recreate_instance(
    p: _PoolPass, template: TemplateConfig, view: _JobView, index: int, failures: int
) -> list[Action]:
    """A failed instance whose backoff is over: deleted, and created again carrying the failures in a row. Should
    the group still exist at the create (a delete ARM finishes later), the create makes nothing and the pass that
    finds the name free creates it without the history (its backoff starts over)."""
    reason = "a failed named instance, to be created again"
    delete = DeleteJob(pool=p.pool.name, namespace=view.job.namespace, job_name=view.job.name, reason=reason)
    create = replace(_create_instance(p, template, view.job.name, index), crash_failures=failures)
    return [delete, create]


def _create_instance(p: _PoolPass, template: TemplateConfig, name: str, index: int) -> CreateJob:
    return CreateJob(
        pool=p.pool.name,
        template=template.name,
        namespace=p.pool.namespace,
        job_name=name,
        request_id=None,
        reason=f"named instance {index + 1} of {template.instances}",
        demands=(),
        pool_id=p.pool_id,
    )


def _plan_pool(
    config: Config,
    pool: PoolConfig,
    state: PoolState,
    world: World,
    now: datetime,
    *,
    create_budget: int,
    jobs: list[AgentJob],
    pods_by_job: Mapping[tuple[str, str], AgentPod],
    job_names: set[str],
) -> list[Action]:
    p = _pool_pass(config, pool, state, world, now, jobs=jobs, pods_by_job=pods_by_job)
    queued, routed, actions = _route_queued(p)
    job_actions, counts = _plan_jobs(p)
    actions.extend(job_actions)
    actions.extend(_plan_rescues(p))
    actions.extend(_plan_once_disables(p))
    history = _crash_history(p)
    backoff = {name: crashes for name, crashes in history.items() if crashes.retry_at > p.now}
    limited = _waiting_on_parallel_limit(p, queued)
    creates, blocked, held = _plan_creates(
        p, routed, counts, backoff=backoff, limited=limited, create_budget=create_budget, job_names=job_names
    )
    actions.extend(creates)
    budget = create_budget - len(creates)
    actions.extend(_plan_instances(p, counts, history=history, create_budget=budget, job_names=job_names))
    actions.extend(_report_backoff(p, name, backoff[name]) for name in held)
    if p.agents_known:
        context = _AgentPass(p, routed, queued, counts.active, blocked, frozenset(limited))
        actions.extend(_plan_agents(context))
    return actions


def _drain(pool: PoolConfig, state: PoolState, view: _JobView, agent: Agent, reason: str) -> DrainAgent:
    """Drain the agent of one of our Jobs: disable, re-read, then delete its Job and registration."""
    assert state.pool_id is not None
    return DrainAgent(
        pool=pool.name,
        pool_id=state.pool_id,
        agent_id=agent.agent_id,
        agent_name=agent.name,
        namespace=view.job.namespace,
        job_name=view.job.name,
        reason=reason,
    )


def _plan_placeholders(
    config: Config,
    pool: PoolConfig,
    state: PoolState,
    *,
    placeholders: Mapping[str, TemplateConfig],
    by_name: Mapping[str, Agent],
    router: _Router,
) -> list[Action]:
    """Each wanted placeholder (by lower-case name) registered when missing, and updated when its
    capabilities differ from what its template's agents advertise or when it is enabled."""
    assert state.pool_id is not None
    actions: list[Action] = []
    for key, template in placeholders.items():
        wanted = router.capabilities(pool.templates.index(template))
        agent = by_name.get(key)
        name = names.placeholder_name(config.owner, pool_name=pool.name, template=template.name)
        if agent is None:
            actions.append(
                RegisterPlaceholder(pool=pool.name, pool_id=state.pool_id, agent_name=name, capabilities=wanted)
            )
        elif dict(agent.capabilities) != dict(wanted) or agent.enabled:
            actions.append(
                UpdatePlaceholder(
                    pool=pool.name,
                    pool_id=state.pool_id,
                    agent_id=agent.agent_id,
                    agent_name=agent.name,
                    capabilities=wanted,
                )
            )
    return actions


def _plan_prunes(
    config: Config,
    pool: PoolConfig,
    state: PoolState,
    views: list[_JobView],
    *,
    placeholders: Mapping[str, TemplateConfig],
    busy: set[str],
) -> list[Action]:
    """Offline agents of ours whose pod is gone or finished, and offline placeholders of ours of a template
    no longer configured (`placeholders`: the wanted ones by lower-case name); never a busy agent."""
    assert state.agents is not None and state.pool_id is not None
    ours = names.agent_prefix(config.owner, pool_name=pool.name).lower()
    placeholder_prefix = names.placeholder_prefix(config.owner, pool_name=pool.name).lower()
    pod_of_agent = {v.pod.name.lower(): v for v in views if v.pod is not None}
    # An agent the reconciler registered is named after its Job, and exists before the Job's pod does.
    pod_of_agent.update({v.job.name.lower(): v for v in views if v.pod is None})
    actions: list[Action] = []
    for agent in state.agents:
        key = agent.name.lower()
        if key in busy or agent.busy or agent.online:
            continue
        if key.startswith(placeholder_prefix):
            if key not in placeholders:
                reason = "placeholder of a template no longer configured"
                actions.append(_delete_agent(pool, state, agent, reason))
            continue
        view = pod_of_agent.get(key)
        if key.startswith(ours) and (view is None or view.terminal):
            why = "its pod is gone" if view is None else "its pod finished"
            actions.append(_delete_agent(pool, state, agent, f"offline and {why}"))
    return actions


def _delete_agent(pool: PoolConfig, state: PoolState, agent: Agent, reason: str) -> DeleteAgent:
    assert state.pool_id is not None
    return DeleteAgent(
        pool=pool.name, pool_id=state.pool_id, agent_id=agent.agent_id, agent_name=agent.name, reason=reason
    )


def _plan_agents(c: _AgentPass) -> list[Action]:
    """Placeholders, prune and drain: the rules that need the pool's agent list. `c.blocked` is the number
    of queued requests maxAgents keeps from getting a Job: that many idle agents of templates that can
    serve nothing queued are drained, standby (minIdle, minAgents) included, since a waiting pipeline
    job matters more than a warm spare. `c.limited`: templates whose queued requests wait on the
    parallel-job limit (their surplus idle agents are drained too)."""
    p = c.p
    assert p.state.agents is not None
    placeholders = {
        names.placeholder_name(p.config.owner, pool_name=p.pool.name, template=t.name).lower(): t
        for t in p.pool.templates
        if t.placeholder
    }
    actions = _plan_placeholders(
        p.config, p.pool, p.state, placeholders=placeholders, by_name=p.agents, router=p.router
    )
    actions.extend(_plan_prunes(p.config, p.pool, p.state, p.views, placeholders=placeholders, busy=p.busy))
    actions.extend(_plan_drains(c))
    return actions


def _plan_drains(c: _AgentPass) -> list[Action]:
    """Idle agents of ours to drain: half-drained ones, expired ones, ones in the way of blocked demand
    (see `_plan_agents`), and those of a removed template."""
    pool, state, now = c.p.pool, c.p.state, c.p.now
    actions: list[Action] = []

    # A drain an earlier pass left half done (disabled, then the run failed or died): finish it now.
    # The agent is ours, idle and disabled, so it can serve nothing and only holds a slot.
    for template in pool.templates:
        for view in c.active.get(template.name, []):
            agent = view.agent
            if not view.busy and agent is not None and not agent.enabled and agent.online and view.running:
                actions.append(_drain(pool, state, view, agent, "an earlier drain of this agent stopped half way"))

    # Drain: idle agents past idleTimeout while nothing they could serve is queued, oldest first,
    # keeping minIdle idle agents and minAgents agents per template.
    blocked = c.blocked
    for index, template in enumerate(pool.templates):
        wanted = bool(c.routed.get(template.name)) or any(c.p.router.serves(index, r.demands) for r in c.queued)
        if (wanted and template.name not in c.limited) or template.instances:
            continue
        # While requests wait on the parallel-job limit one idle agent stays, to take the next free slot.
        drains = _drain_idle(
            pool, state, index, c.active.get(template.name, []), blocked=blocked, keep=int(wanted), now=now
        )
        blocked -= len(drains)
        actions.extend(drains)
    # Jobs of a removed template whose agent sits idle: drain at once (they can never be used).
    configured = {t.name for t in pool.templates}
    for view in c.p.views:
        if view.busy or view.terminal or view.job.template in configured:
            continue
        if view.running and view.agent is not None and view.agent.online:
            actions.append(_drain(pool, state, view, view.agent, "its template was removed from the configuration"))
    return actions


def _drain_idle(
    pool: PoolConfig,
    state: PoolState,
    index: int,
    active: list[_JobView],
    *,
    blocked: int,
    keep: int,
    now: datetime,
) -> list[DrainAgent]:
    """Drains of one template's idle agents: those idle past idleTimeout beyond its minIdle (at least
    `keep`) and minAgents, then up to `blocked` more (oldest first) for queued jobs maxAgents holds back."""
    template = pool.templates[index]
    idle = [
        v for v in active if v.agent is not None and v.agent.online and v.agent.enabled and not v.busy and v.running
    ]
    keep_idle = max(keep, _min_idle(pool, index, now))
    keep_total = template.min_agents + (pool.min_agents if index == 0 else 0)
    removable = min(len(idle) - keep_idle, len(active) - keep_total)
    oldest_first = sorted(
        idle, key=lambda v: v.agent.status_changed_on if v.agent and v.agent.status_changed_on else _EPOCH
    )
    idle_timeout = timedelta(seconds=pool.idle_timeout)
    expired = [v for v in oldest_first if _age(v.agent.status_changed_on if v.agent else None, now) > idle_timeout]
    drained = expired[: max(0, removable)]
    reason = f"idle for more than idleTimeout ({pool.idle_timeout}s) and " + (
        "the requests queued for it wait on the parallel-job limit" if keep else "nothing queued for it"
    )
    drains = [_drain(pool, state, v, v.agent, reason) for v in drained if v.agent is not None]
    blocked -= len(drained)
    for view in [v for v in oldest_first if v not in drained][: max(0, blocked)]:
        assert view.agent is not None
        drains.append(
            _drain(pool, state, view, view.agent, "a queued job of another template needs its slot (maxAgents)")
        )
    return drains


def plan(config: Config, world: World, now: datetime) -> list[Action]:
    """Every action this pass should take, in the order `apply` should take them."""
    world = on_our_clock(world, now)
    config, actions = _learn_standby(config, world, now)
    pods_by_job = _pods_by_job(world.pods)
    job_names = {j.name for j in world.jobs}
    by_pool = _jobs_by_pool(world)
    budget = config.max_create_per_pass
    states = _states_by_name(world)
    for pool in config.pools:
        state = states.get(pool.name)
        if state is None:
            continue  # not observed in this pass (its next poll is not due yet)
        if not state.found:
            actions.append(ReportMissingPool(pool=pool.name))
            continue
        pool_actions = _plan_pool(
            config,
            pool,
            state,
            world,
            now,
            create_budget=budget,
            jobs=by_pool.get((names.pool_slug(pool.name), pool.namespace), []),
            pods_by_job=pods_by_job,
            job_names=job_names,
        )
        budget -= sum(1 for a in pool_actions if isinstance(a, CreateJob))
        actions.extend(pool_actions)
    actions.extend(_plan_removed_pools(config, world, now, by_pool=by_pool, pods_by_job=pods_by_job)[0])
    return actions


REMOVED_POOL_REASON = "its pool was removed from the configuration"


def _plan_removed_pools(
    config: Config,
    world: World,
    now: datetime,
    *,
    by_pool: Mapping[tuple[str, str], list[AgentJob]],
    pods_by_job: Mapping[tuple[str, str], AgentPod],
    force: bool = False,
) -> tuple[list[Action], list[str]]:
    """Pools no longer configured. One whose agents this pass listed (`world.removed`) is cleaned as
    `cleanup` cleans a release's pool, its busy Jobs kept (returned) unless `force`; of the others, Jobs
    whose pod can no longer be running a job are deleted. The Jobs are grouped by pool already: when every
    group is configured, none is looked at."""
    configured = {(names.pool_slug(p.name), p.namespace) for p in config.pools}
    unconfigured = by_pool.keys() - configured
    actions: list[Action] = []
    kept: list[str] = []
    listed = set()
    for state in world.removed:
        slug = names.pool_slug(state.name)
        listed.add(slug)
        jobs = [job for key in sorted(unconfigured) if key[0] == slug for job in by_pool[key]]
        pool = PoolConfig(name=state.name, namespace=jobs[0].namespace if jobs else config.namespace, templates=())
        p = _pool_pass(config, pool, state, world, now, jobs=jobs, pods_by_job=pods_by_job)
        pool_actions, pool_kept = _cleanup_pool(p, force=force, reason=REMOVED_POOL_REASON)
        actions.extend(pool_actions)
        kept.extend(pool_kept)
    for key in sorted(unconfigured):
        for job in by_pool[key] if key[0] not in listed else ():
            pod = pods_by_job.get((job.namespace, job.name))
            if not job.deleting and (pod is None or pod.phase != "Running" or job.done):
                actions.append(
                    DeleteJob(
                        pool=job.pool_name or job.pool_slug,
                        namespace=job.namespace,
                        job_name=job.name,
                        reason=REMOVED_POOL_REASON,
                    )
                )
    return actions, kept


def _learn_standby(config: Config, world: World, now: datetime) -> tuple[Config, list[Action]]:
    """The configuration with each learning template's standby windows from the recorded history
    (standby.learned) added, and the write of the history when an hour's peak of queued+running requests
    routed to a template (in pools read this pass) rose."""
    history = world.standby_history
    if history is None:
        return config, []
    peaks = dict(history.peaks)
    rose: list[tuple[str, str]] = []
    pools = []
    for pool in config.pools:
        if all(t.learn is None for t in pool.templates):
            pools.append(pool)
            continue
        counts = _routed_counts(config, pool, world)
        templates = []
        for template in pool.templates:
            if template.learn is not None:
                key = standby.history_key(names.pool_slug(pool.name), template.name)
                buckets = peaks.get(key, {})
                count = None if counts is None else counts[template.name]
                recorded = None if count is None else standby.record(buckets, now, template.learn.zone, count)
                if recorded is not None:
                    peaks[key] = recorded
                    rose.append((pool.name, f"{pool.name}/{template.name}: {count}"))
                windows = standby.learned_windows(buckets, template.learn, now)
                template = replace(template, standby=template.standby + windows)
            templates.append(template)
        pools.append(replace(pool, templates=tuple(templates)))
    config = replace(config, pools=tuple(pools))
    if not rose:
        return config, []
    write = RecordStandbyHistory(
        pool=rose[0][0],
        history=replace(history, peaks=peaks),
        reason="the hour's peak of queued+running requests rose: " + ", ".join(text for _, text in rose),
    )
    return config, [write]


def _routed_counts(config: Config, pool: PoolConfig, world: World) -> Counter[str] | None:
    """Unfinished requests (queued and running) of a pool read this pass, by the template they route to."""
    state = world.pool(pool.name)
    if state is None or not state.found:
        return None
    router = _Router(config, pool, world.learned)
    routes = (router.route(r.demands) for r in state.requests if not r.finished)
    return Counter(template.name for template in routes if template is not None)


@dataclass(frozen=True)
class _PoolScan:
    """One pool's inputs to the rules that decide whether this pass lists its agents (`pools_needing_agents`).
    Not a `_PoolPass`: those rules see every Job of the pool, those being deleted too, with its newest pod."""

    config: Config
    pool: PoolConfig
    state: PoolState
    world: World
    jobs: list[AgentJob]
    pods_by_job: Mapping[tuple[str, str], AgentPod]
    observed: datetime
    """When the pool's agents were last listed."""
    now: datetime


def _learning_due(s: _PoolScan) -> bool:
    """Whether to read the agent list to learn what a template's agents advertise (its placeholder keeps
    it): while a template is unlearned, when one of its agents registered since the last scan and is still
    there to be read (its pod runs and published the agent id), or, at most once per LEARN_RETRY, when a
    queued request is unroutable with what this run knows."""
    pool, world = s.pool, s.world
    unlearned = {t.name for t in pool.templates if t.placeholder and (pool.name, t.name) not in world.learned}
    if not unlearned:
        return False
    since = s.observed.replace(microsecond=0)  # Kubernetes writes whole seconds
    for job in s.jobs:
        pod = s.pods_by_job.get((job.namespace, job.name))
        if job.template in unlearned and pod is not None and pod.agent_id is not None and pod.phase == "Running":
            registered_since_scan = pod.started is not None and pod.started >= since
            if registered_since_scan:
                return True
    if s.now - s.observed < LEARN_RETRY:
        return False
    router = _Router(s.config, pool, world.learned)
    return any(r.queued and in_shard(s.config, r, s.now) and router.route(r.demands) is None for r in s.state.requests)


def pools_needing_agents(config: Config, world: World, now: datetime) -> set[str]:
    """Pools whose agent list this pass must read: listing agents costs an API call per pool, so it
    is read only when something may have changed (DESIGN: one list per resource kind, and only when
    needed): no scan for `sweepInterval`, a template's capabilities to learn, a pod of ours finished
    since the last scan, or idle pods beyond the standby allowance that may be due for
    draining or never came online."""
    config, _ = _learn_standby(config, world, now)
    needed: set[str] = set()
    world = on_our_clock(world, now)
    pods_by_job = _pods_by_job(world.pods)
    by_pool = _jobs_by_pool(world)
    states = _states_by_name(world)
    sweep = timedelta(seconds=config.sweep_interval)
    for pool in config.pools:
        state = states.get(pool.name)
        if state is None or not state.found:
            continue
        observed = world.agents_observed.get(pool.name)
        if observed is None or now - observed >= sweep:
            needed.add(pool.name)
            continue
        jobs = by_pool.get((names.pool_slug(pool.name), pool.namespace), [])
        scan = _PoolScan(config, pool, state, world, jobs, pods_by_job, observed, now)
        if _learning_due(scan) or _jobs_need_agents(scan):
            needed.add(pool.name)
    return needed


def _jobs_need_agents(s: _PoolScan) -> bool:
    """Whether the pool's Jobs call for its agent list before the next sweep: a finished pod whose agent is not
    known to be pruned (finished since the last scan, or holding a request), a Job of a removed template, idle
    pods beyond the standby allowance, or an idle pod while maxAgents holds queued demand back."""
    pool, world, now = s.pool, s.world, s.now
    # Kubernetes writes finish times in whole seconds: a pod that finished in the same second as
    # the last scan, but after it, must still trigger a scan.
    observed = s.observed.replace(microsecond=0)
    busy = _busy_names(s.state)
    idle_long = idle_now = unfinished = 0
    threshold = timedelta(seconds=min(pool.idle_timeout, pool.provisioning_timeout))
    allowance = sum(_min_idle(pool, index, now) for index in range(len(pool.templates)))
    configured = {t.name for t in pool.templates}
    for job in s.jobs:
        pod = s.pods_by_job.get((job.namespace, job.name))
        pod_done = pod is not None and pod.terminal
        if job.done or pod_done:
            if pod is not None and pod.name.lower() in busy:
                return True  # a request held by an agent whose pod is done: rescue needs its status
            finished = job.finished or (pod.finished if pod is not None and pod_done else None)
            known = pod is not None and (pod.name.lower() in world.agent_ids or pod.name.lower() in world.pruned)
            if not known and (finished is None or finished >= observed):
                return True
            continue
        if job.pool_name is not None and job.template not in configured:
            return True
        unfinished += 1
        if pod is not None and pod.phase == "Running" and pod.name.lower() not in busy:
            idle_now += 1
            if _age(pod.started or pod.created, now) > threshold:
                idle_long += 1
    # Idle agents may be due for draining; or maxAgents holds queued demand back while an agent sits
    # idle, and a standby may have to give way to it.
    full = idle_now > 0 and unfinished >= pool.max_agents
    return idle_long > allowance or (full and any(r.queued and in_shard(s.config, r, now) for r in s.state.requests))


CLEANUP_REASON = "the release is being removed"


def cleanup_plan(config: Config, world: World, now: datetime, *, force: bool) -> tuple[list[Action], list[str]]:
    """What `azp-reconciler cleanup` does before a release goes: deregister its placeholders and its
    agents that run no job, drain its idle agents, delete its Jobs that run no pipeline job (pending,
    starting, finished). A Job whose agent is busy is kept, and named in the second list, unless `force`.
    Only agents and Jobs of this release's shard are looked at (its Jobs by label, its agents by name), in
    its configured pools and in the pools it no longer configures but still holds something of (`world.removed`)."""
    actions: list[Action] = []
    kept: list[str] = []
    pods_by_job = _pods_by_job(world.pods)
    by_pool = _jobs_by_pool(world)
    states = _states_by_name(world)
    for pool in config.pools:
        state = states.get(pool.name)
        if state is None or state.pool_id is None or state.agents is None:
            continue
        jobs = by_pool.get((names.pool_slug(pool.name), pool.namespace), [])
        p = _pool_pass(config, pool, state, world, now, jobs=jobs, pods_by_job=pods_by_job)
        pool_actions, pool_kept = _cleanup_pool(p, force=force, reason=CLEANUP_REASON)
        actions.extend(pool_actions)
        kept.extend(pool_kept)
    removed_actions, removed_kept = _plan_removed_pools(
        config, world, now, by_pool=by_pool, pods_by_job=pods_by_job, force=force
    )
    return [*actions, *removed_actions], [*kept, *removed_kept]


def _cleanup_pool(p: _PoolPass, *, force: bool, reason: str) -> tuple[list[Action], list[str]]:
    """A pool's Jobs that run no pipeline job (all with `force`) and its agents without a Job; the busy Jobs
    kept, by namespace/name."""
    actions: list[Action] = []
    kept: list[str] = []
    for view in p.views:
        if view.busy and not force:
            kept.append(f"{view.job.namespace}/{view.job.name}")
        else:
            actions.append(_cleanup_job(p, view, reason))
    actions.extend(_cleanup_agents(p, reason))
    return actions, kept


def _cleanup_job(p: _PoolPass, view: _JobView, reason: str) -> Action:
    agent = view.agent
    if agent is not None and agent.online and not view.busy and view.running:
        return _drain(p.pool, p.state, view, agent, reason)
    unregister = agent is not None and not view.busy
    return DeleteJob(
        pool=p.pool.name,
        namespace=view.job.namespace,
        job_name=view.job.name,
        reason=reason,
        agent_id=agent.agent_id if unregister and agent is not None else None,
        pool_id=p.pool_id,
    )


def _cleanup_agents(p: _PoolPass, reason: str) -> list[Action]:
    """The release's placeholders and its agents without a Job (theirs is gone or being deleted) that run
    no job: offline ones are deregistered, online ones drained (disabled and re-read first)."""
    ours = names.agent_prefix(p.config.owner, pool_name=p.pool.name).lower()
    placeholders = names.placeholder_prefix(p.config.owner, pool_name=p.pool.name).lower()
    with_job = {v.pod.name.lower() for v in p.views if v.pod is not None}
    actions: list[Action] = []
    for agent in p.state.agents or ():
        key = agent.name.lower()
        if key in p.busy or agent.busy or key in with_job or not key.startswith((placeholders, ours)):
            continue
        if agent.online and not key.startswith(placeholders):
            actions.append(
                DrainAgent(
                    pool=p.pool.name,
                    pool_id=p.pool_id,
                    agent_id=agent.agent_id,
                    agent_name=agent.name,
                    namespace=None,
                    job_name=None,
                    reason=reason,
                )
            )
        else:
            actions.append(
                DeleteAgent(
                    pool=p.pool.name,
                    pool_id=p.pool_id,
                    agent_id=agent.agent_id,
                    agent_name=agent.name,
                    reason=reason,
                )
            )
    return actions
