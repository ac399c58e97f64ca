"""Standby windows: the minIdle in force at an instant, the config that builds them, and plan using them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from plan_builders import NOW, agent, config, job_for, of, pod_for, pool, queued, state, template, world
from test_config import JOB, base, error_of, write

from reconciler import config as config_module
from reconciler import standby
from reconciler.model import (
    CreateJob,
    DrainAgent,
    RecordStandbyHistory,
    StandbyHistory,
    StandbyLearning,
    StandbyWindow,
)
from reconciler.plan import plan

PARIS = ZoneInfo("Europe/Paris")
OFFICE = StandbyWindow(days=frozenset(range(5)), start=8 * 60, end=18 * 60, zone=PARIS, min_idle=3)
NIGHT = StandbyWindow(days=frozenset({4}), start=22 * 60, end=2 * 60, zone=PARIS, min_idle=5)


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


def test_office_hours_on_weekdays_only() -> None:
    """We test: inside the window (Paris clock) its minIdle applies; before, at `to`, and on Saturday the plain one."""
    assert standby.min_idle(1, [OFFICE], paris(2026, 3, 2, 8, 0)) == 3  # Monday 08:00
    assert standby.min_idle(1, [OFFICE], paris(2026, 3, 2, 7, 59)) == 1
    assert standby.min_idle(1, [OFFICE], paris(2026, 3, 6, 17, 59)) == 3  # Friday
    assert standby.min_idle(1, [OFFICE], paris(2026, 3, 6, 18, 0)) == 1
    assert standby.min_idle(1, [OFFICE], paris(2026, 3, 7, 12, 0)) == 1  # Saturday


def test_instant_in_another_zone_is_read_on_the_window_clock() -> None:
    """We test: 07:30 UTC in winter is 08:30 in Paris (inside), 06:30 UTC in summer is 08:30 too."""
    assert standby.min_idle(0, [OFFICE], datetime(2026, 1, 5, 7, 30, tzinfo=UTC)) == 3
    assert standby.min_idle(0, [OFFICE], datetime(2026, 1, 5, 6, 30, tzinfo=UTC)) == 0
    assert standby.min_idle(0, [OFFICE], datetime(2026, 7, 6, 6, 30, tzinfo=UTC)) == 3


def test_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    """We test: Friday 22:00-02:00 covers Friday night and early Saturday, not early Friday nor Saturday night."""
    assert standby.min_idle(0, [NIGHT], paris(2026, 3, 6, 23, 0)) == 5
    assert standby.min_idle(0, [NIGHT], paris(2026, 3, 7, 1, 59)) == 5
    assert standby.min_idle(0, [NIGHT], paris(2026, 3, 7, 2, 0)) == 0
    assert standby.min_idle(0, [NIGHT], paris(2026, 3, 6, 1, 0)) == 0
    assert standby.min_idle(0, [NIGHT], paris(2026, 3, 7, 23, 0)) == 0


def test_sunday_night_window_wraps_to_monday() -> None:
    """We test: a window starting Sunday and crossing midnight covers early Monday (weekday wrap-around)."""
    sunday = StandbyWindow(days=frozenset({6}), start=23 * 60, end=60, zone=PARIS, min_idle=2)
    assert standby.min_idle(0, [sunday], paris(2026, 3, 9, 0, 30)) == 2
    assert standby.min_idle(0, [sunday], paris(2026, 3, 10, 0, 30)) == 0


def test_dst_spring_forward_and_fall_back() -> None:
    """We test: across DST changes the window follows the wall clock: on 2026-03-29 (Paris springs forward at
    02:00 -> 03:00) a 02:30-04:00 window opens at 03:00 local = 01:00 UTC; on 2026-10-25 (falls back 03:00 -> 02:00)
    a 02:00-03:00 window covers both 02:xx hours, i.e. two hours of UTC."""
    early = StandbyWindow(days=frozenset({6}), start=150, end=240, zone=PARIS, min_idle=4)
    assert standby.min_idle(0, [early], datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) == 0  # 01:59 CET
    assert standby.min_idle(0, [early], datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == 4  # 03:00 CEST
    repeated = StandbyWindow(days=frozenset({6}), start=120, end=180, zone=PARIS, min_idle=4)
    start = datetime(2026, 10, 24, 23, 30, tzinfo=UTC)  # 01:30 CEST
    open_minutes = sum(standby.min_idle(0, [repeated], start + timedelta(minutes=m)) == 4 for m in range(0, 5 * 60, 10))
    assert open_minutes * 10 == 120


def test_overlapping_windows_take_the_largest() -> None:
    """We test: when two windows are open at once, the larger minIdle applies."""
    lunch = StandbyWindow(days=frozenset({0}), start=12 * 60, end=14 * 60, zone=PARIS, min_idle=6)
    assert standby.min_idle(0, [OFFICE, lunch], paris(2026, 3, 2, 13, 0)) == 6
    assert standby.min_idle(0, [OFFICE, lunch], paris(2026, 3, 2, 15, 0)) == 3


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(JOB))
    return tmp_path


def window(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"days": ["Mon-Fri"], "from": "08:00", "to": "18:00", "timeZone": "Europe/Paris"}
    entry["minIdle"] = 2
    entry.update(overrides)
    return entry


def test_config_builds_windows_of_templates_and_pools(workdir: Path) -> None:
    """We test: standby lists of a template and a pool load; day ranges wrap (Sat-Mon); 24:00 closes at midnight."""
    document = base(
        pools=[
            {
                "name": "linux",
                "standby": [window(days=["Sat-Mon"], to="24:00")],
                "templates": [{"name": "a", "jobTemplate": "job.yaml", "standby": [window(), window(days=["Sun"])]}],
            }
        ]
    )
    loaded, _ = config_module.load_file(write(workdir, document))
    pool_windows = loaded.pools[0].standby
    assert pool_windows[0].days == frozenset({5, 6, 0}) and pool_windows[0].end == 24 * 60
    template_windows = loaded.pools[0].templates[0].standby
    assert [w.days for w in template_windows] == [frozenset(range(5)), frozenset({6})]
    assert template_windows[0].zone == PARIS and template_windows[0].start == 480


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (window(days=["Monday"]), ["pools[0].templates[0].standby[0].days", "'Monday'", "Mon-Fri"]),
        (window(days=["Mon-Fri-Sat"]), ["standby[0].days", "'Mon-Fri-Sat'"]),
        (window(**{"from": "8:00"}), ["pools[0].templates[0].standby[0].from", "'8:00'", "HH:MM"]),
        (window(to="18:60"), ["standby[0].to", "'18:60'"]),
        (window(**{"from": "24:00"}), ["standby[0].from", "24:00"]),
        (window(to="08:00"), ["standby[0]", "a window needs a length"]),
        (window(timeZone="Europe/Pariss"), ["standby[0].timeZone", "'Europe/Pariss'", "IANA"]),
    ],
)
def test_config_errors_name_the_key(workdir: Path, entry: dict[str, Any], words: list[str]) -> None:
    """We test: a bad day, time or time zone is a ConfigError naming the key, the value and the fix."""
    document = base(pools=[{"name": "linux", "templates": [{"name": "a", "jobTemplate": "job.yaml"}]}])
    document["pools"][0]["templates"][0]["standby"] = [entry]
    message = error_of(workdir, document)
    assert all(word in message for word in words), message


def test_pool_window_errors_name_the_pool_key(workdir: Path) -> None:
    """We test: the pool's own standby list is checked too, naming pools[i].standby[j]."""
    message = error_of(
        workdir, base(pools=[{"name": "linux", "jobTemplate": "job.yaml", "standby": [window(days=[])]}])
    )
    assert "pools[0].standby[0].days" in message, message


