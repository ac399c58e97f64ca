"""Property tests of the disable of a running `--once` agent (plan._plan_once_disables): for any pool whose
requests are reserved by our pods' agents, by agents of another shard or release, or by agents that are not
ours, with or without a receiveTime, plan() disables only an agent of ours that runs its one job."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_builders import NOW, OWNER, agent, config, job_for, pod_for, pool, state, template, world
from test_plan_properties import EXAMPLES

from reconciler import names
from reconciler.model import AgentJob, AgentPod, Config, DisableAgent, JobRequest, World
from reconciler.plan import plan

POOL = "linux"
INSTANCE_TEMPLATE = "aci"
OTHERS = (
    replace(OWNER, shard=1),  # another shard of our release
    names.Owner(prefix=OWNER.prefix, release="other-release"),
)
PHASES = ("Pending", "Running", "Running", "Running", "Succeeded", "Failed")


def _config() -> Config:
    return config(
        pool(POOL, template(placeholder=False), template(INSTANCE_TEMPLATE, instances=2, placeholder=False)),
        shard_count=2,
    )


@st.composite
def _jobs(draw: st.DrawFn) -> tuple[list[AgentJob], list[AgentPod]]:
    """Our Jobs of the pool (request Jobs and instances), each with a pod in any phase or none."""
    jobs: list[AgentJob] = []
    pods: list[AgentPod] = []
    for n in range(draw(st.integers(0, 5))):
        instance = draw(st.integers(0, 3)) == 0
        job = (
            job_for(POOL, template_name=INSTANCE_TEMPLATE, name=f"azp-{OWNER.tag}-linux-aci-i{n}", created=100)
            if instance
            else job_for(POOL, request_id=n + 1, created=100, finished=draw(st.sampled_from([None, None, None, 5])))
        )
        jobs.append(job)
        phase = draw(st.sampled_from((None, *PHASES)))
        if phase is not None:
            pods.append(pod_for(job, phase=phase, finished=5 if phase in ("Succeeded", "Failed") else None))
    return jobs, pods


@st.composite
def reserved_worlds(draw: st.DrawFn) -> World:
    """One pool whose unfinished or finished requests are reserved by our pods' agents, by an agent of another
    shard or release, or by a foreign one; received or not; the agent shown enabled, disabled or neither in the
    request; the agents listed or not, each with either `enabled`."""
    jobs, pods = draw(_jobs())
    others = [f"{names.agent_prefix(o, pool_name=POOL)}{7 + i}-zzzzz" for i, o in enumerate(OTHERS)]
    holders = [p.name for p in pods] + others + ["build-server-01"]
    # Half the requests are held by one of our pods' agents, when there are any.
    ours = st.sampled_from(holders[: len(pods)]) if pods else st.nothing()
    requests = []
    for n in range(draw(st.integers(0, 6))):
        name = draw(ours | st.sampled_from(holders[len(pods) :]))
        received = draw(st.booleans())
        finished = received and draw(st.integers(0, 3)) == 0
        requests.append(
            JobRequest(
                request_id=100 + n,
                queue_time=NOW - timedelta(seconds=120),
                demands=(),
                assign_time=NOW - timedelta(seconds=100),
                receive_time=NOW - timedelta(seconds=99) if received else None,
                finish_time=NOW - timedelta(seconds=1) if finished else None,
                result="succeeded" if finished else None,
                reserved_agent_id=1 + holders.index(name),
                reserved_agent_name=name,
                reserved_agent_enabled=draw(st.sampled_from([True, True, False, None])),
            )
        )
    listed = None
    if draw(st.booleans()):
        listed = tuple(
            agent(1 + i, name, enabled=draw(st.booleans())) for i, name in enumerate(holders) if draw(st.booleans())
        )
    return world(state(POOL, *requests, agents=listed), jobs=tuple(jobs), pods=tuple(pods))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reserved_worlds())
def test_only_our_running_once_agents_are_disabled(drawn: World) -> None:
    """We test: every DisableAgent names an agent of our owner and shard (our agent prefix) whose pod is a live
    pod of one of our Jobs, not of an instance template; an unfinished request reserved by it has a receiveTime;
    the agent list (else that request) shows it enabled; and each agent is disabled once at most."""
    actions = plan(_config(), drawn, NOW)
    disables = [a for a in actions if isinstance(a, DisableAgent)]
    assert len({d.agent_name.lower() for d in disables}) == len(disables), disables
    jobs = {(j.namespace, j.name): j for j in drawn.jobs}
    [pool_state] = drawn.pools
    listed = {a.name.lower(): a for a in pool_state.agents or ()}
    for action in disables:
        key = action.agent_name.lower()
        assert key.startswith(names.agent_prefix(OWNER, pool_name=POOL).lower()), action
        [pod] = [p for p in drawn.pods if p.name.lower() == key]
        job = jobs[(pod.namespace, str(pod.job_name))]
        assert job.template != INSTANCE_TEMPLATE and not job.done and not pod.terminal, (action, job, pod)
        [request] = [r for r in pool_state.requests if r.request_id == action.request_id]
        assert request.reserved_agent_name == action.agent_name and not request.finished, action
        assert request.receive_time is not None, action
        shown = listed[key].enabled if key in listed else request.reserved_agent_enabled
        assert shown is True, (action, request, listed.get(key))
