"""Unit tests of the helpers plan() uses to stay cheap on large worlds: each must give exactly what the
plain computation it replaces gives."""

from __future__ import annotations

import itertools
import os
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from plan_builders import NOW, config, pool, queued, template

from reconciler.model import AgentPod
from reconciler.plan import _EPOCH, _pods_by_job, _Router, route, serves

EXAMPLES = int(os.environ.get("AZP_HYPOTHESIS_EXAMPLES", "300"))
DEMANDS = ["docker", "java -equals 17", "Agent.Version -gtVersion 2.182.1", "Agent.Version -gtVersion 9.0", "gpu", ""]


def test_router_routes_and_serves_like_route_and_serves() -> None:
    """We test: the per-call router answers route() and serves() for every demand set (priority, cost and
    declaration order ties, a match-any template, the agent version every template advertises), and asking
    again gives the very same template."""
    cfg = config(
        pool(
            "linux",
            template("big", capabilities={"docker": "", "java": "17"}, cost=(4000, 8 * 2**30)),
            template("small", capabilities={"docker": ""}, cost=(500, 2**30)),
            template("twin", capabilities={"docker": ""}, cost=(500, 2**30)),
            template("vip", capabilities={"gpu": "1"}, priority=5),
            template("any", match_any=True, priority=-1),
        )
    )
    pool_cfg = cfg.pools[0]
    router = _Router(cfg, pool_cfg, {})
    demand_sets = [tuple(c) for n in range(3) for c in itertools.permutations(DEMANDS, n)]
    for demands in demand_sets * 2:
        # The rule spelled out plainly: every serving template, then priority, cost, declaration order.
        serving = [(i, t) for i, t in enumerate(pool_cfg.templates) if serves(cfg, t, demands)]
        expected = min(serving, key=lambda it: (-it[1].priority, it[1].cost, it[0]))[1] if serving else None
        assert router.route(demands) is expected, demands
        assert route(cfg, pool_cfg, queued(1, *demands)) is expected, demands
        for index, t in enumerate(pool_cfg.templates):
            assert router.serves(index, demands) is serves(cfg, t, demands), (t.name, demands)
    assert router.route(("docker",)).name == "small"  # type: ignore[union-attr]
    assert router.route(("gpu",)).name == "vip"  # type: ignore[union-attr]
    assert router.route(("nothing",)).name == "any"  # type: ignore[union-attr]


POD = st.builds(
    AgentPod,
    name=st.sampled_from(["p-a", "p-b", "p-c"]),
    namespace=st.sampled_from(["agents", "other"]),
    job_name=st.sampled_from([None, "", "job-1", "job-2"]),
    phase=st.sampled_from(["Pending", "Running", "Succeeded"]),
    created=st.integers(0, 3).map(lambda s: NOW - timedelta(seconds=s)),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(POD, max_size=8))
def test_pods_by_job_keeps_the_newest_pod_of_each_job(pods: list[AgentPod]) -> None:
    """We test: each Job gets its newest pod (then the greater name, then the one listed last), as sorting
    every pod by (created, name) and keeping the last of each Job did; pods of no Job are left out."""
    expected = {}
    for pod in sorted(pods, key=lambda p: (p.created or _EPOCH, p.name)):
        if pod.job_name:
            expected[(pod.namespace, pod.job_name)] = pod
    found = _pods_by_job(pods)
    assert found.keys() == expected.keys()
    assert all(found[key] is expected[key] for key in expected)
