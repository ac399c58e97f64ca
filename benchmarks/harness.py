"""What every benchmark shares: world files built in code, a running simulation, the real reconciler
run as a separate process, percentiles, and the figure/target records the table is printed from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from azp_simulation.runner import percentile
from azp_simulation.world import Simulation, load_world

SIZES = ("tiny", "full")


def check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")


def spread(values: Sequence[float], *, digits: int = 2) -> dict[str, float]:
    """p50, p95 and max of a sample, rounded for the table."""
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.50), digits),
        "p95": round(percentile(values, 0.95), digits),
        "max": round(max(values, default=0.0), digits),
    }


def parse_time(value: Any) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp with 'Z' (None when absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        text = f"{head}.{digits[:6].ljust(6, '0')}{tail[len(digits) :]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass
class Check:
    """One target of issue 8 beside the figure measured for it."""

    name: str
    target: str
    value: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "value": self.value, "met": self.met}


@dataclass
class Outcome:
    """What one benchmark returns: figures for results.json, checks for the table, notes for people."""

    name: str
    size: str
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, *, target: str, value: str, met: bool | None) -> None:
        self.checks.append(Check(name, target, value, met))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "seconds": round(self.seconds, 2),
            "figures": self.figures,
            "checks": [c.as_dict() for c in self.checks],
            "notes": list(self.notes),
        }


def pool_document(name: str, *, templates: int, max_agents: int, **extra: Any) -> dict[str, Any]:
    """A world-file pool with `templates` templates, each advertising its own capability."""
    slug = name.lower()
    return {
        "name": name,
        "maxAgents": max_agents,
        "provisioningTimeout": extra.pop("provisioningTimeout", 30),
        "idleTimeout": extra.pop("idleTimeout", 10),
        "templates": [
            {"name": f"t{index}", "capabilities": {f"cap-{slug}-t{index}": "1", "Agent.OS": "Linux"}}
            for index in range(templates)
        ],
        **extra,
    }


@contextmanager
def simulation(world: Mapping[str, Any], directory: Path) -> Iterator[Simulation]:
    """Start both emulators from a world document; stop them afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "world.yaml"
    path.write_text(yaml.safe_dump(dict(world), sort_keys=False))
    running = Simulation(load_world(path), directory=directory / "run")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def reconciler_env() -> dict[str, str]:
    """The environment for a reconciler process: ours, without in-cluster or Azure DevOps settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AZP_", "ORG_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def reconcile_command(sim: Simulation, *args: str, python_options: Sequence[str] = ()) -> list[str]:
    """`python -m reconciler reconcile` against a simulation, JSON logs, plus `args`."""
    return [
        sys.executable,
        *python_options,
        "-m",
        "reconciler",
        "reconcile",
        "--config",
        str(sim.config_path),
        "--kubeconfig",
        str(sim.kubeconfig_path),
        "--log-format",
        "json",
        *args,
    ]


class ReconcilerRun:
    """The real reconciler in its own process; collects the pass summaries of its JSON log."""

    def __init__(self, command: Sequence[str]) -> None:
        self.spawned = time.time()
        self.process = subprocess.Popen(
            list(command), env=reconciler_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.summaries: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                entry = json.loads(line)
            except ValueError:
                self.errors.append(line.rstrip())
                continue
            if not isinstance(entry, dict):
                continue
            if entry.get("message") == "pass summary":
                self.summaries.append(entry)
            elif entry.get("level") in ("error", "critical"):
                self.errors.append(str(entry.get("message")))

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the run to end by itself; SIGTERM (then kill) when it takes longer."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                code = self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        self._reader.join(timeout=5)
        return code


def run_reconciler(sim: Simulation, *args: str, timeout: float = 120) -> ReconcilerRun:
    """Run the reconciler to its end and return the finished run."""
    run = ReconcilerRun(reconcile_command(sim, *args))
    code = run.wait(timeout)
    if code not in (0, 1):
        raise RuntimeError(f"the reconciler exited with {code}: {run.errors[-5:]}")
    return run


def wait_until(condition: Any, *, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return bool(condition())
