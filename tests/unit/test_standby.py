"""Standby windows: the minIdle in force at an instant, the config that builds them, and plan using them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from plan_builders import NOW, agent, config, job_for, of, pod_for, pool, state, template, world
from test_config import JOB, base, error_of, write

from reconciler import config as config_module
from reconciler import standby
from reconciler.model import CreateJob, DrainAgent, StandbyWindow
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
    """We test: 60 arrivals in Monday 09:00-10:00 Paris over 2 weeks (0.5 a minute) with 240 s headroom give
    minIdle 2 from 08:55 to 10:00 that Monday; 2 arrivals at Tuesday 03:xx round to none; an hour starting at
    Monday 00:00 with a 5-minute lead opens Sunday 23:55 and crosses midnight."""
    history = [paris(2026, 3, 2, 9, m % 60) for m in range(60)] + [paris(2026, 3, 3, 3, 10), paris(2026, 3, 3, 3, 20)]
    history += [paris(2026, 3, 2, 0, m % 60) for m in range(60)]
    windows = standby.learned(history, zone=PARIS, weeks=2, headroom=240, lead=5)
    assert len(windows) == 2
    assert standby.min_idle(0, windows, paris(2026, 3, 9, 8, 55)) == 2
    assert standby.min_idle(0, windows, paris(2026, 3, 9, 9, 59)) == 2
    assert standby.min_idle(0, windows, paris(2026, 3, 9, 10, 0)) == 0
    assert standby.min_idle(0, windows, paris(2026, 3, 8, 23, 56)) == 2  # Sunday, before the Monday midnight hour
    assert standby.min_idle(0, windows, paris(2026, 3, 10, 3, 15)) == 0
