"""Standby that follows the clock: the minIdle of a template (or pool) at a given instant.

A template or pool may list `standby` windows, each `{days, from, to, timeZone, minIdle}`: while the
wall clock of `timeZone` is inside a window, its `minIdle` applies (the largest of the windows that
apply); outside every window the plain `minIdle` does. config.py checks a document's windows and
resolves their time zones (reading the tz database is I/O: it happens at config load, never in plan);
`min_idle` is pure and is what plan.py calls. `learned` derives windows from a queue's history (the
standby benchmark's history policy; the reconciler does not yet record that history).

Wall-clock semantics (Python's zoneinfo, PEP 615): a window is read on the local clock, so "08:00" is
08:00 in winter and in summer; on a spring-forward day a window starting in the skipped hour starts at
the first instant after it, and on a fall-back day the repeated hour is inside the window both times.
A window whose `to` is not after its `from` crosses midnight: it starts on the listed day and ends on
the next one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo

from reconciler.model import StandbyWindow

WEEK_MINUTES = 7 * 1440


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


def learned(
    queue_times: Iterable[datetime], *, zone: tzinfo, weeks: int, headroom: float, lead: int
) -> tuple[StandbyWindow, ...]:
    """Windows learned from a queue's history: for each hour of the week (on `zone`'s clock), the mean
    arrivals per minute over `weeks` weeks times `headroom` seconds (the arrivals idle agents must absorb
    while new ones start), rounded to the nearest whole agent, kept from `lead` minutes before the hour."""
    counts = Counter(_hour_of_week(t.astimezone(zone)) for t in queue_times)
    windows = []
    for hour, count in sorted(counts.items()):
        min_idle = int(count / weeks / 60 * headroom / 60 + 0.5)
        if min_idle:
            day, start = divmod((hour * 60 - lead) % WEEK_MINUTES, 1440)
            end = start + lead + 60
            windows.append(
                StandbyWindow(
                    days=frozenset({day}),
                    start=start,
                    end=end if end <= 1440 else end - 1440,
                    zone=zone,
                    min_idle=min_idle,
                )
            )
    return tuple(windows)


def _hour_of_week(local: datetime) -> int:
    return local.weekday() * 24 + local.hour
