"""An Azure Resource Manager emulator for Azure Container Instances, and the agents its containers run.

HTTPS on a loopback port with the Entra ID emulator's throwaway CA (`ca_path`, one private CA for the
simulation's Azure endpoints): azure-core's BearerTokenCredentialPolicy refuses a bearer token over http. It
serves what azure-mgmt-containerinstance uses (the reference's section 3; routes and shapes from
azure-rest-api-specs specification/containerinstance/resource-manager/Microsoft.ContainerInstance/stable/
2023-05-01/containerInstance.json and its examples):

- Sign-in: every request carries a bearer token that the Entra ID emulator (entra.py, the one token service of
  the simulation) issued for this endpoint: `start` makes the emulator's base URL a resource of the tenant, as
  https://management.azure.com/ is, and a token is checked against the tenant's signing key, audience and expiry
  (what a resource does with the tenant's published keys); otherwise 401 AuthenticationFailed.
- PUT .../resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups/{name}: 201 with
  provisioningState Creating and an Azure-AsyncOperation header (GET on it: {"status": InProgress|Succeeded|
  Failed}); an existing name is updated (200). Secure values and secret volume contents are never returned.
- GET the same: 200, or 404 ResourceNotFound; the group's instanceView only here, as in ContainerGroupsGet.
- GET .../containerGroups (by resource group): {value, nextLink} pages of `page_size`, each container with
  its instanceView as in the ContainerGroupsList example.
- DELETE the same: 200 with the deleted group (its containers are killed), 204 when it did not exist.
- Errors in ARM's envelope {"error": {"code", "message"}}: ResourceGroupNotFound, ResourceNotFound,
  AuthenticationFailed (401), InvalidRequestContent, ContainerGroupQuotaReached (400, per region: container
  groups and StandardCores; message as ARM writes it, e.g. "Resource type 'Microsoft.ContainerInstance/
  containerGroups' container group quota 'StandardCores' exceeded in region 'westus2'. Limit: '0', Usage:
  '0' Requested: '1'." in terraform-provider issue reports), InaccessibleImage (400, checked at create).
  Quotas: 100 container groups and 100 standard cores per region and subscription by default
  (container-instances-resource-and-quota-limits.md); the quota name for the group count is [inferred].

A group's life: Creating for `start_delay` x `time_scale` seconds (ACI starts take tens of seconds: ~35 s for small
images, MicrosoftDocs/azure-docs #31689; 20-110 s by image size, virtual-kubelet/azure-aci #151), then Succeeded:
init containers run to their end, then the main containers run. What runs in them is the image's (agent_images.py):
the container whose command runs start.sh `register` registers an agent in the Azure DevOps emulator with the PAT
of its token file (a secret volume mounted at AZP_TOKEN_FILE's directory) or token variable, config.sh failing
(exit 1) on a bad token, organization or pool; the one that runs `run` brings it online for one job and exits when
the job ends (exit 2 if it sees a token). With restartPolicy Never the group is then Succeeded or Failed and stays
until deleted. With Always (the API's default), or OnFailure after a non-zero exit, the ended main containers start
again after RESTART_DELAY (ContainerGroupRestartPolicy in the REST spec; container-instances-restart-policy.md),
from the second restart in a row on after the kubelet's back-off too, whatever the exit code (10 s doubling to 300
s, reset by 10 minutes of running; a BackOff Warning event; see RESTART_BACKOFF_RESET), so a crash-looping
container is not restarted every tick. Each container's instanceView counts restartCount and keeps the ended state
as previousState (ContainerPropertiesInstanceView), the group stays Running, and the agent runs again: `run` from
the state its emptyDir kept (same registration), `once` by registering again with config.sh --replace under the
same name, which the Azure DevOps service answers by updating the existing agent, same id (azure-pipelines-agent
ConfigurationManager with --replace finds the agent of that name and calls
ConfigurationProvider.UpdateAgentAsync(poolId, agent), not AddAgentAsync). The agent knows only its container's
image, environment (environmentVariables, value or secureValue) and command.

Not emulated: the generic ARM resources API and Resource Graph, locations/usages, container logs, exec,
start/stop/restart, the group-level events, a container's Waiting state while it backs off (it stays Terminated
until it restarts), creates-per-hour limits (no documented error code), IP addresses, and HOSTNAME (set to the
group name here; ACI generates one).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from azp_simulation import agent_images
from azp_simulation.azdo_emulator import AzureDevOpsEmulator, EmulatorAuthError
from azp_simulation.azdo_support import ApiError
from azp_simulation.entra import EntraEmulator
from azp_simulation.kube_support import format_time

API_VERSION = "2023-05-01"
PROVIDER = "Microsoft.ContainerInstance"
DEFAULT_START_DELAY = 30.0
RESTART_DELAY = 5.0
"""Seconds (x time_scale) a restarted container takes to start again: the image is on the host already
[inferred; ACI documents no figure]."""
RESTART_BACKOFF_BASE = 10.0
RESTART_BACKOFF_CAP = 300.0
RESTART_BACKOFF_RESET = 600.0
"""The kubelet's restart back-off (kubernetes.io docs, concepts/workloads/pods/pod-lifecycle, restart policy):
after an exit the container restarts at once, then waits 10 s, 20 s, 40 s ... at most 300 s before each further
restart, and the timer resets once the container ran 10 minutes. ACI restarts through a kubelet: its container
events are the kubelet's own words ("pulling image", "Successfully pulled image", "Back-off restarting failed
container" in Azure/azure-cli #11584) [inferred; ACI documents no back-off]. All in seconds x time_scale."""
AGENT_VERSION = "4.269.0"


