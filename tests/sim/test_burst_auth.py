"""The burst scenario in each credential mode, through `simulate`'s runner: the reconciler authenticates with a PAT
or with an Entra ID identity the simulation registered (service principal, workload identity, managed identity),
and in the no-PAT modes it registers the agents itself, so no organization credential reaches the agent
namespace."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from azp_simulation.identities import CLIENT_SECRET
from azp_simulation.runner import run_simulation
from azp_simulation.world import NAMESPACE, PAT, SCENARIOS, Simulation, load_world
from reconciler.errors import ConfigError

RESOURCES = ("secrets", "configmaps", "jobs", "pods")


def _readable(item: dict[str, Any]) -> str:
    """An object as text, with a Secret's data decoded (what a pod mounting it reads)."""
    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (item.get("data") or {}).items()}
    return json.dumps(item) + json.dumps(data)


def _credentials(simulation: Simulation) -> dict[str, str]:
    """Every organization credential of this world: the PAT, the identity's secret, and each Entra ID token."""
    found = {"the PAT": PAT, "the client secret": CLIENT_SECRET}
    if simulation.entra is not None:
        found |= {f"Entra ID access token {n}": token for n, token in enumerate(simulation.entra.tokens)}
        found["the managed identity header"] = simulation.entra.identity_header
        token_file = simulation.directory / "azure-identity-token"
        if token_file.exists():
            found["the federated service account token"] = token_file.read_text().strip()
    return found


class CredentialScan:
    """Scans the agent namespace of the running simulation for organization credentials, each time it is called."""

    def __init__(self) -> None:
        self.scans = 0
        self.leaks: set[str] = set()
        self.simulation: Simulation | None = None

    def __call__(self, simulation: Simulation) -> None:
        self.scans += 1
        self.simulation = simulation
        credentials = _credentials(simulation)
        for resource in RESOURCES:
            for item in simulation.kube.objects(resource, NAMESPACE):
                text = _readable(item)
                for what, secret in credentials.items():
                    if secret in text:
                        self.leaks.add(f"{resource}/{item['metadata']['name']} holds {what}")


@pytest.mark.parametrize("method", ["pat", "servicePrincipal", "workloadIdentity", "managedIdentity"])
def test_the_burst_is_served_in_each_credential_mode(tmp_path: Path, method: str) -> None:
    """We test: the shipped burst scenario (three pools, Linux and Windows images, demands, a cancellation, a stuck
    pod, leftovers to prune) serves every job (served + cancelled == arrivals, none unserved or failed) with the
    reconciler authenticating by `method`; with Entra ID every Azure DevOps call of the reconciler was made as its
    identity, and no Secret, ConfigMap, Job or pod of the agent namespace ever held the PAT, the client secret,
    the federated token or any access token Entra ID issued (scanned every 0.2 s during the run). With a PAT the
    chart's PAT Secret is there (the scan's control)."""
    scan = CredentialScan()
    summary = run_simulation("burst", auth=method, directory=tmp_path, observe=scan)
    assert summary.auth == method
    assert summary.served + summary.canceled == summary.jobs and summary.unserved == 0, summary.as_dict()
    assert summary.ok and summary.reconciler_failures == 0, summary.as_dict()
    assert scan.scans > 10
    if method == "pat":
        assert scan.leaks == {"secrets/azp-agents-pat holds the PAT"}
        return
    assert scan.leaks == set(), sorted(scan.leaks)
    assert scan.simulation is not None and scan.simulation.identity is not None
    assert {call.identity for call in scan.simulation.azdo.calls()} == {scan.simulation.identity.name}
    config = (tmp_path / "config.yaml").read_text()
    assert f"method: {method}" in config and PAT not in config and not (tmp_path / "pat").exists()


def test_an_unknown_auth_method_is_a_clear_error(tmp_path: Path) -> None:
    """We test: `simulate --auth` with a method the reconciler does not have exits 2 with one line naming --auth
    and the methods, no traceback; a world file's unknown auth.method names the file and the key."""
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "simulate", "--scenario", "idle", "--quiet", "--auth", "oauth"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--auth: auth.method: 'oauth' is not one of pat, servicePrincipal" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    world = yaml.safe_load((SCENARIOS / "idle.yaml").read_text()) | {"auth": {"method": "pat-file"}}
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(world))
    with pytest.raises(ConfigError, match=r"world\.yaml: auth\.method: 'pat-file' is not one of"):
        load_world(path)
