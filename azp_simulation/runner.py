"""`azp-reconciler simulate` and `azp-reconciler emulate`.

simulate: start both emulators from a scenario, run the real reconciler (`python -m reconciler
reconcile`, a separate process talking HTTP, as a CronJob run would) back to back until every job
is served and every leftover is cleaned up, show progress, and print a summary table.
emulate: serve both emulators until interrupted, with the files needed to point anything at them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from azp_simulation.world import PAT, Simulation, auth_method, load_world, scenario_path


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Summary:
    """Everything the simulation prints at the end, also written as JSON for tests and benchmarks."""

    scenario: str
    seed: int
    auth: str = "pat"
    seconds: float = 0.0
    jobs: int = 0
    served: int = 0
    canceled: int = 0
    failed: int = 0
    aborted_by_agent_loss: int = 0
    unserved: int = 0
    latency: dict[str, float] = field(default_factory=dict)
    peak_agents: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    passes: int = 0
    azdo_calls: int = 0
    azdo_calls_per_pass: dict[str, float] = field(default_factory=dict)
    kube_calls_per_pass: dict[str, float] = field(default_factory=dict)
    arm_calls_per_pass: dict[str, float] = field(default_factory=dict)
    """Azure Resource Manager (and Entra token) requests per pass on `backend: aci`."""
    created: int = 0
    pruned: int = 0
    drained: int = 0
    stuck: int = 0
    unroutable: int = 0
    reconciler_failures: int = 0
    leftovers: dict[str, int] = field(default_factory=dict)
    reconciler_cpu_seconds: float = 0.0
    kube_foreign_writes: int = 0

    @property
    def ok(self) -> bool:
        return self.unserved == 0 and self.aborted_by_agent_loss == 0 and self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"ok": self.ok}


class ReconcilerProcess:
    """One run of the real reconciler in its own process; reads its JSON log for pass summaries."""

    def __init__(self, simulation: Simulation, *, loop_for: float, progress: TextIO | None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(simulation.reconciler_env())
        command = [
            sys.executable,
            "-m",
            "reconciler",
            "reconcile",
            "--config",
            str(simulation.config_path),
            "--kubeconfig",
            str(simulation.kubeconfig_path),
            "--log-format",
            "json",
            "--loop-for",
            str(loop_for),
        ]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.summaries: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.progress = progress
        self.cpu_seconds = 0.0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            try:
                entry = json.loads(line)
            except ValueError:
                if self.progress:
                    self.progress.write(f"  reconciler: {line}")
                continue
            if entry.get("message") == "pass summary":
                self.summaries.append(entry)
                if self.progress:
                    self.progress.write(
                        f"  pass {entry['pass']:>3}: queued {entry['queued']:>3}  running {entry['running']:>3}  "
                        f"created {entry['created']:>2}  pruned {entry['pruned']:>2}  drained {entry['drained']:>2}  "
                        f"stuck {entry['stuck']}  failed {entry['failed']}  "
                        f"calls {entry['azdo_calls']}+{entry['kube_calls']}\n"
                    )
                    self.progress.flush()
            elif entry.get("level") in ("error", "warning") and self.progress:
                self.progress.write(f"  {entry['level']}: {entry.get('message')}\n")

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """Ask the run to finish its pass and exit (SIGTERM, as Kubernetes does)."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        self.cpu_seconds = sum(float(s.get("cpu_seconds", 0)) for s in self.summaries)
        return code


@contextmanager
def _directory(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="azp-sim-") as temporary:
        yield Path(temporary)


def _done(simulation: Simulation) -> bool:
    if not simulation.all_queued() or simulation.unfinished_requests():
        return False
    leftovers = simulation.leftovers()
    return leftovers["offline_agents"] == 0 and leftovers["online_agents"] == 0 and leftovers["active_jobs"] == 0


