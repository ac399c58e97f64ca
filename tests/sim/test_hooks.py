"""We test the service hook path end to end: `azp-reconciler serve` in its own process (receiver and loop),
`azp-reconciler subscribe` against the Azure DevOps emulator, and the emulator posting the event."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import PAT, WORLD, Sim

from azp_simulation.hooks import HookDelivery
from reconciler.names import LABEL_REQUEST_ID
from reconciler.receiver import EVENT_TYPE, HOOK_PATH, SECRET_HEADER, subscription_body

SECRET = "hook-secret-5e1d9a7c"


def event(job_id: str, *, state: str = "waiting", project: str = "p-1") -> dict[str, Any]:
    """A job-state-changed event of the shape the service posts (reference entra-hooks-aci.md 1.2)."""
    return {
        "subscriptionId": "s-1",
        "notificationId": 1,
        "eventType": EVENT_TYPE,
        "publisherId": "pipelines",
        "resource": {"projectId": project, "job": {"id": job_id, "name": "Build", "attempt": 1, "state": state}},
        "resourceVersion": "5.1-preview.1",
    }


class Served:
    """`azp-reconciler serve` running against a simulation; its log is collected line by line."""

    def __init__(self, sim: Sim, tmp_path: Path, *args: str) -> None:
        secret_file = tmp_path / "hook-secret"
        secret_file.write_text(SECRET + "\n")
        self.secret_file = secret_file
        command = [
            sys.executable,
            "-m",
            "reconciler",
            "serve",
            "--config",
            str(sim.config_path),
            "--kubeconfig",
            str(sim.simulation.kubeconfig_path),
            "--secret-file",
            str(secret_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AZP_", "ORG_"))}
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(r"listening on (\S+)/hooks/azure-devops", line)
                if found:
                    return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("serve did not start: " + "".join(self.lines))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def post(self, body: Any, *, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(f"{self.url}{HOOK_PATH}", data=data, headers=headers or {}, timeout=10, **kwargs)

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=10).text

    def stop(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(sim: Sim, *args: str) -> Served:
        served = Served(sim, tmp_path, *args)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


AUTH = {SECRET_HEADER: SECRET}


def test_receiver_refuses_unauthenticated_and_malformed_posts(sim: Sim, serve: Callable[..., Served]) -> None:
    """We test: no credential, a wrong secret or a wrong basic password get 401; a body that is not JSON,
    another event, or an event without a job get 400; a body over the size limit gets 413 before it is
    read; a good post is accepted once and then reported as a duplicate; an event raised long before
    (older than idleInterval) is stale; the metrics count each outcome
    and the secret never reaches the log."""
    served = serve(sim, "--insecure-http", "--idle-interval", "60")
    assert served.post(event("j-1")).status_code == 401
    assert served.post(event("j-1"), headers={SECRET_HEADER: "wrong"}).status_code == 401
    assert served.post(event("j-1"), auth=("azp", "wrong")).status_code == 401
    assert served.post(b"{not json", headers=AUTH).status_code == 400
    assert served.post({**event("j-1"), "eventType": "build.complete"}, headers=AUTH).status_code == 400
    assert served.post({"eventType": EVENT_TYPE, "resource": {}}, headers=AUTH).status_code == 400
    huge = served.post(b"x" * (300 * 1024), headers=AUTH)
    assert huge.status_code == 413
    first = served.post(event("j-1"), auth=("anyone", SECRET))
    assert first.status_code == 200 and first.json() == {"result": "accepted"}
    assert served.post(event("j-1"), headers=AUTH).json() == {"result": "duplicate"}
    assert served.post(event("j-1", state="completed"), headers=AUTH).json() == {"result": "ignored"}
    late = {**event("j-2"), "createdDate": "2020-01-01T00:00:00.1234567Z"}
    assert served.post(late, headers=AUTH).json() == {"result": "stale"}
    metrics = served.metrics()
    assert 'azp_hints_total{result="unauthorized"} 3' in metrics
    assert 'azp_hints_total{result="malformed"} 4' in metrics
    assert 'azp_hints_total{result="accepted"} 1' in metrics
    assert 'azp_hints_total{result="duplicate"} 1' in metrics
    assert 'azp_hints_total{result="stale"} 1' in metrics
    assert served.stop() == 0
    assert SECRET not in served.log and PAT not in served.log


def test_a_hook_from_the_emulator_creates_the_job_at_once(sim: Sim, serve: Callable[..., Served]) -> None:
    """We test: `subscribe` creates the subscription through the API (once, even when run twice); a job
    queued into an idle pool (idleInterval 60 s, so polling would not see it for a minute) gets its Job
    within seconds of the emulator's post."""
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write"))
    sim.azdo.hooks.delivery = HookDelivery(delay=(0.1, 0.3), late=0.0)
    served = serve(sim, "--insecure-http", "--interval", "1", "--idle-interval", "60")
    time.sleep(1.0)  # the first pass has polled the pool: from now on it is idle for 60 s
    subscribe = [
        "subscribe",
        "--config",
        str(sim.config_path),
        "--url",
        f"{served.url}{HOOK_PATH}",
        "--project",
        sim.azdo.project_id,
        "--secret-file",
        str(served.secret_file),
        "--allow-http",
    ]
    assert sim.cli(*subscribe).code == 0
    again = sim.cli(*subscribe)
    assert again.code == 0 and "already sends" in again.err
    assert len(sim.azdo.hooks.subscriptions()) == 1
    queued_at = time.monotonic()
    sim.queue("linux", 1, demands=("docker",))
    sim.wait_for(lambda: len(sim.jobs()) == 1, timeout=10, what="the Job of the hinted request")
    assert time.monotonic() - queued_at < 5
    assert [r.status for r in sim.azdo.hooks.records] == [200]
    assert SECRET not in served.log


