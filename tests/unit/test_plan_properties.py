"""Property-based tests of plan(): the safety rules hold for any world hypothesis can build."""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_builders import NOW, OWNER, PREFIX, apply_to_world, config, pool, template

from reconciler import names
from reconciler.model import (
    WRITE_KINDS,
    Agent,
    AgentJob,
    AgentPod,
    Config,
    CreateJob,
    DeleteAgent,
    DeleteJob,
    DrainAgent,
    JobRequest,
    PoolState,
    World,
    frozen_map,
)
from reconciler.plan import plan

EXAMPLES = int(os.environ.get("AZP_HYPOTHESIS_EXAMPLES", "300"))
DEMANDS = st.lists(
    st.sampled_from(["docker", "java -equals 17", "Agent.Version -gtVersion 2.182.1", "gpu"]), max_size=2, unique=True
)
TEMPLATES = [
    template("docker", capabilities={"docker": ""}),
    template("java", capabilities={"java": "17"}),
]


@st.composite
def configs(draw: st.DrawFn) -> Config:
    pools = []
    for name in draw(st.lists(st.sampled_from(["linux", "Win Pool"]), min_size=1, max_size=2, unique=True)):
        chosen = draw(st.lists(st.sampled_from(TEMPLATES), min_size=1, max_size=2, unique_by=lambda t: t.name))
        chosen = [
            t.__class__(
                **{
                    **t.__dict__,
                    "min_idle": draw(st.integers(0, 2)),
                    "max_agents": draw(st.none() | st.integers(0, 4)),
                    "placeholder": draw(st.booleans()),
                }
            )
            for t in chosen
        ]
        pools.append(
            pool(
                name,
                *chosen,
                max_agents=draw(st.integers(0, 6)),
                min_agents=draw(st.integers(0, 2)),
                idle_timeout=draw(st.sampled_from([60, 300])),
                provisioning_timeout=draw(st.sampled_from([60, 600])),
            )
        )
    return config(*pools, max_create_per_pass=draw(st.integers(1, 20)))


@st.composite
def worlds(draw: st.DrawFn, cfg: Config) -> World:
    jobs: list[AgentJob] = []
    pods: list[AgentPod] = []
    states: list[PoolState] = []
    request_id = 1
    for index, pool_cfg in enumerate(cfg.pools):
        requests: list[JobRequest] = []
        agents: list[Agent] = []
        agent_id = 100 * (index + 1)
        template_names = [t.name for t in pool_cfg.templates] + ["removed"]
        for _ in range(draw(st.integers(0, 6))):
            name = names.request_job_name(OWNER, pool_name=pool_cfg.name, request_id=request_id)
            request_id += 1
            phase = draw(st.sampled_from(["none", "Pending", "Running", "Succeeded", "Failed"]))
            created = NOW - timedelta(seconds=draw(st.integers(0, 2000)))
            done = phase in ("Succeeded", "Failed") and draw(st.booleans())
            job = AgentJob(
                name=name,
                namespace=pool_cfg.namespace,
                pool_slug=names.pool_slug(pool_cfg.name),
                pool_name=pool_cfg.name,
                template=draw(st.sampled_from(template_names)),
                request_id=request_id - 1,
                standby=False,
                created=created,
                finished=created + timedelta(seconds=5) if done else None,
            )
            jobs.append(job)
            if phase == "none":
                continue
            pod = AgentPod(
                name=f"{name}-abcde",
                namespace=job.namespace,
                job_name=name,
                phase=phase,
                created=created,
                started=created if phase != "Pending" else None,
                finished=created + timedelta(seconds=5) if phase in ("Succeeded", "Failed") else None,
                reason="ImagePullBackOff" if phase == "Pending" else None,
            )
            pods.append(pod)
            kind = draw(st.sampled_from(["none", "idle", "busy", "offline-done", "disabled"]))
            if kind == "none":
                continue
            agent_id += 1
            agents.append(
                Agent(
                    agent_id=agent_id,
                    name=pod.name,
                    enabled=kind != "disabled",
                    status="online" if kind in ("idle", "busy", "disabled") else "offline",
                    assigned_request_id=request_id + 1000 if kind == "busy" else None,
                    completed_request_id=1 if kind == "offline-done" else None,
                    status_changed_on=NOW - timedelta(seconds=draw(st.integers(0, 2000))),
                )
            )
            if kind == "busy" or (phase == "Running" and draw(st.booleans())):
                requests.append(
                    JobRequest(
                        request_id=request_id + 1000,
                        queue_time=created,
                        receive_time=created,
                        reserved_agent_id=agent_id,
                        reserved_agent_name=pod.name,
                    )
                )
        for _ in range(draw(st.integers(0, 8))):
            requests.append(
                JobRequest(
                    request_id=request_id,
                    queue_time=NOW - timedelta(seconds=draw(st.integers(0, 300))),
                    demands=tuple(draw(DEMANDS)),
                )
            )
            request_id += 1
        for extra in range(draw(st.integers(0, 3))):
            agent_id += 1
            kind = draw(st.sampled_from(["foreign", "ours-gone", "placeholder", "foreign-busy"]))
            name = {
                "foreign": f"build-server-{extra}",
                "foreign-busy": f"build-server-busy-{extra}",
                "ours-gone": f"{names.agent_prefix(OWNER, pool_name=pool_cfg.name)}999{extra}-zzzzz",
                "placeholder": names.placeholder_name(
                    OWNER, pool_name=pool_cfg.name, template=draw(st.sampled_from(template_names))
                ),
            }[kind]
            agents.append(
                Agent(
                    agent_id=agent_id,
                    name=name,
                    enabled=kind != "placeholder",
                    status=draw(st.sampled_from(["online", "offline"])),
                    assigned_request_id=5 if kind == "foreign-busy" or draw(st.booleans()) else None,
                    capabilities=frozen_map({}),
                )
            )
        observed = draw(st.booleans())
        states.append(
            PoolState(
                name=pool_cfg.name,
                pool_id=7 + index,
                requests=tuple(requests),
                agents=tuple(agents) if observed else None,
            )
        )
    return World(pools=tuple(states), jobs=tuple(jobs), pods=tuple(pods))


