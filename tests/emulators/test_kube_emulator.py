"""We test: the Kubernetes emulator answers the official `kubernetes` client (and kubectl) like an API
server: routes, defaulting, selectors, paging, Status errors, RBAC, validation, the Job controller, the
simulated kubelet, garbage collection, TTL, hooks, faults and the call log."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from kube_fixtures import NAMESPACE, PAT, Cluster, FakeClock, agent_job, connect
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from azp_simulation.kube_emulator import KubernetesEmulator, RbacSubject
from azp_simulation.kube_support import parse_label_selector

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SA_USER = "system:serviceaccount:azp-agents:azp-agents-reconciler"
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "azp-agents", "app.kubernetes.io/instance": "azp-agents"}
RBAC_RULES = json.loads((Path(__file__).parents[2] / "reconciler" / "rbac.json").read_text())


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


def raw(cluster: Cluster, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, cluster.url + path, timeout=5, **kwargs)


def job_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build a started emulator with the given options, the namespace NAMESPACE and its PAT Secret."""
    started: list[Cluster] = []

    def build(**options: Any) -> Cluster:
        emulator = KubernetesEmulator(**options)
        emulator.add_namespace(NAMESPACE)
        emulator.add_secret(NAMESPACE, "azp-agents-pat", {"pat": PAT})
        cluster = connect(emulator, tmp_path)
        started.append(cluster)
        return cluster

    yield build
    for cluster in started:
        cluster.api.close()
        cluster.emulator.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """The default emulator: real time, pods start after 20 ms."""
    return make_cluster(start_delay=0.02, termination_delay=0.02)


# Objects, defaulting and lists


def test_create_job_is_defaulted_like_the_api_server(cluster: Cluster) -> None:
    """We test: a created Job gets uid, a numeric resourceVersion, an RFC 3339 creationTimestamp,
    generation 1, the controller-uid selector and job-name labels on its template."""
    created = cluster.batch.create_namespaced_job(NAMESPACE, agent_job(), _preload_content=False)
    job = json.loads(created.data)
    assert created.status == 201
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    metadata = job["metadata"]
    assert metadata["namespace"] == NAMESPACE and metadata["generation"] == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", metadata["uid"]) and metadata["resourceVersion"].isdigit()
    assert TIMESTAMP.match(metadata["creationTimestamp"])
    uid = metadata["uid"]
    assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "azp-linux-1000-abcde"
    assert labels["controller-uid"] == uid and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    read = cluster.batch.read_namespaced_job("azp-linux-1000-abcde", NAMESPACE)
    assert read.metadata.uid == uid


def test_label_selectors_are_applied_with_the_full_grammar(cluster: Cluster) -> None:
    """We test: list_namespaced_job applies equality and set-based selectors; a bad one is 400 BadRequest."""
    for name, tier in (("job-a", "web"), ("job-b", "db"), ("job-c", None)):
        labels = {"tier": tier} if tier else {}
        cluster.batch.create_namespaced_job(NAMESPACE, agent_job(name, labels=labels))

    def names(selector: str) -> list[str]:
        return [j.metadata.name for j in cluster.batch.list_namespaced_job(NAMESPACE, label_selector=selector).items]

    assert names("tier=web") == ["job-a"]
    assert names("tier==db") == ["job-b"]
    assert names("tier!=web") == ["job-b", "job-c"]
    assert names("tier in (web,db)") == ["job-a", "job-b"]
    assert names("tier notin (web)") == ["job-b", "job-c"]
    assert names("tier") == ["job-a", "job-b"]
    assert names("!tier") == ["job-c"]
    assert names("app.kubernetes.io/managed-by=azp-agents,tier in (db, web)") == ["job-a", "job-b"]
    with pytest.raises(ApiException) as caught:
        names("tier in (web")
    assert caught.value.status == 400
    body = status_of(caught.value)
    assert body["reason"] == "BadRequest" and body["code"] == 400 and "unable to parse requirement" in body["message"]


def test_selector_parser_rejects_what_the_server_rejects() -> None:
    """We test: the selector grammar's edge cases (empty value, empty set, bad key, trailing comma)."""
    assert parse_label_selector("a=")[0].values == ("",)
    assert parse_label_selector("") == ()
    for bad in ("a in ()", "a b", "=a", "a=b,", "bad key=1", "a=b c", "a=" + "x" * 64):
        with pytest.raises(ValueError):
            parse_label_selector(bad)


def test_field_selectors_limit_and_continue(cluster: Cluster) -> None:
    """We test: fieldSelector metadata.name and status.phase; limit+continue pages through in name order."""
    for index in range(5):
        cluster.batch.create_namespaced_job(NAMESPACE, agent_job(f"job-{index}"))
    first = cluster.batch.list_namespaced_job(NAMESPACE, limit=2)
    assert [j.metadata.name for j in first.items] == ["job-0", "job-1"]
    assert first.metadata._continue and first.metadata.remaining_item_count == 3
    second = cluster.batch.list_namespaced_job(NAMESPACE, limit=2, _continue=first.metadata._continue)
    third = cluster.batch.list_namespaced_job(NAMESPACE, limit=2, _continue=second.metadata._continue)
    assert [j.metadata.name for j in second.items + third.items] == ["job-2", "job-3", "job-4"]
    assert not third.metadata._continue
    only = cluster.batch.list_namespaced_job(NAMESPACE, field_selector="metadata.name=job-3")
    assert [j.metadata.name for j in only.items] == ["job-3"]
    cluster.wait_for(
        lambda: len([p for p in cluster.pods() if p["status"]["phase"] == "Running"]) == 5, what="5 running pods"
    )
    running = cluster.core.list_namespaced_pod(NAMESPACE, field_selector="status.phase=Running")
    pending = cluster.core.list_namespaced_pod(NAMESPACE, field_selector="status.phase!=Running")
    assert len(running.items) == 5 and pending.items == []
    with pytest.raises(ApiException) as caught:
        cluster.core.list_namespaced_pod(NAMESPACE, field_selector="spec.bogus=1")
    assert caught.value.status == 400 and "field label not supported" in status_of(caught.value)["message"]


