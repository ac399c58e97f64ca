"""We test crash anywhere for `azp-reconciler cleanup`: over the rich world (a placeholder per template, an
idle agent, a Job whose pod never starts, an offline leftover agent, finished Jobs), a cleanup run is forked
and SIGKILLed right after its k-th write; a second cleanup run (once the killed run's Lease has expired)
must finish the work: no agent or placeholder of ours registered, no Job of ours left, the Lease released,
no invariant broken."""

from __future__ import annotations

from pathlib import Path

import pytest
from cleaning_support import check_killed_then_finished, check_one_run_cleans, cleanup_run

pytestmark = pytest.mark.slow

KILL_POINTS = 10


def test_clean_cleanup_leaves_nothing(tmp_path: Path) -> None:
    """We test the premise: one cleanup run over the rich world removes everything of ours with more than
    KILL_POINTS writes, so every kill point below lands inside a run."""
    with cleanup_run(tmp_path) as cleanup:
        check_one_run_cleans(cleanup, kill_points=KILL_POINTS)


@pytest.mark.parametrize("k", range(1, KILL_POINTS + 1))
def test_sigkill_cleanup_after_the_kth_write(tmp_path: Path, k: int) -> None:
    """We test: SIGKILL right after the k-th write of a cleanup, then another cleanup: nothing of ours is
    left, the Lease is released, no invariant broken (a busy agent's delete is never tried)."""
    with cleanup_run(tmp_path) as cleanup:
        check_killed_then_finished(cleanup, k=k, log=tmp_path / "killed.log")
