"""An emulator of the Azure DevOps agent-pool REST API: a real HTTP server on 127.0.0.1.

It serves the routes the reconciler, `config.sh` and `curl` use (connectionData, pools, agents, job
requests, service hook subscriptions, a run's timeline, and the projects and their agent queues of a
multi-project organization: azp_simulation/projects.py) with the service's shapes: `{"count", "value"}` lists,
camelCase fields, null fields left out, UTC timestamps with 'Z', api-version rules, PAT scopes, sign-in
pages, throttling headers and JSON error bodies. Behind it sits a small server-side scheduler that
assigns queued job requests to online, enabled, idle agents whose capabilities satisfy the demands, the
way the service does. Demands are parsed and evaluated by the service's own rules (service_demands.py, written from
its sources, not from the reconciler's), and a request's JSON shows them as the service serializes them.

Choices where the reference (/work/shared/reference/azure-devops-api.md) is [unconfirmed]:
- a valid PAT without `vso.agentpools_manage` on a write gets 403 with an "Access Denied ... needs
  the following permission(s)" message that names the scope;
- pool roles (reference, section 1: the identity needs the pool's Administrator role to register agents,
  documented, and by the same rule to disable or delete them, inferred): an identity given a lesser role
  on a pool with `set_pool_role` gets the same 403 on that pool's writes, and `actionFilter=manage`
  (section 2) leaves that pool out; every identity is Administrator of every pool unless told otherwise.
  Roles on other resources (projects, queues, organization-level security) are not emulated;
- a busy agent's DELETE gets 400 (TaskAgentJobStillRunningException);
- `usercapabilities` lives at `.../agents/{agentId}/usercapabilities`;
- `$top` pages with the `continuationToken` query parameter (newest first), no 200-item cap;
- the race of a job assigned to an exiting `--once` agent (azure-pipelines-agent #2332, #3994, #4338): with
  `once_exit_window` > 0 the agent stays online that long after its job while its listener has already
  exited, so the service may assign it another job that is never received (the listener leaves a second
  job message unacknowledged, src/Agent.Listener/Agent.cs `runOnceJobReceived`). Since agent 2.164.4 the
  worker tells the service it is shutting down when its job completes (PR #2728: JobRunner.cs passes
  `agent.runMode == once` into its JobCompletedEvent), yet #3994 (2022) and #4338 (2023) report the race with
  later agents, so the window stays. A disabled agent is never assigned a job, in the window or not, and
  still receives and finishes the one it holds (#2085, Microsoft's advice: disable server-side, because
  only the server assigns). Deleting such an agent once it is offline is accepted and fails that job with
  "We stopped hearing from agent" (#3994: the delete was refused while the agent ran a job, then succeeded,
  and the job assigned in between failed that way); the job is not queued again. The default window is 0
  (the race is timing-dependent in the real service).
  Not emulated: a job message left in the queue of an agent that re-registers under its name with
  `--replace` (same id) reaching the new listener's session; no source says whether it does;
- the organization's parallel-job limit (`parallel_jobs`, None = unlimited): while that many requests
  are assigned and unfinished, across all pools, queued requests stay unassigned even with free agents, as
  the UI says "This agent request is not running because you have reached the maximum number of requests
  that can run for parallelism type ..." (microsoft/azuredevopslabs #535, MicrosoftDocs/mslearn issues).
  Not emulated: that text in the request's JSON (unconfirmed), separate Private/Public limits;
- Azure DevOps Server (`server_version="2020"` or `"2022"`, azdo_support.ServerProfile): versions above the
  server's are refused with its 400 VssVersionOutOfRangeException, and the collection is served at
  `/tfs/DefaultCollection`. Everything else answers as Services does (Server-only authentication such as NTLM,
  and routes or fields Server lacks, are not emulated);
- Microsoft Entra ID bearer tokens (reference, section 1; entra-hooks-aci.md 2.1), with `trust_entra`: a token
  is accepted when the organization's tenant signed it for Azure DevOps' application ID (`aud`
  499b84ac-1321-427f-aa17-267ca6975798, `tid` the tenant; a token of another tenant is refused, "only the
  organization's own tenant works") and its identity (`oid`, the service principal's or managed identity's object
  ID) was added to the organization with `add_entra_identity`; any other gets 401 TF400813, an expired one the
  answers of an expired credential. Such a token carries no PAT scopes: what it may do is the identity's pool
  roles (`set_pool_role` with its name), so a Reader gets 403 on writes. Not emulated: access levels (Basic vs
  Stakeholder) and the license an identity costs;
- the agent's OAuth flow (agent_oauth.py has its sources and choices): `oauth_token` is the token endpoint at
  an agent's authorizationUrl, checking the client assertion against the public key that agent was registered
  with; `agent_session` starts a listener's session with the access token, and only that agent's. Agents that
  simulations register through `register_agent` (config.sh with a PAT) still come online by id with
  `agent_online`: their key exchange is not emulated;
- an api-version is required on every route and method except a GET of the pools list or of a
  pool's jobrequests, which KEDA's scaler sends without one (VERSIONLESS_GET_ROUTES); a client
  that forgets it elsewhere fails here first.
"""

from __future__ import annotations

import base64
import copy
import email.utils
import json
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from azp_simulation.agent_oauth import OAuthClient, OAuthRefusal, TokenService
from azp_simulation.azdo_support import (
    SCOPE_MANAGE,
    SCOPE_READ,
    SERVER_PROFILES,
    SERVICE_OWNER,
    SERVICES,
    SIGN_IN_PAGE,
    VERSIONLESS_GET_ROUTES,
    ApiError,
    CallRecord,
    EmulatorStats,
    RateLimit,
    RequestTiming,
    Route,
    Throttle,
    check_api_version,
    error_body,
    format_time,
    match_route,
    requested_api_version,
    short_route,
)
from azp_simulation.entra import AZURE_DEVOPS_APP_ID, EntraEmulator
from azp_simulation.hooks import SCOPE_HOOKS_READ, SCOPE_HOOKS_WRITE, ServiceHooks
from azp_simulation.projects import SCOPE_BUILD_READ, SCOPE_PROJECT_READ, Projects
from azp_simulation.service_demands import (
    EQUALS,
    Demand,
    DemandError,
    parse_demand,
    parse_demand_list,
    satisfies,
)
from azp_simulation.serving import Fault, FaultingHandler, FaultKind, ServedEmulator

log = logging.getLogger("azp_simulation.azdo")

POOL_ADMIN = "Administrator"
ENTRA_SCOPES = (SCOPE_READ, SCOPE_MANAGE, SCOPE_HOOKS_READ, SCOPE_HOOKS_WRITE)
"""An Entra ID token is not scoped like a PAT: its identity's roles alone limit it."""
LOCK_SECONDS = 600.0
FIRST_REQUEST_ID = 1000
DEFAULT_AGENT_VERSION = "4.261.0"

__all__ = [
    "AgentState",
    "AzureDevOpsEmulator",
    "EmulatorAuthError",
    "EmulatorConflictError",
    "EmulatorStats",
    "RateLimit",
    "RequestTiming",
]

_TRUNCATED_DEFAULT = json.dumps(
    {
        "count": 1,
        "value": [
            {
                "requestId": 1000,
                "queueTime": "2026-03-02T09:45:03.66Z",
                "poolId": 1,
                "planType": "Build",
                "demands": ["docker"],
            }
        ],
    }
)


class AgentState(NamedTuple):
    """What the simulation may ask of a registered agent (agent_states)."""

    agent_id: int
    name: str
    status: str
    listened: bool


class EmulatorAuthError(Exception):
    """A token the emulated service would refuse (unknown, expired or lacking the manage scope)."""


class EmulatorConflictError(Exception):
    """An agent name already taken in the pool (registration without replace)."""


@dataclass(frozen=True)
class Credential:
    """A PAT or bearer token the emulated organization accepts."""

    token: str
    scopes: frozenset[str]
    expired: bool
    identity: str
    kind: str = "pat"

    def may_write(self, short_route: str = "") -> bool:
        if short_route.startswith("hooks/"):
            return SCOPE_HOOKS_WRITE in self.scopes
        return SCOPE_MANAGE in self.scopes

    def may_read(self) -> bool:
        return bool(self.scopes & {SCOPE_READ, SCOPE_MANAGE})


