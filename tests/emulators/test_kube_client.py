"""We test: reconciler.kube's lists (the product's adapter) against the Kubernetes emulator over HTTP:
one call per kind for a namespace of usual size, every item exactly once across pages, a list started
over when its continue token expired, and specs dropped while parsing without changing the models."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_fixtures import NAMESPACE, PAT, Cluster, agent_job, connect

from azp_simulation.kube_emulator import KubernetesEmulator
from reconciler import names
from reconciler.deadline import Deadline
from reconciler.errors import TransientError
from reconciler.kube import LIST_PAGE_SIZE, Kubernetes, _skim, job_from_json, pod_from_json

RELEASE = "azp-agents"
OWNER = names.Owner(prefix="azp", release=RELEASE)
JOBS = 5


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A started emulator holding JOBS agent Jobs of the release, each with its running pod."""
    emulator = KubernetesEmulator(start_delay=0.01, termination_delay=0.01)
    emulator.add_namespace(NAMESPACE)
    emulator.add_secret(NAMESPACE, "azp-agents-pat", {"pat": PAT})
    cluster = connect(emulator, tmp_path)
    for index in range(JOBS):
        labels = {names.LABEL_POOL: "linux", names.LABEL_TEMPLATE: "default", names.LABEL_REQUEST_ID: str(index)}
        cluster.batch.create_namespaced_job(NAMESPACE, agent_job(f"azp-linux-{index}", labels=labels))
    cluster.wait_for(
        lambda: sum(p.get("status", {}).get("phase") == "Running" for p in cluster.pods()) == JOBS, what="pods"
    )
    yield cluster
    cluster.api.close()
    emulator.stop()


@pytest.fixture
def make_kube(cluster: Cluster) -> Iterator[Callable[..., Kubernetes]]:
    made: list[Kubernetes] = []

    def build(**options: Any) -> Kubernetes:
        kube = Kubernetes(kubeconfig=str(cluster.kubeconfig), deadline=Deadline(sleep_for=lambda _: None), **options)
        made.append(kube)
        return kube

    yield build
    for kube in made:
        kube.close()


def list_queries(cluster: Cluster, resource: str) -> list[dict[str, str]]:
    return [c.query for c in cluster.emulator.calls() if c.method == "GET" and c.path.endswith(f"/{resource}")]


def test_a_namespace_of_usual_size_costs_one_list_call_per_kind(
    cluster: Cluster, make_kube: Callable[..., Kubernetes]
) -> None:
    """We test: with the default page size (room for a namespace of hundreds of agents) Jobs and Pods are
    one call each, asked with that limit, and every object comes back."""
    assert LIST_PAGE_SIZE >= 500
    kube = make_kube()
    jobs = kube.list_jobs(NAMESPACE, owner=OWNER)
    pods = kube.list_pods(NAMESPACE, owner=OWNER)
    assert sorted(j.name for j in jobs) == [f"azp-linux-{i}" for i in range(JOBS)]
    assert sorted(p.job_name or "" for p in pods) == [f"azp-linux-{i}" for i in range(JOBS)]
    assert {j.request_id for j in jobs} == set(range(JOBS)) and {p.phase for p in pods} == {"Running"}
    assert dict(kube.calls) == {"list jobs": 1, "list pods": 1}
    [query] = list_queries(cluster, "jobs")
    assert query["limit"] == str(LIST_PAGE_SIZE) and "continue" not in query


def test_paged_lists_return_every_object_once(cluster: Cluster, make_kube: Callable[..., Kubernetes]) -> None:
    """We test: past the page size, a list follows the continue tokens to the end: 5 objects in pages of 2
    are 3 calls, each object once, the same models as one unpaged call gives."""
    whole = make_kube()
    paged = make_kube(page_size=2)
    jobs, pods = paged.list_jobs(NAMESPACE, owner=OWNER), paged.list_pods(NAMESPACE, owner=OWNER)
    assert sorted(jobs, key=lambda j: j.name) == sorted(whole.list_jobs(NAMESPACE, owner=OWNER), key=lambda j: j.name)
    assert sorted(pods, key=lambda p: p.name) == sorted(whole.list_pods(NAMESPACE, owner=OWNER), key=lambda p: p.name)
    assert len({j.name for j in jobs}) == len(jobs) == JOBS and len({p.name for p in pods}) == len(pods) == JOBS
    assert dict(paged.calls) == {"list jobs": 3, "list pods": 3}
    queries = list_queries(cluster, "jobs")[:3]
    assert [q["limit"] for q in queries] == ["2", "2", "2"]
    assert "continue" not in queries[0] and all(q.get("continue") for q in queries[1:])