def test_lists_are_typed_and_carry_a_resource_version(cluster: Cluster) -> None:
    """We test: JobList/PodList kind and apiVersion, list metadata.resourceVersion, the all-namespaces lists."""
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job())
    cluster.emulator.add_namespace("other")
    cluster.batch.create_namespaced_job("other", agent_job("other-job"))
    body = raw(cluster, "GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs").json()
    assert body["kind"] == "JobList" and body["apiVersion"] == "batch/v1"
    assert body["metadata"]["resourceVersion"].isdigit() and len(body["items"]) == 1
    everywhere = cluster.batch.list_job_for_all_namespaces()
    assert sorted(j.metadata.name for j in everywhere.items) == ["azp-linux-1000-abcde", "other-job"]
    cluster.wait_for(lambda: len(cluster.emulator.objects("pods")) == 2, what="two pods")
    pods = raw(cluster, "GET", "/api/v1/pods").json()
    assert pods["kind"] == "PodList" and len(pods["items"]) == 2


def test_generate_name_and_increasing_resource_versions(cluster: Cluster) -> None:
    """We test: generateName adds 5 characters of the Kubernetes alphabet; every write raises the
    resourceVersion."""
    versions = []
    for _ in range(3):
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"generateName": "token-"},
            "stringData": {"pat": "x"},
        }
        created = cluster.core.create_namespaced_secret(NAMESPACE, body)
        assert re.fullmatch(r"token-[bcdfghjklmnpqrstvwxz2456789]{5}", created.metadata.name)
        versions.append(int(created.metadata.resource_version))
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert created.data == {"pat": "eA=="}


# Status errors


def test_not_found_and_already_exists_are_status_objects(cluster: Cluster) -> None:
    """We test: 404 NotFound and 409 AlreadyExists with the API server's messages and details."""
    with pytest.raises(ApiException) as caught:
        cluster.batch.read_namespaced_job("missing", NAMESPACE)
    assert caught.value.status == 404
    assert status_of(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'jobs.batch "missing" not found',
        "reason": "NotFound",
        "details": {"name": "missing", "group": "batch", "kind": "jobs"},
        "code": 404,
    }
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("dup"))
    with pytest.raises(ApiException) as caught:
        cluster.batch.create_namespaced_job(NAMESPACE, agent_job("dup"))
    body = status_of(caught.value)
    assert caught.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'jobs.batch "dup" already exists'
    with pytest.raises(ApiException) as caught:
        cluster.batch.list_namespaced_job("no-such-namespace")
    assert status_of(caught.value)["message"] == 'namespaces "no-such-namespace" not found'


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            lambda j: j["spec"]["template"]["spec"].update(restartPolicy="Always"),
            "spec.template.spec.restartPolicy",
            'Unsupported value: "Always": supported values: "OnFailure", "Never"',
        ),
        (lambda j: j["metadata"].update(name="x" * 64), "metadata.name", "must be no more than 63 characters"),
        (
            lambda j: j["metadata"]["labels"].update(team="has spaces"),
            "metadata.labels",
            'Invalid value: "has spaces": a valid label must be an empty string',
        ),
        (lambda j: j["metadata"].update(name="Upper_Case"), "metadata.name", "a lowercase RFC 1123 subdomain"),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].pop("image"),
            "spec.template.spec.containers[0].image",
            "Required value",
        ),
        # A container that is not an object (the real decoder answers 400 "cannot unmarshal": see KNOWN).
        (
            lambda j: j["spec"]["template"]["spec"].update(containers=["agent"]),
            "spec.template.spec.containers[0]",
            "is not of type 'object'",
        ),
    ],
)
def test_invalid_jobs_are_422_with_causes(
    cluster: Cluster, change: Callable[[dict[str, Any]], None], field: str, message: str
) -> None:
    """We test: invalid Jobs get 422 Invalid 'Job.batch "name" is invalid: field: ...' with a cause naming
    the field, and nothing is stored."""
    job = agent_job("bad-job")
    change(job)
    # Raw HTTP: the client's own models would refuse an unknown field before sending it.
    response = raw(cluster, "POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", json=job)
    body = response.json()
    assert response.status_code == 422 and body["reason"] == "Invalid" and body["code"] == 422
    assert body["message"].startswith(f'Job.batch "{job["metadata"]["name"]}" is invalid: ')
    assert body["details"]["kind"] == "Job" and body["details"]["group"] == "batch"
    causes = [c for c in body["details"]["causes"] if c["field"] == field]
    assert causes and any(message in c["message"] for c in causes), body
    assert cluster.emulator.objects("jobs", NAMESPACE) == []


TYPO = "spec.template.spec.containers[0].imagePullPolcy"


