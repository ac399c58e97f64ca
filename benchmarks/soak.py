"""Soak: a long random scenario against both emulators, with the invariants checked after every pass.

`make soak` runs `python -m benchmarks.soak`: first the property tests of tests/reliability with
AZP_HYPOTHESIS_EXAMPLES examples (5000 there), then 1,000+ in-process passes of one long-lived
Reconciler (the same object a CronJob run with --loop-for drives) over a random world: jobs arriving
on three pools, cancellations, pods whose agent never registers, agents killed mid-job, and faults
injected on random Azure DevOps and Kubernetes calls. It prints passes, jobs served, faults injected,
invariant violations (must be 0), leftovers after the queue empties, RSS at start and end, and the
growth of the Python heap over a window of 200 passes by owner (reconciler, emulators, other), and
exits 1 if anything is wrong; AZP_SOAK_JSON=FILE also writes the figures as JSON. It stops by itself:
AZP_SOAK_PASSES passes (default 1200) or AZP_SOAK_SECONDS seconds (default 480), whichever comes first,
then at most 60 s to settle.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from azp_simulation.world import Simulation, load_world
from reconciler import logs
from reconciler.config import load, read_credentials
from reconciler.errors import ReconcilerError
from reconciler.reconcile import Reconciler

REPO = Path(__file__).resolve().parents[1]
RELIABILITY = REPO / "tests" / "reliability"
PASSES = int(os.environ.get("AZP_SOAK_PASSES", "1200"))
SECONDS = float(os.environ.get("AZP_SOAK_SECONDS", "480"))
SEED = int(os.environ.get("AZP_SOAK_SEED", "7"))
INTERVAL = 0.05
SETTLE_SECONDS = 60.0
RSS_GROWTH_LIMIT_MB = 40.0
RECONCILER_HEAP_LIMIT_MB = 2.0
TRACE_DEPTH = 8
TRACE_PASSES = 200

WORLD: dict[str, Any] = {
    "name": "soak",
    "timeout": 900,
    "reconciler": {"loopFor": 0, "interval": INTERVAL, "idleInterval": INTERVAL, "sweepInterval": 10},
    "pools": [
        {
            "name": "linux",
            "maxAgents": 6,
            "provisioningTimeout": 4,
            "idleTimeout": 2,
            "templates": [
                {"name": "docker", "capabilities": {"docker": "", "Agent.OS": "Linux"}},
                {"name": "java", "capabilities": {"java": "17", "Agent.OS": "Linux"}},
            ],
        },
        {
            "name": "Windows Builds",
            "maxAgents": 3,
            "minIdle": 1,
            "provisioningTimeout": 4,
            "idleTimeout": 2,
            "templates": [{"name": "windows", "capabilities": {"Agent.OS": "Windows_NT"}}],
        },
        {
            "name": "gpu ✓",
            "maxAgents": 2,
            "provisioningTimeout": 4,
            "idleTimeout": 2,
            "templates": [{"name": "cuda", "capabilities": {"cuda": "12"}}],
        },
    ],
    "agents": [{"pool": "linux", "name": "build-server-01", "status": "offline"}],
    "stuck_pods": [{"pool": "linux", "nth": n} for n in (7, 41, 90)] + [{"pool": "gpu ✓", "nth": 5}],
}
DEMANDS: dict[str, list[tuple[str, ...]]] = {
    "linux": [("docker",), ("java -equals 17",), ()],
    "Windows Builds": [("Agent.OS -equals Windows_NT",)],
    "gpu ✓": [("cuda",)],
}
# Faults that retries absorb, on any call; and longer ones on reads only, which fail a pass or a pool's
# read but never leave an action half done (see tests/reliability/test_fault_matrix.py for the rest).
AZDO_ROUTES = [
    ("GET", "pools/{poolId}/jobrequests"),
    ("GET", "pools/{poolId}/agents"),
    ("POST", "pools/{poolId}/agents"),
    ("DELETE", "pools/{poolId}/agents/{agentId}"),
    ("PATCH", "pools/{poolId}/agents/{agentId}"),
]
KUBE_ROUTES = [("GET", "jobs(list)"), ("GET", "pods(list)"), ("POST", "jobs"), ("DELETE", "jobs"), ("POST", "events")]
KINDS: list[dict[str, Any]] = [
    {"kind": "status", "status": 429, "retry_after": 0.2},
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 503},
    {"kind": "reset"},
    {"kind": "truncated"},
]


def rss_mb() -> float:
    """Resident set size of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def heap_snapshot() -> tracemalloc.Snapshot:
    """The live heap: cyclic garbage is collected first (each json.loads with an object_hook leaves a
    decoder/scanner cycle behind until the collector runs), so it is not mistaken for growth."""
    gc.collect()
    return tracemalloc.take_snapshot()


