"""We test: reconciler.azdo against the emulator's Azure DevOps Server profiles over HTTP: every route the
reconciler uses (reads, writes, connectionData, service hooks) at 6.0 and 7.0, the version negotiated once
per client, and pinned versions honoured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.azdo_support import SCOPE_MANAGE
from azp_simulation.hooks import SCOPE_HOOKS_WRITE
from reconciler.azdo import AzureDevOps
from reconciler.errors import ConfigError

PAT = "server-test-pat-5b7e"


@pytest.fixture(params=["2020", "2022"])
def server(request: pytest.FixtureRequest) -> Iterator[AzureDevOpsEmulator]:
    emulator = AzureDevOpsEmulator(server_version=request.param)
    emulator.add_pat(PAT, scopes=(SCOPE_MANAGE, SCOPE_HOOKS_WRITE))
    emulator.start()
    yield emulator
    emulator.stop()


def exercise(azdo: AzureDevOps, emulator: AzureDevOpsEmulator) -> None:
    """Every call the reconciler makes, once."""
    pool_id = emulator.add_pool("linux")["id"]
    assert azdo.connection_data()
    assert azdo.pools_by_name(["linux"]) == {"linux": pool_id}
    agent_id = azdo.register_placeholder(pool_id, name="azp-placeholder", capabilities={"docker": ""}, version="4.0.0")
    emulator.queue_request(pool_id, demands=("docker",), duration=60)
    assert len(azdo.job_requests(pool_id)) == 1
    azdo.update_placeholder(pool_id, agent_id, name="azp-placeholder", capabilities={"java": ""}, version="4.0.0")
    assert [a.agent_id for a in azdo.agents(pool_id)] == [agent_id]
    assert azdo.agent(pool_id, agent_id) is not None
    azdo.set_enabled(pool_id, agent_id, enabled=False)
    assert azdo.delete_agent(pool_id, agent_id)
    azdo.subscriptions()


def test_auto_settles_on_the_servers_version_after_one_refusal(server: AzureDevOpsEmulator) -> None:
    """We test: with `auto` the first call is refused once (400), then every route works at the server's
    released version, which the client keeps (no further refusal)."""
    azdo = AzureDevOps(server.base_url, pat=PAT, timeout=5, retries=0)
    exercise(azdo, server)
    released = f"{server.profile.released[0]}.{server.profile.released[1]}"
    assert azdo.api_version == released
    refused = [c for c in server.calls() if c.status == 400]
    # 2020 refuses 7.1-preview on connectionData; 2022 accepts that preview and refuses 7.1 on pools.
    assert len(refused) == 1 and refused[0].query["api-version"].startswith("7.1")
    after = server.calls()[server.calls().index(refused[0]) + 1 :]
    assert {c.query["api-version"] for c in after} <= {released, f"{released}-preview"}
    assert released in {c.query["api-version"] for c in after}


def test_a_pinned_version_the_server_has_is_sent_as_is(server: AzureDevOpsEmulator) -> None:
    """We test: apiVersion 6.0 works on both servers without a refused call."""
    azdo = AzureDevOps(server.base_url, pat=PAT, timeout=5, retries=0, api_version="6.0")
    exercise(azdo, server)
    assert all(c.status < 400 for c in server.calls())


def test_a_pinned_version_above_the_servers_is_a_config_error(server: AzureDevOpsEmulator) -> None:
    """We test: apiVersion 7.1 pinned on a Server is a ConfigError naming the chart key and the versions."""
    azdo = AzureDevOps(server.base_url, pat=PAT, timeout=5, retries=0, api_version="7.1")
    with pytest.raises(ConfigError, match=r"organization\.apiVersion.*auto or one of 7\.1, 7\.0, 6\.0"):
        azdo.pools_by_name(["linux"])