def test_unknown_fields_follow_field_validation(cluster: Cluster) -> None:
    """We test: an unknown field is refused with Strict (400 BadRequest, the real decoder's message naming
    the field, nothing stored), dropped with a 299 Warning header by default (Warn), dropped silently with
    Ignore, and a bad fieldValidation value is a 400."""
    path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    responses = {}
    for mode in ("Strict", "", "Ignore"):
        job = agent_job(f"typo-{mode.lower() or 'warn'}")
        job["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
        responses[mode] = raw(cluster, "POST", path, json=job, params={"fieldValidation": mode} if mode else {})
    strict = responses["Strict"]
    assert strict.status_code == 400 and strict.json()["reason"] == "BadRequest"
    assert strict.json()["message"] == (
        f'Job in version "v1" cannot be handled as a Job: strict decoding error: unknown field "{TYPO}"'
    )
    assert responses[""].status_code == 201
    assert responses[""].headers["Warning"] == f'299 - "unknown field \\"{TYPO}\\""'
    assert responses["Ignore"].status_code == 201 and "Warning" not in responses["Ignore"].headers
    stored = {j["metadata"]["name"]: j for j in cluster.emulator.objects("jobs", NAMESPACE)}
    assert set(stored) == {"typo-warn", "typo-ignore"}
    assert all("imagePullPolcy" not in j["spec"]["template"]["spec"]["containers"][0] for j in stored.values())
    bad = raw(cluster, "POST", path, json=agent_job("typo-bad"), params={"fieldValidation": "Loud"})
    assert bad.status_code == 400 and "Invalid fieldValidation value" in bad.json()["message"]


# Job controller and kubelet


def test_job_controller_creates_a_pod_the_kubelet_runs(cluster: Cluster) -> None:
    """We test: the Job controller makes one pod named <job>-<5 chars> with job-name and controller-uid
    labels and a controller ownerReference; the kubelet runs it (init container done, conditions,
    podIP); on_pod_running is called once with the pod; Job status shows active and ready."""
    running: list[dict[str, Any]] = []
    cluster.emulator.on_pod_running = running.append
    job = cluster.batch.create_namespaced_job(NAMESPACE, agent_job())
    cluster.wait_for(lambda: bool(running), what="on_pod_running")
    pod = cluster.core.read_namespaced_pod(running[0]["metadata"]["name"], NAMESPACE)
    assert re.fullmatch(r"azp-linux-1000-abcde-[bcdfghjklmnpqrstvwxz2456789]{5}", pod.metadata.name)
    assert pod.metadata.labels["job-name"] == pod.metadata.labels["batch.kubernetes.io/job-name"] == job.metadata.name
    assert pod.metadata.labels["controller-uid"] == job.metadata.uid
    assert pod.metadata.labels["app.kubernetes.io/managed-by"] == "azp-agents"
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller, owner.block_owner_deletion) == (
        "Job",
        job.metadata.name,
        job.metadata.uid,
        True,
        True,
    )
    assert pod.status.phase == "Running" and pod.status.pod_ip and pod.status.start_time and pod.spec.node_name
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert all(conditions[t] == "True" for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready"))
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 0
    agent = pod.status.container_statuses[0]
    assert agent.ready and agent.state.running.started_at and agent.container_id.startswith("containerd://")
    assert agent.image == "ghcr.io/azp-agents/agent-linux:4.261.0" and "@sha256:" in agent.image_id
    cluster.wait_for(
        lambda: cluster.batch.read_namespaced_job(job.metadata.name, NAMESPACE).status.ready == 1, what="ready 1"
    )
    status = cluster.batch.read_namespaced_job(job.metadata.name, NAMESPACE).status
    assert status.active == 1 and status.start_time is not None
    time.sleep(0.1)
    assert len(running) == 1 and len(cluster.pods()) == 1


def test_finished_pod_completes_the_job(cluster: Cluster) -> None:
    """We test: finish_pod(exit 0) -> pod Succeeded with terminated Completed; the Job gets succeeded 1,
    completionTime and a Complete condition; exit 1 -> Failed with backoffLimit 0 -> BackoffLimitExceeded."""
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("good"))
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("bad"))
    cluster.wait_for(
        lambda: all(p["status"]["phase"] == "Running" for p in cluster.pods()) and len(cluster.pods()) == 2,
        what="two running pods",
    )
    pods = {p["metadata"]["labels"]["job-name"]: p["metadata"]["name"] for p in cluster.pods()}
    assert cluster.emulator.finish_pod(NAMESPACE, pods["good"], exit_code=0)
    assert cluster.emulator.finish_pod(NAMESPACE, pods["bad"], exit_code=1)
    good = cluster.core.read_namespaced_pod(pods["good"], NAMESPACE)
    assert good.status.phase == "Succeeded"
    assert good.status.container_statuses[0].state.terminated.reason == "Completed"
    bad = cluster.core.read_namespaced_pod(pods["bad"], NAMESPACE)
    assert bad.status.phase == "Failed" and bad.status.container_statuses[0].state.terminated.exit_code == 1
    job = cluster.emulator.get("jobs", NAMESPACE, "good")
    assert job is not None and job["status"]["succeeded"] == 1 and TIMESTAMP.match(job["status"]["completionTime"])
    assert "Complete" in job_conditions(job)
    failed = cluster.emulator.get("jobs", NAMESPACE, "bad")
    assert failed is not None and job_conditions(failed)["Failed"]["reason"] == "BackoffLimitExceeded"
    assert failed["status"]["failed"] == 1 and "completionTime" not in failed["status"]


def test_backoff_limit_replaces_failed_pods(cluster: Cluster) -> None:
    """We test: with backoffLimit 2 a failed pod is replaced twice, the third failure fails the Job."""
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("retry", backoffLimit=2))
    for attempt in range(3):
        cluster.wait_for(
            lambda: any(p["status"]["phase"] == "Running" for p in cluster.pods()), what=f"attempt {attempt}"
        )
        running = next(p for p in cluster.pods() if p["status"]["phase"] == "Running")
        cluster.emulator.finish_pod(NAMESPACE, running["metadata"]["name"], exit_code=2)
    job = cluster.emulator.get("jobs", NAMESPACE, "retry")
    assert job is not None and job_conditions(job)["Failed"]["reason"] == "BackoffLimitExceeded"
    assert job_conditions(job)["Failed"]["message"] == "Job has reached the specified backoff limit"
    assert len(cluster.pods()) == 3 and job["status"]["failed"] == 3


