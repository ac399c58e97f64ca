"""The Azure Container Instances backend: the only module that imports the Azure SDK.

One container group per agent in the configured resource group, through Azure Resource Manager with
azure-mgmt-containerinstance and an azure-identity credential (the reference's section 3):
- list: `container_groups.list_by_resource_group`, one call per page (ARM pages with nextLink); ACI cannot
  filter by tag on the server, so the release's groups are picked by their tags here.
- create: a GET (404: the name is free), then `begin_create_or_update` with polling off. ARM answers the PUT
  at once (201, provisioningState Creating) and carries on in the background; the pass does not wait for the
  long-running operation: the next pass lists the group and sees how it went (Succeeded, or Failed with its
  reason, which the plan reaps and backs off like a pod that never came online).
- delete: `begin_delete` with polling off; a group already gone (404) is success.
- errors: ARM's envelope {"error": {"code", "message"}}. ContainerGroupQuotaReached (groups, cores per
  region: container-instances-resource-and-quota-limits) and a throttled create (429) are CreateRefusedErrors: the
  applier backs that template off. 401 and credential failures are AuthErrors; 5xx and broken connections
  are transient.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    DeserializationError,
    HttpResponseError,
    SerializationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.paging import ItemPaged
from azure.identity import (
    ClientSecretCredential,
    CredentialUnavailableError,
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import ContainerGroup

from reconciler import container_groups, logs, names
from reconciler.config import Credentials
from reconciler.deadline import Deadline
from reconciler.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    CreateRefusedError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from reconciler.model import AciConfig, AgentJob, AgentPod, Config, PoolConfig, RegistryCredential, TemplateConfig

log = logging.getLogger("reconciler.aci")
# azure-core logs every request and its headers at INFO, azure-identity every token: not our log lines.
logging.getLogger("azure").setLevel(logging.WARNING)

T = TypeVar("T")
REFUSED_CODES = frozenset({"ContainerGroupQuotaReached", "InaccessibleImage"})
"""ARM error codes that refuse a create for its template or subscription: ACI's regional quotas (container
groups, StandardCores, ...) and an image ACI cannot pull (checked when the group is created); 429 is a
throttled create."""
_RETRIES = 2
_READ_TIMEOUT = 30.0


def _read_secret(path: str, *, key: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc.strerror}: mount the secret there") from None
    if not value:
        raise ConfigError(f"{key}: {path!r} is empty")
    return value


def registry_password(registry: RegistryCredential) -> str:
    """A private registry's password, from its passwordFile or passwordEnv, kept out of every log line."""
    if registry.password_file:
        password = _read_secret(registry.password_file, key=f"aci.registries ({registry.server}).passwordFile")
    else:
        password = os.environ.get(str(registry.password_env), "").strip()
        if not password:
            raise ConfigError(
                f"aci.registries ({registry.server}).passwordEnv: {registry.password_env} is not set or empty: "
                "set it to the registry's password"
            )
    logs.SECRETS.add(password)
    return password


def credential(aci: AciConfig) -> TokenCredential:
    """The azure-identity credential `aci.credential` names; a custom authorityHost (a private cloud or a
    stand-in) skips Entra's instance discovery, which only knows the public and sovereign clouds."""
    authority: dict[str, Any] = (
        {"authority": aci.authority_host, "disable_instance_discovery": True} if aci.authority_host else {}
    )
    if aci.credential == "servicePrincipal":
        if not (aci.tenant_id and aci.client_id and aci.client_secret_file):
            raise ConfigError(
                "aci.credential: servicePrincipal needs aci.tenantId, aci.clientId and aci.clientSecretFile"
            )
        secret = _read_secret(aci.client_secret_file, key="aci.clientSecretFile")
        return ClientSecretCredential(aci.tenant_id, aci.client_id, secret, **authority)
    if aci.credential == "managedIdentity":
        return ManagedIdentityCredential(client_id=aci.client_id)
    if aci.credential == "workloadIdentity":
        # Tenant, client id and token file default to AKS's AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_FEDERATED_TOKEN_FILE.
        ids = {k: v for k, v in (("tenant_id", aci.tenant_id), ("client_id", aci.client_id)) if v}
        return WorkloadIdentityCredential(**ids, **authority)
    return DefaultAzureCredential(
        exclude_interactive_browser_credential=True,
        managed_identity_client_id=aci.client_id,
        **({"authority": aci.authority_host} if aci.authority_host else {}),
    )


def _arm_error(exc: HttpResponseError) -> tuple[str, str]:
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", None) or "")
    message = str(getattr(error, "message", None) or exc.message or exc.reason or "no details")
    return code, " ".join(message.split())


def _translate(key: str, exc: Exception) -> Exception:
    """Our error for an Azure SDK or credential exception (see the module docstring)."""
    if isinstance(exc, CredentialUnavailableError) or (
        isinstance(exc, ClientAuthenticationError) and exc.response is None
    ):
        return AuthError(f"no Azure credential ({key}): {' '.join(str(exc).split())[:500]}: check aci.credential")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientError(f"{key}: {type(exc).__name__}: Azure Resource Manager did not answer")
    assert isinstance(exc, HttpResponseError)
    status = exc.status_code or 0
    code, message = _arm_error(exc)
    detail = f"{key}: HTTP {status} {code}: {message}"
    if code in REFUSED_CODES or (status == 429 and key == "create container group"):
        return CreateRefusedError(detail)
    if status == 401:
        return AuthError(f"Azure Resource Manager rejected the credential ({detail})")
    if status == 403:
        return ForbiddenError(f"{detail}: grant the reconciler's identity Contributor on the resource group")
    if status == 404:
        return NotFoundError(detail)
    if status == 409:
        return ConflictError(detail)
    if status == 429 or status >= 500:
        return TransientError(detail)
    return PermanentError(detail)


