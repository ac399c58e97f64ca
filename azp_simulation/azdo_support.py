"""Building blocks of the Azure DevOps emulator: wire formats, errors, api-version rules, routes,
throttling, the call log and statistics. No HTTP server and no world state here; injected faults are
shared with the Kubernetes emulator (azp_simulation/serving.py)."""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azp_simulation.serving import FaultKind as FaultKind

SCOPE_READ = "vso.agentpools"
SCOPE_MANAGE = "vso.agentpools_manage"
# The service owner GUID Azure DevOps Services reports for its core (TFS) service.
SERVICE_OWNER = "00025394-6065-48ca-87d9-7f5672854ef7"
LATEST_RELEASED_VERSION = (7, 1)
LATEST_PREVIEW_VERSION = (7, 2)
# GET routes the service answers without an api-version: KEDA's azure-pipelines scaler sends none on
# `pools?poolName=`/`pools?poolID=` and on `pools/{poolId}/jobrequests`, and works in production
# (kedacore/keda pkg/scalers/azure_pipelines_scaler.go; the reference, section 0). [inferred] from
# that client; every other route and method still needs one here.
VERSIONLESS_GET_ROUTES = frozenset({"pools", "pools/{poolId}/jobrequests"})


@dataclass(frozen=True)
class ServerProfile:
    """The REST API versions one Azure DevOps product answers, and the path its collections live under.

    Sources: the API-to-product mapping of the REST reference (MS:rest/api/azure/devops, "API and TFS version
    mapping": Azure DevOps Server 2020 = 6.0, Server 2022 = 7.0, Services = 7.1); the highest *preview* a server
    accepts is the one its out-of-range error names, e.g. Server 2020 answers "The latest REST API version this
    server supports is 6.1." (microsoft/azure-devops-extension-sample #161) and Server 2019 "... is 5.1." while
    5.1 calls had to carry -preview there (rfennell/AzurePipelines #1000). For Server 2022 the preview 7.1 is
    inferred by the same rule [inferred]. Collections are served under `/tfs/DefaultCollection` (the default
    virtual directory and collection of an on-premises install); Services serves `/{organization}`.
    Not emulated: Server updates (2020.1, 2022.1 and so on) that raise the versions, older servers (2019 and before).
    """

    name: str
    released: tuple[int, int]
    preview: tuple[int, int]
    collection: str | None
    """The path of the collection; None for Services, where the organization name is the path."""


SERVICES = ServerProfile("Azure DevOps Services", LATEST_RELEASED_VERSION, LATEST_PREVIEW_VERSION, None)
SERVER_PROFILES = {
    "2020": ServerProfile("Azure DevOps Server 2020", (6, 0), (6, 1), "tfs/DefaultCollection"),
    "2022": ServerProfile("Azure DevOps Server 2022", (7, 0), (7, 1), "tfs/DefaultCollection"),
}

_WEBAPI = "Microsoft.VisualStudio.Services.WebApi"
_SERVER = "Microsoft.TeamFoundation.Framework.Server"
_DISTRIBUTED_TASK = "Microsoft.TeamFoundation.DistributedTask.WebApi"
# Namespace (== assembly) of each exception type the emulator answers with; the rest are DistributedTask's.
_EXCEPTION_ASSEMBLIES = {
    "VssVersionNotSpecifiedException": _WEBAPI,
    "VssVersionOutOfRangeException": _WEBAPI,
    "VssInvalidPreviewVersionException": _WEBAPI,
    "VssInvalidApiVersionException": _WEBAPI,
    "VssRequestContentException": _WEBAPI,
    "VssResourceNotFoundException": _WEBAPI,
    "UnauthorizedRequestException": _SERVER,
    "AccessCheckException": _SERVER,
    "RequestBlockedException": _SERVER,
    "InternalServerErrorException": _SERVER,
}


