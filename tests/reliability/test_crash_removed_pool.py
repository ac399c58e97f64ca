"""We test crash anywhere for the cleaning of a pool removed from the configuration: the rich world's pool
(a placeholder per template, an idle agent, a Job whose pod never starts, an offline leftover agent) is taken
out of the configuration, and a pass is forked and SIGKILLed right after its k-th write; the next pass (once
the killed run's Lease has expired, and the look for removed pools is due) must finish the work: nothing of
ours left in that pool, the Lease released, no invariant broken."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from invariants import max_agents_of, violations
from reliability_support import POOL, RICH_WORLD, RichWorld, Rig, build_rich_world, run_cli

from reconciler import cli, names

pytestmark = pytest.mark.slow

KILL_POINTS = 6
OTHER = "other"


def _writes(rig: Rig) -> int:
    azdo = [c for c in rig.azdo.calls() if c.method != "GET" and c.status]
    kube = [c for c in rig.kube.calls() if c.method not in ("GET", "HEAD") and c.status]
    return len(azdo) + len(kube)


def _left(rig: Rig) -> list[str]:
    """What of ours is left in the removed pool, and a Lease still held (empty: clean)."""
    owner = names.Owner("azp", "azp-agents")
    ours = (names.agent_prefix(owner, pool_name=POOL), names.placeholder_prefix(owner, pool_name=POOL))
    left = [f"agent {a['name']}" for a in rig.agents() if a["name"].startswith(ours)]
    left += [f"Job {j['metadata']['name']}" for j in rig.jobs() if not j["metadata"].get("deletionTimestamp")]
    left += [
        f"Lease held by {lease['spec']['holderIdentity']}"
        for lease in rig.kube.objects("leases", "azp-agents")
        if lease["spec"].get("holderIdentity")
    ]
    return left


def build_removed_pool_world(directory: Path) -> RichWorld:
    """The rich world with its pool removed from the configuration (another, empty pool is configured)."""
    built = build_rich_world(directory)
    rig = built.rig
    rig.simulation.pool_ids[OTHER] = int(rig.azdo.add_pool(OTHER)["id"])
    document = rig.config()
    document["pools"] = [{**document["pools"][0], "name": OTHER, "templates": document["pools"][0]["templates"][:1]}]
    rig.write_config(document)
    rig.forget_lease()  # the look for removed pools is due, as in a new run after sweepInterval
    return built


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RichWorld]:
    built = build_removed_pool_world(tmp_path)
    yield built
    built.rig.simulation.stop()


def limits(rig: Rig) -> dict[str, int]:
    """maxAgents per pool for the invariants: the removed pool keeps the limit it had (its leftovers are
    there until cleaned, and nothing of it may grow)."""
    return {**max_agents_of(rig.config()), POOL: int(RICH_WORLD["pools"][0]["maxAgents"])}


def _argv(rig: Rig) -> list[str]:
    return ["reconcile", "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path)]


def test_one_pass_cleans_the_removed_pool(world: RichWorld) -> None:
    """We test the premise: one pass cleans the removed pool with more than KILL_POINTS writes."""
    rig = world.rig
    assert _left(rig), "the removed pool has nothing to clean"
    result = run_cli(_argv(rig))
    assert result.code == 0, result.out
    assert _left(rig) == [], result.out
    assert _writes(rig) > KILL_POINTS


@pytest.mark.parametrize("k", range(1, KILL_POINTS + 1))
def test_sigkill_after_the_kth_write_then_the_next_pass_finishes(world: RichWorld, tmp_path: Path, k: int) -> None:
    """We test: SIGKILL right after the k-th write of the pass that cleans the removed pool, then another
    pass: nothing of ours is left in that pool, the Lease is released, no invariant broken."""
    rig = world.rig
    pid = os.fork()
    if pid == 0:  # the child: run the CLI, never return into pytest
        code = 70
        try:
            log = tmp_path / "killed.log"
            with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = cli.main(_argv(rig))
        finally:
            os._exit(code)
    try:
        rig.wait_for(lambda: _writes(rig) >= k, timeout=20, what=f"{k} writes")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # The killed run may have noted its look for removed pools in the Lease: the next look would wait
    # for sweepInterval, so remove the Lease (what that wait does).
    rig.forget_lease()
    result = run_cli(_argv(rig))
    assert result.code == 0, result.out
    assert _left(rig) == [], (_left(rig), result.out[-3000:])
    assert not violations(rig.simulation, max_agents=limits(rig))
