"""We test least privilege: with the Kubernetes emulator in RBAC mode granting exactly
reconciler/rbac.json (what the chart's Roles grant), a pass over the rich world does everything and
`check` passes; with any one verb taken away, a test shows the feature that breaks, so no rule is
superfluous."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invariants import max_agents_of, violations
from reliability_support import NAMESPACE, REPO, RichWorld, build_rich_world, converge, run_cli

from azp_simulation.kube_emulator import rbac_subject_from_file

RBAC = REPO / "reconciler" / "rbac.json"
TOKEN = "reconciler-sa-token"
USER = f"system:serviceaccount:{NAMESPACE}:azp-agents-reconciler"


def _grant(world: RichWorld, document: dict[str, Any]) -> None:
    """Serve the reconciler's requests as a service account holding exactly these rules."""
    path = world.rig.directory / "rbac.json"
    path.write_text(json.dumps(document))
    subject = rbac_subject_from_file(path, name=USER, agent_namespace=NAMESPACE)
    world.rig.kube.rbac = {TOKEN: subject}
    world.rig.kube.write_kubeconfig(world.rig.kubeconfig_path, token=TOKEN, namespace=NAMESPACE)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RichWorld]:
    built = build_rich_world(tmp_path)
    yield built
    built.rig.simulation.stop()


def _check(world: RichWorld) -> Any:
    rig = world.rig
    return run_cli(["check", "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path)])


def test_exactly_the_granted_rules_are_enough(world: RichWorld) -> None:
    """We test: granted exactly rbac.json, one pass does every kind of action (create, drain, stuck,
    prune, placeholders, Lease), nothing is forbidden, and `check` reports every permission present."""
    _grant(world, json.loads(RBAC.read_text()))
    result, problems = converge(world, passes=1)
    assert result.code == 0, result.out
    assert not problems, problems
    assert "forbid" not in result.out.lower()
    forbidden = [c for c in world.rig.kube.calls() if c.status == 403]
    assert forbidden == []
    assert not violations(world.rig.simulation, max_agents=max_agents_of(world.rig.config()))
    checked = _check(world)
    assert checked.code == 0, checked.out
    assert "checks: all" in checked.out


# (rule section, resource, verb) -> what must break without it: exit code and a phrase of the output. A 403 in
# an agent namespace fails that namespace's actions only (exit 1); without the Lease no run can start (exit 2).
BREAKS: dict[tuple[str, str, str], tuple[int, str, str]] = {
    ("agentNamespace", "jobs", "create"): (1, "Kubernetes forbids create job", "no Job is created for queued requests"),
    ("agentNamespace", "jobs", "delete"): (
        1,
        "Kubernetes forbids delete job",
        "idle and stuck agents are never reaped",
    ),
    ("agentNamespace", "jobs", "list"): (1, "Kubernetes forbids list jobs", "no pass can observe its Jobs"),
    ("agentNamespace", "jobs", "get"): (0, "", "nothing in a pass"),
    ("agentNamespace", "pods", "list"): (1, "Kubernetes forbids list pods", "no pass can see agent pods"),
    ("agentNamespace", "pods", "get"): (0, "", "nothing in a pass"),
    ("agentNamespace", "events", "create"): (
        0,
        "could not record event",
        "decisions are missing from the Job's Events",
    ),
    ("agentNamespace", "secrets", "create"): (
        1,
        "Kubernetes forbids create secret",
        "agents the reconciler registers (agents.registration: reconciler) get no files, so no Job stays",
    ),
    ("leaseNamespace", "leases", "get"): (2, "Kubernetes forbids get lease", "no run can start"),
    ("leaseNamespace", "leases", "create"): (2, "Kubernetes forbids create lease", "a first run cannot start"),
    ("leaseNamespace", "leases", "update"): (2, "forbids update lease", "the Lease is never released or renewed"),
}


def _cases() -> list[Any]:
    document = json.loads(RBAC.read_text())
    cases = []
    for section in ("agentNamespace", "leaseNamespace"):
        for rule in document[section]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    cases.append(pytest.param(section, resource, verb, id=f"{resource}-{verb}"))
    return cases


def _without(document: dict[str, Any], section: str, resource: str, verb: str) -> dict[str, Any]:
    reduced = copy.deepcopy(document)
    for rule in reduced[section]:
        if resource in rule["resources"] and verb in rule["verbs"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    return reduced


@pytest.mark.parametrize(("section", "resource", "verb"), _cases())
def test_each_rule_is_needed(world: RichWorld, section: str, resource: str, verb: str) -> None:
    """We test, for one verb taken away from the Role: which feature breaks (exit code, the message that
    names the missing permission, and the effect on the world), and that `check` names it."""
    assert (section, resource, verb) in BREAKS, f"rbac.json grew a rule this test does not know: {resource} {verb}"
    code, phrase, effect = BREAKS[(section, resource, verb)]
    _grant(world, _without(json.loads(RBAC.read_text()), section, resource, verb))
    rig = world.rig
    if resource == "secrets":
        # Only a reconciler that registers the agents itself writes Secrets (their files).
        rig.write_config({**rig.config(), "agents": {"registration": "reconciler"}})
    result = rig.reconcile()
    forbidden = [c for c in rig.kube.calls() if c.status == 403]
    assert forbidden, f"nothing in a pass needs {verb} {resource}: the rule is superfluous\n{result.out}"
    assert result.code == code, f"without {verb} {resource}, {effect}: {result.out}"
    assert phrase in result.out, result.out
    assert not violations(rig.simulation, max_agents=max_agents_of(rig.config()))
    if (resource, verb) in (("jobs", "create"), ("secrets", "create")):
        assert not any(j["metadata"]["name"] in world.expected_job_names() for j in rig.jobs())
    if (resource, verb) == ("events", "create"):
        assert rig.kube.objects("events", NAMESPACE) == [] or all(
            e.get("source", {}).get("component") != "azp-agents-reconciler"
            for e in rig.kube.objects("events", NAMESPACE)
        )
    checked = _check(world)
    assert checked.code != 0, checked.out
    assert f"can {verb} {resource}" in checked.out, checked.out


def test_without_lease_update_the_next_run_waits(world: RichWorld) -> None:
    """We test what breaks without leases/update besides the exit code: the Lease is never released, so
    the next run within durationSeconds does nothing, and `check` names the missing permission."""
    _grant(world, _without(json.loads(RBAC.read_text()), "leaseNamespace", "leases", "update"))
    rig = world.rig
    first = rig.reconcile()
    assert "forbids update lease" in first.out, first.out
    again = rig.reconcile()
    assert again.code == 0 and "holds the Lease" in again.out, again.out
    assert "creating Job" not in again.out
    checked = _check(world)
    assert checked.code != 0 and "can update leases" in checked.out, checked.out
