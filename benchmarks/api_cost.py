"""API cost, side by side in one run: one emulated organization (pools with 1 to 4 job templates and a
steady arrival of jobs) is served by the real reconciler (a separate `python -m reconciler reconcile
--loop-for` process), while the orchestrator and KEDA reference policies poll the same organization
with their own PATs. The emulator's call log, split by identity, gives each one's bill.

azp-agents runs with interval 2 s (pools with work) and idleInterval 30 s (idle pools; KEDA's
default poll), the setting of the latency benchmark.

When scripts/build-keda-harness.sh has built it, KEDA's own azure-pipelines scaler (the Go code,
benchmarks/keda) also polls the same organization with a PAT of its own, one scaler per template:
the row "KEDA scaler (real)" beside the re-implemented KEDA policy."""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from azp_simulation.azdo_support import SCOPE_READ, RateLimit
from azp_simulation.world import Simulation
from benchmarks import keda as keda_real
from benchmarks.harness import (
    Outcome,
    ReconcilerRun,
    check_size,
    parse_time,
    pool_document,
    reconcile_command,
    simulation,
    wait_until,
)
from benchmarks.reference_policies import (
    KEDA_POLLING_INTERVAL,
    ORCHESTRATOR_POLLING_DELAY,
    PolicyPool,
    keda_policy,
    orchestrator_policy,
)

AZP_IDENTITY = "Build Admin"
ORCHESTRATOR = ("orchestrator-pat-5c1d", "ado-agent-orchestrator")
KEDA = ("keda-pat-7e2a", "keda-azure-pipelines-scaler")
KEDA_REAL = ("keda-real-pat-3b9f", "keda-scaler-real")
INTERVAL, IDLE_INTERVAL = 2.0, 30.0
_POOL_IN_PATH = re.compile(r"/pools/(\d+)(?:/|$)")


def world(
    pools: int, seconds: float, *, interval: float = INTERVAL, idle_interval: float = IDLE_INTERVAL
) -> dict[str, Any]:
    """`pools` pools with 1, 2, 3, 4, 1, ... templates; every fifth pool stays idle, the others get a
    job every few seconds spread over their templates."""
    documents, arrivals = [], []
    for index in range(pools):
        name = f"pool{index:02d}"
        templates = index % 4 + 1
        documents.append(pool_document(name, templates=templates, max_agents=4, idleTimeout=5))
        if index % 5 == 4:
            continue
        every = 6.0 + index % 7
        for template in range(templates):
            arrivals.append(
                {
                    "at": 0.5 + (index * 0.37 + template * 1.3) % every,
                    "pool": name,
                    "count": max(1, int(seconds / (every * templates))),
                    "every": every * templates,
                    "demands": [f"cap-{name}-t{template}"],
                    "duration": [1, 3],
                }
            )
    return {
        "name": "api-cost",
        "timeout": seconds + 120,
        "reconciler": {"loopFor": 0, "interval": interval, "idleInterval": idle_interval, "sweepInterval": 300},
        "pools": documents,
        "arrivals": arrivals,
    }


def _pass_spans(
    summaries: list[dict[str, Any]], window_start: float, window_end: float
) -> list[tuple[dict[str, Any], float, float]]:
    """(summary, start, end) of every pass that ran wholly inside the window."""
    spans = []
    for summary in summaries:
        end = parse_time(summary.get("time"))
        if end is None:
            continue
        start = end - float(summary.get("seconds", 0.0))
        if start >= window_start and end < window_end:
            spans.append((summary, start, end))
    return spans


def _in_spans(moment: float, spans: list[tuple[dict[str, Any], float, float]], slack: float = 0.05) -> bool:
    # The server logs a call a few milliseconds after the client started it and before the client's
    # pass ends; the slack covers clock reads on either side.
    return any(start - slack <= moment <= end + slack for _, start, end in spans)


def _pool_id(path: str) -> int | None:
    match = _POOL_IN_PATH.search(path)
    return int(match.group(1)) if match else None


