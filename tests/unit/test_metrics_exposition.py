"""We test the Prometheus text writer: HELP/TYPE lines, label escaping, cumulative histogram buckets,
gauges replaced and counters added across passes, agents by state per pool."""

from __future__ import annotations

from collections import Counter

from reconciler.apply import Outcome
from reconciler.metrics import Metrics, agent_state
from reconciler.reconcile import PassReport


def _report(*, seconds: float, queued: int, created: int, agents: dict[str, dict[str, int]]) -> PassReport:
    outcome = Outcome(counts=Counter(created=created))
    return PassReport(number=1, queued=queued, outcome=outcome, seconds=seconds, azdo_calls=3, agents_by_state=agents)


def test_passes_add_up_and_gauges_are_replaced() -> None:
    """We test: two passes give counters summed, the last pass's gauges, buckets counted cumulatively,
    agent states of a pool replaced only when it was listed again, and a pool name with a quote escaped."""
    metrics = Metrics()
    metrics.record_pass(_report(seconds=0.2, queued=5, created=2, agents={'li"nux': {"idle": 2}}), azdo_throttled=1)
    metrics.record_pass(_report(seconds=3.0, queued=1, created=1, agents={}))
    text = metrics.render()
    lines = set(text.splitlines())
    assert "# TYPE azp_jobs_total counter" in lines and "# TYPE azp_pass_duration_seconds histogram" in lines
    assert "azp_requests_queued 1" in lines
    assert 'azp_jobs_total{outcome="created"} 3' in lines
    assert "azp_azdo_calls_total 6" in lines and "azp_azdo_throttled_total 1" in lines
    assert 'azp_agents{pool="li\\"nux",state="idle"} 2' in lines
    assert 'azp_agents{pool="li\\"nux",state="busy"} 0' in lines
    assert 'azp_pass_duration_seconds_bucket{le="0.25"} 1' in lines
    assert 'azp_pass_duration_seconds_bucket{le="5"} 2' in lines
    assert 'azp_pass_duration_seconds_bucket{le="+Inf"} 2' in lines
    assert "azp_pass_duration_seconds_count 2" in lines and "azp_pass_duration_seconds_sum 3.2" in lines
    assert text.endswith("\n")


def test_agent_state() -> None:
    """We test: busy wins, then offline, then idle or disabled."""
    assert agent_state(online=False, enabled=True, busy=True) == "busy"
    assert agent_state(online=False, enabled=True, busy=False) == "offline"
    assert agent_state(online=True, enabled=False, busy=False) == "disabled"
    assert agent_state(online=True, enabled=True, busy=False) == "idle"