def test_plan_window_raises_idle_agents_kept() -> None:
    """We test: inside a window plan keeps the window's minIdle (creates standby Jobs, drains none), outside it
    the plain minIdle (creates none, drains the surplus idle agents past their idleTimeout)."""
    open_now = StandbyWindow(days=frozenset({NOW.weekday()}), start=11 * 60, end=13 * 60, zone=UTC, min_idle=3)
    cfg = config(pool("linux", template(min_idle=1, standby=(open_now,), placeholder=False), idle_timeout=60))
    jobs = (job_for("linux", slot=0, created=900), job_for("linux", slot=1, created=900))
    pods = tuple(pod_for(j, created=899, started=898) for j in jobs)
    agents = (agent(1, pods[0].name, changed=800), agent(2, pods[1].name, changed=500))
    w = world(state("linux", agents=agents), jobs=jobs, pods=pods)
    inside = plan(cfg, w, NOW)
    assert len(of(CreateJob, inside)) == 1 and of(DrainAgent, inside) == []
    outside = plan(cfg, w, NOW + timedelta(hours=2))
    assert of(CreateJob, outside) == [] and [d.agent_id for d in of(DrainAgent, outside)] == [1]


def test_learned_windows_follow_the_history_hour_by_hour() -> None:
    """We test: a learned peak of 4 at Monday 09:00 Paris with fraction 0.5 gives minIdle 2 from 08:55 to
    10:00 that Monday; a peak of 1 rounds up to 1 and `most` caps a peak of 20 at 3; an hour starting at
    Monday 00:00 with a 5-minute lead opens Sunday 23:55 and crosses midnight."""
    peaks = {9: 4, 24 + 3: 1, 0: 4, 48 + 10: 20, 50: 0}
    windows = standby.learned(peaks, zone=PARIS, fraction=0.5, lead=5, most=3)
    assert len(windows) == 4
    assert standby.min_idle(0, windows, paris(2026, 3, 9, 8, 55)) == 2
    assert standby.min_idle(0, windows, paris(2026, 3, 9, 9, 59)) == 2
    assert standby.min_idle(0, windows, paris(2026, 3, 9, 10, 0)) == 0
    assert standby.min_idle(0, windows, paris(2026, 3, 8, 23, 56)) == 2  # Sunday, before the Monday midnight hour
    assert standby.min_idle(0, windows, paris(2026, 3, 10, 3, 15)) == 1
    assert standby.min_idle(0, windows, paris(2026, 3, 11, 10, 15)) == 3


