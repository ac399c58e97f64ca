"""Smoke test of the benchmark's harness around KEDA's own azure-pipelines scaler (benchmarks/keda),
against the Azure DevOps emulator. Skipped when the harness is not built (scripts/build-keda-harness.sh
is for the benchmarks only, not `make test`)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from benchmarks import keda

pytestmark = pytest.mark.skipif(not keda.available(), reason=f"{keda.HARNESS} is not built: {keda.BUILD_SCRIPT}")
PAT = "keda-smoke-pat"


def test_scalers_count_the_queue_their_demands_match() -> None:
    """We test: KEDA's scaler, one per ScaledJob, looks its pool up by name, then polls the pool's
    jobrequests once per pollingInterval and reports the queued requests its demands satisfy."""
    with AzureDevOpsEmulator("contoso") as emulator:
        emulator.add_pat(PAT, scopes=("vso.agentpools",), identity="keda")
        pool = emulator.add_pool("linux")
        # An offline agent with the capability keeps the requests queued, as a placeholder does.
        emulator.add_agent(pool["id"], "placeholder-gpu", enabled=False, capabilities={"gpu": "1"})
        for _ in range(3):
            emulator.queue_request(pool["id"], demands=["gpu"], duration=600)
        jobs = keda.scaled_jobs({"linux": {"gpu": {"gpu": "1", "Agent.OS": "Linux"}, "cpu": {"Agent.OS": "Linux"}}})
        with keda.keda_scalers(organization=emulator.base_url, pat=PAT, jobs=jobs, polling_interval=0.5) as polls:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(polls) < 6:
                time.sleep(0.1)
        calls = Counter(f"{c.method} {c.short}" for c in emulator.calls() if c.identity == "keda")
    latest = {poll["scaledJob"]: poll for poll in polls}
    assert len(polls) >= 6, polls
    assert latest["linux-gpu"] == {**latest["linux-gpu"], "queueLength": 3, "active": True, "desired": 3}
    assert latest["linux-cpu"] == {**latest["linux-cpu"], "queueLength": 0, "active": False, "desired": 0}
    assert not any(poll.get("error") for poll in polls)
    assert calls["GET pools"] == 2
    assert calls["GET pools/{poolId}/jobrequests"] >= len(polls)


def test_an_unknown_pool_fails_with_kedas_message() -> None:
    """We test: a ScaledJob naming a pool that does not exist stops the harness with KEDA's own error."""
    with AzureDevOpsEmulator("contoso") as emulator:
        emulator.add_pat(PAT, scopes=("vso.agentpools",), identity="keda")
        jobs = keda.scaled_jobs({"missing": {"t": {"gpu": "1"}}})
        with (
            pytest.raises(keda.HarnessError, match=r"missing-t.*agent pool with name `missing` not found"),
            keda.keda_scalers(organization=emulator.base_url, pat=PAT, jobs=jobs, polling_interval=1),
        ):
            time.sleep(3)
