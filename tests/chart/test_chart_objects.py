"""We test the small objects: the PAT Secret in every namespace that needs it, agent Namespaces only on
request, cache claims per agent namespace, the helm test Pod, and the NOTES printed after install."""

from __future__ import annotations

import base64
import re
import subprocess

import pytest
from chart_helpers import (
    CHART,
    NAMESPACE,
    RELEASE,
    TEST_PAT,
    config_of,
    find,
    helm_path,
    helm_template,
    only,
    parse_documents,
    render_chart,
    render_failure,
    with_defaults,
)

TWO_NAMESPACES = [{"name": "a"}, {"name": "b", "namespace": "team-b"}]


def test_secret_in_release_and_agent_namespaces() -> None:
    """We test: the chart's PAT Secret exists in the release namespace and every agent namespace."""
    secrets = find(render_chart(with_defaults(pools=TWO_NAMESPACES)), "Secret")
    assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in secrets} == {
        (NAMESPACE, "azp-agents-pat"),
        ("team-b", "azp-agents-pat"),
    }
    for secret in secrets:
        assert secret["type"] == "Opaque"
        assert base64.b64decode(secret["data"]["pat"]).decode() == TEST_PAT


@pytest.mark.parametrize("helm", ["helm", "helm3"])
def test_no_pat_secret_in_agent_namespaces_when_the_reconciler_registers_agents(helm: str) -> None:
    """We test: with agent.registration reconciler the PAT Secret is only in the release namespace (for the
    reconciler), the reconciler's config says so, and no rendered object of an agent namespace holds the PAT;
    token keeps the Secret in every agent namespace."""
    values = with_defaults(pools=TWO_NAMESPACES, agent={"registration": "reconciler", "namespace": "agents"})
    objects = render_chart(values, helm=helm)
    secrets = find(objects, "Secret")
    assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in secrets} == {(NAMESPACE, "azp-agents-pat")}
    assert config_of(objects)["agents"] == {"registration": "reconciler"}
    encoded = base64.b64encode(TEST_PAT.encode()).decode()
    for obj in objects:
        if obj["metadata"].get("namespace") in ("agents", "team-b"):
            assert TEST_PAT not in str(obj) and encoded not in str(obj), obj["metadata"]

    token = render_chart(with_defaults(pools=TWO_NAMESPACES, agent={"registration": "token", "namespace": "agents"}))
    assert {s["metadata"]["namespace"] for s in find(token, "Secret")} == {NAMESPACE, "agents", "team-b"}
    assert config_of(token)["agents"] == {"registration": "token"}


def test_registration_defaults_to_token_with_a_pat_and_is_validated() -> None:
    """We test: without agent.registration a PAT-holding reconciler keeps agents registering with the PAT, and
    an unknown value is refused naming the key."""
    assert config_of(render_chart(with_defaults()))["agents"] == {"registration": "token"}
    assert "registration" in render_failure(with_defaults(agent={"registration": "pat"}))


def test_no_secret_with_an_existing_one() -> None:
    """We test: auth.existingSecret means the chart creates no Secret at all."""
    values = with_defaults(auth={"pat": "", "existingSecret": "mine"})
    assert not find(render_chart(values), "Secret")


def test_namespaces_are_created_only_on_request() -> None:
    """We test: agent namespaces are used as they are unless agent.createNamespaces; never the release's."""
    assert not find(render_chart(with_defaults(pools=TWO_NAMESPACES)), "Namespace")
    values = with_defaults(pools=TWO_NAMESPACES, agent={"createNamespaces": True, "namespaceLabels": {"team": "b"}})
    namespace = only(render_chart(values), "Namespace")
    assert namespace["metadata"]["name"] == "team-b"
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["team"] == "b"


