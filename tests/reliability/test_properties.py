"""We test, with hypothesis, random worlds through many passes: random pools (maxAgents, minIdle, one or
two templates), and random sequences of arrivals, cancellations, pods failing, agents dying, pods that
never start, failing actions and assignment races, each followed by a pass of the real plan() applied
to a model of both services (world_model.Model). After every pass: never more active Jobs than
maxAgents, no pipeline job aborted or busy agent deleted by an action, no foreign agent or configured
placeholder deleted. After the events stop, within a bounded number of passes: every job served, no
offline agent of ours, no idle agent or Job beyond minIdle.

Examples: AZP_HYPOTHESIS_EXAMPLES (default 500; `make soak` sets 5000).
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from world_model import T0, Model, make_config

from reconciler.model import AgentJob, AgentPod, PoolState, World
from reconciler.names import pool_slug
from reconciler.plan import pools_needing_agents

EXAMPLES = int(os.environ.get("AZP_HYPOTHESIS_EXAMPLES", "500"))
SETTLE_PASSES = 30
PASSES_PER_JOB = 6
SETTLE_TICK = 15.0
RAN: dict[str, int] = {"examples": 0, "passes": 0, "faults": 0, "env_aborts": 0}

pools_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "templates": st.integers(1, 2),
            "max_agents": st.integers(1, 4),
            "min_idle": st.integers(0, 1),
        }
    ),
    min_size=1,
    max_size=2,
)
event_strategy = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 1), st.sampled_from([(), ("docker",), ("java",)]), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("pod_fails"), st.integers(0, 50)),
    st.tuples(st.just("agent_dies"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.sampled_from([1.0, 5.0, 10.0, 30.0, 70.0])),
    st.tuples(st.just("faults"), st.sampled_from([0.0, 0.2, 0.5, 1.0])),
    st.tuples(st.just("stuck"), st.sampled_from([0.0, 0.3, 1.0])),
)


def _play(pools: list[dict[str, Any]], events: list[tuple[Any, ...]], seed: int) -> Model:
    described = [{**p, "name": f"pool {i}"} for i, p in enumerate(pools)]
    model = Model(config=make_config(described, max_create=3), rng=random.Random(seed))
    model.run_pass()
    for event in events:
        kind = event[0]
        if kind == "arrive":
            pool = described[event[1] % len(described)]["name"]
            for _ in range(event[3]):
                model.arrive(pool, event[2])
        elif kind == "cancel":
            model.cancel(event[1])
        elif kind == "pod_fails":
            model.pod_fails(event[1])
        elif kind == "agent_dies":
            model.agent_dies(event[1])
        elif kind == "tick":
            model.tick(event[1])
        elif kind == "faults":
            model.fault_rate = event[1]
        elif kind == "stuck":
            model.stuck_rate = event[1]
        model.run_pass(agents_known=model.rng.random() < 0.8, race=model.rng.random() < 0.3)
        assert not model.violations, model.violations
    model.fault_rate = model.stuck_rate = 0.0
    # Serving the queue takes a few passes per job and free slot; after it empties, SETTLE_PASSES more.
    slots = min(p.max_agents for p in model.config.pools)
    budget = SETTLE_PASSES + PASSES_PER_JOB * -(-model.unfinished() // slots)
    for _ in range(budget):
        model.tick(SETTLE_TICK)
        model.run_pass(race=True)
        assert not model.violations, model.violations
        if not model.leftovers():
            break
    return model


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(pools=pools_strategy, events=st.lists(event_strategy, min_size=3, max_size=40), seed=st.integers(0, 2**16))
def test_random_worlds_keep_the_invariants(
    pools: list[dict[str, Any]], events: list[tuple[Any, ...]], seed: int
) -> None:
    """We test: for any world and any sequence of events, the safety invariants hold after every pass, and
    after the events stop, within PASSES_PER_JOB passes per queued job and slot plus SETTLE_PASSES, every
    job is served and nothing is left over."""
    model = _play(pools, events, seed)
    RAN["examples"] += 1
    RAN["passes"] += model.passes
    RAN["faults"] += model.faults
    RAN["env_aborts"] += model.env_aborts
    assert not model.leftovers(), model.leftovers()


def test_examples_ran() -> None:
    """We test the property test ran its examples (prints the figures with -s)."""
    if RAN["examples"] == 0:
        pytest.skip("test_random_worlds_keep_the_invariants did not run")
    print(
        f"\nhypothesis: {RAN['examples']} examples, {RAN['passes']} passes, {RAN['faults']} failed actions injected, "
        f"{RAN['env_aborts']} jobs lost to the environment (pods failing, agents dying)"
    )
    assert RAN["examples"] >= min(EXAMPLES, 100)


def test_standby_does_not_starve_another_template() -> None:
    """We test (hypothesis's shrunk example): maxAgents 1, minIdle 1, two templates; a request for the second
    template is served once the first template's jobs are done."""
    config = make_config([{"name": "linux", "templates": 2, "max_agents": 1, "min_idle": 1}])
    model = Model(config=config, rng=random.Random(2))
    model.run_pass()
    for demands in ((), (), ("java",)):
        model.arrive("linux", demands)
        # As hypothesis played it: some passes without the agent list, some with an assignment race.
        model.run_pass(agents_known=model.rng.random() < 0.8, race=model.rng.random() < 0.3)
    for _ in range(4 * SETTLE_PASSES):
        model.tick(SETTLE_TICK)
        model.run_pass()
    assert not model.violations, model.violations
    assert not [r for r in model.requests.values() if r.result is None], "the java request was never served"


def test_stuck_job_replaced_before_it_is_deleted() -> None:
    """We test: pods that never bring an agent online and Job deletions that always fail never take a pool
    beyond maxAgents Jobs."""
    config = make_config([{"name": "linux", "templates": 1, "max_agents": 1, "min_idle": 1}])
    model = Model(config=config, rng=random.Random(3), stuck_rate=1.0, failing_kinds={"delete-job"})
    model.run_pass()
    for _ in range(40):
        model.tick(SETTLE_TICK)
        model.run_pass()
    assert len(model.active_jobs("linux")) <= 1, f"{len(model.active_jobs('linux'))} Jobs for maxAgents 1"
    assert not model.violations, model.violations


def test_half_done_drains_are_finished_later() -> None:
    """We test: when a drain stops half done (the agent disabled, then its re-read or a deletion failed),
    a later pass still reaps the idle agent and its Job."""
    model = Model(
        config=make_config([{"name": "linux", "templates": 1, "max_agents": 2, "min_idle": 0}]), rng=random.Random(1)
    )
    model.run_pass()
    model.arrive("linux", ("docker",))
    model.arrive("linux", ("docker",))
    model.run_pass()
    model.cancel(0)
    model.cancel(0)  # both cancelled before their agents came online: two idle agents to come
    model.tick(SETTLE_TICK)
    model.run_pass()
    model.partial_drains = 1.0
    for _ in range(4):
        model.tick(SETTLE_TICK)
        model.run_pass()
    assert model.faults, "no drain was interrupted: the scenario no longer exercises the bug"
    model.partial_drains = 0.0
    for _ in range(SETTLE_PASSES):
        model.tick(SETTLE_TICK)
        model.run_pass()
    assert not model.violations, model.violations
    assert not model.leftovers(), model.leftovers()


def test_pod_finished_in_the_second_of_the_last_scan() -> None:
    """We test: a pod that finished after the last agent scan, within the same second (Kubernetes shows
    12:00:00 for 12:00:00.7), makes the next pass list the pool's agents, so its agent is pruned."""
    config = make_config([{"name": "linux", "templates": 1, "max_agents": 2, "min_idle": 0}])
    scan = T0 + timedelta(milliseconds=300)
    job = AgentJob(
        name="azp-linux-1000",
        namespace="agents",
        pool_slug=pool_slug("linux"),
        pool_name="linux",
        template="t0",
        request_id=1000,
        standby=False,
        created=T0 - timedelta(seconds=60),
        finished=T0,  # really 12:00:00.7, after the scan at 12:00:00.3
    )
    pod = AgentPod(name="azp-linux-1000-abcde", namespace="agents", job_name=job.name, phase="Succeeded", finished=T0)
    world = World(
        pools=(PoolState(name="linux", pool_id=1),), jobs=(job,), pods=(pod,), agents_observed={"linux": scan}
    )
    assert "linux" in pools_needing_agents(config, world, T0 + timedelta(seconds=2))
