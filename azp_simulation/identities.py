"""Set up an Entra ID identity for the reconciler in the emulated tenant and organization, as an administrator
would: an app registration with a client secret or a certificate (a service principal), one federated with the
cluster's service account issuer (a workload identity, with the token file the AKS webhook mounts), or a
user-assigned managed identity of the host (with the environment App Service gives its processes).

Shared by the simulation (world files' `auth`) and the tests of tests/sim/test_entra.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azp_simulation.azdo_emulator import POOL_ADMIN, AzureDevOpsEmulator
from azp_simulation.entra import AppRegistration, EntraEmulator, ServiceAccountIssuer, certificate_pem, new_key

CLIENT_SECRET = "entra-client-secret-5b1f0c9e7d2a"
NAMESPACE = "azp-agents"
SERVICE_ACCOUNT = "azp-agents-reconciler"
KINDS = ("secret", "certificate", "workload", "managed")
"""How the identity proves itself: a client secret, a certificate, a federated token, a managed identity."""
KIND_OF_METHOD = {"servicePrincipal": "secret", "workloadIdentity": "workload", "managedIdentity": "managed"}
"""The kind the simulation uses for each `auth.method` of the reconciler's configuration (not pat)."""


@dataclass(frozen=True)
class Identity:
    """What the reconciler is given: its configuration's `auth` block and its process environment."""

    auth: dict[str, Any]
    env: dict[str, str]
    name: str
    """Its display name in the organization."""
    client_id: str


def _service_principal(entra: EntraEmulator, kind: str, directory: Path) -> tuple[AppRegistration, dict[str, Any]]:
    common = {"method": "servicePrincipal", "tenantId": entra.tenant_id, "authorityHost": entra.authority_host}
    if kind == "secret":
        app = entra.register_app(secret=CLIENT_SECRET)
        (directory / "client-secret").write_text(CLIENT_SECRET + "\n")
        return app, common | {"clientId": app.client_id, "clientSecretFile": str(directory / "client-secret")}
    pem = certificate_pem(new_key(), subject="azp-agents")
    app = entra.register_app(certificate=pem)
    (directory / "sp.pem").write_bytes(pem)
    return app, common | {"clientId": app.client_id, "certificateFile": str(directory / "sp.pem")}


def _workload(entra: EntraEmulator, directory: Path) -> tuple[AppRegistration, dict[str, str]]:
    """What the AKS workload identity webhook injects into a pod labelled azure.workload.identity/use."""
    issuer = ServiceAccountIssuer()
    app = entra.register_app()
    entra.federate(app, issuer=issuer, subject=f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}")
    token_file = directory / "azure-identity-token"
    token_file.write_text(issuer.token(namespace=NAMESPACE, service_account=SERVICE_ACCOUNT))
    return app, {
        "AZURE_CLIENT_ID": app.client_id,
        "AZURE_TENANT_ID": entra.tenant_id,
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AZURE_AUTHORITY_HOST": entra.authority_host,
    }


def register_identity(
    entra: EntraEmulator,
    azdo: AzureDevOpsEmulator,
    kind: str,
    directory: Path,
    *,
    pool_ids: tuple[int, ...] = (),
    member: bool = True,
) -> Identity:
    """Register an identity of this kind in the tenant, connect the organization to the tenant and add the
    identity to it (unless not `member`) with the Administrator role on `pool_ids`; its files go in `directory`."""
    if kind not in KINDS:
        raise ValueError(f"identity kind {kind!r} is not one of {', '.join(KINDS)}")
    azdo.trust_entra(entra)
    env = {"REQUESTS_CA_BUNDLE": str(entra.ca.ca_file)}
    if kind in ("secret", "certificate"):
        app, auth = _service_principal(entra, kind, directory)
    elif kind == "workload":
        app, federated = _workload(entra, directory)
        auth, env = {"method": "workloadIdentity"}, env | federated
    else:
        app = entra.assign_managed_identity(user_assigned=True)
        auth, env = {"method": "managedIdentity", "clientId": app.client_id}, env | entra.managed_identity_env()
    name = f"azp-agents ({kind})"
    if member:
        azdo.add_entra_identity(app.object_id, name=name)
        for pool_id in pool_ids:
            azdo.set_pool_role(pool_id, name, POOL_ADMIN)
    return Identity(auth=auth, env=env, name=name, client_id=app.client_id)