def _start_real_keda(stack: contextlib.ExitStack[Any], sim: Simulation) -> list[dict[str, Any]] | None:
    """Start KEDA's own scalers (one per template) and wait for their first poll, so the window
    holds their steady state, not the pool lookups of their construction. None when not built."""
    if not keda_real.available():
        return None
    sim.azdo.add_pat(KEDA_REAL[0], scopes=(SCOPE_READ,), identity=KEDA_REAL[1])
    templates: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for (pool, template), capabilities in sim.capabilities.items():
        templates[pool][template] = capabilities
    polls = stack.enter_context(
        keda_real.keda_scalers(
            organization=sim.organization_url,
            pat=KEDA_REAL[0],
            jobs=keda_real.scaled_jobs(templates),
            polling_interval=KEDA_POLLING_INTERVAL,
        )
    )
    if not wait_until(lambda: bool(polls), timeout=120, poll=0.1):
        raise RuntimeError("KEDA's scalers made no poll within 120 s")
    return polls


def _real_keda_figures(
    polls: list[dict[str, Any]], calls: list[Any], pools: int, scaled_jobs: int, window: tuple[float, float]
) -> dict[str, Any]:
    """What the real scalers did in the window: polls, calls per poll, jobrequests calls per pool per cycle."""
    in_window = [p for p in polls if window[0] <= (parse_time(p.get("time")) or 0) < window[1]]
    jobrequests = sum(1 for c in calls if c.short == "pools/{poolId}/jobrequests")
    cycles = (window[1] - window[0]) / KEDA_POLLING_INTERVAL
    return {
        "scaled_jobs": scaled_jobs,
        "window_cycles": round(cycles, 2),
        "polls": len(in_window),
        "poll_errors": sum(1 for p in in_window if p.get("error")),
        "calls_per_poll": round(len(calls) / max(1, len(in_window)), 3),
        "calls_per_pool_per_cycle": round(jobrequests / pools / cycles, 2),
        "desired_jobs_max": max((int(p.get("desired", 0)) for p in in_window), default=0),
        "polling_interval": KEDA_POLLING_INTERVAL,
    }


