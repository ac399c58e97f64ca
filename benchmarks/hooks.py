"""Push beside polling: queue-to-Job-created for jobs queued into idle pools when Azure DevOps service hooks
wake the reconciler (`azp-reconciler serve`), with every hook delivered and with 10 % of them lost, beside
the polling loop alone (`reconcile --loop-for`, interval 2 s / idleInterval 30 s), and the Azure DevOps
calls a pool that never gets a job costs per minute, all measured in one run on separate emulators.

Each busy pool gets one short job at a time, far enough apart that the pool is idle when the next one is
queued (no request, no Job of ours left). The emulator posts each hook after its usual delay (0.3-2 s,
2 % much later: azp_simulation/hooks.py); the subscription is made by `azp-reconciler subscribe`.
Queue-to-Job-created is measured as in benchmarks/latency.py."""

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

INTERVALS = {"tiny": (1.0, 5.0), "full": (2.0, 30.0)}
IDLE_POOL = "idle"
SECRET = "benchmark-hook-secret"
# Busy pools, jobs per pool, seconds between two jobs of a pool (beyond a job's end plus the Jobs' TTL).
SIZES = {"tiny": (1, 2, 4.0), "full": (8, 5, 48.0)}
MODES = ("poll", "hooks", "hooks_lost_10")


def world(size: str) -> dict[str, Any]:
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
        "pools": [pool_document(n, templates=1, max_agents=5, idleTimeout=5) for n in [*names, IDLE_POOL]],
        "arrivals": arrivals,
    }


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
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write"))
    sim.azdo.hooks.delivery = HookDelivery(loss=0.1 if mode == "hooks_lost_10" else 0.0)
    secret_file = directory / "hook-secret"
    secret_file.write_text(SECRET)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/hooks/azure-devops"
    subscribe = reconcile_command(
        sim, "--url", url, "--project", sim.azdo.project_id, "--secret-file", str(secret_file)
    )
    subscribe = [part if part != "reconcile" else "subscribe" for part in subscribe]
    subscribe.remove("--kubeconfig")
    subscribe.remove(str(sim.kubeconfig_path))
    subprocess.run([*subscribe, "--allow-http"], env=reconciler_env(), check=True, capture_output=True, timeout=120)
    served = reconcile_command(
        sim, *intervals, "--host", "127.0.0.1", "--port", str(port), "--secret-file", str(secret_file)
    )
    return ReconcilerRun([*[part if part != "reconcile" else "serve" for part in served], "--insecure-http"])


def _measure(size: str, mode: str, directory: Path) -> dict[str, Any]:
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
        idle_id = sim.pool_ids[IDLE_POOL]
        idle_calls = [
            c.time for c in sim.azdo.calls() if f"/pools/{idle_id}/" in c.path and installed <= c.time <= ended
        ]
        hooks = list(sim.azdo.hooks.records)
    finished = {r["requestId"]: parse_time(r.get("finishTime")) for r in requests_}
    latencies: list[float] = []
    into_busy_pool = 0
    hook_of = {h.job_id: h for h in hooks}
    slowest: list[dict[str, Any]] = []
    for request in sorted(requests_, key=lambda r: r["requestId"]):
        queued = parse_time(request.get("queueTime"))
        if queued is None or request["requestId"] not in created:
            continue
        pool_requests = [
            r for r in requests_ if r["poolId"] == request["poolId"] and r["requestId"] < request["requestId"]
        ]
        # Idle: every earlier job of the pool had finished, and its Job expired, before this one was queued.
        idle = all((finished[r["requestId"]] or float("inf")) + JOB_TTL_SECONDS < queued for r in pool_requests)
        into_busy_pool += not idle
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
    # Once every busy pool has had a job, the receiver knows which pools the project uses: from then on an
    # idle pool costs only its backstop poll (before, a job in a pool not known yet polls the others too).
    first_jobs: dict[int, float] = {}
    for request in requests_:
        if request["requestId"] in created:
            pool = request["poolId"]
            first_jobs[pool] = min(first_jobs.get(pool, float("inf")), created[request["requestId"]])
    learned = max(first_jobs.values(), default=installed) + 5.0
    steady = [moment for moment in idle_calls if moment >= learned]
    return {
        "mode": mode,
        "jobs": jobs,
        "served": sum(1 for r in requests_ if r.get("result") == "succeeded"),
        "all_served": done,
        "queue_to_job_created": spread(latencies),
        "jobs_into_busy_pools": into_busy_pool,
        "idle_pool_calls_per_minute": round(len(idle_calls) / max(1e-9, (ended - installed) / 60), 2),
        "idle_pool_calls_per_minute_learned": round(len(steady) / max(1e-9, (ended - learned) / 60), 2),
        "learned_minutes": round(max(0.0, ended - learned) / 60, 2),
        "hooks_posted": sum(1 for h in hooks if h.delivered is not None),
        "hooks_lost": sum(1 for h in hooks if h.lost),
        "slowest_jobs": sorted(slowest, key=lambda job: -job["seconds"])[:3],
        "azdo_calls": len(sim.azdo.calls()),
    }


def run(size: str) -> dict[str, Any]:
    """The same arrivals three times at once: polling, hooks, hooks with 10 % lost."""
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
    poll, hooks, lost = (results[mode] for mode in MODES)
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
        "idle pool AzDO calls per minute, hooks",
        target="<= 2",
        value=f"hooks {hooks['idle_pool_calls_per_minute_learned']}, 10 % lost "
        f"{lost['idle_pool_calls_per_minute_learned']}, polling {poll['idle_pool_calls_per_minute_learned']} "
        "(once every pool had a job)",
        # A window under two minutes (the tiny run) holds too few idle polls to judge.
        met=max(hooks["idle_pool_calls_per_minute_learned"], lost["idle_pool_calls_per_minute_learned"]) <= 2.0
        if min(hooks["learned_minutes"], lost["learned_minutes"]) >= 2
        else None,
    )
    outcome.check(
        "  same, over the whole run",
        target="(informational: includes learning which pools the project uses)",
        value=f"hooks {hooks['idle_pool_calls_per_minute']}, 10 % lost {lost['idle_pool_calls_per_minute']}, "
        f"polling {poll['idle_pool_calls_per_minute']}",
        met=None,
    )
    outcome.check(
        "every job served, 10 % of hooks lost",
        target="all",
        value=f"{lost['served']}/{lost['jobs']} (hooks {hooks['served']}/{hooks['jobs']}, "
        f"polling {poll['served']}/{poll['jobs']})",
        met=lost["served"] == lost["jobs"] and hooks["served"] == hooks["jobs"],
    )
    outcome.notes.append(
        f"hooks: {hooks['jobs']} jobs, each into an idle pool ({hooks['jobs_into_busy_pools']} found their pool "
        f"still busy); the emulator posts each hook after 0.3-2 s (2 % after 30-180 s); the idle pool never gets "
        "a job: its calls are the backstop poll, plus, until every busy pool had a job, the polls of hints whose "
        "job was not in a pool the project was known to use"
    )
    outcome.seconds = time.monotonic() - started
    return outcome.as_dict()