def expire_continue_tokens(cluster: Cluster, kube: Kubernetes, *, times: int) -> None:
    """Make the API server answer the next `times` continued Job lists with 410 Expired, as a real one does
    when a continue token outlived etcd's compaction."""
    original = kube.transport.request
    remaining = [times]

    def request(method: str, path: str, **kwargs: Any) -> Any:
        if path.endswith("/jobs") and kwargs["query"].get("continue") and remaining[0] > 0:
            remaining[0] -= 1
            cluster.emulator.inject_fault("GET", "jobs(list)", kind="status", status=410)
        return original(method, path, **kwargs)

    kube.transport.request = request  # type: ignore[method-assign]


def test_an_expired_continue_token_lists_again_from_the_start(
    cluster: Cluster, make_kube: Callable[..., Kubernetes]
) -> None:
    """We test: 410 Expired on the second page starts the list over, and every Job comes back once."""
    kube = make_kube(page_size=2)
    expire_continue_tokens(cluster, kube, times=1)
    jobs = kube.list_jobs(NAMESPACE, owner=OWNER)
    assert sorted(j.name for j in jobs) == [f"azp-linux-{i}" for i in range(JOBS)]
    assert kube.calls["list jobs"] == 1 + 1 + 3  # first page, the expired second page, then the list again
    assert [c.status for c in cluster.emulator.calls() if c.path.endswith("/jobs")].count(410) == 1


def test_a_list_whose_token_keeps_expiring_is_a_transient_error(
    cluster: Cluster, make_kube: Callable[..., Kubernetes]
) -> None:
    """We test: a list that never gets through gives up after a few starts with a TransientError (the pass
    fails and the next one tries again), never loops for ever."""
    kube = make_kube(page_size=2)
    expire_continue_tokens(cluster, kube, times=100)
    with pytest.raises(TransientError, match="list jobs: the continue token expired 3 times"):
        kube.list_jobs(NAMESPACE, owner=OWNER)
    assert kube.calls["list jobs"] == 3 * 2


def test_skimming_specs_while_parsing_keeps_the_models_the_same(cluster: Cluster) -> None:
    """We test: dropping spec and managedFields as each item is parsed changes no field of the models (they
    read metadata and status only) and leaves no spec behind, nested pod templates included."""
    for resource, convert in (("jobs", job_from_json), ("pods", pod_from_json)):
        listed = cluster.emulator.objects(resource, NAMESPACE)
        for obj in listed:
            obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
        text = json.dumps({"kind": "List", "metadata": {"resourceVersion": "1"}, "items": listed})
        skimmed = json.loads(text, object_hook=_skim)["items"]
        assert [convert(item) for item in skimmed] == [convert(item) for item in json.loads(text)["items"]]
        assert all("spec" not in item and "managedFields" not in item["metadata"] for item in skimmed)
        assert all("status" in item for item in skimmed)


def test_pods_carry_the_agent_id_their_register_container_published(
    cluster: Cluster, make_kube: Callable[..., Kubernetes]
) -> None:
    """We test: the agent id `start.sh register` writes to its init container's termination message is read
    from the pod list; a main container's message (pipeline steps run there), a malformed id or no
    message give none."""
    pods = sorted(p["metadata"]["name"] for p in cluster.pods())
    emulator = cluster.emulator
    assert emulator.set_termination_message(NAMESPACE, pods[0], "register", f"{names.AGENT_ID_MESSAGE}4711\n")
    assert emulator.set_termination_message(NAMESPACE, pods[1], "register", f"{names.AGENT_ID_MESSAGE}47x1\n")
    emulator.finish_pod(NAMESPACE, pods[2], exit_code=0)
    main = next(s["name"] for s in cluster.emulator.objects("pods", NAMESPACE)[0]["status"]["containerStatuses"])
    assert emulator.set_termination_message(NAMESPACE, pods[2], main, f"{names.AGENT_ID_MESSAGE}666\n")

    listed = {pod.name: pod.agent_id for pod in make_kube().list_pods(NAMESPACE, owner=OWNER)}
    assert listed[pods[0]] == 4711
    assert listed[pods[1]] is None
    assert listed[pods[2]] is None
    assert all(listed[name] is None for name in pods[3:])
