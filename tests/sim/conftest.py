"""Fixtures for simulation tests: both emulators and the simulated agents, and the real CLI run as a
separate process talking HTTP to them (the same code path as a CronJob run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from azp_simulation.world import PAT, Simulation, load_world


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


class Sim:
    """A running simulation plus helpers to drive the reconciler CLI against it."""

    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        self.azdo = simulation.azdo
        self.kube = simulation.kube
        self.pool_ids = simulation.pool_ids

    @property
    def config_path(self) -> Path:
        return self.simulation.config_path

    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        return loaded

    def write_config(self, document: dict[str, Any]) -> Path:
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.config_path

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120, config: bool = True) -> Result:
        """Run `python -m reconciler ARGS` against the emulators."""
        command = [sys.executable, "-m", "reconciler", *args]
        if config and args and args[0] in ("reconcile", "check", "render"):
            command += ["--config", str(self.config_path)]
        if args and args[0] in ("reconcile", "check"):
            command += ["--kubeconfig", str(self.simulation.kubeconfig_path)]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AZP_", "ORG_"))}
        # On ACI the reconciler trusts the ARM emulator's CA, as it would a private CA.
        env = {**base, **self.simulation.reconciler_env(), **(env or {})}
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        return Result(completed.returncode, completed.stdout, completed.stderr)

    def reconcile(self, *args: str, **kwargs: Any) -> Result:
        return self.cli("reconcile", *args, **kwargs)

    def jobs(self, *, active_only: bool = False) -> list[dict[str, Any]]:
        jobs = self.kube.objects("jobs", "azp-agents")
        if active_only:
            jobs = [j for j in jobs if not _finished(j)]
        return jobs

    def agents(self, pool: str = "linux") -> list[dict[str, Any]]:
        return self.azdo.agents(self.pool_ids[pool])

    def requests(self, pool: str = "linux", *, unfinished_only: bool = False) -> list[dict[str, Any]]:
        return self.azdo.requests(self.pool_ids[pool], unfinished_only=unfinished_only)

    def queue(
        self, pool: str = "linux", count: int = 1, *, demands: tuple[str, ...] = (), duration: float = 2.0
    ) -> list[int]:
        return [self.azdo.queue_request(self.pool_ids[pool], demands=demands, duration=duration) for _ in range(count)]

    def forget_agents_scan(self) -> None:
        """Delete the Lease, so the next run lists every pool's agents (as after sweepInterval)."""
        url = (
            f"{self.simulation.kube_url}/apis/coordination.k8s.io/v1/namespaces/azp-agents/leases/azp-agents-reconciler"
        )
        requests.delete(url, timeout=5)

    def wait_for(self, condition: Callable[[], bool], *, timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


def _finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


WORLD = {
    "name": "test",
    "timeout": 60,
    "reconciler": {"loopFor": 0, "interval": 0.5, "idleInterval": 1, "sweepInterval": 10},
    "pools": [
        {
            "name": "linux",
            "maxAgents": 4,
            "provisioningTimeout": 5,
            "idleTimeout": 3,
            "templates": [{"name": "default", "capabilities": {"docker": "", "Agent.OS": "Linux"}}],
        }
    ],
}


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    """Build a simulation from a world dict (WORLD by default, with top-level overrides)."""
    started: list[Simulation] = []

    def build(world: dict[str, Any] | None = None, *, install: bool = True, **overrides: Any) -> Sim:
        document = {**(world or WORLD), **overrides}
        path = tmp_path / "world.yaml"
        path.write_text(yaml.safe_dump(document))
        simulation = Simulation(load_world(path), directory=tmp_path / "run")
        simulation.start()
        started.append(simulation)
        sim = Sim(simulation)
        if install:
            # Like a fresh install: the first pass registers the placeholders, so jobs with demands
            # queue instead of failing at once ("no agent found in pool ... satisfies demands").
            first = sim.reconcile()
            assert first.code == 0, first.text
        return sim

    yield build
    for simulation in started:
        simulation.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim()


__all__ = ["PAT", "Result", "Sim"]
