"""Standby that follows the clock: a week of office-hours traffic, queue-to-agent wait against idle cost.

Compressed time: the real plan() is driven directly, one pass per simulated minute, with a synthetic
clock and a small queue model instead of the real-time emulators, so a week runs in seconds. The model
(deliberately simple, and the same for every policy):
- arrivals are a Poisson process whose rate follows the Paris wall clock: office hours Mon-Fri
  08:00-18:00 busy (peaks 09-12 and 14-17), a trickle at night and at weekends; durations 4-12 min;
- plan() runs every PASS seconds of simulated time;
- a Job's agent comes online COLD_START seconds after plan creates it (pod scheduled, image cached,
  registered); it serves one request and exits (ephemeral);
- Azure DevOps hands a queued request to an idle online agent at once, oldest request first;
- a drained agent is gone at once (the real drain disables, re-reads and deletes it).
Not modelled: provisioning failures, image pulls, Kubernetes' own scheduling latency, several pools.

Policies compared: fixed minIdle 0, fixed minIdle N all week, a standby window (Mon-Fri 08:00-18:00
Europe/Paris, minIdle N; 0 outside), and history (a template's `standbyLearn`): plan() itself records the
peaks of the week before (same traffic model, another seed) into a standby history, exactly as it would
write the `<release>-standby-history` ConfigMap (this model keeps what the RecordStandbyHistory actions
write), then serves the measured days from that history: FRACTION of each hour's learned peak of
queued+running requests kept idle from LEAD minutes before the hour. Only the measured days count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from benchmarks.harness import Outcome, check_size, spread
from reconciler import names
from reconciler.model import (
    Agent,
    AgentJob,
    AgentPod,
    Config,
    CreateJob,
    DeleteJob,
    DrainAgent,
    JobRequest,
    PoolConfig,
    PoolState,
    RecordStandbyHistory,
    StandbyHistory,
    StandbyLearning,
    StandbyWindow,
    TemplateConfig,
    World,
)
from reconciler.plan import plan

PARIS = ZoneInfo("Europe/Paris")
START = datetime(2026, 3, 2, tzinfo=PARIS)  # a Monday, no DST change that week
COLD_START = 90.0
FRACTION = 0.5
"""Idle agents per request of an hour's learned peak (standbyLearn.fraction, its default)."""
LEAD = 10
PASS = 30
"""Seconds between plan() passes (loop.interval is 10 s by default, 30 s idle; 30 keeps a week quick)."""
STANDBY_N = 3
POOL = "office"
NAMESPACE = "agents"
DAYS = {"tiny": 2, "full": 7}
SEED = 18


def rate_per_minute(local: datetime) -> float:
    """Arrivals per minute at a Paris wall-clock instant."""
    if local.weekday() >= 5 or not 8 <= local.hour < 18:
        return 0.01
    return 0.6 if local.hour in (9, 10, 11, 14, 15, 16) else 0.25


def arrivals(days: int, rng: random.Random) -> list[tuple[float, float]]:
    """(queue time, duration) in seconds after START, by thinning a Poisson process of the peak rate."""
    out: list[tuple[float, float]] = []
    t, peak = 0.0, 0.6
    while True:
        t += rng.expovariate(peak / 60)
        if t >= days * 86400:
            return out
        if rng.random() < rate_per_minute((START + timedelta(seconds=t)).astimezone(PARIS)) / peak:
            out.append((t, rng.uniform(240, 720)))


@dataclass
class _Agent:
    job: AgentJob
    agent_id: int
    online_at: float
    idle_since: float | None = None
    request: int | None = None
    ends_at: float | None = None


@dataclass
class _Run:
    config: Config
    start: datetime = START
    """The simulated instant of second 0."""
    history: StandbyHistory | None = None
    """The standby history as the RecordStandbyHistory actions left it (None: no template learns)."""
    agents: list[_Agent] = field(default_factory=list)
    queue: list[tuple[int, float]] = field(default_factory=list)
    """(request id, queue time) waiting for an agent, oldest first."""
    running: dict[int, tuple[float, str, int]] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    idle_seconds: float = 0.0
    next_id: int = 1


