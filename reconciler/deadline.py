"""The run's deadline: every call, retry and wait of both clients is bounded by the time left before it.

A CronJob run is killed at its `activeDeadlineSeconds`; a call of 30 s retried five times with backoff
would go far past it and leave the Lease held. The reconciler knows its deadline explicitly (`--deadline`,
the chart passes the CronJob's activeDeadlineSeconds) and keeps `reserve` seconds of it back for releasing
the Lease. SIGTERM sets `stop`, which interrupts any wait at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.errors import TransientError


class DeadlineReached(TransientError):
    """No time is left for this call or wait, or the run was told to stop (SIGTERM)."""


@dataclass
class Deadline:
    """A moment on the monotonic clock, a reserve kept for the last calls, and the run's stop signal."""

    at: float = math.inf
    reserve: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    sleep_for: Callable[[float], object] | None = None
    """How to wait (tests record waits instead); default: wait on `stop`, so SIGTERM interrupts it."""

    @classmethod
    def unbounded(cls) -> Deadline:
        return cls()

    def left(self) -> float:
        """Seconds left for ordinary calls (the reserve excluded)."""
        return self.at - self.reserve - time.monotonic()

    def release_reserve(self) -> None:
        """Let the last calls (releasing the Lease) use the reserve."""
        self.reserve = 0.0

    def timeout(self, wanted: float, *, what: str) -> float:
        """The timeout for one call: what the client wants, at most the time left."""
        left = self.left()
        if left <= 0:
            raise DeadlineReached(f"{what}: not called, the run's deadline has passed")
        return min(wanted, left)

    def sleep(self, seconds: float, *, what: str, error: Exception | None = None) -> None:
        """Wait before a retry; raise `error` (or DeadlineReached) instead when the wait would pass the
        deadline or the run is stopping."""
        if self.stop.is_set() or seconds >= self.left():
            if error is not None:
                raise error
            raise DeadlineReached(f"{what}: not waiting {seconds:.1f}s, the run's deadline comes first")
        if self.sleep_for is not None:
            self.sleep_for(seconds)
        elif self.stop.wait(seconds):
            raise DeadlineReached(f"{what}: interrupted, the run is stopping")
