"""The Azure DevOps calls two peers make, as small `requests` loops against the Azure DevOps emulator.

Only their observation is reproduced (the calls that cost Azure DevOps budget); what they then do in
Kubernetes is out of scope. Each policy authenticates with its own PAT, so the emulator's call log
tells the three identities (azp-agents, orchestrator, KEDA) apart in one shared world.

Both send `api-version` on every call (KEDA sends none on pools and jobrequests, which the real
service and the emulator accept, per the reference, section 0); it changes no count. KEDA's own
scaler runs beside this re-implementation when built (benchmarks/keda, the "KEDA scaler (real)" row
of api_cost)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests

ORCHESTRATOR_POLLING_DELAY = 1.0
KEDA_POLLING_INTERVAL = 30.0
KEDA_JOBS_TO_FETCH = 250


@dataclass(frozen=True)
class PolicyPool:
    """A pool as a peer is configured with it: its name and how many job templates it serves."""

    name: str
    templates: int


def _get(session: requests.Session, url: str, params: Mapping[str, str]) -> None:
    # A failed poll is just a lost cycle for these peers; the call still reached the log.
    with contextlib.suppress(requests.RequestException):
        session.get(url, params=dict(params), timeout=30).close()


def orchestrator_policy(
    *,
    organization: str,
    pat: str,
    pools: Sequence[PolicyPool],
    stop: threading.Event,
    polling_delay: float = ORCHESTRATOR_POLLING_DELAY,
) -> int:
    """akanieski/ado-agent-orchestrator: every cycle, for each pool in AGENT_POOLS, look the pool up by
    name, list its agents, list its job requests (3 calls per pool per cycle), then sleep POLLING_DELAY
    ("POLLING_DELAY=1000  # Milliseconds to wait between runs", README of
    https://github.com/akanieski/ado-agent-orchestrator, now microsoft/azure-pipelines-orchestrator;
    the per-cycle calls are in its src/Program.cs, summarised in the reference, section 4). One
    orchestrator serves all templates of a pool with a single job definition, so templates add nothing.
    Returns the number of cycles run."""
    cycles = 0
    base = f"{organization}/_apis/distributedtask/pools"
    with requests.Session() as session:
        session.auth = ("", pat)
        while not stop.is_set():
            for pool in pools:
                response = None
                try:
                    response = session.get(base, params={"poolName": pool.name, "api-version": "7.1"}, timeout=30)
                    found = response.json().get("value") or []
                except (requests.RequestException, ValueError):
                    found = []
                finally:
                    if response is not None:
                        response.close()
                if not found:
                    continue
                pool_id = found[0]["id"]
                _get(session, f"{base}/{pool_id}/agents", {"includeCapabilities": "true", "api-version": "7.1"})
                _get(session, f"{base}/{pool_id}/jobrequests", {"api-version": "7.0"})
            cycles += 1
            stop.wait(polling_delay)
    return cycles


def keda_policy(
    *,
    organization: str,
    pat: str,
    pools: Sequence[PolicyPool],
    pool_ids: Mapping[str, int],
    stop: threading.Event,
    polling_interval: float = KEDA_POLLING_INTERVAL,
) -> int:
    """KEDA's azure-pipelines scaler: one ScaledJob per job template (each template needs its own
    ScaledJob with its own `demands` or `parent`), and each ScaledJob's scaler calls
    `GET _apis/distributedtask/pools/{poolID}/jobrequests?$top=<jobsToFetch>` (default 250) once per
    `pollingInterval` (default 30 s). Sources: kedacore/keda-docs
    content/docs/2.x/scalers/azure-pipelines.md (jobsToFetch, poolName/poolID, demands, parent) and
    content/docs/2.x/reference/scaledjob-spec.md (pollingInterval 30), kedacore/keda
    pkg/scalers/azure_pipelines_scaler.go (getAzurePipelineRequest builds that URL). A poolName is
    resolved to an id when the scaler is built; that lookup is left out here (ids are given), which
    favours KEDA. ScaledJobs are staggered evenly over the interval, as independent scalers would be.
    Returns the number of jobrequests calls made."""
    scaled_jobs = [pool_ids[pool.name] for pool in pools for _ in range(pool.templates)]
    if not scaled_jobs:
        return 0
    base = f"{organization}/_apis/distributedtask/pools"
    params = {"$top": str(KEDA_JOBS_TO_FETCH), "api-version": "7.0"}
    started = time.monotonic()
    step = polling_interval / len(scaled_jobs)
    made = 0
    with requests.Session() as session:
        session.auth = ("", pat)
        while not stop.is_set():
            due = started + (made // len(scaled_jobs)) * polling_interval + (made % len(scaled_jobs)) * step
            if stop.wait(max(0.0, due - time.monotonic())):
                break
            _get(session, f"{base}/{scaled_jobs[made % len(scaled_jobs)]}/jobrequests", params)
            made += 1
    return made
