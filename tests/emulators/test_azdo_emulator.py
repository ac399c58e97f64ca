"""We test: the Azure DevOps emulator answers like the service (reference azure-devops-api.md) over
real HTTP with `requests`: routes, shapes, auth, api-version, throttling, scheduler and faults."""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from azp_simulation.azdo_emulator import (
    AgentState,
    AzureDevOpsEmulator,
    EmulatorAuthError,
    EmulatorConflictError,
    RateLimit,
)
from azp_simulation.azdo_support import FaultKind
from azp_simulation.service_demands import DemandError

PAT = "manage-pat"
READ_PAT = "read-pat"
EXPIRED_PAT = "expired-pat"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")
KEY = {"exponent": "AQAB", "modulus": base64.b64encode(b"\x80" + b"\x01" * 255).decode()}
DOCKER = {"docker": "/usr/bin/docker", "Agent.Version": "4.261.0", "Agent.OS": "Linux"}


class FakeClock:
    """A settable clock so scheduler tests need no sleeping."""

    def __init__(self) -> None:
        self.now = 1_772_444_400.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def emulator() -> Iterator[AzureDevOpsEmulator]:
    emu = AzureDevOpsEmulator("contoso")
    emu.add_pat(PAT)
    emu.add_pat(READ_PAT, scopes=("vso.agentpools",), identity="Reader")
    emu.add_pat(EXPIRED_PAT, expired=True)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.auth = ("", PAT)
        s.headers["X-TFS-FedAuthRedirect"] = "Suppress"
        yield s


def api(emu: AzureDevOpsEmulator, path: str) -> str:
    return f"{emu.base_url}/_apis/{path}"


def get(s: requests.Session, emu: AzureDevOpsEmulator, path: str, **params: Any) -> requests.Response:
    return s.get(api(emu, path), params={"api-version": "7.1", **params}, timeout=5)


def send(
    s: requests.Session, method: str, emu: AzureDevOpsEmulator, path: str, body: Any = None, **params: Any
) -> requests.Response:
    return s.request(method, api(emu, path), params={"api-version": "7.1", **params}, json=body, timeout=5)


def new_agent_body(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": "4.261.0",
        "osDescription": "Linux 6.6",
        "maxParallelism": 1,
        "provisioningState": "Provisioned",
        "systemCapabilities": dict(DOCKER),
        "authorization": {"publicKey": KEY},
        **extra,
    }


def assert_error(response: requests.Response, status: int, type_key: str, text: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) >= {"$id", "innerException", "message", "typeName", "typeKey", "errorCode", "eventId"}
    assert body["typeKey"] == type_key
    assert body["typeName"].split(",")[0].endswith("." + type_key)
    assert text in body["message"]
    return body