def test_lost_hooks_cost_latency_not_jobs(sim: Sim, serve: Callable[..., Served]) -> None:
    """We test: with every hook lost the backstop poll (idleInterval) still creates the Job."""
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write"))
    sim.azdo.hooks.delivery = HookDelivery(loss=1.0)
    served = serve(sim, "--insecure-http", "--interval", "1", "--idle-interval", "3")
    printed = sim.cli(
        "subscribe",
        "--config",
        str(sim.config_path),
        "--url",
        f"{served.url}{HOOK_PATH}",
        "--project",
        sim.azdo.project_id,
        "--secret-file",
        str(served.secret_file),
        "--allow-http",
    )
    assert printed.code == 0, printed.text
    sim.queue("linux", 1, demands=("docker",))
    sim.wait_for(lambda: len(sim.jobs()) == 1, timeout=15, what="the Job found by the backstop poll")
    assert [r.lost for r in sim.azdo.hooks.records] == [True]


def test_receiver_survives_a_flood(sim: Sim, serve: Callable[..., Served]) -> None:
    """We test: 1500 hooks from 40 clients at once (authenticated and not, duplicates and new jobs) are
    all answered, the receiver still serves /healthz, and the flood costs at most one job-requests call
    per `interval` (1 s) for the pool, not one per hook."""
    served = serve(sim, "--insecure-http", "--interval", "1", "--idle-interval", "60")
    time.sleep(1.0)
    sim.azdo.reset_calls()
    started = time.monotonic()

    def post(index: int) -> int:
        headers = AUTH if index % 3 else {SECRET_HEADER: "nope"}
        try:
            return served.post(event(f"job-{index % 500}"), headers=headers).status_code
        except requests.ConnectionError:
            return 0  # refused while every connection slot was busy

    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(post, range(1500)))
    elapsed = time.monotonic() - started
    assert statuses.count(200) + statuses.count(401) + statuses.count(0) == 1500
    assert statuses.count(200) > 900
    assert requests.get(f"{served.url}/healthz", timeout=5).text == "ok\n"
    time.sleep(1.5)
    calls = sim.azdo.call_counts().get("GET pools/{poolId}/jobrequests", 0)
    assert calls <= elapsed + 1.5 + 2, (calls, elapsed)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_receiver_serves_https(sim: Sim, serve: Callable[..., Served], tmp_path: Path) -> None:
    """We test: with --tls-cert/--tls-key the receiver speaks HTTPS only (a plain HTTP post gets no
    answer), and a post over TLS is accepted; without TLS and without --insecure-http serve refuses to
    start, naming the flags."""
    cert, key = _self_signed(tmp_path)
    served = serve(sim, "--tls-cert", str(cert), "--tls-key", str(key), "--idle-interval", "60")
    assert served.url.startswith("https://")
    accepted = served.post(event("j-tls"), headers=AUTH, verify=str(cert))
    assert accepted.status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.post(served.url.replace("https://", "http://") + HOOK_PATH, data=b"{}", headers=AUTH, timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        served.post(event("j-2"), headers=AUTH, verify=True)
    refused = sim.cli("serve", "--config", str(sim.config_path), "--secret-file", str(served.secret_file))
    assert refused.code == 2 and "--tls-cert" in refused.err and "--insecure-http" in refused.err
    assert ssl.OPENSSL_VERSION


def test_subscribe_print_shows_the_subscription_without_the_secret(sim: Sim, tmp_path: Path) -> None:
    """We test: `subscribe --print` prints one subscription per project with the event, the Waiting filter
    and the consumer, never the secret, and creates nothing; an http:// URL is refused; a PAT without the
    Service Hooks scope gets exit 2 naming the scope."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    common = ["subscribe", "--config", str(sim.config_path), "--secret-file", str(secret_file)]
    printed = sim.cli(
        *common, "--url", "https://hooks.example.com/hooks/azure-devops", "--project", "a", "--project", "b", "--print"
    )
    assert printed.code == 0, printed.text
    bodies = json.loads(printed.out)
    assert [b["publisherInputs"] for b in bodies] == [
        {"projectId": "a", "jobStateId": "Waiting"},
        {"projectId": "b", "jobStateId": "Waiting"},
    ]
    assert {b["eventType"] for b in bodies} == {EVENT_TYPE}
    assert {b["consumerId"] for b in bodies} == {"webHooks"}
    assert SECRET not in printed.text
    assert sim.azdo.hooks.subscriptions() == []
    insecure = sim.cli(*common, "--url", "http://hooks.example.com/x", "--project", "a")
    assert insecure.code == 2 and "https://" in insecure.err
    unscoped = sim.cli(*common, "--url", "https://hooks.example.com/x", "--project", sim.azdo.project_id)
    assert unscoped.code == 2 and "vso.hooks_write" in unscoped.err


TWO_POOLS = {
    **WORLD,
    "pools": [
        {**WORLD["pools"][0], "name": name, "templates": [{"name": "default", "capabilities": {"docker": ""}}]}
        for name in ("linux", "gpu")
    ],
}


def test_a_job_in_a_pool_the_project_never_used_is_found_at_once(
    make_sim: Callable[..., Sim], serve: Callable[..., Served]
) -> None:
    """We test: after a first hinted job taught the receiver that the project uses pool 'linux', a job of
    the same project in pool 'gpu' is still created within seconds (the event names no pool: when the
    job is not in the project's known pools, the others are polled next), with idleInterval 60 s."""
    sim = make_sim(TWO_POOLS)
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write"))
    sim.azdo.hooks.delivery = HookDelivery(delay=(0.1, 0.3), late=0.0)
    served = serve(sim, "--insecure-http", "--interval", "1", "--idle-interval", "60")
    created = sim.azdo.hooks.create(
        subscription_body(
            project_id=sim.azdo.project_id, url=f"{served.url}{HOOK_PATH}", username="azp", password=SECRET
        ),
        identity={},
    )
    assert created["status"] == "enabled"
    time.sleep(1.0)
    sim.queue("linux", 1, demands=("docker",), duration=60)
    sim.wait_for(lambda: len(sim.jobs()) == 1, timeout=10, what="the Job in pool linux")
    queued_at = time.monotonic()
    sim.queue("gpu", 1, demands=("docker",), duration=60)
    sim.wait_for(lambda: len(sim.jobs()) == 2, timeout=15, what="the Job in pool gpu")
    assert time.monotonic() - queued_at < 8


PROJECT_POOLS = {
    **WORLD,
    "projects": ["web", "docs"],
    "pools": [
        {
            **WORLD["pools"][0],
            "name": name,
            "projects": projects,
            "templates": [{"name": "default", "capabilities": {"docker": ""}}],
        }
        for name, projects in (("linux", ["project"]), ("gpu", ["web"]))
    ],
}
"""Pool linux serves the default project, gpu serves web; project docs uses neither."""


def test_subscribe_finds_the_projects_and_check_verifies_them(make_sim: Callable[..., Sim], tmp_path: Path) -> None:
    """We test: without --project, `subscribe` subscribes exactly the projects with an agent queue for one of
    the pools (not docs), and says which scope it lacks without vso.project; `check --hooks-url` fails a row per
    project until the subscriptions exist, then passes them, and fails without the Service Hooks read scope."""
    sim = make_sim(PROJECT_POOLS)
    web = sim.azdo.projects.require("web").project_id
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    url = "http://127.0.0.1:9/hooks/azure-devops"
    subscribe = ["subscribe", "--config", str(sim.config_path), "--secret-file", str(secret_file), "--url", url]
    check = ["check", "--hooks-url", url]
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write"))
    unscoped = sim.cli(*subscribe, "--allow-http")
    assert unscoped.code == 2 and "vso.project" in unscoped.err and "--project" in unscoped.err
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write", "vso.project"))
    before = sim.cli(*check)
    assert before.code == 1, before.text
    for project in (sim.azdo.project_id, web):
        assert re.search(rf"service hook for project {project}\s+FAILED\s+no subscription sends", before.out)
    assert "docs" not in before.out and sim.azdo.projects.require("docs").project_id not in before.out
    assert sim.cli(*subscribe, "--allow-http").code == 0
    subscribed = {s["publisherInputs"]["projectId"] for s in sim.azdo.hooks.subscriptions()}
    assert subscribed == {sim.azdo.project_id, web}
    after = sim.cli(*check)
    assert after.code == 0, after.text
    assert re.search(rf"service hook for project {web}\s+ok\s+sends to {url}", after.out)
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.project"))
    unreadable = sim.cli(*check)
    assert unreadable.code == 1 and re.search(r"service hooks\s+FAILED.*vso\.hooks", unreadable.out)


def test_a_hint_polls_only_the_pools_of_its_project(make_sim: Callable[..., Sim], serve: Callable[..., Served]) -> None:
    """We test: `serve` reads which pools each project has a queue for, so the first hint of project web (its
    map of pools not learned from any job yet) polls pool gpu and not linux, which serves another project;
    the job's Job is created within seconds with idleInterval 60 s."""
    sim = make_sim(PROJECT_POOLS)
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write", "vso.project"))
    sim.azdo.hooks.delivery = HookDelivery(delay=(0.1, 0.3), late=0.0)
    served = serve(sim, "--insecure-http", "--interval", "1", "--idle-interval", "60")
    web = sim.azdo.projects.require("web").project_id
    for project in (sim.azdo.project_id, web):
        body = subscription_body(project_id=project, url=f"{served.url}{HOOK_PATH}", username="azp", password=SECRET)
        sim.azdo.hooks.create(body, identity={})
    time.sleep(1.5)  # the first passes have polled both pools: from now on they are idle for 60 s

    def polls(pool: str) -> int:
        return sum(1 for c in sim.azdo.calls() if c.path.endswith(f"/pools/{sim.pool_ids[pool]}/jobrequests"))

    linux_before = polls("linux")
    queued_at = time.monotonic()
    sim.azdo.queue_request(sim.pool_ids["gpu"], demands=("docker",), duration=30, project="web")
    sim.wait_for(lambda: len(sim.jobs()) == 1, timeout=10, what="the Job of web's job in pool gpu")
    assert time.monotonic() - queued_at < 5
    time.sleep(1.0)
    assert polls("linux") == linux_before, "the hint of project web polled pool linux"
    assert "pools by project" in served.log


def test_a_queue_added_after_start_is_learned_from_the_backstop(
    make_sim: Callable[..., Sim], serve: Callable[..., Served]
) -> None:
    """We test: when the default project gets a queue for pool gpu after `serve` read the queues, the backstop
    poll (idleInterval 12 s) finds its first job there; from then on gpu counts as one of the project's pools,
    so a later job of that project in gpu, queued just after gpu's idle poll, is created within seconds of its
    hint rather than at the next idle poll."""
    sim = make_sim(PROJECT_POOLS)
    sim.azdo.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write", "vso.project"))
    sim.azdo.hooks.delivery = HookDelivery(delay=(0.1, 0.3), late=0.0)
    served = serve(sim, "--insecure-http", "--interval", "1", "--idle-interval", "12")
    body = subscription_body(
        project_id=sim.azdo.project_id, url=f"{served.url}{HOOK_PATH}", username="azp", password=SECRET
    )
    sim.azdo.hooks.create(body, identity={})
    sim.wait_for(lambda: "pools by project" in served.log, timeout=20, what="serve to read the queues")
    sim.azdo.projects.add_queue(sim.azdo.project_id, sim.pool_ids["gpu"])

    def has_job(request_id: int) -> bool:
        return any(j["metadata"]["labels"].get(LABEL_REQUEST_ID) == str(request_id) for j in sim.jobs())

    first = sim.azdo.queue_request(sim.pool_ids["gpu"], demands=("docker",), duration=1, project=sim.azdo.project_id)
    sim.wait_for(lambda: has_job(first), timeout=30, what="the backstop to find the job in gpu")
    sim.wait_for(lambda: not sim.requests("gpu", unfinished_only=True), timeout=30, what="gpu's job to end")

    def gpu_polls() -> list[float]:
        gpu = sim.pool_ids["gpu"]
        return [c.time for c in sim.azdo.calls() if c.path.endswith(f"/pools/{gpu}/jobrequests")]

    # Once gpu is idle again (no poll for 3 s), wait for its idle poll: the next one is 12 s away.
    sim.wait_for(lambda: time.time() - gpu_polls()[-1] > 3, timeout=60, what="gpu to be idle")
    polled = len(gpu_polls())
    sim.wait_for(lambda: len(gpu_polls()) > polled, timeout=20, what="gpu's idle poll")
    queued_at = time.monotonic()
    second = sim.azdo.queue_request(sim.pool_ids["gpu"], demands=("docker",), duration=1, project=sim.azdo.project_id)
    sim.wait_for(lambda: has_job(second), timeout=20, what="the hinted Job in gpu")
    assert time.monotonic() - queued_at < 5


THREE_POOLS = {
    **WORLD,
    "pools": [
        {**WORLD["pools"][0], "name": name, "templates": [{"name": "default", "capabilities": {"docker": ""}}]}
        for name in ("linux", "gpu", "spare")
    ],
}


def test_the_run_timeline_names_the_pool_of_a_job_in_a_new_pool(
    make_sim: Callable[..., Sim], serve: Callable[..., Served]
) -> None:
    """We test: with the Build read scope, a hinted job not found in the pools its project's jobs were seen in
    (linux) is looked up in its run's timeline, and only the pool of its queue (gpu) is polled for it, not
    pool spare, which the project may use too; its Job is created within seconds (idleInterval 60 s)."""
    sim = make_sim(THREE_POOLS)
    scopes = ("vso.agentpools_manage", "vso.hooks_write", "vso.project", "vso.build")
    sim.azdo.add_pat(PAT, scopes=scopes)
    sim.azdo.hooks.delivery = HookDelivery(delay=(0.1, 0.3), late=0.0)
    served = serve(sim, "--insecure-http", "--interval", "1", "--idle-interval", "60")
    body = subscription_body(
        project_id=sim.azdo.project_id, url=f"{served.url}{HOOK_PATH}", username="azp", password=SECRET
    )
    sim.azdo.hooks.create(body, identity={})
    time.sleep(1.5)
    sim.queue("linux", 1, demands=("docker",), duration=60)
    sim.wait_for(lambda: len(sim.jobs()) == 1, timeout=10, what="the Job in pool linux")
    time.sleep(1.5)  # the first hint polled every pool; they are idle again

    def polls(pool: str) -> int:
        return sum(1 for c in sim.azdo.calls() if c.path.endswith(f"/pools/{sim.pool_ids[pool]}/jobrequests"))

    spare_before = polls("spare")
    queued_at = time.monotonic()
    sim.queue("gpu", 1, demands=("docker",), duration=60)
    sim.wait_for(lambda: len(sim.jobs()) == 2, timeout=15, what="the Job in pool gpu")
    assert time.monotonic() - queued_at < 5
    time.sleep(1.0)
    assert polls("spare") == spare_before, "the hint polled pool spare"
    assert any(c.path.endswith("/timeline") for c in sim.azdo.calls())