def _at(run: _Run, seconds: float) -> datetime:
    return (run.start + timedelta(seconds=seconds)).astimezone(UTC)


def _assign(run: _Run, agent: _Agent, request: int, queued: float, at: float, durations: dict[int, float]) -> None:
    run.idle_seconds += at - (agent.idle_since if agent.idle_since is not None else at)
    agent.idle_since, agent.request, agent.ends_at = None, request, at + durations[request]
    run.running[request] = (queued, agent.job.name, agent.agent_id)
    run.waits.append(at - queued)


def _advance(run: _Run, until: float, arriving: list[tuple[int, float]], durations: dict[int, float]) -> None:
    """Events up to `until` in time order: agents finishing, coming online, requests arriving."""
    events: list[tuple[float, int, Any]] = [(a.ends_at, 0, a) for a in run.agents if a.ends_at and a.ends_at <= until]
    events += [(a.online_at, 1, a) for a in run.agents if a.idle_since is None and a.request is None]
    events += [(t, 2, rid) for rid, t in arriving]
    for at, kind, subject in sorted((e for e in events if e[0] <= until), key=lambda e: (e[0], e[1])):
        if kind == 0:
            run.agents.remove(subject)
            run.running.pop(subject.request, None)
        elif kind == 1:
            subject.idle_since = at
            if run.queue:
                request, queued = run.queue.pop(0)
                _assign(run, subject, request, queued, at, durations)
        else:
            idle = sorted((a for a in run.agents if a.idle_since is not None), key=lambda a: a.idle_since or 0)
            if idle:
                _assign(run, idle[0], subject, at, at, durations)
            else:
                run.queue.append((subject, at))


def _world(run: _Run, now: float) -> World:
    requests = [JobRequest(request_id=r, queue_time=_at(run, t)) for r, t in run.queue]
    requests += [
        JobRequest(
            request_id=r, queue_time=_at(run, t), assign_time=_at(run, t), reserved_agent_id=i, reserved_agent_name=n
        )
        for r, (t, n, i) in run.running.items()
    ]
    agents, pods = [], []
    for a in run.agents:
        online = a.online_at <= now
        pods.append(
            AgentPod(
                name=a.job.name,
                namespace=NAMESPACE,
                job_name=a.job.name,
                phase="Running",
                created=a.job.created,
                started=a.job.created,
            )
        )
        if online:
            changed = a.idle_since if a.idle_since is not None else a.online_at
            agents.append(
                Agent(
                    agent_id=a.agent_id,
                    name=a.job.name,
                    status="online",
                    assigned_request_id=a.request,
                    status_changed_on=_at(run, changed),
                )
            )
    state = PoolState(name=POOL, pool_id=1, requests=tuple(requests), agents=tuple(agents))
    return World(
        pools=(state,),
        jobs=tuple(a.job for a in run.agents),
        pods=tuple(pods),
        agents_observed={POOL: _at(run, now)},
        standby_history=run.history,
    )


def _apply(run: _Run, actions: list[Any], now: float) -> None:
    for action in actions:
        if isinstance(action, CreateJob):
            job = AgentJob(
                name=action.job_name,
                namespace=NAMESPACE,
                pool_slug=names.pool_slug(POOL),
                pool_name=POOL,
                template=action.template,
                request_id=action.request_id,
                standby=action.request_id is None,
                created=_at(run, now),
            )
            run.agents.append(_Agent(job=job, agent_id=run.next_id, online_at=now + COLD_START))
            run.next_id += 1
        elif isinstance(action, RecordStandbyHistory):
            run.history = action.history
        elif isinstance(action, (DrainAgent, DeleteJob)):
            for agent in [a for a in run.agents if a.job.name == action.job_name and a.request is None]:
                if agent.idle_since is not None:
                    run.idle_seconds += now - agent.idle_since
                run.agents.remove(agent)