def test_image_pull_failures_and_unschedulable_pods_stay_pending(make_cluster: Callable[..., Cluster]) -> None:
    """We test: image policy ImagePullBackOff/ErrImagePull, a 'does-not-exist' image, a request over node
    capacity and an unmatched nodeSelector leave pods Pending with the kubelet's and scheduler's reasons."""
    policy = {
        "registry/broken:1": "ImagePullBackOff",
        "registry/unlucky:1": "ErrImagePull",
        "registry/full:1": "Unschedulable",
    }
    cluster = make_cluster(image_policy=policy, start_delay=0.02)
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("broken", image="registry/broken:1"))
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("unlucky", image="registry/unlucky:1"))
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("missing", image="registry/does-not-exist:1"))
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("full", image="registry/full:1"))
    main_only = agent_job("main-only")
    main_only["spec"]["template"]["spec"]["containers"][0]["image"] = "registry/broken:1"
    cluster.batch.create_namespaced_job(NAMESPACE, main_only)
    huge = agent_job("huge")
    huge["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "64", "memory": "1Gi"}}
    cluster.batch.create_namespaced_job(NAMESPACE, huge)
    picky = agent_job("picky")
    picky["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/os": "windows"}
    cluster.batch.create_namespaced_job(NAMESPACE, picky)
    time.sleep(0.3)

    def pod_of(job: str) -> client.V1Pod:
        name = next(p["metadata"]["name"] for p in cluster.pods() if p["metadata"]["labels"]["job-name"] == job)
        return cluster.core.read_namespaced_pod(name, NAMESPACE)

    broken = pod_of("broken")
    assert broken.status.phase == "Pending"
    waiting = broken.status.init_container_statuses[0].state.waiting
    assert waiting.reason == "ImagePullBackOff" and waiting.message == 'Back-off pulling image "registry/broken:1"'
    assert pod_of("unlucky").status.init_container_statuses[0].state.waiting.reason == "ErrImagePull"
    main_only = pod_of("main-only")
    assert main_only.status.init_container_statuses[0].state.terminated.reason == "Completed"
    assert main_only.status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
    assert {c.type: c.status for c in main_only.status.conditions}["Initialized"] == "True"
    assert pod_of("missing").status.init_container_statuses[0].state.waiting.reason in (
        "ErrImagePull",
        "ImagePullBackOff",
    )
    for job, message in (
        ("full", "0/3 nodes are available: 3 Insufficient cpu."),
        ("huge", "0/3 nodes are available: 3 Insufficient cpu."),
        ("picky", "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."),
    ):
        pod = pod_of(job)
        scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
        assert (pod.status.phase, scheduled.status, scheduled.reason, scheduled.message) == (
            "Pending",
            "False",
            "Unschedulable",
            message,
        )
        assert pod.spec.node_name is None
    events = cluster.emulator.objects("events", NAMESPACE)
    assert any(e["reason"] == "FailedScheduling" and e["type"] == "Warning" for e in events)


def test_crash_loop_with_restart_policy_never_uses_up_the_backoff_limit(make_cluster: Callable[..., Cluster]) -> None:
    """We test: a CrashLoopBackOff image under restartPolicy Never fails each pod (exit 1) and the Job."""
    cluster = make_cluster(
        image_policy=lambda image: "CrashLoopBackOff" if "crash" in image else "ok", start_delay=0.01
    )
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("crash", image="registry/crash:1", backoffLimit=1))
    cluster.wait_for(
        lambda: "Failed" in job_conditions(cluster.emulator.get("jobs", NAMESPACE, "crash") or {}),
        what="the Job to fail",
    )
    assert [p["status"]["phase"] for p in cluster.pods()] == ["Failed", "Failed"]


def test_active_deadline_and_ttl_with_a_fake_clock(make_cluster: Callable[..., Cluster]) -> None:
    """We test: activeDeadlineSeconds fails the Job (DeadlineExceeded) and deletes its running pod (calling
    on_pod_deleted); ttlSecondsAfterFinished deletes a finished Job and its pods; ttl_controller=False keeps it."""
    clock = FakeClock()
    cluster = make_cluster(clock=clock, auto_tick=False, start_delay=0.0, termination_delay=0.0)
    deleted: list[str] = []
    cluster.emulator.on_pod_deleted = lambda pod: deleted.append(pod["metadata"]["name"])
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("slow", activeDeadlineSeconds=60))
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("done", ttlSecondsAfterFinished=30))
    cluster.emulator.tick()
    pods = {p["metadata"]["labels"]["job-name"]: p["metadata"]["name"] for p in cluster.pods()}
    cluster.emulator.finish_pod(NAMESPACE, pods["done"])
    clock.advance(61)
    cluster.emulator.tick()
    slow = cluster.emulator.get("jobs", NAMESPACE, "slow")
    assert slow is not None and job_conditions(slow)["Failed"]["reason"] == "DeadlineExceeded"
    assert job_conditions(slow)["Failed"]["message"] == "Job was active longer than specified deadline"
    cluster.emulator.tick()
    assert deleted == [pods["slow"]]
    assert cluster.emulator.get("jobs", NAMESPACE, "done") is None
    assert cluster.pods() == []

    keeper = make_cluster(clock=clock, auto_tick=False, start_delay=0.0, ttl_controller=False)
    keeper.batch.create_namespaced_job(NAMESPACE, agent_job("done", ttlSecondsAfterFinished=0))
    keeper.emulator.tick()
    keeper.emulator.finish_pod(NAMESPACE, keeper.pods()[0]["metadata"]["name"])
    clock.advance(3600)
    keeper.emulator.tick()
    assert keeper.emulator.get("jobs", NAMESPACE, "done") is not None


# Deletion and garbage collection


