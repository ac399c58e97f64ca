"""We test faults on the write sites of `azp-reconciler cleanup` over the rich world: a site that fails every
time (retries too) fails only what depends on it, the run says so (exit 1, the site named, no traceback; 2
for a refused credential), nothing unsafe happens, and a clean cleanup afterwards leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from cleaning_support import SiteFault, check_persistent_fault, cleanup_run, site_faults

pytestmark = pytest.mark.slow

# (target, method, route, the client's name for the site, fault kinds)
SITES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("azdo", "PATCH", "pools/{poolId}/agents/{agentId}", "PATCH pools/{poolId}/agents/{agentId}", ("500", "html")),
    ("azdo", "DELETE", "pools/{poolId}/agents/{agentId}", "DELETE pools/{poolId}/agents/{agentId}", ("500",)),
    ("azdo", "GET", "pools/{poolId}/agents", "GET pools/{poolId}/agents", ("500",)),
    ("kube", "DELETE", "jobs", "delete job", ("500", "403", "404")),
    ("kube", "POST", "events", "create event", ("500", "403")),
)
EXPECTED = {
    # Refused as a credential (exit 2), or as that action only (exit 1) once issue 20 item 1 lands.
    ("kube", "delete job", "403"): ((1, 2), "delete job"),
    # Already gone is success.
    ("kube", "delete job", "404"): ((0,), ""),
}


@pytest.mark.parametrize("fault", site_faults(SITES, EXPECTED))
def test_persistent_fault_on_a_cleanup_site(tmp_path: Path, fault: SiteFault) -> None:
    """We test: cleanup with one site failing every time exits as the failure deserves and names it, never
    tracebacks, breaks no invariant, and releases the Lease; a clean cleanup then finishes the work."""
    with cleanup_run(tmp_path) as cleanup:
        check_persistent_fault(cleanup, fault)