def run_simulation(
    scenario: str,
    *,
    seed: int = 1,
    progress: TextIO | None = None,
    directory: Path | None = None,
    backend: str | None = None,
    auth: str | None = None,
    observe: Callable[[Simulation], None] | None = None,
) -> Summary:
    """Run a scenario to its end (or its timeout) and return the measured summary; `backend` overrides the
    world file's (kubernetes or aci), `auth` its auth.method; `observe` is called with the running simulation
    every 0.2 s and once at the end."""
    world = load_world(scenario_path(scenario))
    if backend is not None:
        world = replace(world, backend=backend)
    if auth is not None:
        world = replace(world, auth_method=auth_method(auth, "--auth"))
    summary = Summary(scenario=world.name, seed=seed, auth=world.auth_method, jobs=world.total_jobs)
    loop_for = float(world.reconciler.get("loopFor", 30))
    with _directory(directory) as workdir:
        simulation = Simulation(world, directory=workdir, seed=seed)
        simulation.start()
        started = time.monotonic()
        runs: list[ReconcilerProcess] = []
        try:
            if progress:
                progress.write(f"scenario {world.name}: {world.description}\n")
                progress.write(
                    f"  Azure DevOps emulator {simulation.organization_url}, "
                    f"Kubernetes emulator {simulation.kube_url}\n"
                )
            while time.monotonic() - started < world.timeout:
                run = ReconcilerProcess(simulation, loop_for=loop_for, progress=progress)
                runs.append(run)
                while run.running() and time.monotonic() - started < world.timeout:
                    if _done(simulation) and len(run.summaries) >= 1:
                        break
                    if observe is not None:
                        observe(simulation)
                    time.sleep(0.2)
                run.stop()
                if _done(simulation):
                    break
        finally:
            if observe is not None:
                observe(simulation)
            summary.seconds = round(time.monotonic() - started, 1)
            _fill(summary, simulation, runs)
            simulation.stop()
    return summary


def _fill(summary: Summary, simulation: Simulation, runs: list[ReconcilerProcess]) -> None:
    azdo = simulation.azdo
    latencies: list[float] = []
    for pool_id in simulation.pool_ids.values():
        for request in azdo.requests(pool_id):
            result = request.get("result")
            queued, assigned = _time(request.get("queueTime")), _time(request.get("assignTime"))
            if queued and assigned:
                latencies.append((assigned - queued).total_seconds())
            if result == "succeeded":
                summary.served += 1
            elif result == "canceled":
                summary.canceled += 1
            elif result is not None:
                summary.failed += 1
            else:
                summary.unserved += 1
    summary.unserved += max(0, summary.jobs - (summary.served + summary.canceled + summary.failed + summary.unserved))
    summary.aborted_by_agent_loss = azdo.stats.jobs_aborted_by_agent_loss
    summary.latency = {
        "p50": round(percentile(latencies, 0.50), 2),
        "p95": round(percentile(latencies, 0.95), 2),
        "max": round(max(latencies, default=0.0), 2),
    }
    summary.peak_agents = dict(simulation.metrics.peak_agents)
    summary.runs = len(runs)
    all_summaries = [s for run in runs for s in run.summaries]
    summary.passes = len(all_summaries)
    summary.azdo_calls = sum(azdo.call_counts().values())
    passes = max(1, summary.passes)
    summary.azdo_calls_per_pass = {
        route: round(count / passes, 2) for route, count in sorted(azdo.call_counts().items())
    }
    summary.kube_calls_per_pass = {
        route: round(count / passes, 2) for route, count in sorted(simulation.kube.call_counts().items())
    }
    if simulation.arm is not None:
        summary.arm_calls_per_pass = {
            route: round(count / passes, 2) for route, count in sorted(simulation.arm.call_counts().items())
        }
    totals: Counter[str] = Counter()
    for entry in all_summaries:
        for key in ("created", "pruned", "drained", "stuck", "unroutable", "failed"):
            totals[key] += int(entry.get(key, 0))
    summary.created, summary.pruned, summary.drained = totals["created"], totals["pruned"], totals["drained"]
    summary.stuck, summary.unroutable, summary.reconciler_failures = (
        totals["stuck"],
        totals["unroutable"],
        totals["failed"],
    )
    summary.leftovers = simulation.leftovers()
    summary.reconciler_cpu_seconds = round(sum(run.cpu_seconds for run in runs), 3)
    summary.kube_foreign_writes = int(getattr(simulation.kube, "touched_foreign", 0))


