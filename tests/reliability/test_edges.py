"""Failures at the edges of the world, each through the real CLI against the emulators: one pool or one
namespace refused (a pool role, a quota, a namespace being terminated), a pool deleted and created again,
a Retry-After of an hour, a Lease written by a clock ahead of ours, SIGTERM during a wait. In each, the
other pools keep being served and the run ends by its deadline."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from reliability_support import BROKEN_IMAGE, LEASE, Rig, admission_refusal, base_env, run_cli, start_rig
from world_model import make_config

from azp_simulation.world import NAMESPACE
from reconciler import names
from reconciler.lease import format_time
from reconciler.model import JobRequest, PoolState, World
from reconciler.plan import plan

pytestmark = pytest.mark.slow

TWO_POOLS: dict[str, Any] = {
    "name": "two-pools",
    "timeout": 60,
    "reconciler": {"loopFor": 0, "interval": 0.3, "idleInterval": 0.3, "sweepInterval": 10},
    "pools": [
        {
            "name": "linux",
            "maxAgents": 3,
            "provisioningTimeout": 60,
            "idleTimeout": 60,
            "templates": [{"name": "default", "capabilities": {"docker": ""}}],
        },
        {
            "name": "gpu",
            "maxAgents": 3,
            "provisioningTimeout": 60,
            "idleTimeout": 60,
            "templates": [{"name": "cuda", "capabilities": {"cuda": "12"}}],
        },
    ],
}


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    started = start_rig(TWO_POOLS, tmp_path)
    yield started
    started.simulation.stop()


def _request_jobs(rig: Rig, namespace: str = NAMESPACE) -> set[int]:
    """Request ids our Jobs in a namespace were made for."""
    jobs = rig.kube.objects("jobs", namespace)
    return {
        int(j["metadata"]["labels"][names.LABEL_REQUEST_ID])
        for j in jobs
        if names.LABEL_REQUEST_ID in j["metadata"]["labels"]
    }


def _queue_reads(rig: Rig) -> int:
    return sum(1 for c in rig.azdo.calls() if c.short == "pools/{poolId}/jobrequests")


def _lease(rig: Rig) -> dict[str, Any]:
    lease: dict[str, Any] = rig.kube.get("leases", NAMESPACE, LEASE)
    return lease


def _put_lease(rig: Rig, lease: dict[str, Any]) -> None:
    url = f"{rig.simulation.kube_url}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE}"
    response = requests.put(url, json=lease, timeout=5)
    assert response.status_code == 200, response.text


def test_one_pool_without_the_admin_role_keeps_the_others_served(rig: Rig) -> None:
    """We test: an identity without the Administrator role on one pool gets 403 on that pool's
    placeholders; the failure names the pool and the role, the other pool's placeholders and both pools'
    Jobs are still made (placeholders used to go first and stop the pass), and the run exits 1, not 2."""
    rig.azdo.set_pool_role(rig.pool_id("gpu"), "Build Admin", "Reader")
    first = rig.reconcile()
    assert first.code == 1, first.out
    assert "register-placeholder" in first.out and "(pool 'gpu')" in first.out, first.out
    assert "Administrator role on the pool" in first.out and "Traceback" not in first.out
    assert rig.agents("linux"), "linux got no placeholder"
    # Queued once the placeholder exists (before, the service fails a request no agent could serve).
    linux = rig.azdo.queue_request(rig.pool_id("linux"), demands=("docker",), duration=30)
    second = rig.reconcile()
    assert second.code == 1, second.out
    assert linux in _request_jobs(rig), second.out


def test_a_quota_refusal_is_not_retried_in_the_namespace_and_reported(rig: Rig) -> None:
    """We test: a ResourceQuota's 403 "exceeded quota" on a create fails that create with the reason,
    the other creates of the namespace are not tried again this pass, and the run exits 1."""
    rig.reconcile()
    for _ in range(2):
        rig.azdo.queue_request(rig.pool_id("linux"), demands=("docker",), duration=30)
    rig.kube.inject_fault("POST", "jobs", kind="status", status=403, times=100, body=admission_refusal("jobs", "quota"))
    result = rig.reconcile()
    assert result.code == 1, result.out
    assert "exceeded quota" in result.out and "grant it in the reconciler's Role" not in result.out
    assert "not tried: " in result.out, result.out
    creates = [c for c in rig.kube.calls() if c.method == "POST" and c.key == "POST jobs"]
    assert len(creates) == 1, creates


def test_a_terminating_namespace_fails_only_its_pools(rig: Rig) -> None:
    """We test: a namespace stuck Terminating (a pod that does not go away) refuses new Jobs with 403
    "being terminated"; the pool there fails, the pool in the other namespace gets its Job."""
    rig.kube.add_namespace("doomed")
    config = rig.config()
    config["pools"][1]["namespace"] = "doomed"
    rig.write_config(config)
    assert rig.reconcile().code == 0  # both pools' placeholders: requests of either pool wait for an agent
    rig.kube.termination_delay = 3600.0
    rig.kube.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "blocker", "namespace": "doomed"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "terminationGracePeriodSeconds": 3600},
        }
    )
    rig.wait_for(
        lambda: bool((rig.kube.get("pods", "doomed", "blocker") or {}).get("spec", {}).get("nodeName")),
        what="the blocker pod to be scheduled",
    )
    rig.kube.delete("namespaces", None, "doomed")
    linux = rig.azdo.queue_request(rig.pool_id("linux"), demands=("docker",), duration=30)
    rig.azdo.queue_request(rig.pool_id("gpu"), demands=("cuda",), duration=30)
    result = rig.reconcile()
    assert result.code == 1, result.out
    assert "because it is being terminated" in result.out and "namespace doomed" in result.out, result.out
    assert linux in _request_jobs(rig)


def test_a_long_retry_after_is_capped_and_the_run_ends_by_its_deadline(rig: Rig) -> None:
    """We test: a Retry-After of an hour on one pool's queue is reported and capped; no wait passes the
    run's deadline, the other pool is served, the Lease is released."""
    rig.reconcile()
    gpu = rig.azdo.queue_request(rig.pool_id("gpu"), demands=("cuda",), duration=30)
    # The first queue read of the pass (linux's, in config order) gets the hour-long Retry-After.
    rig.azdo.inject_fault("GET", "pools/{poolId}/jobrequests", kind="status", status=429, retry_after=3600, times=1)
    result = rig.reconcile("--deadline", "8")
    assert result.seconds < 8, result.out
    assert "asked to retry after 3600s: waiting 60s at most" in result.out, result.out
    assert "could not read the queue of pool 'linux'" in result.out, result.out
    assert gpu in _request_jobs(rig), result.out
    assert (_lease(rig)["spec"].get("holderIdentity") or "") == ""