def test_hour_of_week_reads_the_local_clock_across_daylight_saving() -> None:
    """We test: 08:30 UTC is hour 9 (Monday 09:30 Paris) in winter and hour 10 in summer; on the fall-back
    Sunday both 02:30s are one bucket (hour 6*24+2); weeks count from Monday, so Sunday night and the
    Monday after are one week apart in number and buckets 167 and 0."""
    assert standby.hour_of_week(datetime(2026, 3, 2, 8, 30, tzinfo=UTC), PARIS)[1] == 9
    assert standby.hour_of_week(datetime(2026, 7, 6, 8, 30, tzinfo=UTC), PARIS)[1] == 10
    first, second = datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert standby.hour_of_week(first, PARIS) == standby.hour_of_week(second, PARIS)
    assert standby.hour_of_week(first, PARIS)[1] == 6 * 24 + 2
    sunday = standby.hour_of_week(paris(2026, 3, 8, 23, 30), PARIS)
    monday = standby.hour_of_week(paris(2026, 3, 9, 0, 30), PARIS)
    assert (monday[0] - sunday[0], sunday[1], monday[1]) == (1, 167, 0)


def test_a_week_peak_becomes_the_learned_peak_and_old_weeks_decay() -> None:
    """We test: an hour recorded with peak 6 in week w is learned as 6 in week w+1, halves for each quiet
    week after (3 in w+2, 1 in w+3), and a decayed older peak still counts when larger."""
    assert standby.promoted((10, 6, 2), 10) == (10, 6, 2)
    assert standby.promoted((10, 6, 2), 11) == (11, 0, 6)
    assert standby.promoted((10, 6, 2), 12) == (12, 0, 3)
    assert standby.promoted((10, 6, 2), 13) == (13, 0, 1)
    assert standby.promoted((10, 2, 8), 11) == (11, 0, 4)


def test_record_writes_only_when_the_hour_peak_rises() -> None:
    """We test: the first count of an hour is recorded, the same or a lower count is not, a higher one is;
    the same hour a week later starts from zero with last week's peak learned."""
    monday = paris(2026, 3, 2, 9, 10)
    week, hour = standby.hour_of_week(monday, PARIS)
    buckets = standby.record({}, monday, PARIS, 3)
    assert buckets == {hour: (week, 3, 0)}
    assert standby.record(buckets, monday + timedelta(minutes=20), PARIS, 3) is None
    assert standby.record(buckets, monday + timedelta(minutes=20), PARIS, 1) is None
    assert standby.record(buckets, monday + timedelta(minutes=40), PARIS, 5) == {hour: (week, 5, 0)}
    assert standby.record(buckets, monday + timedelta(days=7), PARIS, 0) is None
    assert standby.record(buckets, monday + timedelta(days=7), PARIS, 1) == {hour: (week + 1, 1, 3)}


