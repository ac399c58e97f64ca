"""We test crash anywhere for `azp-reconciler cleanup`: over the rich world (a placeholder per template, an
idle agent, a Job whose pod never starts, an offline leftover agent, finished Jobs), a cleanup run is forked
and SIGKILLed right after its k-th write; a second cleanup run (once the killed run's Lease has expired)
must finish the work: no agent or placeholder of ours registered, no Job of ours left, the Lease released,
no invariant broken."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invariants import max_agents_of, violations
from reliability_support import RichWorld, Rig, build_rich_world, run_cli

from reconciler import cli

pytestmark = pytest.mark.slow

KILL_POINTS = 10


def _writes(rig: Rig) -> int:
    """Write calls the emulators have answered."""
    azdo = [c for c in rig.azdo.calls() if c.method != "GET" and c.status]
    kube = [
        c
        for c in rig.kube.calls()
        if c.method not in ("GET", "HEAD") and c.status and "selfsubjectaccessreviews" not in c.key
    ]
    return len(azdo) + len(kube)


def _argv(rig: Rig) -> list[str]:
    return ["cleanup", "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path), "--wait", "5"]


def _left(rig: Rig) -> list[str]:
    """What a finished cleanup must not leave behind (empty: clean)."""
    left = [f"agent {a['name']}" for a in rig.agents() if a["name"].startswith("azp-")]
    left += [f"Job {j['metadata']['name']}" for j in rig.jobs() if not j["metadata"].get("deletionTimestamp")]
    left += [
        f"Lease held by {lease['spec']['holderIdentity']}"
        for lease in rig.kube.objects("leases", "azp-agents")
        if lease["spec"].get("holderIdentity")
    ]
    return left


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RichWorld]:
    built = build_rich_world(tmp_path)
    yield built
    built.rig.simulation.stop()


def test_clean_cleanup_leaves_nothing(world: RichWorld) -> None:
    """We test the premise: one cleanup run over the rich world removes everything of ours with more than
    KILL_POINTS writes, so every kill point below lands inside a run."""
    rig = world.rig
    assert _left(rig), "the rich world has nothing to clean"
    result = run_cli(_argv(rig))
    assert result.code == 0, result.out
    assert _left(rig) == [], result.out
    assert _writes(rig) > KILL_POINTS
    assert not violations(rig.simulation, max_agents=max_agents_of(rig.config()))


def _fork_cleanup(rig: Rig, log: Path) -> int:
    pid = os.fork()
    if pid == 0:  # the child: run the CLI, never return into pytest
        code = 70
        try:
            with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = cli.main(_argv(rig))
        finally:
            os._exit(code)
    return pid


@pytest.mark.parametrize("k", range(1, KILL_POINTS + 1))
def test_sigkill_cleanup_after_the_kth_write(world: RichWorld, tmp_path: Path, k: int) -> None:
    """We test: SIGKILL right after the k-th write of a cleanup, then another cleanup: nothing of ours is
    left, the Lease is released, no invariant broken (a busy agent's delete is never tried)."""
    rig = world.rig
    pid = _fork_cleanup(rig, tmp_path / "killed.log")
    try:
        rig.wait_for(lambda: _writes(rig) >= k, timeout=20, what=f"{k} writes")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    rig.expire_lease()
    result = run_cli(_argv(rig))
    assert result.code == 0, result.out
    left: list[Any] = _left(rig)
    assert left == [], (left, result.out[-3000:])
    assert not violations(rig.simulation, max_agents=max_agents_of(rig.config()))