def format_time(epoch: float) -> str:
    """UTC ISO-8601 the way the service writes it: 'Z', up to 7 fractional digits, trailing zeros cut."""
    moment = datetime.fromtimestamp(epoch, UTC)
    ticks = round((epoch - math.floor(epoch)) * 10_000_000)
    if ticks >= 10_000_000:
        # Rounding reached the next second: let datetime carry it.
        moment = datetime.fromtimestamp(math.floor(epoch) + 1, UTC)
        ticks = 0
    whole = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{ticks:07d}".rstrip("0")
    return f"{whole}.{fraction}Z" if fraction else f"{whole}Z"


def error_body(message: str, type_key: str, *, event_id: int = 3000) -> dict[str, Any]:
    """The service's JSON error shape: message, typeName ('Namespace.Type, Assembly'), typeKey."""
    if type_key.startswith("Argument"):
        type_name = f"System.{type_key}, mscorlib"
    else:
        assembly = _EXCEPTION_ASSEMBLIES.get(type_key, _DISTRIBUTED_TASK)
        type_name = f"{assembly}.{type_key}, {assembly}"
    return {
        "$id": "1",
        "innerException": None,
        "message": message,
        "typeName": type_name,
        "typeKey": type_key,
        "errorCode": 0,
        "eventId": event_id,
    }


class ApiError(Exception):
    """An HTTP error answer with the service's JSON body."""

    def __init__(self, status: int, message: str, type_key: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_key = type_key
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type_key)


_VERSION = re.compile(r"(?P<major>\d+)\.(?P<minor>\d+)(?P<preview>-preview(?:\.(?P<revision>\d+))?)?")


def requested_api_version(query_value: str | None, accept_header: str | None) -> str | None:
    """The api-version a request carries: the query parameter wins, else the Accept header's parameter."""
    if query_value is not None:
        return query_value.strip()
    for part in (accept_header or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "api-version":
            return value.strip()
    return None


def check_api_version(version: str | None, *, method: str, profile: ServerProfile = SERVICES) -> str:
    """Validate an api-version like the service (or the Server of `profile`) does; returns it or raises
    ApiError (400). A version above the profile's preview is out of range, one above its release needs -preview."""
    if version is None or version == "":
        raise ApiError(
            400,
            f'No api-version was supplied for the "{method}" request. The version must be supplied either as part '
            'of the Accept header (e.g. "application/json; api-version=1.0") or as a query parameter '
            "(e.g. '?api-version=1.0').",
            "VssVersionNotSpecifiedException",
        )
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ApiError(
            400,
            f"The api-version '{version}' is not in a valid format. Use a version such as '7.1' or '7.2-preview.1'.",
            "VssInvalidApiVersionException",
        )
    requested = (int(match.group("major")), int(match.group("minor")))
    preview = match.group("preview") is not None
    latest = profile.preview if preview else profile.released
    if requested > profile.preview or requested < (1, 0):
        raise ApiError(
            400,
            f"The requested REST API version of {version} is out of range for this server. The latest REST API "
            f"version this server supports is {profile.preview[0]}.{profile.preview[1]}.",
            "VssVersionOutOfRangeException",
        )
    if requested > latest:
        raise ApiError(
            400,
            f'The requested version "{version}" of the resource is under preview. The -preview flag must be '
            "supplied in the api-version for such requests. For example: "
            f'"{profile.preview[0]}.{profile.preview[1]}-preview"',
            "VssInvalidPreviewVersionException",
        )
    return version


@dataclass(frozen=True)
class Route:
    """One REST route: its template (as logged) and the methods it accepts."""

    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str]
    in_project: bool = False
    """Served below a project (`{org}/{project}/_apis/...`) rather than the organization."""

    @property
    def short(self) -> str:
        """The template without the API prefix, as call counts name it: 'pools/{poolId}/agents'."""
        return short_route(self.template)