def simulate(
    config: Config, traffic: list[tuple[float, float]], days: int, *, learned_from: Sequence[tuple[float, float]] = ()
) -> dict[str, Any]:
    """Queue-to-agent waits and idle agent-minutes of one policy over `days` of traffic; a learning policy
    first records the week of `learned_from` traffic before (its figures are not counted)."""
    history = None
    if any(t.learn is not None for p in config.pools for t in p.templates):
        before = _Run(config=config, start=START - timedelta(days=7), history=StandbyHistory())
        _passes(before, learned_from, 7)
        history = before.history
    run = _Run(config=config, history=history)
    _passes(run, traffic, days)
    run.idle_seconds += sum(days * 86400.0 - a.idle_since for a in run.agents if a.idle_since is not None)
    return {"queue_to_agent": spread(run.waits, digits=1), "idle_agent_minutes": round(run.idle_seconds / 60)}


def _passes(run: _Run, traffic: Sequence[tuple[float, float]], days: int) -> None:
    """One plan() pass per PASS seconds of `days`, the traffic arriving and agents serving in between."""
    durations = {index + 1: duration for index, (_, duration) in enumerate(traffic)}
    pending = [(index + 1, t) for index, (t, _) in enumerate(traffic)]
    for step in range(days * 86400 // PASS):
        now = float(step * PASS)
        arriving = [p for p in pending if p[1] <= now]
        pending = pending[len(arriving) :]
        _advance(run, now, arriving, durations)
        _apply(run, plan(run.config, _world(run, now), _at(run, now)), now)


def policies() -> dict[str, Config]:
    """The configurations compared: everything equal but minIdle and its windows."""
    office = StandbyWindow(days=frozenset(range(5)), start=8 * 60, end=18 * 60, zone=PARIS, min_idle=STANDBY_N)
    base = TemplateConfig(name="default", job_template="/t/default.yaml", placeholder=False)
    variants = {
        "minIdle 0": base,
        f"minIdle {STANDBY_N}": replace(base, min_idle=STANDBY_N),
        f"window Mon-Fri 08-18 Paris, minIdle {STANDBY_N}": replace(base, standby=(office,)),
        f"history of last week (fraction {FRACTION:g} of the peak, {LEAD} min lead)": replace(
            base, learn=StandbyLearning(zone=PARIS, fraction=FRACTION, lead=LEAD)
        ),
    }
    return {
        name: Config(
            organization="https://dev.azure.com/contoso",
            pools=(PoolConfig(name=POOL, namespace=NAMESPACE, templates=(template,), max_agents=40),),
            namespace=NAMESPACE,
        )
        for name, template in variants.items()
    }


def run(size: str) -> dict[str, Any]:
    check_size(size)
    started = time.monotonic()
    days = DAYS[size]
    traffic = arrivals(days, random.Random(SEED))
    outcome = Outcome(name="standby", size=size)
    last_week = arrivals(7, random.Random(SEED + 1))
    outcome.figures = {
        name: simulate(config, traffic, days, learned_from=last_week) for name, config in policies().items()
    }
    outcome.figures["jobs"] = len(traffic)
    for name, figures in outcome.figures.items():
        if name == "jobs":
            continue
        wait = figures["queue_to_agent"]
        outcome.check(
            f"queue-to-agent / idle, {name}",
            target="(trade-off)",
            value=f"p50 {wait['p50']:g} s, p95 {wait['p95']:g} s; {figures['idle_agent_minutes']} idle agent-min",
            met=None,
        )
    outcome.notes.append(
        f"{days} days from Mon {START:%Y-%m-%d} Europe/Paris, {len(traffic)} jobs, cold start {COLD_START:g} s, "
        f"one plan() pass per {PASS} simulated seconds; the history policy's plan() recorded "
        "the week before itself"
    )
    outcome.seconds = time.monotonic() - started
    return outcome.as_dict()
