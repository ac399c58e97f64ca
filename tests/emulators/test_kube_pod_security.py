"""We test: the Kubernetes emulator's Pod Security admission, over HTTP, where the differential suite
(tests/realkube/test_differential.py) cannot look: the Job controller's back-off after a refused pod,
the versions a namespace pins, the default (privileged) policy of an unlabelled namespace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from kube_fixtures import FakeClock

from azp_simulation.kube_emulator import KubernetesEmulator

ENFORCE = "pod-security.kubernetes.io/enforce"
PLAIN = {"containers": [{"name": "main", "image": "busybox:1.36"}], "restartPolicy": "Never"}
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kube(clock: FakeClock) -> Iterator[KubernetesEmulator]:
    emulator = KubernetesEmulator(clock=clock, auto_tick=False, validate_version="1.35.0")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def _post(kube: KubernetesEmulator, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(kube.base_url + path, json=body, timeout=5)


def _pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _reasons(kube: KubernetesEmulator, namespace: str) -> list[str]:
    return [
        e["reason"]
        for e in sorted(kube.objects("events", namespace), key=lambda e: int(e["metadata"]["resourceVersion"]))
    ]


def test_refused_job_pods_back_off_exponentially(kube: KubernetesEmulator, clock: FakeClock) -> None:
    """We test: a Job whose pods `restricted` refuses is created with a Warning; its controller records
    FailedCreate, retries after 1 s, then 2 s, and creates the pod once the namespace allows it."""
    kube.add_namespace("strict", labels={ENFORCE: "restricted"})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": PLAIN}}}
    answer = _post(kube, "/apis/batch/v1/namespaces/strict/jobs", job)
    assert answer.status_code == 201
    assert 'would violate PodSecurity \\"restricted:latest\\"' in answer.headers["Warning"]
    failures = []
    for step in (0.5, 0.5, 1.0, 0.9, 0.1):
        failures.append(_reasons(kube, "strict").count("FailedCreate"))
        clock.advance(step)
        kube.tick()
    assert failures == [1, 1, 2, 2, 2]
    assert _reasons(kube, "strict").count("FailedCreate") == 3
    for event in kube.objects("events", "strict"):
        assert event["type"] == "Warning" and event["message"].startswith('Error creating: pods "j-'), event
        assert "violates PodSecurity" in event["message"] and event["source"] == {"component": "job-controller"}
    requests.patch(
        kube.base_url + "/api/v1/namespaces/strict",
        json={"metadata": {"labels": {ENFORCE: "privileged"}}},
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=5,
    ).raise_for_status()
    clock.advance(4)
    kube.tick()
    assert len(kube.objects("pods", "strict")) == 1
    assert _reasons(kube, "strict")[-1] == "SuccessfulCreate"


def test_unlabelled_namespace_admits_anything(kube: KubernetesEmulator) -> None:
    """We test: without labels the policy is privileged:latest: a privileged pod, no Warning."""
    kube.add_namespace("open")
    spec = {"containers": [{"name": "main", "image": "busybox", "securityContext": {"privileged": True}}]}
    answer = _post(kube, "/api/v1/namespaces/open/pods", _pod("p", spec))
    assert answer.status_code == 201 and "Warning" not in answer.headers


@pytest.mark.parametrize(
    ("version", "admitted"),
    [("v1.26", False), ("v1.27", True), ("latest", True)],
)
def test_sysctls_follow_the_pinned_version(kube: KubernetesEmulator, version: str, admitted: bool) -> None:
    """We test: net.ipv4.ip_local_reserved_ports is a safe sysctl from 1.27 on, as the baseline check says."""
    kube.add_namespace("pinned", labels={ENFORCE: "baseline", f"{ENFORCE}-version": version})
    spec = PLAIN | {"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_reserved_ports", "value": "80"}]}}
    answer = _post(kube, "/api/v1/namespaces/pinned/pods", _pod("p", spec))
    assert answer.status_code == (201 if admitted else 403), answer.text
    if not admitted:
        assert answer.json()["message"] == (
            f'pods "p" is forbidden: violates PodSecurity "baseline:{version}": '
            "forbidden sysctls (net.ipv4.ip_local_reserved_ports)"
        )


def test_user_namespaced_pods_may_run_as_root_from_1_35(kube: KubernetesEmulator) -> None:
    """We test: hostUsers: false lifts runAsNonRoot and runAsUser from 1.35 (relaxPolicyForUserNamespacePod),
    not at 1.34."""
    container = {"name": "main", "image": "busybox", "securityContext": RESTRICTED | {"runAsNonRoot": False}}
    spec = {"containers": [container], "hostUsers": False, "securityContext": {"runAsUser": 0}}
    for version, code in (("v1.34", 403), ("v1.35", 201)):
        kube.add_namespace(f"ns-{version[3:]}", labels={ENFORCE: "restricted", f"{ENFORCE}-version": version})
        answer = _post(kube, f"/api/v1/namespaces/ns-{version[3:]}/pods", _pod("p", spec))
        assert answer.status_code == code, answer.text
    assert (
        'runAsNonRoot != true (container "main" must not set securityContext.runAsNonRoot=false)'
        in (_post(kube, "/api/v1/namespaces/ns-34/pods", _pod("q", spec)).json()["message"])
    )


def test_latest_is_the_servers_own_version() -> None:
    """We test: `latest` (and a newer pinned version) means the checks of the server's own version: a probe
    host, refused by baseline from 1.34, passes on an emulated 1.30 server and is refused on 1.35."""
    spec = {
        "containers": [{"name": "main", "image": "busybox", "livenessProbe": {"tcpSocket": {"host": "h", "port": 1}}}]
    }
    codes = {}
    for version in ("1.30.0", "1.35.0"):
        kube = KubernetesEmulator(auto_tick=False, validate_version=version)
        kube.start()
        try:
            kube.add_namespace("b", labels={ENFORCE: "baseline", f"{ENFORCE}-version": "v1.40"})
            codes[version] = _post(kube, "/api/v1/namespaces/b/pods", _pod("p", spec)).status_code
        finally:
            kube.stop()
    assert codes == {"1.30.0": 201, "1.35.0": 403}
