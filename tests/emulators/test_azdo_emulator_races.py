"""Emulator tests of the race of a job assigned to an exiting `--once` agent (azure-pipelines-agent #2332,
#3994) and what deleting that agent does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from test_azdo_emulator import DOCKER, PAT, FakeClock, send

from azp_simulation.azdo_emulator import AzureDevOpsEmulator


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.auth = ("", PAT)
        yield s


@pytest.fixture
def racy() -> Iterator[tuple[AzureDevOpsEmulator, FakeClock]]:
    clock = FakeClock()
    emu = AzureDevOpsEmulator("contoso", clock=clock, once_exit_window=2.0)
    emu.add_pat(PAT)
    emu.start()
    yield emu, clock
    emu.stop()


def test_exiting_once_agent_is_assigned_a_job_it_never_receives(
    racy: tuple[AzureDevOpsEmulator, FakeClock], session: requests.Session
) -> None:
    """We test: within once_exit_window after its job a --once agent, whose listener already exited, still
    shows online and is assigned the next job, which it never receives; it goes offline when the window
    ends; deleting it while online is refused (it runs a job), deleting it once offline is accepted and the
    job fails with "We stopped hearing from agent" instead of being queued again."""
    emu, clock = racy
    exits: list[tuple[str, int]] = []
    emu.on_agent_exit = lambda name, code: exits.append((name, code))
    pool = emu.add_pool("linux")
    agent = emu.register_agent(pool_id=pool["id"], name="azp-linux-1-abcde", capabilities=DOCKER, token=PAT)
    emu.agent_online(agent["id"], once=True)
    first = emu.queue_request(pool["id"], demands=["docker"], duration=3)
    emu.tick()
    clock.now += 3
    emu.tick()
    assert exits == [("azp-linux-1-abcde", 0)]
    second = emu.queue_request(pool["id"], demands=["docker"], duration=3)
    emu.tick()
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[first]["result"] == "succeeded"
    assert by_id[second]["reservedAgent"]["name"] == "azp-linux-1-abcde" and "receiveTime" not in by_id[second]
    path = f"distributedtask/pools/{pool['id']}/agents/{agent['id']}"
    assert send(session, "DELETE", emu, path).status_code == 400
    clock.now += 2
    emu.tick()
    [listed] = emu.agents(pool["id"])
    assert listed["status"] == "offline"
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert "receiveTime" not in by_id[second] and "result" not in by_id[second]
    assert send(session, "DELETE", emu, path).status_code == 204
    by_id = {r["requestId"]: r for r in emu.requests(pool["id"])}
    assert by_id[second]["result"] == "failed" and "We stopped hearing from agent" in by_id[second]["statusMessage"]
    assert emu.agents(pool["id"]) == []


def test_without_the_window_a_once_agent_takes_no_second_job() -> None:
    """We test: with the default once_exit_window (0) the agent goes offline as its job ends, as before."""
    clock = FakeClock()
    emu = AzureDevOpsEmulator("contoso", clock=clock)
    emu.add_pat(PAT)
    pool = emu.add_pool("linux")
    agent = emu.register_agent(pool_id=pool["id"], name="a", capabilities=DOCKER, token=PAT)
    emu.agent_online(agent["id"], once=True)
    emu.queue_request(pool["id"], demands=["docker"], duration=3)
    emu.tick()
    clock.now += 3
    emu.tick()
    second = emu.queue_request(pool["id"], demands=["docker"], duration=3)
    emu.tick()
    assert "reservedAgent" not in {r["requestId"]: r for r in emu.requests(pool["id"])}[second]


def test_parallel_job_limit_keeps_requests_unassigned_across_pools() -> None:
    """We test: with parallel_jobs 1 a second request stays queued (no reservedAgent, no assignTime) while
    the first runs, even with a free matching agent in another pool, and is assigned once the first ends."""
    clock = FakeClock()
    emu = AzureDevOpsEmulator("contoso", clock=clock, parallel_jobs=1)
    linux, other = emu.add_pool("linux"), emu.add_pool("other")
    for pool, name in ((linux, "a"), (other, "b")):
        agent = emu.add_agent(pool["id"], name, capabilities=DOCKER)
        emu.agent_online(agent["id"], once=False)
    first = emu.queue_request(linux["id"], demands=["docker"], duration=3)
    second = emu.queue_request(other["id"], demands=["docker"], duration=3)
    emu.tick()
    [waiting] = emu.requests(other["id"])
    assert waiting["requestId"] == second and "reservedAgent" not in waiting and "assignTime" not in waiting
    clock.now += 3
    emu.tick()
    assert {r["requestId"]: r for r in emu.requests(linux["id"])}[first]["result"] == "succeeded"
    assert emu.requests(other["id"])[0]["reservedAgent"]["name"] == "b"