class ArmError(Exception):
    """An ARM error response: status and the envelope's code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Quotas:
    """Per region and subscription (container-instances-resource-and-quota-limits.md defaults)."""

    container_groups: int = 100
    standard_cores: float = 100.0


@dataclass
class Group:
    """One container group as ARM stores it, and where its containers are in their lives."""

    resource_group: str
    name: str
    body: dict[str, Any]
    created: float
    provisioning: str = "Creating"
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    operation: str = ""
    stuck: bool = False
    agent_id: int | None = None
    agent_online: bool = False
    restarts: dict[str, int] = field(default_factory=dict)
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)
    restart_at: float | None = None
    backoff_steps: int = 0
    """Restarts since the agent container last ran RESTART_BACKOFF_RESET: the next one waits for the back-off."""
    ran_since: float = 0.0
    """When the main containers last started (creation's end or a restart)."""

    @property
    def properties(self) -> dict[str, Any]:
        properties: dict[str, Any] = self.body.setdefault("properties", {})
        return properties

    def containers(self, kind: str = "containers") -> list[dict[str, Any]]:
        return list(self.properties.get(kind) or [])

    @property
    def cores(self) -> float:
        return sum(
            float(((c.get("properties") or {}).get("resources") or {}).get("requests", {}).get("cpu", 1))
            for c in self.containers()
        )

    @property
    def restart_policy(self) -> str:
        """restartPolicy, Always when unset (the API's default: container-instances-restart-policy.md)."""
        return str(self.properties.get("restartPolicy") or "Always")

    def restarts_after(self, exit_code: int) -> bool:
        """Whether ACI restarts a container that exited with this code: Always, or OnFailure and not 0."""
        return self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and exit_code != 0)

    @property
    def finished(self) -> bool:
        mains = [self.states.get(c["name"], {}) for c in self.containers()]
        ended = bool(mains) and all(s.get("state") == "Terminated" for s in mains) and self.restart_at is None
        return self.provisioning == "Failed" or ended


def _arm_message_quota(quota: str, region: str, limit: float, usage: float, requested: float) -> str:
    return (
        f"Resource type '{PROVIDER}/containerGroups' container group quota '{quota}' exceeded in region "
        f"'{region}'. Limit: '{limit:g}', Usage: '{usage:g}' Requested: '{requested:g}'."
    )