def run(size: str) -> dict[str, Any]:
    """Serve one world with all three for the same window; report calls per pass, per pool, per minute."""
    check_size(size)
    started = time.monotonic()
    outcome = Outcome(name="api_cost", size=size)
    # The tiny run shortens the idle interval so that its short window still sees several passes.
    pools, seconds, interval, idle_interval = (
        (4, 8.0, 1.0, 4.0) if size == "tiny" else (50, 60.0, INTERVAL, IDLE_INTERVAL)
    )
    document = world(pools, seconds, interval=interval, idle_interval=idle_interval)
    template_counts = {p["name"]: len(p["templates"]) for p in document["pools"]}
    cost = RateLimit()
    with (
        tempfile.TemporaryDirectory(prefix="azp-bench-api-") as temporary,
        simulation(document, Path(temporary)) as sim,
        contextlib.ExitStack() as real_keda,
    ):
        for token, identity in (ORCHESTRATOR, KEDA):
            sim.azdo.add_pat(token, scopes=(SCOPE_READ,), identity=identity)
        run_ = ReconcilerRun(
            reconcile_command(
                sim,
                "--loop-for",
                str(int(seconds + 90)),
                "--interval",
                str(interval),
                "--idle-interval",
                str(idle_interval),
            )
        )
        if not wait_until(sim.installed, timeout=90, poll=0.05):
            run_.wait(1)
            raise RuntimeError(f"the first pass did not register the placeholders: {run_.errors[-5:]}")
        real_keda_polls = _start_real_keda(real_keda, sim)
        window_start = time.time()
        stop = threading.Event()
        policy_pools = [PolicyPool(name, template_counts[name]) for name in template_counts]
        cycles: dict[str, int] = {}
        threads = [
            threading.Thread(
                target=lambda: cycles.__setitem__(
                    "orchestrator",
                    orchestrator_policy(
                        organization=sim.organization_url, pat=ORCHESTRATOR[0], pools=policy_pools, stop=stop
                    ),
                ),
                daemon=True,
            ),
            threading.Thread(
                target=lambda: cycles.__setitem__(
                    "keda",
                    keda_policy(
                        organization=sim.organization_url,
                        pat=KEDA[0],
                        pools=policy_pools,
                        pool_ids=sim.pool_ids,
                        stop=stop,
                    ),
                ),
                daemon=True,
            ),
        ]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        window_end = time.time()
        stop.set()
        real_keda.close()
        run_.process.terminate()
        run_.wait(60)
        for thread in threads:
            thread.join(timeout=30)
        calls = [c for c in sim.azdo.calls() if window_start <= c.time < window_end]
        kube_calls = [c for c in sim.kube.calls() if window_start <= c.time < window_end]
        pool_names = {pool_id: name for name, pool_id in sim.pool_ids.items()}
        served = sum(1 for p in sim.pool_ids.values() for r in sim.azdo.requests(p) if r.get("result") == "succeeded")
        finished_in_window = sum(
            1
            for p in sim.pool_ids.values()
            for r in sim.azdo.requests(p)
            if r.get("result") and window_start <= (parse_time(r.get("finishTime")) or 0) < window_end
        )
    minutes = (window_end - window_start) / 60
    # A pass is counted when it ran wholly inside the window; a call belongs to the pass whose span
    # (its summary's time minus its seconds, to that time) holds it. Lease renewals come between
    # passes, on their own clock, so they are reported per minute, not per pass.
    spans = _pass_spans(run_.summaries, window_start, window_end)
    steady = [summary for summary, _, _ in spans]
    by_identity: dict[str, list[Any]] = defaultdict(list)
    for call in calls:
        by_identity[call.identity or "?"].append(call)
    ours_all = by_identity[AZP_IDENTITY]
    ours = [c for c in ours_all if _in_spans(c.time, spans)]
    kube_lease = sum(1 for c in kube_calls if c.key.endswith("leases"))
    kube_calls = [c for c in kube_calls if _in_spans(c.time, spans)]
    jobrequest_calls = [c for c in ours if c.short == "pools/{poolId}/jobrequests"]
    observed_pools = max(1, len(jobrequest_calls))
    per_pool_per_pass = len(ours) / observed_pools
    # Reads are the observation the peer policies reproduce; writes are actions (prune, placeholders).
    reads_per_pool_per_pass = sum(1 for c in ours if c.method == "GET") / observed_pools
    per_group: dict[int, Counter[str]] = defaultdict(Counter)
    for call in ours:
        pool_id = _pool_id(call.path)
        if pool_id is None or pool_id not in pool_names:
            continue
        group = template_counts[pool_names[pool_id]]
        per_group[group]["calls"] += 1
        per_group[group]["reads"] += call.method == "GET"
        if call.short == "pools/{poolId}/jobrequests":
            per_group[group]["passes"] += 1
    by_templates = {
        str(group): round(counts["calls"] / max(1, counts["passes"]), 3) for group, counts in sorted(per_group.items())
    }
    reads_by_templates = {
        str(group): round(counts["reads"] / max(1, counts["passes"]), 3) for group, counts in sorted(per_group.items())
    }
    passes = max(1, len(steady))

    def bill(identity: str) -> dict[str, Any]:
        made = ours_all if identity == AZP_IDENTITY else by_identity[identity]
        tstu = sum(cost.cost(c.method, c.short) for c in made)
        return {
            "calls": len(made),
            "calls_per_pool_per_minute": round(len(made) / pools / minutes, 2),
            "tstu_per_5_minutes": round(tstu * 5 / minutes, 1),
            "routes": dict(Counter(f"{c.method} {c.short}" for c in made)),
        }

    orchestrator_bill, keda_bill, azp_bill = bill(ORCHESTRATOR[1]), bill(KEDA[1]), bill(AZP_IDENTITY)
    keda_real_bill = None
    if real_keda_polls is not None:
        keda_real_bill = bill(KEDA_REAL[1])
        keda_real_bill.update(
            _real_keda_figures(
                real_keda_polls,
                by_identity[KEDA_REAL[1]],
                pools,
                sum(template_counts.values()),
                (window_start, window_end),
            )
        )
    orchestrator_cycles = max(1, cycles.get("orchestrator", 0))
    orchestrator_per_pool_cycle = orchestrator_bill["calls"] / pools / orchestrator_cycles
    keda_per_pool_cycle = sum(template_counts.values()) / pools
    kube_lists = sum(1 for c in kube_calls if c.key.endswith("(list)"))
    kube_other = len(kube_calls) - kube_lists
    actions = sum(
        int(s.get(k, 0)) for s in steady for k in ("created", "existing", "deleted", "pruned", "drained", "stuck")
    )
    azp_bill.update(
        {
            "passes": len(steady),
            "calls_per_pass": round(len(ours) / passes, 2),
            "pools_observed_per_pass": round(observed_pools / passes, 2),
            "calls_per_observed_pool_per_pass": round(per_pool_per_pass, 3),
            "calls_per_pool_per_pass_by_templates": by_templates,
            "reads_per_observed_pool_per_pass": round(reads_per_pool_per_pass, 3),
            "reads_per_pool_per_pass_by_templates": reads_by_templates,
            "kube_calls_per_pass": round(len(kube_calls) / passes, 2),
            "kube_list_calls_per_pass": round(kube_lists / passes, 2),
            "kube_lease_calls_per_minute": round(kube_lease / minutes, 2),
            "kube_other_calls": kube_other,
            "kube_routes": dict(Counter(c.key for c in kube_calls)),
            "actions": actions,
        }
    )
    orchestrator_bill.update(
        {"cycles": orchestrator_cycles, "calls_per_pool_per_cycle": round(orchestrator_per_pool_cycle, 2)}
    )
    keda_bill.update(
        {"calls_per_pool_per_cycle": round(keda_per_pool_cycle, 2), "polling_interval": KEDA_POLLING_INTERVAL}
    )
    outcome.figures = {
        "pools": pools,
        "templates_per_pool": dict(Counter(str(v) for v in template_counts.values())),
        "window_seconds": round(minutes * 60, 1),
        "jobs_served": served,
        "azp_agents": azp_bill,
        "orchestrator": orchestrator_bill,
        "keda": keda_bill,
        "keda_real": keda_real_bill,
        "lower_bound_calls_per_pool_per_pass": 1.0,
        "settings": {
            "interval": interval,
            "idle_interval": idle_interval,
            "orchestrator_polling_delay": ORCHESTRATOR_POLLING_DELAY,
        },
    }
    outcome.check(
        "AzDO calls per pool per pass (steady)",
        target="<= 1.1 (full observation 2, lower bound 1)",
        value=f"{per_pool_per_pass:.3f} over {len(steady)} passes",
        met=per_pool_per_pass <= 1.1,
    )
    writes = len(ours) - sum(1 for c in ours if c.method == "GET")
    deregistered = sum(1 for c in ours_all if c.method == "DELETE")
    disabled = sum(1 for c in ours_all if c.method == "PATCH" and c.short == "pools/{poolId}/agents/{agentId}")
    outcome.check(
        "  of which reads (observation)",
        target="<= 1.1",
        value=f"{reads_per_pool_per_pass:.3f}",
        met=reads_per_pool_per_pass <= 1.1,
    )
    outcome.check(
        "  of which writes (agents deregistered, disabled)",
        target="(informational)",
        value=f"{writes / observed_pools:.3f} ({deregistered} agents deregistered and {disabled} disabled in the "
        f"window, {finished_in_window} jobs finished)",
        met=None,
    )
    spread_by_templates = max(reads_by_templates.values(), default=0) - min(reads_by_templates.values(), default=0)
    outcome.check(
        "reads per pool per pass, by templates",
        target="independent of templates",
        value=", ".join(f"{k}t: {v}" for k, v in reads_by_templates.items()),
        met=spread_by_templates <= 0.1,
    )
    ratio_orchestrator = orchestrator_per_pool_cycle / max(reads_per_pool_per_pass, 1e-9)
    outcome.check(
        "vs orchestrator, reads per pool per cycle",
        target=">= 3x fewer",
        value=f"{orchestrator_per_pool_cycle:.2f} vs {reads_per_pool_per_pass:.2f} = {ratio_orchestrator:.2f}x",
        met=ratio_orchestrator >= 3.0,
    )
    same_world = orchestrator_bill["calls_per_pool_per_minute"] / max(azp_bill["calls_per_pool_per_minute"], 1e-9)
    outcome.check(
        "vs orchestrator, all calls on the same world",
        target=">= 3x fewer",
        value=f"{orchestrator_bill['calls_per_pool_per_minute']} vs {azp_bill['calls_per_pool_per_minute']} "
        f"per pool per minute = {same_world:.2f}x",
        met=same_world >= 3.0,
    )
    keda_ratios = {k: int(k) / v for k, v in reads_by_templates.items() if v}
    outcome.check(
        "vs KEDA, reads per pool per cycle",
        target=">= template count x fewer",
        value=", ".join(f"{k}t: {r:.2f}x" for k, r in keda_ratios.items()),
        met=all(r >= int(k) for k, r in keda_ratios.items()),
    )
    outcome.check(
        "AzDO calls per pool per minute",
        target="(informational)",
        value=f"azp {azp_bill['calls_per_pool_per_minute']}, orchestrator "
        f"{orchestrator_bill['calls_per_pool_per_minute']}, KEDA {keda_bill['calls_per_pool_per_minute']}"
        + (f", KEDA scaler (real) {keda_real_bill['calls_per_pool_per_minute']}" if keda_real_bill else ""),
        met=None,
    )
    _check_real_keda(outcome, keda_real_bill, keda_bill)
    outcome.check(
        "TSTU-style cost per 5 min (limit 200)",
        target="(informational)",
        value=f"azp {azp_bill['tstu_per_5_minutes']}, orchestrator {orchestrator_bill['tstu_per_5_minutes']}, "
        f"KEDA {keda_bill['tstu_per_5_minutes']}",
        met=None,
    )
    lists_per_pass = kube_lists / passes
    outcome.check(
        "Kubernetes calls per pass",
        target="2 lists per namespace + 1 write per action",
        value=f"{lists_per_pass:.2f} lists/pass, {kube_other} writes for {actions} actions, "
        f"{kube_lease / minutes:.2f} lease calls/min",
        met=lists_per_pass <= 2.0 and kube_other <= actions,
    )
    outcome.notes.append(
        f"api_cost: {pools} pools, {seconds:.0f} s window; "
        f"azp-agents interval {interval:g} s / idle {idle_interval:g} s, "
        f"orchestrator POLLING_DELAY {ORCHESTRATOR_POLLING_DELAY:g} s, KEDA pollingInterval {KEDA_POLLING_INTERVAL:g} s"
    )
    outcome.seconds = time.monotonic() - started
    return outcome.as_dict()


