"""Scale: one pass over 50 pools holding N queued requests, N running agents (each with its running
request, disabled for it as the reconciler leaves them) and N Jobs with their Pods, for growing N.
Pools sit at maxAgents, so the pass observes everything and changes nothing: its cost is observation and
planning.

The emulators are seeded in-process through their set-up APIs (no HTTP), after one warm-up run of the
reconciler has registered the placeholders. The Lease is then deleted, so the measured pass lists
every pool's agents too (a full observation, the worst case). The pass runs in its own process
(benchmarks.scale_worker) for clean CPU and RSS figures. The JSON-parse floor replays the GETs of that
pass, and times `json.loads` of the very bytes it received."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from azp_simulation.world import NAMESPACE, PAT, RELEASE, Simulation, load_world
from benchmarks.harness import Outcome, check_size, pool_document, reconciler_env, run_reconciler
from reconciler import config as config_module
from reconciler.names import LABEL_REQUEST_ID, request_job_name
from reconciler.reconcile import load_job_templates
from reconciler.render import render_job

POOLS = 50
# Up to 5,000, N queued requests, N running agents and N Jobs/Pods. Beyond, the queue grows while the
# pools stay at 5,000 agents (100 per pool, all at maxAgents): the jobrequests payload grows as unfinished
# requests x matching agents per pool (matchedAgents lists every matching agent on every unfinished
# request, as the service does), so 20,000 agents would mean about 7 GB of JSON; 20,000 requests over
# 5,000 agents is about 1 GB, a queue of four jobs per agent.
SIZES = {"tiny": (50, 200), "full": (500, 2000, 5000, 20000)}
HEADLINE = {"tiny": 200, "full": 5000}
MAX_AGENTS_PER_POOL = 100
TARGET_CPU_RATIO, TARGET_PLAN_MS, TARGET_RSS_MIB = 3.0, 50.0, 200.0


def _world(agents_per_pool: int) -> dict[str, Any]:
    return {
        "name": "scale",
        "timeout": 600,
        "reconciler": {"loopFor": 0, "interval": 10, "idleInterval": 30, "sweepInterval": 300},
        "pools": [
            pool_document(
                f"pool{index:02d}",
                templates=1,
                max_agents=agents_per_pool,
                provisioningTimeout=3600,
                idleTimeout=3600,
            )
            for index in range(POOLS)
        ],
        "arrivals": [],
    }


def _start(agents_per_pool: int, directory: Path) -> Simulation:
    """Both emulators with no background work (no ticking, no simulated agents), configuration written."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "world.yaml"
    path.write_text(yaml.safe_dump(_world(agents_per_pool), sort_keys=False))
    sim = Simulation(load_world(path), directory=directory / "run")
    sim.azdo.auto_tick = False
    sim.kube.auto_tick = False
    sim.organization_url = sim.azdo.start()
    sim.kube_url = sim.kube.start()
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage",))
    sim.kube.add_namespace(NAMESPACE)
    sim.kube.add_secret(NAMESPACE, f"{RELEASE}-pat", {"pat": PAT})
    for pool in sim.world.pools:
        sim.pool_ids[pool["name"]] = int(sim.azdo.add_pool(pool["name"])["id"])
    sim._write_files()
    return sim


