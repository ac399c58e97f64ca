"""Standby that follows the clock: the minIdle of a template (or pool) at a given instant.

A template or pool may list `standby` windows, each `{days, from, to, timeZone, minIdle}`: while the
wall clock of `timeZone` is inside a window, its `minIdle` applies (the largest of the windows that
apply); outside every window the plain `minIdle` does. config.py checks a document's windows and
resolves their time zones (reading the tz database is I/O: it happens at config load, never in plan);
`min_idle` is pure and is what plan.py calls.

History-based warm-up (a template's `standbyLearn`): plan() records, per template, the peak of queued+running
requests routed to it in each hour of the week (`record`: a bucket changes only when its peak rises), kept in
the `<release>-standby-history` ConfigMap (`encode`/`decode`); a bucket's peak of one week becomes its
learned peak the next, and a learned peak halves for every week the hour stays quiet (`promoted`), so the
history is bounded (168 buckets per template) and follows the traffic. `learned` turns the learned peaks
into windows that open `lead` minutes before each busy hour.

Wall-clock semantics (Python's zoneinfo, PEP 615): a window is read on the local clock, so "08:00" is
08:00 in winter and in summer; on a spring-forward day a window starting in the skipped hour starts at
the first instant after it, and on a fall-back day the repeated hour is inside the window both times.
A window whose `to` is not after its `from` crosses midnight: it starts on the listed day and ends on
the next one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo

from reconciler.model import Bucket, StandbyLearning, StandbyWindow

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


def configmap_name(release: str) -> str:
    """The ConfigMap that keeps a release's standby history, in the reconciler's namespace."""
    return f"{release}-standby-history"


def history_key(pool_slug: str, template: str) -> str:
    """A template's key in the history ConfigMap (pool slugs and template names are DNS labels: a valid key)."""
    return f"{pool_slug}.{template}"


def hour_of_week(now: datetime, zone: tzinfo) -> tuple[int, int]:
    """(week, hour of the week) of `now` on `zone`'s clock: weeks count Mondays since 0001-01-01, hours run
    from Monday 00:00 (0) to Sunday 23:00 (167). On a fall-back day the repeated hour is one bucket."""
    local = now.astimezone(zone)
    return (local.toordinal() - 1) // 7, local.weekday() * 24 + local.hour


def promoted(bucket: Bucket, week: int) -> Bucket:
    """A bucket as of `week`: the peak of the week it was recorded in becomes the learned peak, which halves
    for every week without a recording (old weeks decay; a busy week replaces them)."""
    recorded, peak, learned_peak = bucket
    if recorded >= week:
        return bucket
    gap = week - recorded
    return (week, 0, max(peak >> (gap - 1), learned_peak >> gap))


def record(buckets: Mapping[int, Bucket], now: datetime, zone: tzinfo, count: int) -> dict[int, Bucket] | None:
    """The buckets with `count` queued+running requests seen at `now`, or None when that is no new peak
    for the hour of this week (so a write happens only when an hour's peak rises)."""
    week, hour = hour_of_week(now, zone)
    current = promoted(buckets.get(hour, (week, 0, 0)), week)
    if count <= current[1]:
        return None
    return {**buckets, hour: (week, count, current[2])}


def learned_windows(
    buckets: Mapping[int, Bucket], learning: StandbyLearning, now: datetime
) -> tuple[StandbyWindow, ...]:
    """The windows `learned` derives from a template's recorded buckets, as of the week of `now`."""
    week, _ = hour_of_week(now, learning.zone)
    peaks = {hour: promoted(bucket, week)[2] for hour, bucket in buckets.items()}
    return learned(peaks, zone=learning.zone, fraction=learning.fraction, lead=learning.lead, most=learning.most)


def learned(
    peaks: Mapping[int, int], *, zone: tzinfo, fraction: float, lead: int, most: int | None = None
) -> tuple[StandbyWindow, ...]:
    """Windows learned from a queue's history: for each hour of the week (on `zone`'s clock), `fraction` of
    its learned peak of queued+running requests rounded up (at most `most`), kept from `lead` minutes before
    the hour."""
    windows = []
    for hour, peak in sorted(peaks.items()):
        min_idle = math.ceil(peak * fraction - 1e-9)
        if most is not None:
            min_idle = min(min_idle, most)
        if min_idle > 0:
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


def encode(peaks: Mapping[str, Mapping[int, Bucket]]) -> dict[str, str]:
    """ConfigMap data: per template key, JSON of its busy hours {hour: [week, peak, learned]} (quiet hours,
    whose buckets have decayed to nothing, are left out: at most 168 short entries per template)."""
    data = {}
    for key, buckets in sorted(peaks.items()):
        kept = {str(hour): list(bucket) for hour, bucket in sorted(buckets.items()) if bucket[1] or bucket[2]}
        data[key] = json.dumps(kept, separators=(",", ":"))
    return data


def decode(data: Mapping[str, str]) -> dict[str, dict[int, Bucket]]:
    """The peaks of ConfigMap data; an entry that is not [week, peak, learned] of an hour 0..167 is skipped
    (someone edited it by hand: that hour is learned again)."""
    peaks: dict[str, dict[int, Bucket]] = {}
    for key, text in data.items():
        try:
            document = json.loads(text)
        except ValueError:
            continue
        buckets: dict[int, Bucket] = {}
        for hour, value in document.items() if isinstance(document, dict) else ():
            if str(hour).isdigit() and int(hour) < 168 and _bucket_shaped(value):
                buckets[int(hour)] = (value[0], value[1], value[2])
        peaks[key] = buckets
    return peaks


def _bucket_shaped(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )
