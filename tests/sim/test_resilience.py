"""Simulation tests of issue 20's rules, through the real CLI against both emulators: crash backoff, the
rescue of a job held by an exited agent, the prevention of that race, cleanup."""

from __future__ import annotations

import time
from typing import Any

from conftest import WORLD, Sim

CONFIG_401 = "config.sh: VS30063: You are not authorized to access https://dev.azure.com/contoso"


def _failed_pods(sim: Sim) -> list[dict[str, Any]]:
    pods = sim.kube.objects("pods", "azp-agents")
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]


def _message_of(pod: dict[str, Any]) -> str:
    for entry in pod["status"].get("containerStatuses") or []:
        message = ((entry.get("state") or {}).get("terminated") or {}).get("message")
        if message:
            return str(message)
    return ""


def test_pods_that_crash_before_coming_online_back_off_and_are_reported(make_sim: Any) -> None:
    """We test: a pod whose agent container exits before its agent comes online is not replaced at once. Over
    a 25 s loop of 0.5 s passes the first two pods crash: the second Job comes only after the 10 s backoff,
    the third would need 20 s more, so exactly two Jobs exist and the request is still queued (without a
    backoff the third pod, which works, would have served it within seconds). The passes inside the backoff
    report the pod's reason, exit code and termination message in the pass summary and as a Warning Event on
    the failed Job."""
    crash = {"pool": "linux", "first": 1, "count": 2, "exit_code": 3, "message": CONFIG_401}
    sim = make_sim({**WORLD, "crash_pods": [crash]})
    sim.queue()
    result = sim.reconcile("--loop-for", "25", "--interval", "0.5", "--idle-interval", "0.5", timeout=90)
    assert result.code == 0, result.text
    assert len(sim.jobs()) == 2, result.text
    assert len(_failed_pods(sim)) == 2 and all(_message_of(p) == CONFIG_401 for p in _failed_pods(sim))
    assert len(sim.requests(unfinished_only=True)) == 1
    assert f"Error (exit code 3): {CONFIG_401}" in result.text
    assert '"crash_backoff": 1' in result.text or "crash_backoff=1" in result.text
    assert "2 pod(s) of template 'default' failed" in result.text
    events = [e for e in sim.kube.objects("events", "azp-agents") if e.get("reason") == "AgentCrashBackoff"]
    assert events and {e["type"] for e in events} == {"Warning"}
    assert {e["involvedObject"]["name"] for e in events} == {j["metadata"]["name"] for j in sim.jobs()}


def test_job_assigned_to_an_exiting_once_agent_is_released(make_sim: Any) -> None:
    """We test: with the race of a job assigned to an exiting --once agent (the emulator's once_exit_window),
    the second request is reserved by an agent whose pod has finished and never starts; a pass deletes that
    agent once it shows offline, so the request ends (failed, as the service fails a job whose agent is
    deleted) instead of hanging, and no agent of ours is left registered."""
    sim = make_sim({**WORLD, "once_exit_window": 3})
    [first] = sim.queue(duration=1)
    assert sim.reconcile().code == 0
    sim.wait_for(
        lambda: any(r["requestId"] == first and r.get("result") for r in sim.requests()), timeout=20, what="job 1"
    )
    [second] = sim.queue(duration=1)
    sim.azdo.tick()
    held = {r["requestId"]: r for r in sim.requests(unfinished_only=True)}[second]
    assert held["reservedAgent"]["name"].startswith("azp-eeca0-linux-") and "receiveTime" not in held
    sim.wait_for(lambda: not [a for a in sim.agents() if a["status"] == "online"], timeout=10, what="offline")
    sim.azdo.tick()
    sim.forget_agents_scan()
    result = sim.reconcile()
    assert result.code == 0, result.text
    assert "before the job started" in result.text
    [ended] = [r for r in sim.requests() if r["requestId"] == second]
    assert ended["result"] == "failed" and "We stopped hearing from agent" in ended["statusMessage"]
    assert [a["name"] for a in sim.agents()] == ["azp-placeholder-eeca0-linux-default"]
    assert sim.azdo.stats.busy_agent_deletes_refused == 0


AGENT_PATCH = "PATCH pools/{poolId}/agents/{agentId}"


def test_once_agent_disabled_while_it_runs_gets_no_second_job(make_sim: Any) -> None:
    """We test: the race above never happens when a pass sees the job running. The pass disables the --once
    agent (one PATCH, none more on the next pass); the job goes on and succeeds; a job queued while that agent,
    its listener gone, still shows online (the emulator's once_exit_window) is not handed to it but stays
    queued, gets a new Job and succeeds on a new agent. No job fails, no busy agent's delete is refused."""
    sim = make_sim({**WORLD, "once_exit_window": 3})
    [first] = sim.queue(duration=6)
    assert sim.reconcile().code == 0
    sim.wait_for(
        lambda: any(r["requestId"] == first and r.get("receiveTime") for r in sim.requests()), timeout=20, what="job 1"
    )
    sim.azdo.reset_calls()
    result = sim.reconcile()
    assert result.code == 0, result.text
    assert "disabling agent" in result.text and "no second job" in result.text
    assert sim.reconcile().code == 0
    assert sim.azdo.call_counts().get(AGENT_PATCH) == 1
    [running] = sim.requests(unfinished_only=True)
    runner = running["reservedAgent"]["name"]
    assert running["reservedAgent"]["enabled"] is False
    sim.wait_for(
        lambda: any(r["requestId"] == first and r.get("result") for r in sim.requests()), timeout=20, what="job 1 end"
    )
    [second] = sim.queue(duration=1)
    sim.azdo.tick()
    exiting = {a["name"]: a for a in sim.agents()}[runner]
    assert exiting["status"] == "online" and exiting["enabled"] is False  # inside the exit window
    assert "reservedAgent" not in {r["requestId"]: r for r in sim.requests()}[second]
    assert sim.reconcile().code == 0
    sim.wait_for(
        lambda: any(r["requestId"] == second and r.get("result") for r in sim.requests()), timeout=30, what="job 2"
    )
    by_id = {r["requestId"]: r for r in sim.requests()}
    assert by_id[first]["result"] == by_id[second]["result"] == "succeeded"
    assert by_id[second]["reservedAgent"]["name"] != runner
    assert sim.azdo.stats.jobs_failed == 0 and sim.azdo.stats.busy_agent_deletes_refused == 0


def _cleanup(sim: Sim, *args: str) -> Any:
    return sim.cli(
        "cleanup",
        "--config",
        str(sim.config_path),
        "--kubeconfig",
        str(sim.simulation.kubeconfig_path),
        "--wait",
        "5",
        *args,
        config=False,
    )


def test_cleanup_removes_the_release_but_never_a_busy_agent_unless_forced(make_sim: Any) -> None:
    """We test: `azp-reconciler cleanup` deregisters the placeholder and offline leftovers of ours, drains the
    idle agent and deletes its Job, deletes a Job whose agent never came online, keeps the Job of a busy agent
    (its pipeline job goes on), never touches an agent that is not ours, and leaves the Lease released; with
    --force the busy agent's Job goes too."""
    sim = make_sim({**WORLD, "stuck_pods": [{"pool": "linux", "nth": 2}]})
    pool_id = sim.pool_ids["linux"]
    sim.azdo.add_agent(pool_id, "azp-eeca0-linux-77-xxxxx", status="offline")
    sim.azdo.add_agent(pool_id, "build-server-01", status="offline")
    [busy] = sim.queue(duration=120)
    sim.queue(duration=0.5)
    assert sim.reconcile().code == 0
    sim.wait_for(
        lambda: sum(1 for a in sim.agents() if a["status"] == "online") == 1 and len(sim.requests()) == 2,
        timeout=20,
        what="one busy agent",
    )
    config = sim.config()
    config["pools"][0]["minIdle"] = 1
    sim.write_config(config)
    assert sim.reconcile().code == 0
    sim.wait_for(lambda: sum(1 for a in sim.agents() if a["status"] == "online") == 2, timeout=20, what="an idle agent")
    busy_agent = next(r["reservedAgent"]["name"] for r in sim.requests() if r["requestId"] == busy)
    result = _cleanup(sim)
    assert result.code == 0, result.text
    assert "kept Job" in result.text
    left = {a["name"] for a in sim.agents()}
    assert left == {busy_agent, "build-server-01"}, result.text
    active = [j["metadata"]["name"] for j in sim.jobs() if not j["metadata"].get("deletionTimestamp")]
    assert active == [busy_agent.rsplit("-", 1)[0]], active
    lease = sim.kube.objects("leases", "azp-agents")[0]
    assert not lease["spec"].get("holderIdentity")
    assert sim.kube.touched_foreign == 0
    result = _cleanup(sim, "--force")
    assert result.code == 0, result.text
    assert [j for j in sim.jobs() if not j["metadata"].get("deletionTimestamp")] == []


def test_idle_agents_waiting_on_the_parallel_job_limit_are_drained(make_sim: Any) -> None:
    """We test: with an organization limited to one parallel job, three queued requests get three agents,
    two of which sit idle; after idleTimeout one of those is drained although requests are queued (they wait
    on the limit, not on agents) and no Job is made to replace it; every request is still served."""
    sim = make_sim({**WORLD, "parallel_jobs": 1})
    requests = sim.queue(count=3, duration=8)
    loop = ("--interval", "0.5", "--idle-interval", "0.5")
    result = sim.reconcile("--loop-for", "7", *loop, timeout=60)
    assert result.code == 0, result.text
    assert "wait on the parallel-job limit" in result.text, result.text
    assert result.text.count("creating Job") == 3, result.text
    late = sim.reconcile("--loop-for", "25", *loop, timeout=90)
    finished = {r["requestId"]: r.get("result") for r in sim.requests()}
    assert all(finished[r] == "succeeded" for r in requests), (finished, late.text[-3000:])
    assert late.text.count("creating Job") <= 1, late.text


def test_a_shard_serves_a_missing_shards_requests_after_the_takeover_time(sim: Sim) -> None:
    """We test: one of two shards running alone (the other's cluster is down) leaves the other shard's
    request alone at first and serves it once it has waited shard.takeoverAfterSeconds, so it is not left
    unserved for ever."""
    config = sim.config()
    config["shard"] = {"index": 1, "count": 2, "takeoverAfterSeconds": 15}
    sim.write_config(config)
    requests = sim.queue(count=2, duration=0.5)
    queued_at = time.monotonic()
    [theirs] = [r for r in requests if r % 2 == 0]
    for mine in (r for r in requests if r % 2 == 1):
        sim.azdo.cancel_request(mine)
    result = sim.reconcile()
    assert result.code == 0 and sim.jobs() == [], result.text
    time.sleep(max(0.0, queued_at + 15.5 - time.monotonic()))
    assert sim.reconcile().code == 0
    assert [j["metadata"]["labels"]["azp-agents.dev/request-id"] for j in sim.jobs()] == [str(theirs)]
    sim.wait_for(
        lambda: any(r["requestId"] == theirs and r.get("result") == "succeeded" for r in sim.requests()),
        timeout=30,
        what="the other shard's request served",
    )