class ArmEmulator:
    """The ARM routes above, the container groups of one subscription and their agents."""

    def __init__(
        self,
        *,
        subscription: str,
        entra: EntraEmulator,
        azdo: AzureDevOpsEmulator | None = None,
        organization_url: str = "",
        catalogue: tuple[tuple[str, agent_images.ImageEntry], ...] = agent_images.BUILT_IN,
        start_delay: float = DEFAULT_START_DELAY,
        time_scale: float = 1.0,
        page_size: int = 100,
        quotas: Quotas | None = None,
        inaccessible_images: Collection[str] = (),
    ) -> None:
        self.subscription = subscription
        self.azdo = azdo
        self.organization_url = organization_url
        self.catalogue = catalogue
        self.start_delay = start_delay
        self.time_scale = time_scale
        self.page_size = page_size
        self.quotas = quotas or Quotas()
        self.inaccessible_images = tuple(inaccessible_images)
        self.never_start: Callable[[Mapping[str, str]], bool] = lambda env: False
        """Whether a group with this agent environment stays Creating for ever (a stuck start)."""
        self.fail_provisioning: Callable[[Mapping[str, str]], str | None] = lambda env: None
        """A message when a group with this agent environment ends its provisioning Failed."""
        self.resource_groups: dict[str, str] = {}
        self.calls: list[tuple[str, str, int]] = []
        self._groups: dict[tuple[str, str], Group] = {}
        self._operations: dict[str, Group] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self.entra = entra
        self.base_url = ""
        if azdo is not None:
            self._next_exit = azdo.on_agent_exit
            azdo.on_agent_exit = self._agent_exited

    # --- set-up --------------------------------------------------------------------------------

    def add_resource_group(self, name: str, location: str) -> None:
        self.resource_groups[name.lower()] = location

    @property
    def ca_path(self) -> Path:
        """The CA bundle that trusts this endpoint (a client's REQUESTS_CA_BUNDLE)."""
        return self.entra.ca.ca_file

    def start(self) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        server.socket = self.entra.ca.server_context().wrap_socket(server.socket, server_side=True)
        self._server = server
        self.base_url = f"https://127.0.0.1:{server.server_address[1]}"
        self.entra.add_resource(self.base_url)
        for target, name in ((server.serve_forever, "arm-http"), (self._tick_forever, "arm-ticker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self.base_url

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def call_counts(self) -> dict[str, int]:
        """Requests per 'METHOD route', e.g. {'PUT containerGroups/{name}': 3, 'GET containerGroups': 5}."""
        counts: dict[str, int] = {}
        with self._lock:
            calls = list(self.calls)
        for method, path, _ in calls:
            parts = path.strip("/").split("/")
            if len(parts) == 8 and parts[6].lower() == "operations":
                route = f"{method} operations/{{id}}"
            else:
                route = f"{method} containerGroups" + ("/{name}" if len(parts) == 8 else "")
            counts[route] = counts.get(route, 0) + 1
        return counts

    def add_group(self, resource_group: str, name: str, body: dict[str, Any]) -> None:
        """Seed a group someone else created (it starts like any other)."""
        with self._lock:
            self._groups[(resource_group.lower(), name.lower())] = Group(resource_group, name, body, time.time())

    def stored(self, resource_group: str) -> list[dict[str, Any]]:
        """The bodies as the service holds them, secure values and secret volumes included (for tests)."""
        with self._lock:
            return [json.loads(json.dumps(g.body)) for g in self._groups.values() if g.resource_group == resource_group]

    def groups(self, resource_group: str | None = None) -> list[dict[str, Any]]:
        """The groups as a GET returns them (for tests and the summary)."""
        with self._lock:
            return [
                self._view(g, instance_view=True)
                for g in self._groups.values()
                if resource_group is None or g.resource_group.lower() == resource_group.lower()
            ]

    # --- HTTP ----------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = emulator.handle(method, self.path, dict(self.headers.items()), raw)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("x-ms-request-id", str(uuid.uuid4()))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler

    def handle(self, method: str, path: str, headers: Mapping[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        """One request: (status, JSON body, headers)."""
        url = urllib.parse.urlsplit(path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        query = dict(urllib.parse.parse_qsl(url.query))
        try:
            self._authenticate(headers)
            result = self._arm(method, parts, query, raw)
        except ArmError as exc:
            result = (exc.status, {"error": {"code": exc.code, "message": exc.message}}, {})
        with self._lock:
            self.calls.append((method, url.path, result[0]))
        return result

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        claims = self.entra.verify_access_token(value.removeprefix("Bearer "), audience=self.base_url)
        if claims is None or float(claims.get("exp", 0)) <= self.entra.clock():
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                           "missing or its token is invalid or expired.")  # fmt: skip

    def _arm(
        self, method: str, parts: list[str], query: Mapping[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        lowered = [p.lower() for p in parts]
        if lowered[:1] != ["subscriptions"] or len(parts) < 2 or parts[1] != self.subscription:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{parts[1:2]}' could not be found.")
        if lowered[2:4] == ["providers", PROVIDER.lower()] and len(parts) == 8 and lowered[6] == "operations":
            return 200, self._operation(parts[7]), {}
        collection = [
            "resourcegroups",
            lowered[3] if len(parts) > 3 else "",
            "providers",
            PROVIDER.lower(),
            "containergroups",
        ]
        if len(parts) not in (7, 8) or lowered[2:7] != collection:
            raise ArmError(404, "InvalidResourceType", f"The resource type could not be found: /{'/'.join(parts)}")
        resource_group = parts[3]
        if resource_group.lower() not in self.resource_groups:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{resource_group}' could not be found.")
        if len(parts) == 7 and method == "GET":
            return 200, self._list(resource_group, parts, int(query.get("$skiptoken", "0") or 0)), {}
        name = parts[7] if len(parts) == 8 else ""
        if method == "GET" and name:
            return 200, self._view(self._group(resource_group, name), instance_view=True), {}
        if method == "PUT" and name:
            return self._put(resource_group, name, raw)
        if method == "DELETE" and name:
            return self._delete(resource_group, name)
        raise ArmError(405, "MethodNotAllowed", f"{method} is not supported on this resource")

    def _group(self, resource_group: str, name: str) -> Group:
        with self._lock:
            group = self._groups.get((resource_group.lower(), name.lower()))
        if group is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{PROVIDER}/containerGroups/{name}' under resource group '{resource_group}' "
                "was not found.",
            )
        return group

    def _list(self, resource_group: str, parts: list[str], skip: int) -> dict[str, Any]:
        with self._lock:
            found = [g for g in self._groups.values() if g.resource_group.lower() == resource_group.lower()]
            page = [self._view(g, instance_view=False) for g in found[skip : skip + self.page_size]]
        result: dict[str, Any] = {"value": page}
        if skip + self.page_size < len(found):
            path = "/" + "/".join(urllib.parse.quote(p) for p in parts)
            result["nextLink"] = f"{self.base_url}{path}?api-version={API_VERSION}&$skiptoken={skip + self.page_size}"
        return result

    def _operation(self, operation: str) -> dict[str, Any]:
        with self._lock:
            group = self._operations.get(operation)
        if group is None:
            raise ArmError(404, "OperationNotFound", f"The operation '{operation}' could not be found.")
        status = {"Creating": "InProgress", "Succeeded": "Succeeded", "Failed": "Failed"}[group.provisioning]
        return {"id": operation, "name": operation, "status": status, "startTime": format_time(group.created)}

    def _view(self, group: Group, *, instance_view: bool) -> dict[str, Any]:
        """The group as ARM returns it: no secure values, no secret volume contents, instance views."""
        body = json.loads(json.dumps(group.body))
        properties = body["properties"]
        for kind in ("initContainers", "containers"):
            for container in properties.get(kind) or []:
                props = container["properties"]
                props["environmentVariables"] = [
                    {k: v for k, v in e.items() if k != "secureValue"} for e in props.get("environmentVariables") or []
                ]
                state, events = group.states.get(container["name"]), group.events.get(container["name"])
                if state is not None or events:
                    props["instanceView"] = {
                        "restartCount": group.restarts.get(container["name"], 0),
                        "currentState": state or {},
                        **(
                            {"previousState": group.previous[container["name"]]}
                            if container["name"] in group.previous
                            else {}
                        ),
                        "events": events or [],
                    }
        for volume in properties.get("volumes") or []:
            if "secret" in volume:
                volume["secret"] = {}
        for registry in properties.get("imageRegistryCredentials") or []:
            registry.pop("password", None)
        properties["provisioningState"] = group.provisioning
        if instance_view:
            properties["instanceView"] = {"state": self._group_state(group), "events": []}
        return {
            "id": f"/subscriptions/{self.subscription}/resourceGroups/{group.resource_group}/providers/{PROVIDER}/"
            f"containerGroups/{group.name}",
            "name": group.name,
            "type": f"{PROVIDER}/containerGroups",
            **body,
        }

    @staticmethod
    def _group_state(group: Group) -> str:
        if group.provisioning != "Succeeded":
            return "Pending" if group.provisioning == "Creating" else "Failed"
        mains = [group.states.get(c["name"], {}) for c in group.containers()]
        if group.finished and mains:
            return "Succeeded" if all(s.get("exitCode") == 0 for s in mains) else "Failed"
        return "Running"

    # --- create and delete ---------------------------------------------------------------------

    def _check_body(self, name: str, body: Any) -> dict[str, Any]:
        properties = body.get("properties") if isinstance(body, dict) else None
        containers = properties.get("containers") if isinstance(properties, dict) else None
        if not isinstance(body, dict) or not isinstance(properties, dict) or not isinstance(containers, list):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid: properties.containers")
        if not containers:
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid: properties.containers")
        for container in [*(properties.get("initContainers") or []), *containers]:
            image = str((container.get("properties") or {}).get("image") or "")
            if not container.get("name") or not image:
                raise ArmError(400, "InvalidRequestContent", "Each container needs a name and properties.image.")
            if any(fnmatch.fnmatchcase(image, pattern) for pattern in self.inaccessible_images):
                raise ArmError(400, "InaccessibleImage", f"The image '{image}' in container group '{name}' is not "
                               "accessible. Please check the image and registry credential.")  # fmt: skip
        return body

    def _check_quota(self, group: Group, location: str) -> None:
        with self._lock:
            others = [g for g in self._groups.values() if g.body.get("location") == location]
        used_cores = sum(g.cores for g in others if not g.finished)
        if len(others) + 1 > self.quotas.container_groups:
            message = _arm_message_quota("ContainerGroups", location, self.quotas.container_groups, len(others), 1)
            raise ArmError(400, "ContainerGroupQuotaReached", message)
        if used_cores + group.cores > self.quotas.standard_cores:
            message = _arm_message_quota("StandardCores", location, self.quotas.standard_cores, used_cores, group.cores)
            raise ArmError(400, "ContainerGroupQuotaReached", message)

    def _put(self, resource_group: str, name: str, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ArmError(400, "InvalidRequestContent", "The request content was not valid JSON.") from None
        body = self._check_body(name, body)
        location = str(body.get("location") or self.resource_groups[resource_group.lower()])
        body["location"] = location
        key = (resource_group.lower(), name.lower())
        with self._lock:
            existing = self._groups.get(key)
            if existing is not None:
                existing.body = body
                return 200, self._view(existing, instance_view=True), {}
            group = Group(resource_group=resource_group, name=name, body=body, created=time.time())
            self._check_quota(group, location)
            group.operation = str(uuid.uuid4())
            group.stuck = self.never_start(self._agent_env(group))
            self._groups[key] = group
            self._operations[group.operation] = group
            view = self._view(group, instance_view=True)
        operation = (
            f"{self.base_url}/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{location}/"
            f"operations/{group.operation}?api-version={API_VERSION}"
        )
        return 201, view, {"Azure-AsyncOperation": operation, "Retry-After": "1"}

    def _delete(self, resource_group: str, name: str) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            group = self._groups.pop((resource_group.lower(), name.lower()), None)
            if group is None:
                return 204, None, {}
            view = self._view(group, instance_view=True)
            was_online, group.agent_online = group.agent_online, False
        if was_online and group.agent_id is not None and self.azdo is not None:
            # The containers are killed: an agent that was online goes away mid-session.
            with contextlib.suppress(ApiError):
                self.azdo.agent_lost(group.agent_id)
        return 200, view, {}

    # --- the containers' lives -----------------------------------------------------------------

    def _tick_forever(self) -> None:
        while not self._stop.wait(0.1):
            now = time.time()
            with self._lock:
                due = [
                    g
                    for g in self._groups.values()
                    if g.provisioning == "Creating"
                    and not g.stuck
                    and now >= g.created + self.start_delay * self.time_scale
                ]
                restarts = [g for g in self._groups.values() if g.restart_at is not None and now >= g.restart_at]
            for group in due:
                self._provisioned(group)
            for group in restarts:
                self._restart(group)

    def _entry(self, container: Mapping[str, Any]) -> agent_images.ImageEntry | None:
        return agent_images.lookup(self.catalogue, str((container.get("properties") or {}).get("image", "")))

    def _environment(self, group: Group, container: Mapping[str, Any]) -> dict[str, str]:
        """The image's ENV, HOSTNAME, then the container's environmentVariables (value or secureValue)."""
        entry = self._entry(container)
        env = {**(entry.env if entry else {}), "HOSTNAME": group.name}
        for variable in (container.get("properties") or {}).get("environmentVariables") or []:
            env[str(variable.get("name"))] = str(variable.get("value", variable.get("secureValue", "")))
        return env

    def _agent_env(self, group: Group) -> dict[str, str]:
        """The environment of the first container that has AZP_POOL (for the world's stuck and failed rules)."""
        for container in [*group.containers("initContainers"), *group.containers()]:
            env = self._environment(group, container)
            if "AZP_POOL" in env:
                return env
        return {}

    def _read_file(self, group: Group, container: Mapping[str, Any], path: str) -> str | None:
        """A file of a secret volume mounted in the container (ACI writes each key base64-decoded)."""
        volumes = {v.get("name"): v for v in group.properties.get("volumes") or []}
        for mount in (container.get("properties") or {}).get("volumeMounts") or []:
            directory = str(mount.get("mountPath", "")).rstrip("/")
            secret = (volumes.get(mount.get("name")) or {}).get("secret")
            if isinstance(secret, dict) and path.startswith(directory + "/"):
                value = secret.get(path[len(directory) + 1 :])
                return base64.b64decode(value).decode() if isinstance(value, str) else None
        return None

    def _set_state(self, group: Group, container: str, state: str, **fields: Any) -> None:
        with self._lock:
            current = {"state": state, "detailStatus": fields.pop("detail", ""), **fields}
            if state == "Terminated":
                current["finishTime"] = format_time(time.time())
                current["startTime"] = group.states.get(container, {}).get("startTime", current["finishTime"])
            elif state == "Running":
                current["startTime"] = format_time(time.time())
            group.states[container] = current

    def _provisioned(self, group: Group) -> None:
        failure = self.fail_provisioning(self._agent_env(group))
        with self._lock:
            if failure is not None:
                group.provisioning = "Failed"
                group.events = {c["name"]: [{"count": 1, "type": "Warning", "name": "Failed", "message": failure}]
                                for c in group.containers()}  # fmt: skip
                return
            group.provisioning = "Succeeded"
        roles = {c["name"]: agent_images.roles(c["properties"], self._entry(c)) for c in
                 [*group.containers("initContainers"), *group.containers()]}  # fmt: skip
        # Which container runs the agent follows from its image and command, as start.sh decides.
        runner = next((c for c in group.containers() if "run" in (roles[c["name"]] or ())), None)
        for container in group.containers("initContainers"):
            code = self._run_init(group, container, roles[container["name"]], runner or container)
            self._set_state(group, container["name"], "Terminated", exitCode=code,
                            detail="Completed" if code == 0 else "Error")  # fmt: skip
            if code != 0:
                return  # restartPolicy Never: the main containers never start
        with self._lock:
            group.ran_since = time.time()
        for container in group.containers():
            self._set_state(group, container["name"], "Running")
        if runner is not None:
            self._run_agent(group, runner, roles[runner["name"]])

    def _run_init(
        self, group: Group, container: Mapping[str, Any], roles: tuple[str, ...] | None, runner: Mapping[str, Any]
    ) -> int:
        """An init container's exit code: start.sh `register` registers the agent that `runner` will run; an
        unknown mode exits 2."""
        if roles is None:
            return 2
        if "register" not in roles:
            return 0
        return self._register(group, container, runner)

    def _register(self, group: Group, registrar: Mapping[str, Any], runner: Mapping[str, Any]) -> int:
        """config.sh in `registrar`, advertising what the agent in `runner` will; its exit code."""
        entry = self._entry(registrar)
        runner_entry = self._entry(runner)
        if self.azdo is None or entry is None or runner_entry is None:
            return 1
        env = self._environment(group, registrar)
        path = env.get(entry.token_file_env, "") if entry.token_file_env else ""
        token = self._read_file(group, registrar, path) if path else None
        token = token or next((env[n] for n in entry.token_env if env.get(n)), "")
        pool_ids = {str(p["name"]): int(p["id"]) for p in self.azdo.pools()}
        pool_id = pool_ids.get(env.get("AZP_POOL", "Default"))
        if pool_id is None or env.get("AZP_URL", "").rstrip("/") != self.organization_url.rstrip("/"):
            return 1
        name = env.get("AZP_AGENT_NAME") or env["HOSTNAME"]
        runner_env = self._environment(group, runner)
        capabilities = agent_images.advertised(
            env=runner_env, entry=runner_entry, name=name, hostname=group.name, version=AGENT_VERSION
        )
        try:
            agent = self.azdo.register_agent(
                pool_id=pool_id, name=name, capabilities=capabilities, version=AGENT_VERSION, token=token
            )
        except EmulatorAuthError:
            return 1
        with self._lock:
            group.agent_id = int(agent["id"])
        return 0

    def _run_agent(self, group: Group, runner: Mapping[str, Any], roles: tuple[str, ...] | None) -> None:
        """start.sh `run` (or `once`): refuse a visible token, then bring the registered agent online."""
        entry = self._entry(runner)
        assert entry is not None and roles is not None
        env = self._environment(group, runner)
        if "register" in roles and self._register(group, runner, runner) != 0:
            self._terminate(group, 1)
            return
        secret_dir = env.get(entry.token_dir_env, "") or entry.token_dir
        sees_token = any(n in env for n in entry.hidden_env) or self._read_file(group, runner, f"{secret_dir}/token")
        if "register" not in roles and entry.refuses_tokens and sees_token:
            self._terminate(group, 2)
            return
        if group.agent_id is None or self.azdo is None:
            self._terminate(group, 1)  # nothing registered to run: run.sh finds no .agent
            return
        with self._lock:
            if (group.resource_group.lower(), group.name.lower()) not in self._groups:
                return  # deleted meanwhile
            group.agent_online = True
        self.azdo.agent_online(group.agent_id, once=True)

    def _terminate(self, group: Group, exit_code: int) -> None:
        """The agent's container ended: with it every main container of the group (one agent per group). Its
        restart policy may start them again (`_restart_wait`)."""
        with self._lock:
            group.agent_online = False
            for container in group.containers():
                if group.states.get(container["name"], {}).get("state") != "Terminated":
                    self._set_state(group, container["name"], "Terminated", exitCode=exit_code,
                                    detail="Completed" if exit_code == 0 else "Error")  # fmt: skip
            if group.restarts_after(exit_code):
                group.restart_at = time.time() + self._restart_wait(group)

    def _restart_wait(self, group: Group) -> float:
        """Seconds until the ended containers start again: RESTART_DELAY, plus the kubelet's back-off from the
        second restart in a row on (a BackOff Warning event on each container, counted as the kubelet counts a
        repeated event); a container that ran RESTART_BACKOFF_RESET before it ended starts the series again."""
        now, scale = time.time(), self.time_scale
        if now - group.ran_since >= RESTART_BACKOFF_RESET * scale:
            group.backoff_steps = 0
        steps, group.backoff_steps = group.backoff_steps, group.backoff_steps + 1
        if steps == 0:
            return RESTART_DELAY * scale
        for container in group.containers():
            events = group.events.setdefault(container["name"], [])
            backoff = next((e for e in events if e.get("name") == "BackOff"), None)
            if backoff is None:
                events.append({"count": 1, "type": "Warning", "name": "BackOff",
                               "message": "Back-off restarting failed container"})  # fmt: skip
            else:
                backoff["count"] += 1
        return (RESTART_DELAY + min(RESTART_BACKOFF_CAP, RESTART_BACKOFF_BASE * 2.0 ** min(steps - 1, 16))) * scale

    def _restart(self, group: Group) -> None:
        """ACI restarts the group's ended main containers (not its init containers, which ran to completion
        once [inferred]): restartCount goes up, the ended state becomes previousState, and the container runs
        its command again: `run` with the agent state its emptyDir kept (the same registration), `once`
        registering again under the same name (config.sh --replace keeps the agent's id)."""
        with self._lock:
            group.restart_at = None
            if (group.resource_group.lower(), group.name.lower()) not in self._groups:
                return  # deleted meanwhile
            group.ran_since = time.time()
            for container in group.containers():
                name = container["name"]
                group.previous[name] = group.states.get(name, {})
                group.restarts[name] = group.restarts.get(name, 0) + 1
                self._set_state(group, name, "Running")
        roles = {c["name"]: agent_images.roles(c["properties"], self._entry(c)) for c in group.containers()}
        runner = next((c for c in group.containers() if "run" in (roles[c["name"]] or ())), None)
        if runner is not None:
            self._run_agent(group, runner, roles[runner["name"]])

    def _agent_exited(self, agent_name: str, exit_code: int) -> None:
        """The Azure DevOps emulator's once-agent finished its job and exited."""
        with self._lock:
            group = next(
                (g for g in self._groups.values() if g.agent_online and self._agent_name(g) == agent_name), None
            )
        if group is not None:
            self._terminate(group, exit_code)
        elif self._next_exit is not None:
            self._next_exit(agent_name, exit_code)

    def _agent_name(self, group: Group) -> str:
        env = self._agent_env(group)
        return env.get("AZP_AGENT_NAME") or group.name