def heap_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> dict[str, float]:
    """Python heap growth between two snapshots, MiB, by who allocated it: the reconciler (a frame in
    reconciler/ outside azp_simulation/), the emulators and simulated world (a frame there or in this
    file), or neither (interpreter, libraries)."""
    growth: Counter[str] = Counter()
    for stat in after.compare_to(before, "traceback"):
        files = [frame.filename for frame in stat.traceback]
        if any("/azp_simulation/" in f or f.endswith("soak.py") for f in files):
            owner = "emulators and world"
        elif any("/reconciler/" in f for f in files):
            owner = "reconciler"
        else:
            owner = "other"
        growth[owner] += stat.size_diff
    return {key: round(growth[key] / 2**20, 2) for key in ("reconciler", "emulators and world", "other")}


def run_properties() -> dict[str, Any]:
    """The hypothesis property tests with AZP_HYPOTHESIS_EXAMPLES examples, as a child pytest."""
    examples = os.environ.get("AZP_HYPOTHESIS_EXAMPLES", "500")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(RELIABILITY / "test_properties.py"), "-q", "-s", "-p", "no:cacheprovider"],
        cwd=REPO,
        env={**os.environ, "AZP_HYPOTHESIS_EXAMPLES": examples},
        capture_output=True,
        text=True,
        timeout=600,
    )
    figures = next((line for line in done.stdout.splitlines() if line.startswith("hypothesis:")), "")
    return {
        "examples": int(examples),
        "ok": done.returncode == 0,
        "seconds": round(time.monotonic() - started, 1),
        "figures": figures,
        "tail": "" if done.returncode == 0 else done.stdout[-2000:],
    }


class Soak:
    """One simulation, one long-lived Reconciler, and the random events between its passes."""

    def __init__(self, directory: Path, *, seed: int) -> None:
        self.rng = random.Random(seed)
        path = directory / "world.yaml"
        path.write_text(yaml.safe_dump(WORLD, sort_keys=False, allow_unicode=True))
        self.simulation = Simulation(load_world(path), directory=directory / "run", seed=seed)
        self.simulation.kube.start_delay = 0.05
        self.simulation.start()
        self.invariants = importlib.import_module("invariants")
        config, document = load(self.simulation.config_path)
        self.config = config
        self.max_agents = {p.name: p.max_agents for p in config.pools}
        self.min_idle = {p.name: p.min_idle + sum(t.min_idle for t in p.templates) for p in config.pools}
        credentials = read_credentials(document)
        logs.SECRETS.add(credentials.pat)
        self.reconciler = Reconciler(config, credentials, kubeconfig=str(self.simulation.kubeconfig_path))
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []
        self.environment_aborts = 0

    def close(self) -> None:
        with contextlib.suppress(ReconcilerError):
            self.reconciler.renew(release=True)
        self.reconciler.close()
        self.simulation.stop()

    def one_pass(self, number: int) -> None:
        try:
            report = self.reconciler.one_pass(number)
        except ReconcilerError as exc:
            self.counts["failed passes"] += 1
            self.counts[f"failed: {type(exc).__name__}"] += 1
        else:
            self.counts["created"] += report.outcome.counts["created"]
            self.counts["failed actions"] += report.failed
        if not self.reconciler.renew():
            self.counts["lease lost"] += 1
        self.counts["passes"] += 1
        found = self.invariants.violations(
            self.simulation, max_agents=self.max_agents, environment_aborts=self.environment_aborts
        )
        for violation in found:
            if violation not in self.violations:
                self.violations.append(violation)

    def events(self, *, arrivals: bool) -> None:
        """What happens in the world between two passes."""
        sim, rng = self.simulation, self.rng
        if arrivals and rng.random() < 0.35:
            pool = rng.choice(list(DEMANDS))
            sim.azdo.queue_request(
                sim.pool_ids[pool], demands=rng.choice(DEMANDS[pool]), duration=rng.uniform(0.2, 1.5)
            )
            self.counts["jobs queued"] += 1
        if rng.random() < 0.01:
            unfinished = [r for p in sim.pool_ids.values() for r in sim.azdo.requests(p, unfinished_only=True)]
            if unfinished:
                sim.azdo.cancel_request(rng.choice(unfinished)["requestId"])
                self.counts["cancelled"] += 1
        if rng.random() < 0.01:
            self.kill_an_agent()
        if rng.random() < 0.08:
            target, routes = (sim.azdo, AZDO_ROUTES) if rng.random() < 0.5 else (sim.kube, KUBE_ROUTES)
            method, route = rng.choice(routes)
            times = 1
            if method == "GET" and rng.random() < 0.3:
                times = 5  # more than the retries: the read fails for this pass
            target.inject_fault(method, route, times=times, **rng.choice(KINDS))
            self.counts["faults injected"] += times

    def kill_an_agent(self) -> None:
        """An agent pod dies (node lost): the agent goes offline, a job it ran fails, the pod fails."""
        sim = self.simulation
        running = [p for p in list(sim.processes.values()) if p.online and not p.exited]
        if not running:
            return
        process = self.rng.choice(running)
        if process.agent_id is None:
            return
        before = sim.azdo.stats.jobs_aborted_by_agent_loss
        sim.azdo.agent_lost(process.agent_id)
        # Jobs lost here are the environment's doing, not the reconciler's: the invariant discounts them.
        self.environment_aborts += sim.azdo.stats.jobs_aborted_by_agent_loss - before
        process.online, process.exited = False, True
        sim.kube.finish_pod(process.namespace, process.pod_name, exit_code=137)
        self.counts["agents killed"] += 1

    def failure_messages(self) -> Counter[str]:
        """Why failed requests failed (the service's message, shortened)."""
        azdo = self.simulation.azdo
        return Counter(
            str(r.get("statusMessage") or "no message")[:90]
            for p in self.simulation.pool_ids.values()
            for r in azdo.requests(p)
            if r.get("result") == "failed"
        )

    def results(self) -> Counter[str]:
        """Requests by result (succeeded, canceled, failed, or unfinished)."""
        azdo = self.simulation.azdo
        return Counter(
            str(r.get("result") or "unfinished") for p in self.simulation.pool_ids.values() for r in azdo.requests(p)
        )


