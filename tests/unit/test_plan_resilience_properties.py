"""Property tests of the rescue rule: for any world where some requests are assigned to agents of ours that
have not received them, plan() deletes a reserved agent only to rescue such a request."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_builders import NOW, OWNER
from test_plan_properties import EXAMPLES, configs, worlds

from reconciler import names
from reconciler.model import DeleteAgent, DrainAgent, JobRequest, World
from reconciler.plan import plan


@st.composite
def worlds_with_reservations(draw: st.DrawFn) -> tuple[object, World]:
    """A world of test_plan_properties where some queued requests were assigned, not received, to one of
    their pool's pods (any phase) or to a name of that pool no pod has."""
    cfg = draw(configs())
    world = draw(worlds(cfg))
    states = []
    for state in world.pools:
        ours = names.agent_prefix(OWNER, pool_name=state.name)
        pod_names = [p.name for p in world.pods if p.name.startswith(ours)] + [f"{ours}424242-qqqqq"]
        requests = []
        for request in state.requests:
            if request.queued and draw(st.booleans()):
                request = JobRequest(
                    request_id=request.request_id,
                    queue_time=request.queue_time,
                    demands=request.demands,
                    assign_time=NOW - timedelta(seconds=draw(st.integers(0, 300))),
                    reserved_agent_id=draw(st.integers(1, 40)),
                    reserved_agent_name=draw(st.sampled_from(pod_names)),
                )
            requests.append(request)
        states.append(replace(state, requests=tuple(requests)))
    return cfg, replace(world, pools=tuple(states))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds_with_reservations())
def test_a_reserved_agent_is_deleted_only_to_rescue_an_unstarted_request(drawn: tuple[object, World]) -> None:
    """We test: an agent named by an unfinished request is deleted or drained only when every request naming
    it was never received, its pod has finished or is gone, and the listed agent (if any) is not online;
    and at most once."""
    cfg, world = drawn
    actions = plan(cfg, world, NOW)  # type: ignore[arg-type]
    pods = {p.name.lower(): p for p in world.pods}
    deleted = [(a.pool, a.agent_id) for a in actions if isinstance(a, DeleteAgent)]
    assert len(deleted) == len(set(deleted)), actions
    for action in actions:
        if not isinstance(action, DeleteAgent | DrainAgent):
            continue
        key = action.agent_name.lower()
        holders = [
            r
            for s in world.pools
            for r in s.requests
            if not r.finished and r.reserved_agent_name and r.reserved_agent_name.lower() == key
        ]
        if not holders:
            continue
        assert isinstance(action, DeleteAgent) and "before the job started" in action.reason, action
        assert all(r.receive_time is None for r in holders), action
        pod = pods.get(key)
        assert pod is None or pod.terminal, action
        listed = [a for s in world.pools for a in s.agents or () if a.name.lower() == key]
        assert not any(a.online for a in listed), action