def test_connection_data_names_the_authenticated_user(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: connectionData proves the credential and names its identity."""
    response = get(session, emulator, "connectionData")
    assert response.status_code == 200
    data = response.json()
    assert data["authenticatedUser"]["providerDisplayName"] == "Build Admin"
    assert {"id", "descriptor"} <= set(data["authenticatedUser"])
    assert data["instanceId"] and "locationServiceData" in data


def test_pools_list_filters_and_shape(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: pools come as {count, value} with the service's fields; poolName/poolType/poolIds filter."""
    linux = emulator.add_pool("linux k8s")
    emulator.add_pool("deploy", poolType="deployment")
    emulator.add_pool("windows", pool_id=40)
    everything = get(session, emulator, "distributedtask/pools").json()
    assert everything["count"] == 3 == len(everything["value"])
    pool = get(session, emulator, "distributedtask/pools", poolName="LINUX K8S").json()["value"]
    assert [p["id"] for p in pool] == [linux["id"]]
    assert set(pool[0]) >= {
        "id",
        "name",
        "isHosted",
        "isLegacy",
        "poolType",
        "size",
        "options",
        "autoProvision",
        "autoSize",
        "autoUpdate",
        "scope",
        "createdOn",
        "owner",
    }
    assert "targetSize" not in pool[0] and "agentCloudId" not in pool[0]
    assert TIMESTAMP.match(pool[0]["createdOn"])
    automation = get(session, emulator, "distributedtask/pools", poolType="automation").json()
    assert sorted(p["name"] for p in automation["value"]) == ["linux k8s", "windows"]
    by_ids = get(session, emulator, "distributedtask/pools", poolIds=f"40,{linux['id']}").json()
    assert sorted(p["id"] for p in by_ids["value"]) == sorted([40, linux["id"]])
    assert get(session, emulator, "distributedtask/pools/40").json()["name"] == "windows"
    assert_error(get(session, emulator, "distributedtask/pools/999"), 404, "TaskAgentPoolNotFoundException")


def test_api_version_required_and_checked(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: no api-version is a 400 VssVersionNotSpecifiedException; the Accept header works; too new fails."""
    emulator.add_pool("windows", pool_id=40)
    url = api(emulator, "distributedtask/pools/40")
    body = assert_error(session.get(url, timeout=5), 400, "VssVersionNotSpecifiedException", "No api-version")
    assert body["$id"] == "1" and body["innerException"] is None and body["eventId"] == 3000
    assert body["typeName"].startswith("Microsoft.VisualStudio.Services.WebApi.VssVersionNotSpecifiedException")
    ok = session.get(url, headers={"Accept": "application/json;api-version=7.1-preview.1"}, timeout=5)
    assert ok.status_code == 200 and "api-version=7.1-preview.1" in ok.headers["Content-Type"]
    assert session.get(url, params={"api-version": "5.1-preview.1"}, timeout=5).status_code == 200
    assert_error(session.get(url, params={"api-version": "9.0"}, timeout=5), 400, "VssVersionOutOfRangeException")
    assert_error(session.get(url, params={"api-version": "7.2"}, timeout=5), 400, "VssInvalidPreviewVersionException")
    assert_error(session.get(url, params={"api-version": "latest"}, timeout=5), 400, "VssInvalidApiVersionException")


def test_keda_routes_answer_without_api_version(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: the GETs KEDA's scaler sends without api-version (pool by name, a pool's jobrequests with
    $top) are served, with no api-version in the Content-Type; other routes and a write still need one."""
    emulator.add_pool("windows", pool_id=40)
    pools = session.get(api(emulator, "distributedtask/pools"), params={"poolName": "windows"}, timeout=5)
    assert pools.status_code == 200, pools.text
    assert [p["id"] for p in pools.json()["value"]] == [40]
    assert "api-version" not in pools.headers["Content-Type"]
    jobs = session.get(api(emulator, "distributedtask/pools/40/jobrequests"), params={"$top": "250"}, timeout=5)
    assert jobs.status_code == 200, jobs.text
    assert set(jobs.json()) == {"count", "value"}
    agents = session.get(api(emulator, "distributedtask/pools/40/agents"), timeout=5)
    assert_error(agents, 400, "VssVersionNotSpecifiedException", 'the "GET" request')
    created = session.post(api(emulator, "distributedtask/pools/40/agents"), json=new_agent_body("a1"), timeout=5)
    assert_error(created, 400, "VssVersionNotSpecifiedException", 'the "POST" request')


def test_sign_in_page_without_suppress_and_401_with_it(emulator: AzureDevOpsEmulator) -> None:
    """We test: a GET with no or an unknown PAT gets 203 + HTML, or 401 TF400813 when redirects are suppressed."""
    url = api(emulator, "distributedtask/pools") + "?api-version=7.1"
    anonymous = requests.get(url, timeout=5, allow_redirects=False)
    assert anonymous.status_code == 203 and anonymous.headers["Content-Type"].startswith("text/html")
    assert requests.get(url, auth=("", "nope"), timeout=5).status_code == 203
    refused = requests.get(url, auth=("", "nope"), headers={"X-TFS-FedAuthRedirect": "Suppress"}, timeout=5)
    assert_error(refused, 401, "UnauthorizedRequestException", "TF400813")
    assert refused.headers["WWW-Authenticate"].startswith('Basic realm="https://')
    assert requests.post(url, auth=("", "nope"), json={}, timeout=5).status_code == 401


def test_pat_whitespace_is_stripped_and_user_name_ignored(emulator: AzureDevOpsEmulator) -> None:
    """We test: like the service, a trailing newline from a Secret file and any user name still work."""
    url = api(emulator, "distributedtask/pools") + "?api-version=7.1"
    assert requests.get(url, auth=("VstsAgent", PAT + "\n"), timeout=5).status_code == 200


def test_expired_pat_is_401_even_without_suppress(emulator: AzureDevOpsEmulator) -> None:
    """We test: an expired PAT gets 401 TF400813 on a GET."""
    response = requests.get(
        api(emulator, "distributedtask/pools") + "?api-version=7.1", auth=("", EXPIRED_PAT), timeout=5
    )
    assert_error(response, 401, "UnauthorizedRequestException", "TF400813")


def test_bearer_tokens(emulator: AzureDevOpsEmulator) -> None:
    """We test: a registered Entra ID token is accepted as Bearer, an unknown one is not."""
    emulator.add_bearer("jwt-1")
    url = api(emulator, "connectionData") + "?api-version=7.1-preview"
    assert requests.get(url, headers={"Authorization": "Bearer jwt-1"}, timeout=5).status_code == 200
    assert (
        requests.get(
            url, headers={"Authorization": "Bearer jwt-2", "X-TFS-FedAuthRedirect": "Suppress"}, timeout=5
        ).status_code
        == 401
    )


def test_read_scope_may_read_but_not_write(emulator: AzureDevOpsEmulator) -> None:
    """We test: vso.agentpools lists agents; a write needs vso.agentpools_manage (403 naming the scope)."""
    pool = emulator.add_pool("linux")
    agent = emulator.add_agent(pool["id"], "a1")
    with requests.Session() as reader:
        reader.auth = ("", READ_PAT)
        assert get(reader, emulator, f"distributedtask/pools/{pool['id']}/agents").status_code == 200
        refused = send(
            reader,
            "PATCH",
            emulator,
            f"distributedtask/pools/{pool['id']}/agents/{agent['id']}",
            {"id": agent["id"], "enabled": False},
        )
        body = assert_error(refused, 403, "AccessCheckException", "needs the following permission(s)")
        assert "vso.agentpools_manage" in body["message"]
        manageable = get(reader, emulator, "distributedtask/pools", actionFilter="manage").json()
        assert manageable["count"] == 0
    assert emulator.agents(pool["id"])[0]["enabled"] is True


def test_unknown_route_404_and_wrong_method_405(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: unknown routes and organizations give 404 JSON, a wrong method 405."""
    assert_error(get(session, emulator, "distributedtask/nothing"), 404, "VssResourceNotFoundException")
    wrong_org = session.get(
        emulator.base_url.replace("/contoso", "/fabrikam") + "/_apis/connectionData",
        params={"api-version": "7.1"},
        timeout=5,
    )
    assert wrong_org.status_code == 404
    response = send(session, "DELETE", emulator, "distributedtask/pools")
    assert response.status_code == 405 and "GET" in response.headers["Allow"]


def test_agent_registration_like_config_sh(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: POST agents validates the body, returns id + authorization, 409 on a duplicate name."""
    pool = emulator.add_pool("linux")
    path = f"distributedtask/pools/{pool['id']}/agents"
    created = send(session, "POST", emulator, path, new_agent_body("azp-linux-1"))
    assert created.status_code == 200, created.text
    agent = created.json()
    assert isinstance(agent["id"], int)
    assert agent["authorization"]["clientId"] and agent["authorization"]["authorizationUrl"].startswith("https://")
    assert agent["status"] == "offline" and agent["enabled"] is True and agent["provisioningState"] == "Provisioned"
    duplicate = send(session, "POST", emulator, path, new_agent_body("azp-linux-1"))
    assert_error(
        duplicate, 409, "TaskAgentExistsException", "Pool linux already contains an agent with name azp-linux-1."
    )
    no_key = new_agent_body("azp-linux-2")
    del no_key["authorization"]
    assert send(session, "POST", emulator, path, no_key).status_code == 400
    assert send(session, "POST", emulator, path, {"version": "4.261.0"}).status_code == 400
    disabled = send(session, "POST", emulator, path, new_agent_body("placeholder", enabled=False)).json()
    assert disabled["enabled"] is False
    assert get(session, emulator, f"distributedtask/pools/{pool['id']}").json()["size"] == 2
    assert emulator.stats.agents_registered == 2


def test_agent_list_flags_control_optional_fields(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: capabilities, assignedRequest and lastCompletedRequest appear only with their flags."""
    clock = FakeClock()
    emulator.clock = clock
    pool = emulator.add_pool("linux")
    busy = emulator.add_agent(pool["id"], "busy", capabilities=DOCKER)
    emulator.add_agent(pool["id"], "idle", capabilities=DOCKER, enabled=False)
    emulator.agent_online(busy["id"], once=False)
    first = emulator.queue_request(pool["id"], demands=["docker"], duration=10)
    emulator.tick()
    clock.now += 11
    emulator.tick()
    second = emulator.queue_request(pool["id"], demands=["docker"], duration=10)
    emulator.tick()
    path = f"distributedtask/pools/{pool['id']}/agents"
    plain = get(session, emulator, path).json()["value"]
    assert plain[0]["name"] == "busy"
    for key in ("systemCapabilities", "userCapabilities", "assignedRequest", "lastCompletedRequest"):
        assert key not in plain[0]
    full = get(
        session,
        emulator,
        path,
        includeCapabilities="true",
        includeAssignedRequest="true",
        includeLastCompletedRequest="true",
    ).json()["value"]
    assert full[0]["systemCapabilities"]["docker"] == "/usr/bin/docker"
    assert full[0]["assignedRequest"]["requestId"] == second
    assert full[0]["lastCompletedRequest"]["requestId"] == first
    assert full[0]["lastCompletedRequest"]["result"] == "succeeded"
    assert "assignedRequest" not in full[1]
    named = get(session, emulator, path, agentName="IDLE").json()
    assert named["count"] == 1 and named["value"][0]["enabled"] is False
    one = get(session, emulator, f"{path}/{busy['id']}", includeAssignedRequest="true").json()
    assert one["assignedRequest"]["requestId"] == second and "systemCapabilities" not in one
    assert_error(get(session, emulator, f"{path}/999"), 404, "TaskAgentNotFoundException")


def test_patch_put_and_user_capabilities(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: PATCH is partial, PUT replaces but keeps id and user capabilities, usercapabilities PUT."""
    pool = emulator.add_pool("linux")
    agent = send(session, "POST", emulator, f"distributedtask/pools/{pool['id']}/agents", new_agent_body("a1")).json()
    path = f"distributedtask/pools/{pool['id']}/agents/{agent['id']}"
    patched = send(session, "PATCH", emulator, path, {"id": agent["id"], "name": "a1", "enabled": False}).json()
    assert patched["enabled"] is False and patched["version"] == "4.261.0"
    caps = send(session, "PUT", emulator, path + "/usercapabilities", {"gpu": "true"}).json()
    assert caps["userCapabilities"] == {"gpu": "true"}
    replaced = send(
        session,
        "PUT",
        emulator,
        path,
        new_agent_body("a1", version="4.262.0", id=agent["id"], systemCapabilities={"java": "17"}),
    ).json()
    assert replaced["id"] == agent["id"] and replaced["version"] == "4.262.0"
    assert replaced["systemCapabilities"] == {"java": "17"} and replaced["userCapabilities"] == {"gpu": "true"}
    assert send(session, "PATCH", emulator, path, {"id": 12345, "enabled": True}).status_code == 400


def test_delete_agent_refused_while_busy(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: DELETE of a busy agent is refused with the service's message; an idle one gets 204."""
    pool = emulator.add_pool("linux")
    agent = emulator.add_agent(pool["id"], "azp-linux-7f9c2", capabilities=DOCKER)
    emulator.agent_online(agent["id"], once=False)
    request_id = emulator.queue_request(pool["id"], demands=["docker"], duration=60)
    emulator.tick()
    path = f"distributedtask/pools/{pool['id']}/agents/{agent['id']}"
    refused = send(session, "DELETE", emulator, path)
    assert_error(
        refused, 400, "TaskAgentJobStillRunningException", 'Agent "azp-linux-7f9c2" is running a job for pool "linux"'
    )
    assert emulator.stats.busy_agent_deletes_refused == 1
    emulator.cancel_request(request_id)
    deleted = send(session, "DELETE", emulator, path)
    assert deleted.status_code == 204 and deleted.content == b""
    assert emulator.stats.agents_deleted == 1 and emulator.agents(pool["id"]) == []
    assert send(session, "DELETE", emulator, path).status_code == 404


def _seed_history(emulator: AzureDevOpsEmulator, clock: FakeClock) -> tuple[int, list[int]]:
    pool = emulator.add_pool("linux")
    worker = emulator.add_agent(pool["id"], "worker", capabilities=DOCKER)
    emulator.add_agent(pool["id"], "placeholder", capabilities=DOCKER, enabled=False)
    emulator.agent_online(worker["id"], once=False)
    ids = []
    for _ in range(3):
        ids.append(emulator.queue_request(pool["id"], demands=["docker"], duration=1))
        emulator.tick()
        clock.now += 2
        emulator.tick()
    ids.append(emulator.queue_request(pool["id"], demands=["docker"], duration=100))  # running
    emulator.tick()
    ids.append(emulator.queue_request(pool["id"], demands=["docker"], duration=100))  # queued
    emulator.tick()
    return pool["id"], ids


def test_jobrequests_query_shapes(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: no query = all; completedRequestCount=0 = unfinished with matchedAgents; $top = newest N of
    everything without matchedAgents, winning over completedRequestCount, with a continuation token."""
    clock = FakeClock()
    emulator.clock = clock
    pool_id, ids = _seed_history(emulator, clock)
    path = f"distributedtask/pools/{pool_id}/jobrequests"
    everything = get(session, emulator, path).json()
    assert [r["requestId"] for r in everything["value"]] == ids and everything["count"] == 5

    unfinished = get(session, emulator, path, completedRequestCount=0).json()["value"]
    assert [r["requestId"] for r in unfinished] == ids[3:]
    running, queued = unfinished
    assert running["reservedAgent"]["name"] == "worker" and "receiveTime" in running and "result" not in running
    assert TIMESTAMP.match(running["lockedUntil"]) and TIMESTAMP.match(running["assignTime"])
    for absent in ("assignTime", "receiveTime", "finishTime", "result", "reservedAgent", "lockedUntil"):
        assert absent not in queued
    assert sorted(a["name"] for a in queued["matchedAgents"]) == ["placeholder", "worker"]
    assert queued["matchesAllAgentsInPool"] is True
    assert set(queued) >= {
        "requestId",
        "queueTime",
        "demands",
        "poolId",
        "queueId",
        "planType",
        "planId",
        "jobId",
        "orchestrationId",
        "definition",
        "owner",
        "data",
        "priority",
        "scopeId",
        "hostId",
        "serviceOwner",
        "planGroup",
        "jobName",
    }
    assert queued["data"] == {"ParallelismTag": "Private", "IsScheduledKey": "False"}

    top = get(session, emulator, path, **{"$top": 2, "completedRequestCount": 0})
    page = top.json()["value"]
    assert [r["requestId"] for r in page] == [ids[4], ids[3]]
    assert all("matchedAgents" not in r for r in page)
    token = top.headers["X-MS-ContinuationToken"]
    rest = get(session, emulator, path, **{"$top": 5, "continuationToken": token})
    assert [r["requestId"] for r in rest.json()["value"]] == [ids[2], ids[1], ids[0]]
    assert "X-MS-ContinuationToken" not in rest.headers
    assert all(r["result"] == "succeeded" for r in rest.json()["value"])


def test_jobrequests_by_agent_and_single(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: agentId + completedRequestCount=N = current plus N finished; one request by id."""
    clock = FakeClock()
    emulator.clock = clock
    pool_id, ids = _seed_history(emulator, clock)
    worker = emulator.agent_id(pool_id, "worker")
    path = f"distributedtask/pools/{pool_id}/jobrequests"
    mine = get(session, emulator, path, agentId=worker, completedRequestCount=1).json()["value"]
    assert [r["requestId"] for r in mine] == [ids[2], ids[3]]
    assert len(get(session, emulator, path, agentIds=f"{worker}").json()["value"]) == 4
    one = get(session, emulator, f"{path}/{ids[0]}").json()
    assert one["requestId"] == ids[0] and one["result"] == "succeeded" and TIMESTAMP.match(one["finishTime"])
    assert_error(get(session, emulator, f"{path}/1"), 404, "TaskAgentJobRequestNotFoundException")
    assert get(session, emulator, path, completedRequestCount=-1).status_code == 400


def test_scheduler_matches_demands_and_fails_unmatchable_at_once() -> None:
    """We test: assignment by demands, oldest first; no matching registered agent = fails at queue time;
    a matching offline placeholder keeps the request waiting."""
    clock = FakeClock()
    emu = AzureDevOpsEmulator(clock=clock)
    pool = emu.add_pool("linux")
    emu.add_agent(pool["id"], "placeholder-java", capabilities={"java": "17"}, enabled=False)
    docker = emu.add_agent(pool["id"], "docker-1", capabilities=DOCKER)
    failed = emu.queue_request(pool["id"], demands=["gpu"])
    [record] = [r for r in emu.requests(pool["id"]) if r["requestId"] == failed]
    assert record["result"] == "failed" and record["finishTime"] == record["queueTime"]
    assert record["statusMessage"] == "No agent found in pool linux which satisfies the specified demands: gpu"
    java = emu.queue_request(pool["id"], demands=["java -equals 17"])
    clock.now += 1
    first = emu.queue_request(pool["id"], demands=["docker", "Agent.Version -gtVersion 2.182.1"], duration=5)
    clock.now += 1
    second = emu.queue_request(pool["id"], demands=["DOCKER"], duration=5)
    emu.tick()
    assert {r["requestId"] for r in emu.requests(pool["id"], unfinished_only=True)} == {java, first, second}
    emu.agent_online(docker["id"], once=False)
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[first]["reservedAgent"]["name"] == "docker-1" and "reservedAgent" not in by_id[second]
    assert "reservedAgent" not in by_id[java]
    clock.now += 5
    emu.tick()
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[first]["result"] == "succeeded" and by_id[second]["reservedAgent"]["name"] == "docker-1"
    assert emu.stats.jobs_failed == 1 and emu.stats.jobs_succeeded == 1 and emu.stats.jobs_assigned == 2
    timing = emu.stats.timings[first]
    assert timing.receive_time is not None and timing.finish_time == timing.receive_time + 5


def test_demands_follow_the_services_rules_not_the_products() -> None:
    """We test: matching, matchedAgents and queue-time failure use the service's demand rules
    (service_demands.py): `-gtVersion` passes on an equal version and 4.261 is below 4.261.0, names ignore case,
    a request shows its demands as the service serializes them, and a demand the service cannot parse (a miscased
    operator) is refused before any request is created."""
    clock = FakeClock()
    emu = AzureDevOpsEmulator(clock=clock)
    pool = emu.add_pool("linux")
    emu.add_agent(pool["id"], "placeholder", capabilities=DOCKER, enabled=False)
    equal = emu.queue_request(pool["id"], demands=["agent.version  -gtVersion  4.261.0"])
    shorter = emu.queue_request(pool["id"], demands=["Agent.Version -gtVersion 4.261"])
    longer = emu.queue_request(pool["id"], demands=["Agent.Version -gtVersion 4.261.0.0"])
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[equal]["demands"] == ["agent.version -gtVersion 4.261.0"]
    assert [a["name"] for a in by_id[equal]["matchedAgents"]] == ["placeholder"] and "result" not in by_id[equal]
    assert "result" not in by_id[shorter]
    assert by_id[longer]["result"] == "failed"
    assert not emu.accepts(pool["id"], ["Agent.Version -gtVersion 4.261.0.0"])
    with pytest.raises(DemandError, match="'java -Equals 17' does not parse"):
        emu.queue_request(pool["id"], demands=["java -Equals 17"])
    with pytest.raises(DemandError, match="does not parse"):
        emu.accepts(pool["id"], ["docker -equals "])
    assert emu.queue_request(pool["id"], demands=["docker"]) == longer + 1


def test_agents_demands_query_is_parsed_like_the_service(
    emulator: AzureDevOpsEmulator, session: requests.Session
) -> None:
    """We test: the agents list's `demands` query splits on commas without trimming (TaskAgentsBaseController
    .AsDemands), filters by the service's rules, and a piece that does not parse is a 400 ArgumentException; with
    demands, agentName is matched against the Agent.Name capability, which an agent without one lacks."""
    pool = emulator.add_pool("linux")
    emulator.add_agent(pool["id"], "docker-1", capabilities=DOCKER)
    emulator.add_agent(pool["id"], "java-1", capabilities={"java": "17", "Agent.Version": "4.261.0"})
    path = f"distributedtask/pools/{pool['id']}/agents"
    both = get(session, emulator, path, demands="Agent.Version -gtVersion 4.261,").json()["value"]
    assert [a["name"] for a in both] == ["docker-1", "java-1"]
    java = get(session, emulator, path, demands="JAVA -equals 17,agent.version").json()["value"]
    assert [a["name"] for a in java] == ["java-1"]
    assert_error(get(session, emulator, path, demands="docker, java"), 400, "ArgumentException", "' java'")
    emulator.add_agent(pool["id"], "java-2", capabilities={"java": "17", "Agent.Name": "JAVA-2"})
    named = get(session, emulator, path, demands="java", agentName="java-2").json()["value"]
    assert [a["name"] for a in named] == ["java-2"], "agentName with demands is an Agent.Name -equals demand"
    assert get(session, emulator, path, demands="java", agentName="java-1").json()["count"] == 0
    assert_error(get(session, emulator, path, demands="java -ltVersion 2"), 400, "ArgumentException", "-ltVersion")


def test_agent_states_tell_which_agents_ever_listened() -> None:
    """We test: agent_states reports each agent's id, name and status, and whether a listener ever started a
    session as it (a registered-only agent, such as a placeholder, never did)."""
    emu = AzureDevOpsEmulator(clock=FakeClock())
    pool = emu.add_pool("linux")
    placeholder = emu.add_agent(pool["id"], "placeholder", capabilities=DOCKER, enabled=False)
    worker = emu.add_agent(pool["id"], "worker", capabilities=DOCKER)
    emu.agent_online(worker["id"], once=False)
    emu.agent_lost(worker["id"])
    assert emu.agent_states(pool["id"]) == [
        AgentState(placeholder["id"], "placeholder", "offline", False),
        AgentState(worker["id"], "worker", "offline", True),
    ]


def test_pickup_delay_separates_assign_and_receive() -> None:
    """We test: with a pickup delay a request is assigned (reservedAgent, assignTime) before it is received."""
    clock = FakeClock()
    emu = AzureDevOpsEmulator(clock=clock, pickup_delay=2.0)
    pool = emu.add_pool("linux")
    agent = emu.add_agent(pool["id"], "a", capabilities=DOCKER)
    emu.agent_online(agent["id"])
    request_id = emu.queue_request(pool["id"], demands=["docker"])
    emu.tick()
    [assigned] = emu.requests(pool["id"])
    assert assigned["reservedAgent"]["id"] == agent["id"] and "receiveTime" not in assigned
    clock.now += 2
    emu.tick()
    [running] = emu.requests(pool["id"])
    assert running["receiveTime"] and emu.stats.timings[request_id].receive_time == clock.now


def test_once_agent_takes_one_job_goes_offline_and_reports_exit() -> None:
    """We test: a --once agent runs one job, goes offline and calls on_agent_exit(name, 0)."""
    clock = FakeClock()
    emu = AzureDevOpsEmulator(clock=clock)
    exits: list[tuple[str, int]] = []
    emu.on_agent_exit = lambda name, code: exits.append((name, code))
    emu.add_pat(PAT)
    pool = emu.add_pool("linux")
    agent = emu.register_agent(pool_id=pool["id"], name="azp-linux-abc", capabilities=DOCKER, token=PAT)
    emu.agent_online(agent["id"], once=True)
    first = emu.queue_request(pool["id"], demands=["docker"], duration=3)
    second = emu.queue_request(pool["id"], demands=["docker"], duration=3)
    emu.tick()
    clock.now += 3
    emu.tick()
    assert exits == [("azp-linux-abc", 0)]
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[first]["result"] == "succeeded" and "reservedAgent" not in by_id[second]
    assert emu.agents(pool["id"])[0]["status"] == "offline"
    again = emu.register_agent(pool_id=pool["id"], name="azp-linux-abc", capabilities=DOCKER, token=PAT)
    assert again["id"] == agent["id"]
    with pytest.raises(EmulatorConflictError):
        emu.register_agent(pool_id=pool["id"], name="azp-linux-abc", capabilities={}, token=PAT, replace=False)
    with pytest.raises(EmulatorAuthError):
        emu.register_agent(pool_id=pool["id"], name="x", capabilities={}, token="wrong")


def _race(emu: AzureDevOpsEmulator, session: requests.Session, clock: FakeClock, *, disable: bool) -> dict[str, Any]:
    """One --once agent runs a 3 s job (disabled over the REST API while it runs, as the reconciler does, when
    `disable`); a second job is queued 0.5 s after the first ended, inside the listener's exit window."""
    emu.clock, emu.once_exit_window, emu.auto_tick = clock, 5.0, False
    pool = emu.add_pool("linux")
    agent = emu.register_agent(pool_id=pool["id"], name="azp-linux-abc", capabilities=DOCKER, token=PAT)
    emu.agent_online(agent["id"], once=True)
    first = emu.queue_request(pool["id"], demands=["docker"], duration=3)
    emu.tick()
    if disable:
        path = f"distributedtask/pools/{pool['id']}/agents/{agent['id']}"
        assert send(session, "PATCH", emu, path, {"id": agent["id"], "enabled": False}).status_code == 200
        [running] = emu.requests(pool["id"], unfinished_only=True)
        assert running["reservedAgent"]["enabled"] is False and running["receiveTime"]
    clock.now += 3.5
    emu.tick()
    second = emu.queue_request(pool["id"], demands=["docker"], duration=3)
    emu.tick()
    clock.now += 5
    emu.tick()
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[first]["result"] == "succeeded"
    assert emu.agents(pool["id"])[0]["status"] == "offline"
    again = emu.register_agent(pool_id=pool["id"], name="azp-linux-abc", capabilities=DOCKER, token=PAT)
    assert again["id"] == agent["id"] and again["enabled"] is not disable  # --replace keeps `enabled`
    return by_id[second]


def test_job_given_to_an_exiting_once_agent_unless_it_was_disabled(
    emulator: AzureDevOpsEmulator, session: requests.Session
) -> None:
    """We test: inside a --once agent's exit window the service hands it the next job, which is never received
    (#2332, #3994); an agent disabled while its job ran finishes that job and is handed nothing, so the next
    job stays queued for another agent. Re-registering with --replace keeps the agent's `enabled`."""
    raced = _race(emulator, session, FakeClock(), disable=False)
    assert raced["reservedAgent"]["name"] == "azp-linux-abc" and "receiveTime" not in raced
    fresh = AzureDevOpsEmulator("fabrikam")
    fresh.add_pat(PAT)
    fresh.start()
    try:
        kept = _race(fresh, session, FakeClock(), disable=True)
    finally:
        fresh.stop()
    assert "reservedAgent" not in kept and "result" not in kept


def test_cancel_and_agent_loss() -> None:
    """We test: cancel frees the agent with result canceled; a lost agent's job fails and is counted."""
    clock = FakeClock()
    emu = AzureDevOpsEmulator(clock=clock)
    pool = emu.add_pool("linux")
    agent = emu.add_agent(pool["id"], "a", capabilities=DOCKER)
    emu.agent_online(agent["id"], once=False)
    canceled = emu.queue_request(pool["id"], demands=["docker"], duration=50)
    lost = emu.queue_request(pool["id"], demands=["docker"], duration=50)
    emu.tick()
    emu.cancel_request(canceled)
    emu.tick()
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[canceled]["result"] == "canceled" and "finishTime" in by_id[canceled]
    assert by_id[lost]["reservedAgent"]["id"] == agent["id"]
    emu.agent_lost(agent["id"])
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[lost]["result"] == "failed" and "We stopped hearing from agent a" in by_id[lost]["statusMessage"]
    assert emu.stats.jobs_aborted_by_agent_loss == 1 and emu.stats.jobs_canceled == 1
    [state] = emu.agents(pool["id"])
    assert state["status"] == "offline" and "assignedRequest" not in state


def test_background_ticker_runs_jobs_over_http(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: with the real clock, the server's own ticker assigns and finishes jobs."""
    pool = emulator.add_pool("linux")
    agent = emulator.add_agent(pool["id"], "a", capabilities=DOCKER)
    emulator.agent_online(agent["id"], once=False)
    request_id = emulator.queue_request(pool["id"], demands=["docker"], duration=0.1)
    deadline = time.monotonic() + 3
    result = None
    while time.monotonic() < deadline and result is None:
        result = (
            get(session, emulator, f"distributedtask/pools/{pool['id']}/jobrequests/{request_id}").json().get("result")
        )
        time.sleep(0.05)
    assert result == "succeeded"


def test_throttling_headers_delay_then_429() -> None:
    """We test: headers once usage passes the warning level, a delay past the limit, then 429 + Retry-After."""
    policy = RateLimit(
        limit=10.0,
        window_seconds=300.0,
        cost_per_call={"default": 1.0, "pools/{poolId}/jobrequests": 2.0},
        warning_ratio=0.5,
        block_ratio=1.5,
        delay_seconds=0.01,
    )
    with AzureDevOpsEmulator(rate_limit=policy) as emu, requests.Session() as s:
        emu.add_pat(PAT)
        pool = emu.add_pool("linux")
        s.auth = ("", PAT)
        quiet = [get(s, emu, "distributedtask/pools") for _ in range(5)]
        assert all("X-RateLimit-Limit" not in r.headers for r in quiet)
        warned = get(s, emu, "distributedtask/pools")
        assert warned.headers["X-RateLimit-Limit"] == "10" and warned.headers["X-RateLimit-Remaining"] == "4"
        assert warned.headers["X-RateLimit-Resource"] and int(warned.headers["X-RateLimit-Reset"]) > time.time()
        for _ in range(2):
            get(s, emu, f"distributedtask/pools/{pool['id']}/jobrequests")
        delayed = get(s, emu, "distributedtask/pools")
        assert delayed.status_code == 200 and float(delayed.headers["X-RateLimit-Delay"]) > 0
        assert delayed.headers["X-RateLimit-Remaining"] == "0"
        statuses = [get(s, emu, "distributedtask/pools") for _ in range(5)]
        blocked = statuses[-1]
        assert_error(blocked, 429, "RequestBlockedException", "TF400733")
        assert int(blocked.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("kind", ["status", "html", "truncated", "reset", "timeout", "delay"])
def test_fault_kinds(emulator: AzureDevOpsEmulator, session: requests.Session, kind: FaultKind) -> None:
    """We test: each fault kind hits the matching route `times` times, before auth, then clears."""
    pool = emulator.add_pool("linux")
    emulator.inject_fault("GET", "pools/{poolId}/jobrequests", kind=kind, status=503, retry_after=7, delay=0.3)
    url = api(emulator, f"distributedtask/pools/{pool['id']}/jobrequests")
    params = {"api-version": "7.0", "completedRequestCount": "0"}
    # Other routes are untouched.
    assert get(session, emulator, "distributedtask/pools").status_code == 200
    if kind == "status":
        response = requests.get(url, params=params, timeout=5)  # no credentials: faults come before auth
        assert response.status_code == 503 and response.headers["Retry-After"] == "7"
        assert response.json()["typeKey"]
    elif kind == "html":
        response = session.get(url, params=params, timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    elif kind == "truncated":
        response = session.get(url, params=params, timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
        with pytest.raises(ValueError):
            response.json()
    elif kind == "reset":
        with pytest.raises(requests.exceptions.ConnectionError):
            session.get(url, params=params, timeout=5)
    elif kind == "timeout":
        with pytest.raises(requests.exceptions.ReadTimeout):
            session.get(url, params=params, timeout=0.2)
    else:
        started = time.monotonic()
        assert session.get(url, params=params, timeout=5).status_code == 200
        assert time.monotonic() - started >= 0.3
    assert session.get(url, params=params, timeout=5).status_code == 200


def test_fault_times_and_wildcards(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: times counts matching calls; '*' matches every route and method; clear_faults removes them."""
    emulator.inject_fault("*", "*", kind="status", status=500, times=2)
    assert get(session, emulator, "distributedtask/pools").status_code == 500
    assert get(session, emulator, "connectionData").status_code == 500
    assert get(session, emulator, "connectionData").status_code == 200
    emulator.inject_fault("GET", "/_apis/distributedtask/pools", kind="status", status=502, times=5)
    emulator.clear_faults()
    assert get(session, emulator, "distributedtask/pools").status_code == 200


def test_call_log(emulator: AzureDevOpsEmulator, session: requests.Session) -> None:
    """We test: every request is logged with its route template, status and identity; counts by route."""
    pool = emulator.add_pool("linux")
    agent = emulator.add_agent(pool["id"], "a")
    get(session, emulator, f"distributedtask/pools/{pool['id']}/jobrequests", completedRequestCount=0)
    get(session, emulator, f"distributedtask/pools/{pool['id']}/jobrequests")
    send(session, "PATCH", emulator, f"distributedtask/pools/{pool['id']}/agents/{agent['id']}", {"enabled": False})
    requests.get(api(emulator, "connectionData"), timeout=5)
    counts = emulator.call_counts()
    assert counts == {
        "GET pools/{poolId}/jobrequests": 2,
        "PATCH pools/{poolId}/agents/{agentId}": 1,
        "GET connectionData": 1,
    }
    calls = emulator.calls()
    assert calls[0].route == "/_apis/distributedtask/pools/{poolId}/jobrequests"
    assert calls[0].query == {"api-version": "7.1", "completedRequestCount": "0"}
    assert calls[0].status == 200 and calls[0].identity == "Build Admin"
    assert calls[-1].status == 203 and calls[-1].identity is None
    assert emulator.write_calls() == 1
    emulator.reset_calls()
    assert emulator.calls() == []


def test_concurrent_clients_are_safe(emulator: AzureDevOpsEmulator) -> None:
    """We test: parallel registrations through HTTP give unique ids and a consistent pool size."""
    pool = emulator.add_pool("linux")
    errors: list[int] = []

    def register(index: int) -> None:
        with requests.Session() as s:
            s.auth = ("", PAT)
            response = send(
                s, "POST", emulator, f"distributedtask/pools/{pool['id']}/agents", new_agent_body(f"agent-{index}")
            )
            if response.status_code != 200:
                errors.append(response.status_code)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({a["id"] for a in emulator.agents(pool["id"])}) == 8
    assert emulator.pools()[0]["size"] == 8
