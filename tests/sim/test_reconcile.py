"""We test the reconciler end to end: the real CLI in its own process against both emulators over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import PAT, WORLD, Sim

from reconciler import names


def request_ids_of(jobs: list[dict[str, Any]]) -> list[str]:
    return sorted(j["metadata"]["labels"].get(names.LABEL_REQUEST_ID, "") for j in jobs)


def test_max_agents_caps_first_pass_and_all_jobs_get_served(sim: Sim) -> None:
    """We test: 10 queued jobs and maxAgents 4 give exactly 4 Jobs on the first pass; passes in a loop
    serve all 10; a pass with nothing new creates nothing."""
    sim.queue("linux", 10, demands=("docker",), duration=1.0)
    first = sim.reconcile()
    assert first.code == 0, first.text
    assert len(sim.jobs()) == 4
    looped = sim.reconcile("--loop-for", "15", "--interval", "0.5", "--idle-interval", "1")
    assert looped.code == 0, looped.text
    sim.wait_for(lambda: not sim.requests(unfinished_only=True), timeout=40, what="all requests to finish")
    results = [r.get("result") for r in sim.requests()]
    assert results == ["succeeded"] * 10
    assert sim.azdo.stats.jobs_aborted_by_agent_loss == 0
    before = {j["metadata"]["name"] for j in sim.jobs()}
    again = sim.reconcile()
    # Finished Jobs may be gone by now (ttlSecondsAfterFinished on a slow machine): none may be new.
    assert again.code == 0 and {j["metadata"]["name"] for j in sim.jobs()} <= before
    assert '"created": 0' in again.err or "created=0" in again.err


def test_two_passes_at_once_create_no_duplicates(sim: Sim) -> None:
    """We test: two runs started at the same moment create one Job per request, never two."""
    sim.queue("linux", 3, demands=("docker",), duration=30)
    command = [
        sys.executable,
        "-m",
        "reconciler",
        "reconcile",
        "--config",
        str(sim.config_path),
        "--kubeconfig",
        str(sim.simulation.kubeconfig_path),
    ]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        process.communicate(timeout=60)
        assert process.returncode == 0
    jobs = sim.jobs()
    assert len(jobs) == 3
    assert len({j["metadata"]["labels"][names.LABEL_REQUEST_ID] for j in jobs}) == 3


def test_prune_only_offline_agents_of_ours(make_sim: Any) -> None:
    """We test: offline agents of ours whose pod is gone are deleted; a busy agent of ours, the
    placeholder and agents not created by us (offline or online) stay, whatever their state."""
    sim = make_sim(install=False)  # the first pass of a run lists the agents
    pool_id = sim.pool_ids["linux"]
    sim.azdo.add_agent(pool_id, "azp-eeca0-linux-11-aaaaa", status="offline")
    sim.azdo.add_agent(pool_id, "azp-eeca0-linux-12-bbbbb", status="offline")
    sim.azdo.add_agent(pool_id, "build-server-01", status="offline")
    sim.azdo.add_agent(pool_id, "build-server-02", status="online")
    busy = sim.azdo.add_agent(pool_id, "azp-eeca0-linux-13-ccccc", status="online", capabilities={"docker": ""})
    sim.azdo.queue_request(pool_id, demands=("docker",), duration=60)
    sim.wait_for(
        lambda: (
            any(
                a.get("name") == "azp-eeca0-linux-13-ccccc" and a.get("assignedRequest")
                for a in sim.azdo.agents(pool_id)
            )
            or _busy(sim, busy["id"])
        ),
        timeout=5,
        what="assignment",
    )
    result = sim.reconcile()
    assert result.code == 0, result.text
    left = {a["name"] for a in sim.agents()}
    assert "azp-eeca0-linux-11-aaaaa" not in left and "azp-eeca0-linux-12-bbbbb" not in left
    assert {
        "build-server-01",
        "build-server-02",
        "azp-eeca0-linux-13-ccccc",
        "azp-placeholder-eeca0-linux-default",
    } <= left
    assert sim.kube.touched_foreign == 0


def test_finished_agents_are_deregistered_by_their_published_id_once(make_sim: Any) -> None:
    """We test: each pod's register init container publishes its agent id; once the pods finished, a new
    run (a fresh process, as each CronJob run is) deletes their agents by that id without listing the
    pool's agents, and the run after it, remembering the deletions in the Lease, deletes nothing again."""
    world = {**WORLD, "reconciler": {**WORLD["reconciler"], "sweepInterval": 600}}
    sim = make_sim(world)
    sim.queue(count=2, duration=0.3)
    assert sim.reconcile().code == 0
    sim.wait_for(
        lambda: len(sim.requests()) == 2 and all(r.get("result") for r in sim.requests()), what="both jobs to finish"
    )
    sim.wait_for(
        lambda: sum(p["status"].get("phase") == "Succeeded" for p in sim.kube.objects("pods", "azp-agents")) == 2,
        what="both pods to finish",
    )
    published = {
        entry["state"]["terminated"].get("message", "")
        for pod in sim.kube.objects("pods", "azp-agents")
        for entry in pod["status"].get("initContainerStatuses") or []
    }
    ours = {a["id"] for a in sim.agents() if a["name"].startswith("azp-eeca0-linux-")}
    assert published == {f"{names.AGENT_ID_MESSAGE}{agent_id}\n" for agent_id in ours}, published

    before = sim.azdo.call_counts()
    result = sim.reconcile()
    assert result.code == 0, result.text
    after = sim.azdo.call_counts()
    assert after.get("GET pools/{poolId}/agents", 0) == before.get("GET pools/{poolId}/agents", 0)
    assert (
        after.get("DELETE pools/{poolId}/agents/{agentId}", 0) - before.get("DELETE pools/{poolId}/agents/{agentId}", 0)
        == len(ours)
        == 2
    )
    assert not [a for a in sim.agents() if a["id"] in ours]

    result = sim.reconcile()
    assert result.code == 0, result.text
    again = sim.azdo.call_counts()
    assert again.get("DELETE pools/{poolId}/agents/{agentId}", 0) == after.get(
        "DELETE pools/{poolId}/agents/{agentId}", 0
    )
    assert again.get("GET pools/{poolId}/agents", 0) == after.get("GET pools/{poolId}/agents", 0)


