"""We test: a job template with a mistyped field is refused by the real API server when the
reconciler creates the Job (fieldValidation=Strict), instead of the field being dropped silently."""

from __future__ import annotations

import copy

import pytest
from control_plane import ControlPlane
from realkube_helpers import api
from test_differential import JOB

from reconciler.errors import ReconcilerError
from reconciler.kube import Kubernetes


def test_server_refuses_a_mistyped_field_only_when_strict(control_plane: ControlPlane, namespace: str) -> None:
    """We test: the real server's default (Warn) creates a Job with a mistyped field, dropping it;
    fieldValidation=Strict refuses it with 400 BadRequest naming the field."""
    job = copy.deepcopy(JOB)
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    created = api(control_plane, "POST", path, job)
    assert "restartPolicyy" not in created["spec"]["template"]["spec"]
    session = control_plane.server.session()
    refused = session.post(
        control_plane.url + path,
        json=job | {"metadata": {"name": "strict"}},
        params={"fieldValidation": "Strict"},
        timeout=30,
    )
    assert refused.status_code == 400
    assert 'unknown field "spec.template.spec.restartPolicyy"' in refused.json()["message"]


def test_reconciler_create_job_is_strict(control_plane: ControlPlane, namespace: str) -> None:
    """We test: the reconciler's own Kubernetes client refuses to create a Job with a mistyped field."""
    job = copy.deepcopy(JOB)
    job["metadata"]["namespace"] = namespace
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    client = Kubernetes(kubeconfig=str(control_plane.kubeconfig))
    try:
        with pytest.raises(ReconcilerError, match="restartPolicyy"):
            client.create_job(job)
    finally:
        client.close()
