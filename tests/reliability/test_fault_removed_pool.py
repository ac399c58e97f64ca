"""We test faults on the sites of the pass that cleans a pool removed from the configuration (the rich world's
pool): a site that fails every time (retries too) fails only what depends on it, the run says so (exit 1 and
the site named, 2 for a refused credential, never a traceback), nothing unsafe happens, and the next clean
pass finishes the work."""

from __future__ import annotations

from pathlib import Path

import pytest
from cleaning_support import SiteFault, check_persistent_fault, removed_pool_run, site_faults

pytestmark = pytest.mark.slow

# (target, method, route, the client's name for the site, fault kinds)
SITES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("azdo", "GET", "pools/{poolId}/agents", "GET pools/{poolId}/agents", ("500", "html")),
    ("azdo", "PATCH", "pools/{poolId}/agents/{agentId}", "PATCH pools/{poolId}/agents/{agentId}", ("500",)),
    ("azdo", "DELETE", "pools/{poolId}/agents/{agentId}", "DELETE pools/{poolId}/agents/{agentId}", ("500",)),
    ("kube", "DELETE", "jobs", "delete job", ("500", "403")),
    ("kube", "POST", "events", "create event", ("500",)),
)


@pytest.mark.parametrize("fault", site_faults(SITES))
def test_persistent_fault_on_a_removed_pool_site(tmp_path: Path, fault: SiteFault) -> None:
    """We test: the removed pool's cleaning pass with one site failing every time exits as the failure
    deserves and names it, never tracebacks, breaks no invariant; a clean pass (once the look for removed
    pools is due again) then finishes the work."""
    with removed_pool_run(tmp_path) as removed_pool:
        check_persistent_fault(removed_pool, fault)