def test_delete_job_background_removes_pods_orphan_keeps_them(cluster: Cluster) -> None:
    """We test: deleting a Job with Background answers a Success Status and the GC deletes its pods
    (on_pod_deleted for the running one); Orphan answers the Job with deletionTimestamp and leaves the pods
    without ownerReferences; a second delete is 404."""
    gone: list[str] = []
    cluster.emulator.on_pod_deleted = lambda pod: gone.append(pod["metadata"]["name"])
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("bg"))
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("orphan"))
    cluster.wait_for(
        lambda: len([p for p in cluster.pods() if p["status"]["phase"] == "Running"]) == 2, what="two running pods"
    )
    pods = {p["metadata"]["labels"]["job-name"]: p["metadata"]["name"] for p in cluster.pods()}
    answer = cluster.batch.delete_namespaced_job("bg", NAMESPACE, propagation_policy="Background")
    answer = answer if isinstance(answer, dict) else answer.to_dict()
    assert answer["status"] == "Success" and answer["details"]["kind"] == "jobs"
    cluster.wait_for(lambda: pods["bg"] not in {p["metadata"]["name"] for p in cluster.pods()}, what="GC")
    assert gone == [pods["bg"]]
    response = cluster.batch.delete_namespaced_job(
        "orphan", NAMESPACE, propagation_policy="Orphan", _preload_content=False
    )
    orphaned = json.loads(response.data)
    assert orphaned["kind"] == "Job" and orphaned["metadata"]["deletionTimestamp"]
    assert orphaned["metadata"]["finalizers"] == ["orphan"]
    cluster.wait_for(lambda: cluster.emulator.get("jobs", NAMESPACE, "orphan") is None, what="orphan finalizer")
    kept = cluster.emulator.get("pods", NAMESPACE, pods["orphan"])
    assert kept is not None and "ownerReferences" not in kept["metadata"]
    assert kept["status"]["phase"] == "Running"
    with pytest.raises(ApiException) as caught:
        cluster.batch.delete_namespaced_job("bg", NAMESPACE)
    assert caught.value.status == 404


def test_foreground_delete_and_dry_run(cluster: Cluster) -> None:
    """We test: Foreground answers the Job with the foregroundDeletion finalizer and removes it after its
    pods; dryRun=All on create and delete changes nothing and is not a write call."""
    cluster.emulator.reset_calls()
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("dry"), dry_run="All")
    assert cluster.emulator.objects("jobs", NAMESPACE) == []
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("fg"))
    cluster.wait_for(lambda: len(cluster.pods()) == 1, what="a pod")
    cluster.batch.delete_namespaced_job("fg", NAMESPACE, dry_run="All", propagation_policy="Background")
    assert cluster.emulator.get("jobs", NAMESPACE, "fg") is not None
    assert cluster.emulator.write_calls() == 1
    response = cluster.batch.delete_namespaced_job(
        "fg", NAMESPACE, propagation_policy="Foreground", _preload_content=False
    )
    assert json.loads(response.data)["metadata"]["finalizers"] == ["foregroundDeletion"]
    cluster.wait_for(
        lambda: cluster.emulator.get("jobs", NAMESPACE, "fg") is None and not cluster.pods(), what="foreground deletion"
    )


def test_namespace_deletion_removes_its_content(cluster: Cluster) -> None:
    """We test: deleting a namespace answers it Terminating, refuses new content (403) and then removes
    its Jobs, pods and Secrets and itself."""
    cluster.emulator.add_namespace("scratch")
    cluster.emulator.add_secret("scratch", "s", {"k": "v"})
    cluster.batch.create_namespaced_job("scratch", agent_job("j"))
    cluster.emulator.auto_tick = False
    deleted = json.loads(cluster.core.delete_namespace("scratch", _preload_content=False).data)
    assert deleted["status"]["phase"] == "Terminating" and deleted["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as caught:
        cluster.batch.create_namespaced_job("scratch", agent_job("late"))
    assert caught.value.status == 403 and "because it is being terminated" in status_of(caught.value)["message"]
    cluster.emulator.auto_tick = True
    cluster.wait_for(lambda: cluster.emulator.get("namespaces", None, "scratch") is None, what="namespace gone")
    assert cluster.emulator.objects("jobs", "scratch") == [] and cluster.emulator.objects("secrets", "scratch") == []


# Patch, events, leases


def test_patch_and_foreign_writes(cluster: Cluster) -> None:
    """We test: patch_namespaced_job (strategic merge from a dict) and a merge patch change labels and bump
    the resourceVersion; writes to objects without managed-by=azp-agents count in touched_foreign."""
    created = cluster.batch.create_namespaced_job(NAMESPACE, agent_job("ours"))
    patched = cluster.batch.patch_namespaced_job("ours", NAMESPACE, {"metadata": {"labels": {"extra": "1"}}})
    assert patched.metadata.labels["extra"] == "1"
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    assert cluster.emulator.touched_foreign == 0
    foreign = agent_job("theirs")
    del foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    cluster.batch.create_namespaced_job(NAMESPACE, foreign)
    response = raw(
        cluster,
        "PATCH",
        f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/theirs",
        data=json.dumps({"metadata": {"labels": {"extra": None, "x": "y"}}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200 and response.json()["metadata"]["labels"]["x"] == "y"
    cluster.batch.delete_namespaced_job("theirs", NAMESPACE, propagation_policy="Background")
    assert cluster.emulator.touched_foreign == 2
    immutable = raw(
        cluster,
        "PATCH",
        f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/ours",
        data=json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "other:1"}]),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert immutable.status_code == 422 and "field is immutable" in immutable.json()["message"]


def test_events_can_be_created_and_listed(cluster: Cluster) -> None:
    """We test: create_namespaced_event with generateName, then list by involvedObject.name."""
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "azp-linux-1000-abcde.", "namespace": NAMESPACE},
        "involvedObject": {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "azp-linux-1000-abcde",
            "namespace": NAMESPACE,
        },
        "reason": "AgentStuck",
        "message": "pod stuck in ImagePullBackOff",
        "type": "Warning",
        "source": {"component": "azp-agents-reconciler"},
        "count": 1,
        "firstTimestamp": "2026-11-23T08:00:00Z",
        "lastTimestamp": "2026-11-23T08:00:00Z",
    }
    created = cluster.core.create_namespaced_event(NAMESPACE, event)
    assert created.metadata.name.startswith("azp-linux-1000-abcde.")
    listed = cluster.core.list_namespaced_event(NAMESPACE, field_selector="involvedObject.name=azp-linux-1000-abcde")
    assert [e.reason for e in listed.items] == ["AgentStuck"]