def _busy(sim: Sim, agent_id: int) -> bool:
    return any(a["id"] == agent_id and a.get("assignedRequest") for a in sim.azdo.agents(sim.pool_ids["linux"]))


def test_dry_run_makes_no_write_call(sim: Sim) -> None:
    """We test: --dry-run logs what it would do in the same words and makes zero write calls to either API."""
    sim.azdo.add_agent(sim.pool_ids["linux"], "azp-eeca0-linux-99-zzzzz", status="offline")
    sim.queue("linux", 2, demands=("docker",))
    sim.forget_agents_scan()
    sim.azdo.reset_calls()
    sim.kube.reset_calls()
    result = sim.reconcile("--dry-run")
    assert result.code == 0, result.text
    assert sim.azdo.write_calls() == 0 and sim.kube.write_calls() == 0
    assert "would create Job" in result.err and "would delete agent azp-eeca0-linux-99-zzzzz" in result.err
    assert sim.jobs() == []


def test_pat_never_leaks(sim: Sim) -> None:
    """We test: the PAT appears in no log line (text or json, debug level), no Job, no Event, no Lease."""
    sim.queue("linux", 2, demands=("docker",), duration=1)
    outputs = [sim.reconcile("--log-level", "debug"), sim.reconcile("--log-format", "json", "--log-level", "debug")]
    outputs.append(sim.cli("check"))
    outputs.append(sim.cli("render", "--pool", "linux"))
    for result in outputs:
        assert PAT not in result.text
    for resource in ("jobs", "pods", "events", "leases"):
        assert PAT not in json.dumps(sim.kube.objects(resource, "azp-agents"))


def test_orchestrator_environment_alone_runs_a_pass(sim: Sim, tmp_path: Path) -> None:
    """We test: with only ado-agent-orchestrator's variables (no config file) a pass creates the Jobs."""
    sim.queue("linux", 2, demands=("docker",), duration=30)
    env = {
        "ORG_URL": sim.simulation.organization_url,
        "ORG_PAT": PAT,
        "AGENT_POOLS": "linux",
        "JOB_IMAGE": "ghcr.io/azp-agents/agent-linux:4.261.0",
        "JOB_NAMESPACE": "azp-agents",
        "RUN_ONCE": "1",
        "TMPDIR": str(tmp_path),
    }
    result = sim.cli("reconcile", "--kubeconfig", str(sim.simulation.kubeconfig_path), env=env, config=False)
    assert result.code == 0, result.text
    jobs = sim.jobs()
    assert len(jobs) == 2
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == env["JOB_IMAGE"]
    assert PAT not in json.dumps(jobs)


def test_render_prints_the_job(sim: Sim) -> None:
    """We test: `render --pool` prints the Job a pass would create, token by Secret reference only."""
    result = sim.cli("render", "--pool", "linux")
    assert result.code == 0, result.text
    job = yaml.safe_load(result.out)
    assert job["kind"] == "Job" and job["metadata"]["labels"][names.LABEL_POOL] == "linux"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["azp-token"]["secret"]["secretName"] == "azp-agents-pat"


def test_check_reports_a_table(sim: Sim) -> None:
    """We test: `check` verifies credentials, pools, permissions and templates and exits 0 when all pass."""
    result = sim.cli("check")
    assert result.code == 0, result.text
    assert "credentials" in result.out and "pool linux" in result.out and "can create jobs.batch" in result.out
    assert "checks: all" in result.out
