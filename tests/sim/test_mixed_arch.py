"""We test ARM64 end to end (issue 18): a pool with an X64 and an ARM64 template on a cluster of amd64 and
arm64 nodes serves each job on the architecture it demands; a pod asking for an architecture no node has
stays Pending; an image not published for its node's architecture fails with `exec format error`."""

from __future__ import annotations

import time
from typing import Any

import yaml
from conftest import WORLD, Sim

from azp_simulation.runner import ReconcilerProcess
from azp_simulation.world import SCENARIOS

SCENARIO: dict[str, Any] = yaml.safe_load((SCENARIOS / "mixed-arch.yaml").read_text())
ARM64_ONLY = ["Agent.OSArchitecture -equals ARM64"]


def _demanded_arch(request: dict[str, Any]) -> str | None:
    demands = [d for d in request.get("demands") or [] if d.startswith("Agent.OSArchitecture -equals ")]
    return demands[0].rsplit(" ", 1)[-1] if demands else None


def test_mixed_arch_serves_every_job_on_the_right_architecture(make_sim: Any) -> None:
    """We test: the mixed-arch scenario through the real reconciler: every job is served, each by an agent
    advertising the architecture the job demands (request -> agent -> its capabilities, noted while the agent
    was registered), ARM64 pods run on arm64 nodes, and jobs without an arch demand are served too."""
    # The install pass registers the placeholders (one pass), then the loop serves the arrivals.
    sim: Sim = make_sim(SCENARIO, reconciler={**SCENARIO["reconciler"], "loopFor": 0})
    run = ReconcilerProcess(sim.simulation, loop_for=60, progress=None)
    seen: dict[str, str] = {}
    ran_on: dict[int, str] = {}
    deadline = time.monotonic() + 100
    try:
        while time.monotonic() < deadline:
            seen |= {a["name"]: a["systemCapabilities"]["Agent.OSArchitecture"] for a in sim.agents() if a["enabled"]}
            requests = sim.requests()
            ran_on |= {r["requestId"]: r["reservedAgent"]["name"] for r in requests if r.get("reservedAgent")}
            if len(requests) == sim.simulation.world.total_jobs and all(r.get("result") for r in requests):
                break
            time.sleep(0.1)
    finally:
        run.stop()
    requests = sim.requests()
    assert len(requests) == 14 and {r.get("result") for r in requests} == {"succeeded"}, requests
    served_on = {r["requestId"]: seen.get(ran_on.get(r["requestId"], "")) for r in requests}
    assert None not in served_on.values(), (served_on, ran_on, seen)
    for request in requests:
        wanted = _demanded_arch(request)
        assert served_on[request["requestId"]] == (wanted or served_on[request["requestId"]]), (request, seen)
    demanded = [_demanded_arch(r) for r in requests]
    assert demanded.count("ARM64") == 5 and demanded.count("X64") == 5 and demanded.count(None) == 4
    pods = sim.kube.objects("pods", "azp-agents")
    nodes: dict[bool, set[str]] = {True: set(), False: set()}
    for pod in pods:
        nodes[bool(pod["spec"].get("nodeSelector", {}).get("kubernetes.io/arch"))].add(pod["spec"]["nodeName"])
    assert {name.split("-")[0] for name in nodes[True]} == {"arm64"}
    assert {name.split("-")[0] for name in nodes[False]} == {"amd64"}  # the arm64 nodes' taint keeps them off


def test_pod_selecting_an_arch_no_node_has_stays_pending(make_sim: Any) -> None:
    """We test: on the default (amd64-only) cluster, an ARM64 template's pod stays Pending with the
    scheduler's Unschedulable condition, and no agent registers for it."""
    pool = {**WORLD["pools"][0], "templates": [{"name": "arm64", "arch": "arm64", "capabilities": {}}]}
    sim: Sim = make_sim({**WORLD, "pools": [pool]})
    sim.queue("linux", 1, demands=tuple(ARM64_ONLY), duration=2)
    assert sim.reconcile().code == 0

    def unschedulable() -> bool:
        pods = sim.kube.objects("pods", "azp-agents")
        conditions = [c for p in pods for c in (p.get("status") or {}).get("conditions") or []]
        return any(c.get("reason") == "Unschedulable" and "node affinity/selector" in c["message"] for c in conditions)

    sim.wait_for(unschedulable, timeout=10, what="an Unschedulable ARM64 pod")
    assert [p["status"]["phase"] for p in sim.kube.objects("pods", "azp-agents")] == ["Pending"]
    assert [a["name"] for a in sim.agents() if a["enabled"]] == []


def test_image_without_the_node_arch_fails_with_exec_format_error(make_sim: Any) -> None:
    """We test: an ARM64 template whose image is published for amd64 only: its pod lands on an arm64 node and
    fails (exit 1, `exec format error` in the termination message) before any agent registers."""
    catalogue = yaml.safe_load((SCENARIOS / "realworld.yaml").read_text())["image_catalogue"]
    entry = {**next(iter(catalogue.values())), "architectures": ["amd64"]}
    image = "contoso.azurecr.io/amd64-only:1"
    pool = {
        **WORLD["pools"][0],
        "templates": [{"name": "arm64", "arch": "arm64", "capabilities": {}, "image": image}],
    }
    world = {**WORLD, "pools": [pool], "nodes": [{"arch": "arm64", "count": 1}], "image_catalogue": {image: entry}}
    sim: Sim = make_sim(world)
    sim.queue("linux", 1, demands=tuple(ARM64_ONLY), duration=2)
    assert sim.reconcile().code == 0

    def failed() -> list[dict[str, Any]]:
        return [p for p in sim.kube.objects("pods", "azp-agents") if p["status"].get("phase") == "Failed"]

    sim.wait_for(lambda: bool(failed()), timeout=10, what="the pod to fail")
    terminated = [
        s["state"]["terminated"] for s in failed()[0]["status"]["containerStatuses"] if "terminated" in s["state"]
    ]
    assert any(t["exitCode"] == 1 and "exec format error" in t.get("message", "") for t in terminated), terminated
    assert [a["name"] for a in sim.agents() if a["enabled"]] == []
