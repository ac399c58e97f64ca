"""Simulation tests of ownership (issue 20 item 5): two reconcilers serve one pool of one simulated world,
each through the real CLI in its own process, at the same time: two releases with the same jobNamePrefix in
one namespace, and two shards of one release in two namespaces (standing for their two clusters)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from conftest import PAT, Sim

from reconciler import names

TOUCHES = re.compile(
    r"(?:deleting|draining) agent (?P<agent>\S+) \(id"
    r"|deleting Job (?P<namespace>[^/\s]+)/(?P<job>\S+) of pool"
    r"|updating placeholder agent (?P<placeholder>\S+)"
)
LOOP = ("--interval", "0.5", "--idle-interval", "0.5")


class Sightings:
    """Every Job and pod seen in the namespaces, with the release and shard on its labels, sampled while the
    reconcilers run: what each of them owned, to hold its deletes against (agent name = pod name)."""

    def __init__(self, sim: Sim, namespaces: tuple[str, ...]) -> None:
        self.sim = sim
        self.namespaces = namespaces
        self.owner_of: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for namespace in self.namespaces:
                for kind in ("jobs", "pods"):
                    for item in self.sim.kube.objects(kind, namespace):
                        labels = item["metadata"].get("labels") or {}
                        owner = (labels.get(names.LABEL_INSTANCE, "?"), labels.get(names.LABEL_SHARD))
                        self.owner_of.setdefault((kind, item["metadata"]["name"]), owner)
            self._stop.wait(0.05)

    @contextmanager
    def running(self) -> Iterator[Sightings]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


def _second_config(sim: Sim, tmp_path: Path, **changes: Any) -> Path:
    document = {**sim.config(), **changes}
    path = tmp_path / f"config-{changes.get('release', 'azp-agents')}-{changes.get('namespace', 'azp-agents')}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _start(sim: Sim, config: Path, seconds: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "reconciler", "reconcile", "--config", str(config)]
    command += ["--kubeconfig", str(sim.simulation.kubeconfig_path), "--loop-for", str(seconds), *LOOP]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out[-4000:]
    return out


def _foreign_touches(output: str, *, owner: names.Owner, sightings: Sightings, leftover: str) -> list[str]:
    """What a reconciler deleted, drained or updated that another release or shard owned (or nobody we saw):
    its own are the pods and Jobs sighted with its labels, its placeholder and the leftover agent seeded for it."""
    own_placeholder = names.placeholder_name(owner, pool_name="linux", template="default")
    labels = (owner.release, str(owner.shard))
    foreign = []
    for match in TOUCHES.finditer(output):
        if match["agent"] is not None:
            name = match["agent"]
            mine = sightings.owner_of.get(("pods", name)) == labels or name in (own_placeholder, leftover)
        elif match["job"] is not None:
            name = match["job"]
            mine = sightings.owner_of.get(("jobs", name)) == labels
        else:
            name = match["placeholder"]
            mine = name == own_placeholder
        if not mine:
            foreign.append(match.group(0))
    return foreign


def _seed_leftover(sim: Sim, owner: names.Owner, request_id: int) -> str:
    """An offline agent of `owner` whose pod is gone (its run died before pruning it): only its owner may
    delete it, and the other reconciler lists the pool while it is there."""
    name = names.request_job_name(owner, pool_name="linux", request_id=request_id) + "-zzzzz"
    sim.azdo.add_agent(sim.pool_ids["linux"], name, status="offline")
    return name


def _check_owner(sim: Sim, owner: names.Owner, output: str, *, sightings: Sightings, leftover: str) -> None:
    """Nothing of another owner touched, no Job name taken by another, every Job under the owner's names
    and labels, its placeholder registered, its leftover pruned."""
    assert _foreign_touches(output, owner=owner, sightings=sightings, leftover=leftover) == [], owner
    assert "already exists" not in output, owner
    labels = (owner.release, str(owner.shard))
    jobs = [name for (kind, name), seen in sightings.owner_of.items() if kind == "jobs" and seen == labels]
    assert jobs and all(j.startswith(names.agent_prefix(owner, pool_name="linux")) for j in jobs), jobs
    agents = {a["name"] for a in sim.agents()}
    assert names.placeholder_name(owner, pool_name="linux", template="default") in agents, agents
    assert leftover not in agents and f"deleting agent {leftover} " in output, owner


def _served_once(sim: Sim, requests: list[int]) -> None:
    sim.wait_for(lambda: not sim.requests(unfinished_only=True), timeout=40, what="every request to finish")
    results = {r["requestId"]: r.get("result") for r in sim.requests()}
    assert all(results[r] == "succeeded" for r in requests), results
    stats = sim.azdo.stats
    assert stats.jobs_assigned == len(requests), stats
    assert stats.busy_agent_deletes_refused == 0 and stats.jobs_aborted_by_agent_loss == 0, stats


def _queue_in_waves(sim: Sim, waves: int, *, every: float) -> list[int]:
    requests: list[int] = []
    for wave in range(waves):
        if wave:
            time.sleep(every)
        requests += sim.queue(count=3, duration=1.5)
    return requests


def test_two_releases_with_one_prefix_share_a_pool_without_touching_each_other(sim: Sim, tmp_path: Path) -> None:
    """We test: releases azp-agents and beta, both with jobNamePrefix azp, serve pool linux from one namespace at
    the same time; beta has a second template (java). Each names its Jobs, agents and placeholders with its own
    identity, so no Job name of one is taken by the other, and labels its Jobs with its release and shard;
    neither deletes, drains or updates an agent, placeholder or Job of the other (each sees the other's finished
    agents offline, an offline leftover of the other, and a placeholder of a template it does not have), while
    each prunes its own leftover; every request is served exactly once and no agent running a job is deleted."""
    document = sim.config()
    java = {**document["pools"][0]["templates"][0], "name": "java", "capabilities": {"java": ""}}
    pools = [{**document["pools"][0], "templates": [*document["pools"][0]["templates"], java]}]
    beta = _second_config(sim, tmp_path, release="beta", agentSecret={"name": "azp-agents-pat"}, pools=pools)
    owners = {"azp-agents": names.Owner("azp", "azp-agents"), "beta": names.Owner("azp", "beta")}
    leftovers = {release: _seed_leftover(sim, owner, 900 + n) for n, (release, owner) in enumerate(owners.items())}
    with Sightings(sim, ("azp-agents",)).running() as sightings:
        alpha_run, beta_run = _start(sim, sim.config_path, 22), _start(sim, beta, 22)
        requests = _queue_in_waves(sim, 3, every=5)
        outputs = {"azp-agents": _finish(alpha_run), "beta": _finish(beta_run)}
    _served_once(sim, requests)
    for release, owner in owners.items():
        _check_owner(sim, owner, outputs[release], sightings=sightings, leftover=leftovers[release])
    assert names.placeholder_name(owners["beta"], pool_name="linux", template="java") in {
        a["name"] for a in sim.agents()
    }
    for job in sim.jobs():
        metadata = job["metadata"]
        release = metadata["labels"][names.LABEL_INSTANCE]
        assert metadata["annotations"][names.ANNOTATION_OWNER] == owners[release].annotation
        assert metadata["labels"][names.LABEL_SHARD] == "0"


def test_two_shards_share_a_pool_and_take_over_without_touching_each_other(sim: Sim, tmp_path: Path) -> None:
    """We test: shards 0 and 1 of release azp-agents (namespaces azp-agents and azp-shard1, each with its own
    Lease, as two clusters would have) serve pool linux. Shard 1 starts late: shard 0 serves its requests
    once they waited shard.takeoverAfterSeconds (6 s), and lists the pool while an offline leftover of shard 1
    is in it; then both run together, and both may make a Job for one request. Neither deletes, drains or
    updates an agent, placeholder or Job of the other, each prunes its own leftover, every request is served
    exactly once, and each shard's Jobs carry its shard in name and label."""
    sim.kube.add_namespace("azp-shard1")
    sim.kube.add_secret("azp-shard1", "azp-agents-pat", {"pat": PAT})
    shard = {"count": 2, "takeoverAfterSeconds": 6}
    zero = _second_config(sim, tmp_path, shard={"index": 0, **shard})
    one = _second_config(sim, tmp_path, namespace="azp-shard1", shard={"index": 1, **shard})
    owners = {"azp-agents": names.Owner("azp", "azp-agents", 0), "azp-shard1": names.Owner("azp", "azp-agents", 1)}
    leftovers = {name: _seed_leftover(sim, owner, 900 + n) for n, (name, owner) in enumerate(owners.items())}
    with Sightings(sim, tuple(owners)).running() as sightings:
        # Only shard 1's share is queued at first (shard 0's is cancelled), so nothing but a takeover serves it.
        requests = []
        for request in sim.queue(count=4, duration=1.5):
            if request % 2 == 0:
                sim.azdo.cancel_request(request)
            else:
                requests.append(request)
        zero_run = _start(sim, zero, 40)
        taken_over = [names.request_job_name(owners["azp-agents"], pool_name="linux", request_id=r) for r in requests]
        sim.wait_for(
            lambda: {j["metadata"]["name"] for j in sim.kube.objects("jobs", "azp-agents")} >= set(taken_over),
            timeout=30,
            what="shard 0 to take over shard 1's requests",
        )
        one_run = _start(sim, one, 25)
        shard_one = names.placeholder_name(owners["azp-shard1"], pool_name="linux", template="default")
        sim.wait_for(lambda: shard_one in {a["name"] for a in sim.agents()}, timeout=30, what="shard 1's first pass")
        requests += _queue_in_waves(sim, 2, every=5)
        outputs = {"azp-agents": _finish(zero_run), "azp-shard1": _finish(one_run)}
    _served_once(sim, requests)
    for namespace, owner in owners.items():
        _check_owner(sim, owner, outputs[namespace], sightings=sightings, leftover=leftovers[namespace])
        for job in sim.kube.objects("jobs", namespace):
            assert job["metadata"]["labels"][names.LABEL_SHARD] == str(owner.shard)
    # Shard 1's first requests were served by shard 0 (takeover), under shard 0's names.
    assert all(f"creating Job azp-agents/{job} " in outputs["azp-agents"] for job in taken_over), taken_over