def _model(body: Mapping[str, Any]) -> ContainerGroup:
    """The SDK's model of a REST-shaped group body (the SDK sends only models of this API version)."""
    try:
        return ContainerGroup.deserialize(dict(body))
    except (DeserializationError, SerializationError) as exc:
        raise PermanentError(f"the container group template does not fit the ACI API: {exc}") from None


def _next_page(pages: Iterator[Iterator[T]]) -> list[T] | None:
    """The next page of a pager, read in full (one request, or none after the last page)."""
    page = next(pages, None)
    return None if page is None else list(page)


class ContainerInstances:
    """Agents as ACI container groups in one resource group (see the module docstring)."""

    kind = "container group"

    def __init__(self, config: Config, credentials: Credentials, *, deadline: Deadline | None = None) -> None:
        if config.aci is None:
            raise ConfigError("backend aci needs the aci settings: aci.subscriptionId, aci.resourceGroup, aci.location")
        self.aci = config.aci
        self.token = credentials.pat
        self.deadline = deadline or Deadline.unbounded()
        self.calls: Counter[str] = Counter()
        self.client = ContainerInstanceManagementClient(
            credential(self.aci),
            self.aci.subscription_id,
            base_url=self.aci.arm_endpoint,
            credential_scopes=[self.aci.arm_endpoint.rstrip("/") + "/.default"],
            retry_total=_RETRIES,
            connection_timeout=5,
            read_timeout=_READ_TIMEOUT,
        )

    @property
    def call_count(self) -> int:
        return sum(self.calls.values())

    def close(self) -> None:
        self.client.close()

    def _call(self, key: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.calls[key] += 1
        self.deadline.timeout(_READ_TIMEOUT, what=key)  # raises when the run's deadline has passed
        try:
            return function(*args, **kwargs)
        except (HttpResponseError, ClientAuthenticationError, ServiceRequestError, ServiceResponseError) as exc:
            raise _translate(key, exc) from None
        except CredentialUnavailableError as exc:
            raise _translate(key, exc) from None

    def list_workloads(self, scope: str, *, owner: names.Owner) -> tuple[list[AgentJob], list[AgentPod]]:
        """Every group of this release's shard in the resource group `scope`; each page is one counted call."""
        jobs: list[AgentJob] = []
        pods: list[AgentPod] = []
        # The SDK annotates an Iterable; it returns an ItemPaged, whose pages are the requests.
        pager = cast(ItemPaged[ContainerGroup], self.client.container_groups.list_by_resource_group(scope))
        pages = pager.by_page()
        while (page := self._call("list container groups", _next_page, pages)) is not None:
            for group in page:
                found = container_groups.workload_from_json(group.serialize(keep_readonly=True), owner=owner)
                if found is not None:
                    jobs.append(found[0])
                    pods.append(found[1])
        self.calls["list container groups"] -= 1  # the last look found no nextLink: it sent no request
        return jobs, pods

    def render(
        self,
        *,
        config: Config,
        pool: PoolConfig,
        template: TemplateConfig,
        job_template: Mapping[str, Any],
        job_name: str,
        request_id: int | None,
        demands: tuple[str, ...],
        agent_id: int | None = None,
        crash_failures: int = 0,
    ) -> dict[str, Any]:
        if agent_id is not None:
            raise ConfigError("agents.registration: reconciler is not supported with backend aci: set it to token")
        tags = container_groups.tags_for(
            config=config,
            pool=pool,
            template=template,
            request_id=request_id,
            now=datetime.now(UTC),
            crash_failures=crash_failures,
        )
        body = container_groups.render_group(
            config=config,
            pool=pool,
            template=template,
            group_template=job_template,
            name=job_name,
            tags=tags,
            token=self.token,
            registry_password=registry_password,
        )
        return {"name": job_name, "resourceGroup": pool.namespace, "body": body}

    def create(self, manifest: Mapping[str, Any]) -> str | None:
        """Start creating the group: its name; None when a group of that name exists (an overlapping pass made it).

        The GET first matters: a PUT on an existing name would update that group, and an update restarts
        its containers, killing a running pipeline job."""
        name, resource_group = str(manifest["name"]), str(manifest["resourceGroup"])
        try:
            self._call("get container group", self.client.container_groups.get, resource_group, name)
        except NotFoundError:
            pass
        else:
            return None
        self._call(
            "create container group",
            self.client.container_groups.begin_create_or_update,
            resource_group,
            name,
            _model(manifest["body"]),
            polling=False,
        )
        return name

    def hand_over(self, manifest: Mapping[str, Any], *, files: Mapping[str, str], uid: str) -> None:
        raise ConfigError("agents.registration: reconciler is not supported with backend aci: set it to token")

    def delete(self, scope: str, name: str) -> bool:
        """Start deleting the group (its containers stop); False when it was already gone."""
        try:
            self._call("delete container group", self.client.container_groups.begin_delete, scope, name, polling=False)
        except NotFoundError:
            return False
        return True

    def post_event(
        self, *, namespace: str, job_name: str, reason: str, message: str, warning: bool = False, now: datetime
    ) -> None:
        """ARM keeps no events that a client can write on a resource: the applier's log line is the record."""
        log.debug("%s on container group %s/%s: %s", reason, namespace, job_name, message)
