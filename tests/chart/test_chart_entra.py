"""We test the chart's Entra ID values (auth.method and its keys): what reaches config.yaml (accepted by the
reconciler's own schema and credential reader), the reconciler's ServiceAccount, pods and volumes, and which
PAT Secrets are rendered."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import (
    ORGANIZATION,
    config_of,
    find,
    only,
    render_chart,
    render_failure,
)

from reconciler.config import read_credentials, validate_document

CLIENT = "5b6c7d8e-1111-4222-8333-944445555666"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
WORKLOAD = {"organization": {"url": ORGANIZATION}, "auth": {"method": "workloadIdentity", "clientId": CLIENT}}
SERVICE_PRINCIPAL = {
    "organization": {"url": ORGANIZATION},
    "auth": {
        "method": "servicePrincipal",
        "tenantId": TENANT,
        "clientId": CLIENT,
        "servicePrincipal": {"existingSecret": "azp-sp"},
    },
}


def reconciler_pods(objects: list[dict[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(pod template metadata, pod spec) of every pod built from the reconciler's pod spec."""
    pods: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
    for obj in find(objects, "CronJob"):
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
        pods.append((template["metadata"], template["spec"]))
    pods += [(obj["metadata"], obj["spec"]) for obj in find(objects, "Pod")]
    pods += [(obj["spec"]["template"]["metadata"], obj["spec"]["template"]["spec"]) for obj in find(objects, "Job")]
    return pods


def secrets_mounted(spec: Mapping[str, Any]) -> set[str]:
    return {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}


def test_workload_identity_annotates_the_account_and_labels_every_reconciler_pod() -> None:
    """We test: workloadIdentity puts auth.clientId (and auth.tenantId) on the reconciler's ServiceAccount for the
    AKS webhook, labels every reconciler pod azure.workload.identity/use=true, renders and mounts no PAT Secret,
    and writes a config the reconciler reads with the variables the webhook injects."""
    values = {**WORKLOAD, "auth": {**WORKLOAD["auth"], "tenantId": TENANT}}
    objects = render_chart(values)
    account = only(objects, "ServiceAccount", "azp-agents-reconciler")
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": CLIENT,
        "azure.workload.identity/tenant-id": TENANT,
    }
    pods = reconciler_pods(objects)
    assert len(pods) >= 2
    for metadata, spec in pods:
        assert metadata["labels"]["azure.workload.identity/use"] == "true"
        assert spec["serviceAccountName"] == "azp-agents-reconciler" and not secrets_mounted(spec)
    assert not find(objects, "Secret")
    document = config_of(objects)
    assert document["auth"] == {"method": "workloadIdentity", "clientId": CLIENT, "tenantId": TENANT}
    validate_document(document, source="chart")


def test_service_principal_mounts_only_its_secret(tmp_path: Path) -> None:
    """We test: servicePrincipal mounts auth.servicePrincipal.existingSecret (the client secret, or the
    certificate with certificateKey) where config.yaml says, and no PAT; the reconciler reads that config."""
    objects = render_chart(SERVICE_PRINCIPAL)
    for _, spec in reconciler_pods(objects):
        assert secrets_mounted(spec) == {"azp-sp"}
        volume = next(v for v in spec["volumes"] if v["name"] == "service-principal")
        assert volume["secret"]["items"] == [{"key": "clientSecret", "path": "clientSecret"}]
    document = config_of(objects)
    assert document["auth"]["clientSecretFile"] == "/var/run/secrets/azp-sp/clientSecret"
    validate_document(document, source="chart")
    secret_file = tmp_path / "clientSecret"
    secret_file.write_text("sp-secret-value")
    credentials = read_credentials({"auth": {**document["auth"], "clientSecretFile": str(secret_file)}}, env={})
    assert (credentials.method, credentials.client_id, credentials.tenant_id) == ("servicePrincipal", CLIENT, TENANT)
    with_certificate = {
        **SERVICE_PRINCIPAL["auth"],
        "servicePrincipal": {"existingSecret": "azp-sp", "certificateKey": "tls.pem"},
    }
    document = config_of(render_chart({**SERVICE_PRINCIPAL, "auth": with_certificate}))
    assert document["auth"]["certificateFile"] == "/var/run/secrets/azp-sp/certificate.pem"
    assert "clientSecretFile" not in document["auth"]


def test_a_pat_given_with_entra_reaches_only_the_agent_namespaces() -> None:
    """We test: with an Entra ID method, the reconciler registers the agents by default, so a PAT given in
    auth.pat is rendered nowhere; with agent.registration token (pods register with it) the PAT Secret is in
    the agent namespaces only, never in the reconciler's, and no reconciler pod mounts it."""
    values = {**SERVICE_PRINCIPAL, "auth": {**SERVICE_PRINCIPAL["auth"], "pat": "agent-registration-pat-1"}}
    values["pools"] = [{"name": "Default"}, {"name": "Builds", "namespace": "builds"}]
    values["agent"] = {"namespace": "agents"}
    assert [s["metadata"]["namespace"] for s in find(render_chart(values), "Secret")] == []
    values["agent"] = {"namespace": "agents", "registration": "token"}
    objects = render_chart(values)
    assert [s["metadata"]["namespace"] for s in find(objects, "Secret")] == ["agents", "builds"]
    for _, spec in reconciler_pods(objects):
        assert secrets_mounted(spec) == {"azp-sp"}


def test_managed_identity_needs_no_secret() -> None:
    """We test: managedIdentity (system-assigned without auth.clientId) renders a config with only the method."""
    objects = render_chart({"organization": {"url": ORGANIZATION}, "auth": {"method": "managedIdentity"}})
    assert config_of(objects)["auth"] == {"method": "managedIdentity"}
    assert not find(objects, "Secret")


@pytest.mark.parametrize(
    ("auth", "words"),
    [
        ({"method": "workloadIdentity"}, ["auth.clientId is required", "federated credential"]),
        ({"method": "servicePrincipal", "clientId": CLIENT}, ["auth.tenantId is required"]),
        (
            {"method": "servicePrincipal", "tenantId": TENANT, "clientId": CLIENT},
            ["auth.servicePrincipal.existingSecret"],
        ),
        ({"method": "workloadIdentity", "clientId": "my-app"}, ["auth.clientId", "a GUID"]),
        (
            {"method": "servicePrincipal", "tenantId": "contoso", "clientId": CLIENT},
            ["auth.tenantId", "verified domain"],
        ),
        (
            {"method": "workloadIdentity", "clientId": CLIENT, "authorityHost": "http://login.example"},
            ["auth.authorityHost"],
        ),
        ({"method": "pat"}, ["auth.pat or auth.existingSecret is required", "auth.method"]),
    ],
)
def test_bad_entra_values_name_the_key(auth: dict[str, Any], words: list[str]) -> None:
    """We test: each missing or malformed Entra ID value fails the render with its key and what to give."""
    error = render_failure({"organization": {"url": ORGANIZATION}, "auth": auth})
    for word in words:
        assert word in error, error