def print_summary(summary: Summary, stream: TextIO) -> None:
    """The summary table a person reads at the end of `simulate`."""
    rows = [
        (
            "scenario",
            f"{summary.scenario} (seed {summary.seed}, auth {summary.auth}), {summary.seconds}s, "
            f"{summary.runs} reconciler runs, "
            f"{summary.passes} passes",
        ),
        (
            "jobs",
            f"{summary.jobs}: served {summary.served}, canceled {summary.canceled}, failed {summary.failed}, "
            f"unserved {summary.unserved}",
        ),
        ("jobs aborted by agent loss", str(summary.aborted_by_agent_loss)),
        (
            "queue -> agent online",
            f"p50 {summary.latency.get('p50', 0)}s  p95 {summary.latency.get('p95', 0)}s  "
            f"max {summary.latency.get('max', 0)}s",
        ),
        ("Azure DevOps calls", str(summary.azdo_calls)),
        ("peak agents per pool", ", ".join(f"{k} {v}" for k, v in summary.peak_agents.items())),
        ("Jobs created", str(summary.created)),
        ("agents pruned / drained", f"{summary.pruned} / {summary.drained}"),
        ("stuck Jobs removed", str(summary.stuck)),
        ("unroutable reports", str(summary.unroutable)),
        ("leftovers of ours", ", ".join(f"{k} {v}" for k, v in summary.leftovers.items())),
        ("reconciler CPU", f"{summary.reconciler_cpu_seconds}s over {summary.passes} passes"),
    ]
    width = max(len(k) for k, _ in rows)
    stream.write("\nSummary\n")
    for key, value in rows:
        stream.write(f"  {key.ljust(width)}  {value}\n")
    stream.write("  Azure DevOps calls per pass by route:\n")
    for route, per_pass in summary.azdo_calls_per_pass.items():
        stream.write(f"    {route.ljust(48)} {per_pass:>7}\n")
    stream.write("  Kubernetes calls per pass by route:\n")
    for route, per_pass in summary.kube_calls_per_pass.items():
        stream.write(f"    {route.ljust(48)} {per_pass:>7}\n")
    if summary.arm_calls_per_pass:
        stream.write("  Azure Resource Manager calls per pass by route:\n")
        for route, per_pass in summary.arm_calls_per_pass.items():
            stream.write(f"    {route.ljust(48)} {per_pass:>7}\n")
    verdict = "every job served" if summary.ok else "NOT every job was served"
    stream.write(f"  result: {verdict}\n")
    stream.flush()


def simulate(
    scenario: str,
    *,
    seed: int,
    quiet: bool,
    json_out: Path | None,
    backend: str | None = None,
    auth: str | None = None,
) -> int:
    """The `simulate` command: exit 0 when every job was served and none was killed."""
    summary = run_simulation(scenario, seed=seed, progress=None if quiet else sys.stdout, backend=backend, auth=auth)
    print_summary(summary, sys.stdout)
    if json_out is not None:
        json_out.write_text(json.dumps(summary.as_dict(), indent=2))
    return 0 if summary.ok else 1


def emulate(world_name: str, *, azdo_port: int, kube_port: int, directory: Path | None) -> int:
    """The `emulate` command: serve both emulators until Ctrl-C."""
    world = load_world(scenario_path(world_name))
    with _directory(directory) as workdir:
        simulation = Simulation(world, directory=workdir)
        simulation.start(azdo_port=azdo_port, kube_port=kube_port)
        print(f"Azure DevOps organization: {simulation.organization_url}")
        print(f"PAT:                       {PAT}")
        print(f"Kubernetes API:            {simulation.kube_url}")
        print(f"kubeconfig:                {simulation.kubeconfig_path}")
        print(f"reconciler config:         {simulation.config_path}")
        print(
            f"try: azp-reconciler reconcile --config {simulation.config_path} --kubeconfig {simulation.kubeconfig_path}"
        )
        print("press Ctrl-C to stop", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            simulation.stop()
    return 0
