"""We test the reconciler's credentials: `auth` read into Credentials (each mistake a ConfigError naming the
key), their repr, and when an Entra ID token is renewed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from reconciler import logs
from reconciler.config import read_credentials
from reconciler.errors import ConfigError
from reconciler.identity import AZURE_DEVOPS_SCOPE, EntraAuthorization, authorization, describe

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "5b6c7d8e-1111-4222-8333-944445555666"


def credentials_error(auth: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        read_credentials({"auth": auth}, env=env or {})
    return str(caught.value)


def test_service_principal_with_a_secret_file(tmp_path: Path) -> None:
    """We test: a client secret is read from its file (trailing newline dropped) and never shown by repr;
    describe() names the method, client id, tenant and where the secret came from."""
    (tmp_path / "secret").write_text("s3cr3t-value\n")
    auth = {"method": "servicePrincipal", "tenantId": TENANT, "clientId": CLIENT}
    credentials = read_credentials({"auth": {**auth, "clientSecretFile": str(tmp_path / "secret")}}, env={})
    assert credentials.client_secret == "s3cr3t-value"
    assert "s3cr3t" not in repr(credentials) and CLIENT in repr(credentials)
    assert describe(credentials) == (
        f"servicePrincipal (client id {CLIENT}, tenant {TENANT}, client secret from file {tmp_path / 'secret'})"
    )


@pytest.mark.parametrize(
    ("auth", "env", "named"),
    [
        ({"method": "servicePrincipal", "clientId": CLIENT, "clientSecretEnv": "S"}, {"S": "x"}, "auth.tenantId"),
        ({"method": "servicePrincipal", "tenantId": TENANT, "clientSecretEnv": "S"}, {"S": "x"}, "auth.clientId"),
        ({"method": "servicePrincipal", "tenantId": TENANT, "clientId": CLIENT}, {}, "auth.clientSecretFile"),
        (
            {"method": "servicePrincipal", "tenantId": TENANT, "clientId": CLIENT, "clientSecretEnv": "S"},
            {},
            "auth.clientSecretEnv",
        ),
        (
            {"method": "servicePrincipal", "tenantId": TENANT, "clientId": CLIENT, "certificateFile": "/nope.pem"},
            {},
            "auth.certificateFile",
        ),
        ({"method": "workloadIdentity", "tenantId": TENANT, "clientId": CLIENT}, {}, "auth.tokenFile"),
        ({"method": "workloadIdentity"}, {"AZURE_TENANT_ID": TENANT}, "auth.clientId"),
        ({"method": "managedIdentity", "patFile": "/pat"}, {}, "auth.patFile"),
        ({"method": "pat", "clientId": CLIENT, "patEnv": "P"}, {"P": "x"}, "auth.clientId"),
        (
            {"method": "servicePrincipal", "tenantId": TENANT, "clientId": CLIENT, "clientSecretEnv": "S"},
            {"S": "x", "AZURE_AUTHORITY_HOST": "http://login.example"},
            "auth.authorityHost",
        ),
    ],
)
def test_bad_auth_names_the_key(auth: dict[str, Any], env: dict[str, str], named: str) -> None:
    """We test: each missing, empty, unreadable or misplaced auth setting is a ConfigError naming its key."""
    assert credentials_error(auth, env).startswith(named)


def test_workload_identity_from_the_webhook_environment(tmp_path: Path) -> None:
    """We test: with only auth.method workloadIdentity, the variables the AKS webhook injects are used."""
    token = tmp_path / "azure-identity-token"
    token.write_text("eyJ.federated.token")
    env = {
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_FEDERATED_TOKEN_FILE": str(token),
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    }
    credentials = read_credentials({"auth": {"method": "workloadIdentity"}}, env=env)
    assert (credentials.client_id, credentials.tenant_id, credentials.token_file) == (CLIENT, TENANT, str(token))
    assert credentials.authority_host == "https://login.microsoftonline.com"


class CountingCredential:
    """A TokenCredential that hands out numbered tokens of a given lifetime on a fake clock."""

    def __init__(self, clock: list[float], lifetime: float) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes += scopes
        return AccessToken(f"token-{len(self.scopes)}", int(self.clock[0] + self.lifetime))


@pytest.mark.parametrize(("lifetime", "renew_after"), [(3600, 3300), (4000, 3700), (6, 3)])
def test_token_renewed_before_it_expires(lifetime: float, renew_after: float) -> None:
    """We test: a token is reused until less than 5 minutes of it remain (half its life for a short one), then
    the next header carries a new one; Azure DevOps' scope is asked for."""
    clock = [1000.0]
    credential = CountingCredential(clock, lifetime)
    authorization = EntraAuthorization(credential, description="test", clock=lambda: clock[0])  # type: ignore[arg-type]
    assert authorization() == "Bearer token-1"
    clock[0] += renew_after - 1
    assert authorization() == "Bearer token-1"
    clock[0] += 1
    assert authorization() == "Bearer token-2"
    assert credential.scopes == [AZURE_DEVOPS_SCOPE] * 2


def test_a_certificate_file_that_is_not_pem_names_the_key(tmp_path: Path) -> None:
    """We test: a readable certificate file azure-identity cannot load is a ConfigError naming auth.certificateFile."""
    (tmp_path / "sp.pem").write_text("not a certificate")
    auth = {
        "method": "servicePrincipal",
        "tenantId": TENANT,
        "clientId": CLIENT,
        "certificateFile": str(tmp_path / "sp.pem"),
    }
    credentials = read_credentials({"auth": auth}, env={})
    with pytest.raises(ConfigError, match=r"^auth\.certificateFile: .* is not a PEM file"):
        authorization(credentials)


def test_tokens_are_masked_while_they_may_be_used() -> None:
    """We test: the current and the previous token are masked in log lines; older (expired) ones are dropped
    from the mask list, so a long-running receiver's list does not grow with every renewal."""
    clock = [1000.0]
    authorization = EntraAuthorization(CountingCredential(clock, 3600), description="t", clock=lambda: clock[0])  # type: ignore[arg-type]
    for _ in range(4):
        authorization()
        clock[0] += 3400
    masked = [t for t in ("token-1", "token-2", "token-3", "token-4") if logs.SECRETS.scrub(f"x {t} y") != f"x {t} y"]
    assert masked == ["token-3", "token-4"]
