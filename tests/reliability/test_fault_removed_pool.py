"""We test faults on the sites of the pass that cleans a pool removed from the configuration (the rich world's
pool): a site that fails every time (retries too) fails only what depends on it, the run says so (exit 1 and
the site named, 2 for a refused credential, never a traceback), nothing unsafe happens, and the next clean
pass finishes the work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invariants import violations
from reliability_support import RichWorld, run_cli
from test_crash_removed_pool import _argv, _left, build_removed_pool_world, limits

pytestmark = pytest.mark.slow

# (target, method, route, the client's name for the site, fault kinds)
SITES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("azdo", "GET", "pools/{poolId}/agents", "GET pools/{poolId}/agents", ("500", "html")),
    ("azdo", "PATCH", "pools/{poolId}/agents/{agentId}", "PATCH pools/{poolId}/agents/{agentId}", ("500",)),
    ("azdo", "DELETE", "pools/{poolId}/agents/{agentId}", "DELETE pools/{poolId}/agents/{agentId}", ("500",)),
    ("kube", "DELETE", "jobs", "delete job", ("500", "403")),
    ("kube", "POST", "events", "create event", ("500",)),
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RichWorld]:
    built = build_removed_pool_world(tmp_path)
    yield built
    built.rig.simulation.stop()


def _cases() -> list[Any]:
    return [
        pytest.param(target, method, route, site, kind, id=f"{target}-{site}-{kind}")
        for target, method, route, site, kinds in SITES
        for kind in kinds
    ]


@pytest.mark.parametrize(("target", "method", "route", "site", "kind"), _cases())
def test_persistent_fault_on_a_removed_pool_site(
    world: RichWorld, target: str, method: str, route: str, site: str, kind: str
) -> None:
    """We test: the removed pool's cleaning pass with one site failing every time exits as the failure
    deserves and names it, never tracebacks, breaks no invariant; a clean pass then finishes the work."""
    rig = world.rig
    emulator = rig.azdo if target == "azdo" else rig.kube
    options = {"kind": "status", "status": int(kind)} if kind.isdigit() else {"kind": kind}
    emulator.inject_fault(method, route, times=1000, **options)
    result = run_cli(_argv(rig))
    assert "Traceback" not in result.out
    if site == "create event":
        assert result.code == 0 and "could not record event" in result.out, result.out
    elif kind == "html":
        # A sign-in page is a credential the service refuses: the run stops (exit 2).
        assert result.code == 2 and "credentials error" in result.out, result.out
    else:
        assert result.code == 1 and site in result.out, result.out
    assert not violations(rig.simulation, max_agents=limits(rig))
    emulator.clear_faults()
    rig.forget_lease()  # the next look for removed pools is due (sweepInterval)
    again = run_cli(_argv(rig))
    assert again.code == 0, again.out
    assert _left(rig) == [], again.out