def _busy_names(world: World) -> set[str]:
    busy = set()
    for state in world.pools:
        busy |= {r.reserved_agent_name.lower() for r in state.requests if r.reserved_agent_name}
        busy |= {a.name.lower() for a in state.agents or () if a.busy}
    return busy


def _active(world: World, cfg: Config) -> dict[str, int]:
    pods = {(p.namespace, p.job_name): p for p in world.pods}
    counts: dict[str, int] = defaultdict(int)
    for job in world.jobs:
        pod = pods.get((job.namespace, job.name))
        if not job.done and not (pod and pod.terminal):
            counts[job.pool_name or ""] += 1
    return counts


scenario = st.data()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario)
def test_plan_safety_invariants(data: st.DataObject) -> None:
    """We test: for any world the plan never exceeds maxAgents, never deletes or drains a busy agent, never
    touches an agent that is not ours or a configured placeholder, never deletes a Job whose agent is busy,
    and is idempotent: applying it and planning again gives no new write."""
    cfg = data.draw(configs())
    world = data.draw(worlds(cfg))
    actions = plan(cfg, world, NOW)
    busy = _busy_names(world)
    agents = {a.agent_id: a for s in world.pools for a in s.agents or ()}
    placeholders = {
        names.placeholder_name(OWNER, pool_name=p.name, template=t.name).lower()
        for p in cfg.pools
        for t in p.templates
        if t.placeholder
    }
    pods_by_job = {(p.namespace, p.job_name): p for p in world.pods}

    for action in actions:
        if isinstance(action, DeleteAgent | DrainAgent):
            target = agents[action.agent_id]
            assert target.name.lower() not in busy and not target.busy, action
            assert target.name.startswith(f"{PREFIX}-"), action
            assert target.name.lower() not in placeholders, action
            if isinstance(action, DeleteAgent):
                assert not target.online, action
        if isinstance(action, DeleteJob):
            pod = pods_by_job.get((action.namespace, action.job_name))
            assert pod is None or pod.terminal or pod.name.lower() not in busy, action

    before = _active(world, cfg)
    after = _active(apply_to_world(world, actions), cfg)
    creates = [a for a in actions if isinstance(a, CreateJob)]
    assert len(creates) <= cfg.max_create_per_pass
    for pool_cfg in cfg.pools:
        made = [c for c in creates if c.pool == pool_cfg.name]
        if made:
            assert after[pool_cfg.name] <= max(pool_cfg.max_agents, before[pool_cfg.name]), (pool_cfg, made)
            assert after[pool_cfg.name] <= pool_cfg.max_agents
        for t in pool_cfg.templates:
            if t.max_agents is not None:
                assert sum(1 for c in made if c.template == t.name) <= max(0, t.max_agents)

    again = plan(cfg, apply_to_world(world, actions), NOW)
    new_writes = [a for a in again if a.kind in WRITE_KINDS and a not in actions]
    # A pass that hit the brake leaves the rest for the next one; a drain or a Job deletion frees room
    # only once it succeeded (it may fail or be aborted), so the next pass may fill that room.
    drained_pools = {a.pool for a in actions if isinstance(a, DrainAgent | DeleteJob)}
    if len(creates) < cfg.max_create_per_pass:
        late = [a for a in new_writes if isinstance(a, CreateJob) and a.pool not in drained_pools]
        assert late == [], late
    assert [a for a in again if a.kind in ("register-placeholder", "update-placeholder")] == []