def test_history_round_trips_and_hand_edits_are_skipped() -> None:
    """We test: encode/decode keep busy buckets, drop quiet ones, and skip entries that are not
    [week, peak, learned] of an hour 0..167 (a ConfigMap edited by hand)."""
    peaks = {"linux.default": {9: (5, 3, 1), 10: (5, 0, 0)}}
    assert standby.decode(standby.encode(peaks)) == {"linux.default": {9: (5, 3, 1)}}
    edited = {"a.b": '{"9":[1,2,3],"168":[1,2,3],"x":[1,2,3],"3":[1,-2,3],"4":[1,2],"5":[true,1,1]}', "c.d": "{"}
    assert standby.decode(edited) == {"a.b": {9: (1, 2, 3)}}


def test_plan_records_peaks_and_keeps_agents_warm_before_a_learned_peak() -> None:
    """We test through plan(): with a history whose 13:00 UTC hour learned a peak of 4 last week, at 12:55 a
    template learning with fraction 0.5 and a 10 min lead gets 2 standby Jobs, at 12:40 none; 3 requests seen
    at 12:40 raise the 12:00 hour's peak and plan writes the history (at the resourceVersion it read), not
    again for 3 requests; nothing is recorded when no template learns."""
    learn = StandbyLearning(zone=UTC, fraction=0.5, lead=10)
    cfg = config(pool("linux", template(placeholder=False, learn=learn)))
    week, hour = standby.hour_of_week(NOW + timedelta(hours=1), UTC)
    history = StandbyHistory(peaks={"linux.default": {hour: (week - 1, 4, 0)}}, resource_version="7")
    quiet = replace(world(state("linux")), standby_history=history)
    assert len(of(CreateJob, plan(cfg, quiet, NOW + timedelta(minutes=55)))) == 2
    assert of(CreateJob, plan(cfg, quiet, NOW + timedelta(minutes=40))) == []
    assert of(RecordStandbyHistory, plan(cfg, quiet, NOW + timedelta(minutes=40))) == []
    busy = replace(world(state("linux", queued(1), queued(2), queued(3))), standby_history=history)
    (write_,) = of(RecordStandbyHistory, plan(cfg, busy, NOW + timedelta(minutes=40)))
    assert write_.history.resource_version == "7"
    assert write_.history.peaks["linux.default"][hour - 1] == (week, 3, 0)
    again = replace(busy, standby_history=write_.history)
    assert of(RecordStandbyHistory, plan(cfg, again, NOW + timedelta(minutes=45))) == []
    assert of(RecordStandbyHistory, plan(config(), busy, NOW)) == []


def test_config_builds_standby_learning(workdir: Path) -> None:
    """We test: `standbyLearn` builds the template's learning (defaults: UTC, fraction 0.5, 10 min lead);
    disabled or absent, none."""
    learn = {"enabled": True, "timeZone": "Europe/Paris", "max": 4}
    templates = [
        {"name": "a", "jobTemplate": "job.yaml", "standbyLearn": learn},
        {"name": "b", "jobTemplate": "job.yaml", "standbyLearn": {"enabled": False, "fraction": 1}},
        {"name": "c", "jobTemplate": "job.yaml", "standbyLearn": {"enabled": True}},
        {"name": "d", "jobTemplate": "job.yaml"},
    ]
    loaded, _ = config_module.load_file(write(workdir, base(pools=[{"name": "linux", "templates": templates}])))
    assert [t.learn for t in loaded.pools[0].templates] == [
        StandbyLearning(zone=PARIS, fraction=0.5, lead=10, most=4),
        None,
        StandbyLearning(zone=ZoneInfo("UTC")),
        None,
    ]


@pytest.mark.parametrize(
    ("learn", "words"),
    [
        ({"enabled": True, "timeZone": "Mars/Olympus"}, ["pools[0].templates[0].standbyLearn.timeZone", "IANA"]),
        ({"enabled": True, "leadMinutes": 500}, ["standbyLearn.leadMinutes", "500"]),
        ({"enabled": True, "fraction": 0}, ["standbyLearn.fraction"]),
        ({"enabled": True, "hours": 3}, ["standbyLearn", "hours"]),
    ],
)
def test_standby_learn_errors_name_the_key(workdir: Path, learn: dict[str, Any], words: list[str]) -> None:
    """We test: a bad time zone, lead, fraction or an unknown key of standbyLearn is an error naming the key."""
    document = base(pools=[{"name": "linux", "templates": [{"name": "a", "jobTemplate": "job.yaml"}]}])
    document["pools"][0]["templates"][0]["standbyLearn"] = learn
    message = error_of(workdir, document)
    assert all(word in message for word in words), message
