"""We test: the Roles grant exactly reconciler/rbac.json (no extra verb, resource or group) in each
agent namespace and, for the Lease, in the release namespace; every Role is bound to the reconciler's
ServiceAccount and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from chart_helpers import CHART, NAMESPACE, REPO, find, only, render_chart, with_defaults

RBAC = json.loads((REPO / "reconciler" / "rbac.json").read_text(encoding="utf-8"))


def _grants(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _roles_by_namespace(objects: list[dict[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in find(objects, "Role")}


def test_chart_copy_of_rbac_json_is_current() -> None:
    """We test: chart/files/rbac.json (what the templates read) equals reconciler/rbac.json."""
    assert json.loads((CHART / "files" / "rbac.json").read_text(encoding="utf-8")) == RBAC


def test_roles_grant_exactly_rbac_json() -> None:
    """We test: agent-namespace Role and lease Role grant exactly the listed permissions."""
    objects = render_chart(with_defaults())
    roles = _roles_by_namespace(objects)
    assert set(roles) == {(NAMESPACE, "azp-agents-reconciler"), (NAMESPACE, "azp-agents-reconciler-lease")}
    assert _grants(roles[(NAMESPACE, "azp-agents-reconciler")]["rules"]) == _grants(RBAC["agentNamespace"])
    assert _grants(roles[(NAMESPACE, "azp-agents-reconciler-lease")]["rules"]) == _grants(RBAC["leaseNamespace"])
    for role in roles.values():
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs"
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_one_role_per_agent_namespace() -> None:
    """We test: pools in other namespaces get their own Role and RoleBinding there."""
    values = with_defaults(
        pools=[{"name": "a"}, {"name": "b", "namespace": "team-b"}, {"name": "c", "namespace": "team-b"}]
    )
    objects = render_chart(values)
    roles = _roles_by_namespace(objects)
    assert set(roles) == {
        (NAMESPACE, "azp-agents-reconciler"),
        ("team-b", "azp-agents-reconciler"),
        (NAMESPACE, "azp-agents-reconciler-lease"),
    }
    assert _grants(roles[("team-b", "azp-agents-reconciler")]["rules"]) == _grants(RBAC["agentNamespace"])
    bindings = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in find(objects, "RoleBinding")}
    assert bindings == set(roles)


def test_bindings_name_only_the_reconciler_service_account() -> None:
    """We test: each RoleBinding binds its own Role to the reconciler ServiceAccount of the release namespace."""
    objects = render_chart(with_defaults(pools=[{"name": "a", "namespace": "team-a"}]))
    account = only(objects, "ServiceAccount", "azp-agents-reconciler")
    for binding in find(objects, "RoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": binding["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "azp-agents-reconciler", "namespace": account["metadata"]["namespace"]}
        ]


def test_standby_history_role_only_when_a_template_learns() -> None:
    """We test: a template with standbyLearn.enabled adds a Role (and its binding) in the release namespace
    granting exactly rbac.json's standbyHistory rules, get/update limited to the release's history ConfigMap
    by name and create unrestricted (RBAC cannot limit create by name); without it, no such Role."""
    learning = [{"name": "Default", "templates": [{"name": "linux", "standbyLearn": {"enabled": True}}]}]
    objects = render_chart(with_defaults(pools=learning))
    role = only(objects, "Role", "azp-agents-reconciler-standby-history")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert (
        _grants(role["rules"])
        == _grants(RBAC["standbyHistory"])
        == {
            ("", "configmaps", "get"),
            ("", "configmaps", "update"),
            ("", "configmaps", "create"),
        }
    )
    by_verbs = {tuple(rule["verbs"]): rule.get("resourceNames") for rule in role["rules"]}
    assert by_verbs == {("get", "update"): ["azp-agents-standby-history"], ("create",): None}
    assert find(objects, "RoleBinding", "azp-agents-reconciler-standby-history")
    disabled = [{"name": "Default", "templates": [{"name": "linux", "standbyLearn": {"enabled": False}}]}]
    for values in (with_defaults(), with_defaults(pools=disabled)):
        rendered = render_chart(values)
        assert not [o for o in rendered if o["metadata"]["name"].endswith("standby-history")]


def test_no_lease_role_when_the_lease_is_disabled() -> None:
    """We test: with reconciler.lease.enabled=false the lease Role and its binding are not rendered."""
    objects = render_chart(with_defaults(reconciler={"lease": {"enabled": False}}))
    names = {o["metadata"]["name"] for o in objects if o["kind"] in ("Role", "RoleBinding")}
    assert names == {"azp-agents-reconciler"}


def test_service_accounts_do_not_automount_tokens() -> None:
    """We test: both ServiceAccounts opt out of token automounting (only reconciler pods opt back in)."""
    objects = render_chart(with_defaults(pools=[{"name": "a", "namespace": "team-a"}]))
    accounts = find(objects, "ServiceAccount")
    assert {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in accounts} == {
        (NAMESPACE, "azp-agents-reconciler"),
        (NAMESPACE, "azp-agents-agent"),
        ("team-a", "azp-agents-agent"),
    }
    assert all(a["automountServiceAccountToken"] is False for a in accounts)


def test_readme_rbac_table_lists_what_the_roles_grant() -> None:
    """We test: the chart README's "What the chart creates" rows for the Roles name exactly the verbs of
    reconciler/rbac.json (a README that promised get on Jobs once disagreed with the Role)."""
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    for role, rules in (("`<fullname>-reconciler`", RBAC["agentNamespace"]), ("-lease`", RBAC["leaseNamespace"])):
        row = next(line for line in readme.splitlines() if line.startswith("| Role + RoleBinding") and role in line)
        documented = {
            (resource.strip().lower(), verb)
            for part in row.split("|")[3].split(";")
            for resource, verbs in [part.split(":")]
            for verb in verbs.strip().split("/")
        }
        granted = {(resource, verb) for rule in rules for resource in rule["resources"] for verb in rule["verbs"]}
        assert documented == granted, row
