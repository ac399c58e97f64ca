"""We test faults on the disable of a `--once` agent whose one job has started (the PATCH enabled=false of
plan._plan_once_disables), in a world where one pass disables two agents and creates a Job for a queued
request (disable_world). The fault hits the first agent's PATCH, every attempt of it (retries too) for the
hard kinds, once for the transient ones.

What a user wants: a failed disable is reported for that agent only (exit 1, as other per-pool failures; the
agent named), the rest of the pass goes on (the other agent is disabled, the queued request gets its Job), the
next pass tries again (the request still shows the agent enabled) and disables it, once; a 404 is the agent
gone already, which is what the disable wanted (exit 0); a transient fault is retried away in the pass."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from disable_world import AGENT_PATCH, DisableWorld, build_disable_world, request_jobs
from invariants import max_agents_of, violations

pytestmark = pytest.mark.slow

ROUTE = AGENT_PATCH.split(" ", 1)[1]
RETRY_AFTER = 0.5
# kind: (fault options, calls it hits: every attempt of one disable, the exit code, whether that agent is left
# enabled by the pass)
CASES: dict[str, tuple[dict[str, Any], int, int, bool]] = {
    "500": ({"kind": "status", "status": 500}, 2, 1, True),
    "503": ({"kind": "status", "status": 503}, 2, 1, True),
    "timeout": ({"kind": "timeout", "delay": 1.0}, 2, 1, True),
    "403": ({"kind": "status", "status": 403}, 1, 1, True),
    "404": ({"kind": "status", "status": 404}, 1, 0, True),
    "429 retried": ({"kind": "status", "status": 429, "retry_after": RETRY_AFTER}, 1, 0, False),
    "503 retried": ({"kind": "status", "status": 503}, 1, 0, False),
    "timeout retried": ({"kind": "timeout", "delay": 1.0}, 1, 0, False),
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DisableWorld]:
    built = build_disable_world(tmp_path)
    yield built
    built.rig.simulation.stop()


def _failed(out: str) -> int:
    return max((int(m) for m in re.findall(r'"failed": (\d+)', out)), default=0)


def _check_invariants(world: DisableWorld) -> None:
    rig = world.rig
    found = violations(rig.simulation, max_agents=max_agents_of(rig.config()))
    assert not found, found


def test_a_clean_pass_disables_both_runners_and_serves_the_queue(world: DisableWorld) -> None:
    """We test the premise: one clean pass PATCHes each running agent once (disabled), creates the queued
    request's Job, exits 0; the next pass PATCHes nothing."""
    result = world.rig.reconcile()
    assert result.code == 0, result.out
    assert world.enabled_runners() == [] and world.runner_patches() == [1] * len(world.running)
    assert str(world.queued) in request_jobs(world.rig)
    assert world.rig.reconcile().code == 0
    assert world.runner_patches() == [1] * len(world.running)


@pytest.mark.parametrize("kind", list(CASES))
def test_a_fault_on_the_disable(world: DisableWorld, kind: str) -> None:
    """We test: the first disable's PATCH answered with this fault. A hard fault fails that disable only: the
    exit code and a failure naming that agent say so, the other agent is disabled and the queued request gets
    its Job in the same pass; a 404 (the agent gone) is no failure; a transient one is retried in the pass. The
    next clean pass disables the agent still shown enabled, with one PATCH, and none after."""
    rig = world.rig
    options, hits, code, left_enabled = CASES[kind]
    rig.azdo.inject_fault("PATCH", ROUTE, times=hits, **options)
    result = rig.reconcile()
    assert "Traceback" not in result.out
    assert result.code == code, result.out
    faulted = [c for c in rig.azdo.calls() if f"{c.method} {c.short}" == AGENT_PATCH and c.fault]
    assert len(faulted) == hits, faulted
    enabled = world.enabled_runners()
    assert len(enabled) == (1 if left_enabled else 0), (enabled, result.out)
    assert str(world.queued) in request_jobs(rig), result.out
    assert _failed(result.out) == (1 if code == 1 else 0), result.out
    if code == 1:
        assert f"disable-agent {enabled[0]} (pool 'linux')" in result.out, result.out
    if kind == "404":
        assert "is gone already: nothing to disable" in result.out, result.out
    if kind == "429 retried":
        [throttled] = faulted
        retry = next(c for c in rig.azdo.calls() if c.time > throttled.time and f"{c.method} {c.short}" == AGENT_PATCH)
        assert retry.time - throttled.time >= RETRY_AFTER * 0.9, (throttled, retry)
    _check_invariants(world)
    patches = sum(world.runner_patches())
    for _ in range(2):
        after = rig.reconcile()
        assert after.code == 0, after.out
    assert world.enabled_runners() == [], rig.agents()
    assert sum(world.runner_patches()) == patches + (1 if left_enabled else 0)
    _check_invariants(world)