def test_risky_opt_ins_relax_pod_security_of_created_namespaces() -> None:
    """We test: with the docker socket the created namespace admits privileged pods (else they are refused)."""
    socket = {"enabled": True, "groupId": 999}
    values = with_defaults(pools=TWO_NAMESPACES, agent={"createNamespaces": True, "dockerSocket": socket})
    namespace = only(render_chart(values), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_pod_policy_allowances_and_own_levels_label_created_namespaces() -> None:
    """We test: a podPolicy allowance that baseline refuses (hostPath) labels the namespace privileged; a level
    given in agent.namespaceLabels replaces the chart's (one label, not two), and is refused when too strict
    (test_chart_bad_values)."""
    values = with_defaults(
        pools=TWO_NAMESPACES, agent={"createNamespaces": True}, reconciler={"podPolicy": {"allowHostPath": True}}
    )
    labels = only(render_chart(values), "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    own = {"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/warn": "restricted"}
    values = with_defaults(pools=TWO_NAMESPACES, agent={"createNamespaces": True, "namespaceLabels": own})
    code, stdout, _ = helm_template(values=values)
    assert code == 0 and stdout.count("pod-security.kubernetes.io/enforce:") == 1
    labels = only(parse_documents(stdout), "Namespace")["metadata"]["labels"]
    assert {k: labels[k] for k in own} == own


def test_default_agent_namespace_moves_everything() -> None:
    """We test: agent.namespace moves agent objects there; the release namespace keeps the reconciler's."""
    objects = render_chart(with_defaults(agent={"namespace": "agents"}))
    agent_account = only(objects, "ServiceAccount", "azp-agents-agent")
    assert agent_account["metadata"]["namespace"] == "agents"
    assert {s["metadata"]["namespace"] for s in find(objects, "Secret")} == {NAMESPACE, "agents"}
    assert only(objects, "CronJob")["metadata"]["namespace"] == NAMESPACE


def test_cache_claims_per_agent_namespace() -> None:
    """We test: each enabled cache without existingClaim is a ReadWriteMany claim in every agent namespace."""
    caches = {
        "tasks": {"enabled": True, "size": "3Gi", "storageClass": "azurefile"},
        "npm": {"enabled": True, "existingClaim": "mine"},
    }
    claims = find(render_chart(with_defaults(pools=TWO_NAMESPACES, caches=caches)), "PersistentVolumeClaim")
    assert {(c["metadata"]["namespace"], c["metadata"]["name"]) for c in claims} == {
        (NAMESPACE, "azp-agents-cache-tasks"),
        ("team-b", "azp-agents-cache-tasks"),
    }
    for claim in claims:
        assert claim["spec"] == {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "azurefile",
            "resources": {"requests": {"storage": "3Gi"}},
        }


def test_no_cache_claims_by_default() -> None:
    """We test: caches are opt-in."""
    assert not find(render_chart(with_defaults()), "PersistentVolumeClaim")


def test_helm_test_pod_runs_check_like_the_cron_job() -> None:
    """We test: the test hook Pod runs `azp-reconciler check` with the CronJob's mounts and security."""
    objects = render_chart(with_defaults())
    pod = only(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["azp-reconciler", "check", "--config", "/etc/azp-agents/config.yaml"]
    cron_pod = only(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["spec"]["volumes"] == cron_pod["volumes"]
    assert pod["spec"]["securityContext"] == cron_pod["securityContext"]
    assert container["securityContext"] == cron_pod["containers"][0]["securityContext"]
    assert container["volumeMounts"] == cron_pod["containers"][0]["volumeMounts"]
    assert not find(render_chart(with_defaults(tests={"enabled": False})), "Pod")


def _notes(*sets: str) -> str:
    # helm 3 needs a reachable cluster even for a client-side dry run, so NOTES are rendered by helm 4.
    args = [
        str(helm_path("helm")),
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "--set",
        "organization.url=https://dev.azure.com/contoso",
        "--set",
        f"auth.pat={TEST_PAT}",
    ]
    for item in sets:
        args += ["--set", item]
    completed = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split("NOTES:", 1)[1]


def test_notes_tell_how_to_watch_and_run_a_pass() -> None:
    """We test: NOTES give the label-selected watch, logs and the run-a-pass-now commands."""
    notes = _notes()
    selector = f"app.kubernetes.io/managed-by=azp-agents,app.kubernetes.io/instance={RELEASE}"
    assert f"kubectl get jobs -n {NAMESPACE} -l {selector}" in notes
    assert "kubectl create job --from=cronjob/azp-agents-reconciler " in notes
    assert "kubectl logs" in notes and "job-name=" in notes
    assert "WARNING" not in notes
    assert TEST_PAT not in notes


@pytest.mark.parametrize(
    ("sets", "unlabelled"),
    [
        (("agent.dockerSocket.enabled=true", "agent.dockerSocket.groupId=999"), [NAMESPACE]),
        (("reconciler.podPolicy.allowHostPath=true", "agent.namespace=agents"), ["agents"]),
        (("agent.privileged=true", "agent.namespace=agents", "agent.createNamespaces=true"), []),
        ((), []),
    ],
)
def test_notes_say_which_namespaces_need_the_privileged_pod_security_label(
    sets: tuple[str, ...], unlabelled: list[str]
) -> None:
    """We test: when agent pods need Pod Security privileged, NOTES name each agent namespace the chart does
    not label (the release namespace, or any when agent.createNamespaces is off) with the kubectl label
    command; a namespace the chart creates and labels is not named."""
    notes = _notes(*sets)
    commands = re.findall(r"kubectl label namespace (\S+) pod-security.kubernetes.io/enforce=privileged", notes)
    assert commands == unlabelled, notes
    assert ('need Pod Security "privileged"' in notes) == bool(unlabelled)


@pytest.mark.parametrize("sets", [(), ("fullnameOverride=" + "a" * 40,)])
def test_notes_run_a_pass_command_names_a_new_valid_job_each_time(sets: tuple[str, ...]) -> None:
    """We test: the run-a-pass-now command, run by a shell, names a Job after the CronJob with a timestamp
    (a second run does not collide with the first) that is a valid Job name (a DNS label, at most 63
    characters, as its pods' job-name label needs), also for a long release name."""
    notes = _notes(*sets)
    line = next(line for line in notes.splitlines() if "kubectl create job --from=cronjob/" in line)
    cronjob = line.split("--from=cronjob/", 1)[1].split()[0]
    quoted = re.findall(r'"([^"]+)"', line)
    assert len(quoted) == 1 and "$(date +%s)" in quoted[0], line
    name = subprocess.run(["bash", "-c", f'printf %s "{quoted[0]}"'], capture_output=True, text=True).stdout
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
    assert name.startswith(cronjob[:44].rstrip("-")) and re.search(r"-manual-[0-9]{10}$", name), name
    assert f"-n {NAMESPACE}" in line


def test_notes_warn_on_risky_values() -> None:
    """We test: the docker socket and privileged agents each produce a WARNING; the BuildKit sidecar a NOTE
    that gives the Pod Security level it needs and the command to label the agent namespaces it does not
    create (here the release namespace)."""
    notes = _notes("agent.dockerSocket.enabled=true", "agent.dockerSocket.groupId=999", "agent.privileged=true")
    assert "WARNING: agent.dockerSocket.enabled" in notes
    assert "WARNING: agent.privileged" in notes
    notes = _notes("agent.buildkit.enabled=true")
    assert "NOTE: agent.buildkit.enabled" in notes and "enforce `privileged`" in notes
    assert f"kubectl label namespace {NAMESPACE} pod-security.kubernetes.io/enforce=privileged --overwrite" in notes