def test_lease_optimistic_concurrency(cluster: Cluster) -> None:
    """We test: a Lease is created, read and replaced at its resourceVersion; a replace with a stale
    resourceVersion is 409 Conflict with the real message; a second create is 409 AlreadyExists."""
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "azp-agents-reconciler", "namespace": NAMESPACE},
        "spec": {
            "holderIdentity": "pod-a",
            "leaseDurationSeconds": 60,
            "acquireTime": "2026-11-23T08:00:00.000000Z",
            "renewTime": "2026-11-23T08:00:00.000000Z",
        },
    }
    cluster.coordination.create_namespaced_lease(NAMESPACE, body)
    lease = cluster.coordination.read_namespaced_lease("azp-agents-reconciler", NAMESPACE)
    stale = lease.metadata.resource_version
    lease.spec.holder_identity = "pod-b"
    replaced = cluster.coordination.replace_namespaced_lease("azp-agents-reconciler", NAMESPACE, lease)
    assert replaced.spec.holder_identity == "pod-b" and replaced.metadata.resource_version != stale
    lease.metadata.resource_version = stale
    lease.spec.holder_identity = "pod-c"
    with pytest.raises(ApiException) as caught:
        cluster.coordination.replace_namespaced_lease("azp-agents-reconciler", NAMESPACE, lease)
    body_409 = status_of(caught.value)
    assert caught.value.status == 409 and body_409["reason"] == "Conflict"
    assert body_409["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "azp-agents-reconciler": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    with pytest.raises(ApiException) as caught:
        cluster.coordination.create_namespaced_lease(NAMESPACE, body)
    assert status_of(caught.value)["reason"] == "AlreadyExists"


# RBAC


def test_rbac_mode(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """We test: in RBAC mode an unknown token is 401, a missing permission is 403 with the real message,
    granted calls work, and SelfSubjectAccessReview answers from the rules."""
    subject = RbacSubject(
        name=SA_USER, rules_by_namespace={NAMESPACE: RBAC_RULES["agentNamespace"] + RBAC_RULES["leaseNamespace"]}
    )
    cluster = make_cluster(rbac={"good-token": subject})
    with pytest.raises(ApiException) as caught:
        cluster.batch.list_namespaced_job(NAMESPACE)
    assert caught.value.status == 401 and status_of(caught.value)["reason"] == "Unauthorized"
    sa = connect(cluster.emulator, tmp_path, token="good-token")
    try:
        assert sa.batch.list_namespaced_job(NAMESPACE).items == []
        sa.batch.create_namespaced_job(NAMESPACE, agent_job())
        with pytest.raises(ApiException) as caught:
            sa.batch.patch_namespaced_job("azp-linux-1000-abcde", NAMESPACE, {"metadata": {"labels": {"a": "b"}}})
        body = status_of(caught.value)
        assert caught.value.status == 403 and body["reason"] == "Forbidden"
        assert body["message"] == (
            f'jobs.batch "azp-linux-1000-abcde" is forbidden: User "{SA_USER}" cannot patch resource "jobs" in '
            f'API group "batch" in the namespace "{NAMESPACE}"'
        )
        with pytest.raises(ApiException) as caught:
            sa.batch.list_job_for_all_namespaces()
        assert status_of(caught.value)["message"] == (
            f'jobs.batch is forbidden: User "{SA_USER}" cannot list resource "jobs" in API group "batch" at the '
            "cluster scope"
        )
        with pytest.raises(ApiException) as caught:
            sa.core.list_namespaced_secret(NAMESPACE)
        assert 'cannot list resource "secrets" in API group ""' in status_of(caught.value)["message"]

        def review(verb: str, resource: str, group: str) -> Any:
            spec = {"resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": NAMESPACE}}
            answer = sa.authorization.create_self_subject_access_review(
                {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec}
            )
            return answer.status

        assert review("create", "jobs", "batch").allowed is True
        assert review("update", "leases", "coordination.k8s.io").allowed is True
        denied = review("delete", "pods", "")
        assert denied.allowed is False and "no rule grants" in denied.reason
    finally:
        sa.api.close()


# Environment, secrets and hooks


def test_resolve_env_and_read_secret_file(cluster: Cluster) -> None:
    """We test: resolve_env resolves literals, $(VAR), fieldRef metadata.name and secretKeyRef;
    read_secret_file honours a secret volume's items (key pat -> file token)."""
    cluster.emulator.add_secret(NAMESPACE, "azp-agents-pat", {"pat": "s3cret"})
    job = agent_job()
    containers = job["spec"]["template"]["spec"]["containers"]
    containers[0]["env"] += [
        {"name": "URL_COPY", "value": "$(AZP_URL)/x"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "azp-agents-pat", "key": "pat"}}},
        {"name": "POD_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
    ]
    seen: list[dict[str, Any]] = []
    cluster.emulator.on_pod_running = seen.append
    cluster.batch.create_namespaced_job(NAMESPACE, job)
    cluster.wait_for(lambda: bool(seen), what="a running pod")
    pod = seen[0]
    env = cluster.emulator.resolve_env(pod, pod["spec"]["containers"][0])
    assert env["AZP_AGENT_NAME"] == pod["metadata"]["name"] and env["AZP_POOL"] == "linux"
    assert env["URL_COPY"] == "https://dev.azure.com/contoso/x" and env["FROM_SECRET"] == "s3cret"
    assert env["POD_LABEL"] == "azp-linux-1000-abcde"
    register = pod["spec"]["initContainers"][0]
    token_file = cluster.emulator.resolve_env(pod, register)["AZP_TOKEN_FILE"]
    assert cluster.emulator.read_secret_file(pod, register, token_file) == "s3cret"
    assert cluster.emulator.read_secret_file(pod, register, "/var/run/secrets/azp/pat") is None
    assert cluster.emulator.read_secret_file(pod, pod["spec"]["containers"][0], token_file) is None


