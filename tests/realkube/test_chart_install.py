"""We test: the chart as the real API server takes it. `helm install` of every values/*.yaml (and
under a non-default release name), with Pod Security `restricted` enforced and warned in the release
namespace; server-side dry-run of every rendered manifest; the agent Jobs the reconciler would create
from each values file admitted by Pod Security, their pods created by the real Job controller and
run by the simulated kubelet; `helm test` running the real `azp-reconciler check` in its pod."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, base_values_for, example_files, render_chart
from chart_reconciler import agent_jobs
from check_pod import CheckPods
from control_plane import ControlPlane
from realkube_helpers import api, create_namespace, run
from release import install

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.kubelet import Kubelet

POD_SECURITY_WARNING = "would violate PodSecurity"


def _values_args(example: Path, directory: Path) -> list[str]:
    layer = directory / "base-values.yaml"
    layer.write_text(yaml.safe_dump(base_values_for(example)), encoding="utf-8")
    return ["-f", str(layer), "-f", str(example)]


def _other_namespaces(objects: list[dict[str, Any]], release_namespace: str) -> set[str]:
    """Agent namespaces the chart does not create but uses (they must exist before the install)."""
    created = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    used = {o["metadata"].get("namespace") for o in objects if o["metadata"].get("namespace")}
    return {n for n in used if n not in created and n != release_namespace}


def _wait_for(condition: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize(
    ("example", "release"),
    [(path, "azp-agents") for path in example_files()] + [(example_files()[0], "ci-agents")],
    ids=lambda v: v.stem if isinstance(v, Path) else v,
)
def test_helm_install_every_values_file(
    control_plane: ControlPlane, kubelet: Kubelet, example: Path, release: str, tmp_path: Path
) -> None:
    """We test: `helm install` of the values file succeeds against the real server in a namespace
    enforcing Pod Security `restricted`, with no PodSecurity warning for the CronJob's pod template;
    then server-side dry-run of every rendered object (the helm test Pod too) passes;
    every object the chart rendered (but the test hook) then exists; the agent Jobs of every pool template are admitted
    and their pods created and bound to a node of their OS (Windows agents to the Windows node)."""
    namespace = create_namespace(control_plane, f"rk-install-{example.stem}-{release}"[:63])
    objects = render_chart(base_values_for(example), values_files=[example], release=release, namespace=namespace)
    for other in _other_namespaces(objects, namespace):
        create_namespace(control_plane, other)
    args = ["install", release, str(CHART), "-n", namespace, *_values_args(example, tmp_path), "--wait=false"]
    installed = run("helm", *args, kubeconfig=control_plane.kubeconfig)
    assert POD_SECURITY_WARNING not in installed.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    dry_run = run("kubectl", "apply", "--dry-run=server", "-f", str(rendered), kubeconfig=control_plane.kubeconfig)
    assert dry_run.stdout.count("(server dry run)") == len(objects), dry_run.stdout
    for obj in (o for o in objects if "helm.sh/hook" not in (o["metadata"].get("annotations") or {})):
        where = obj["metadata"].get("namespace", namespace)
        name = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
        got = run("kubectl", "get", name, "-n", where, "-o", "name", kubeconfig=control_plane.kubeconfig)
        assert got.stdout.strip(), obj["metadata"]["name"]
    for job in agent_jobs(objects, tmp_path):
        job_namespace = job["metadata"].get("namespace", namespace)
        created = api(control_plane, "POST", f"/apis/batch/v1/namespaces/{job_namespace}/jobs", job)
        uid = created["metadata"]["uid"]
        pods = _wait_for(
            lambda ns=job_namespace, uid=uid: api(
                control_plane, "GET", f"/api/v1/namespaces/{ns}/pods", labelSelector=f"controller-uid={uid}"
            )["items"],
            what=f"the Job controller to create the pod of {job['metadata']['name']}",
        )
        assert pods[0]["metadata"]["namespace"] == job_namespace
        node = _wait_for(
            lambda ns=job_namespace, name=pods[0]["metadata"]["name"]: api(
                control_plane, "GET", f"/api/v1/namespaces/{ns}/pods/{name}"
            )["spec"].get("nodeName"),
            what="the kubelet to bind the pod",
        )
        pod_os = (pods[0]["spec"].get("os") or {}).get("name", "linux")
        assert api(control_plane, "GET", f"/api/v1/nodes/{node}")["metadata"]["labels"]["kubernetes.io/os"] == pod_os
        api(
            control_plane,
            "DELETE",
            f"/apis/batch/v1/namespaces/{job_namespace}/jobs/{job['metadata']['name']}",
            {"propagationPolicy": "Background"},
        )


@pytest.mark.parametrize("pool_exists", [True, False])
def test_helm_test_runs_the_real_check(
    control_plane: ControlPlane,
    kubelet: Kubelet,
    check_pods: CheckPods,
    azdo: AzureDevOpsEmulator,
    organization: str,
    namespace: str,
    pool_exists: bool,
    tmp_path: Path,
) -> None:
    """We test: `helm test` creates the chart's check pod (admitted under Pod Security `restricted`,
    bound and started by the kubelet), which runs the real `azp-reconciler check` with the pod's
    ConfigMap and Secret files and its ServiceAccount's token, against the real API server and the
    Azure DevOps emulator. With the release's pool in the organization every check passes and so does
    `helm test`; with a pool the organization lacks, the check fails naming the pool and `helm test`
    fails."""
    pool = f"Pool-{namespace}"
    if pool_exists:
        azdo.add_pool(pool)
    values = {"pools": [{"name": pool, "maxAgents": 2}], "reconciler": {"suspend": True}}
    install(control_plane, organization, namespace, tmp_path, values)
    tested = run(
        "helm", "test", "azp-agents", "-n", namespace, "--timeout", "120s",
        kubeconfig=control_plane.kubeconfig, check=False,
    )  # fmt: skip
    (check,) = [output for (where, _), output in check_pods.outputs.items() if where == namespace]
    assert (tested.returncode == 0) == pool_exists, tested.stderr + check.stdout + check.stderr
    assert check.returncode == (0 if pool_exists else 1), check.stdout + check.stderr
    if pool_exists:
        assert "checks: all " in check.stdout and " ok" in check.stdout, check.stdout
    else:
        assert "FAILED" in check.stdout and pool in check.stdout, check.stdout