@dataclass
class _Agent:
    agent_id: int
    pool_id: int
    name: str
    version: str
    enabled: bool
    status: str
    created_on: float
    status_changed_on: float
    os_description: str | None = None
    provisioning_state: str = "Provisioned"
    max_parallelism: int = 1
    system_capabilities: dict[str, str] = field(default_factory=dict)
    user_capabilities: dict[str, str] = field(default_factory=dict)
    client_id: str = ""
    public_key: dict[str, str] | None = None
    assigned_request: int | None = None
    last_completed_request: int | None = None
    once: bool = False
    jobs_taken: int = 0
    exiting_until: float | None = None
    """Set when a `--once` listener exited after its job: it still shows online until then."""
    listened: bool = False
    """Whether a listener ever started a session as this agent (a placeholder's never does)."""

    def capabilities(self) -> dict[str, str]:
        """System capabilities overlaid with user capabilities (user ones win, names case-insensitive)."""
        merged = dict(self.system_capabilities)
        for key, value in self.user_capabilities.items():
            for existing in [k for k in merged if k.casefold() == key.casefold()]:
                del merged[existing]
            merged[key] = value
        return merged


@dataclass
class _Request:
    request_id: int
    pool_id: int
    demands: list[Demand]
    queue_time: float
    duration: float
    planned_result: str
    plan_type: str
    definition_id: int
    definition_name: str
    run_id: int
    plan_id: str
    job_id: str
    scope_id: str
    queue_id: int
    job_name: str = "Job"
    assign_time: float | None = None
    receive_time: float | None = None
    finish_time: float | None = None
    locked_until: float | None = None
    result: str | None = None
    reserved_agent: int | None = None
    status_message: str | None = None
    steps: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.result is not None