def _check_real_keda(outcome: Outcome, real: dict[str, Any] | None, reimplemented: dict[str, Any]) -> None:
    """The rows of KEDA's own scaler: one call per poll, and the re-implemented policy's bill matched."""
    if real is None:
        outcome.notes.append(f"KEDA scaler (real): not run; build it with {keda_real.BUILD_SCRIPT}")
        return
    outcome.check(
        "KEDA scaler (real), AzDO calls per poll",
        target="1 (one jobrequests GET)",
        value=f"{real['calls_per_poll']} over {real['polls']} polls of {real['scaled_jobs']} ScaledJobs "
        f"({real['poll_errors']} errors)",
        met=abs(real["calls_per_poll"] - 1) <= 0.05 and real["poll_errors"] == 0,
    )
    ratio = real["calls_per_pool_per_minute"] / max(reimplemented["calls_per_pool_per_minute"], 1e-9)
    # A window shorter than two polling intervals sees a fraction of the staggered polls: no verdict.
    outcome.check(
        "KEDA scaler (real) vs re-implemented, calls per pool per minute",
        target="within 10% (over >= 2 polling intervals)",
        value=f"{real['calls_per_pool_per_minute']} vs {reimplemented['calls_per_pool_per_minute']} "
        f"({real['calls_per_pool_per_cycle']} vs {reimplemented['calls_per_pool_per_cycle']} per pool per cycle, "
        f"{real['window_cycles']} intervals)",
        met=abs(ratio - 1) <= 0.1 if real["window_cycles"] >= 2 else None,
    )