def test_a_failing_pool_backs_off_and_the_loop_ends_by_its_deadline(rig: Rig) -> None:
    """We test: a pool whose queue read keeps failing (503) is tried again with growing waits, not in a
    spin; the loop sleeps, the other pool is served and the run ends by loopFor."""
    rig.reconcile()
    rig.azdo.inject_fault("GET", "pools/{poolId}/jobrequests", kind="status", status=503, times=100_000)
    rig.azdo.reset_calls()
    result = rig.reconcile("--loop-for", "6", "--interval", "0.3", "--deadline", "12")
    assert result.seconds < 12, result.out
    reads = _queue_reads(rig)
    # Each failed read is retried (azureDevOps.retries: 3) within the pass; between passes the pool
    # waits 0.3, 0.6, 1.2, 2.4 s...: a handful of passes in 6 s, not thousands of calls.
    assert reads < 60, reads
    assert "is tried again in" in result.out


def test_a_pool_deleted_and_created_again_is_found_under_its_new_id(rig: Rig) -> None:
    """We test: a pool deleted and created again under the same name during a loop gets a new id; the
    404 makes the loop look the name up again: the new pool gets its placeholder and its request a Job
    before the deadline."""
    rig.reconcile()
    rig.azdo.reset_calls()
    with subprocess.Popen(
        rig.command("--loop-for", "12", "--interval", "0.3", "--deadline", "40"),
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        rig.wait_for(lambda: _queue_reads(rig) >= 4, timeout=30, what="the loop's second pass")
        old = rig.pool_id("gpu")
        rig.azdo.remove_pool(old)
        new = rig.azdo.add_pool("gpu")["id"]
        assert new != old
        rig.simulation.pool_ids["gpu"] = new  # what config.sh of a simulated agent looks the pool up by
        rig.wait_for(lambda: bool(rig.azdo.agents(new)), timeout=15, what="a placeholder in the new pool")
        request = rig.azdo.queue_request(new, demands=("cuda",), duration=30)
        rig.wait_for(lambda: request in _request_jobs(rig), timeout=15, what="a Job for the new pool's request")
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 1, out  # the failed read of the deleted pool
    assert "HTTP 404" in out, out


def test_a_lease_from_a_clock_ahead_is_not_trusted(rig: Rig) -> None:
    """We test: a Lease renewed by a run whose clock is two hours ahead, with agents "observed" then,
    neither holds the release for hours nor stops the agent list from being read."""
    rig.reconcile()
    ahead = format_time(datetime.now(UTC) + timedelta(hours=2))
    lease = _lease(rig)
    lease["spec"].update(holderIdentity="skewed-run", renewTime=ahead, acquireTime=ahead, leaseDurationSeconds=15)
    lease["metadata"]["annotations"][names.ANNOTATION_AGENTS_OBSERVED] = json.dumps({"linux": ahead, "gpu": ahead})
    _put_lease(rig, lease)
    rig.azdo.reset_calls()
    result = rig.reconcile()
    assert result.code == 0, result.out
    assert "holds the Lease" not in result.out and "in the future: ignored" in result.out, result.out
    assert any(c.short == "pools/{poolId}/agents" and c.method == "GET" for c in rig.azdo.calls())


def test_sigterm_interrupts_a_retry_wait_and_releases_the_lease(rig: Rig) -> None:
    """We test: SIGTERM while the run waits out a long Retry-After ends the run at once (not after the
    wait) and the Lease is released."""
    rig.reconcile()
    rig.azdo.inject_fault("GET", "pools/{poolId}/jobrequests", kind="status", status=429, retry_after=50, times=1)
    with subprocess.Popen(
        rig.command("--loop-for", "60", "--deadline", "90"),
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        rig.wait_for(lambda: any(c.status == 429 for c in rig.azdo.calls()), timeout=15, what="the 429")
        time.sleep(0.5)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
        stopped = time.monotonic() - sent
    assert stopped < 5, out
    assert (_lease(rig)["spec"].get("holderIdentity") or "") == "", out


def test_requests_with_and_without_a_queue_time_are_planned() -> None:
    """We test: a queue mixing requests with and without a parsable queueTime is planned (the sort key of
    a missing time was a naive datetime, compared with the aware ones)."""
    config = make_config([{"name": "linux", "templates": 1, "max_agents": 4, "min_idle": 0}])
    now = datetime.now(UTC)
    requests_ = (
        JobRequest(request_id=1, queue_time=now - timedelta(seconds=5)),
        JobRequest(request_id=2, queue_time=None),
    )
    world = World(pools=(PoolState(name="linux", pool_id=1, requests=requests_),))
    actions = plan(config, world, now)
    assert {getattr(a, "request_id", None) for a in actions if a.kind == "create-job"} == {1, 2}


def _check(rig: Rig) -> Any:
    return run_cli(["check", "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path)])


def test_check_fails_each_pool_the_credential_may_not_manage(rig: Rig) -> None:
    """We test: `check` prints a row per pool; an identity without the Administrator role on one pool
    fails that pool's row only, and a read-only PAT fails every pool's row (it used to pass)."""
    rig.azdo.set_pool_role(rig.pool_id("gpu"), "Build Admin", "Reader")
    checked = _check(rig)
    assert checked.code == 1, checked.out
    rows = {line.split()[1]: line for line in checked.out.splitlines() if line.startswith("pool ")}
    assert set(rows) == {"linux", "gpu"}, checked.out
    assert " ok " in rows["linux"] and "FAILED" in rows["gpu"] and "Administrator role" in rows["gpu"]
    rig.azdo.add_pat("read-only-pat", scopes=("vso.agentpools",))
    (rig.simulation.directory / "pat").write_text("read-only-pat\n")
    checked = _check(rig)
    assert checked.code == 1, checked.out
    assert all("FAILED" in line for line in checked.out.splitlines() if line.startswith("pool ")), checked.out


def test_a_mistyped_template_field_is_refused_by_name(rig: Rig) -> None:
    """We test: a job template with a mistyped field (`resource:` for `resources:`) is created with
    fieldValidation=Strict, so the API server refuses it naming the field instead of dropping it (pods
    without limits); the other pool is served, and `check` names it too."""
    rig.reconcile()
    config = rig.config()
    path = Path(config["pools"][1]["templates"][0]["jobTemplate"])
    template = yaml.safe_load(path.read_text())
    template["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    path.write_text(yaml.safe_dump(template))
    linux = rig.azdo.queue_request(rig.pool_id("linux"), demands=("docker",), duration=30)
    rig.azdo.queue_request(rig.pool_id("gpu"), demands=("cuda",), duration=30)
    result = rig.reconcile()
    assert result.code == 1, result.out
    # The API server's Strict field validation refuses it, naming the field; a 400 is not retried.
    field = 'unknown field \\"spec.template.spec.containers[0].resource\\"'  # quotes escaped in the JSON log
    assert f"strict decoding error: {field}" in result.out, result.out
    assert "retry 1 of" not in result.out, result.out
    assert linux in _request_jobs(rig)
    checked = _check(rig)
    gpu_row = next(line for line in checked.out.splitlines() if line.startswith("template gpu/cuda"))
    assert checked.code == 1 and "FAILED" in gpu_row and "'resource' was unexpected" in gpu_row, checked.out


def test_a_stuck_job_is_deleted_even_while_creates_are_refused(tmp_path: Path) -> None:
    """We test: deletes run before creates, so a stuck Job (its image never pulls) that holds a quota is
    deleted in a pass whose creates the quota refuses; the quota cannot deadlock the pool."""
    world = {
        **TWO_POOLS,
        "images": {BROKEN_IMAGE: "ErrImagePull"},
        "pools": [
            {
                "name": "linux",
                "maxAgents": 3,
                "provisioningTimeout": 1,
                "idleTimeout": 60,
                "templates": [{"name": "default", "capabilities": {"docker": ""}, "image": BROKEN_IMAGE}],
            },
        ],
    }
    rig = start_rig(world, tmp_path)
    try:
        rig.reconcile()
        rig.azdo.queue_request(rig.pool_id("linux"), demands=("docker",), duration=30)
        rig.reconcile()
        time.sleep(2.5)
        rig.azdo.queue_request(rig.pool_id("linux"), demands=("docker",), duration=30)
        quota = admission_refusal("jobs", "quota")
        rig.kube.inject_fault("POST", "jobs", kind="status", status=403, times=100, body=quota)
        rig.kube.reset_calls()
        result = rig.reconcile()
        assert result.code == 1 and "exceeded quota" in result.out, result.out
        writes = [c.key for c in rig.kube.calls() if c.key in ("DELETE jobs", "POST jobs")]
        assert writes and writes[0] == "DELETE jobs" and "POST jobs" in writes, (writes, result.out)
    finally:
        rig.simulation.stop()
