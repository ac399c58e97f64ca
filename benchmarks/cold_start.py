"""Cold start: from spawning `python -m reconciler reconcile` to its first API call, which every CronJob
run pays, and where the import time goes (`python -X importtime`).

The first call is read from the emulators' call logs (Azure DevOps or Kubernetes, whichever came
first) and compared with the wall-clock time just before the process was spawned."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.harness import Outcome, check_size, pool_document, reconcile_command, reconciler_env, simulation

TARGET_SECONDS = 0.6


def _world() -> dict[str, Any]:
    return {
        "name": "cold-start",
        "timeout": 60,
        "reconciler": {"loopFor": 0, "interval": 1, "idleInterval": 30},
        "pools": [pool_document("linux", templates=1, max_agents=2)],
        "arrivals": [],
    }


def _first_call(sim: Any, after: float) -> float | None:
    stamps = [c.time for c in sim.azdo.calls() if c.time >= after] + [
        c.time for c in sim.kube.calls() if c.time >= after
    ]
    return min(stamps) if stamps else None


def parse_importtime(stderr: str) -> list[tuple[str, int, int]]:
    """(module, self µs, cumulative µs) for every line `python -X importtime` wrote."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        entries.append((fields[2].strip(), int(fields[0]), int(fields[1])))
    return entries


def import_breakdown(entries: list[tuple[str, int, int]], *, top: int = 10) -> list[dict[str, Any]]:
    """Import time by top-level package (each module's own time, so the rows add up to the total)."""
    by_package: dict[str, int] = defaultdict(int)
    modules: dict[str, int] = defaultdict(int)
    for module, own, _ in entries:
        package = module.split(".")[0]
        by_package[package] += own
        modules[package] += 1
    ranked = sorted(by_package.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"package": name, "ms": round(us / 1000, 1), "modules": modules[name]} for name, us in ranked]


def run(size: str) -> dict[str, Any]:
    """Spawn the reconciler a few times against idle emulators; median time to its first API call."""
    check_size(size)
    started = time.monotonic()
    outcome = Outcome(name="cold_start", size=size)
    repeats = 2 if size == "tiny" else 7
    with (
        tempfile.TemporaryDirectory(prefix="azp-bench-cold-") as temporary,
        simulation(_world(), Path(temporary)) as sim,
    ):
        firsts: list[float] = []
        totals: list[float] = []
        for _ in range(repeats):
            command = reconcile_command(sim, "--loop-for", "0")
            spawned = time.time()
            completed = subprocess.run(command, env=reconciler_env(), capture_output=True, text=True, timeout=60)
            ended = time.time()
            if completed.returncode not in (0, 1):
                raise RuntimeError(f"reconcile exited {completed.returncode}: {completed.stdout[-500:]}")
            first = _first_call(sim, spawned)
            if first is not None:
                firsts.append(first - spawned)
            totals.append(ended - spawned)
        traced = subprocess.run(
            reconcile_command(sim, "--loop-for", "0", python_options=("-X", "importtime")),
            env=reconciler_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        interpreter = []
        for _ in range(3):
            spawned = time.time()
            subprocess.run([*reconcile_command(sim)[:1], "-c", "pass"], env=reconciler_env(), timeout=60, check=True)
            interpreter.append(time.time() - spawned)
    entries = parse_importtime(traced.stderr)
    total_import_ms = round(sum(own for _, own, _ in entries) / 1000, 1)
    median_first = statistics.median(firsts) if firsts else float("nan")
    outcome.figures = {
        "runs": repeats,
        "first_call_seconds": {
            "median": round(median_first, 3),
            "min": round(min(firsts, default=float("nan")), 3),
            "max": round(max(firsts, default=float("nan")), 3),
        },
        "whole_run_seconds_median": round(statistics.median(totals), 3),
        "bare_interpreter_seconds": round(min(interpreter), 3),
        "import_ms_total": total_import_ms,
        "imports_top10": import_breakdown(entries),
    }
    outcome.check(
        "cold start to first API call",
        target=f"<= {TARGET_SECONDS} s",
        value=f"{median_first:.3f} s (median of {repeats})",
        met=median_first <= TARGET_SECONDS,
    )
    outcome.seconds = time.monotonic() - started
    return outcome.as_dict()
