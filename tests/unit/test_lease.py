"""We test: how long a run that finds the Lease held waits for it (`wait_limit`, pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.lease import ANNOTATION_RUN_UNTIL, format_time, lease_body, wait_limit

NOW = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def _lease(*, holder: str = "other-run", renewed: datetime = NOW, run_until: datetime | None = None) -> dict[str, Any]:
    annotations = {ANNOTATION_RUN_UNTIL: format_time(run_until)} if run_until else {}
    return lease_body(
        name="r", namespace="ns", holder=holder, duration=60, now=renewed, annotations=annotations, labels={}
    )


def test_the_holders_announced_end_plus_grace() -> None:
    """We test: a holder that announced its end is waited for until then plus the grace."""
    lease = _lease(run_until=NOW + timedelta(seconds=30))
    assert wait_limit(lease, now=NOW, grace=10, cap=100) == NOW + timedelta(seconds=40)


def test_an_announced_end_long_past_ends_the_wait_at_once() -> None:
    """We test: a holder past its end and the grace (it could not release) is not waited for."""
    lease = _lease(run_until=NOW - timedelta(seconds=30))
    assert wait_limit(lease, now=NOW, grace=10, cap=100) <= NOW


def test_without_an_announcement_until_the_lease_expires() -> None:
    """We test: a holder that announced nothing is waited for until renewTime + leaseDurationSeconds."""
    lease = _lease(renewed=NOW - timedelta(seconds=45))
    assert wait_limit(lease, now=NOW, grace=10, cap=100) == NOW + timedelta(seconds=15)


def test_the_cap_bounds_every_wait() -> None:
    """We test: however far the holder's end, the wait ends `cap` seconds from now."""
    lease = _lease(run_until=NOW + timedelta(hours=1))
    assert wait_limit(lease, now=NOW, grace=10, cap=70) == NOW + timedelta(seconds=70)


def test_a_free_or_missing_lease_gets_the_grace_for_a_retry() -> None:
    """We test: a Lease released or deleted meanwhile is retried for `grace` seconds."""
    assert wait_limit(_lease(holder=""), now=NOW, grace=10, cap=70) == NOW + timedelta(seconds=10)
    assert wait_limit(None, now=NOW, grace=10, cap=70) == NOW + timedelta(seconds=10)
