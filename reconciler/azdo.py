"""The Azure DevOps REST client: the only module that talks to Azure DevOps (with `requests`).

One session, timeouts, retries with exponential backoff and jitter on throttling, 5xx and broken
connections, `Retry-After` and `X-RateLimit-Delay` honoured (capped, and never past the run's deadline),
sign-in pages and 401s turned into AuthError, a 403 on one pool into a ForbiddenError that fails that pool
only, and a count of every call so each pass can report what it cost.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import requests

from reconciler.deadline import Deadline
from reconciler.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from reconciler.identity import Authorization, PatAuthorization
from reconciler.model import Agent, JobRequest, frozen_map

log = logging.getLogger("reconciler.azdo")

API_VERSION = "7.1"
API_VERSIONS = ("7.1", "7.0", "6.0")
"""The REST API versions the client speaks, highest first: Azure DevOps Services (7.1), Azure DevOps Server 2022
(7.0) and 2020 (6.0) (the REST reference's product mapping). Every route used is released at each of them but
connectionData, which is -preview at every version."""
# jobrequests is undocumented; 7.0 is a version public clients use successfully (reference, section 4).
JOBREQUESTS_API_VERSION = "7.0"
VERSION_REFUSALS = ("VssVersionOutOfRangeException", "VssInvalidPreviewVersionException")
_LATEST_SUPPORTED = re.compile(r"latest REST API version this server supports is (\d+)\.(\d+)")
MAX_RETRY_AFTER = 60.0
"""The longest `Retry-After` waited for: an answer of an hour must not outlive the run (it is reported)."""
# Pool names a "pool not found" message lists at most (an organization can have hundreds).
LISTED_POOLS = 20
PROJECTS_PAGE = 100


def parse_time(value: Any) -> datetime | None:
    """Parse the service's UTC timestamps (up to 7 fractional digits) into aware datetimes."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # The service writes UTC; a timestamp without an offset is UTC too, never local time.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _version_tuple(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


VersionKind = Literal["released", "preview", "jobrequests"]


class ApiVersionRefused(PermanentError):
    """HTTP 400 VssVersionOutOfRangeException (the server, an Azure DevOps Server, is older than the version sent)
    or VssInvalidPreviewVersionException (the version is only a preview there, e.g. 7.1 on Server 2022).
    `latest` is the highest version an out-of-range message names (previews included), None when it names none."""

    def __init__(self, message: str, latest: tuple[int, int] | None) -> None:
        super().__init__(message)
        self.latest = latest


def _ref_id(ref: Any) -> int | None:
    return ref.get("id") if isinstance(ref, dict) and isinstance(ref.get("id"), int) else None


def _ref_name(ref: Any) -> str | None:
    return ref.get("name") if isinstance(ref, dict) and isinstance(ref.get("name"), str) else None


def _ref_enabled(ref: Any) -> bool | None:
    """An agent reference's `enabled` (TaskAgentReference has it); None when the payload does not show it."""
    return ref.get("enabled") if isinstance(ref, dict) and isinstance(ref.get("enabled"), bool) else None


def job_request_from_json(item: Mapping[str, Any]) -> JobRequest | None:
    """A JobRequest from the service's JSON; None when the payload lacks a usable requestId."""
    request_id = item.get("requestId")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        return None
    demands = item.get("demands")
    definition = item.get("definition")
    return JobRequest(
        request_id=request_id,
        queue_time=parse_time(item.get("queueTime")),
        demands=tuple(d for d in demands if isinstance(d, str)) if isinstance(demands, list) else (),
        assign_time=parse_time(item.get("assignTime")),
        receive_time=parse_time(item.get("receiveTime")),
        finish_time=parse_time(item.get("finishTime")),
        result=item.get("result") if isinstance(item.get("result"), str) else None,
        reserved_agent_id=_ref_id(item.get("reservedAgent")),
        reserved_agent_name=_ref_name(item.get("reservedAgent")),
        reserved_agent_enabled=_ref_enabled(item.get("reservedAgent")),
        plan_type=item.get("planType") if isinstance(item.get("planType"), str) else None,
        definition=_ref_name(definition),
        job_id=_lower_str(item.get("jobId")),
        scope_id=_lower_str(item.get("scopeId")),
    )


def _lower_str(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def _mapping(value: Any) -> Mapping[str, Any]:
    """A field that should be an object; anything else reads as absent (payloads are not trusted)."""
    return value if isinstance(value, Mapping) else {}


def _request_id(value: Any) -> int | None:
    request_id = _mapping(value).get("requestId")
    return request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else None


def agent_from_json(item: Mapping[str, Any]) -> Agent | None:
    """An Agent from the service's JSON; None when the payload lacks id or name."""
    agent_id, name = item.get("id"), item.get("name")
    if not isinstance(agent_id, int) or not isinstance(name, str):
        return None
    capabilities = {**_mapping(item.get("systemCapabilities")), **_mapping(item.get("userCapabilities"))}
    return Agent(
        agent_id=agent_id,
        name=name,
        enabled=bool(item.get("enabled", True)),
        status=str(item.get("status", "offline")),
        assigned_request_id=_request_id(item.get("assignedRequest")),
        completed_request_id=_request_id(item.get("lastCompletedRequest")),
        status_changed_on=parse_time(item.get("statusChangedOn")),
        created_on=parse_time(item.get("createdOn")),
        capabilities=frozen_map({str(k): str(v) for k, v in capabilities.items()}),
    )


def _drop_matched_agents(item: dict[str, Any]) -> dict[str, Any]:
    """A json.loads object hook for jobrequests: each request's matchedAgents (every agent that can serve it,
    the bulk of the payload, never read) is dropped as soon as that request is parsed, so a pool's queue is
    never held parsed with all of them at once."""
    item.pop("matchedAgents", None)
    return item


def placeholder_public_key() -> dict[str, str]:
    """An RSA public key for a placeholder registration.

    A placeholder never connects, so its private key is thrown away; the service only stores the
    public half. The modulus is a random odd 2048-bit number with the top bit set: the shape the
    service expects (base64, big-endian) without the cost of generating primes."""
    modulus = secrets.randbits(2048) | (1 << 2047) | 1
    return {
        "exponent": base64.b64encode((65537).to_bytes(3, "big")).decode(),
        "modulus": base64.b64encode(modulus.to_bytes(256, "big")).decode(),
    }


class AzureDevOps:
    """A client for the pools, agents and job requests of one organization."""

    def __init__(
        self,
        organization: str,
        *,
        pat: str = "",
        authorization: Authorization | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        deadline: Deadline | None = None,
        api_version: str = "auto",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.organization = organization.rstrip("/")
        self.clock = clock
        self.clock_offset: timedelta | None = None
        """The service's clock minus ours, from the last answer's Date header (`_read_clock`)."""
        self.negotiate = api_version == "auto"
        """With `auto`, 7.1 is sent until a server refuses it (out of range, or only a preview there); then the
        highest version below the refused one and the one the server names. One refused call per client."""
        self.api_version = API_VERSION if self.negotiate else api_version
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline or Deadline.unbounded()
        self.calls: Counter[str] = Counter()
        self.session = requests.Session()
        self.authorization = authorization or PatAuthorization(pat)
        """Asked for the header before every request: an Entra ID token is renewed before it expires."""
        self.session.headers.update(
            {
                "Accept": "application/json",
                # Ask for 401 instead of a redirect to a sign-in page (reference, section 1).
                "X-TFS-FedAuthRedirect": "Suppress",
                "User-Agent": "azp-agents-reconciler",
            }
        )
        self._not_before = 0.0
        self.visible_pools: list[str] | None = None
        self.last_pools: dict[str, tuple[int, int]] | None = None
        self.throttled = 0
        """Answers that asked to slow down: 429, or Retry-After / X-RateLimit-Delay on any answer."""

    def close(self) -> None:
        self.session.close()

    @property
    def call_count(self) -> int:
        return sum(self.calls.values())

    def _version(self, kind: VersionKind) -> str:
        """The api-version a route is sent with at the version in use (connectionData is -preview at all)."""
        if kind == "preview":
            return f"{self.api_version}-preview"
        if kind == "jobrequests" and _version_tuple(self.api_version) > _version_tuple(JOBREQUESTS_API_VERSION):
            return JOBREQUESTS_API_VERSION
        return self.api_version

    def _downgrade(self, error: ApiVersionRefused) -> None:
        """Settle on the highest version the server accepts, or say how to fix the configuration."""
        below = [v for v in API_VERSIONS if error.latest is None or _version_tuple(v) < error.latest]
        lower = [v for v in below if _version_tuple(v) < _version_tuple(self.api_version)]
        if not self.negotiate or not lower:
            raise ConfigError(
                f"azureDevOps.apiVersion: {self.organization} refused REST API version {self.api_version} ({error}): "
                f"set organization.apiVersion in the chart's values (azureDevOps.apiVersion in a config file) to auto "
                f"or one of {', '.join(API_VERSIONS)}; Azure DevOps Server 2020 or later is needed"
            ) from None
        log.info("%s accepts REST API versions below %s: using %s", self.organization, self.api_version, lower[0])
        self.api_version = lower[0]

    def _request(
        self,
        method: str,
        path: str,
        *,
        route: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        version: VersionKind = "released",
        object_hook: Callable[[dict[str, Any]], Any] | None = None,
        project: str | None = None,
    ) -> Any:
        """One call (below `project` for a project-scoped route); a version the server refuses is negotiated
        down once (see `_downgrade`) and the call resent (a refused version changed nothing on the server, so a
        write is safe to resend)."""
        where = f"{quote(project, safe='')}/_apis/{path}" if project else f"_apis/{path}"
        try:
            return self._send(method, where, route=route, params=params, body=body, version=version, hook=object_hook)
        except ApiVersionRefused as error:
            self._downgrade(error)
        return self._send(method, where, route=route, params=params, body=body, version=version, hook=object_hook)

    def _send(
        self,
        method: str,
        path: str,
        *,
        route: str,
        params: Mapping[str, Any] | None,
        body: Any,
        version: VersionKind,
        hook: Callable[[dict[str, Any]], Any] | None,
    ) -> Any:
        url = f"{self.organization}/{path}"
        query = {**(params or {}), "api-version": self._version(version)}
        attempt = 0
        while True:
            wait = self._not_before - time.monotonic()
            if wait > 0:
                self.deadline.sleep(wait, what=f"{method} {route}")
            timeout = self.deadline.timeout(self.timeout, what=f"{method} {route}")
            self.calls[f"{method} {route}"] += 1
            try:
                response = self.session.request(
                    method,
                    url,
                    params=query,
                    json=body,
                    headers={"Authorization": self.authorization()},
                    timeout=timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:  # timeouts, resets, bodies cut short
                error: Exception = TransientError(f"{method} {route}: {type(exc).__name__}: the service did not answer")
                retry_after = None
            else:
                self._read_clock(response)
                try:
                    return self._parse(response, method=method, route=route, object_hook=hook)
                except TransientError as exc:
                    error = exc
                    retry_after = _retry_after(response)
            attempt += 1
            if attempt > self.retries:
                raise error
            delay = retry_after if retry_after is not None else self.backoff * (2 ** (attempt - 1))
            delay += random.uniform(0, self.backoff)
            log.warning("%s; retry %d of %d in %.1fs", error, attempt, self.retries, delay)
            self.deadline.sleep(delay, what=f"{method} {route}", error=error)

    def _read_clock(self, response: requests.Response) -> None:
        """How far the service's clock is from ours: every answer of a server with a clock carries its time in
        the Date header (RFC 9110, section 6.6.1), in whole seconds; plan() corrects the service's timestamps
        by it when it is beyond the measurement's own error."""
        try:
            served = email.utils.parsedate_to_datetime(response.headers.get("Date") or "")
        except (TypeError, ValueError):
            return
        if served.tzinfo is not None:
            self.clock_offset = served - self.clock()

    def _parse(
        self,
        response: requests.Response,
        *,
        method: str,
        route: str,
        object_hook: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        status = response.status_code
        retry_after = _retry_after(response) if status < 400 else None
        if status == 429 or "Retry-After" in response.headers or response.headers.get("X-RateLimit-Delay"):
            self.throttled += 1
        if retry_after is not None:
            # An early warning on a success: slow down before the next call (reference, section 7).
            self._not_before = time.monotonic() + retry_after
        delay = response.headers.get("X-RateLimit-Delay")
        if delay:
            log.warning(
                "Azure DevOps delayed %s %s by %ss (rate limit %s, remaining %s)",
                method,
                route,
                delay,
                response.headers.get("X-RateLimit-Resource", "?"),
                response.headers.get("X-RateLimit-Remaining", "?"),
            )
        content_type = response.headers.get("Content-Type", "")
        if status == 203 or status == 401 or 300 <= status < 400:
            raise AuthError(
                f"{self.authorization.description} was rejected by {self.organization} (HTTP {status} on {method} "
                f"{route}): {self.authorization.hint}"
            )
        if status == 403:
            # A valid token refused on one object (reference, section 1): the other pools may work.
            raise ForbiddenError(
                f"{method} {urlsplit(response.url).path} was refused (HTTP 403: "
                f"{_message(response)}): {self.authorization.forbidden_hint}"
            )
        if status == 429 or status >= 500:
            raise TransientError(f"{method} {route}: HTTP {status}: {_message(response)}")
        if status == 404:
            raise NotFoundError(f"{method} {route}: HTTP 404: {_message(response)}")
        if status == 409:
            raise ConflictError(f"{method} {route}: HTTP 409: {_message(response)}")
        if status == 400 and _type_key(response) in VERSION_REFUSALS:
            match = _LATEST_SUPPORTED.search(_message(response))
            latest = (int(match.group(1)), int(match.group(2))) if match else None
            raise ApiVersionRefused(f"{method} {route}: HTTP 400: {_message(response)}", latest)
        if status >= 400:
            raise PermanentError(f"{method} {route}: HTTP {status}: {_message(response)}")
        if status == 204 or not response.content:
            return None
        if "json" not in content_type:
            raise AuthError(
                f"{self.organization} answered {method} {route} with {content_type or 'no content type'} instead of "
                f"JSON (a sign-in page): {self.authorization.description}: {self.authorization.hint}"
            )
        try:
            return response.json(object_hook=object_hook)
        except ValueError:
            raise TransientError(f"{method} {route}: the response body is not complete JSON") from None

    def _list(
        self,
        path: str,
        *,
        route: str,
        params: Mapping[str, Any] | None = None,
        version: VersionKind = "released",
        object_hook: Callable[[dict[str, Any]], Any] | None = None,
        project: str | None = None,
    ) -> list[dict[str, Any]]:
        payload = self._request(
            "GET", path, route=route, params=params, version=version, object_hook=object_hook, project=project
        )
        if not isinstance(payload, dict) or not isinstance(payload.get("value"), list):
            raise TransientError(f"GET {route}: the response is not a list ({{count, value}})")
        return [item for item in payload["value"] if isinstance(item, dict)]

    # --- reads ---------------------------------------------------------------------------------

    def _organization_not_found(self, error: NotFoundError) -> ConfigError:
        """A 404 on an organization-wide route: the URL names no organization (or collection)."""
        return ConfigError(
            f"organization: {self.organization} is not an Azure DevOps organization or collection ({error}): "
            "check organization.url in the chart's values (organization in a config file), "
            "e.g. https://dev.azure.com/ORG"
        )

    def connection_data(self) -> dict[str, Any]:
        """Who the credential belongs to (proves it works)."""
        try:
            data = self._request("GET", "connectionData", route="connectionData", version="preview")
        except NotFoundError as exc:
            raise self._organization_not_found(exc) from None
        return data if isinstance(data, dict) else {}

    def pools(self, *, manageable: bool = False) -> dict[str, tuple[int, int]]:
        """Every automation pool, one call: its id and `size` (registered agents) by name; with
        `manageable`, only the pools the credential may manage (`actionFilter=manage`, reference section 2).
        The names of every pool the credential can see are kept for `missing_pool_message`, the answer in
        `last_pools`."""
        params = {"poolType": "automation", **({"actionFilter": "manage"} if manageable else {})}
        try:
            pools = self._list("distributedtask/pools", route="pools", params=params)
        except NotFoundError as exc:
            raise self._organization_not_found(exc) from None
        found: dict[str, tuple[int, int]] = {}
        for pool in pools:
            name, pool_id, size = pool.get("name"), pool.get("id"), pool.get("size")
            if isinstance(name, str) and isinstance(pool_id, int):
                # A pool without a usable size is counted as holding agents: it is looked into.
                found[name] = (pool_id, size if isinstance(size, int) else 1)
        if not manageable:
            self.visible_pools = sorted(found, key=str.lower)
            self.last_pools = found
        return found

    def pools_by_name(self, names: list[str], *, manageable: bool = False) -> dict[str, int]:
        """Pool ids for the given names with one call: every automation pool (`pools`), matched by name."""
        found = {name: pool_id for name, (pool_id, _) in self.pools(manageable=manageable).items()}
        lowered = {name.lower(): pool_id for name, pool_id in found.items()}
        return {name: lowered[name.lower()] for name in names if name.lower() in lowered}

    def missing_pool_message(self, name: str) -> str:
        """Why pool `name` was not found, with the pools this credential can see (from the last pools call)."""
        visible = self.visible_pools
        if visible is None:
            seen = "the pools could not be listed"
        elif not visible:
            seen = (
                f"this {self.authorization.noun} sees no agent pool (a PAT needs the Agent Pools (read) scope, "
                "an identity the Reader role)"
            )
        else:
            more = f" and {len(visible) - LISTED_POOLS} more" if len(visible) > LISTED_POOLS else ""
            seen = f"pools visible to this {self.authorization.noun}: {', '.join(visible[:LISTED_POOLS])}{more}"
        return f"pool {name!r} not found in {self.organization}; {seen}: check pools[].name"

    def job_requests(self, pool_id: int) -> list[JobRequest]:
        """Unfinished requests of a pool (queued, assigned, running), one call."""
        items = self._list(
            f"distributedtask/pools/{pool_id}/jobrequests",
            route="pools/{poolId}/jobrequests",
            params={"completedRequestCount": 0},
            version="jobrequests",
            object_hook=_drop_matched_agents,
        )
        requests_ = (job_request_from_json(item) for item in items)
        return [r for r in requests_ if r is not None and not r.finished]

    def agents(self, pool_id: int) -> list[Agent]:
        """Every agent of a pool with capabilities and assigned/last requests, one call."""
        items = self._list(
            f"distributedtask/pools/{pool_id}/agents",
            route="pools/{poolId}/agents",
            params={
                "includeCapabilities": "true",
                "includeAssignedRequest": "true",
                "includeLastCompletedRequest": "true",
            },
        )
        agents = (agent_from_json(item) for item in items)
        return [a for a in agents if a is not None]

    def agent(self, pool_id: int, agent_id: int) -> Agent | None:
        """One agent, re-read with its assigned request (None when it is gone)."""
        try:
            item = self._request(
                "GET",
                f"distributedtask/pools/{pool_id}/agents/{agent_id}",
                route="pools/{poolId}/agents/{agentId}",
                params={"includeAssignedRequest": "true", "includeLastCompletedRequest": "true"},
            )
        except NotFoundError:
            return None
        return agent_from_json(item) if isinstance(item, dict) else None

    # --- writes --------------------------------------------------------------------------------

    def set_enabled(self, pool_id: int, agent_id: int, *, enabled: bool) -> None:
        self._request(
            "PATCH",
            f"distributedtask/pools/{pool_id}/agents/{agent_id}",
            route="pools/{poolId}/agents/{agentId}",
            body={"id": agent_id, "enabled": enabled},
        )

    def delete_agent(self, pool_id: int, agent_id: int) -> bool:
        """Delete a registration; False when it was already gone (idempotent)."""
        try:
            self._request(
                "DELETE", f"distributedtask/pools/{pool_id}/agents/{agent_id}", route="pools/{poolId}/agents/{agentId}"
            )
        except NotFoundError:
            return False
        return True

    def subscriptions(self) -> list[dict[str, Any]]:
        """The organization's service hook subscriptions (needs the Service Hooks read scope)."""
        return self._list("hooks/subscriptions", route="hooks/subscriptions")

    def project_ids(self) -> list[str]:
        """Ids (lower case) of the organization's projects, a page of PROJECTS_PAGE at a time (Core, Projects -
        List: `$top`/`$skip`; needs the Project and Team read scope, vso.project)."""
        found: list[str] = []
        while True:
            page = self._list("projects", route="projects", params={"$top": PROJECTS_PAGE, "$skip": len(found)})
            found += [str(item["id"]).lower() for item in page if item.get("id")]
            if len(page) < PROJECTS_PAGE:
                return found

    def queues_of_pools(self, project: str, pool_ids: Collection[int]) -> dict[int, int]:
        """The project's agent queues (queue id -> pool id) of these pools, i.e. the pools it may queue jobs into
        (Queues - Get Agent Queues For Pools, a project-scoped route; Agent Pools read scope)."""
        queues = self._list(
            "distributedtask/queues",
            route="{project}/queues",
            params={"poolIds": ",".join(str(i) for i in sorted(pool_ids))},
            project=project,
        )
        found: dict[int, int] = {}
        for queue in queues:
            pool_id, queue_id = _ref_id(queue.get("pool")), queue.get("id")
            if pool_id is not None and pool_id in pool_ids and isinstance(queue_id, int):
                found[queue_id] = pool_id
        return found

    def job_queue_id(self, project: str, run_id: int, job_id: str) -> int | None:
        """The queue a run's job was queued to, from its timeline (Timeline - Get: the Job record whose id is the
        job's id carries `queueId`; needs the Build read scope, vso.build). None when the record has none."""
        timeline = self._request(
            "GET", f"build/builds/{run_id}/timeline", route="{project}/build/builds/{buildId}/timeline", project=project
        )
        records = timeline.get("records") if isinstance(timeline, dict) else None
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict) and str(record.get("id", "")).lower() == job_id.lower():
                queue_id = record.get("queueId")
                return queue_id if isinstance(queue_id, int) else None
        return None

    def create_subscription(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create one service hook subscription (needs the Service Hooks read & write scope)."""
        created = self._request("POST", "hooks/subscriptions", route="hooks/subscriptions", body=dict(body))
        if not isinstance(created, dict):
            raise TransientError("POST hooks/subscriptions: the response is not a subscription")
        return created

    def register_agent(
        self,
        pool_id: int,
        *,
        name: str,
        capabilities: Mapping[str, str],
        version: str,
        public_key: Mapping[str, str],
        enabled: bool = True,
        os_description: str = "azp-agents agent (registered by the reconciler)",
    ) -> dict[str, Any]:
        """Register an agent the way config.sh does (reference, section 3: `POST .../pools/{id}/agents` with
        its RSA public key); returns the stored agent with its id and OAuth client identity."""
        body = {
            "name": name,
            "version": version,
            "osDescription": os_description,
            "enabled": enabled,
            "maxParallelism": 1,
            "provisioningState": "Provisioned",
            "systemCapabilities": dict(capabilities),
            "authorization": {"publicKey": dict(public_key)},
        }
        created = self._request(
            "POST", f"distributedtask/pools/{pool_id}/agents", route="pools/{poolId}/agents", body=body
        )
        if not isinstance(created, dict) or not isinstance(created.get("id"), int):
            raise TransientError("POST pools/{poolId}/agents: the response has no agent id")
        return created

    def register_placeholder(self, pool_id: int, *, name: str, capabilities: Mapping[str, str], version: str) -> int:
        """Register a disabled agent that never connects, the way config.sh registers one."""
        created = self.register_agent(
            pool_id,
            name=name,
            capabilities=capabilities,
            version=version,
            public_key=placeholder_public_key(),
            enabled=False,
            os_description="azp-agents placeholder (never runs jobs)",
        )
        agent_id: int = created["id"]
        if created.get("enabled", False):
            self.set_enabled(pool_id, agent_id, enabled=False)
        return agent_id

    def update_placeholder(
        self, pool_id: int, agent_id: int, *, name: str, capabilities: Mapping[str, str], version: str
    ) -> None:
        """Replace a placeholder's capabilities (PUT keeps its id) and keep it disabled."""
        body = {
            "id": agent_id,
            "name": name,
            "version": version,
            "enabled": False,
            "maxParallelism": 1,
            "provisioningState": "Provisioned",
            "systemCapabilities": dict(capabilities),
            "authorization": {"publicKey": placeholder_public_key()},
        }
        replaced = self._request(
            "PUT",
            f"distributedtask/pools/{pool_id}/agents/{agent_id}",
            route="pools/{poolId}/agents/{agentId}",
            body=body,
        )
        if not isinstance(replaced, dict) or replaced.get("enabled", True):
            self.set_enabled(pool_id, agent_id, enabled=False)


def _retry_after(response: requests.Response) -> float | None:
    """The `Retry-After` header in seconds, capped at MAX_RETRY_AFTER (and reported when it was capped)."""
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        seconds = max(0.0, float(raw))
    except ValueError:
        return None
    if seconds > MAX_RETRY_AFTER:
        log.warning("Azure DevOps asked to retry after %.0fs: waiting %.0fs at most", seconds, MAX_RETRY_AFTER)
    return min(seconds, MAX_RETRY_AFTER)


def _type_key(response: requests.Response) -> str | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload.get("typeKey") if isinstance(payload, dict) and isinstance(payload.get("typeKey"), str) else None


def _message(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.reason or "no details"
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return str(payload["message"])[:300]
    return response.reason or "no details"


def pool_url_name(name: str) -> str:
    """A pool name as it goes into a query string (spaces and unicode encoded)."""
    return quote(name, safe="")
