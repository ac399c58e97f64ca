"""Loop memory: the reconciler in loop mode for a long time at 1 s intervals; its RSS must stay flat.

`python -m benchmarks.loop_memory` starts both emulators with jobs arriving on two pools for the whole
run, then the real CLI as its own process (`reconcile --loop-for SECONDS --interval 1`), and samples
that process's resident set size (VmRSS in /proc/PID/status) every AZP_LOOP_SAMPLE seconds. It prints
every sample, the passes run, and the slope of RSS over time after a warm-up (least squares, in MiB per
hour), and exits 1 when the slope passes AZP_LOOP_SLOPE_LIMIT (MiB/hour). The issue's target is one hour
(AZP_LOOP_SECONDS=3600); the default is 25 minutes, what a shared machine affords.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ReconcilerRun, pool_document, reconcile_command, simulation

SECONDS = float(os.environ.get("AZP_LOOP_SECONDS", "1500"))
INTERVAL = float(os.environ.get("AZP_LOOP_INTERVAL", "1"))
SAMPLE = float(os.environ.get("AZP_LOOP_SAMPLE", "60"))
WARM_UP = float(os.environ.get("AZP_LOOP_WARM_UP", "180"))
SLOPE_LIMIT = float(os.environ.get("AZP_LOOP_SLOPE_LIMIT", "2"))
JOB_EVERY = 20.0
"""A job arrives on each pool this often, so passes create, serve and reap all along."""


def world(seconds: float) -> dict[str, Any]:
    count = int(seconds // JOB_EVERY)
    return {
        "name": "loop-memory",
        "timeout": seconds + 120,
        "reconciler": {"loopFor": 0, "interval": INTERVAL, "idleInterval": INTERVAL, "sweepInterval": 30},
        "pools": [pool_document(name, templates=2, max_agents=4) for name in ("linux", "build")],
        "arrivals": [
            {"pool": name, "at": offset, "count": count, "every": JOB_EVERY, "duration": [3, 8]}
            for name, offset in (("linux", 5.0), ("build", 15.0))
        ],
    }


def rss_mib(pid: int) -> float | None:
    """VmRSS of a process in MiB; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per hour."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_m = sum(m for _, m in samples) / len(samples)
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (m - mean_m) for t, m in samples) / spread * 3600


def measure(directory: Path) -> dict[str, Any]:
    with simulation(world(SECONDS), directory) as sim:
        command = reconcile_command(
            sim, "--loop-for", str(SECONDS), "--interval", str(INTERVAL), "--idle-interval", str(INTERVAL)
        )
        run = ReconcilerRun(command)
        started = time.monotonic()
        samples: list[tuple[float, float]] = []
        while run.running():
            elapsed = time.monotonic() - started
            rss = rss_mib(run.process.pid)
            if rss is not None:
                samples.append((elapsed, rss))
                print(f"  t={elapsed:7.0f}s  rss={rss:6.1f} MiB  passes={len(run.summaries)}", flush=True)
            time.sleep(SAMPLE)
        code = run.wait(timeout=60)
    settled = [(t, m) for t, m in samples if t >= WARM_UP]
    return {
        "seconds": SECONDS,
        "interval": INTERVAL,
        "exit_code": code,
        "passes": len(run.summaries),
        "created": sum(int(s.get("created", 0)) for s in run.summaries),
        "rss_first_mib": round(samples[0][1], 1) if samples else None,
        "rss_last_mib": round(samples[-1][1], 1) if samples else None,
        "rss_max_mib": round(max(m for _, m in samples), 1) if samples else None,
        "slope_mib_per_hour": round(slope_per_hour(settled), 2),
        "samples_after_warm_up": len(settled),
    }


def main() -> int:
    print(f"loop memory: {SECONDS:.0f}s at {INTERVAL:g}s intervals, RSS sampled every {SAMPLE:.0f}s", flush=True)
    with tempfile.TemporaryDirectory(prefix="azp-loop-memory-") as directory:
        figures = measure(Path(directory))
    print(json.dumps(figures, indent=2))
    flat = figures["slope_mib_per_hour"] <= SLOPE_LIMIT and figures["passes"] > 0
    print(f"loop memory: {'flat' if flat else 'GROWING'} (limit {SLOPE_LIMIT:g} MiB/hour)")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
