"""Push beside polling: queue-to-Job-created for jobs queued into idle pools when Azure DevOps service hooks
wake the reconciler (`azp-reconciler serve`), with every hook delivered and with 10 % of them lost, beside
the polling loop alone (`reconcile --loop-for`, interval 2 s / idleInterval 30 s) and KEDA's own
azure-pipelines scaler (no push: it polls every pollingInterval, set to the idleInterval), and the Azure
DevOps calls a pool that never gets a job costs per minute, all measured in one run on separate emulators.

The organization has two projects: the busy pools' pipelines are in the default project; pool `idle` is
used only by project `quiet`, whose pipelines queue nothing; pool `idle-shared` has a queue in the busy
project too, whose pipelines never use it. Each busy pool gets one short job at a time, far enough apart
that the pool is idle when the next one is queued (no request, no Job of ours left). The emulator posts
each hook after its usual delay (0.3-2 s, 2 % much later: azp_simulation/hooks.py); the subscriptions are
made by `azp-reconciler subscribe`, which finds both projects from the pools' agent queues, and `serve` may
read the runs' timelines (its PAT has the Build read scope) to find a hinted job's pool. Queue-to-Job-
created is measured as in benchmarks/latency.py; for KEDA, which would create the Job in the poll cycle that
counts the request, it is the time from queueing to the first poll of the pool's scaler that counts it
(the Job's creation itself not included), and its world has the placeholders registered by hand and no
agents, so requests stay queued and each poll counts every request queued so far."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from azp_simulation.hooks import HookDelivery
from azp_simulation.world import JOB_TTL_SECONDS, PAT, Simulation
from benchmarks import keda as keda_real
from benchmarks.harness import (
    Outcome,
    ReconcilerRun,
    check_size,
    parse_time,
    pool_document,
    reconcile_command,
    reconciler_env,
    simulation,
    spread,
    wait_until,
)
from benchmarks.latency import _describe, _record_job_creation
from reconciler.names import pool_slug

INTERVALS = {"tiny": (1.0, 5.0), "full": (2.0, 30.0)}
IDLE_POOL = "idle"
SHARED_IDLE_POOL = "idle-shared"
QUIET_PROJECT = "quiet"
BUSY_PROJECT = "project"
SECRET = "benchmark-hook-secret"
KEDA_PAT = "keda-hooks-pat-5c1e"
# Busy pools, jobs per pool, seconds between two jobs of a pool (beyond a job's end plus the Jobs' TTL).
SIZES = {"tiny": (1, 2, 4.0), "full": (8, 5, 48.0)}
MODES = ("poll", "hooks", "hooks_lost_10", "keda")


def world(size: str, *, keda: bool = False) -> dict[str, Any]:
    """The hooks world; with `keda`, every template's placeholder registered by hand (KEDA registers none)."""
    pools, rounds, spacing = SIZES[size]
    names = [f"busy-{index}" for index in range(pools)]
    arrivals = [
        {
            "at": round(index * spacing / pools + rnd * spacing, 2),
            "pool": name,
            "count": 1,
            "demands": [f"cap-{name}-t0"],
            "duration": [0.5, 1.5],
        }
        for rnd in range(rounds)
        for index, name in enumerate(names)
    ]
    return {
        "name": f"hooks-{size}",
        "timeout": 900,
        "reconciler": {
            "loopFor": 0,
            "interval": INTERVALS[size][0],
            "idleInterval": INTERVALS[size][1],
            "sweepInterval": 300,
        },
        "projects": [QUIET_PROJECT],
        "pools": [
            *(pool_document(n, templates=1, max_agents=5, idleTimeout=5) for n in [*names, SHARED_IDLE_POOL]),
            pool_document(IDLE_POOL, templates=1, max_agents=5, idleTimeout=5, projects=[QUIET_PROJECT]),
        ],
        "arrivals": arrivals,
        "agents": [_placeholder(n) for n in [*names, SHARED_IDLE_POOL, IDLE_POOL]] if keda else [],
    }


