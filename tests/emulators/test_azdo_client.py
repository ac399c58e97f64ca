"""We test: reconciler.azdo (the product's client) against the Azure DevOps emulator over HTTP:
one call per resource kind, credentials errors, retries with Retry-After, faults survived."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from reconciler.azdo import MAX_RETRY_AFTER, AzureDevOps, _drop_matched_agents, job_request_from_json
from reconciler.deadline import Deadline, DeadlineReached
from reconciler.errors import AuthError, ForbiddenError, TransientError

PAT = "client-test-pat-9d1c"


@pytest.fixture
def emulator() -> Iterator[AzureDevOpsEmulator]:
    emu = AzureDevOpsEmulator("contoso")
    emu.add_pat(PAT)
    emu.add_pat("reader-pat", scopes=("vso.agentpools",))
    emu.start()
    pool = emu.add_pool("linux")
    emu.add_pool("Windows Builds")
    emu.add_agent(pool["id"], "azp-linux-1-abcde", status="offline", capabilities={"docker": ""})
    yield emu
    emu.stop()


def client(emu: AzureDevOpsEmulator, pat: str = PAT, **kwargs: float) -> AzureDevOps:
    sleeps: list[float] = []
    azdo = AzureDevOps(
        emu.base_url,
        pat=pat,
        timeout=kwargs.get("timeout", 5.0),
        retries=int(kwargs.get("retries", 3)),
        backoff=0.01,
        deadline=Deadline(sleep_for=sleeps.append),
    )
    azdo.sleeps = sleeps  # type: ignore[attr-defined]
    return azdo


def test_reads_with_one_call_each(emulator: AzureDevOpsEmulator) -> None:
    """We test: pools (all names, one call), job requests and agents of a pool, one call each."""
    azdo = client(emulator)
    ids = azdo.pools_by_name(["linux", "Windows Builds", "missing"])
    assert set(ids) == {"linux", "Windows Builds"}
    emulator.queue_request(ids["linux"], demands=("docker",), duration=60)
    requests_ = azdo.job_requests(ids["linux"])
    agents = azdo.agents(ids["linux"])
    assert [r.demands for r in requests_] == [("docker",)]
    assert [a.name for a in agents] == ["azp-linux-1-abcde"] and agents[0].capabilities["docker"] == ""
    assert dict(azdo.calls) == {"GET pools": 1, "GET pools/{poolId}/jobrequests": 1, "GET pools/{poolId}/agents": 1}


def test_job_requests_are_read_without_their_matched_agents(emulator: AzureDevOpsEmulator) -> None:
    """We test: matchedAgents (every agent that can serve a request, on every unfinished request: the bulk of
    the payload) is dropped while parsing, in one call, and the requests read the same as from the whole
    payload (queued and running ones, the running one's reserved agent)."""
    azdo = client(emulator)
    pool_id = azdo.pools_by_name(["linux"])["linux"]
    for index in range(3):
        emulator.add_agent(pool_id, f"azp-linux-{index + 2}-abcde", status="offline", capabilities={"docker": ""})
    running = emulator.queue_request(pool_id, demands=("docker",), duration=600)
    emulator.add_agent(
        pool_id, "azp-linux-9-abcde", status="online", capabilities={"docker": ""}, assigned_request=running
    )
    emulator.queue_request(pool_id, demands=("docker",), duration=60)
    url = f"{emulator.base_url}/_apis/distributedtask/pools/{pool_id}/jobrequests"
    params = {"completedRequestCount": "0", "api-version": "7.0"}
    body = requests.get(url, params=params, auth=("", PAT), timeout=5).content
    whole = json.loads(body)["value"]
    assert [len(item["matchedAgents"]) for item in whole] == [5, 5]
    skimmed = json.loads(body, object_hook=_drop_matched_agents)["value"]
    assert all("matchedAgents" not in item for item in skimmed)
    assert [{k: v for k, v in item.items() if k != "matchedAgents"} for item in whole] == skimmed
    requests_ = azdo.job_requests(pool_id)
    assert requests_ == [job_request_from_json(item) for item in whole]
    assert [(r.queued, r.reserved_agent_name) for r in requests_] == [(False, "azp-linux-9-abcde"), (True, None)]
    assert azdo.calls["GET pools/{poolId}/jobrequests"] == 1


def test_unknown_pat_is_a_credentials_error(emulator: AzureDevOpsEmulator) -> None:
    """We test: a PAT the service does not know gives AuthError naming the scope to check."""
    with pytest.raises(AuthError, match=r"the PAT was rejected .*Agent Pools \(read & manage\)"):
        client(emulator, pat="wrong").pools_by_name(["linux"])


def test_sign_in_page_is_a_credentials_error(emulator: AzureDevOpsEmulator) -> None:
    """We test: the 203 HTML sign-in page (no Suppress header) is recognised as rejected credentials."""
    azdo = client(emulator, pat="wrong")
    del azdo.session.headers["X-TFS-FedAuthRedirect"]
    with pytest.raises(AuthError, match="HTTP 203"):
        azdo.pools_by_name(["linux"])


def test_read_only_pat_cannot_manage(emulator: AzureDevOpsEmulator) -> None:
    """We test: a read-only PAT observes fine but a write is refused as that object only (not an AuthError,
    which would stop every pool) with the missing scope and the object named."""
    azdo = client(emulator, pat="reader-pat")
    pool_id = azdo.pools_by_name(["linux"])["linux"]
    with pytest.raises(ForbiddenError, match="read & manage") as caught:
        azdo.delete_agent(pool_id, 1)
    assert not isinstance(caught.value, AuthError)
    assert f"DELETE /contoso/_apis/distributedtask/pools/{pool_id}/agents/1 was refused" in str(caught.value)


@pytest.mark.parametrize("kind", ["status", "reset", "truncated", "timeout"])
def test_transient_faults_are_retried(emulator: AzureDevOpsEmulator, kind: str) -> None:
    """We test: a 500, a reset connection, a truncated body and a timeout are retried and the call succeeds."""
    azdo = client(emulator, timeout=0.3)
    emulator.hang_seconds = 1.0
    emulator.inject_fault("GET", "pools", kind=kind, status=500, times=1)
    assert azdo.pools_by_name(["linux"])
    assert azdo.calls["GET pools"] == 2


def test_throttling_honours_retry_after(emulator: AzureDevOpsEmulator) -> None:
    """We test: 429 with Retry-After waits that long before the retry."""
    azdo = client(emulator)
    emulator.inject_fault("GET", "pools", kind="status", status=429, retry_after=7, times=1)
    assert azdo.pools_by_name(["linux"])
    assert azdo.sleeps[0] >= 7  # type: ignore[attr-defined]


def test_a_retry_after_of_an_hour_is_capped(emulator: AzureDevOpsEmulator) -> None:
    """We test: a Retry-After of 3600 s is waited for 60 s at most (MAX_RETRY_AFTER), not an hour."""
    azdo = client(emulator)
    emulator.inject_fault("GET", "pools", kind="status", status=429, retry_after=3600, times=1)
    assert azdo.pools_by_name(["linux"])
    assert MAX_RETRY_AFTER <= azdo.sleeps[0] < MAX_RETRY_AFTER + 1  # type: ignore[attr-defined]


def test_no_retry_waits_past_the_deadline(emulator: AzureDevOpsEmulator) -> None:
    """We test: with 2 s left before the run's deadline, a failing call is not retried after a wait that
    would pass it, and no call is made once the deadline has passed."""
    waits: list[float] = []
    deadline = Deadline(at=time.monotonic() + 2, sleep_for=waits.append)
    azdo = AzureDevOps(emulator.base_url, pat=PAT, timeout=5, retries=5, backoff=0.5, deadline=deadline)
    emulator.inject_fault("GET", "pools", kind="status", status=429, retry_after=30, times=10)
    with pytest.raises(TransientError, match="HTTP 429"):
        azdo.pools_by_name(["linux"])
    assert waits == [] and azdo.calls["GET pools"] == 1
    deadline.at = time.monotonic()
    with pytest.raises(DeadlineReached, match="deadline has passed"):
        azdo.pools_by_name(["linux"])
    assert azdo.calls["GET pools"] == 1


def test_gives_up_after_retries(emulator: AzureDevOpsEmulator) -> None:
    """We test: a fault that outlasts the retries becomes a TransientError that names the route."""
    azdo = client(emulator, retries=2)
    emulator.inject_fault("GET", "pools", kind="status", status=503, times=10)
    with pytest.raises(TransientError, match="GET pools: HTTP 503"):
        azdo.pools_by_name(["linux"])
    assert azdo.calls["GET pools"] == 3


def test_html_instead_of_json_is_a_credentials_error(emulator: AzureDevOpsEmulator) -> None:
    """We test: a 200 with an HTML page (a sign-in page behind a proxy) is not parsed as data."""
    azdo = client(emulator)
    emulator.inject_fault("GET", "pools", kind="html", times=1)
    with pytest.raises(AuthError, match="instead of JSON"):
        azdo.pools_by_name(["linux"])


def test_placeholder_registration_and_drain_calls(emulator: AzureDevOpsEmulator) -> None:
    """We test: a placeholder registers disabled with its capabilities; enable/disable and delete work."""
    azdo = client(emulator)
    pool_id = azdo.pools_by_name(["linux"])["linux"]
    agent_id = azdo.register_placeholder(
        pool_id,
        name="azp-placeholder-linux-docker",
        capabilities={"docker": "", "Agent.Version": "4.261.0"},
        version="4.261.0",
    )
    agent = azdo.agent(pool_id, agent_id)
    assert agent is not None and not agent.enabled and agent.status == "offline"
    listed = {a.name: a for a in azdo.agents(pool_id)}
    assert listed["azp-placeholder-linux-docker"].capabilities["docker"] == ""
    azdo.update_placeholder(
        pool_id,
        agent_id,
        name="azp-placeholder-linux-docker",
        capabilities={"java": "17", "Agent.Version": "4.261.0"},
        version="4.261.0",
    )
    listed = {a.name: a for a in azdo.agents(pool_id)}
    assert "java" in listed["azp-placeholder-linux-docker"].capabilities
    assert not listed["azp-placeholder-linux-docker"].enabled
    assert azdo.delete_agent(pool_id, agent_id) is True
    assert azdo.delete_agent(pool_id, agent_id) is False
    assert azdo.agent(pool_id, agent_id) is None
