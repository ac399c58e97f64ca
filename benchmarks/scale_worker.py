"""The measured side of the scale benchmark, run in its own process so that CPU time and peak RSS are the
reconciler's alone: take the Lease, time one pass (CPU and wall), then time `plan()` alone on a fresh
observation of the same world. Prints one JSON object."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

from reconciler import config as config_module
from reconciler.plan import plan
from reconciler.reconcile import PassReport, Reconciler


def peak_rss_kib() -> int:
    """This process's own peak RSS: VmHWM, the high-water mark of its memory since exec.

    Not ru_maxrss: on Linux that also keeps the peak of the memory a process replaced at exec, so a worker
    started by the benchmark (which holds both emulators and the whole seeded world) would report the
    benchmark's RSS, not the pass's. ru_maxrss where /proc is not there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_worker")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--plan-repeats", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="also write cProfile tops of the pass and of plan() here")
    args = parser.parse_args()
    config, document = config_module.load_file(args.config)
    credentials = config_module.read_credentials(document)
    reconciler = Reconciler(config, credentials, kubeconfig=str(args.kubeconfig))
    reason = reconciler.acquire()
    if reason is not None:
        raise SystemExit(f"could not take the Lease: {reason}")
    rss_before = peak_rss_kib()
    window_start = time.time()
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    report = reconciler.one_pass(1)
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    window_end = time.time()
    peak_rss = peak_rss_kib()
    # Forget the agent scan so plan() is timed on the same full observation the pass made.
    reconciler.agents_observed.clear()
    world = reconciler.observe(PassReport(number=2), [p.name for p in config.pools])
    now = reconciler.clock()
    plan_seconds = []
    actions = 0
    for _ in range(max(1, args.plan_repeats)):
        started = time.perf_counter()
        actions = len(plan(config, world, now))
        plan_seconds.append(time.perf_counter() - started)
    if profiler is not None and args.profile is not None:
        plan_profiler = cProfile.Profile()
        plan_profiler.runcall(plan, config, world, now)
        stream = io.StringIO()
        stream.write("one pass (cumulative, top 25)\n")
        pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(25)
        stream.write("one pass (own time, top 15)\n")
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
        stream.write("plan() (own time, top 15)\n")
        pstats.Stats(plan_profiler, stream=stream).sort_stats("tottime").print_stats(15)
        args.profile.write_text(stream.getvalue())
    reconciler.renew(release=True)
    reconciler.close()
    result = {
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "window": [window_start, window_end],
        "peak_rss_mib": peak_rss / 1024,
        "rss_before_pass_mib": rss_before / 1024,
        "plan_ms_median": statistics.median(plan_seconds) * 1000,
        "plan_ms_min": min(plan_seconds) * 1000,
        "plan_actions": actions,
        "pass": {**report.fields(), "failed": report.failed},
        "requests_observed": sum(len(s.requests) for s in world.pools),
        "agents_observed": sum(len(s.agents or ()) for s in world.pools),
        "jobs_observed": len(world.jobs),
        "pods_observed": len(world.pods),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