def _placeholder(pool: str) -> dict[str, Any]:
    """The offline, disabled agent a KEDA user registers so that jobs with demands wait rather than fail."""
    capabilities = {f"cap-{pool.lower()}-t0": "1", "Agent.OS": "Linux"}
    name = f"azp-placeholder-{pool_slug(pool)}-t0"
    return {"pool": pool, "name": name, "enabled": False, "capabilities": capabilities}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _start(sim: Simulation, mode: str, size: str, directory: Path) -> ReconcilerRun:
    """The reconciler of `mode`: the polling loop, or `serve` with a subscription made by `subscribe`."""
    intervals = ("--interval", str(INTERVALS[size][0]), "--idle-interval", str(INTERVALS[size][1]))
    if mode == "poll":
        return ReconcilerRun(reconcile_command(sim, "--loop-for", "900", *intervals))
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write", "vso.project", "vso.build"))
    sim.azdo.hooks.delivery = HookDelivery(loss=0.1 if mode == "hooks_lost_10" else 0.0)
    secret_file = directory / "hook-secret"
    secret_file.write_text(SECRET)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/hooks/azure-devops"
    subscribe = reconcile_command(sim, "--url", url, "--secret-file", str(secret_file))
    subscribe = [part if part != "reconcile" else "subscribe" for part in subscribe]
    subscribe.remove("--kubeconfig")
    subscribe.remove(str(sim.kubeconfig_path))
    subprocess.run([*subscribe, "--allow-http"], env=reconciler_env(), check=True, capture_output=True, timeout=120)
    served = reconcile_command(
        sim, *intervals, "--host", "127.0.0.1", "--port", str(port), "--secret-file", str(secret_file)
    )
    return ReconcilerRun([*[part if part != "reconcile" else "serve" for part in served], "--insecure-http"])


def _calls_per_minute(sim: Simulation, pool: str, start: float, end: float) -> float:
    """Azure DevOps calls about one pool per minute between `start` and `end`."""
    pool_id = sim.pool_ids[pool]
    calls = [c for c in sim.azdo.calls() if f"/pools/{pool_id}/" in c.path and start <= c.time <= end]
    return round(len(calls) / max(1e-9, (end - start) / 60), 2)


def _idle_figures(sim: Simulation, start: float, end: float, learned: float) -> dict[str, Any]:
    """Calls per minute of the two idle pools over the run, and of the shared one once every busy pool had a
    job (from then on the receiver knows which pools the busy project's jobs use)."""
    return {
        "idle_pool_calls_per_minute": _calls_per_minute(sim, IDLE_POOL, start, end),
        "shared_idle_pool_calls_per_minute": _calls_per_minute(sim, SHARED_IDLE_POOL, start, end),
        "shared_idle_pool_calls_per_minute_learned": _calls_per_minute(sim, SHARED_IDLE_POOL, min(learned, end), end),
        "minutes": round((end - start) / 60, 2),
        "learned_minutes": round(max(0.0, end - learned) / 60, 2),
    }


def _measure(size: str, mode: str, directory: Path) -> dict[str, Any]:
    if mode == "keda":
        return _measure_keda(size, directory)
    document = world(size)
    jobs = len(document["arrivals"])
    with simulation(document, directory) as sim:
        created = _record_job_creation(sim)
        run = _start(sim, mode, size, directory)
        wait_until(sim.installed, timeout=120, poll=0.05)
        installed = time.time()
        done = wait_until(lambda: sim.all_queued() and sim.unfinished_requests() == 0, timeout=600, poll=0.5)
        ended = time.time()
        run.process.terminate()
        run.wait(60)
        requests_ = [r for pool_id in sim.pool_ids.values() for r in sim.azdo.requests(pool_id)]
        hooks = list(sim.azdo.hooks.records)
        # Once every busy pool has had a job, the receiver knows which pools the busy project uses.
        first_jobs: dict[int, float] = {}
        for request in requests_:
            if request["requestId"] in created:
                pool = request["poolId"]
                first_jobs[pool] = min(first_jobs.get(pool, float("inf")), created[request["requestId"]])
        idle = _idle_figures(sim, installed, ended, max(first_jobs.values(), default=installed) + 5.0)
    latencies, into_busy_pool, slowest = _latencies(requests_, created, hooks)
    return {
        "mode": mode,
        "jobs": jobs,
        "served": sum(1 for r in requests_ if r.get("result") == "succeeded"),
        "all_served": done,
        "queue_to_job_created": spread(latencies),
        "jobs_into_busy_pools": into_busy_pool,
        **idle,
        "hooks_posted": sum(1 for h in hooks if h.delivered is not None),
        "hooks_lost": sum(1 for h in hooks if h.lost),
        "slowest_jobs": slowest,
        "azdo_calls": len(sim.azdo.calls()),
    }