def short_route(template: str) -> str:
    """'/_apis/distributedtask/pools/{poolId}' or 'pools/{poolId}' -> 'pools/{poolId}'."""
    text = template.strip().lstrip("/")
    for prefix in ("_apis/distributedtask/", "_apis/"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _route(template: str, *methods: str, in_project: bool = False) -> Route:
    regex = re.escape(template)
    for name in ("poolId", "agentId", "requestId", "buildId"):
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>[0-9]+)")
    return Route(
        template=template, pattern=re.compile(regex, re.IGNORECASE), methods=frozenset(methods), in_project=in_project
    )


ROUTES: tuple[Route, ...] = (
    _route("/_apis/connectionData", "GET"),
    _route("/_apis/distributedtask/pools", "GET"),
    _route("/_apis/distributedtask/pools/{poolId}", "GET"),
    _route("/_apis/distributedtask/pools/{poolId}/agents", "GET", "POST"),
    _route("/_apis/distributedtask/pools/{poolId}/agents/{agentId}", "GET", "PATCH", "PUT", "DELETE"),
    _route("/_apis/distributedtask/pools/{poolId}/agents/{agentId}/usercapabilities", "PUT"),
    _route("/_apis/distributedtask/pools/{poolId}/jobrequests", "GET"),
    _route("/_apis/distributedtask/pools/{poolId}/jobrequests/{requestId}", "GET"),
    _route("/_apis/hooks/subscriptions", "GET", "POST"),
    _route("/_apis/projects", "GET"),
    _route("/_apis/distributedtask/queues", "GET", in_project=True),
    _route("/_apis/build/builds/{buildId}/timeline", "GET", in_project=True),
)


def match_route(path: str, *, in_project: bool = False) -> tuple[Route, dict[str, int]] | None:
    """The route a path (below the organization, or below a project with `in_project`) belongs to, with its
    numeric ids. Organization routes are not served below a project, nor project routes without one."""
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is not None and route.in_project == in_project:
            return route, {key: int(value) for key, value in found.groupdict().items()}
    return None


@dataclass(frozen=True)
class RateLimit:
    """A TSTU-style budget per identity in a sliding window (reference section 7).

    `cost_per_call` is a flat cost or a map from short route ('pools/{poolId}/jobrequests', or
    'GET pools/{poolId}/jobrequests') to cost, with 'default' for the rest. Usage above
    `warning_ratio * limit` adds the X-RateLimit-* headers; above `limit` requests are delayed
    (`delay_seconds`, at most `max_delay`); above `block_ratio * limit` they get 429."""

    limit: float = 200.0
    window_seconds: float = 300.0
    cost_per_call: float | Mapping[str, float] = field(
        default_factory=lambda: {
            "default": 1.0,
            "pools/{poolId}/jobrequests": 4.0,
            "pools/{poolId}/agents": 2.0,
        }
    )
    warning_ratio: float = 0.8
    block_ratio: float = 1.25
    delay_seconds: float = 0.05
    max_delay: float = 30.0
    resource: str = "ATCPU"

    def cost(self, method: str, short: str) -> float:
        if isinstance(self.cost_per_call, (int, float)):
            return float(self.cost_per_call)
        table = self.cost_per_call
        for key in (f"{method} {short}", short, "default"):
            if key in table:
                return float(table[key])
        return 1.0


@dataclass(frozen=True)
class ThrottleDecision:
    """What the throttle says about one call: headers to add, a delay to hold, or a block."""

    headers: dict[str, str]
    delay: float = 0.0
    blocked: bool = False
    retry_after: int = 0


