"""History-based standby through the front door: the real CLI against the emulators records the queue's peaks
in the `<release>-standby-history` ConfigMap and keeps agents warm before a learned peak.

The emulators run on the wall clock, so a week is not replayed here: the week before is written into the
ConfigMap as the reconciler itself would have left it (standby.encode of recorded buckets), and the hour of
the week is the real one. The benchmark (`benchmarks/standby.py`, tests/benchmarks/test_standby_bench.py)
replays whole weeks of office-hours traffic through plan(), which records and reads the same history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import Sim

from reconciler import standby

NAMESPACE = "azp-agents"
HISTORY = "azp-agents-standby-history"


def _learning(sim: Sim, **learn: Any) -> None:
    document = sim.config()
    template = document["pools"][0]["templates"][0]
    template["standbyLearn"] = {"enabled": True, **learn}
    template.pop("minIdle", None)
    sim.write_config(document)


def _history(sim: Sim) -> dict[str, Any] | None:
    found = [c for c in sim.kube.objects("configmaps", NAMESPACE) if c["metadata"]["name"] == HISTORY]
    return found[0] if found else None


def _standby_jobs(sim: Sim) -> list[dict[str, Any]]:
    return [j for j in sim.jobs(active_only=True) if j["metadata"]["labels"].get("azp-agents.dev/standby") == "true"]


def test_a_pass_records_the_hour_peak_once_and_labels_the_configmap(sim: Sim) -> None:
    """We test: with standbyLearn on and 3 jobs queued, a run creates the history ConfigMap, labelled as
    the release's, holding this hour's peak of 3 for the template; a second run seeing the same 3 does not
    write it again (the hour's peak did not rise), and 2 more queued jobs raise it to 5."""
    _learning(sim)
    sim.queue(count=3, duration=600)
    assert sim.reconcile().code == 0
    history = _history(sim)
    assert history is not None
    labels = history["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "azp-agents" and labels["app.kubernetes.io/managed-by"]
    week, hour = standby.hour_of_week(datetime.now(UTC), UTC)
    assert standby.decode(history["data"]) == {"linux.default": {hour: (week, 3, 0)}}
    version = history["metadata"]["resourceVersion"]
    sim.kube.reset_calls()
    again = sim.reconcile()
    assert again.code == 0, again.text
    assert _history(sim)["metadata"]["resourceVersion"] == version  # type: ignore[index]
    assert not [c for c in sim.kube.calls() if "configmaps" in c.key and c.method != "GET"]
    sim.queue(count=2, duration=600)
    assert sim.reconcile().code == 0
    assert standby.decode(_history(sim)["data"])["linux.default"][hour][1] == 5  # type: ignore[index]


def test_agents_are_warm_before_a_peak_learned_last_week(sim: Sim) -> None:
    """We test: with an empty queue and a history whose next hour (in 5 minutes or less, lead 60 minutes)
    learned a peak of 4 last week, one run starts fraction 0.5 x 4 = 2 standby Jobs; with the peak learned
    for an hour far from now, none."""
    now = datetime.now(UTC)
    week, _ = standby.hour_of_week(now, UTC)
    _, next_hour = standby.hour_of_week(now + timedelta(hours=1), UTC)
    _, far_hour = standby.hour_of_week(now + timedelta(hours=6), UTC)
    _learning(sim, fraction=0.5, leadMinutes=60)
    sim.kube.add_configmap(NAMESPACE, HISTORY, standby.encode({"linux.default": {far_hour: (week - 1, 4, 0)}}))
    assert sim.reconcile().code == 0
    assert _standby_jobs(sim) == []
    sim.kube.add_configmap(NAMESPACE, HISTORY, standby.encode({"linux.default": {next_hour: (week - 1, 4, 0)}}))
    result = sim.reconcile()
    assert result.code == 0, result.text
    assert len(_standby_jobs(sim)) == 2, result.text
