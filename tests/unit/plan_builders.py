"""Small builders for configs and worlds, so plan tests read like the rules they check."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from reconciler import names
from reconciler.model import (
    Action,
    Agent,
    AgentJob,
    AgentPod,
    Config,
    CreateJob,
    DeleteAgent,
    DeleteJob,
    DisableAgent,
    DrainAgent,
    JobRequest,
    PoolConfig,
    PoolState,
    RegisterPlaceholder,
    TemplateConfig,
    UpdatePlaceholder,
    World,
    frozen_map,
)

NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
PREFIX = "azp"
OWNER = names.Owner(prefix=PREFIX, release="azp-agents")


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def template(name: str = "default", **kwargs: object) -> TemplateConfig:
    caps = kwargs.pop("capabilities", {})
    return TemplateConfig(name=name, job_template=f"/t/{name}.yaml", capabilities=frozen_map(caps), **kwargs)  # type: ignore[arg-type]


def pool(name: str = "linux", *templates: TemplateConfig, **kwargs: object) -> PoolConfig:
    return PoolConfig(name=name, namespace="agents", templates=templates or (template(placeholder=False),), **kwargs)  # type: ignore[arg-type]


def config(*pools: PoolConfig, **kwargs: object) -> Config:
    return Config(
        organization="https://dev.azure.com/contoso",
        pools=pools or (pool(),),
        namespace="agents",
        job_name_prefix=PREFIX,
        **kwargs,
    )  # type: ignore[arg-type]


def queued(request_id: int, *demands: str, at: float = 30) -> JobRequest:
    return JobRequest(request_id=request_id, queue_time=ago(at), demands=demands)


def running(request_id: int, agent_name: str, agent_id: int = 0, *demands: str) -> JobRequest:
    return JobRequest(
        request_id=request_id,
        queue_time=ago(120),
        assign_time=ago(100),
        receive_time=ago(99),
        reserved_agent_id=agent_id or None,
        reserved_agent_name=agent_name,
        demands=demands,
    )


def job_for(
    pool_name: str,
    *,
    request_id: int | None = None,
    template_name: str = "default",
    name: str | None = None,
    created: float = 10,
    finished: float | None = None,
    failed: bool = False,
    slot: int = 0,
    crash_failures: int = 0,
) -> AgentJob:
    if name is None:
        name = (
            names.request_job_name(OWNER, pool_name=pool_name, request_id=request_id)
            if request_id is not None
            else names.standby_job_name(OWNER, pool_name=pool_name, template=template_name, slot=slot)
        )
    return AgentJob(
        name=name,
        namespace="agents",
        pool_slug=names.pool_slug(pool_name),
        pool_name=pool_name,
        template=template_name,
        request_id=request_id,
        standby=request_id is None,
        created=ago(created),
        finished=ago(finished) if finished is not None else None,
        failed=failed,
        crash_failures=crash_failures,
    )


def pod_for(
    job: AgentJob,
    *,
    phase: str = "Running",
    suffix: str = "abcde",
    created: float = 9,
    started: float | None = 8,
    reason: str | None = None,
    message: str | None = None,
    finished: float | None = None,
) -> AgentPod:
    return AgentPod(
        name=f"{job.name}-{suffix}",
        namespace=job.namespace,
        job_name=job.name,
        phase=phase,
        created=ago(created),
        started=ago(started) if started is not None and phase != "Pending" else None,
        reason=reason,
        message=message,
        finished=ago(finished) if finished is not None else None,
    )


def agent(
    agent_id: int,
    name: str,
    *,
    online: bool = True,
    enabled: bool = True,
    busy_with: int | None = None,
    completed: int | None = None,
    changed: float = 5,
    capabilities: dict[str, str] | None = None,
) -> Agent:
    return Agent(
        agent_id=agent_id,
        name=name,
        enabled=enabled,
        status="online" if online else "offline",
        assigned_request_id=busy_with,
        completed_request_id=completed,
        status_changed_on=ago(changed),
        capabilities=frozen_map(capabilities or {}),
    )


def state(
    name: str = "linux", *requests: JobRequest, agents: tuple[Agent, ...] | None = None, pool_id: int = 7
) -> PoolState:
    return PoolState(name=name, pool_id=pool_id, requests=tuple(requests), agents=agents)


def world(*states: PoolState, jobs: tuple[AgentJob, ...] = (), pods: tuple[AgentPod, ...] = ()) -> World:
    return World(pools=states, jobs=jobs, pods=pods)


def of(kind: type, actions: list[Action]) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]


def _disabled(state: PoolState, agent_id: int) -> PoolState:
    """The pool as the service shows it once an agent is disabled: in its list and in the requests it holds."""
    agents = state.agents
    if agents is not None:
        agents = tuple(replace(a, enabled=False) if a.agent_id == agent_id else a for a in agents)
    requests = tuple(
        replace(r, reserved_agent_enabled=False) if r.reserved_agent_id == agent_id else r for r in state.requests
    )
    return replace(state, agents=agents, requests=requests)


def apply_to_world(world_: World, actions: list[Action], *, next_agent_id: int = 10_000) -> World:
    """What the world looks like right after a plan's actions succeed (no time passes)."""
    jobs = list(world_.jobs)
    pods = list(world_.pods)
    states = {s.name: s for s in world_.pools}
    for action in actions:
        if isinstance(action, CreateJob):
            jobs.append(
                AgentJob(
                    name=action.job_name,
                    namespace=action.namespace,
                    pool_slug=names.pool_slug(action.pool),
                    pool_name=action.pool,
                    template=action.template,
                    request_id=action.request_id,
                    standby=action.request_id is None,
                    created=NOW,
                    crash_failures=action.crash_failures,
                )
            )
        elif isinstance(action, DeleteJob | DrainAgent):
            jobs = [j for j in jobs if not (j.name == action.job_name and j.namespace == action.namespace)]
            pods = [p for p in pods if not (p.job_name == action.job_name and p.namespace == action.namespace)]
        if isinstance(action, DeleteAgent | DrainAgent) or (
            isinstance(action, DeleteJob) and action.agent_id is not None
        ):
            st = states[action.pool]
            if st.agents is not None:
                states[action.pool] = replace(st, agents=tuple(a for a in st.agents if a.agent_id != action.agent_id))
        if isinstance(action, DisableAgent):
            states[action.pool] = _disabled(states[action.pool], action.agent_id)
        if isinstance(action, RegisterPlaceholder):
            st = states[action.pool]
            next_agent_id += 1
            placeholder = Agent(
                agent_id=next_agent_id,
                name=action.agent_name,
                enabled=False,
                status="offline",
                capabilities=action.capabilities,
            )
            states[action.pool] = replace(st, agents=(*(st.agents or ()), placeholder))
        if isinstance(action, UpdatePlaceholder):
            st = states[action.pool]
            states[action.pool] = replace(
                st,
                agents=tuple(
                    replace(a, capabilities=action.capabilities, enabled=False) if a.agent_id == action.agent_id else a
                    for a in st.agents or ()
                ),
            )
    return replace(world_, jobs=tuple(jobs), pods=tuple(pods), pools=tuple(states[s.name] for s in world_.pools))