def main() -> int:
    """Run the soak and print its figures; exit 1 on any violation, leftover, or memory growth."""
    logs.setup(fmt="text", level="critical")
    sys.path.insert(0, str(RELIABILITY))
    started = time.monotonic()
    properties = run_properties()
    print(f"property tests: {properties['figures'] or properties['tail']} ({properties['seconds']}s)")
    with tempfile.TemporaryDirectory(prefix="azp-soak-") as scratch:
        soak = Soak(Path(scratch), seed=SEED)
        try:
            soak_started = time.monotonic()
            reason = soak.reconciler.acquire()
            if reason is not None:
                raise SystemExit(f"soak: could not take the Lease: {reason}")
            number = 0
            rss_start = 0.0
            heap_start = tracemalloc.Snapshot((), 1)
            heap = {"reconciler": 0.0, "emulators and world": 0.0, "other": 0.0}
            while number < PASSES and time.monotonic() - soak_started < SECONDS:
                number += 1
                soak.one_pass(number)
                # After the pass: the first one registers the placeholders, before which jobs fail at once.
                soak.events(arrivals=True)
                if number % 50 == 0:
                    # The emulators log every call; that log is the test bench's, not the reconciler's memory.
                    soak.simulation.azdo.reset_calls()
                    soak.simulation.kube.reset_calls()
                if number == 50:
                    rss_start = rss_mb()  # after warm-up: imports, caches and the first Jobs
                    tracemalloc.start(TRACE_DEPTH)
                    heap_start = heap_snapshot()
                if number == 50 + TRACE_PASSES:
                    # Tracing every allocation slows passes down several times: trace a window only.
                    heap = heap_growth(heap_start, heap_snapshot())
                    tracemalloc.stop()
                time.sleep(INTERVAL)
            rss_end = rss_mb()
            if tracemalloc.is_tracing():
                heap = heap_growth(heap_start, heap_snapshot())
                tracemalloc.stop()
            soak.simulation.azdo.clear_faults()
            soak.simulation.kube.clear_faults()
            settle_started = time.monotonic()
            left = ["not settled"]
            while time.monotonic() - settle_started < SETTLE_SECONDS:
                number += 1
                soak.one_pass(number)
                left = soak.invariants.leftovers(soak.simulation, min_idle=soak.min_idle)
                if not left:
                    break
                time.sleep(0.1)
            figures = {
                "passes": soak.counts["passes"],
                "seconds": round(time.monotonic() - soak_started, 1),
                "jobs queued": soak.counts["jobs queued"],
                "jobs served": soak.results()["succeeded"],
                "jobs cancelled": soak.results()["canceled"],
                "jobs failed": soak.results()["failed"],
                "agents killed": soak.counts["agents killed"],
                "jobs lost with killed agents": soak.environment_aborts,
                "faults injected": soak.counts["faults injected"],
                "failed passes": soak.counts["failed passes"],
                "failed actions": soak.counts["failed actions"],
                "Jobs created": soak.counts["created"],
                "invariant violations": len(soak.violations),
                "leftovers after settling": len(left),
                "rss start MiB": round(rss_start, 1),
                "rss end MiB": round(rss_end, 1),
                "heap traced over passes": f"50-{min(number, 50 + TRACE_PASSES)}",
                "heap growth MiB, reconciler": heap["reconciler"],
                "heap growth MiB, emulators and world": heap["emulators and world"],
                "heap growth MiB, other": heap["other"],
                "property examples": properties["examples"],
            }
            failures = soak.failure_messages()
        finally:
            soak.close()
    width = max(len(k) for k in figures)
    print("soak:")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
    for violation in soak.violations:
        print(f"  VIOLATION: {violation}")
    for item in left:
        print(f"  LEFTOVER: {item}")
    for message, count in failures.most_common():
        print(f"  failed job ({count}x): {message}")
    if os.environ.get("AZP_SOAK_JSON"):
        Path(os.environ["AZP_SOAK_JSON"]).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    print(f"soak finished in {time.monotonic() - started:.0f}s")
    growth = figures["rss end MiB"] - figures["rss start MiB"]
    ok = properties["ok"] and not soak.violations and not left and growth <= RSS_GROWTH_LIMIT_MB
    ok = ok and figures["heap growth MiB, reconciler"] <= RECONCILER_HEAP_LIMIT_MB
    ok = ok and figures["passes"] >= min(PASSES, 1000)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
