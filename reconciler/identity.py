"""The Authorization header the reconciler sends to Azure DevOps: a PAT as Basic auth, or a Microsoft Entra ID
access token as a Bearer token from azure-identity (workload identity, managed identity or a service principal).

An `Authorization` is a callable that returns the header value for the next request, so a reconciler that
loops for hours always sends a fresh token: a token is renewed once less than REFRESH_MARGIN seconds of it
remain (Entra ID tokens last about an hour), or less than half its lifetime for a token shorter than that.
Every token is masked in the logs as soon as it is obtained.
Reference: /work/shared/reference/azure-devops-api.md section 1, entra-hooks-aci.md section 2.1.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from reconciler import logs
from reconciler.errors import AuthError, ConfigError, TransientError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from reconciler.config import Credentials

AZURE_DEVOPS_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"
"""Azure DevOps' application ID with /.default: Microsoft insists on the ID, not a resource URI."""
REFRESH_MARGIN = 300.0
"""Seconds before a token expires at which the next request gets a new one (half its life if it is shorter)."""
PUBLIC_AUTHORITY_HOSTS = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
)
"""Authority hosts MSAL knows; any other host (Azure Stack Hub, a private cloud) is used as given, without asking
login.microsoftonline.com's instance discovery about it (azure-identity's `disable_instance_discovery`)."""
PAT_HINT = "check it is valid, not expired, and has the Agent Pools (read & manage) scope"
ENTRA_HINT = (
    "add the identity to the organization (Organization settings > Users, Basic access) and give it the "
    "Administrator role in the agent pools' Security"
)

log = logging.getLogger("reconciler.identity")


class Authorization(Protocol):
    """The header value for the next request, and who it authenticates as (for messages)."""

    description: str
    noun: str
    hint: str
    """What to check when the service rejects it (HTTP 401)."""
    forbidden_hint: str
    """What to check when the service refuses it one object (HTTP 403)."""

    def __call__(self) -> str: ...


class PatAuthorization:
    """A PAT sent as the Basic-auth password; the user name is ignored by the service."""

    description = "the PAT"
    noun = "PAT"
    hint = PAT_HINT
    forbidden_hint = (
        "the PAT needs the Agent Pools (read & manage) scope and its identity the Administrator role on the pool "
        "(Organization settings > Agent pools > Security)"
    )

    def __init__(self, pat: str) -> None:
        self._header = "Basic " + base64.b64encode(f":{pat}".encode()).decode()

    def __repr__(self) -> str:
        return f"PatAuthorization({self.description})"

    def __call__(self) -> str:
        return self._header


class EntraAuthorization:
    """A Bearer token from an azure-identity credential, renewed when less than REFRESH_MARGIN seconds remain
    (azure-identity caches tokens too; this keeps the reconciler's renewal rule explicit and testable)."""

    noun = "identity"
    hint = ENTRA_HINT
    forbidden_hint = (
        "the identity needs the Administrator role in the pool's Security (Organization settings > Agent pools)"
    )

    def __init__(
        self, credential: TokenCredential, *, description: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._credential = credential
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._previous = ""
        self._expires_on = 0.0
        self._renew_at = 0.0
        self.description = description

    def __repr__(self) -> str:
        return f"EntraAuthorization({self.description})"

    def __call__(self) -> str:
        with self._lock:
            if self._clock() >= self._renew_at:
                self._renew()
            return f"Bearer {self._token}"

    def _renew(self) -> None:
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

        try:
            token = self._credential.get_token(AZURE_DEVOPS_SCOPE)
        except ClientAuthenticationError as exc:
            raise AuthError(
                f"Microsoft Entra ID gave {self.description} no token for Azure DevOps: {_first_line(exc)}: check "
                "auth.tenantId, auth.clientId and the secret, certificate or federated credential of that identity"
            ) from None
        except ServiceRequestError as exc:
            raise TransientError(f"Microsoft Entra ID did not answer ({_first_line(exc)})") from None
        logs.SECRETS.add(token.token)
        # The token before the one replaced has expired: a reconciler serving for weeks keeps its list short.
        logs.SECRETS.discard(self._previous)
        self._previous = self._token
        now = self._clock()
        self._token, self._expires_on = token.token, float(token.expires_on)
        self._renew_at = self._expires_on - min(REFRESH_MARGIN, (self._expires_on - now) / 2)
        log.debug("new Entra ID token for %s, valid for %.0fs", self.description, self._expires_on - self._clock())


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def authorization(credentials: Credentials) -> Authorization:
    """The Authorization of these credentials (azure-identity is only imported for an Entra ID method)."""
    if credentials.method == "pat":
        return PatAuthorization(credentials.pat)
    return EntraAuthorization(_token_credential(credentials), description=describe(credentials))


def describe(credentials: Credentials) -> str:
    """Which identity: method, client id and tenant (never a secret)."""
    if credentials.method == "pat":
        return f"the PAT ({credentials.source})"
    parts = [f"client id {credentials.client_id}" if credentials.client_id else "", credentials.source]
    parts.insert(1, f"tenant {credentials.tenant_id}" if credentials.tenant_id else "")
    return f"{credentials.method} ({', '.join(p for p in parts if p)})"


def _token_credential(credentials: Credentials) -> TokenCredential:
    from azure import identity

    # azure-core logs every request at INFO and azure-identity each failure at WARNING; the reconciler reports
    # a failure once, as an AuthError, and keeps its log to its own lines.
    logging.getLogger("azure").setLevel(logging.ERROR)
    if credentials.method == "managedIdentity":
        return identity.ManagedIdentityCredential(client_id=credentials.client_id or None)
    host = credentials.authority_host.removeprefix("https://")
    common = {"authority": credentials.authority_host, "disable_instance_discovery": host not in PUBLIC_AUTHORITY_HOSTS}
    if credentials.method == "workloadIdentity":
        return identity.WorkloadIdentityCredential(
            tenant_id=credentials.tenant_id,
            client_id=credentials.client_id,
            token_file_path=credentials.token_file,
            **common,
        )
    if credentials.certificate_file:
        try:
            return identity.CertificateCredential(
                credentials.tenant_id, credentials.client_id, certificate_path=credentials.certificate_file, **common
            )
        except ValueError as exc:
            raise ConfigError(
                f"auth.certificateFile: {credentials.certificate_file!r} is not a PEM file with a certificate and "
                f"its unencrypted private key ({_first_line(exc)})"
            ) from None
    return identity.ClientSecretCredential(
        credentials.tenant_id, credentials.client_id, credentials.client_secret, **common
    )
