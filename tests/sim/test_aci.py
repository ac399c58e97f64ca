"""We test the Azure Container Instances backend end to end: the real CLI in its own process, through
azure-identity and azure-mgmt-containerinstance over HTTPS to the ARM emulator, whose container groups run
simulated agents in the Azure DevOps emulator."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import PAT, Sim

from azp_simulation.arm_emulator import ArmEmulator
from azp_simulation.kube_support import rbac_subject_from_file
from azp_simulation.runner import run_simulation
from azp_simulation.world import ACI_RESOURCE_GROUP
from reconciler import container_groups
from reconciler.lease import parse_time

LOOP = ("--loop-for", "25", "--interval", "0.5", "--idle-interval", "1")
RBAC = Path(__file__).resolve().parents[2] / "reconciler" / "rbac.json"


def aci_world(**aci: Any) -> dict[str, Any]:
    """One Linux pool on ACI; groups start 1.5 s after their create (30 s of ACI time, x0.05)."""
    return {
        "name": "aci",
        "timeout": 60,
        "backend": "aci",
        "aci": {"startDelay": 30, "timeScale": 0.05, **aci},
        "reconciler": {"loopFor": 0, "interval": 0.5, "idleInterval": 1, "sweepInterval": 10},
        "pools": [
            {
                "name": "linux",
                "maxAgents": 4,
                "provisioningTimeout": 6,
                "idleTimeout": 3,
                "templates": [{"name": "default", "capabilities": {"docker": "", "Agent.OS": "Linux"}}],
            }
        ],
    }


def arm(sim: Sim) -> ArmEmulator:
    assert sim.simulation.arm is not None
    return sim.simulation.arm


def puts(sim: Sim) -> int:
    return arm(sim).call_counts().get("PUT containerGroups/{name}", 0)


def test_burst_scenario_serves_every_job_on_aci() -> None:
    """We test: the burst scenario (40 jobs, 3 pools, Windows and Linux templates, a cancellation, a group whose
    agent never starts, leftovers to prune) serves every job on the ACI backend, reaps the stuck group, and
    leaves no group running and no agent of ours registered."""
    summary = run_simulation("burst", backend="aci")
    assert summary.ok, summary.as_dict()
    assert summary.served + summary.canceled == summary.jobs
    assert summary.stuck >= 1
    assert summary.leftovers == {"offline_agents": 0, "online_agents": 0, "active_jobs": 0}
    assert summary.arm_calls_per_pass.get("PUT containerGroups/{name}", 0) > 0
    assert summary.kube_calls_per_pass.keys() <= {"GET leases", "POST leases", "PUT leases"}


def test_groups_keep_the_pat_from_the_steps_container(make_sim: Callable[..., Sim]) -> None:
    """We test: a Linux group carries the PAT only in a secret volume mounted in its `register` init
    container (never in the agent container, never in any GET or list answer), is tagged with the release,
    pool, template and request, and restarts Never; a job runs on it and is served."""
    sim = make_sim(aci_world())
    sim.queue("linux", 1, demands=("docker",), duration=30)
    result = sim.reconcile("--loop-for", "4", "--interval", "0.5")
    assert result.code == 0, result.text
    sim.wait_for(lambda: any(a.get("status") == "online" for a in sim.agents()), timeout=20, what="agent online")
    (stored,) = [g for g in arm(sim).stored(ACI_RESOURCE_GROUP) if g.get("tags")]
    properties = stored["properties"]
    assert properties["restartPolicy"] == "Never"
    (agent,) = properties["containers"]
    (register,) = properties["initContainers"]
    assert PAT not in json.dumps(agent) and "azp-token" not in json.dumps(agent)
    assert [m["name"] for m in register["properties"]["volumeMounts"] if m["name"] == "azp-token"] == ["azp-token"]
    tags = stored["tags"]
    assert tags[container_groups.TAG_RELEASE] == "azp-agents" and tags[container_groups.TAG_POOL] == "linux"
    assert tags[container_groups.TAG_TEMPLATE] == "default" and tags[container_groups.TAG_REQUEST_ID].isdigit()
    assert PAT not in json.dumps(arm(sim).groups())


def test_quota_refusal_is_reported_and_backed_off(make_sim: Callable[..., Sim]) -> None:
    """We test: with room for 2 container groups in the region, 4 queued jobs give 2 groups; the third create
    is refused with ContainerGroupQuotaReached, reported with ARM's message, fails the run (exit 1), and the
    template creates nothing more for its backoff, however many passes run."""
    sim = make_sim(aci_world(quotas={"containerGroups": 2}))
    sim.queue("linux", 4, demands=("docker",), duration=60)
    result = sim.reconcile("--loop-for", "5", "--interval", "0.5")
    assert result.code == 1, result.text
    assert "ContainerGroupQuotaReached" in result.err
    assert "container group quota 'ContainerGroups' exceeded in region 'westeurope'" in result.err
    assert re.search(r"creates nothing before \S+ \(refusal 1 in a row\)", result.err)
    assert "its last create was refused; next try after" in result.err
    assert puts(sim) == 3
    assert len([g for g in arm(sim).groups(ACI_RESOURCE_GROUP)]) == 2


def test_inaccessible_image_fails_the_create_and_backs_off(make_sim: Callable[..., Sim]) -> None:
    """We test: an image ACI cannot pull is refused at create (400 InaccessibleImage): the failure names the
    code and the image, and the template is not tried again within its backoff."""
    sim = make_sim(aci_world(inaccessibleImages=["ghcr.io/azp-agents/agent-linux:*"]))
    sim.queue("linux", 2, demands=("docker",), duration=5)
    result = sim.reconcile("--loop-for", "4", "--interval", "0.5")
    assert result.code == 1, result.text
    assert "InaccessibleImage" in result.err and "ghcr.io/azp-agents/agent-linux:4.269.0" in result.err
    assert puts(sim) == 1
    assert arm(sim).groups(ACI_RESOURCE_GROUP) == []


def test_group_whose_provisioning_fails_is_reported_and_replaced(make_sim: Callable[..., Sim]) -> None:
    """We test: a group whose provisioning ends Failed (ARM's long-running create failed after the PUT was
    accepted) is seen by the next pass, reported with its reason, and after the crash backoff another group
    serves the job."""
    message = "The requested resource is not available in the location 'westeurope' at this moment."
    sim = make_sim(aci_world(failProvisioning=[{"pool": "linux", "nth": 1, "message": message}]))
    sim.queue("linux", 1, demands=("docker",), duration=1)
    result = sim.reconcile(*LOOP)
    assert "ProvisioningFailed" in result.err and message in result.err, result.text
    assert [r.get("result") for r in sim.requests()] == ["succeeded"]
    assert puts(sim) == 2


def test_group_stuck_creating_is_reaped(make_sim: Callable[..., Sim]) -> None:
    """We test: a group that never leaves Creating (its containers never start) is deleted once the pool's
    provisioningTimeout passes, reported as stuck, and another group serves the job."""
    sim = make_sim(aci_world(), stuck_pods=[{"pool": "linux", "nth": 1}])
    sim.queue("linux", 1, demands=("docker",), duration=1)
    result = sim.reconcile(*LOOP)
    assert result.code == 0, result.text
    assert re.search(r"deleting container group azp-agents/\S+ of pool 'linux': stuck", result.err), result.err
    assert [r.get("result") for r in sim.requests()] == ["succeeded"]
    assert arm(sim).call_counts().get("DELETE containerGroups/{name}", 0) >= 1


def test_cleanup_removes_the_release_groups_only(make_sim: Callable[..., Sim]) -> None:
    """We test: `azp-reconciler cleanup --force` deletes every container group of the release, running
    ones included (their agents stop: none stays online), deregisters its placeholders, and leaves a group
    someone else made in the same resource group."""
    sim = make_sim(aci_world())
    web = {"name": "web", "properties": {"image": "nginx"}}
    foreign = {"location": "westeurope", "properties": {"containers": [web]}}
    arm(sim).add_group(ACI_RESOURCE_GROUP, "someone-elses", foreign)
    sim.queue("linux", 2, demands=("docker",), duration=120)
    sim.reconcile("--loop-for", "4", "--interval", "0.5")
    sim.wait_for(lambda: sum(a.get("status") == "online" for a in sim.agents()) == 2, timeout=20, what="2 agents")
    config, kubeconfig = str(sim.config_path), str(sim.simulation.kubeconfig_path)
    result = sim.cli("cleanup", "--config", config, "--kubeconfig", kubeconfig, "--force", "--wait", "5")
    assert result.code == 0, result.text
    assert [g["name"] for g in arm(sim).groups(ACI_RESOURCE_GROUP)] == ["someone-elses"]
    ours = [a for a in sim.agents() if str(a.get("name", "")).startswith("azp-")]
    assert not [a for a in ours if a["name"].startswith("azp-placeholder-") or a.get("status") == "online"]


def test_check_signs_in_to_azure_and_lists_the_groups(make_sim: Callable[..., Sim]) -> None:
    """We test: `azp-reconciler check` on ACI signs in with the service principal and lists the resource
    group's container groups, and asks the API server for the Lease's permissions (not for Jobs or pods: no
    agent namespaces); with a wrong client secret it fails, saying the credential was refused."""
    sim = make_sim(aci_world(), install=False)
    result = sim.cli("check")
    assert result.code == 0, result.text
    assert re.search(r"container groups in azp-agents\s+ok\s+listed \(0 of this release\)", result.out), result.out
    assert re.search(r"can update leases.coordination.k8s.io in azp-agents\s+ok\s+allowed", result.out)
    assert " jobs.batch " not in result.out and "pods in" not in result.out  # no agent namespaces on ACI
    (sim.simulation.directory / "aci-client-secret").write_text("wrong\n")
    failed = sim.cli("check")
    assert failed.code == 1, failed.text
    assert re.search(r"container groups in azp-agents\s+FAILED\s+.*AADSTS7000215", failed.out), failed.out
    assert "wrong" not in failed.out


@pytest.mark.parametrize("verb", ["get", "create", "update"])
def test_check_on_aci_names_a_lease_permission_the_role_lacks(
    make_sim: Callable[..., Sim], tmp_path: Path, verb: str
) -> None:
    """We test: `azp-reconciler check` on ACI, run as a service account holding only rbac.json's Lease rules
    (what the chart's ACI Role grants) less one verb, still signs in to Azure and lists the groups, but fails
    (exit 1) on the Lease row of that verb, saying RBAC denies it and to grant it in the reconciler's Role; the
    other Lease verbs are allowed."""
    sim = make_sim(aci_world(), install=False)
    document = json.loads(RBAC.read_text())
    document["agentNamespace"] = []  # ACI has no agent namespaces: the chart's Role holds the Lease's rules only
    for rule in document["leaseNamespace"]:
        rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    path = tmp_path / "rbac.json"
    path.write_text(json.dumps(document))
    token = "reconciler-sa-token"
    account = "system:serviceaccount:azp-agents:azp-agents-reconciler"
    sim.kube.rbac = {token: rbac_subject_from_file(path, name=account, agent_namespace="azp-agents")}
    sim.kube.write_kubeconfig(sim.simulation.kubeconfig_path, token=token, namespace="azp-agents")
    result = sim.cli("check")
    assert result.code == 1, result.text
    assert re.search(r"container groups in azp-agents\s+ok\s+listed", result.out), result.out
    denied = (
        rf"can {verb} leases.coordination.k8s.io in azp-agents\s+FAILED\s+denied: RBAC: no rule grants \"{verb}\" "
        r"on \"leases\" in API group \"coordination.k8s.io\" in the namespace \"azp-agents\": grant it in the "
        r"reconciler's Role"
    )
    assert re.search(denied, result.out), result.out
    for other in {"get", "create", "update"} - {verb}:
        assert re.search(rf"can {other} leases.coordination.k8s.io in azp-agents\s+ok\s+allowed", result.out)


def test_render_prints_the_group_without_secrets(make_sim: Callable[..., Sim]) -> None:
    """We test: `azp-reconciler render` on ACI prints the container group the reconciler would create, tagged
    and with its token volume, but never the PAT it would put there."""
    sim = make_sim(aci_world(), install=False)
    result = sim.cli("render", "--pool", "linux", "--request-id", "42")
    assert result.code == 0, result.text
    assert "azp-agents.request-id: '42'" in result.out and "restartPolicy: Never" in result.out
    assert "azp-token" in result.out and PAT not in result.out


WINDOWS = {"image": "ghcr.io/azp-agents/agent-windows:4.269.0", "capabilities": {"Agent.OS": "Windows_NT"}}


@pytest.mark.parametrize(("layout", "demand"), [({}, "docker"), (WINDOWS, "Agent.OS -equals Windows_NT")])
def test_named_instances_serve_a_burst_and_stay_n_agents(
    make_sim: Callable[..., Sim], layout: dict[str, Any], demand: str
) -> None:
    """We test: a template with `instances: 2` keeps two container groups under stable names with restartPolicy
    Always; a burst of 5 jobs is served by them one job per restart (restartCount goes up), and afterwards the
    pool holds exactly those 2 agents of ours, each name once, both online: no offline pile-up, no third group.
    Linux groups restart their `run` container on the registration the init container made; a Windows group's
    one container registers again on each start with --replace (same name, so the same agent)."""
    world = aci_world()
    world["pools"][0]["templates"][0] |= {"instances": 2, "placeholder": False, **layout}
    sim = make_sim(world)
    # No placeholder: the service fails a job at once while no agent of the pool could serve it, so the
    # jobs are queued once the instances have registered.
    assert sim.reconcile().code == 0
    sim.wait_for(
        lambda: len([a for a in sim.agents() if str(a.get("name", "")).startswith("azp-")]) == 2,
        timeout=30,
        what="2 instances registered",
    )
    sim.queue("linux", 5, demands=(demand,), duration=1)
    result = sim.reconcile("--loop-for", "20", "--interval", "0.5", "--idle-interval", "1")
    assert result.code == 0, result.text
    sim.wait_for(lambda: [r.get("result") for r in sim.requests()] == ["succeeded"] * 5, timeout=20, what="5 served")
    groups = arm(sim).groups(ACI_RESOURCE_GROUP)
    names = sorted(g["name"] for g in groups)
    assert len(names) == 2 and all(re.fullmatch(r"azp-\S+-default-i[01]", n) for n in names), names
    assert {g["properties"]["restartPolicy"] for g in groups} == {"Always"}
    restarts = [g["properties"]["containers"][0]["properties"]["instanceView"]["restartCount"] for g in groups]
    assert sum(restarts) >= 3, restarts  # 5 jobs on 2 groups: at least 3 restarts after a job
    sim.wait_for(lambda: all(a.get("status") == "online" for a in sim.agents()), timeout=10, what="agents back")
    ours = sorted(a["name"] for a in sim.agents() if str(a.get("name", "")).startswith("azp-"))
    assert ours == names
    assert puts(sim) == 2


def test_failing_named_instance_backs_off_longer_each_time(make_sim: Callable[..., Sim]) -> None:
    """We test: a named instance whose group keeps failing in provisioning (the install's first pass created it) is
    deleted and created again once its crash backoff is over, and the new group carries the failure (its
    crash-failures tag), so the backoff grows as for Jobs: the 1st failure waits 10 s, the 2nd 20 s from the new
    group's creation (10 s again if the history were lost with the deleted group). In 20 s of passes that is one
    create, its failure reported as the 2nd in a row."""
    world = aci_world()
    world["pools"][0]["templates"][0] |= {"instances": 1, "placeholder": False}
    message = "The requested resource is not available in the location 'westeurope' at this moment."
    world["aci"]["failProvisioning"] = [{"pool": "linux", "nth": n, "message": message} for n in range(1, 5)]
    sim = make_sim(world)
    result = sim.reconcile("--loop-for", "20", "--interval", "0.5", "--idle-interval", "0.5")
    assert "ProvisioningFailed" in result.err and message in result.err, result.text
    creates = re.findall(r"creating container group \S+ for pool 'linux' template 'default'", result.err)
    assert len(creates) == 1, result.err
    second = re.search(
        r"2 pod\(s\) of template 'default' failed before .*? no new Job for it before (\S+):", result.err
    )
    assert second is not None, result.err
    (group,) = arm(sim).groups(ACI_RESOURCE_GROUP)
    assert group["tags"][container_groups.TAG_CRASH_FAILURES] == "1"
    created = parse_time(group["tags"][container_groups.TAG_CREATED])
    assert created is not None and parse_time(second.group(1)) == created + timedelta(seconds=20)
    assert arm(sim).call_counts().get("DELETE containerGroups/{name}", 0) == 1