class AzureDevOpsEmulator(ServedEmulator):
    """An emulated Azure DevOps organization with its agent pools, agents and job requests.

    World setup (`add_pool`, `add_agent`, `queue_request`, ...) and the agent side
    (`register_agent`, `agent_online`, ...) are in-process calls; everything else goes through the
    HTTP server started with `start()`. One re-entrant lock guards the state."""

    def __init__(
        self,
        organization: str = "contoso",
        *,
        server_version: str | None = None,
        clock: Callable[[], float] = time.time,
        rate_limit: RateLimit | None = None,
        pickup_delay: float = 0.0,
        hang_seconds: float = 35.0,
        auto_tick: bool = True,
        once_exit_window: float = 0.0,
        parallel_jobs: int | None = None,
    ) -> None:
        if server_version is not None and server_version not in SERVER_PROFILES:
            raise ValueError(f"server_version {server_version!r}: expected one of {', '.join(SERVER_PROFILES)}")
        self.profile = SERVER_PROFILES[server_version] if server_version else SERVICES
        """Services (the default), or an Azure DevOps Server: its API versions and collection URL (ServerProfile)."""
        self.organization = self.profile.collection or organization
        self.clock = clock
        self.rate_limit = rate_limit
        self.pickup_delay = pickup_delay
        self.hang_seconds = hang_seconds
        self.auto_tick = auto_tick
        self.once_exit_window = once_exit_window
        self.parallel_jobs = parallel_jobs
        self.on_agent_exit: Callable[[str, int], None] | None = None
        self.on_job_received: Callable[[str, tuple[str, ...]], str | None] | None = None
        """The agent side of a job with steps: (agent name, steps) -> the result that agent will report
        (None: the planned one). The server sends the job's steps to the agent that received it, and the
        agent, not the server, decides its outcome. Called under the emulator's lock."""
        self.stats = EmulatorStats()
        self.instance_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://dev.azure.com/{organization}"))
        self.projects = Projects(organization=organization, clock=clock)
        self.project_id = self.projects.default_id
        """The project every pool has a queue in unless told otherwise (`add_pool(projects=...)`)."""
        self._lock = threading.RLock()
        self._pools: dict[int, dict[str, Any]] = {}
        self._agents: dict[int, _Agent] = {}
        self._requests: dict[int, _Request] = {}
        # Per-pool indexes in id order, so list calls and name lookups cost a pool's size, not the org's.
        self._agents_by_pool: dict[int, dict[int, _Agent]] = {}
        self._requests_by_pool: dict[int, dict[int, _Request]] = {}
        self._credentials: dict[str, Credential] = {}
        self._entra: EntraEmulator | None = None
        self._entra_users: dict[str, str] = {}
        self._pool_roles: dict[tuple[str, int], str] = {}
        self._calls: list[CallRecord] = []
        # Exits of once-agents, reported to on_agent_exit after the lock is released.
        self._pending_exits: list[tuple[str, int]] = []
        self._throttle = Throttle(rate_limit) if rate_limit is not None else None
        self.oauth = TokenService(clock)
        self._next_pool_id = 1
        self._next_agent_id = 1
        self._next_request_id = FIRST_REQUEST_ID
        self.hooks = ServiceHooks(
            account_id=self.instance_id,
            projects=self.projects,
            base_url=f"https://dev.azure.com/{organization}",
            clock=clock,
        )
        self._init_serving()

    name = "azdo-emulator"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    def _url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}/{self.organization}"

    def stop(self) -> None:
        """Stop serving, and stop posting service hook events."""
        self.hooks.stop()
        super().stop()

    # Credentials

    def add_pat(
        self,
        token: str,
        *,
        scopes: Iterable[str] = (SCOPE_MANAGE,),
        expired: bool = False,
        identity: str = "Build Admin",
    ) -> None:
        """Accept a PAT (sent as the Basic-auth password) for an identity with these scopes."""
        with self._lock:
            self._credentials[token.strip()] = Credential(token.strip(), frozenset(scopes), expired, identity)

    def add_bearer(
        self,
        token: str,
        *,
        scopes: Iterable[str] = (SCOPE_MANAGE,),
        expired: bool = False,
        identity: str = "azp-agents (service principal)",
    ) -> None:
        """Accept an Entra ID access token (sent as `Authorization: Bearer`)."""
        with self._lock:
            self._credentials[token.strip()] = Credential(
                token.strip(), frozenset(scopes), expired, identity, kind="bearer"
            )

    def trust_entra(self, entra: EntraEmulator) -> None:
        """Connect the organization to this Entra ID tenant: bearer tokens it issues are checked with its keys."""
        with self._lock:
            self._entra = entra

    def add_entra_identity(self, object_id: str, *, name: str) -> None:
        """Add a service principal or managed identity (by its object ID) to the organization as a user."""
        with self._lock:
            self._entra_users[object_id] = name

    def _entra_credential(self, token: str) -> Credential | None:
        """The credential of an Entra ID access token of the organization's tenant for one of its users."""
        entra = self._entra
        claims = entra.verify_access_token(token, audience=AZURE_DEVOPS_APP_ID) if entra is not None else None
        name = self._entra_users.get(str(claims.get("oid"))) if claims else None
        if claims is None or name is None:
            return None
        expired = float(claims.get("exp", 0)) <= self.clock()
        return Credential(token, frozenset(ENTRA_SCOPES), expired, name, kind="bearer")

    def set_pool_role(self, pool_id: int, identity: str, role: str) -> None:
        """Give `identity` this role on a pool (Agent pools > Security): Reader, User or Administrator."""
        with self._lock:
            self._pool_roles[(identity, pool_id)] = role

    def may_manage_pool(self, credential: Credential, pool_id: int | None, short_route: str = "") -> bool:
        """A write on a pool needs the manage scope and the pool's Administrator role (a write on another
        route, such as a service hook subscription, needs that route's scope)."""
        if not credential.may_write(short_route):
            return False
        return pool_id is None or self._pool_roles.get((credential.identity, pool_id), POOL_ADMIN) == POOL_ADMIN

    def _identity_id(self, identity: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.instance_id}/identity/{identity}"))

    # World setup

    def add_project(self, name: str) -> str:
        """Create a project; returns its id."""
        return self.projects.add(name)

    def add_pool(
        self, name: str, *, pool_id: int | None = None, projects: Iterable[str] = (), **fields: Any
    ) -> dict[str, Any]:
        """Create an agent pool with a queue in each of `projects` (ids or names; default: the default
        project); `fields` override the service's camelCase pool fields."""
        with self._lock:
            if pool_id is None:
                while self._next_pool_id in self._pools:
                    self._next_pool_id += 1
                pool_id = self._next_pool_id
            if pool_id in self._pools:
                raise ValueError(f"pool id {pool_id} already exists")
            if any(p["name"].casefold() == name.casefold() for p in self._pools.values()):
                raise ValueError(f"pool {name!r} already exists")
            owner = self._identity_ref("Build Admin")
            pool: dict[str, Any] = {
                "createdOn": format_time(self.clock()),
                "autoProvision": False,
                "autoUpdate": True,
                "autoSize": True,
                "createdBy": owner,
                "owner": owner,
                "id": pool_id,
                "scope": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.instance_id}/pool/{pool_id}")),
                "name": name,
                "isHosted": False,
                "poolType": "automation",
                "size": 0,
                "isLegacy": False,
                "options": "none",
            }
            pool.update(fields)
            self._pools[pool_id] = pool
            for project in list(projects) or [self.project_id]:
                self.projects.add_queue(project, pool_id)
            return self._pool_json(pool_id)

    def remove_pool(self, pool_id: int) -> None:
        """Delete an agent pool with its agents and queue (Organization settings > Agent pools > Delete). Pool
        ids are never reused: a pool created again under the same name gets a new id, as on the service."""
        with self._lock:
            self._pool(pool_id)
            del self._pools[pool_id]
            self.projects.remove_pool(pool_id)
            for agent_id in self._agents_by_pool.pop(pool_id, {}):
                self._agents.pop(agent_id, None)
            self._requests = {rid: r for rid, r in self._requests.items() if r.pool_id != pool_id}
            self._next_pool_id = max(self._next_pool_id, pool_id + 1)

    def add_agent(
        self,
        pool_id: int,
        name: str,
        *,
        enabled: bool = True,
        status: str = "offline",
        capabilities: Mapping[str, str] | None = None,
        assigned_request: int | None = None,
        version: str = DEFAULT_AGENT_VERSION,
    ) -> dict[str, Any]:
        """Register an agent directly (no credential), e.g. a placeholder or a pre-existing agent."""
        with self._lock:
            self._pool(pool_id)
            agent = self._new_agent(pool_id, name=name, version=version, capabilities=capabilities or {})
            agent.enabled = enabled
            agent.status = status
            if assigned_request is not None:
                request = self._request(assigned_request)
                now = self.clock()
                self._assign(request, agent, now)
                self._receive(request, now)
            return self._agent_json(agent, capabilities=True, assigned=True, last=True)

    def queue_request(
        self,
        pool_id: int,
        *,
        demands: Iterable[str] = (),
        duration: float = 5.0,
        result: str = "succeeded",
        plan_type: str = "Build",
        definition_name: str = "ci",
        queue_time: float | None = None,
        steps: Iterable[str] = (),
        project: str | None = None,
    ) -> int:
        """Queue a pipeline job of `project` (id or name; default: the first project with a queue for the
        pool) in a pool; returns its request id.

        Like the service, a request no registered agent of the pool could ever satisfy (offline and
        disabled agents count) fails at once. A demand the service cannot parse raises DemandError: the service
        never holds a job request with one (service_demands.py)."""
        parsed_demands = [parse_demand(d) for d in demands]
        with self._lock:
            self._pool(pool_id)
            scope_id = self.projects.require(project).project_id if project else self.projects.projects_of(pool_id)[0]
            queue_id = self.projects.queue_of(scope_id, pool_id)
            if queue_id is None:
                raise ValueError(f"project {project!r} has no queue for pool {pool_id}: add the pool to the project")
            request_id = self._next_request_id
            self._next_request_id += 1
            definition_id = 1 + zlib.crc32(definition_name.encode()) % 500
            plan_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.instance_id}/plan/{request_id}"))
            request = _Request(
                request_id=request_id,
                pool_id=pool_id,
                demands=parsed_demands,
                queue_time=self.clock() if queue_time is None else queue_time,
                duration=duration,
                planned_result=result,
                plan_type=plan_type,
                definition_id=definition_id,
                definition_name=definition_name,
                run_id=request_id * 7 + 11,
                plan_id=plan_id,
                job_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{plan_id}/job")),
                steps=tuple(steps),
                scope_id=scope_id,
                queue_id=queue_id,
            )
            self._requests[request_id] = request
            self._requests_by_pool.setdefault(pool_id, {})[request_id] = request
            self.stats.jobs_queued += 1
            self.stats.timings[request_id] = RequestTiming(request_id, pool_id, request.queue_time)
            if not self._matched_agents(pool_id, request.demands):
                shown = ", ".join(map(str, request.demands))
                self._finish(
                    request,
                    "failed",
                    request.queue_time,
                    message=f"No agent found in pool {self._pools[pool_id]['name']} which satisfies the "
                    f"specified demands: {shown}",
                )
            else:
                self._job_waiting(request)
            return request_id

    def _job_waiting(self, request: _Request) -> None:
        """The job entered Waiting (for an agent): subscribed service hooks hear of it."""
        day = time.strftime("%Y%m%d", time.gmtime(request.queue_time))
        job = {
            "id": request.job_id,
            "name": request.job_name,
            "attempt": 1,
            "stage_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request.plan_id}/stage")),
        }
        run = {
            "id": request.run_id,
            "name": f"{day}.{request.request_id % 100}",
            "pipeline_id": request.definition_id,
            "pipeline_name": request.definition_name,
        }
        self.hooks.job_changed(job, state="waiting", run=run, project_id=request.scope_id, when=request.queue_time)

    def cancel_request(self, request_id: int) -> None:
        """Cancel a job (the user pressed Cancel): result 'canceled', its agent freed."""
        with self._lock:
            request = self._request(request_id)
            if not request.finished:
                self._finish(request, "canceled", self.clock())
        self._deliver_exits()

    def pools(self) -> list[dict[str, Any]]:
        """Every pool as the service lists it."""
        with self._lock:
            return [self._pool_json(pool_id) for pool_id in sorted(self._pools)]

    def agents(self, pool_id: int) -> list[dict[str, Any]]:
        """Every agent of a pool with capabilities, assigned and last completed request."""
        with self._lock:
            return [
                self._agent_json(a, capabilities=True, assigned=True, last=True) for a in self._pool_agents(pool_id)
            ]

    def agent_statuses(self, pool_id: int) -> list[tuple[str, str]]:
        """(name, status) of every agent of a pool: what `agents` tells of them, without building the JSON."""
        with self._lock:
            return [(a.name, a.status) for a in self._pool_agents(pool_id)]

    def agent_states(self, pool_id: int) -> list[AgentState]:
        """Every agent of a pool: its id, name, status and whether a listener ever ran as it."""
        with self._lock:
            return [AgentState(a.agent_id, a.name, a.status, a.listened) for a in self._pool_agents(pool_id)]

    def accepts(self, pool_id: int, demands: Iterable[str]) -> bool:
        """Whether the service would queue a job with these demands in the pool now rather than fail it at once
        ("No agent found in pool ... which satisfies the specified demands"): some agent registered in the pool,
        online or offline, enabled or not, satisfies them. DemandError for a demand the service cannot parse."""
        parsed_demands = [parse_demand(d) for d in demands]
        with self._lock:
            return bool(self._matched_agents(pool_id, parsed_demands))

    def unfinished_count(self, pool_id: int) -> int:
        """How many of a pool's job requests are queued, assigned or running (`requests(unfinished_only=True)`)."""
        with self._lock:
            return sum(1 for r in self._pool_requests(pool_id) if not r.finished)

    def requests(self, pool_id: int, *, unfinished_only: bool = False) -> list[dict[str, Any]]:
        """Every job request of a pool (or only queued, assigned and running ones)."""
        with self._lock:
            return [
                self._request_json(r, matched=True)
                for r in self._pool_requests(pool_id)
                if not (unfinished_only and r.finished)
            ]

    # Agent side

    def register_agent(
        self,
        *,
        pool_id: int,
        name: str,
        capabilities: Mapping[str, str],
        version: str = DEFAULT_AGENT_VERSION,
        token: str,
        replace: bool = True,
    ) -> dict[str, Any]:
        """What `config.sh` does: register (or, with replace, re-register keeping the id) an agent."""
        with self._lock:
            credential = self._credentials.get(token.strip())
            if credential is None or credential.expired:
                raise EmulatorAuthError("TF400813: the token is not valid or has expired")
            if not credential.may_write():
                raise EmulatorAuthError(f"the token lacks the {SCOPE_MANAGE} scope needed to register an agent")
            self._pool(pool_id)
            existing = self._agent_by_name(pool_id, name)
            if existing is not None:
                if not replace:
                    raise EmulatorConflictError(self._duplicate_message(pool_id, name))
                existing.system_capabilities = dict(capabilities)
                existing.version = version
                existing.client_id = str(uuid.uuid4())
                self.stats.agents_registered += 1
                return self._agent_json(existing, capabilities=True)
            agent = self._new_agent(pool_id, name=name, version=version, capabilities=capabilities)
            self.stats.agents_registered += 1
            return self._agent_json(agent, capabilities=True)

    def agent_online(self, agent_id: int, *, once: bool = True) -> None:
        """The agent's listener starts a session; with once=True it runs one job and then exits."""
        with self._lock:
            agent = self._agent(agent_id)
            agent.once = once
            agent.jobs_taken = 0
            agent.exiting_until = None
            agent.listened = True
            self._set_status(agent, "online")
        self.tick()

    def authorization_url(self) -> str:
        """The authorizationUrl registrations return (the organization's token service, reference section 3)."""
        return f"https://vstoken.dev.azure.com/{self.instance_id}"

    def oauth_token(self, url: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The agent's token request posted to `url`: (200, access token) or (400, {error, error_description})."""
        with self._lock:
            try:
                return 200, self.oauth.exchange(form, self._oauth_client, url)
            except OAuthRefusal as refusal:
                return 400, refusal.body

    def _oauth_client(self, client_id: str) -> OAuthClient | None:
        agent = next((a for a in self._agents.values() if a.client_id == client_id and a.public_key), None)
        if agent is None or agent.public_key is None:
            return None
        return OAuthClient(agent.agent_id, agent.client_id, self.authorization_url(), agent.public_key)

    def agent_session(
        self, access_token: str, agent_id: int, *, capabilities: Mapping[str, str], once: bool = True
    ) -> None:
        """The listener of agent `agent_id` starts its session with an access token, only one issued to that
        agent (EmulatorAuthError otherwise, as the service answers 401), sending the system capabilities it
        found (MessageListener.CreateSessionAsync: the agent in the session carries them, and they replace what
        its registration said)."""
        with self._lock:
            if self.oauth.agent_of(access_token) != agent_id:
                raise EmulatorAuthError(f"TF400813: the access token is not valid for agent {agent_id}")
            self._agent(agent_id).system_capabilities = dict(capabilities)
        self.agent_online(agent_id, once=once)

    def agent_offline(self, agent_id: int) -> None:
        """The listener stops cleanly (SIGTERM): it cancels a job it runs and closes its session."""
        with self._lock:
            agent = self._agent(agent_id)
            if agent.assigned_request is not None:
                self._finish(self._requests[agent.assigned_request], "canceled", self.clock())
            self._set_status(agent, "offline")

    def agent_lost(self, agent_id: int) -> None:
        """The agent's pod died: it goes offline and a job it had fails ("We stopped hearing from agent")."""
        with self._lock:
            agent = self._agent(agent_id)
            if agent.assigned_request is not None:
                request = self._requests[agent.assigned_request]
                self.stats.jobs_aborted_by_agent_loss += 1
                self._finish(request, "failed", self.clock(), message=_stopped_hearing(agent.name))
            self._set_status(agent, "offline")

    def agent_id(self, pool_id: int, name: str) -> int | None:
        """The id of a pool's agent by name (None when not registered)."""
        with self._lock:
            agent = self._agent_by_name(pool_id, name)
            return None if agent is None else agent.agent_id

    # Scheduler

    def tick(self, now: float | None = None) -> None:
        """Advance the server side: pick-ups, finished jobs, then new assignments (oldest first)."""
        with self._lock:
            now = self.clock() if now is None else now
            self._progress(now)
            for exiting in self._agents.values():
                if exiting.exiting_until is not None and now >= exiting.exiting_until and exiting.status == "online":
                    self._set_status(exiting, "offline")
            running = sum(1 for r in self._requests.values() if r.reserved_agent is not None and not r.finished)
            for request in sorted(
                (r for r in self._requests.values() if r.reserved_agent is None and not r.finished),
                key=lambda r: (r.queue_time, r.request_id),
            ):
                if self.parallel_jobs is not None and running >= self.parallel_jobs:
                    break
                agent = self._free_agent_for(request, now)
                if agent is not None:
                    self._assign(request, agent, now)
                    running += 1
            self._progress(now)
        self._deliver_exits()

    def _progress(self, now: float) -> None:
        for request in list(self._requests.values()):
            if request.finished or request.reserved_agent is None:
                continue
            agent = self._agents.get(request.reserved_agent)
            if (
                request.receive_time is None
                and request.assign_time is not None
                and now >= request.assign_time + self.pickup_delay
                and (agent is None or agent.exiting_until is None)
            ):
                self._receive(request, request.assign_time + self.pickup_delay)
            if request.receive_time is not None:
                end = request.receive_time + request.duration
                if now >= end:
                    self._finish(request, request.planned_result, end)
                elif request.locked_until is not None and request.locked_until - now < LOCK_SECONDS - 60:
                    # The agent renews its lock every minute while the job runs.
                    request.locked_until = now + LOCK_SECONDS

    def _free_agent_for(self, request: _Request, now: float) -> _Agent | None:
        for agent in self._pool_agents(request.pool_id):
            if (
                agent.status == "online"
                and agent.enabled
                and agent.assigned_request is None
                and not (agent.once and agent.jobs_taken > 0 and (agent.exiting_until or now) <= now)
                and satisfies(request.demands, agent.capabilities())
            ):
                return agent
        return None

    def _assign(self, request: _Request, agent: _Agent, now: float) -> None:
        request.reserved_agent = agent.agent_id
        request.assign_time = now
        agent.assigned_request = request.request_id
        agent.jobs_taken += 1
        self.stats.jobs_assigned += 1
        self.stats.timings[request.request_id].assign_time = now
        if self.pickup_delay <= 0 and agent.exiting_until is None:
            self._receive(request, now)

    def _receive(self, request: _Request, when: float) -> None:
        request.receive_time = when
        request.locked_until = when + LOCK_SECONDS
        self.stats.timings[request.request_id].receive_time = when
        agent = self._agents.get(request.reserved_agent) if request.reserved_agent is not None else None
        if request.steps and agent is not None and self.on_job_received is not None:
            request.planned_result = self.on_job_received(agent.name, request.steps) or request.planned_result

    def _finish(self, request: _Request, result: str, when: float, *, message: str | None = None) -> None:
        request.result = result
        request.finish_time = when
        request.locked_until = None
        if message is not None:
            request.status_message = message
        timing = self.stats.timings[request.request_id]
        timing.finish_time, timing.result = when, result
        if result in ("succeeded", "succeededWithIssues"):
            self.stats.jobs_succeeded += 1
        elif result == "canceled":
            self.stats.jobs_canceled += 1
        elif result == "failed":
            self.stats.jobs_failed += 1
        agent = self._agents.get(request.reserved_agent) if request.reserved_agent is not None else None
        if agent is not None and agent.assigned_request == request.request_id:
            agent.assigned_request = None
            agent.last_completed_request = request.request_id
            if agent.once and agent.status == "online" and agent.exiting_until is None:
                if self.once_exit_window > 0:
                    agent.exiting_until = when + self.once_exit_window
                else:
                    self._set_status(agent, "offline")
                self._pending_exits.append((agent.name, 0))

    def _deliver_exits(self) -> None:
        with self._lock:
            exits, self._pending_exits = self._pending_exits, []
        callback = self.on_agent_exit
        if callback is None:
            return
        for name, code in exits:
            callback(name, code)

    # Call log and faults

    def calls(self) -> list[CallRecord]:
        """Every HTTP request served so far, in order."""
        with self._lock:
            return list(self._calls)

    def call_counts(self) -> dict[str, int]:
        """Requests per 'METHOD short-route', e.g. {'GET pools/{poolId}/jobrequests': 3}."""
        counts: dict[str, int] = {}
        for call in self.calls():
            key = f"{call.method} {call.short}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def write_calls(self) -> int:
        """How many requests were not GETs."""
        return sum(1 for call in self.calls() if call.method != "GET")

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _fault_route(self, route: str) -> str:
        """A fault's route is a route template, matched in its short form ('pools/{poolId}/agents')."""
        return route if route == "*" else short_route(route)

    def _take_fault(self, method: str, route: Route | None) -> Fault | None:
        return self._faults.take(method, (route.short,) if route else ())

    def _record(self, record: CallRecord) -> None:
        with self._lock:
            self._calls.append(record)

    # State helpers

    def _pool(self, pool_id: int) -> dict[str, Any]:
        pool = self._pools.get(pool_id)
        if pool is None:
            raise ApiError(404, f"No agent pool found with identifier {pool_id}.", "TaskAgentPoolNotFoundException")
        return pool

    def _agent(self, agent_id: int, pool_id: int | None = None) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None or (pool_id is not None and agent.pool_id != pool_id):
            raise ApiError(
                404,
                f"No agent found in pool {pool_id} with identifier {agent_id}.",
                "TaskAgentNotFoundException",
            )
        return agent

    def _request(self, request_id: int, pool_id: int | None = None) -> _Request:
        request = self._requests.get(request_id)
        if request is None or (pool_id is not None and request.pool_id != pool_id):
            raise ApiError(
                404,
                f"No job request found with identifier {request_id}.",
                "TaskAgentJobRequestNotFoundException",
            )
        return request

    def _pool_agents(self, pool_id: int) -> list[_Agent]:
        return list(self._agents_by_pool.get(pool_id, {}).values())

    def _pool_requests(self, pool_id: int) -> list[_Request]:
        return list(self._requests_by_pool.get(pool_id, {}).values())

    def _agent_by_name(self, pool_id: int, name: str) -> _Agent | None:
        for agent in self._pool_agents(pool_id):
            if agent.name.casefold() == name.casefold():
                return agent
        return None

    def _duplicate_message(self, pool_id: int, name: str) -> str:
        return f"Pool {self._pools[pool_id]['name']} already contains an agent with name {name}."

    def _new_agent(
        self,
        pool_id: int,
        *,
        name: str,
        version: str,
        capabilities: Mapping[str, str],
        public_key: dict[str, str] | None = None,
    ) -> _Agent:
        if self._agent_by_name(pool_id, name) is not None:
            raise ApiError(409, self._duplicate_message(pool_id, name), "TaskAgentExistsException")
        now = self.clock()
        agent = _Agent(
            agent_id=self._next_agent_id,
            pool_id=pool_id,
            name=name,
            version=version,
            enabled=True,
            status="offline",
            created_on=now,
            status_changed_on=now,
            system_capabilities=dict(capabilities),
            client_id=str(uuid.uuid4()),
            public_key=public_key,
        )
        self._next_agent_id += 1
        self._agents[agent.agent_id] = agent
        self._agents_by_pool.setdefault(pool_id, {})[agent.agent_id] = agent
        self._pools[pool_id]["size"] = len(self._agents_by_pool[pool_id])
        return agent

    def _set_status(self, agent: _Agent, status: str) -> None:
        if agent.status != status:
            agent.status = status
            agent.status_changed_on = self.clock()

    def _matched_agents(self, pool_id: int, demands: list[Demand]) -> list[_Agent]:
        return [a for a in self._pool_agents(pool_id) if satisfies(demands, a.capabilities())]

    # JSON shapes

    def _identity_ref(self, identity: str) -> dict[str, Any]:
        identity_id = self._identity_id(identity)
        return {
            "displayName": identity,
            "url": f"https://spsprodweu5.vssps.visualstudio.com/A{self.instance_id}/_apis/Identities/{identity_id}",
            "id": identity_id,
            "uniqueName": identity.replace(" ", ".").lower() + "@contoso.example",
            "descriptor": f"aad.{base64.b64encode(identity_id.encode()).decode().rstrip('=')}",
        }

    def _pool_json(self, pool_id: int) -> dict[str, Any]:
        return _without_nulls(copy.deepcopy(self._pools[pool_id]))

    def _agent_ref(self, agent: _Agent) -> dict[str, Any]:
        base = self.base_url or f"https://dev.azure.com/{self.organization}"
        return _without_nulls(
            {
                "_links": {
                    "self": {"href": f"{base}/_apis/distributedtask/pools/{agent.pool_id}/agents/{agent.agent_id}"},
                    "web": {"href": f"{base}/_settings/agentpools?agentId={agent.agent_id}&poolId={agent.pool_id}"},
                },
                "id": agent.agent_id,
                "name": agent.name,
                "version": agent.version,
                "osDescription": agent.os_description,
                "enabled": agent.enabled,
                "status": agent.status,
                "provisioningState": agent.provisioning_state,
                "accessPoint": "CodexAccessMapping",
            }
        )

    def _agent_json(
        self, agent: _Agent, *, capabilities: bool = False, assigned: bool = False, last: bool = False
    ) -> dict[str, Any]:
        data = self._agent_ref(agent)
        data.update(
            {
                "maxParallelism": agent.max_parallelism,
                "createdOn": format_time(agent.created_on),
                "statusChangedOn": format_time(agent.status_changed_on),
                "authorization": _without_nulls(
                    {
                        "authorizationUrl": self.authorization_url(),
                        "clientId": agent.client_id,
                        "publicKey": agent.public_key,
                    }
                ),
            }
        )
        if capabilities:
            data["systemCapabilities"] = dict(agent.system_capabilities)
            data["userCapabilities"] = dict(agent.user_capabilities)
        if assigned and agent.assigned_request is not None:
            data["assignedRequest"] = self._request_json(self._requests[agent.assigned_request], matched=False)
        if last and agent.last_completed_request is not None:
            data["lastCompletedRequest"] = self._request_json(
                self._requests[agent.last_completed_request], matched=False
            )
        return data

    def _timeline(self, reference: str, build_id: int, credential: Credential) -> dict[str, Any]:
        """GET {project}/_apis/build/builds/{buildId}/timeline (Build - Timeline - Get; scope vso.build): the
        run's Job records. A record's id is the job's id (the job request's jobId, which the agent reports its
        job record under), `queueId` the queue it was queued to (TimelineRecord, azure-devops-extension-api:
        "The ID of the queue which connects projects to agent pools"), set from the moment it waits [unconfirmed
        for a job still waiting]. Not emulated: Stage, Phase and Task records, logs, issues, `changeId` paging."""
        if SCOPE_BUILD_READ not in credential.scopes:
            raise ApiError(
                403,
                f"Access Denied: the access token of {credential.identity} does not have the scope {SCOPE_BUILD_READ} "
                "(Build: Read) that build/builds/{buildId}/timeline requires.",
                "AccessCheckException",
            )
        project = self.projects.require(reference)
        jobs = [r for r in self._requests.values() if r.run_id == build_id and r.scope_id == project.project_id]
        if not jobs:
            raise ApiError(404, f"The requested build {build_id} could not be found.", "BuildNotFoundException")
        builds = f"{self._public_base()}/{project.project_id}/_apis/build/builds"
        return {
            "id": jobs[0].plan_id,
            "changeId": len(jobs),
            "url": f"{builds}/{build_id}/Timeline/{jobs[0].plan_id}",
            "records": [self._job_record(request) for request in jobs],
        }

    def _job_record(self, request: _Request) -> dict[str, Any]:
        state = "completed" if request.finished else ("inProgress" if request.receive_time else "pending")
        agent = self._agents.get(request.reserved_agent) if request.reserved_agent is not None else None
        return _without_nulls(
            {
                "id": request.job_id,
                "parentId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request.plan_id}/phase")),
                "type": "Job",
                "name": request.job_name,
                "identifier": f"__default.{request.job_name}",
                "state": state,
                "result": request.result,
                "startTime": _time_or_none(request.receive_time),
                "finishTime": _time_or_none(request.finish_time),
                "queueId": request.queue_id,
                "workerName": agent.name if agent and request.receive_time else None,
                "attempt": 1,
                "order": 1,
            }
        )

    def _public_base(self) -> str:
        return self.base_url or f"https://dev.azure.com/{self.organization}"

    def _pool_ref(self, pool_id: int) -> dict[str, Any] | None:
        return self._pool_json(pool_id) if pool_id in self._pools else None

    def _request_json(self, request: _Request, *, matched: bool) -> dict[str, Any]:
        base = self._public_base()
        project = f"{base}/{request.scope_id}"
        data: dict[str, Any] = {
            "requestId": request.request_id,
            "queueTime": format_time(request.queue_time),
            "assignTime": _time_or_none(request.assign_time),
            "receiveTime": _time_or_none(request.receive_time),
            "finishTime": _time_or_none(request.finish_time),
            "lockedUntil": _time_or_none(request.locked_until),
            "result": request.result,
            "serviceOwner": SERVICE_OWNER,
            "hostId": self.instance_id,
            "scopeId": request.scope_id,
            "poolId": request.pool_id,
            "queueId": request.queue_id,
            "planType": request.plan_type,
            "planId": request.plan_id,
            "planGroup": f"{request.plan_type}:{request.scope_id}:{request.definition_id}",
            "jobId": request.job_id,
            "jobName": request.job_name,
            "orchestrationId": f"{request.plan_id}.{request.job_name.lower()}.__default",
            "definition": {
                "_links": {
                    "web": {"href": f"{project}/_build/definition?definitionId={request.definition_id}"},
                    "self": {"href": f"{project}/_apis/build/Definitions/{request.definition_id}"},
                },
                "id": request.definition_id,
                "name": request.definition_name,
            },
            "owner": {
                "_links": {
                    "web": {"href": f"{project}/_build/results?buildId={request.run_id}"},
                    "self": {"href": f"{project}/_apis/build/Builds/{request.run_id}"},
                },
                "id": request.run_id,
                "name": f"20260302.{request.request_id % 100}",
            },
            "data": {"ParallelismTag": "Private", "IsScheduledKey": "False"},
            "priority": 0,
            "demands": [str(d) for d in request.demands],
            "statusMessage": request.status_message,
            "agentDelays": [],
        }
        if request.reserved_agent is not None and request.reserved_agent in self._agents:
            data["reservedAgent"] = self._agent_ref(self._agents[request.reserved_agent])
        if matched and not request.finished:
            agents = self._matched_agents(request.pool_id, request.demands)
            data["matchedAgents"] = [self._agent_ref(a) for a in agents]
            data["matchesAllAgentsInPool"] = len(agents) == len(self._pool_agents(request.pool_id))
        return _without_nulls(data)

    # HTTP handlers (called with the lock held)

    def _connection_data(self, credential: Credential) -> dict[str, Any]:
        identity_id = self._identity_id(credential.identity)
        user = {
            "id": identity_id,
            "descriptor": f"Microsoft.IdentityModel.Claims.ClaimsIdentity;{self.instance_id}\\{credential.identity}",
            "subjectDescriptor": self._identity_ref(credential.identity)["descriptor"],
            "providerDisplayName": credential.identity,
            "isActive": True,
            "properties": {"Account": {"$type": "System.String", "$value": credential.identity}},
            "resourceVersion": 2,
            "metaTypeId": 0,
        }
        return {
            "authenticatedUser": user,
            "authorizedUser": dict(user),
            "instanceId": self.instance_id,
            "deploymentId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.instance_id}/deployment")),
            "deploymentType": "hosted",
            "locationServiceData": {
                "serviceOwner": SERVICE_OWNER,
                "defaultAccessMappingMoniker": "PublicAccessMapping",
                "lastChangeId": 1000,
                "lastChangeId64": 1000,
            },
        }

    def _list_pools(self, query: Mapping[str, str], credential: Credential) -> list[dict[str, Any]]:
        pools = [self._pools[pool_id] for pool_id in sorted(self._pools)]
        if "poolname" in query:
            pools = [p for p in pools if p["name"].casefold() == query["poolname"].casefold()]
        if "pooltype" in query:
            pools = [p for p in pools if p["poolType"].casefold() == query["pooltype"].casefold()]
        if "poolids" in query:
            wanted = set(_int_list(query["poolids"], "poolIds"))
            pools = [p for p in pools if p["id"] in wanted]
        action = query.get("actionfilter", "none").casefold()
        if action == "manage":
            pools = [p for p in pools if self.may_manage_pool(credential, p["id"])]
        return [self._pool_json(p["id"]) for p in pools]

    def _list_agents(self, pool_id: int, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """With `demands`, the agents satisfying them, `agentName` then being one more demand, `Agent.Name -equals`
        (the service's TaskAgentsBaseController.GetAgents, service_demands.py); without, `agentName` is the name."""
        self._pool(pool_id)
        agents = self._pool_agents(pool_id)
        if query.get("demands"):
            try:
                demands = parse_demand_list(query["demands"])
            except DemandError as error:
                raise ApiError(400, str(error), "ArgumentException") from error
            if query.get("agentname"):
                demands.append(Demand("Agent.Name", EQUALS, query["agentname"]))
            return [self._agent_json(a, **_agent_flags(query)) for a in agents if satisfies(demands, a.capabilities())]
        if "agentname" in query:
            agents = [a for a in agents if a.name.casefold() == query["agentname"].casefold()]
        return [self._agent_json(a, **_agent_flags(query)) for a in agents]

    def _post_agent(self, pool_id: int, body: Any) -> dict[str, Any]:
        self._pool(pool_id)
        fields = _agent_body(body)
        name = fields.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "Value cannot be null.\r\nParameter name: agent.Name", "ArgumentNullException")
        version = fields.get("version")
        if not isinstance(version, str) or not version:
            raise ApiError(400, "Value cannot be null.\r\nParameter name: agent.Version", "ArgumentNullException")
        public_key = _public_key(fields)
        agent = self._new_agent(
            pool_id,
            name=name.strip(),
            version=version,
            capabilities=_string_map(fields.get("systemCapabilities"), "systemCapabilities"),
            public_key=public_key,
        )
        self._apply_agent_fields(agent, fields, replace=True)
        self.stats.agents_registered += 1
        return self._agent_json(agent, capabilities=True)

    def _apply_agent_fields(self, agent: _Agent, fields: Mapping[str, Any], *, replace: bool) -> None:
        if "enabled" in fields and isinstance(fields["enabled"], bool):
            agent.enabled = fields["enabled"]
        if isinstance(fields.get("maxParallelism"), int):
            agent.max_parallelism = fields["maxParallelism"]
        if isinstance(fields.get("provisioningState"), str):
            agent.provisioning_state = fields["provisioningState"]
        if isinstance(fields.get("osDescription"), str):
            agent.os_description = fields["osDescription"]
        if isinstance(fields.get("version"), str) and fields["version"]:
            agent.version = fields["version"]
        if "userCapabilities" in fields and fields["userCapabilities"] is not None:
            agent.user_capabilities = _string_map(fields["userCapabilities"], "userCapabilities")
        if replace and "systemCapabilities" in fields:
            agent.system_capabilities = _string_map(fields.get("systemCapabilities"), "systemCapabilities")

    def _patch_agent(self, pool_id: int, agent_id: int, body: Any) -> dict[str, Any]:
        self._pool(pool_id)
        agent = self._agent(agent_id, pool_id)
        fields = _agent_body(body)
        _check_body_id(fields, agent_id)
        self._rename(agent, fields)
        self._apply_agent_fields(agent, fields, replace=False)
        return self._agent_json(agent)

    def _put_agent(self, pool_id: int, agent_id: int, body: Any) -> dict[str, Any]:
        self._pool(pool_id)
        agent = self._agent(agent_id, pool_id)
        fields = _agent_body(body)
        _check_body_id(fields, agent_id)
        self._rename(agent, fields)
        # A replace keeps the id and the user capabilities; everything else comes from the body.
        kept_user_capabilities = dict(agent.user_capabilities)
        public_key = _public_key(fields) if "authorization" in fields else agent.public_key
        self._apply_agent_fields(agent, {k: v for k, v in fields.items() if k != "userCapabilities"}, replace=True)
        agent.user_capabilities = kept_user_capabilities
        if public_key is not None and public_key != agent.public_key:
            agent.public_key = public_key
            agent.client_id = str(uuid.uuid4())
            self.oauth.revoke_agent(agent_id)
        return self._agent_json(agent, capabilities=True)

    def _rename(self, agent: _Agent, fields: Mapping[str, Any]) -> None:
        name = fields.get("name")
        if isinstance(name, str) and name and name.casefold() != agent.name.casefold():
            if self._agent_by_name(agent.pool_id, name) is not None:
                raise ApiError(409, self._duplicate_message(agent.pool_id, name), "TaskAgentExistsException")
            agent.name = name

    def _delete_agent(self, pool_id: int, agent_id: int) -> None:
        pool = self._pool(pool_id)
        agent = self._agent(agent_id, pool_id)
        assigned = self._requests.get(agent.assigned_request) if agent.assigned_request is not None else None
        if assigned is not None and agent.status == "offline" and assigned.receive_time is None:
            self._finish(assigned, "failed", self.clock(), message=_stopped_hearing(agent.name))
        elif agent.assigned_request is not None:
            self.stats.busy_agent_deletes_refused += 1
            raise ApiError(
                400,
                f'Agent "{agent.name}" is running a job for pool "{pool["name"]}"',
                "TaskAgentJobStillRunningException",
            )
        del self._agents[agent_id]
        del self._agents_by_pool[pool_id][agent_id]
        self.oauth.revoke_agent(agent_id)
        pool["size"] = len(self._agents_by_pool[pool_id])
        self.stats.agents_deleted += 1

    def _put_user_capabilities(self, pool_id: int, agent_id: int, body: Any) -> dict[str, Any]:
        self._pool(pool_id)
        agent = self._agent(agent_id, pool_id)
        agent.user_capabilities = _string_map(body if body is not None else {}, "userCapabilities")
        return self._agent_json(agent, capabilities=True)

    def _list_requests(self, pool_id: int, query: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]:
        self._pool(pool_id)
        requests_ = self._pool_requests(pool_id)
        if "planid" in query:
            requests_ = [r for r in requests_ if r.plan_id.casefold() == query["planid"].casefold()]
            if "jobid" in query:
                requests_ = [r for r in requests_ if r.job_id.casefold() == query["jobid"].casefold()]
        agent_ids: set[int] | None = None
        if "agentid" in query:
            agent_ids = set(_int_list(query["agentid"], "agentId"))
        if "agentids" in query:
            agent_ids = (agent_ids or set()) | set(_int_list(query["agentids"], "agentIds"))
        if agent_ids is not None:
            requests_ = [r for r in requests_ if r.reserved_agent in agent_ids]
        if "$top" in query:
            # $top beats completedRequestCount: newest first, finished ones included, no matchedAgents.
            top = _non_negative(query["$top"], "$top")
            if "continuationtoken" in query:
                below = _non_negative(query["continuationtoken"], "continuationToken")
                requests_ = [r for r in requests_ if r.request_id < below]
            newest = sorted(requests_, key=lambda r: r.request_id, reverse=True)
            page = newest[:top]
            token = str(page[-1].request_id) if len(newest) > top and page else None
            return [self._request_json(r, matched=False) for r in page], token
        if "completedrequestcount" in query:
            keep = _non_negative(query["completedrequestcount"], "completedRequestCount")
            unfinished = [r for r in requests_ if not r.finished]
            finished = [r for r in requests_ if r.finished]
            if agent_ids is None:
                kept = _newest_finished(finished, keep)
            else:
                kept = [
                    r
                    for agent_id in sorted(agent_ids)
                    for r in _newest_finished([f for f in finished if f.reserved_agent == agent_id], keep)
                ]
            chosen = {r.request_id for r in unfinished} | {r.request_id for r in kept}
            requests_ = [r for r in requests_ if r.request_id in chosen]
        return [self._request_json(r, matched=True) for r in requests_], None

    def dispatch(
        self,
        method: str,
        route: Route,
        ids: Mapping[str, int],
        query: Mapping[str, str],
        body: Any,
        credential: Credential,
        project: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """Serve one authenticated, versioned request (`project`: the project a project route was called
        below): (status, JSON body or None, extra headers)."""
        short = route.short
        pool_id, agent_id = ids.get("poolId", 0), ids.get("agentId", 0)
        with self._lock:
            if short == "connectionData":
                return 200, self._connection_data(credential), {}
            if short == "pools":
                return 200, _collection(self._list_pools(query, credential)), {}
            if short == "pools/{poolId}":
                self._pool(pool_id)
                return 200, self._pool_json(pool_id), {}
            if short == "pools/{poolId}/agents":
                if method == "POST":
                    return 200, self._post_agent(pool_id, body), {}
                return 200, _collection(self._list_agents(pool_id, query)), {}
            if short == "pools/{poolId}/agents/{agentId}":
                if method == "GET":
                    self._pool(pool_id)
                    return 200, self._agent_json(self._agent(agent_id, pool_id), **_agent_flags(query)), {}
                if method == "PATCH":
                    return 200, self._patch_agent(pool_id, agent_id, body), {}
                if method == "PUT":
                    return 200, self._put_agent(pool_id, agent_id, body), {}
                self._delete_agent(pool_id, agent_id)
                return 204, None, {}
            if short == "pools/{poolId}/agents/{agentId}/usercapabilities":
                return 200, self._put_user_capabilities(pool_id, agent_id, body), {}
            if short == "hooks/subscriptions":
                return self._subscriptions(method, body, credential)
            if short == "projects":
                if SCOPE_PROJECT_READ not in credential.scopes:
                    raise ApiError(
                        403,
                        f"Access Denied: the access token of {credential.identity} does not have the scope "
                        f"{SCOPE_PROJECT_READ} (Project and Team: Read) that {short} requires.",
                        "AccessCheckException",
                    )
                return 200, _collection(self.projects.list_json(query, base_url=self._public_base())), {}
            if short == "build/builds/{buildId}/timeline":
                return 200, self._timeline(project or "", ids["buildId"], credential), {}
            if short == "queues":
                return 200, _collection(self.projects.queues_json(project or "", query, pool_json=self._pool_ref)), {}
            if short == "pools/{poolId}/jobrequests":
                items, token = self._list_requests(pool_id, query)
                return 200, _collection(items), ({"X-MS-ContinuationToken": token} if token else {})
            self._pool(pool_id)
            request = self._request(ids["requestId"], pool_id)
            return 200, self._request_json(request, matched=True), {}

    def _subscriptions(self, method: str, body: Any, credential: Credential) -> tuple[int, Any, dict[str, str]]:
        if method == "POST":
            return 200, self.hooks.create(body, identity=self._identity_ref(credential.identity)), {}
        if not credential.scopes & {SCOPE_HOOKS_READ, SCOPE_HOOKS_WRITE}:
            raise ApiError(
                403,
                f"Access Denied: {credential.identity} needs the Service Hooks (read) permission (vso.hooks).",
                "AccessCheckException",
            )
        return 200, _collection(self.hooks.subscriptions()), {}

    def authenticate(self, authorization: str | None) -> Credential | None:
        """The credential an Authorization header carries, if the organization knows it."""
        if not authorization:
            return None
        scheme, _, payload = authorization.strip().partition(" ")
        token: str | None = None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(payload.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return None
            token = decoded.partition(":")[2].strip()
        elif scheme.lower() == "bearer":
            token = payload.strip()
        if not token:
            return None
        with self._lock:
            credential = self._credentials.get(token)
            if credential is None and scheme.lower() == "bearer":
                credential = self._entra_credential(token)
        if credential is None or (scheme.lower() == "bearer") != (credential.kind == "bearer"):
            return None
        return credential

    def throttle(self, identity: str, method: str, route: Route) -> tuple[dict[str, str], float, int | None]:
        """Charge one call: (headers, seconds to hold it, Retry-After when blocked)."""
        if self._throttle is None:
            return {}, 0.0, None
        decision = self._throttle.charge(identity, method=method, short=route.short, now=self.clock())
        return decision.headers, decision.delay, (decision.retry_after if decision.blocked else None)


def _stopped_hearing(agent_name: str) -> str:
    return (
        f"We stopped hearing from agent {agent_name}. Verify the agent machine is running and has a healthy "
        "network connection."
    )


def _without_nulls(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


def _time_or_none(value: float | None) -> str | None:
    return None if value is None else format_time(value)


def _collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"count": len(items), "value": items}


def _newest_finished(finished: list[_Request], keep: int) -> list[_Request]:
    return sorted(finished, key=lambda r: (r.finish_time or 0.0, r.request_id), reverse=True)[:keep]


def _flag(query: Mapping[str, str], key: str) -> bool:
    return query.get(key, "false").strip().casefold() == "true"


def _agent_flags(query: Mapping[str, str]) -> dict[str, bool]:
    return {
        "capabilities": _flag(query, "includecapabilities"),
        "assigned": _flag(query, "includeassignedrequest"),
        "last": _flag(query, "includelastcompletedrequest"),
    }


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ApiError(400, f"The value '{text}' is not valid for {name}.", "ArgumentException") from None


def _non_negative(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ApiError(400, f"The value '{text}' is not valid for {name}.", "ArgumentException")
    return value


def _agent_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "Value cannot be null.\r\nParameter name: agent", "ArgumentNullException")
    return body


def _check_body_id(fields: Mapping[str, Any], agent_id: int) -> None:
    if "id" in fields and fields["id"] not in (None, 0, agent_id):
        raise ApiError(
            400,
            f"The agent ID in the body ({fields['id']}) does not match the URL ({agent_id}).",
            "ArgumentException",
        )


def _string_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ApiError(400, f"{name} must be a map of strings.", "ArgumentException")
    return {key: "" if item is None else str(item) for key, item in value.items()}


def _public_key(fields: Mapping[str, Any]) -> dict[str, str]:
    authorization = fields.get("authorization")
    key = authorization.get("publicKey") if isinstance(authorization, dict) else None
    if not isinstance(key, dict) or not all(
        isinstance(key.get(part), str) and key.get(part) for part in ("exponent", "modulus")
    ):
        raise ApiError(
            400,
            "Value cannot be null.\r\nParameter name: agent.Authorization.PublicKey",
            "ArgumentNullException",
        )
    for part in ("exponent", "modulus"):
        try:
            base64.b64decode(key[part], validate=True)
        except ValueError:
            raise ApiError(400, f"The public key {part} is not valid base64.", "ArgumentException") from None
    return {"exponent": key["exponent"], "modulus": key["modulus"]}


def _make_handler(emulator: AzureDevOpsEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.emulator = emulator
    return Handler


class _Handler(FaultingHandler):
    """Turns HTTP requests into emulator calls, in the order the service applies its checks:
    faults (test-only), authentication, route, api-version, throttling, then the handler."""

    emulator: AzureDevOpsEmulator
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    # Headers and body go out in separate writes; without TCP_NODELAY each response waits ~40 ms.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header from the organization's clock (`emulator.clock`, which tests may set off ours): an
        origin server with a clock sends its time on every answer (RFC 9110, section 6.6.1), so a client sees a
        skewed service clock there as in the service's own timestamps."""
        return email.utils.formatdate(self.emulator.clock() if timestamp is None else timestamp, usegmt=True)

    def do_OPTIONS(self) -> None:
        self._serve("OPTIONS")

    def _serve(self, method: str) -> None:
        emulator = self.emulator
        parts = urlsplit(self.path)
        query_pairs = parse_qsl(parts.query, keep_blank_values=True)
        query_raw = dict(query_pairs)
        query = {key.casefold(): value for key, value in query_pairs}
        raw_body = self._read_body()
        prefix = f"/{emulator.organization}".casefold()
        path = parts.path.rstrip("/") or "/"
        found = None
        project: str | None = None
        if path.casefold().startswith(prefix + "/") or path.casefold() == prefix:
            below = path[len(prefix) :]
            head, _, rest = below.lstrip("/").partition("/")
            if rest and not head.casefold().startswith("_apis"):  # {org}/{project}/_apis/...
                project, below = unquote(head), "/" + rest
            found = match_route(below, in_project=project is not None)
        route = found[0] if found else None
        template = route.template if route else path
        state = _CallState(method=method, template=template, path=parts.path, query=query_raw)

        fault = emulator._take_fault(method, route)
        if fault is not None:
            state.fault = fault.kind
            if self._apply_fault(fault, state):
                return

        credential = emulator.authenticate(self.headers.get("Authorization"))
        if credential is None or credential.expired:
            self._refuse_auth(method, state, expired=credential is not None)
            return
        state.identity = credential.identity
        if not credential.may_read():
            self._send_error(ApiError(401, _tf400813(credential.identity), "UnauthorizedRequestException"), state)
            return

        if route is None or found is None:
            self._send_error(
                ApiError(404, f"The resource cannot be found. Path: {parts.path}", "VssResourceNotFoundException"),
                state,
            )
            return
        if method not in route.methods:
            error = ApiError(
                405,
                f"The requested resource does not support http method '{method}'.",
                "VssResourceNotFoundException",
                headers={"Allow": ", ".join(sorted(route.methods))},
            )
            self._send_error(error, state)
            return
        requested = requested_api_version(query.get("api-version"), self.headers.get("Accept"))
        if requested is not None or method != "GET" or route.short not in VERSIONLESS_GET_ROUTES:
            try:
                state.api_version = check_api_version(requested, method=method, profile=emulator.profile)
            except ApiError as error:
                self._send_error(error, state)
                return

        if method != "GET" and not emulator.may_manage_pool(credential, found[1].get("poolId"), route.short):
            self._send_error(
                ApiError(403, _access_denied(credential, route, found[1], emulator), "AccessCheckException"),
                state,
            )
            return

        headers, delay, retry_after = emulator.throttle(credential.identity, method, route)
        state.headers.update(headers)
        if retry_after is not None:
            message = _tf400733(headers.get("X-RateLimit-Resource", "ATCPU"))
            self._send_error(ApiError(429, message, "RequestBlockedException"), state)
            return
        if delay > 0:
            emulator._stopping.wait(delay)

        try:
            body = json.loads(raw_body) if raw_body.strip() else None
        except ValueError:
            self._send_error(
                ApiError(400, "The request content is not valid JSON.", "VssRequestContentException"), state
            )
            return
        if emulator.auto_tick:
            emulator.tick()
        try:
            status, payload, extra = emulator.dispatch(method, route, found[1], query, body, credential, project)
        except ApiError as error:
            self._send_error(error, state)
            return
        emulator._deliver_exits()
        state.headers.update(extra)
        self._send_json(status, payload, state)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _apply_fault(self, fault: Fault, state: _CallState) -> bool:
        """Carry out a fault; True when the request is answered (or dropped) by it."""
        emulator = self.emulator
        if fault.kind == "delay":
            emulator._stopping.wait(fault.delay)
            return False
        if fault.kind == "status":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            state.headers.update(headers)
            if fault.body is not None:
                self._send_raw(fault.status, fault.body.encode(), "application/json; charset=utf-8", state)
            else:
                self._send_json(fault.status, _fault_body(fault.status), state)
            return True
        if fault.kind == "html":
            page = (fault.body or SIGN_IN_PAGE).encode()
            self._send_raw(200, page, "text/html; charset=utf-8", state)
            return True
        self.transport_fault(
            fault.kind,
            record=lambda status: emulator._record(state.record(status, emulator.clock())),
            hold=lambda: emulator._stopping.wait(fault.delay or emulator.hang_seconds),
            body=(fault.body or _TRUNCATED_DEFAULT).encode(),
            content_type="application/json; charset=utf-8",
        )
        return True

    def _refuse_auth(self, method: str, state: _CallState, *, expired: bool) -> None:
        suppress = self.headers.get("X-TFS-FedAuthRedirect", "").strip().casefold() == "suppress"
        if method == "GET" and not suppress and not expired:
            # The service's answer to an anonymous browser-style GET: a sign-in page with 203.
            self._send_raw(203, SIGN_IN_PAGE.encode(), "text/html; charset=utf-8", state)
            return
        state.headers["WWW-Authenticate"] = 'Basic realm="https://tfsprodweu5.visualstudio.com/"'
        state.headers["X-TFS-ProcessId"] = str(uuid.uuid4())
        self._send_error(ApiError(401, _tf400813(""), "UnauthorizedRequestException"), state)

    def _send_error(self, error: ApiError, state: _CallState) -> None:
        state.headers.update(error.headers)
        self._send_json(error.status, error.body(), state)

    def _send_json(self, status: int, payload: Any, state: _CallState) -> None:
        if payload is None:
            self._send_raw(status, b"", None, state)
            return
        content_type = "application/json; charset=utf-8"
        if state.api_version:
            content_type += f"; api-version={state.api_version}"
        self._send_raw(status, json.dumps(payload, separators=(",", ":")).encode(), content_type, state)

    def _send_raw(self, status: int, body: bytes, content_type: str | None, state: _CallState) -> None:
        self.emulator._record(state.record(status, self.emulator.clock()))
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ActivityId", str(uuid.uuid4()))
        self.send_header("X-VSS-E2EID", str(uuid.uuid4()))
        for key, value in state.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and state.method != "HEAD":
            self.wfile.write(body)


@dataclass
class _CallState:
    method: str
    template: str
    path: str
    query: dict[str, str]
    identity: str | None = None
    api_version: str | None = None
    fault: FaultKind | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def record(self, status: int, now: float) -> CallRecord:
        return CallRecord(
            method=self.method,
            route=self.template,
            path=self.path,
            query=dict(self.query),
            status=status,
            identity=self.identity,
            time=now,
            fault=self.fault,
        )


def _fault_body(status: int) -> dict[str, Any]:
    if status == 429:
        return error_body(_tf400733("ATCPU"), "RequestBlockedException")
    if status == 503:
        return error_body(
            "TF400898: The service is temporarily unavailable (injected fault).",
            "ServiceUnavailableException",
        )
    return error_body(
        f"TF246020: An internal error occurred (injected fault, HTTP {status}).",
        "InternalServerErrorException",
    )


def _tf400733(resource: str) -> str:
    return (
        f"TF400733: The request has been canceled: Request was blocked due to exceeding usage of resource "
        f"'{resource}' in namespace 'User'. For more information on why your request was blocked, see the "
        'topic "Rate limits" on the Microsoft Web site (https://go.microsoft.com/fwlink/?LinkId=823950).'
    )


def _tf400813(user: str) -> str:
    return f"TF400813: The user '{user}' is not authorized to access this resource."


def _access_denied(credential: Credential, route: Route, ids: Mapping[str, int], emulator: AzureDevOpsEmulator) -> str:
    if route.short.startswith("hooks/"):
        return (
            f"Access Denied: {credential.identity} needs the Service Hooks (read & write) permission: the access "
            f"token does not have the scope {SCOPE_HOOKS_WRITE} that {route.short} requires."
        )
    pool = emulator._pools.get(ids.get("poolId", -1))
    resource = f"AgentPools/{pool['name'] if pool else ids.get('poolId', '')}"
    denied = (
        f"Access Denied: {credential.identity} needs the following permission(s) on the resource {resource} to "
        "perform this action: Manage."
    )
    if credential.may_write():
        return denied
    return (
        f"{denied} The access token does not have the scope {SCOPE_MANAGE} (Agent Pools: Read & manage) that "
        f"{route.short} requires."
    )