class Throttle:
    """Sliding-window usage per identity."""

    def __init__(self, policy: RateLimit) -> None:
        self.policy = policy
        self._usage: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def _expire(self, records: deque[tuple[float, float]], now: float) -> None:
        while records and records[0][0] <= now - self.policy.window_seconds:
            records.popleft()

    def usage(self, identity: str, now: float) -> float:
        with self._lock:
            records = self._usage.setdefault(identity, deque())
            self._expire(records, now)
            return sum(cost for _, cost in records)

    def charge(self, identity: str, *, method: str, short: str, now: float) -> ThrottleDecision:
        """Account for one call and decide how it is answered."""
        policy = self.policy
        cost = policy.cost(method, short)
        with self._lock:
            records = self._usage.setdefault(identity, deque())
            self._expire(records, now)
            used = sum(c for _, c in records)
            after = used + cost
            if after > policy.limit * policy.block_ratio:
                retry_after = self._seconds_until_below(records, now, policy.limit * policy.block_ratio - cost)
                headers = self._headers(remaining=0.0, reset=self._reset(records, now))
                headers["Retry-After"] = str(retry_after)
                return ThrottleDecision(headers=headers, blocked=True, retry_after=retry_after)
            records.append((now, cost))
            reset = self._reset(records, now)
            if after > policy.limit:
                over = (after - policy.limit) / (policy.limit * (policy.block_ratio - 1.0) or 1.0)
                delay = min(policy.max_delay, policy.delay_seconds * (1.0 + over))
                headers = self._headers(remaining=0.0, reset=reset)
                headers["X-RateLimit-Delay"] = f"{delay:.3f}"
                return ThrottleDecision(headers=headers, delay=delay)
            if after > policy.limit * policy.warning_ratio:
                return ThrottleDecision(headers=self._headers(remaining=policy.limit - after, reset=reset))
            return ThrottleDecision(headers={})

    def _reset(self, records: deque[tuple[float, float]], now: float) -> int:
        last = records[-1][0] if records else now
        return math.ceil(last + self.policy.window_seconds)

    def _seconds_until_below(self, records: deque[tuple[float, float]], now: float, target: float) -> int:
        total = sum(c for _, c in records)
        for stamp, cost in records:
            if total <= target:
                break
            total -= cost
            if total <= target:
                return max(1, math.ceil(stamp + self.policy.window_seconds - now))
        return max(1, math.ceil(self.policy.window_seconds))

    def _headers(self, *, remaining: float, reset: int) -> dict[str, str]:
        return {
            "X-RateLimit-Resource": self.policy.resource,
            "X-RateLimit-Limit": f"{self.policy.limit:g}",
            "X-RateLimit-Remaining": f"{max(0.0, remaining):g}",
            "X-RateLimit-Reset": str(reset),
        }


@dataclass(frozen=True)
class CallRecord:
    """One HTTP request as the emulator saw it."""

    method: str
    route: str
    path: str
    query: dict[str, str]
    status: int
    identity: str | None
    time: float
    fault: FaultKind | None = None

    @property
    def short(self) -> str:
        return short_route(self.route)


@dataclass
class RequestTiming:
    """When one job request was queued, assigned, picked up and finished (epoch seconds)."""

    request_id: int
    pool_id: int
    queue_time: float
    assign_time: float | None = None
    receive_time: float | None = None
    finish_time: float | None = None
    result: str | None = None


@dataclass
class EmulatorStats:
    """Counters of what happened in the emulated organization, plus per-request timings."""

    jobs_queued: int = 0
    jobs_assigned: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    jobs_canceled: int = 0
    jobs_aborted_by_agent_loss: int = 0
    busy_agent_deletes_refused: int = 0
    agents_registered: int = 0
    agents_deleted: int = 0
    timings: dict[int, RequestTiming] = field(default_factory=dict)

    def wait_times(self) -> list[float]:
        """Seconds from queue to receive of every request an agent picked up."""
        return [t.receive_time - t.queue_time for t in self.timings.values() if t.receive_time is not None]


SIGN_IN_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head><title>Azure DevOps Services | Sign In</title>
<meta http-equiv="X-UA-Compatible" content="IE=11;&#32;IE=10;&#32;IE=9;&#32;IE=8" /></head>
<body><p>Sign in to your account to continue to Azure DevOps.</p>
<a href="https://app.vssps.visualstudio.com/_signin?realm=dev.azure.com">Sign in</a></body>
</html>
"""

ClockFn = Callable[[], float]
