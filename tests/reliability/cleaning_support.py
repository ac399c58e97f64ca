"""The runs that must clean up everything of ours in a part of the rich world, and the crash and fault checks the
reliability tests make of each: `azp-reconciler cleanup` (the whole release) and the reconcile pass that cleans a
pool removed from the configuration. A finished run leaves no agent or placeholder of ours there, no Job of ours,
the Lease released, and no invariant broken."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from invariants import max_agents_of, violations
from reliability_support import NAMESPACE, OWNER, POOL, RICH_WORLD, Result, Rig, build_rich_world, run_cli

from reconciler import cli, names

OTHER = "other"


@dataclass(frozen=True)
class Cleaning:
    """A run over the rich world that must remove every agent named with one of `ours`, every Job of ours, and
    release its Lease."""

    rig: Rig
    argv: tuple[str, ...]
    ours: tuple[str, ...]
    """Name prefixes of the agents (and placeholders) the run must remove."""
    max_agents: Mapping[str, int]
    """maxAgents per pool for the invariants."""
    next_run_due: Callable[[Rig], None]
    """What lets the next run act at once after one that did not finish: the Lease made to look abandoned (what a
    killed run's Lease becomes), or removed (the look for removed pools is then due, as after sweepInterval)."""

    def writes(self) -> int:
        """Write calls the emulators have answered (a SelfSubjectAccessReview changes nothing)."""
        azdo = [c for c in self.rig.azdo.calls() if c.method != "GET" and c.status]
        kube = [
            c
            for c in self.rig.kube.calls()
            if c.method not in ("GET", "HEAD") and c.status and "selfsubjectaccessreviews" not in c.key
        ]
        return len(azdo) + len(kube)

    def left(self) -> list[str]:
        """What a finished run must not leave behind (empty: clean)."""
        rig = self.rig
        left = [f"agent {a['name']}" for a in rig.agents() if a["name"].startswith(self.ours)]
        left += [f"Job {j['metadata']['name']}" for j in rig.jobs() if not j["metadata"].get("deletionTimestamp")]
        left += [
            f"Lease held by {lease['spec']['holderIdentity']}"
            for lease in rig.kube.objects("leases", NAMESPACE)
            if lease["spec"].get("holderIdentity")
        ]
        return left

    def run(self) -> Result:
        return run_cli(list(self.argv))

    def assert_finished(self, result: Result) -> None:
        """The run exited 0 and left nothing behind, breaking no invariant."""
        assert result.code == 0, result.out
        assert self.left() == [], (self.left(), result.out[-3000:])
        assert not violations(self.rig.simulation, max_agents=self.max_agents)


def _argv(rig: Rig, command: str, *args: str) -> tuple[str, ...]:
    return (command, "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path), *args)


@contextlib.contextmanager
def cleanup_run(directory: Path) -> Iterator[Cleaning]:
    """`azp-reconciler cleanup` over the rich world: everything of the release must go."""
    rig = build_rich_world(directory).rig
    try:
        yield Cleaning(
            rig=rig,
            argv=_argv(rig, "cleanup", "--wait", "5"),
            ours=("azp-",),
            max_agents=max_agents_of(rig.config()),
            next_run_due=Rig.expire_lease,
        )
    finally:
        rig.simulation.stop()


@contextlib.contextmanager
def removed_pool_run(directory: Path) -> Iterator[Cleaning]:
    """A reconcile pass over the rich world with its pool removed from the configuration (another, empty pool is
    configured): what is ours in the removed pool must go. The removed pool keeps the limit it had for the
    invariants (its leftovers are there until cleaned, and nothing of it may grow)."""
    rig = build_rich_world(directory).rig
    try:
        rig.simulation.pool_ids[OTHER] = int(rig.azdo.add_pool(OTHER)["id"])
        document = rig.config()
        document["pools"] = [
            {**document["pools"][0], "name": OTHER, "templates": document["pools"][0]["templates"][:1]}
        ]
        rig.write_config(document)
        rig.forget_lease()  # the look for removed pools is due, as in a new run after sweepInterval
        yield Cleaning(
            rig=rig,
            argv=_argv(rig, "reconcile"),
            ours=(names.agent_prefix(OWNER, pool_name=POOL), names.placeholder_prefix(OWNER, pool_name=POOL)),
            max_agents={**max_agents_of(document), POOL: int(RICH_WORLD["pools"][0]["maxAgents"])},
            next_run_due=Rig.forget_lease,
        )
    finally:
        rig.simulation.stop()


def check_one_run_cleans(cleaning: Cleaning, *, kill_points: int) -> None:
    """The premise of the crash tests: one run cleans everything with more than `kill_points` writes, so every
    kill point lands inside a run."""
    assert cleaning.left(), "the world has nothing to clean"
    cleaning.assert_finished(cleaning.run())
    assert cleaning.writes() > kill_points


def check_killed_then_finished(cleaning: Cleaning, *, k: int, log: Path) -> None:
    """A run forked and SIGKILLed right after its k-th write, then (once the next run is due) another run: it
    finishes the work."""
    pid = os.fork()
    if pid == 0:  # the child: run the CLI, never return into pytest
        code = 70
        try:
            with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = cli.main(list(cleaning.argv))
        finally:
            os._exit(code)
    try:
        cleaning.rig.wait_for(lambda: cleaning.writes() >= k, timeout=20, what=f"{k} writes")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    cleaning.next_run_due(cleaning.rig)
    cleaning.assert_finished(cleaning.run())


@dataclass(frozen=True)
class SiteFault:
    """A call site failing every time (retries too): the emulator (azdo or kube), method and route to fault, the
    client's name for the site in messages, the fault (an HTTP status, or html: a sign-in page)."""

    target: str
    method: str
    route: str
    site: str
    kind: str
    expected: tuple[tuple[int, ...], str] | None = None
    """(exit codes, text of the output) the run must end with, when not the rule's (see `expectation`)."""

    def expectation(self) -> tuple[tuple[int, ...], str]:
        """The run goes on without the event and says so; a sign-in page is a credential the service refuses, so
        the run stops (exit 2); any other failing site fails what depends on it (exit 1) and is named."""
        if self.expected is not None:
            return self.expected
        if self.site == "create event":
            return (0,), "could not record event"
        if self.kind == "html":
            return (2,), "credentials error"
        return (1,), self.site


def site_faults(
    sites: tuple[tuple[str, str, str, str, tuple[str, ...]], ...],
    expected: Mapping[tuple[str, str, str], tuple[tuple[int, ...], str]] | None = None,
) -> list[Any]:
    """pytest parameters of every fault kind of every site ((target, method, route, site, kinds)); `expected`
    gives by (target, site, kind) what the run must end with instead of the rule."""
    return [
        pytest.param(
            SiteFault(target, method, route, site, kind, (expected or {}).get((target, site, kind))),
            id=f"{target}-{site}-{kind}",
        )
        for target, method, route, site, kinds in sites
        for kind in kinds
    ]


def check_persistent_fault(cleaning: Cleaning, fault: SiteFault) -> None:
    """A run with one site failing every time exits as the failure deserves and names it, never tracebacks,
    breaks no invariant; with the fault cleared, the next run (once due) finishes the work."""
    rig = cleaning.rig
    emulator = rig.azdo if fault.target == "azdo" else rig.kube
    options = {"kind": "status", "status": int(fault.kind)} if fault.kind.isdigit() else {"kind": fault.kind}
    emulator.inject_fault(fault.method, fault.route, times=1000, **options)
    result = cleaning.run()
    assert "Traceback" not in result.out
    exits, text = fault.expectation()
    assert result.code in exits and text in result.out, result.out
    assert not violations(rig.simulation, max_agents=cleaning.max_agents)
    emulator.clear_faults()
    cleaning.next_run_due(rig)
    cleaning.assert_finished(cleaning.run())
