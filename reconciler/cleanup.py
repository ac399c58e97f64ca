"""`azp-reconciler cleanup`: remove what a release leaves behind, before it goes (the chart's pre-delete hook).

Placeholders left registered make new pipelines for the pool wait for ever instead of failing; pending
pods lose their Secret; offline agents and the Lease stay. Cleanup takes the Lease (so no pass runs at the
same time), lists every pool's agents, applies `plan.cleanup_plan` and releases the Lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from reconciler.plan import cleanup_plan
from reconciler.reconcile import PassReport, Reconciler

log = logging.getLogger("reconciler")


def _take_lease(reconciler: Reconciler, *, wait: float, sleep: Callable[[float], None]) -> str | None:
    """Take the Lease, waiting up to `wait` seconds for a running pass to end; why not, if it could not."""
    deadline = time.monotonic() + wait
    while True:
        reason = reconciler.acquire()
        if reason is None or time.monotonic() >= deadline:
            return reason
        sleep(1.0)


def run_cleanup(
    reconciler: Reconciler, *, force: bool, wait: float, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Clean the release up; 0 when everything it meant to remove is gone, 1 otherwise."""
    config = reconciler.config
    reason = _take_lease(reconciler, wait=wait, sleep=sleep)
    if reason is not None:
        log.error("cleanup: %s after waiting %.0f s: run it again once that run ends", reason, wait)
        return 1
    try:
        # Every pool's agents are listed, whatever the Lease says about the last scan.
        reconciler.agents_observed.clear()
        report = PassReport(number=1)
        world = reconciler.observe(report, [p.name for p in config.pools])
        actions, kept = cleanup_plan(config, world, reconciler.clock(), force=force)
        outcome = reconciler.applier.apply(actions)
        for job in kept:
            log.warning("kept Job %s: its agent is running a pipeline job (cleanup --force deletes it)", job)
        counts = outcome.counts
        fields = {
            "drained": counts["drained"],
            "deleted": counts["deleted"],
            "pruned": counts["pruned"],
            "kept": len(kept),
            "failed": outcome.failed + report.observe_failures,
        }
        log.info("cleanup summary", extra={"fields": fields})
        return 1 if fields["failed"] else 0
    finally:
        reconciler.renew(release=True)
