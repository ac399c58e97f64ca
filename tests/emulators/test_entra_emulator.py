"""We test the Entra ID emulator over HTTPS as a client sees it: the discovery routes MSAL reads, the token
endpoint's answers and AADSTS error bodies (Microsoft identity platform reference-error-codes), the App Service
managed identity endpoint, and the Azure DevOps emulator's checks of the tokens it issues."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.entra import (
    AZURE_DEVOPS_APP_ID,
    JWT_BEARER,
    EntraEmulator,
    ServiceAccountIssuer,
    jwt_parts,
)

SCOPE = f"{AZURE_DEVOPS_APP_ID}/.default"
SECRET = "emulator-test-secret-8d1e"


@pytest.fixture
def entra(tmp_path: Path) -> Iterator[EntraEmulator]:
    emulator = EntraEmulator(directory=tmp_path / "entra", token_lifetime=60)
    emulator.start()
    yield emulator
    emulator.stop()


def token_request(entra: EntraEmulator, form: dict[str, str], *, tenant: str | None = None) -> requests.Response:
    url = f"{entra.base_url}/{tenant or entra.tenant_id}/oauth2/v2.0/token"
    return requests.post(
        url, data={"grant_type": "client_credentials", **form}, verify=str(entra.ca.ca_file), timeout=10
    )


def aadsts(response: requests.Response) -> tuple[int, str, int]:
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"}
    assert body["error_description"].startswith(f"AADSTS{body['error_codes'][0]}: ")
    assert "\r\nTrace ID: " in body["error_description"]
    return response.status_code, body["error"], body["error_codes"][0]


def test_discovery_routes_and_https_only(entra: EntraEmulator) -> None:
    """We test: the openid configuration names this tenant's token endpoint, the keys route serves the signing
    key, instance discovery answers, and the server speaks only TLS with a certificate of the throwaway CA."""
    verify = str(entra.ca.ca_file)
    config = requests.get(f"{entra.base_url}/{entra.tenant_id}/v2.0/.well-known/openid-configuration", verify=verify)
    assert config.json()["token_endpoint"] == f"{entra.base_url}/{entra.tenant_id}/oauth2/v2.0/token"
    keys = requests.get(config.json()["jwks_uri"], verify=verify, timeout=10).json()["keys"]
    assert [k["kid"] for k in keys] == [entra.key_id]
    discovery = requests.get(f"{entra.base_url}/common/discovery/instance", verify=verify, timeout=10).json()
    assert discovery["tenant_discovery_endpoint"].endswith("/v2.0/.well-known/openid-configuration")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{entra.base_url}/common/discovery/instance", timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(entra.base_url.replace("https://", "http://") + "/common/discovery/instance", timeout=10)


def test_client_secret_grant_and_its_errors(entra: EntraEmulator) -> None:
    """We test: the right secret gets a Bearer JWT for Azure DevOps with exp = now + the lifetime; a wrong
    secret, an unknown client, an unknown tenant, another resource and a scope without /.default get their
    AADSTS codes and statuses."""
    app = entra.register_app(secret=SECRET)
    granted = token_request(entra, {"client_id": app.client_id, "client_secret": SECRET, "scope": SCOPE})
    assert granted.status_code == 200 and granted.json()["token_type"] == "Bearer"
    parsed = jwt_parts(granted.json()["access_token"])
    assert parsed is not None
    claims = parsed[1]
    assert (
        claims["aud"] == AZURE_DEVOPS_APP_ID and claims["appid"] == app.client_id and claims["tid"] == entra.tenant_id
    )
    assert abs(claims["exp"] - time.time() - 60) < 5 and granted.json()["expires_in"] == 60
    cases = [
        (
            {"client_id": app.client_id, "client_secret": "wrong", "scope": SCOPE},
            None,
            (401, "invalid_client", 7000215),
        ),
        ({"client_id": "0000", "client_secret": SECRET, "scope": SCOPE}, None, (400, "unauthorized_client", 700016)),
        (
            {"client_id": app.client_id, "client_secret": SECRET, "scope": SCOPE},
            "other",
            (400, "invalid_request", 90002),
        ),
        (
            {"client_id": app.client_id, "client_secret": SECRET, "scope": "https://graph/.default"},
            None,
            (400, "invalid_resource", 500011),
        ),
        (
            {"client_id": app.client_id, "client_secret": SECRET, "scope": AZURE_DEVOPS_APP_ID},
            None,
            (400, "invalid_scope", 1002012),
        ),
    ]
    for form, tenant, expected in cases:
        assert aadsts(token_request(entra, form, tenant=tenant)) == expected


def test_federated_assertion_must_match_issuer_subject_and_audience(entra: EntraEmulator) -> None:
    """We test: a service account token of the trusted issuer and subject is exchanged; another subject, an
    untrusted issuer or an expired token is refused (AADSTS70021, AADSTS700024)."""
    issuer = ServiceAccountIssuer()
    app = entra.register_app()
    entra.federate(app, issuer=issuer, subject="system:serviceaccount:azp-agents:azp-agents-reconciler")
    form = {"client_id": app.client_id, "scope": SCOPE, "client_assertion_type": JWT_BEARER}
    good = issuer.token(namespace="azp-agents", service_account="azp-agents-reconciler")
    assert token_request(entra, {**form, "client_assertion": good}).status_code == 200
    other = issuer.token(namespace="azp-agents", service_account="default")
    assert aadsts(token_request(entra, {**form, "client_assertion": other}))[2] == 70021
    stranger = ServiceAccountIssuer(issuer=issuer.issuer)  # same issuer URL, another key: a forged token
    forged = stranger.token(namespace="azp-agents", service_account="azp-agents-reconciler")
    assert aadsts(token_request(entra, {**form, "client_assertion": forged}))[2] == 70021
    expired = issuer.token(namespace="azp-agents", service_account="azp-agents-reconciler", lifetime=-400)
    assert aadsts(token_request(entra, {**form, "client_assertion": expired}))[2] == 700024


def test_managed_identity_endpoint(entra: EntraEmulator) -> None:
    """We test: the App Service endpoint gives the assigned identity's token for the resource with expires_on;
    without the X-IDENTITY-HEADER, or for a client id not assigned, it refuses with {statusCode, message}."""
    identity = entra.assign_managed_identity(user_assigned=True)
    env = entra.managed_identity_env()
    query: dict[str, str] = {
        "api-version": "2019-08-01",
        "resource": AZURE_DEVOPS_APP_ID,
        "client_id": identity.client_id,
    }
    verify = str(entra.ca.ca_file)
    answer = requests.get(
        env["IDENTITY_ENDPOINT"],
        params=query,
        headers={"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]},
        verify=verify,
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["client_id"] == identity.client_id
    assert int(answer.json()["expires_on"]) > time.time()
    refused = requests.get(env["IDENTITY_ENDPOINT"], params=query, verify=verify, timeout=10)
    assert refused.status_code == 401 and set(refused.json()) == {"statusCode", "message"}
    unknown = requests.get(
        env["IDENTITY_ENDPOINT"],
        params={**query, "client_id": "nobody"},
        headers={"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]},
        verify=verify,
        timeout=10,
    )
    assert unknown.status_code == 400
    unversioned = requests.get(
        env["IDENTITY_ENDPOINT"],
        params={**query, "api-version": "2017-09-01"},
        headers={"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]},
        verify=verify,
        timeout=10,
    )
    assert unversioned.status_code == 400 and "2019-08-01" in unversioned.json()["message"]


def test_azure_devops_accepts_only_its_tenants_tokens_for_its_users(entra: EntraEmulator, tmp_path: Path) -> None:
    """We test: the Azure DevOps emulator answers a token of its tenant for a user of the organization as that
    user; the same token before the identity is added, a token of another tenant and an expired token get 401."""
    app = entra.register_app(secret=SECRET)
    other = EntraEmulator(directory=tmp_path / "other", tenant_id="0b1e2d3c-0000-4000-8000-00000000beef")
    other.start()
    with AzureDevOpsEmulator() as azdo:
        azdo.trust_entra(entra)
        url = f"{azdo.base_url}/_apis/connectionData?api-version=7.1-preview"

        def status(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}", "X-TFS-FedAuthRedirect": "Suppress"}
            return requests.get(url, headers=headers, timeout=10).status_code

        token = entra.access_token(app, AZURE_DEVOPS_APP_ID)[0]
        assert status(token) == 401
        azdo.add_entra_identity(app.object_id, name="azp-agents (sp)")
        answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert (
            answer.status_code == 200 and answer.json()["authenticatedUser"]["providerDisplayName"] == "azp-agents (sp)"
        )
        assert status(other.access_token(app, AZURE_DEVOPS_APP_ID)[0]) == 401
        assert status(entra.access_token(app, "https://management.azure.com")[0]) == 401
        entra.token_lifetime = -1
        assert status(entra.access_token(app, AZURE_DEVOPS_APP_ID)[0]) == 401
    other.stop()
