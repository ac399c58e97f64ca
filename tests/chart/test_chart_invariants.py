"""We test invariants over every object of every example values file: standard labels, namespaces,
security contexts on every pod spec (including the job templates stored in the ConfigMap), the PAT
only inside Secrets, and nothing cluster-wide."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import (
    NAMESPACE,
    RELEASE,
    TEST_PAT,
    example_files,
    job_templates_of,
    pod_specs,
    render_example,
)

EXAMPLES = example_files()
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)
NAMESPACED_KINDS = {
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Role",
    "RoleBinding",
    "CronJob",
    "Job",
    "PersistentVolumeClaim",
    "Pod",
}


def _all_pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    specs = [(f"{o['kind']}/{o['metadata']['name']}", s) for o in objects for s in pod_specs(o)]
    for name, template in job_templates_of(objects).items():
        specs += [(f"jobTemplates.{name}", s) for s in pod_specs(template)]
    return specs


def _is_windows(pod: Mapping[str, Any]) -> bool:
    return (pod.get("os") or {}).get("name") == "windows"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_object_has_the_standard_labels(example: Path) -> None:
    """We test: each object carries the app.kubernetes.io/* labels of this release."""
    for obj in render_example(example):
        labels = obj["metadata"].get("labels") or {}
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_namespaced_objects_name_their_namespace(example: Path) -> None:
    """We test: every namespaced object says where it goes (agent namespaces differ from the release's)."""
    for obj in render_example(example):
        if obj["kind"] in NAMESPACED_KINDS:
            assert obj["metadata"].get("namespace"), f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_nothing_is_cluster_wide(example: Path) -> None:
    """We test: no ClusterRole or ClusterRoleBinding, and Namespaces only when asked for."""
    kinds = {o["kind"] for o in render_example(example)}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    assert kinds <= NAMESPACED_KINDS | {"Namespace"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_pod_spec_has_security_contexts(example: Path) -> None:
    """We test: the CronJob, the test Pod and every job template set pod and container security contexts."""
    specs = _all_pod_specs(render_example(example))
    assert any(name.startswith("CronJob/") for name, _ in specs)
    assert any(name.startswith("Pod/") for name, _ in specs)
    assert any(name.startswith("jobTemplates.") for name, _ in specs)
    for name, pod in specs:
        assert pod.get("securityContext"), f"{name}: no pod securityContext"
        assert pod.get("automountServiceAccountToken") is not None, f"{name}: token mount not explicit"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert container.get("securityContext"), f"{name}: container {container['name']} has no securityContext"
        if _is_windows(pod):
            continue
        assert pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod["securityContext"].get("runAsNonRoot") is True or _privileged(pod), name


def _privileged(pod: Mapping[str, Any]) -> bool:
    return any((c.get("securityContext") or {}).get("privileged") for c in pod["containers"])


def _buildkit_sidecar(container: Mapping[str, Any]) -> bool:
    return container.get("name") == "buildkitd" and container.get("restartPolicy") == "Always"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_containers_drop_privilege(example: Path) -> None:
    """We test: every Linux container forbids privilege escalation and drops all capabilities, but the
    rootless BuildKit sidecar (agent.buildkit): its newuidmap/newgidmap are setuid and need CAP_SETUID/SETGID
    to map its sub-ids (moby/buildkit Dockerfile, `rootless` stage), so it keeps them; it is never privileged
    and runs as the image's uid 1000."""
    for name, pod in _all_pod_specs(render_example(example)):
        if _is_windows(pod):
            continue
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            context = container["securityContext"]
            if _buildkit_sidecar(container):
                assert context["runAsUser"] == 1000 and context["runAsNonRoot"] is True, name
                assert not context.get("privileged") and "capabilities" not in context, name
                continue
            assert context.get("allowPrivilegeEscalation") is False, f"{name}/{container['name']}"
            assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{container['name']}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_reconciler_pods_are_locked_down(example: Path) -> None:
    """We test: reconciler and test pods run as uid 10001 on a read-only root filesystem."""
    for obj in render_example(example):
        if obj["kind"] not in ("CronJob", "Pod"):
            continue
        for pod in pod_specs(obj):
            assert pod["securityContext"]["runAsUser"] == 10001
            assert pod["automountServiceAccountToken"] is True
            for container in pod["containers"]:
                assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_pat_appears_only_in_secrets(example: Path) -> None:
    """We test: the PAT (plain or base64) is in no object but the Secrets, and nowhere when a Secret is given."""
    encoded = base64.b64encode(TEST_PAT.encode()).decode()
    objects = render_example(example)
    for obj in objects:
        text = json.dumps(obj)
        if obj["kind"] == "Secret":
            assert obj["data"]["pat"] == encoded
            continue
        assert TEST_PAT not in text, f"PAT in {obj['kind']}/{obj['metadata']['name']}"
        assert encoded not in text, f"encoded PAT in {obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_release_objects_live_in_the_release_namespace(example: Path) -> None:
    """We test: the CronJob, ConfigMap and reconciler ServiceAccount are in the release namespace."""
    for obj in render_example(example):
        if obj["kind"] in ("CronJob", "ConfigMap", "Pod"):
            assert obj["metadata"]["namespace"] == NAMESPACE
