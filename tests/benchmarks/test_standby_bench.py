"""The standby benchmark (`python -m benchmarks --only standby --size tiny`): every job is served once,
and the three policies order as standby trades idle agents for wait (deterministic: seeded arrivals,
synthetic clock, so these are properties of the model, not timing thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLD_START = 90.0  # benchmarks/standby.py


def test_every_job_is_served_and_windows_sit_between_the_fixed_policies(tmp_path: Path) -> None:
    """We test: each policy serves every job of the traffic; minIdle 0 keeps no agent idle but waits a cold
    start; the window keeps fewer idle agent-minutes than fixed minIdle N and waits less than minIdle 0, the
    learned history keeps fewer than fixed minIdle N too; the table shows one row per policy."""
    output = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "standby", "--size", "tiny", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (result,) = json.loads(output.read_text())["results"]
    figures = result["figures"]
    zero, fixed, window, history = (figures[name] for name in figures if name != "jobs")
    assert {f["queue_to_agent"]["count"] for f in (zero, fixed, window, history)} == {figures["jobs"]}
    assert zero["queue_to_agent"]["p50"] >= COLD_START
    assert fixed["idle_agent_minutes"] > window["idle_agent_minutes"] > zero["idle_agent_minutes"]
    assert window["queue_to_agent"]["p50"] < zero["queue_to_agent"]["p50"]
    assert fixed["idle_agent_minutes"] > history["idle_agent_minutes"] > zero["idle_agent_minutes"]
    assert all(check["name"] in completed.stdout for check in result["checks"]) and len(result["checks"]) == 4