def test_missing_secret_keeps_pod_creating(make_cluster: Callable[..., Cluster]) -> None:
    """We test: a pod whose secret env reference is missing waits with CreateContainerConfigError."""
    cluster = make_cluster(start_delay=0.01)
    job = agent_job(volumes_ok=None) if False else agent_job()
    spec = job["spec"]["template"]["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "azp-token"]
    spec["initContainers"][0]["volumeMounts"] = [
        m for m in spec["initContainers"][0]["volumeMounts"] if m["name"] != "azp-token"
    ]
    spec["containers"][0]["env"].append(
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "pat"}}}
    )
    cluster.batch.create_namespaced_job(NAMESPACE, job)

    def waiting_reason() -> str | None:
        pods = cluster.pods()
        if not pods:
            return None
        statuses = pods[0]["status"].get("initContainerStatuses") or []
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    cluster.wait_for(lambda: waiting_reason() == "CreateContainerConfigError", what="CreateContainerConfigError")


# Discovery, kubectl, faults and the call log


def test_discovery_documents(cluster: Cluster) -> None:
    """We test: /version, /api, /apis and APIResourceLists name the resources with verbs and kinds."""
    assert raw(cluster, "GET", "/version").json()["gitVersion"] == "v1.30.0"
    assert raw(cluster, "GET", "/api").json()["versions"] == ["v1"]
    groups = {g["name"] for g in raw(cluster, "GET", "/apis").json()["groups"]}
    assert {"batch", "coordination.k8s.io", "authorization.k8s.io"} <= groups
    batch = raw(cluster, "GET", "/apis/batch/v1").json()
    jobs = next(r for r in batch["resources"] if r["name"] == "jobs")
    assert batch["kind"] == "APIResourceList" and batch["groupVersion"] == "batch/v1"
    assert jobs["kind"] == "Job" and jobs["namespaced"] and {"create", "delete", "list", "get"} <= set(jobs["verbs"])
    core = raw(cluster, "GET", "/api/v1").json()
    pods = next(r for r in core["resources"] if r["name"] == "pods")
    assert pods["shortNames"] == ["po"]
    missing = raw(cluster, "GET", "/apis/apps/v1/namespaces/x/deployments")
    assert missing.status_code == 404 and missing.json()["kind"] == "Status"
    protobuf = raw(
        cluster,
        "GET",
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        headers={"Accept": "application/vnd.kubernetes.protobuf"},
    )
    assert protobuf.status_code == 200 and protobuf.json()["kind"] == "PodList"


def _kubectl() -> str | None:
    local = Path(__file__).parents[2] / ".tools" / "bin" / "kubectl"
    return shutil.which("kubectl") or (str(local) if local.exists() else None)


@pytest.mark.skipif(_kubectl() is None, reason="no kubectl binary")
def test_kubectl_get_jobs_with_a_selector(cluster: Cluster) -> None:
    """We test: kubectl with the written kubeconfig lists Jobs by label (server-side Table printing)."""
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("picked", labels={"app": "x"}))
    cluster.batch.create_namespaced_job(NAMESPACE, agent_job("ignored", labels={"app": "y"}))
    kubectl = str(_kubectl())
    result = subprocess.run(
        [kubectl, "--kubeconfig", str(cluster.kubeconfig), "get", "jobs", "-l", "app=x", "-n", NAMESPACE],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "NAME" and [line.split()[0] for line in lines[1:]] == ["picked"]
    named = subprocess.run(
        [kubectl, "--kubeconfig", str(cluster.kubeconfig), "get", "pods", "-n", NAMESPACE, "-o", "name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert named.returncode == 0 and named.stdout.count("pod/") == 2


def test_status_faults_are_status_objects_and_logged(cluster: Cluster) -> None:
    """We test: injected 500 and 403 faults answer Status objects (403 names a resource and user), Retry-After
    is sent, `times` is honoured, and the call log records the fault and the keys of call_counts."""
    cluster.emulator.inject_fault("GET", "jobs(list)", kind="status", status=500, times=2, retry_after=1)
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            cluster.batch.list_namespaced_job(NAMESPACE)
        assert caught.value.status == 500 and status_of(caught.value)["reason"] == "InternalError"
        assert caught.value.headers["Retry-After"] == "1"
    assert cluster.batch.list_namespaced_job(NAMESPACE).items == []
    cluster.emulator.inject_fault("POST", "jobs", kind="status", status=403)
    with pytest.raises(ApiException) as caught:
        cluster.batch.create_namespaced_job(NAMESPACE, agent_job())
    assert (
        status_of(caught.value)["reason"] == "Forbidden" and "is forbidden: User" in status_of(caught.value)["message"]
    )
    faulted = [c for c in cluster.emulator.calls() if c.fault]
    assert [(c.key, c.status) for c in faulted] == [("GET jobs(list)",) * 1 + (500,)] * 2 + [("POST jobs", 403)]
    assert faulted[0].route == "/apis/batch/v1/namespaces/{namespace}/jobs"
    assert [c.user for c in cluster.emulator.calls() if not c.fault] == ["kubernetes-admin"]
    counts = cluster.emulator.call_counts()
    assert counts["GET jobs(list)"] == 3 and counts["POST jobs"] == 1
    cluster.emulator.reset_calls()
    assert cluster.emulator.calls() == []


@pytest.mark.parametrize("kind", ["reset", "truncated", "html", "timeout"])
def test_transport_faults(cluster: Cluster, kind: str) -> None:
    """We test: reset drops the connection, truncated cuts the JSON, html answers a proxy page, timeout
    holds the request past the client's timeout; the next call is served normally."""
    cluster.emulator.inject_fault("GET", "/apis/batch/v1/namespaces/{namespace}/jobs", kind=kind, delay=1.0)
    errors = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)
    with pytest.raises(errors):
        response = cluster.batch.list_namespaced_job(NAMESPACE, _preload_content=False, _request_timeout=0.3)
        json.loads(response.data)
    assert cluster.batch.list_namespaced_job(NAMESPACE).items == []


def test_delay_fault_and_watch(cluster: Cluster) -> None:
    """We test: a delay fault slows a call down but answers it; a watch streams ADDED and DELETED events."""
    cluster.emulator.inject_fault("*", "jobs", kind="delay", delay=0.3)
    started = time.monotonic()
    cluster.batch.list_namespaced_job(NAMESPACE)
    assert time.monotonic() - started >= 0.3
    cluster.emulator.add_secret(NAMESPACE, "watched", {"k": "v"})
    events = []
    stream = watch.Watch()
    for event in stream.stream(
        cluster.core.list_namespaced_secret, NAMESPACE, timeout_seconds=2, field_selector="metadata.name=watched"
    ):
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == 1:
            cluster.emulator.delete("secrets", NAMESPACE, "watched")
        if len(events) == 2:
            stream.stop()
    assert events == [("ADDED", "watched"), ("DELETED", "watched")]


def test_emulator_as_context_manager_and_direct_create() -> None:
    """We test: the context manager starts and stops the server; create() validates like the API."""
    with KubernetesEmulator() as emulator:
        assert requests.get(emulator.base_url + "/version", timeout=5).status_code == 200
        emulator.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}})
        assert emulator.get("configmaps", "default", "c") is not None
        with pytest.raises(Exception, match="is invalid"):
            emulator.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad"}})
        assert PAT not in json.dumps(emulator.objects("jobs"))


