"""We test: a run that finds the Lease held (a Job created by hand from the CronJob while the scheduled run
loops) waits for it, bounded by what the holder announced, and then runs its pass: the real CLI over HTTP
against the emulators, the holder a second real CLI process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import Sim

from reconciler.lease import ANNOTATION_RUN_UNTIL, format_time, lease_body

LEASE = "azp-agents-reconciler"
NAMESPACE = "azp-agents"


@pytest.fixture
def bare(make_sim: Any) -> Sim:
    sim: Sim = make_sim(install=False)
    return sim


def _logged_at(line: str) -> datetime:
    """When a log line (text or JSON format) was written."""
    stamp = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z", line)
    assert stamp is not None, f"no time in the log line {line!r}"
    return datetime.fromisoformat(stamp.group(0).replace("Z", "+00:00"))


def _holder(sim: Sim) -> str:
    lease = sim.kube.get("leases", NAMESPACE, LEASE) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _foreign_lease(sim: Sim, *, renewed_ago: float, run_until: datetime | None) -> None:
    """The Lease as another run of this release holds it (another pod's holder identity)."""
    now = datetime.now(UTC)
    annotations = {ANNOTATION_RUN_UNTIL: format_time(run_until)} if run_until is not None else {}
    sim.kube.create(
        lease_body(
            name=LEASE,
            namespace=NAMESPACE,
            holder="azp-agents-reconciler-29400000-abcde-1-0a0b0c",
            duration=60,
            now=now - timedelta(seconds=renewed_ago),
            annotations=annotations,
            labels={},
        )
    )


def test_a_manual_run_waits_for_the_scheduled_run_and_then_runs(bare: Sim) -> None:
    """We test: while a looping run holds the Lease, a one-pass run started beside it waits, takes the Lease
    once the loop released it, and runs its pass (not 'nothing to do')."""
    command = [sys.executable, "-m", "reconciler", "reconcile", "--config", str(bare.config_path)]
    command += ["--kubeconfig", str(bare.simulation.kubeconfig_path), "--loop-for", "15", "--interval", "0.5"]
    command += ["--idle-interval", "0.5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AZP_", "ORG_"))}
    scheduled = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        bare.wait_for(lambda: bool(_holder(bare)), timeout=60, what="the looping run to take the Lease")
        manual = bare.reconcile()
    finally:
        _, scheduled_log = scheduled.communicate(timeout=60)
    assert scheduled.returncode == 0, scheduled_log
    assert manual.code == 0, manual.text
    assert "holds the Lease" in manual.err and "waiting for it until" in manual.err, manual.err
    assert "took the Lease: running" in manual.err and "pass summary" in manual.err, manual.err
    assert "nothing to do" not in manual.text
    # The loop logs nothing after it releases the Lease, so its last line comes before the manual run's take (its
    # process may still be exiting then, on a loaded machine).
    took = next(line for line in manual.err.splitlines() if "took the Lease: running" in line)
    assert _logged_at(scheduled_log.splitlines()[-1]) <= _logged_at(took), (
        f"the manual run ran while the looping run still held the Lease:\n{scheduled_log}\n{manual.err}"
    )
    assert _holder(bare) == "", "the manual run did not release the Lease"


def test_the_wait_ends_soon_after_the_holders_announced_end(bare: Sim) -> None:
    """We test: a holder that stays past its announced end (it could not release) is waited for only
    LEASE_GRACE_SECONDS past that end; the run then does nothing and leaves the Lease alone."""
    _foreign_lease(bare, renewed_ago=0, run_until=datetime.now(UTC) - timedelta(seconds=8))
    started = time.monotonic()
    result = bare.reconcile()
    assert result.code == 0, result.text
    assert "waiting for it until" in result.err and "nothing to do" in result.err, result.err
    assert "pass summary" not in result.err
    assert time.monotonic() - started < 30
    assert _holder(bare).startswith("azp-agents-reconciler-29400000")


def test_a_holder_that_announced_nothing_is_waited_for_until_its_lease_expires(bare: Sim) -> None:
    """We test: a Lease without the announced end (a run of an older version, or one that died) is waited
    for until it expires; the run then takes it and runs its pass."""
    _foreign_lease(bare, renewed_ago=45, run_until=None)
    result = bare.reconcile()
    assert result.code == 0, result.text
    assert "waiting for it until" in result.err and "took the Lease: running" in result.err, result.err
    assert "pass summary" in result.err