def _seed(sim: Simulation, per_pool: int, agents_per_pool: int) -> dict[str, float]:
    """Per pool: `agents_per_pool` running requests with their Jobs, Pods and online agents, and
    `per_pool` queued requests."""
    timings: dict[str, float] = {}
    config, _ = config_module.load_file(sim.config_path)
    templates = load_job_templates(config)
    started = time.perf_counter()
    running: dict[int, int] = {}
    queued_time = time.time() - 120
    for pool in config.pools:
        pool_id = sim.pool_ids[pool.name]
        template = pool.templates[0]
        demand = next(iter(template.capabilities))
        for _ in range(agents_per_pool):
            request_id = sim.azdo.queue_request(pool_id, demands=[demand], duration=3600, queue_time=queued_time)
            running[request_id] = pool_id
        for _ in range(per_pool):
            sim.azdo.queue_request(pool_id, demands=[demand], duration=600, queue_time=queued_time + 60)
    timings["queue_requests"] = time.perf_counter() - started
    started = time.perf_counter()
    by_pool = {p.name: p for p in config.pools}
    for request_id, pool_id in running.items():
        pool_name = next(name for name, value in sim.pool_ids.items() if value == pool_id)
        pool = by_pool[pool_name]
        template = pool.templates[0]
        name = request_job_name(config.owner, pool_name=pool.name, request_id=request_id)
        job = render_job(
            config=config,
            pool=pool,
            template=template,
            job_template=templates[(pool.name, template.name)],
            job_name=name,
            request_id=request_id,
        )
        sim.kube.create(job)
    timings["create_jobs"] = time.perf_counter() - started
    started = time.perf_counter()
    sim.kube.tick()
    time.sleep(sim.kube.start_delay + 0.05)
    sim.kube.tick()
    timings["controllers"] = time.perf_counter() - started
    started = time.perf_counter()
    capabilities_of = {
        sim.pool_ids[p.name]: {**dict(p.templates[0].capabilities), "Agent.OS": "Linux"} for p in config.pools
    }
    for pod in sim.kube.objects("pods", NAMESPACE):
        label = (pod["metadata"].get("labels") or {}).get(LABEL_REQUEST_ID)
        if not label or int(label) not in running:
            continue
        pool_id = running[int(label)]
        name = pod["metadata"]["name"]
        # Disabled, as in steady state: the pass that first saw each `--once` agent running its job disabled it.
        sim.azdo.add_agent(
            pool_id,
            name,
            enabled=False,
            status="online",
            capabilities={**capabilities_of[pool_id], "Agent.Name": name},
            assigned_request=int(label),
        )
    timings["add_agents"] = time.perf_counter() - started
    return {k: round(v, 2) for k, v in timings.items()}


def _json_floor(sim: Simulation, window: tuple[float, float]) -> dict[str, Any]:
    """Fetch again what the pass fetched (its GETs, same paths and queries) and time json.loads of it."""
    bodies: list[bytes] = []
    with requests.Session() as session:
        for call in sim.azdo.calls():
            if window[0] <= call.time <= window[1] and call.method == "GET":
                url = sim.organization_url.rsplit("/", 1)[0] + call.path
                bodies.append(session.get(url, params=call.query, auth=("", PAT), timeout=300).content)
        for kube_call in sim.kube.calls():
            if window[0] <= kube_call.time <= window[1] and kube_call.method == "GET":
                bodies.append(session.get(sim.kube_url + kube_call.path, params=kube_call.query, timeout=300).content)
    started = time.thread_time()
    for body in bodies:
        json.loads(body)
    return {"seconds": time.thread_time() - started, "bytes": sum(len(b) for b in bodies), "responses": len(bodies)}


