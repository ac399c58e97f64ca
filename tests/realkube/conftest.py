"""Fixtures of the realkube tier: one real control plane per session, a namespace per test.

The control plane (tests/realkube/control_plane.py) is etcd, kube-apiserver and
kube-controller-manager as scripts/build-kube.sh builds them; the simulated kubelet
(azp_simulation.kubelet) runs its pods and the simulated agents in an Azure DevOps emulator, and the
chart's check pod runs the real `azp-reconciler check` (check_pod.py).
Without the binaries the tier fails (run `scripts/build-kube.sh`, or `make test` which does); it is
skipped only when AZP_REALKUBE=skip is set outside CI.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from check_pod import CheckPods
from control_plane import ControlPlane, missing_binaries
from realkube_helpers import PAT, create_namespace

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.kubelet import Kubelet, SimulatedAgents

_names = itertools.count(1)
# The chart tests' helpers (helm template, the reconciler's view of a rendered chart) and the
# reliability tests' invariants serve here too.
sys.path.insert(0, str(Path(__file__).parents[1] / "chart"))
sys.path.insert(0, str(Path(__file__).parents[1] / "reliability"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.realkube)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    missing = missing_binaries()
    if missing:
        why = f"the control plane is not built ({', '.join(missing)} missing): run scripts/build-kube.sh"
        if os.environ.get("AZP_REALKUBE") == "skip" and os.environ.get("CI") != "true":
            pytest.skip(f"AZP_REALKUBE=skip and {why}")
        pytest.fail(f"{why} (or set AZP_REALKUBE=skip outside CI)")
    plane = ControlPlane(tmp_path_factory.mktemp("realkube"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def azdo_server() -> Iterator[tuple[AzureDevOpsEmulator, str]]:
    """The Azure DevOps emulator on loopback, and its organization URL."""
    emulator = AzureDevOpsEmulator(organization="contoso")
    url = emulator.start()
    emulator.add_pat(PAT, scopes=("vso.agentpools_manage",))
    try:
        yield emulator, url
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def azdo(azdo_server: tuple[AzureDevOpsEmulator, str]) -> AzureDevOpsEmulator:
    return azdo_server[0]


@pytest.fixture(scope="session")
def organization(azdo_server: tuple[AzureDevOpsEmulator, str]) -> str:
    return azdo_server[1]


@pytest.fixture(scope="session")
def check_pods(
    control_plane: ControlPlane, azdo: AzureDevOpsEmulator, tmp_path_factory: pytest.TempPathFactory
) -> CheckPods:
    """The kubelet's program: simulated agents, and the chart's check pod running the real `check`."""
    return CheckPods(SimulatedAgents(azdo), control_plane, tmp_path_factory.mktemp("pods"))


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane, check_pods: CheckPods) -> Iterator[Kubelet]:
    node = Kubelet(control_plane.server, program=check_pods)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace that enforces Pod Security `restricted`, deleted after the test."""
    name = create_namespace(control_plane, f"rk-{next(_names)}-{os.getpid() % 1000}")
    yield name
    control_plane.server.session().delete(f"{control_plane.url}/api/v1/namespaces/{name}", timeout=30)
