"""Simulation tests of issue 20's rules, through the real CLI against both emulators: crash backoff."""

from __future__ import annotations

from typing import Any

from conftest import WORLD, Sim

CONFIG_401 = "config.sh: VS30063: You are not authorized to access https://dev.azure.com/contoso"


def _failed_pods(sim: Sim) -> list[dict[str, Any]]:
    pods = sim.kube.objects("pods", "azp-agents")
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]


def _message_of(pod: dict[str, Any]) -> str:
    for entry in pod["status"].get("containerStatuses") or []:
        message = ((entry.get("state") or {}).get("terminated") or {}).get("message")
        if message:
            return str(message)
    return ""


def test_pods_that_crash_before_coming_online_back_off_and_are_reported(make_sim: Any) -> None:
    """We test: a pod whose agent container exits before its agent comes online is not replaced at once. Over
    a 25 s loop of 0.5 s passes the first two pods crash: the second Job comes only after the 10 s backoff,
    the third would need 20 s more, so exactly two Jobs exist and the request is still queued (without a
    backoff the third pod, which works, would have served it within seconds). The passes inside the backoff
    report the pod's reason, exit code and termination message in the pass summary and as a Warning Event on
    the failed Job."""
    crash = {"pool": "linux", "first": 1, "count": 2, "exit_code": 3, "message": CONFIG_401}
    sim = make_sim({**WORLD, "crash_pods": [crash]})
    sim.queue()
    result = sim.reconcile("--loop-for", "25", "--interval", "0.5", "--idle-interval", "0.5", timeout=90)
    assert result.code == 0, result.text
    assert len(sim.jobs()) == 2, result.text
    assert len(_failed_pods(sim)) == 2 and all(_message_of(p) == CONFIG_401 for p in _failed_pods(sim))
    assert len(sim.requests(unfinished_only=True)) == 1
    assert f"Error (exit code 3): {CONFIG_401}" in result.text
    assert '"crash_backoff": 1' in result.text or "crash_backoff=1" in result.text
    assert "2 pod(s) of template 'default' failed" in result.text
    events = [e for e in sim.kube.objects("events", "azp-agents") if e.get("reason") == "AgentCrashBackoff"]
    assert events and {e["type"] for e in events} == {"Warning"}
    assert {e["involvedObject"]["name"] for e in events} == {j["metadata"]["name"] for j in sim.jobs()}
