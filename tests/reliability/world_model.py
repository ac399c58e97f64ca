"""A small, fast model of the world the reconciler lives in, for property tests over many passes.

It plays Azure DevOps (pools, placeholders, once-agents, the queue and its assignment rule), the
Kubernetes Job controller and kubelet (pods that start, never register, fail to pull, finish, expire
by TTL) and the environment (arrivals, cancellations, pods failing, agents dying), and runs the real,
pure `plan()` each pass, applying its actions the way apply.py does (placeholders first, then creates,
drains with a re-read, deletions), with optional failures. It records every unsafe thing an action
does, so a property test can assert there are none.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler import names
from reconciler.demands import satisfies_all
from reconciler.model import (
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
from reconciler.plan import plan

T0 = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
NAMESPACE = "agents"
PREFIX = "azp"
OWNER = names.Owner(prefix=PREFIX, release="azp-agents")
ORDER = (
    "register-placeholder",
    "update-placeholder",
    "create-job",
    "drain-agent",
    "disable-agent",
    "delete-job",
    "delete-agent",
)
TEMPLATE_CAPS = ({"docker": ""}, {"java": "17"})
START_SECONDS = 5
REGISTER_SECONDS = 5
JOB_SECONDS = 20


@dataclass
class MAgent:
    agent_id: int
    name: str
    pool: str
    caps: dict[str, str]
    online: bool
    enabled: bool
    changed: datetime
    ours: bool
    assigned: int | None = None
    completed: int | None = None
    job: str | None = None


@dataclass
class MPod:
    name: str
    job: str
    created: datetime
    fate: str  # ok | never-registers | pull-error
    phase: str = "Pending"
    started: datetime | None = None
    finished: datetime | None = None


@dataclass
class MJob:
    name: str
    pool: str
    template: str
    request_id: int | None
    created: datetime
    pod: MPod
    finished: datetime | None = None
    failed: bool = False


@dataclass
class MRequest:
    request_id: int
    pool: str
    demands: tuple[str, ...]
    queued_at: datetime
    agent: int | None = None
    assigned_at: datetime | None = None
    result: str | None = None


def make_config(pools: list[dict[str, Any]], *, max_create: int = 200) -> Config:
    """A Config of pools described as {name, templates: n, max_agents, min_idle}."""
    built = []
    for pool in pools:
        templates = tuple(
            TemplateConfig(name=f"t{i}", job_template=f"/t/t{i}.yaml", capabilities=frozen_map(TEMPLATE_CAPS[i]))
            for i in range(pool["templates"])
        )
        built.append(
            PoolConfig(
                name=pool["name"],
                namespace=NAMESPACE,
                templates=templates,
                max_agents=pool["max_agents"],
                min_idle=pool["min_idle"],
                provisioning_timeout=60,
                idle_timeout=30,
            )
        )
    return Config(
        organization="https://dev.azure.com/contoso",
        pools=tuple(built),
        namespace=NAMESPACE,
        job_name_prefix=PREFIX,
        ttl_seconds_after_finished=60,
        max_create_per_pass=max_create,
    )


@dataclass
class Model:
    """The modelled world; `violations` lists every unsafe effect of the reconciler's actions."""

    config: Config
    rng: random.Random
    now: datetime = T0
    agents: dict[int, MAgent] = field(default_factory=dict)
    jobs: dict[str, MJob] = field(default_factory=dict)
    requests: dict[int, MRequest] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    fault_rate: float = 0.0
    partial_drains: float = 0.0
    """The chance that a drain stops after disabling the agent (its re-read or a deletion failed)."""
    stuck_rate: float = 0.0
    failing_kinds: set[str] = field(default_factory=set)
    """Action kinds that always fail (a permission missing, an API down)."""
    passes: int = 0
    faults: int = 0
    env_aborts: int = 0
    next_id: int = 1
    next_request: int = 1000

    def __post_init__(self) -> None:
        for pool in self.config.pools:
            self._new_agent(pool.name, "build-server-01", online=True, enabled=True, ours=False, caps={"docker": ""})

    def _new_agent(
        self, pool: str, name: str, *, online: bool, enabled: bool, ours: bool, caps: dict[str, str]
    ) -> MAgent:
        agent = MAgent(self.next_id, name, pool, dict(caps), online, enabled, self.now, ours)
        self.agents[agent.agent_id] = agent
        self.next_id += 1
        return agent

    def pool(self, name: str) -> PoolConfig:
        found = self.config.pool(name)
        assert found is not None
        return found

    # --- the environment ---------------------------------------------------------------------------

    def arrive(self, pool: str, demands: tuple[str, ...]) -> None:
        """Queue a pipeline job; like the service, fail it at once when no agent could ever take it."""
        request = MRequest(self.next_request, pool, demands, self.now)
        self.next_request += 1
        self.requests[request.request_id] = request
        if not any(a.pool == pool and satisfies_all(demands, a.caps) for a in self.agents.values()):
            request.result = "failed"

    def cancel(self, nth: int) -> None:
        unfinished = [r for r in self.requests.values() if r.result is None]
        if unfinished:
            self._finish(unfinished[nth % len(unfinished)], "canceled")

    def pod_fails(self, nth: int) -> None:
        """An agent pod dies under us (node lost, OOM): its agent, if any, is lost with its job."""
        pods = [j for j in self.jobs.values() if j.finished is None and not j.failed]
        if pods:
            job = pods[nth % len(pods)]
            self._kill_pod(job, by_us=False)

    def agent_dies(self, nth: int) -> None:
        """An agent process of ours stops (its pod keeps running): it goes offline, its job fails."""
        online = [a for a in self.agents.values() if a.ours and a.online]
        if online:
            self._lose(online[nth % len(online)], by_us=False)

    def _lose(self, agent: MAgent, *, by_us: bool) -> None:
        if agent.assigned is not None:
            request = self.requests[agent.assigned]
            if by_us:
                self.violations.append(
                    f"request {request.request_id} aborted: the reconciler killed agent {agent.name}"
                )
            else:
                self.env_aborts += 1
            request.result = "failed"
            agent.completed, agent.assigned = request.request_id, None
        if agent.online:
            agent.online, agent.changed = False, self.now

    def _kill_pod(self, job: MJob, *, by_us: bool) -> None:
        pod = job.pod
        if pod.phase in ("Succeeded", "Failed"):
            return
        for agent in self.agents.values():
            if agent.job == job.name and agent.online:
                self._lose(agent, by_us=by_us)
        pod.phase, pod.finished = "Failed", self.now
        job.failed, job.finished = True, self.now

    def _finish(self, request: MRequest, result: str) -> None:
        request.result = result
        agent = self.agents.get(request.agent) if request.agent is not None else None
        if agent is not None and agent.assigned == request.request_id:
            agent.assigned, agent.completed = None, request.request_id
            if agent.ours and agent.online:
                agent.online, agent.changed = False, self.now
                job = self.jobs.get(agent.job or "")
                if job is not None and job.pod.phase == "Running":
                    job.pod.phase, job.pod.finished, job.finished = "Succeeded", self.now, self.now

    def assign(self) -> None:
        """The service hands queued jobs, oldest first, to free online enabled agents that satisfy them."""
        for request in sorted(self.requests.values(), key=lambda r: (r.queued_at, r.request_id)):
            if request.result is not None or request.agent is not None:
                continue
            for agent in self.agents.values():
                if (
                    agent.pool == request.pool
                    and agent.online
                    and agent.enabled
                    and agent.assigned is None
                    and not (agent.ours and agent.completed is not None)
                    and satisfies_all(request.demands, agent.caps)
                ):
                    request.agent, request.assigned_at, agent.assigned = agent.agent_id, self.now, request.request_id
                    break

    def tick(self, seconds: float) -> None:
        """Time passes: pods start, agents register, jobs run and finish, the TTL controller cleans up."""
        self.now += timedelta(seconds=seconds)
        for job in list(self.jobs.values()):
            pod = job.pod
            if (
                pod.phase == "Pending"
                and pod.fate != "pull-error"
                and self.now - pod.created >= timedelta(seconds=START_SECONDS)
            ):
                pod.phase, pod.started = "Running", self.now
            if (
                pod.phase == "Running"
                and pod.fate == "ok"
                and pod.started is not None
                and self.now - pod.started >= timedelta(seconds=REGISTER_SECONDS)
                and not any(a.name == pod.name for a in self.agents.values())
            ):
                template = self.pool(job.pool).template(job.template)
                caps = dict(template.capabilities) if template else {}
                agent = self._new_agent(job.pool, pod.name, online=True, enabled=True, ours=True, caps=caps)
                agent.job = job.name
            if job.finished is not None and self.now - job.finished >= timedelta(
                seconds=self.config.ttl_seconds_after_finished
            ):
                del self.jobs[job.name]
        for request in list(self.requests.values()):
            if (
                request.result is None
                and request.assigned_at is not None
                and self.now - request.assigned_at >= timedelta(seconds=JOB_SECONDS)
            ):
                self._finish(request, "succeeded")
        self.assign()

    # --- one pass of the reconciler ----------------------------------------------------------------

    def world(self, *, agents_known: bool) -> World:
        states = []
        for pool_index, pool in enumerate(self.config.pools):
            requests = tuple(
                JobRequest(
                    request_id=r.request_id,
                    queue_time=r.queued_at,
                    demands=r.demands,
                    assign_time=r.assigned_at,
                    receive_time=r.assigned_at,
                    reserved_agent_id=r.agent,
                    reserved_agent_name=self.agents[r.agent].name if r.agent in self.agents else None,
                )
                for r in self.requests.values()
                if r.pool == pool.name and r.result is None
            )
            agents = tuple(
                Agent(
                    agent_id=a.agent_id,
                    name=a.name,
                    enabled=a.enabled,
                    status="online" if a.online else "offline",
                    assigned_request_id=a.assigned,
                    completed_request_id=a.completed,
                    status_changed_on=a.changed,
                    created_on=a.changed,
                    capabilities=frozen_map(a.caps),
                )
                for a in self.agents.values()
                if a.pool == pool.name
            )
            states.append(
                PoolState(
                    name=pool.name, pool_id=pool_index + 1, requests=requests, agents=agents if agents_known else None
                )
            )
        jobs = tuple(
            AgentJob(
                name=j.name,
                namespace=NAMESPACE,
                pool_slug=names.pool_slug(j.pool),
                pool_name=j.pool,
                template=j.template,
                request_id=j.request_id,
                standby=j.request_id is None,
                created=j.created,
                finished=j.finished,
                failed=j.failed,
            )
            for j in self.jobs.values()
        )
        pods = tuple(
            AgentPod(
                name=j.pod.name,
                namespace=NAMESPACE,
                job_name=j.name,
                phase=j.pod.phase,
                created=j.pod.created,
                started=j.pod.started,
                finished=j.pod.finished,
                reason="ErrImagePull" if j.pod.fate == "pull-error" and j.pod.phase == "Pending" else None,
            )
            for j in self.jobs.values()
        )
        observed = {p.name: self.now for p in self.config.pools} if agents_known else {}
        return World(pools=tuple(states), jobs=jobs, pods=pods, agents_observed=observed)

    def run_pass(self, *, agents_known: bool = True, race: bool = False) -> None:
        """plan() on a snapshot, then its actions in apply's order (the service may assign a job in between)."""
        self.passes += 1
        actions = plan(self.config, self.world(agents_known=agents_known), self.now)
        if race:
            self.assign()
        for action in sorted(actions, key=lambda a: ORDER.index(a.kind) if a.kind in ORDER else -1):
            if action.kind in self.failing_kinds or (
                self.fault_rate and self.rng.random() < self.fault_rate and not self._spared(action)
            ):
                self.faults += 1
                continue
            self._apply(action)
        self._check()

    def _spared(self, action: Any) -> bool:
        """Random faults spare the deletion of a stuck Job: its replacement is created first, so a failed
        deletion leaves maxAgents + 1 Jobs (test_properties.test_stuck_job_replaced_before_it_is_deleted)."""
        return isinstance(action, DeleteJob) and action.reason.startswith("stuck")

    def _delete_agent(self, agent_id: int, why: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        if agent.assigned is not None:
            self.violations.append(f"{why}: deleted agent {agent.name} while it ran request {agent.assigned}")
            return
        if not agent.ours and not agent.name.startswith(f"{PREFIX}-placeholder-"):
            self.violations.append(f"{why}: deleted agent {agent.name}, which is not ours")
        if agent.name.startswith(f"{PREFIX}-placeholder-"):
            pool = self.pool(agent.pool)
            configured = {names.placeholder_name(OWNER, pool_name=pool.name, template=t.name) for t in pool.templates}
            if agent.name in configured:
                self.violations.append(f"{why}: deleted the placeholder {agent.name} of a configured template")
        del self.agents[agent_id]

    def _delete_job(self, name: str | None, why: str) -> None:
        job = self.jobs.get(name or "")
        if job is None:
            return
        self._kill_pod(job, by_us=True)
        del self.jobs[job.name]

    def _apply(self, action: Any) -> None:
        if isinstance(action, RegisterPlaceholder):
            if not any(a.name == action.agent_name and a.pool == action.pool for a in self.agents.values()):
                self._new_agent(
                    action.pool,
                    action.agent_name,
                    online=False,
                    enabled=False,
                    ours=False,
                    caps=dict(action.capabilities),
                )
        elif isinstance(action, UpdatePlaceholder):
            agent = self.agents.get(action.agent_id)
            if agent is not None:
                agent.caps, agent.enabled = dict(action.capabilities), False
        elif isinstance(action, CreateJob):
            if action.job_name in self.jobs:
                return  # 409 AlreadyExists
            roll = self.rng.random()
            fate = (
                "ok" if roll >= self.stuck_rate else ("never-registers" if roll < self.stuck_rate / 2 else "pull-error")
            )
            pod = MPod(name=f"{action.job_name}-p{self.next_id}", job=action.job_name, created=self.now, fate=fate)
            self.next_id += 1
            self.jobs[action.job_name] = MJob(
                action.job_name, action.pool, action.template, action.request_id, self.now, pod
            )
        elif isinstance(action, DrainAgent):
            agent = self.agents.get(action.agent_id)
            if agent is None:
                return
            agent.enabled = False
            if self.partial_drains and self.rng.random() < self.partial_drains:
                self.faults += 1
                return  # the re-read or a later call failed: the drain stops half done
            if agent.assigned is not None:
                agent.enabled = True  # got a job while draining: let it run
                return
            self._delete_job(action.job_name, "drain")
            self._delete_agent(action.agent_id, "drain")
        elif isinstance(action, DisableAgent):
            agent = self.agents.get(action.agent_id)
            if agent is not None:
                agent.enabled = False  # its running job goes on; the service gives it no other
        elif isinstance(action, DeleteJob):
            self._delete_job(action.job_name, f"delete-job ({action.reason})")
            if action.agent_id is not None:
                self._delete_agent(action.agent_id, f"delete-job ({action.reason})")
        elif isinstance(action, DeleteAgent):
            self._delete_agent(action.agent_id, f"delete-agent ({action.reason})")

    def unfinished(self) -> int:
        return sum(1 for r in self.requests.values() if r.result is None)

    def active_jobs(self, pool: str) -> list[MJob]:
        return [j for j in self.jobs.values() if j.pool == pool and j.finished is None and not j.failed]

    def _check(self) -> None:
        for pool in self.config.pools:
            active = len(self.active_jobs(pool.name))
            if active > pool.max_agents:
                self.violations.append(
                    f"pass {self.passes}: pool {pool.name}: {active} active Jobs > maxAgents {pool.max_agents}"
                )

    def leftovers(self) -> list[str]:
        """What must be gone a few passes after the queue empties."""
        found = []
        for pool in self.config.pools:
            allowance = pool.min_idle + sum(t.min_idle for t in pool.templates)
            queued = [r.request_id for r in self.requests.values() if r.pool == pool.name and r.result is None]
            if queued:
                found.append(f"pool {pool.name}: requests never finished {queued}")
            ours = [a for a in self.agents.values() if a.pool == pool.name and a.ours]
            offline = [a.name for a in ours if not a.online]
            idle = [a.name for a in ours if a.online and a.assigned is None]
            if offline:
                found.append(f"pool {pool.name}: offline agents of ours {offline}")
            if len(idle) > allowance:
                found.append(f"pool {pool.name}: {len(idle)} idle agents > minIdle {allowance}")
            active = len(self.active_jobs(pool.name))
            if active > allowance:
                found.append(f"pool {pool.name}: {active} active Jobs > minIdle {allowance}")
        return found
