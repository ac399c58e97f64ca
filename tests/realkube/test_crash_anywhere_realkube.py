"""We test crash anywhere against the real control plane (a subset of tests/reliability/test_crash_anywhere.py):
a pass of the real `azp-reconciler reconcile`, as the chart's ServiceAccount, talks to the real API server
through a proxy (write_gate.py) that holds its (k+1)-th write, lost (never sent) or landed (carried out,
never answered), and the pass is SIGKILLed there. The Lease it held is aged as durationSeconds would,
then normal passes run while the real Job controller makes the pods, the simulated kubelet runs them and
the agents take their jobs. After every pass the safety invariants of tests/reliability/invariants.py
hold, read from the real server (what the reconciler wrote, from the API server's audit log) and the
Azure DevOps emulator; at the end every queued job is served by exactly one Job, one placeholder is
registered, and nothing is left over.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from control_plane import REPO, ControlPlane
from invariants import leftovers, violations
from realkube_helpers import api
from release import Release, install
from write_gate import WriteGate

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.azdo_support import EmulatorStats
from azp_simulation.kubelet import Kubelet
from reconciler import names

MAX_AGENTS = 3
QUEUED = 3
# A pass with three jobs queued writes: the Lease (taken), three Jobs, the Lease (released). Crash after
# the k-th write, the (k+1)-th lost or landed.
CRASH_POINTS = ((1, True), (2, False), (4, False))


@dataclass
class RealCluster:
    """What the invariants read of Kubernetes (`objects`, `touched_foreign`), from the real server.

    touched_foreign counts the reconciler's updates, patches and deletes (from the audit log) of
    objects other than Leases and Events that it did not create itself with our managed-by label."""

    plane: ControlPlane
    release: Release

    def objects(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        """The items of a list of jobs or pods in `namespace`."""
        group = {"jobs": "/apis/batch/v1", "pods": "/api/v1"}[resource]
        items: list[dict[str, Any]] = api(self.plane, "GET", f"{group}/namespaces/{namespace}/{resource}")["items"]
        return items

    @property
    def touched_foreign(self) -> int:
        writes = self.plane.writes(self.release.user, self.release.namespace)
        ours = {_ref(event) for event in writes if event["verb"] == "create" and _managed_by_us(event)}
        return sum(
            1
            for event in writes
            if event["verb"] != "create"
            and event["objectRef"]["resource"] not in ("leases", "events")
            and _ref(event) not in ours
        )


def _managed_by_us(event: dict[str, Any]) -> bool:
    labels = ((event.get("responseObject") or {}).get("metadata") or {}).get("labels") or {}
    return bool(labels.get(names.LABEL_MANAGED_BY) == names.MANAGED_BY)


def _ref(event: dict[str, Any]) -> tuple[str, str, str]:
    where = event["objectRef"]
    return where["resource"], where.get("namespace", ""), where.get("name", "")


@dataclass
class AzureDevOpsSince:
    """The Azure DevOps emulator as the invariants read it, its counters from this test's start only."""

    emulator: AzureDevOpsEmulator
    before: EmulatorStats = field(init=False)

    def __post_init__(self) -> None:
        self.before = EmulatorStats(**{k: v for k, v in vars(self.emulator.stats).items() if k != "timings"})

    def agents(self, pool_id: int) -> list[dict[str, Any]]:
        return self.emulator.agents(pool_id)

    def requests(self, pool_id: int, *, unfinished_only: bool = False) -> list[dict[str, Any]]:
        return self.emulator.requests(pool_id, unfinished_only=unfinished_only)

    @property
    def stats(self) -> EmulatorStats:
        now = vars(self.emulator.stats)
        return EmulatorStats(**{k: v - getattr(self.before, k) for k, v in now.items() if k != "timings"})


@dataclass
class World:
    azdo: AzureDevOpsSince
    kube: RealCluster
    pool_ids: dict[str, int]


