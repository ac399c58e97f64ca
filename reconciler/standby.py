"""Standby that follows the clock: the minIdle of a template (or pool) at a given instant.

A template or pool may list `standby` windows, each `{days, from, to, timeZone, minIdle}`: while the
wall clock of `timeZone` is inside a window, its `minIdle` applies (the largest of the windows that
apply); outside every window the plain `minIdle` does. config.py checks a document's windows and
resolves their time zones (reading the tz database is I/O: it happens at config load, never in plan);
`min_idle` is pure and is what plan.py calls.

Wall-clock semantics (Python's zoneinfo, PEP 615): a window is read on the local clock, so "08:00" is
08:00 in winter and in summer; on a spring-forward day a window starting in the skipped hour starts at
the first instant after it, and on a fall-back day the repeated hour is inside the window both times.
A window whose `to` is not after its `from` crosses midnight: it starts on the listed day and ends on
the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from reconciler.model import StandbyWindow


def min_idle(base: int, windows: Sequence[StandbyWindow], now: datetime) -> int:
    """The minIdle in force at `now` (an aware datetime): the largest minIdle of the windows open at
    `now`, else `base`."""
    open_now = [w.min_idle for w in windows if _is_open(w, now)]
    return max(open_now) if open_now else base


def _is_open(window: StandbyWindow, now: datetime) -> bool:
    local = now.astimezone(window.zone)
    minute = local.hour * 60 + local.minute
    day = local.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= minute < window.end
    # Crosses midnight: the evening part on a listed day, the morning part on the day after one.
    return (day in window.days and minute >= window.start) or ((day - 1) % 7 in window.days and minute < window.end)