def measure(per_pool: int, directory: Path, *, profile: Path | None = None) -> dict[str, Any]:
    """Seed one world of 50 x per_pool queued requests (and as many agents, up to MAX_AGENTS_PER_POOL) and
    measure one pass over it (profiled when `profile` is set)."""
    agents_per_pool = min(per_pool, MAX_AGENTS_PER_POOL)
    sim = _start(agents_per_pool, directory)
    try:
        warmup = run_reconciler(sim, "--loop-for", "0", timeout=120)
        if warmup.process.returncode != 0:
            raise RuntimeError(f"warm-up pass failed: {warmup.errors[-5:]}")
        seeding_started = time.perf_counter()
        seeding = _seed(sim, per_pool, agents_per_pool)
        seeding["total"] = round(time.perf_counter() - seeding_started, 2)
        sim.kube.delete("leases", NAMESPACE, f"{RELEASE}-reconciler")
        worker = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.scale_worker",
                "--config",
                str(sim.config_path),
                "--kubeconfig",
                str(sim.kubeconfig_path),
                *(["--profile", str(profile)] if profile else []),
            ],
            env=reconciler_env(),
            capture_output=True,
            text=True,
            timeout=900,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if worker.returncode != 0:
            raise RuntimeError(f"scale worker failed: {worker.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(worker.stdout.strip().splitlines()[-1])
        floor = _json_floor(sim, (result["window"][0], result["window"][1]))
    finally:
        sim.kube.stop()
        sim.azdo.stop()
    n = per_pool * POOLS
    return {
        "queued_requests": n,
        "running_agents": agents_per_pool * POOLS,
        "jobs_and_pods": agents_per_pool * POOLS,
        "seeding_seconds": seeding,
        "cpu_seconds": round(result["cpu_seconds"], 3),
        "wall_seconds": round(result["wall_seconds"], 3),
        "peak_rss_mib": round(result["peak_rss_mib"], 1),
        "plan_ms": round(result["plan_ms_median"], 2),
        "plan_actions": result["plan_actions"],
        "json_floor_seconds": round(floor["seconds"], 3),
        "json_bytes": floor["bytes"],
        "json_responses": floor["responses"],
        "cpu_to_json_floor": round(result["cpu_seconds"] / max(floor["seconds"], 1e-9), 2),
        "pass": result["pass"],
        "observed": {k: result[k] for k in ("requests_observed", "agents_observed", "jobs_observed", "pods_observed")},
    }


def run(size: str) -> dict[str, Any]:
    """Measure each N of the size; the headline N is checked against the targets."""
    check_size(size)
    started = time.monotonic()
    outcome = Outcome(name="scale", size=size)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="azp-bench-scale-") as temporary:
        for n in SIZES[size]:
            points.append(measure(n // POOLS, Path(temporary) / str(n)))
    outcome.figures = {"pools": POOLS, "points": points}
    head = next(p for p in points if p["queued_requests"] == HEADLINE[size])
    label = f"at {HEADLINE[size]}/{HEADLINE[size]}/{HEADLINE[size]}"
    outcome.check(
        f"pass CPU / JSON-parse floor {label}",
        target=f"<= {TARGET_CPU_RATIO:g}x",
        value=f"{head['cpu_seconds']} s / {head['json_floor_seconds']} s = {head['cpu_to_json_floor']}x "
        f"({head['json_bytes'] / 2**20:.1f} MiB JSON)",
        met=head["cpu_to_json_floor"] <= TARGET_CPU_RATIO,
    )
    outcome.check(
        f"plan() alone {label}",
        target=f"<= {TARGET_PLAN_MS:g} ms",
        value=f"{head['plan_ms']} ms",
        met=head["plan_ms"] <= TARGET_PLAN_MS,
    )
    outcome.check(
        f"peak RSS {label}",
        target=f"<= {TARGET_RSS_MIB:g} MiB",
        value=f"{head['peak_rss_mib']} MiB",
        met=head["peak_rss_mib"] <= TARGET_RSS_MIB,
    )
    outcome.check(f"pass wall {label}", target="(informational)", value=f"{head['wall_seconds']} s", met=None)
    # Growth, step by step: the reconciler's own work (plan) should follow the number of requests; a
    # pass, which must read every byte the service sends, should grow no faster than those bytes.
    steps = []
    for first, last in itertools.pairwise(points):
        factor = last["queued_requests"] / first["queued_requests"]
        growth = {
            key: last[key] / max(first[key], 1e-9)
            for key in ("cpu_seconds", "wall_seconds", "plan_ms", "json_bytes", "peak_rss_mib")
        }
        steps.append(
            {
                "from": first["queued_requests"],
                "to": last["queued_requests"],
                "size_factor": factor,
                **{k: round(v, 2) for k, v in growth.items()},
            }
        )
    outcome.figures["growth"] = steps
    for step in steps:
        factor = step["size_factor"]
        outcome.check(
            f"growth {step['from']} -> {step['to']} requests (x{factor:g})",
            target="plan linear, pass <= payload",
            value=f"plan x{step['plan_ms']:.1f}, cpu x{step['cpu_seconds']:.1f}, wall x{step['wall_seconds']:.1f}, "
            f"payload x{step['json_bytes']:.1f}, rss x{step['peak_rss_mib']:.2f}",
            met=step["plan_ms"] <= factor * 1.25 and step["cpu_seconds"] <= max(factor, step["json_bytes"]) * 1.25,
        )
    outcome.seconds = time.monotonic() - started
    return outcome.as_dict()