def _latencies(
    requests_: list[dict[str, Any]], created: dict[int, float], hooks: list[Any]
) -> tuple[list[float], int, list[dict[str, Any]]]:
    """Queue-to-Job-created of every request that got a Job, how many found their pool busy, the 3 slowest."""
    finished = {r["requestId"]: parse_time(r.get("finishTime")) for r in requests_}
    hook_of = {h.job_id: h for h in hooks}
    latencies: list[float] = []
    into_busy_pool = 0
    slowest: list[dict[str, Any]] = []
    for request in sorted(requests_, key=lambda r: r["requestId"]):
        queued = parse_time(request.get("queueTime"))
        if queued is None or request["requestId"] not in created:
            continue
        earlier = [r for r in requests_ if r["poolId"] == request["poolId"] and r["requestId"] < request["requestId"]]
        # Idle: every earlier job of the pool had finished, and its Job expired, before this one was queued.
        into_busy_pool += not all(
            (finished[r["requestId"]] or float("inf")) + JOB_TTL_SECONDS < queued for r in earlier
        )
        latencies.append(created[request["requestId"]] - queued)
        hook = hook_of.get(str(request.get("jobId")))
        slowest.append(
            {
                "request": request["requestId"],
                "pool": request["poolId"],
                "seconds": round(latencies[-1], 2),
                "hook_after": round(hook.delivered - hook.created, 2) if hook and hook.delivered else None,
            }
        )
    return latencies, into_busy_pool, sorted(slowest, key=lambda job: -job["seconds"])[:3]


def _measure_keda(size: str, directory: Path) -> dict[str, Any]:
    """KEDA's own scaler, one ScaledJob per pool, polling every idleInterval; nothing serves the jobs."""
    if not keda_real.available():
        return {"mode": "keda", "skipped": f"the KEDA harness is not built: run {keda_real.BUILD_SCRIPT}"}
    document = world(size, keda=True)
    interval = INTERVALS[size][1]
    templates = {p["name"]: {t["name"]: t["capabilities"] for t in p["templates"]} for p in document["pools"]}
    with simulation(document, directory) as sim:
        sim.azdo.add_pat(KEDA_PAT, scopes=("vso.agentpools",), identity="keda-scaler")
        jobs = keda_real.scaled_jobs(templates)
        with keda_real.keda_scalers(
            organization=sim.organization_url, pat=KEDA_PAT, jobs=jobs, polling_interval=interval
        ) as polls:
            wait_until(lambda: len(polls) >= len(jobs), timeout=120, poll=0.1)
            started = time.time()
            wait_until(sim.all_queued, timeout=600, poll=0.5)
            time.sleep(interval + 2.0)  # the last request's pool is polled once more
            ended = time.time()
        requests_ = [(pool, r) for pool, pool_id in sim.pool_ids.items() for r in sim.azdo.requests(pool_id)]
        idle = _idle_figures(sim, started, ended, started)
    seen = _keda_detections(requests_, list(polls))
    return {
        "mode": "keda",
        "jobs": len(document["arrivals"]),
        "seen": len(seen),
        "queue_to_job_created": spread(seen),
        "polling_interval": interval,
        "poll_errors": sum(1 for p in polls if p.get("error")),
        **idle,
    }


def _keda_detections(requests_: list[tuple[str, dict[str, Any]]], polls: list[dict[str, Any]]) -> list[float]:
    """Seconds from each request's queueing to the first poll of its pool's scaler that counts it: the
    scaler's queue length reaches the number of the pool's requests queued up to it (none ever ends)."""
    seconds = []
    for pool, request in requests_:
        queued = parse_time(request.get("queueTime"))
        if queued is None or request.get("result"):
            continue
        rank = sum(
            1 for p, r in requests_ if p == pool and r["requestId"] <= request["requestId"] and not r.get("result")
        )
        times = [
            moment
            for poll in polls
            if poll.get("scaledJob") == f"{pool}-t0"
            and float(poll.get("queueLength", 0)) >= rank
            and (moment := parse_time(poll.get("time"))) is not None
            and moment >= queued
        ]
        if times:
            seconds.append(min(times) - queued)
    return seconds


