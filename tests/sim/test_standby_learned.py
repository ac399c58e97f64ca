"""History-based standby through the front door: the real CLI against the emulators records the queue's peaks
in the `<release>-standby-history` ConfigMap and keeps agents warm before a learned peak.

The emulators run on the wall clock, so a week is not replayed here: the week before is written into the
ConfigMap as the reconciler itself would have left it (standby.encode of recorded buckets), and the hour of
the week is the real one. The benchmark (`benchmarks/standby.py`, tests/benchmarks/test_standby_bench.py)
replays whole weeks of office-hours traffic through plan(), which records and reads the same history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Sim

from azp_simulation.kube_emulator import rbac_subject_from_file
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


RBAC = Path(__file__).resolve().parents[2] / "reconciler" / "rbac.json"
TOKEN = "reconciler-sa-token"


def _grant_all_but(sim: Sim, tmp_path: Path, verb: str | None) -> None:
    """Serve the reconciler as a service account holding rbac.json, less `verb` on configmaps."""
    document = json.loads(RBAC.read_text())
    for rule in document["standbyHistory"]:
        rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    path = tmp_path / "rbac.json"
    path.write_text(json.dumps(document))
    subject = rbac_subject_from_file(path, name="system:serviceaccount:azp-agents:r", agent_namespace=NAMESPACE)
    sim.kube.rbac = {TOKEN: subject}
    sim.kube.write_kubeconfig(sim.simulation.kubeconfig_path, token=TOKEN, namespace=NAMESPACE)


def test_the_role_grants_exactly_what_recording_needs(sim: Sim, tmp_path: Path) -> None:
    """We test: granted exactly rbac.json's standbyHistory rules (get/update on that one ConfigMap by name,
    create), a run creates the history and the next updates it without a 403, and `check` finds every
    permission, the named ones included; any other ConfigMap stays out of reach (resourceNames)."""
    _learning(sim)
    _grant_all_but(sim, tmp_path, None)
    sim.queue(count=2, duration=600)
    first = sim.reconcile()
    sim.queue(count=1, duration=600)
    second = sim.reconcile()
    assert (first.code, second.code) == (0, 0), first.text + second.text
    writes = [(c.method, c.status) for c in sim.kube.calls() if "configmaps" in c.key and c.method != "GET"]
    assert writes == [("POST", 201), ("PUT", 200)], writes
    checked = sim.cli("check")
    assert checked.code == 0, checked.text
    assert f"can get configmaps {HISTORY} in {NAMESPACE}" in checked.text
    subject = sim.kube.rbac[TOKEN]
    assert not subject.allows(verb="get", group="", resource="configmaps", namespace=NAMESPACE, name="other")


@pytest.mark.parametrize("verb", ["get", "create", "update"])
def test_each_standby_history_verb_is_needed(sim: Sim, tmp_path: Path, verb: str) -> None:
    """We test, for one verb taken from the standbyHistory rules: the run that needs it is refused (exit 1,
    the message names the call), and `check` names the missing permission."""
    _learning(sim)
    if verb == "update":
        sim.kube.add_configmap(NAMESPACE, HISTORY, {})
    _grant_all_but(sim, tmp_path, verb)
    sim.queue(count=2, duration=600)
    result = sim.reconcile()
    assert result.code == 1, result.text
    phrase = "could not read the standby history" if verb == "get" else f"Kubernetes forbids {verb} configmap"
    assert phrase in result.text, result.text
    checked = sim.cli("check")
    assert checked.code != 0 and f"can {verb} configmaps" in checked.text, checked.text
