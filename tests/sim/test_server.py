"""We test the reconciler against emulated Azure DevOps Server 2020 and 2022: a collection URL, REST API
versions negotiated down from 7.1, and a pinned version the server refuses reported as a configuration error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from conftest import PAT, WORLD, Sim

from azp_simulation.azdo_emulator import AzureDevOpsEmulator

# The highest released version of each product (azdo_support.SERVER_PROFILES).
RELEASED = {"2020": "6.0", "2022": "7.0"}


@pytest.mark.parametrize("server", ["2020", "2022"])
def test_a_burst_is_served_by_a_server_collection(make_sim: Callable[..., Sim], server: str) -> None:
    """We test: on Server 2020 and 2022 (served at /tfs/DefaultCollection) the reconciler is refused 7.1 once
    (out of range on 2020, a preview on 2022), then sends the server's released version on every route
    (-preview on connectionData) and serves a burst."""
    sim = make_sim({**WORLD, "azure_devops_server": server})
    assert sim.simulation.organization_url.endswith("/tfs/DefaultCollection")
    sim.queue("linux", 3, demands=("docker",), duration=1.0)
    looped = sim.reconcile("--loop-for", "12", "--interval", "0.5", "--idle-interval", "1")
    assert looped.code == 0, looped.text
    sim.wait_for(lambda: not sim.requests(unfinished_only=True), timeout=30, what="the burst to finish")
    assert [r.get("result") for r in sim.requests()] == ["succeeded"] * 3
    calls = sim.azdo.calls()
    refused = [c for c in calls if c.status == 400]
    # One refusal per reconciler process (the install pass, then the loop), none once negotiated.
    assert refused and all(c.query["api-version"] == "7.1" for c in refused), refused
    reconciler_calls = [c for c in calls if c.status != 400 and c.identity is not None and "hooks" not in c.route]
    sent = {c.query.get("api-version") for c in reconciler_calls if c.short != "connectionData"}
    assert sent <= {RELEASED[server], f"{RELEASED[server]}-preview"}, sent


def test_emulated_server_refuses_a_version_above_its_own_like_the_real_one() -> None:
    """We test: Server 2020 answers 7.1 with 400 VssVersionOutOfRangeException naming 6.1 (the text a real
    Server 2020 gives, microsoft/azure-devops-extension-sample #161), wants -preview on 6.1, and accepts 6.0."""
    emulator = AzureDevOpsEmulator(server_version="2020")
    emulator.add_pat(PAT)
    url = emulator.start()
    try:
        pools = f"{url}/_apis/distributedtask/pools"
        too_high = requests.get(pools, params={"api-version": "7.1"}, auth=("", PAT), timeout=5)
        assert too_high.status_code == 400
        assert too_high.json()["typeKey"] == "VssVersionOutOfRangeException"
        assert too_high.json()["message"] == (
            "The requested REST API version of 7.1 is out of range for this server. "
            "The latest REST API version this server supports is 6.1."
        )
        preview = requests.get(pools, params={"api-version": "6.1"}, auth=("", PAT), timeout=5)
        assert preview.json()["typeKey"] == "VssInvalidPreviewVersionException"
        assert requests.get(pools, params={"api-version": "6.0"}, auth=("", PAT), timeout=5).status_code == 200
    finally:
        emulator.stop()


def test_a_pinned_version_the_server_refuses_names_the_key(make_sim: Callable[..., Sim]) -> None:
    """We test: azureDevOps.apiVersion 7.1 pinned against Server 2020 fails with exit 2 and a message naming
    the chart key and the versions to use, not a traceback."""
    sim = make_sim({**WORLD, "azure_devops_server": "2020"}, install=False)
    document = sim.config()
    document["azureDevOps"] = {**document.get("azureDevOps", {}), "apiVersion": "7.1"}
    sim.write_config(document)
    result = sim.reconcile()
    assert result.code == 2, result.text
    assert "organization.apiVersion" in result.err and "refused REST API version 7.1" in result.err
    assert "Traceback" not in result.text