def run(size: str) -> dict[str, Any]:
    """The same arrivals four times at once: polling, hooks, hooks with 10 % lost, KEDA."""
    check_size(size)
    started = time.monotonic()
    outcome = Outcome(name="hooks", size=size)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="azp-bench-hooks-") as temporary:
        threads = [
            threading.Thread(
                target=lambda mode=mode: results.__setitem__(mode, _measure(size, mode, Path(temporary) / mode)),
                daemon=True,
            )
            for mode in MODES
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    outcome.figures = results
    _latency_checks(outcome, results, size)
    _cost_checks(outcome, results)
    poll, hooks, lost = (results[mode] for mode in MODES[:3])
    outcome.check(
        "every job served, 10 % of hooks lost",
        target="all",
        value=f"{lost['served']}/{lost['jobs']} (hooks {hooks['served']}/{hooks['jobs']}, "
        f"polling {poll['served']}/{poll['jobs']})",
        met=lost["served"] == lost["jobs"] and hooks["served"] == hooks["jobs"],
    )
    outcome.notes.append(
        f"hooks: {hooks['jobs']} jobs, each into an idle pool ({hooks['jobs_into_busy_pools']} found their pool "
        "still busy); the emulator posts each hook after 0.3-2 s (2 % after 30-180 s). Pool idle is used only by "
        "project quiet, pool idle-shared may be used by the busy project too: a hint polls only the pool its run's "
        "timeline names (serve has the Build read scope), so both idle pools cost only their backstop poll"
    )
    outcome.seconds = time.monotonic() - started
    return outcome.as_dict()


def _latency_checks(outcome: Outcome, results: dict[str, dict[str, Any]], size: str) -> None:
    poll, hooks, lost, keda = (results[mode] for mode in MODES)
    outcome.check(
        "queue-to-Job-created into an idle pool, hooks",
        target="p95 <= 5 s",
        value=_describe(hooks["queue_to_job_created"]),
        met=hooks["queue_to_job_created"]["p95"] <= 5.0,
    )
    outcome.check(
        "  same, 10 % of hooks lost",
        target="(informational: lost hooks wait for the idle poll)",
        value=_describe(lost["queue_to_job_created"]) + f", {lost['hooks_lost']} lost",
        met=None,
    )
    interval, idle_interval = INTERVALS[size]
    outcome.check(
        f"  same, polling alone ({interval:g} s / {idle_interval:g} s)",
        target="(comparison)",
        value=_describe(poll["queue_to_job_created"]),
        met=None,
    )
    outcome.check(
        f"  same, KEDA's scaler (pollingInterval {idle_interval:g} s; to the poll that counts the job)",
        target="(comparison)",
        value=keda.get("skipped") or _describe(keda["queue_to_job_created"]) + f", {keda['seen']}/{keda['jobs']} seen",
        met=None,
    )


def _cost_checks(outcome: Outcome, results: dict[str, dict[str, Any]]) -> None:
    poll, hooks, lost, keda = (results[mode] for mode in MODES)
    keda_cost = "not run" if keda.get("skipped") else keda["idle_pool_calls_per_minute"]
    # A window under two minutes (the tiny run) holds too few idle polls to judge.
    judged = min(hooks["minutes"], lost["minutes"]) >= 2
    outcome.check(
        "idle pool AzDO calls per minute, whole run (a pool of another project)",
        target="<= 2",
        value=f"hooks {hooks['idle_pool_calls_per_minute']}, 10 % lost {lost['idle_pool_calls_per_minute']}, "
        f"polling {poll['idle_pool_calls_per_minute']}, KEDA {keda_cost}",
        met=max(hooks["idle_pool_calls_per_minute"], lost["idle_pool_calls_per_minute"]) <= 2.0 if judged else None,
    )
    shared = "shared_idle_pool_calls_per_minute"
    outcome.check(
        "  same, an idle pool the busy project may use",
        target="<= 2",
        value=f"whole run: hooks {hooks[shared]}, 10 % lost {lost[shared]}, polling {poll[shared]}; once every "
        f"busy pool had a job: hooks {hooks[shared + '_learned']}, 10 % lost {lost[shared + '_learned']}",
        met=max(hooks[shared], lost[shared]) <= 2.0 if judged else None,
    )
