"""We test the simulated world's own rules, which come from the service and the documentation, never from the
reconciler's code: its jobs arrive once Azure DevOps would take them, and its leftovers of the installed release
carry the names the README documents, which the reconciler must still recognise and prune."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from reliability_support import Rig, start_rig

from azp_simulation.world import load_world, seeded_agent_name
from reconciler.errors import ConfigError

DOCKER = {"docker": "/usr/bin/docker", "Agent.OS": "Linux"}
TEMPLATES = [{"name": "default", "capabilities": {"docker": ""}}]
POOLS = ("linux", "gpu", "build-farm-arm64", "a1")


@contextlib.contextmanager
def running(world: dict[str, Any], directory: Path, *, hold_limit: float | None = None) -> Iterator[Rig]:
    """A running simulation of `world` (pools, agents, arrivals, cancellations), stopped afterwards."""
    rig = start_rig({"name": "rules", "timeout": 30, **world}, directory)
    if hold_limit is not None:
        rig.simulation.hold_limit = hold_limit
    try:
        yield rig
    finally:
        rig.simulation.stop()


def _results(rig: Rig) -> list[str | None]:
    return [r.get("result") for r in rig.azdo.requests(rig.pool_id())]


def _queued(rig: Rig) -> int:
    return len(rig.simulation.request_ids.get("linux", []))


def test_jobs_wait_for_an_agent_that_could_serve_them(tmp_path: Path) -> None:
    """We test: no job is queued while no registered agent of its pool satisfies its demands (the service would
    fail it); once a disabled agent with `docker` registers, the docker jobs are queued and wait, not failed; the
    terraform job waits on until an agent showing terraform registers, then is queued too."""
    arrivals = [
        {"at": 0, "pool": "linux", "count": 2, "demands": ["docker"]},
        {"at": 0.2, "pool": "linux", "count": 1, "demands": ["terraform"]},
    ]
    with running({"pools": [{"name": "linux", "templates": TEMPLATES}], "arrivals": arrivals}, tmp_path) as rig:
        time.sleep(0.8)
        assert not rig.simulation.installed() and _queued(rig) == 0
        rig.azdo.add_agent(rig.pool_id(), "disabled-docker", enabled=False, capabilities=DOCKER)
        rig.wait_for(lambda: _queued(rig) == 2, what="the docker jobs queued")
        time.sleep(0.5)
        assert _results(rig) == [None, None], "the docker jobs wait; the terraform job is not queued yet"
        rig.azdo.add_agent(rig.pool_id(), "learned-terraform", capabilities={"terraform": "/usr/local/bin/terraform"})
        rig.wait_for(lambda: _queued(rig) == 3, what="the terraform job queued")
        assert _results(rig) == [None, None, None]


def test_a_cancellation_waits_for_its_job(tmp_path: Path) -> None:
    """We test: a cancellation of the pool's 2nd job, due while no job could be queued yet, cancels that job
    once it is queued, and only it."""
    world = {
        "pools": [{"name": "linux", "templates": TEMPLATES}],
        "arrivals": [{"at": 0, "pool": "linux", "count": 2, "demands": ["docker"]}],
        "cancellations": [{"at": 0.1, "pool": "linux", "request": 2}],
    }
    with running(world, tmp_path) as rig:
        time.sleep(0.5)
        assert _queued(rig) == 0
        rig.azdo.add_agent(rig.pool_id(), "placeholder", enabled=False, capabilities=DOCKER)
        rig.wait_for(lambda: _results(rig) == [None, "canceled"], what="the 2nd job queued and canceled")


def test_a_job_no_agent_could_serve_is_queued_after_the_hold_limit_and_failed(tmp_path: Path) -> None:
    """We test: a job still waiting hold_limit seconds after its time is queued anyway, and the service fails it
    at once, naming the demands."""
    world = {
        "pools": [{"name": "linux", "templates": TEMPLATES}],
        "agents": [{"pool": "linux", "name": "build-server-01", "capabilities": DOCKER}],
        "arrivals": [
            {"at": 0, "pool": "linux", "count": 1, "demands": ["docker"]},
            {"at": 0.2, "pool": "linux", "count": 1, "demands": ["cuda"]},
        ],
    }
    with running(world, tmp_path, hold_limit=1.0) as rig:
        rig.wait_for(lambda: _queued(rig) == 1, what="the docker job queued at once")
        rig.wait_for(lambda: _queued(rig) == 2, what="the cuda job queued after the hold limit")
        [cuda] = [r for r in rig.azdo.requests(rig.pool_id()) if r["demands"] == ["cuda"]]
    assert cuda["result"] == "failed", cuda
    assert cuda["statusMessage"] == "No agent found in pool linux which satisfies the specified demands: cuda"


def test_leftovers_named_as_documented_are_pruned_by_the_reconciler(tmp_path: Path) -> None:
    """We test: offline leftovers of the installed release, named as the README documents its agents' names
    (world.INSTALLED_AGENT_NAME), in pools of several names, are all pruned by one reconcile pass, and the agent
    that is not ours stays: a rename of the reconciler's agents that would leave earlier versions' agents
    behind fails here."""
    leftovers = [{"pool": p, "name": f"{n}-old{n}x", "ours": True, "status": "offline"} for n, p in enumerate(POOLS)]
    world = {
        "pools": [{"name": pool, "templates": TEMPLATES} for pool in POOLS],
        "agents": [{"pool": "linux", "name": "build-server-01", "status": "offline"}, *leftovers],
    }
    with running(world, tmp_path) as rig:
        assert [a["name"] for a in rig.agents()] == ["build-server-01", "azp-eeca0-linux-0-old0x"]
        assert [a["name"] for a in rig.agents("build-farm-arm64")] == ["azp-eeca0-build-farm-arm64-2-old2x"]
        result = rig.reconcile_subprocess()
        assert result.code == 0, result.out
        left = {a["name"] for pool in POOLS for a in rig.agents(pool)}
    assert not left & {seeded_agent_name(a) for a in leftovers}, (left, result.out)
    assert "build-server-01" in left


@pytest.mark.parametrize("pool", ["Windows Builds", "linux_x64", "a-very-long-pool-name", "-linux"])
def test_a_leftover_in_a_pool_the_documented_naming_does_not_cover_is_refused(tmp_path: Path, pool: str) -> None:
    """We test: an `ours: true` agent in a pool whose name the documented naming does not hold as is (capitals,
    spaces, '_', more than 16 characters, an outer '-') is refused, naming the key and the fix."""
    world = {
        "pools": [{"name": pool, "templates": TEMPLATES}],
        "agents": [{"pool": pool, "name": "1-oldxx", "ours": True}],
    }
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(world))
    with pytest.raises(ConfigError, match=r"agents\[0\]\.ours: .*give the agent's full name without `ours`"):
        load_world(path)