def _crash_after_write(gate: WriteGate, release: Release, k: int, *, landed: bool) -> None:
    """Run a pass through the gate, hold its (k+1)-th write (lost or landed) and SIGKILL it there."""
    gate.hold(k + 1, landed=landed)
    process = subprocess.Popen(
        release.command("--loop-for", "0", server=gate.url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO
    )
    try:
        assert gate.held.wait(timeout=30), f"the pass made {gate.writes} writes, not {k + 1}"
    finally:
        process.kill()
        _, errors = process.communicate()
        gate.release()
    assert process.returncode == -signal.SIGKILL, errors.decode()[-3000:]


def _age_lease(plane: ControlPlane, release: Release) -> None:
    """Make the killed pass's Lease look abandoned long ago, as after durationSeconds."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{release.namespace}/leases/{release.name}-reconciler"
    lease = api(plane, "GET", path)
    lease["spec"]["renewTime"] = lease["spec"]["acquireTime"] = "2000-01-01T00:00:00.000000Z"
    api(plane, "PUT", path, lease)


def _settle(world: World, release: Release, pool: str, timeout: float = 120) -> list[str]:
    """Normal passes, the safety invariants checked after each, until nothing is left over."""
    left = ["no pass ran"]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        result = release.reconcile("--loop-for", "0")
        assert result.returncode == 0, result.stderr[-3000:]
        found = violations(world, max_agents={pool: MAX_AGENTS}, namespace=release.namespace, release=release.name)
        assert not found, found
        left = leftovers(world, min_idle={pool: 0}, namespace=release.namespace, release=release.name)
        if left and all("offline agents of ours" in item for item in left):
            # A pod that ended in the second of the last agent scan waits for the next sweep: stand in for it.
            api(world.kube.plane, "DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{release.namespace}/leases/"
                f"{release.name}-reconciler")  # fmt: skip
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module")
def gate(control_plane: ControlPlane) -> Iterator[WriteGate]:
    proxy = WriteGate(control_plane).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("k", "landed"), [pytest.param(k, x, id=f"after-write-{k}-{'landed' if x else 'lost'}") for k, x in CRASH_POINTS]
)
def test_sigkill_after_the_kth_write_on_the_real_server(
    control_plane: ControlPlane,
    kubelet: Kubelet,
    gate: WriteGate,
    azdo: AzureDevOpsEmulator,
    organization: str,
    namespace: str,
    tmp_path: Path,
    k: int,
    landed: bool,
) -> None:
    """We test: SIGKILL after the k-th write of a pass to the real API server, the next write lost or
    landed unanswered, then normal passes: no invariant broken at any pass, every queued job served by
    one Job, one placeholder, nothing left over."""
    pool = f"Pool-{namespace}"
    pool_id = int(azdo.add_pool(pool)["id"])
    values = {"pools": [{"name": pool, "maxAgents": MAX_AGENTS}], "reconciler": {"suspend": True}}
    release = install(control_plane, organization, namespace, tmp_path, values)
    world = World(AzureDevOpsSince(azdo), RealCluster(control_plane, release), {pool: pool_id})
    # The first pass registers the placeholder; before it, Azure DevOps fails jobs queued to an empty pool.
    assert release.reconcile("--loop-for", "0").returncode == 0
    queued = [azdo.queue_request(pool_id, duration=1.0) for _ in range(QUEUED)]
    _crash_after_write(gate, release, k, landed=landed)
    _age_lease(control_plane, release)
    left = _settle(world, release, pool)
    assert not left, left
    results = {r["requestId"]: r.get("result") for r in azdo.requests(pool_id)}
    assert [results[r] for r in queued] == ["succeeded"] * QUEUED, results
    jobs = api(control_plane, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    per_request = Counter(j["metadata"]["labels"].get(names.LABEL_REQUEST_ID) for j in jobs)
    assert {r: per_request[str(r)] for r in queued} == dict.fromkeys(queued, 1), per_request
    placeholders = [a["name"] for a in azdo.agents(pool_id) if a["name"].startswith("azp-placeholder-")]
    assert len(placeholders) == 1, placeholders
