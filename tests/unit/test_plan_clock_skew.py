"""Unit and property tests of plan() with Azure DevOps' clock off ours (issue 20 item 8): its timestamps are
put on our clock by the offset its Date header showed, and a stamp ahead of ours is never trusted."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_builders import NOW, agent, ago, config, job_for, of, pod_for, pool, queued, state, template, world
from test_plan_properties import EXAMPLES, configs, worlds

from reconciler.model import DrainAgent, PoolState, World
from reconciler.plan import SERVICE_CLOCK_TOLERANCE, on_our_clock, plan, pools_needing_agents

SKEWS = st.one_of(st.integers(-7200, -3), st.integers(3, 7200)).map(lambda s: timedelta(seconds=s))


def _skewed(world_: World, skew: timedelta) -> World:
    """The world as a service whose clock is `skew` ahead of ours stamps it, with that offset measured."""

    def later(moment: datetime | None) -> datetime | None:
        return None if moment is None else moment + skew

    def pool_state(s: PoolState) -> PoolState:
        requests = tuple(
            replace(
                r,
                queue_time=later(r.queue_time),
                assign_time=later(r.assign_time),
                receive_time=later(r.receive_time),
                finish_time=later(r.finish_time),
            )
            for r in s.requests
        )
        agents = (
            None
            if s.agents is None
            else tuple(
                replace(a, created_on=later(a.created_on), status_changed_on=later(a.status_changed_on))
                for a in s.agents
            )
        )
        return replace(s, requests=requests, agents=agents)

    return replace(world_, pools=tuple(pool_state(s) for s in world_.pools), azdo_clock_offset=skew)


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), SKEWS)
def test_a_skewed_service_clock_changes_no_decision(data: st.DataObject, skew: timedelta) -> None:
    """We test: for any world, a service clock up to two hours ahead of or behind ours (beyond the Date
    header's own error) gives the same actions and the same pools to list as the same world stamped by a
    clock in step with ours: idle agents are drained, stuck agents replaced, requests taken over from another
    shard and reservations rescued at the same moments."""
    cfg = data.draw(configs())
    cfg = replace(cfg, shard_count=2, shard_takeover_after=data.draw(st.sampled_from([0, 60, 600])))
    world_ = data.draw(worlds(cfg))
    assert plan(cfg, _skewed(world_, skew), NOW) == plan(cfg, world_, NOW)
    assert pools_needing_agents(cfg, _skewed(world_, skew), NOW) == pools_needing_agents(cfg, world_, NOW)


def _idle_agent_world(changed_minutes_ago: float, offset: timedelta | None) -> World:
    job = job_for("linux", created=3600)
    pod = pod_for(job, created=3600, started=3590)
    idle = agent(1, pod.name, changed=changed_minutes_ago * 60)
    return replace(world(state("linux", agents=(idle,)), jobs=(job,), pods=(pod,)), azdo_clock_offset=offset)


def test_an_agent_is_drained_after_idle_timeout_by_our_clock_whatever_the_service_clock() -> None:
    """We test: with idleTimeout 300 s, an agent idle for 1 minute by our clock but stamped by a service clock
    10 minutes behind (its statusChangedOn reads 11 minutes ago) is not drained once the offset is measured,
    and is drained when it really has been idle 6 minutes; without a measured offset the stamp is taken as it
    is, and the agent would be drained at once (what the Date header prevents)."""
    cfg = config(pool("linux", template("default"), idle_timeout=300))
    behind = timedelta(minutes=-10)
    assert of(DrainAgent, plan(cfg, _idle_agent_world(11, behind), NOW)) == []
    assert len(of(DrainAgent, plan(cfg, _idle_agent_world(16, behind), NOW))) == 1
    assert len(of(DrainAgent, plan(cfg, _idle_agent_world(11, None), NOW))) == 1
    ahead = timedelta(hours=1)
    # A clock an hour ahead: the agent idle 6 minutes by ours reads idle since 54 minutes from now.
    assert len(of(DrainAgent, plan(cfg, _idle_agent_world(6 - 60, ahead), NOW))) == 1


def test_a_stamp_ahead_of_our_clock_is_not_trusted_beyond_the_tolerance() -> None:
    """We test: without a measured offset, a request queued and an agent changed "in the future" by more than
    the tolerance read as stamped now (never ahead of our clock), while stamps within the tolerance and in
    the past are kept as they are; a world with no such stamp is returned as it is."""
    future = NOW + SERVICE_CLOCK_TOLERANCE + timedelta(seconds=1)
    near = NOW + SERVICE_CLOCK_TOLERANCE
    requests = (replace(queued(1), queue_time=future), replace(queued(2), queue_time=near), queued(3, at=60))
    changed = replace(agent(1, "a", changed=0), status_changed_on=future)
    skewed = world(state("linux", *requests, agents=(changed,)))
    [fixed] = on_our_clock(skewed, NOW).pools
    assert [r.queue_time for r in fixed.requests] == [NOW, near, ago(60)]
    assert fixed.agents is not None and fixed.agents[0].status_changed_on == NOW
    plain = world(state("linux", queued(3, at=60)))
    assert on_our_clock(plain, NOW) is plain
