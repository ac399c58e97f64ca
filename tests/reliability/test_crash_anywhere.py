"""We test crash anywhere: a pass over the rich world is run as a separate process and SIGKILLed right
after its k-th write call, for every k from 1 to the number of writes of the pass, in two flavours:

- lost: the (k+1)-th write is held by the emulator and dropped unanswered: it never happens;
- landed: the (k+1)-th write is held and then carried out after the process died: it happened, but
  the reconciler never learnt it.

Then normal passes run while the simulated agents work. Afterwards: no duplicate Jobs, no orphaned
agent registrations, never more agents than maxAgents, every queued job served, nothing left over.

The write paths a clean rich world never takes get their own world (rescue_backoff_world): the rescue (the
agent holding a request it will never start is deleted) and the crash backoff (its Warning Event); the
process is killed before and after each of their writes, which is lost or lands. The cleanup command and
the removed pool's cleaning have theirs in test_crash_cleanup.py and test_crash_removed_pool.py.

The disable of a `--once` agent whose job has started has its world too (disable_world): the process is
killed just before and just after each of the pass's two disables lands.

The process is a fork of the test process (a subprocess that needs no fresh interpreter, so the
28 crash points stay fast); it runs `reconciler.cli.main` exactly as the console script does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from disable_world import DisableWorld, build_disable_world, request_jobs
from invariants import leftovers, max_agents_of, violations
from reliability_support import RichWorld, Rig, build_rich_world, rich_world_converged
from rescue_backoff_world import RescueBackoffWorld, build_rescue_backoff_world, rescue_backoff_left

from reconciler import cli, names

pytestmark = pytest.mark.slow

# The writes of one pass over the rich world, in order: (API, method, route).
EXPECTED_WRITES: tuple[tuple[str, str, str], ...] = (
    ("kube", "POST", "leases"),
    # Deletions first (a stuck Job holding a quota must go even while creates are refused): the stuck Job,
    # then the drained agent.
    ("kube", "POST", "events"),
    ("kube", "DELETE", "jobs"),
    ("azdo", "DELETE", "pools/{poolId}/agents/{agentId}"),
    ("azdo", "PATCH", "pools/{poolId}/agents/{agentId}"),
    ("kube", "POST", "events"),
    ("kube", "DELETE", "jobs"),
    ("azdo", "DELETE", "pools/{poolId}/agents/{agentId}"),
    # Then placeholders and new Jobs.
    ("azdo", "POST", "pools/{poolId}/agents"),
    ("azdo", "PUT", "pools/{poolId}/agents/{agentId}"),
    ("kube", "POST", "jobs"),
    ("kube", "POST", "jobs"),
    # Then the standby history, the hour's peak recorded (the default template learns; none was kept yet).
    ("kube", "POST", "configmaps"),
    ("kube", "PUT", "leases"),
)
HOLD = 1.0
CRASH_POINTS: list[tuple[int, str]] = []
SWEEP_STAND_INS: list[str] = []


def _completed_writes(rig: Rig) -> list[tuple[str, str, str]]:
    """Write calls the emulators have answered (a held or dropped one is not answered yet)."""
    azdo = [("azdo", c.method, c.short, c.time) for c in rig.azdo.calls() if c.method != "GET" and c.status]
    kube = [
        ("kube", c.method, c.key.split(" ", 1)[1], c.time)
        for c in rig.kube.calls()
        if c.method not in ("GET", "HEAD") and c.status and "selfsubjectaccessreviews" not in c.key
    ]
    return [call[:3] for call in sorted(azdo + kube, key=lambda call: call[3])]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RichWorld]:
    built = build_rich_world(tmp_path)
    yield built
    built.rig.simulation.stop()


def test_the_pass_makes_the_expected_writes(world: RichWorld) -> None:
    """We test the premise of the crash points: a clean pass over the rich world makes exactly these
    writes in this order (if the product changes its order, EXPECTED_WRITES must follow)."""
    result = world.rig.reconcile()
    assert result.code == 0, result.out
    assert tuple(_completed_writes(world.rig)) == EXPECTED_WRITES


def _fork_pass(rig: Rig, log: Path) -> int:
    """Start one `azp-reconciler reconcile` in a forked child process; returns its pid."""
    argv = ["reconcile", "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path)]
    pid = os.fork()
    if pid == 0:  # the child: run the CLI, never return into pytest
        code = 70
        try:
            with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = cli.main(argv)
        finally:
            os._exit(code)
    return pid


def _hold_write(
    rig: Rig, index: int, *, landed: bool, writes: tuple[tuple[str, str, str], ...] = EXPECTED_WRITES
) -> Callable[[], bool]:
    """Hold the index-th write (0-based) of the pass: dropped unanswered, or carried out late. Returns a
    check that the held write has reached the emulator (its fault was taken)."""
    target, method, route = writes[index]
    emulator = rig.azdo if target == "azdo" else rig.kube
    earlier = sum(1 for w in writes[:index] if w == writes[index])
    if earlier:
        emulator.inject_fault(method, route, kind="delay", delay=0.0, times=earlier)
    held = emulator.inject_fault(method, route, kind="delay" if landed else "timeout", delay=HOLD, times=1)
    return lambda: not emulator.fault_pending(held)


def _settle(world: RichWorld, *, timeout: float = 12) -> tuple[list[str], list[Any]]:
    """Normal passes while the agents work, invariants checked after each; returns what is left over.

    Once the queue is empty: an offline agent of ours still registered after a second is pruned at the
    next agent scan, which a pod finishing in the same second as the last scan does not trigger
    (test_properties.test_pod_finished_in_the_second_of_the_last_scan); stand in for the sweep by
    dropping the Lease that remembers the scan. A state that stops changing for 3 s is final."""
    rig = world.rig
    limits = max_agents_of(rig.config())
    deadline = time.monotonic() + timeout
    left: list[str] = ["no pass ran"]
    results = []
    since, previous = time.monotonic(), None
    while time.monotonic() < deadline:
        result = rig.reconcile()
        results.append(result)
        found = violations(rig.simulation, max_agents=limits)
        assert not found, found
        left = leftovers(rig.simulation, min_idle={"linux": 0}) + rich_world_converged(world)
        if result.code == 0 and not left:
            break
        if left != previous:
            since, previous = time.monotonic(), left
        waited = time.monotonic() - since
        if left and all("offline agents of ours" in item for item in left) and waited > 1:
            SWEEP_STAND_INS.append(str(left))
            rig.forget_lease()
        elif waited > 3:
            break
        time.sleep(0.15)
    return left, results


def _wait_held_write_settled(rig: Rig, expected: int) -> None:
    """Wait out the held write: it is dropped or carried out HOLD seconds after it reached the emulator.
    A landed write is waited for (a loaded machine answers it later than HOLD); a dropped one is given
    HOLD plus a margin to show up wrongly."""
    time.sleep(HOLD + 0.2)
    with contextlib.suppress(AssertionError, TimeoutError):
        rig.wait_for(lambda: len(_completed_writes(rig)) >= expected, timeout=10, what=f"{expected} writes")


def _kill_after(
    rig: Rig, k: int, *, landed: bool, writes: tuple[tuple[str, str, str], ...], log: Path, label: str
) -> None:
    """Run a pass in a forked process and SIGKILL it right after its k-th write, the next one (if any) held and
    lost or landed; check the writes made, wait the held one out, clear the faults and age the killed run's
    Lease (it expires after durationSeconds) instead of waiting. The crash point is recorded with `label`."""
    held = _hold_write(rig, k, landed=landed, writes=writes) if k < len(writes) else None
    pid = _fork_pass(rig, log)
    try:
        rig.wait_for(lambda: len(_completed_writes(rig)) >= k, timeout=15, what=f"{k} writes")
        if held is not None:
            rig.wait_for(held, timeout=15, what=f"write {k + 1} to be held")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    CRASH_POINTS.append((k, label + ("landed" if landed else "lost")))
    done = _completed_writes(rig)
    assert tuple(done[:k]) == writes[:k], (done, log.read_text()[-3000:])
    expected = k + 1 if landed and held is not None else k
    _wait_held_write_settled(rig, expected)
    rig.azdo.clear_faults()
    rig.kube.clear_faults()
    applied = len(_completed_writes(rig))
    assert applied == expected, (applied, k, landed)
    rig.expire_lease()


def _cases() -> list[Any]:
    cases = []
    for landed in (False, True):
        for k in range(1, len(EXPECTED_WRITES) + 1):
            marks: list[Any] = []
            flavour = "landed" if landed else "lost"
            cases.append(pytest.param(k, landed, id=f"after-write-{k}-{flavour}", marks=marks))
    return cases


@pytest.mark.parametrize(("k", "landed"), _cases())
def test_sigkill_after_the_kth_write(world: RichWorld, tmp_path: Path, k: int, landed: bool) -> None:
    """We test: SIGKILL right after the k-th write of a pass, then normal passes: every queued job is
    served, one Job per request, no orphaned registration, no invariant broken, nothing left over."""
    rig = world.rig
    _kill_after(rig, k, landed=landed, writes=EXPECTED_WRITES, log=tmp_path / "killed-run.log", label="")
    left, results = _settle(world)
    assert not left, (left, results[-1].out[-3000:])
    requests = rig.azdo.requests(rig.pool_id())
    assert all(r.get("result") == "succeeded" for r in requests if r["requestId"] in world.request_ids)
    request_jobs = [j["metadata"]["labels"].get(names.LABEL_REQUEST_ID) for j in rig.jobs()]
    request_jobs = [r for r in request_jobs if r]
    assert sorted(request_jobs) == sorted(str(r) for r in world.request_ids), request_jobs
    placeholders = [a["name"] for a in rig.agents() if a["name"].startswith("azp-placeholder-")]
    assert len(placeholders) == len(set(placeholders)) == 3, placeholders


RESCUE_BACKOFF_WRITES: tuple[tuple[str, str, str], ...] = (
    ("kube", "PUT", "leases"),
    # The crash backoff's Warning Event on the crashed Job, then the rescue: the agent holding the request.
    ("kube", "POST", "events"),
    ("azdo", "DELETE", "pools/{poolId}/agents/{agentId}"),
    # The placeholder takes the capabilities the linux agent reported; then the Lease is released.
    ("azdo", "PUT", "pools/{poolId}/agents/{agentId}"),
    ("kube", "PUT", "leases"),
)
# Kill points: after the write before each of theirs, which is lost or lands (a kill right after it landed
# leaves the same world as the kill before its answer).
RESCUE_BACKOFF_KILLS = (1, 2)


@pytest.fixture
def rescue_world(tmp_path: Path) -> Iterator[RescueBackoffWorld]:
    built = build_rescue_backoff_world(tmp_path / "world")
    yield built
    built.rig.simulation.stop()


def test_the_rescue_and_backoff_pass_makes_the_expected_writes(rescue_world: RescueBackoffWorld) -> None:
    """We test the premise of the rescue and backoff crash points: a clean pass makes these writes in this
    order and reaches the rescued, backed-off state at once."""
    result = rescue_world.rig.reconcile()
    assert result.code == 0, result.out
    assert tuple(_completed_writes(rescue_world.rig)) == RESCUE_BACKOFF_WRITES
    assert rescue_backoff_left(rescue_world) == [], result.out


def _settle_rescue(world: RescueBackoffWorld, *, timeout: float = 10) -> list[str]:
    """Normal passes, invariants checked after each, until the rescue and the backoff are done; an offline
    agent left waits for the next agent scan: stand in for it by dropping the Lease (see _settle)."""
    rig = world.rig
    limits = max_agents_of(rig.config())
    deadline = time.monotonic() + timeout
    left = ["no pass ran"]
    while time.monotonic() < deadline:
        result = rig.reconcile()
        found = violations(rig.simulation, max_agents=limits)
        assert not found, (found, result.out[-3000:])
        left = rescue_backoff_left(world)
        if result.code == 0 and not left:
            break
        if left and all("offline agents of ours" in item for item in left):
            SWEEP_STAND_INS.append(str(left))
            rig.forget_lease()
        time.sleep(0.15)
    return left


@pytest.mark.parametrize(
    ("k", "landed"),
    [(k, landed) for k in RESCUE_BACKOFF_KILLS for landed in (False, True)],
    ids=[f"after-write-{k}-{'landed' if landed else 'lost'}" for k in RESCUE_BACKOFF_KILLS for landed in (0, 1)],
)
def test_sigkill_around_the_rescue_and_the_backoff(
    rescue_world: RescueBackoffWorld, tmp_path: Path, k: int, landed: bool
) -> None:
    """We test: SIGKILL right after the k-th write of the pass that rescues a held request and backs a
    crashing template off, the next write lost or landed; then normal passes: the held request ends, the
    exited agent is gone, no Job of the crashing template is made before its backoff ends and its request
    is served after, the backoff is reported, no invariant broken."""
    log = tmp_path / "killed-run.log"
    _kill_after(rescue_world.rig, k, landed=landed, writes=RESCUE_BACKOFF_WRITES, log=log, label="rescue-backoff ")
    left = _settle_rescue(rescue_world)
    assert not left, left


DISABLE_WRITES: tuple[tuple[str, str, str], ...] = (
    ("kube", "PUT", "leases"),
    # The two running agents disabled, the placeholder takes what the agents reported, the queued request's Job.
    ("azdo", "PATCH", "pools/{poolId}/agents/{agentId}"),
    ("azdo", "PATCH", "pools/{poolId}/agents/{agentId}"),
    ("azdo", "PUT", "pools/{poolId}/agents/{agentId}"),
    ("kube", "POST", "jobs"),
    ("kube", "PUT", "leases"),
)
# Kill points: before the first disable, between the two, after both; the next write lost or landed.
DISABLE_KILLS = (1, 2, 3)
DISABLE_JOB_SECONDS = 5.0


@pytest.fixture
def disable_world(tmp_path: Path) -> Iterator[DisableWorld]:
    built = build_disable_world(tmp_path / "world", job_seconds=DISABLE_JOB_SECONDS)
    yield built
    built.rig.simulation.stop()


def test_the_disable_pass_makes_the_expected_writes(disable_world: DisableWorld) -> None:
    """We test the premise of the disable crash points: a clean pass makes these writes in this order."""
    result = disable_world.rig.reconcile()
    assert result.code == 0, result.out
    assert tuple(_completed_writes(disable_world.rig)) == DISABLE_WRITES


def _ended(world: DisableWorld, request_ids: list[int]) -> bool:
    by_id = {r["requestId"]: r for r in world.rig.azdo.requests(world.rig.pool_id())}
    return all(by_id[r].get("result") for r in request_ids)


def _settle_disable(world: DisableWorld) -> list[str]:
    """Normal passes, invariants checked after each: until the runners show disabled (each by one PATCH in all),
    which they still are when their jobs end (the service hands a disabled agent no job: no second job for an
    agent whose listener is gone, the emulator's once_exit_window); then until every request is served by one
    Job and nothing is left over (see _settle for the agent scan stand-in). Returns what is left."""
    rig = world.rig
    limits = max_agents_of(rig.config())

    def reconciled() -> bool:
        result = rig.reconcile()
        found = violations(rig.simulation, max_agents=limits)
        assert not found, (found, result.out[-3000:])
        return result.code == 0

    def disabled() -> bool:
        return reconciled() and all(not world.runner(r)["enabled"] for r in world.running)

    rig.wait_for(disabled, timeout=DISABLE_JOB_SECONDS, what="the runners disabled while their jobs run")
    assert world.runner_patches() == [1] * len(world.running)
    assert not _ended(world, world.running)
    rig.wait_for(lambda: _ended(world, world.running), timeout=15, what="the runners' jobs to end")
    assert world.enabled_runners() == [], rig.agents()
    left = ["no pass ran"]
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and left:
        reconciled()
        left = leftovers(rig.simulation, min_idle={"linux": 0})
        if left and all("offline agents of ours" in item for item in left):
            SWEEP_STAND_INS.append(str(left))
            rig.forget_lease()
        time.sleep(0.15)
    served = [*world.running, world.queued]
    requests = rig.azdo.requests(rig.pool_id())
    if not all(r.get("result") == "succeeded" for r in requests if r["requestId"] in served):
        left.append(f"requests not all served: {requests}")
    if request_jobs(rig) != sorted(str(r) for r in served):
        left.append(f"Jobs by request: {request_jobs(rig)}")
    return left


@pytest.mark.parametrize(
    ("k", "landed"),
    [(k, landed) for k in DISABLE_KILLS for landed in (False, True)],
    ids=[f"after-write-{k}-{'landed' if landed else 'lost'}" for k in DISABLE_KILLS for landed in (0, 1)],
)
def test_sigkill_around_the_disable(disable_world: DisableWorld, tmp_path: Path, k: int, landed: bool) -> None:
    """We test: SIGKILL right after the k-th write of the pass that disables two running --once agents, the next
    write lost or landed (just before or just after a disable lands); then normal passes: each runner ends up
    disabled by one PATCH in all (the next run disables only what the killed one did not), no job is handed to
    an exiting runner, every request is served by one Job, nothing left over, no invariant broken."""
    log = tmp_path / "killed-run.log"
    _kill_after(disable_world.rig, k, landed=landed, writes=DISABLE_WRITES, log=log, label="disable ")
    left = _settle_disable(disable_world)
    assert not left, left


def test_crash_points_tried() -> None:
    """We test the crash matrix ran whole: 2 flavours x every write of the pass, and around the rescue and the
    backoff, and around the disable."""
    expected = 2 * len(EXPECTED_WRITES) + 2 * len(RESCUE_BACKOFF_KILLS) + 2 * len(DISABLE_KILLS)
    if len(CRASH_POINTS) < expected:
        pytest.skip("only part of the crash points ran (tests deselected)")
    print(
        f"\ncrash anywhere: {len(CRASH_POINTS)} crash points tried ({len(EXPECTED_WRITES)} writes x lost/landed, "
        f"{len(RESCUE_BACKOFF_KILLS)} around the rescue and the backoff, {len(DISABLE_KILLS)} around the disable, "
        "x lost/landed); "
        f"{len(SWEEP_STAND_INS)} waited for an agent scan"
    )
    assert len(set(CRASH_POINTS)) == expected
