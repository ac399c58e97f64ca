"""We test crash anywhere for the cleaning of a pool removed from the configuration: the rich world's pool
(a placeholder per template, an idle agent, a Job whose pod never starts, an offline leftover agent) is taken
out of the configuration, and a pass is forked and SIGKILLed right after its k-th write; the next pass (once
the killed run's Lease has expired, and the look for removed pools is due) must finish the work: nothing of
ours left in that pool, the Lease released, no invariant broken."""

from __future__ import annotations

from pathlib import Path

import pytest
from cleaning_support import check_killed_then_finished, check_one_run_cleans, removed_pool_run

pytestmark = pytest.mark.slow

KILL_POINTS = 6


def test_one_pass_cleans_the_removed_pool(tmp_path: Path) -> None:
    """We test the premise: one pass cleans the removed pool with more than KILL_POINTS writes."""
    with removed_pool_run(tmp_path) as removed_pool:
        check_one_run_cleans(removed_pool, kill_points=KILL_POINTS)


@pytest.mark.parametrize("k", range(1, KILL_POINTS + 1))
def test_sigkill_after_the_kth_write_then_the_next_pass_finishes(tmp_path: Path, k: int) -> None:
    """We test: SIGKILL right after the k-th write of the pass that cleans the removed pool, then another
    pass (the killed run may have noted its look for removed pools in the Lease, so the Lease is removed, as
    sweepInterval's wait would): nothing of ours is left in that pool, the Lease is released, no invariant broken."""
    with removed_pool_run(tmp_path) as removed_pool:
        check_killed_then_finished(removed_pool, k=k, log=tmp_path / "killed.log")
