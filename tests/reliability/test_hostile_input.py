"""We test hostile input: job templates that are not Jobs or ask for more than the pod policy allows,
pool names no Kubernetes name could hold, job request payloads with missing, mistyped and extra
fields, and a queue of 100,000 requests. Each gets a clear error that names the key (exit 2) or a safe,
documented behaviour, and never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from invariants import max_agents_of, violations
from reliability_support import NAMESPACE, Rig, base_env, run_cli, start_rig

from azp_simulation.world import job_template
from reconciler import names

TEMPLATE_KEY = "pools[0].templates[0].jobTemplate"
WORLD: dict[str, Any] = {
    "name": "hostile",
    "timeout": 60,
    "reconciler": {"loopFor": 0, "interval": 0.2, "idleInterval": 0.2, "sweepInterval": 10},
    "pools": [
        {
            "name": "linux",
            "maxAgents": 4,
            "provisioningTimeout": 30,
            "idleTimeout": 30,
            "templates": [{"name": "default", "capabilities": {"docker": ""}}],
        }
    ],
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

OWNER = names.Owner(prefix="azp", release="azp-agents")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    started = start_rig(WORLD, tmp_path)
    # Installed: the placeholders exist, so queued requests wait instead of failing at once.
    assert started.reconcile().code == 0
    yield started
    started.simulation.stop()


def _use_template(rig: Rig, text: str, *, policy: dict[str, bool] | None = None) -> Path:
    path = rig.directory / "hostile-job.yaml"
    path.write_text(text)
    document = rig.config()
    document["pools"][0]["templates"][0]["jobTemplate"] = str(path)
    if policy is not None:
        document["podPolicy"] = policy
    rig.write_config(document)
    return path


NOT_JOBS = {
    "deployment": yaml.safe_dump(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {}}
    ),
    "configmap": yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}),
    "list": yaml.safe_dump([{"kind": "Job"}, {"kind": "Job"}]),
    "scalar": "just a string\n",
    "two documents": yaml.safe_dump(job_template("img")) + "---\n" + yaml.safe_dump(job_template("img")),
    "invalid yaml": "spec: [unclosed\n  template: {\n",
    "empty": "",
    "wrong apiVersion": yaml.safe_dump({**job_template("img"), "apiVersion": "batch/v1beta1"}),
    "job without containers": yaml.safe_dump({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {}}}),
}


@pytest.mark.parametrize("case", sorted(NOT_JOBS))
def test_template_that_is_not_a_job(rig: Rig, case: str) -> None:
    """We test: a job template that is not a usable Job stops `reconcile` and `check` with exit 2, a
    message naming the key and the file, no traceback, and no Job created."""
    path = _use_template(rig, NOT_JOBS[case])
    rig.azdo.queue_request(rig.pool_id(), demands=(), duration=5)
    for result in (
        rig.reconcile(),
        run_cli(["check", "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path)]),
    ):
        assert result.code == 2, result.out
        assert TEMPLATE_KEY in result.out and str(path) in result.out, result.out
        assert "Traceback" not in result.out
    assert rig.jobs() == []


def _mutate(change: Callable[[dict[str, Any]], None]) -> str:
    job = job_template("ghcr.io/azp-agents/agent-linux:4.261.0")
    change(job["spec"]["template"]["spec"])
    return yaml.safe_dump(job)


def _privileged_main(pod: dict[str, Any]) -> None:
    pod["containers"][0]["securityContext"] = {"privileged": True}


def _privileged_init(pod: dict[str, Any]) -> None:
    pod["initContainers"][0]["securityContext"] = {"privileged": True}


def _escalation(pod: dict[str, Any]) -> None:
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _host_path(pod: dict[str, Any]) -> None:
    pod["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}})
    pod["containers"][0]["volumeMounts"].append({"name": "docker", "mountPath": "/var/run/docker.sock"})


def _projected_token(pod: dict[str, Any]) -> None:
    pod["volumes"].append(
        {
            "name": "sa",
            "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]},
        }
    )
    pod["containers"][0]["volumeMounts"].append({"name": "sa", "mountPath": "/var/run/secrets/tokens"})


def _literal_token(pod: dict[str, Any]) -> None:
    pod["containers"][0]["env"] = [{"name": "AZP_TOKEN", "value": "a-literal-token"}]


FORBIDDEN = [
    pytest.param(
        lambda p: p.update(hostNetwork=True), "podPolicy.allowHostNetwork", "allowHostNetwork", id="hostNetwork"
    ),
    pytest.param(_privileged_main, "podPolicy.allowPrivileged", "allowPrivileged", id="privileged"),
    pytest.param(_privileged_init, "podPolicy.allowPrivileged", "allowPrivileged", id="privileged-init"),
    pytest.param(_escalation, "podPolicy.allowPrivileged", "allowPrivileged", id="privilege-escalation"),
    pytest.param(_host_path, "podPolicy.allowHostPath", "allowHostPath", id="hostPath"),
    pytest.param(
        lambda p: p.update(automountServiceAccountToken=True),
        "podPolicy.allowServiceAccountToken",
        "allowServiceAccountToken",
        id="automount-token",
    ),
    pytest.param(
        _projected_token,
        "podPolicy.allowServiceAccountToken",
        "allowServiceAccountToken",
        id="projected-token",
    ),
    pytest.param(lambda p: p.update(hostPID=True), "hostPID", None, id="hostPID"),
    pytest.param(_literal_token, "AZP_TOKEN as a literal", None, id="literal-token"),
]


@pytest.mark.parametrize(("change", "message", "allow"), FORBIDDEN)
def test_template_asking_for_more_than_the_pod_policy(
    rig: Rig, change: Callable[[dict[str, Any]], None], message: str, allow: str | None
) -> None:
    """We test: with the secure default podPolicy, a template asking for host network, privilege, a
    hostPath, a service account token or a token literal exits 2 naming the key to change and creates
    nothing; and where podPolicy can allow it, allowing it lets the Job through unchanged."""
    text = _mutate(change)
    _use_template(rig, text)
    rig.azdo.queue_request(rig.pool_id(), demands=(), duration=5)
    refused = rig.reconcile()
    assert refused.code == 2, refused.out
    assert message in refused.out and TEMPLATE_KEY in refused.out, refused.out
    assert "Traceback" not in refused.out
    assert rig.jobs() == []
    if allow is None:
        return
    _use_template(rig, text, policy={allow: True})
    allowed = rig.reconcile()
    assert allowed.code == 0, allowed.out
    jobs = rig.jobs()
    assert len(jobs) == 1
    wanted = yaml.safe_load(text)["spec"]["template"]["spec"]
    created = jobs[0]["spec"]["template"]["spec"]
    for key in ("hostNetwork", "automountServiceAccountToken"):
        if key in wanted:
            assert created.get(key) == wanted[key]
    assert [v["name"] for v in wanted["volumes"]] == [v["name"] for v in created["volumes"]][: len(wanted["volumes"])]


HOSTILE_POOLS = ["Linux Builds", "ビルド プール ✓ (arm64)", "x" * 200, "linux-builds", "a/b:c?d&e=%20"]


def test_pool_names_no_kubernetes_name_could_hold(tmp_path: Path) -> None:
    """We test: pools named with spaces, unicode, 200 characters, URL metacharacters, and one whose
    slug would collide with another's, each get valid, distinct Job names and labels (the emulator
    validates like an API server), the exact name in the annotation, a placeholder, and their jobs served."""
    world = {
        **WORLD,
        "pools": [
            {**WORLD["pools"][0], "name": name, "templates": [{"name": "default", "capabilities": {"docker": ""}}]}
            for name in HOSTILE_POOLS
        ],
    }
    rig = start_rig(world, tmp_path)
    try:
        first = rig.reconcile()
        assert first.code == 0, first.out
        requests = {
            name: rig.azdo.queue_request(rig.pool_id(name), demands=("docker",), duration=0.2) for name in HOSTILE_POOLS
        }
        second = rig.reconcile()
        assert second.code == 0, second.out
        jobs = rig.jobs()
        assert len(jobs) == len(HOSTILE_POOLS), [j["metadata"]["name"] for j in jobs]
        by_pool = {j["metadata"]["annotations"][names.ANNOTATION_POOL_NAME]: j for j in jobs}
        assert set(by_pool) == set(HOSTILE_POOLS)
        slugs = set()
        for pool, job in by_pool.items():
            metadata = job["metadata"]
            assert DNS_LABEL.match(metadata["name"]) and len(metadata["name"]) <= names.MAX_JOB_NAME, metadata["name"]
            for value in metadata["labels"].values():
                assert len(value) <= 63 and LABEL_VALUE.match(value), value
            assert metadata["labels"][names.LABEL_REQUEST_ID] == str(requests[pool])
            slugs.add(metadata["labels"][names.LABEL_POOL])
            placeholder = names.placeholder_name(OWNER, pool_name=pool, template="default")
            assert rig.agent(placeholder, pool) is not None, placeholder
        assert len(slugs) == len(HOSTILE_POOLS)

        def served() -> bool:
            rig.reconcile()
            return all(not rig.azdo.requests(rig.pool_id(p), unfinished_only=True) for p in HOSTILE_POOLS)

        rig.wait_for(served, timeout=15, what="every pool's job to be served")
        assert all(r.get("result") == "succeeded" for p in HOSTILE_POOLS for r in rig.azdo.requests(rig.pool_id(p)))
        assert not violations(rig.simulation, max_agents=max_agents_of(rig.config()))
    finally:
        rig.simulation.stop()


def _serve_payload(rig: Rig, route: str, payload: Any, *, times: int = 1) -> None:
    """Seed a raw response: the emulator answers the next GETs of `route` with this JSON document."""
    rig.azdo.inject_fault("GET", route, kind="status", status=200, times=times, body=json.dumps(payload))


def test_job_requests_with_missing_extra_and_mistyped_fields(rig: Rig) -> None:
    """We test: requests without a usable requestId are skipped; mistyped optional fields (times, demands,
    agent references, result) are read as absent; unknown fields are ignored; the pass exits 0 and
    creates exactly one Job per usable request."""
    payload = {
        "count": 10,
        "value": [
            {},
            {"requestId": "12"},
            {"requestId": True},
            None,
            42,
            "request",
            {"requestId": 5, "queueTime": "not a time", "demands": "docker", "unknownField": {"deep": [1, 2]}},
            {"requestId": 6, "demands": [1, None, "docker"], "reservedAgent": "garbage", "definition": 7},
            {"requestId": 7, "result": 5, "finishTime": 12, "assignTime": [], "planType": {"x": 1}},
        ],
        "extra": "ignored",
    }
    rig.forget_lease()
    _serve_payload(rig, "pools/{poolId}/jobrequests", payload)
    result = rig.reconcile()
    assert result.code == 0, result.out
    assert "Traceback" not in result.out
    labels = sorted(j["metadata"]["labels"][names.LABEL_REQUEST_ID] for j in rig.jobs())
    assert labels == ["5", "6", "7"]


@pytest.mark.parametrize("payload", [{"count": 1}, [{"requestId": 1}], {"value": "x"}, "text", None])
def test_job_request_list_of_the_wrong_shape(rig: Rig, payload: Any) -> None:
    """We test: a job-request list that is not {count, value: [...]} fails that pool's read (exit 1, the
    route named) instead of being taken as an empty queue."""
    _serve_payload(rig, "pools/{poolId}/jobrequests", payload, times=10)
    result = rig.reconcile()
    assert result.code == 1, result.out
    assert "pools/{poolId}/jobrequests" in result.out and "Traceback" not in result.out


def _serve_agents(rig: Rig, extra: list[Any]) -> tuple[Any, int]:
    rig.azdo.add_agent(rig.pool_id(), "azp-eeca0-linux-5-aaaaa", status="offline")
    payload = {"count": 1 + len(extra), "value": [*rig.agents(), *extra]}
    rig.forget_lease()
    _serve_payload(rig, "pools/{poolId}/agents", payload)
    before = rig.azdo.stats.agents_deleted
    result = rig.reconcile()
    return result, rig.azdo.stats.agents_deleted - before


def test_agents_without_id_or_name(rig: Rig) -> None:
    """We test: listed agents without a usable id or name (missing, mistyped) are ignored, never acted
    on; the real offline leftover of ours is still pruned."""
    extra = [
        {"name": "azp-eeca0-linux-6-bbbbb", "status": "offline"},
        {"id": "7", "name": "azp-eeca0-linux-7-ccccc"},
        {"id": 8},
    ]
    result, deleted = _serve_agents(rig, [*extra, None, 3, "agent"])
    assert result.code == 0, result.out
    assert "Traceback" not in result.out
    assert deleted == 1 and "deleting agent azp-eeca0-linux-5-aaaaa" in result.out
    assert "azp-eeca0-linux-6-" not in result.out and "azp-eeca0-linux-7-" not in result.out


def test_agents_with_mistyped_fields(rig: Rig) -> None:
    """We test: an agent whose optional fields have the wrong types is read with those fields absent, and
    the pass goes on."""
    mistyped = {
        "id": 9,
        "name": "azp-eeca0-linux-9-ddddd",
        "status": 3,
        "assignedRequest": "x",
        "systemCapabilities": [1],
    }
    result, _ = _serve_agents(rig, [mistyped])
    assert result.code in (0, 1), result.out
    assert "Traceback" not in result.out


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (pytest's here), which would hide
# what the pass itself used.
RSS_SCRIPT = """
import sys
from reconciler.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(f"maxrss_kb={peak}", file=sys.stderr)
sys.exit(code)
"""


def _run_measured(rig: Rig) -> tuple[int, str, int, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, *rig.command()[3:]],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    found = re.search(r"maxrss_kb=(\d+)", done.stderr)
    assert found, done.stderr[-2000:]
    return done.returncode, done.stdout + done.stderr, int(found.group(1)) // 1024, seconds


HUGE_QUEUE = 100_000
CREATE_CAP = 25
# What a pass may use beyond a pass over an empty queue, per queued request: the plan holds each
# request once, as a small frozen dataclass, plus the parsed JSON of the page.
BYTES_PER_REQUEST = 2_000


@pytest.mark.slow
def test_a_hundred_thousand_queued_requests(rig: Rig) -> None:
    """We test: 100,000 queued requests (a minimal payload served by the emulator) give one pass of
    bounded memory and time that creates exactly maxCreatePerPass Jobs, and the next pass as many more."""
    document = rig.config()
    document["maxCreatePerPass"] = CREATE_CAP
    document["pools"][0]["maxAgents"] = 10 * CREATE_CAP
    rig.write_config(document)
    baseline_code, baseline_out, baseline_mb, _ = _run_measured(rig)
    assert baseline_code == 0, baseline_out
    stamp = "2026-03-02T12:00:00.000Z"
    payload = {
        "count": HUGE_QUEUE,
        "value": [{"requestId": 10_000 + i, "queueTime": stamp, "demands": ["docker"]} for i in range(HUGE_QUEUE)],
    }
    for expected in (CREATE_CAP, 2 * CREATE_CAP):
        _serve_payload(rig, "pools/{poolId}/jobrequests", payload)
        code, out, peak_mb, seconds = _run_measured(rig)
        assert code == 0, out[-3000:]
        assert len(rig.jobs()) == expected
        growth = peak_mb - baseline_mb
        print(f"\n100,000 queued: pass {seconds:.1f}s, peak RSS {peak_mb} MiB ({growth:+d} MiB over an empty queue)")
        assert growth * 1024 * 1024 <= HUGE_QUEUE * BYTES_PER_REQUEST, (peak_mb, baseline_mb)
        assert seconds < 60
    active = [j for j in rig.kube.objects("jobs", NAMESPACE)]
    assert len({j["metadata"]["name"] for j in active}) == 2 * CREATE_CAP