def test_the_reconcilers_adapter_with_exactly_the_rbac_json_permissions(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """We test: reconciler.kube.Kubernetes, with a token granted exactly rbac.json, lists Jobs and pods by
    the release selector, creates a Job (dry run and real), posts an Event, creates/reads/replaces the Lease
    (None on a stale resourceVersion), deletes the Job, and can_i answers from the same rules."""
    from datetime import UTC, datetime, timedelta

    from azp_simulation.kube_emulator import rbac_subject_from_file
    from reconciler import names
    from reconciler.kube import Kubernetes
    from reconciler.lease import lease_body

    rbac_file = Path(__file__).parents[2] / "reconciler" / "rbac.json"
    subject = rbac_subject_from_file(rbac_file, name=SA_USER, agent_namespace=NAMESPACE)
    cluster = make_cluster(rbac={"sa-token": subject}, start_delay=0.01)
    kubeconfig = cluster.emulator.write_kubeconfig(tmp_path / "sa-kubeconfig", token="sa-token")
    kube = Kubernetes(kubeconfig=str(kubeconfig), retries=0)
    try:
        job = agent_job("azp-linux-1001-abcde", labels={names.LABEL_POOL: "linux", names.LABEL_TEMPLATE: "default"})
        job["metadata"]["namespace"] = NAMESPACE
        assert kube.create_job(job, dry_run=True) is True
        assert cluster.emulator.objects("jobs", NAMESPACE) == []
        assert kube.create_job(job) is True
        assert kube.create_job(job) is False
        [listed] = kube.list_jobs(NAMESPACE, owner=names.Owner(prefix="azp", release="azp-agents"))
        assert (listed.name, listed.pool_slug, listed.template, listed.pool_name) == (
            "azp-linux-1001-abcde",
            "linux",
            "default",
            "linux",
        )
        cluster.wait_for(
            lambda: (
                [p.phase for p in kube.list_pods(NAMESPACE, owner=names.Owner(prefix="azp", release="azp-agents"))]
                == ["Running"]
            ),
            what="pod",
        )
        now = datetime.now(UTC)
        kube.post_event(namespace=NAMESPACE, job_name=listed.name, reason="AgentStuck", message="stuck", now=now)
        lease = lease_body(
            name="azp-agents-reconciler",
            namespace=NAMESPACE,
            holder="me",
            duration=60,
            now=now,
            annotations={},
            labels=MANAGED_LABELS,
        )
        created = kube.create_lease(NAMESPACE, lease)
        assert created is not None and kube.create_lease(NAMESPACE, lease) is None
        read = kube.read_lease(NAMESPACE, "azp-agents-reconciler")
        assert read is not None
        renewed = lease_body(
            name="azp-agents-reconciler",
            namespace=NAMESPACE,
            holder="me",
            duration=60,
            now=now + timedelta(seconds=10),
            annotations={},
            labels=MANAGED_LABELS,
            resource_version=read["metadata"]["resourceVersion"],
        )
        replaced = kube.replace_lease(NAMESPACE, renewed)
        assert replaced is not None and replaced["spec"]["renewTime"].endswith("Z")
        # The same body again: its resourceVersion is stale now (a no-op update would not be).
        renewed["spec"]["holderIdentity"] = "someone-else"
        assert kube.replace_lease(NAMESPACE, renewed) is None
        assert kube.can_i(verb="create", resource="jobs", group="batch", namespace=NAMESPACE)[0] is True
        assert kube.can_i(verb="delete", resource="pods", group="", namespace=NAMESPACE)[0] is False
        assert kube.delete_job(NAMESPACE, listed.name) is True
        assert kube.delete_job(NAMESPACE, listed.name) is False
        cluster.wait_for(lambda: cluster.pods() == [], what="pods collected")
        assert cluster.emulator.touched_foreign == 0
        assert [c.status for c in cluster.emulator.calls() if c.status >= 400 and c.status not in (404, 409)] == []
    finally:
        kube.close()
