"""HTTP of the Kubernetes emulator: request paths to targets, discovery, dispatch of verbs, the
request handler with its faults and watch streams."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from azp_simulation.kube_emulator.admission import _add_warnings, _delete_warnings, _dry_run, _field_validation
from azp_simulation.kube_emulator.store import _foreign
from azp_simulation.kube_objects import (
    table,
)
from azp_simulation.kube_support import (
    GROUP_VERSIONS,
    RESOURCES,
    KubeCall,
    KubeError,
    Resource,
    injected_status,
    resource_for,
)
from azp_simulation.serving import TICK_SECONDS, Fault, FaultingHandler, FaultKind

if TYPE_CHECKING:
    from azp_simulation.kube_emulator.core import KubernetesEmulator


_TRUNCATED_DEFAULT = json.dumps(
    {
        "kind": "JobList",
        "apiVersion": "batch/v1",
        "metadata": {"resourceVersion": "12345"},
        "items": [{"metadata": {"name": "azp-linux-1000-abcde", "namespace": "azp-agents"}}],
    }
)


_HTML_PAGE = """<!DOCTYPE html>
<html><head><title>502 Bad Gateway</title></head>
<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>
"""


@dataclass(frozen=True)
class _Target:
    """Where a request goes: discovery, or a resource collection, item or subresource."""

    template: str
    resource: Resource | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    discovery: str | None = None

    def verb(self, method: str, query: Mapping[str, str]) -> str:
        if method in ("GET", "HEAD"):
            if self.name is not None:
                return "get"
            return "watch" if _truthy(query.get("watch")) else "list"
        if method == "POST":
            return "create"
        if method == "PUT":
            return "update"
        if method == "PATCH":
            return "patch"
        if method == "DELETE":
            return "delete" if self.name is not None else "deletecollection"
        return method.lower()

    def key(self, method: str, query: Mapping[str, str]) -> str:
        if self.resource is None:
            return f"{method} discovery"
        suffix = f"/{self.subresource}" if self.subresource else ""
        if self.name is None and method in ("GET", "HEAD"):
            suffix = "(watch)" if _truthy(query.get("watch")) else "(list)"
        return f"{method} {self.resource.plural}{suffix}"


def _resource_list(group: str, version: str) -> dict[str, Any]:
    resources = []
    for resource in RESOURCES:
        if resource.group != group or resource.version != version:
            continue
        verbs = list(resource.verbs)
        if "list" in verbs:
            verbs += ["watch", "deletecollection"] if "delete" in verbs else ["watch"]
        entry: dict[str, Any] = {
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": sorted(verbs),
            "storageVersionHash": base64.b64encode(hashlib.sha256(resource.qualified.encode()).digest()[:8]).decode(),
        }
        if resource.short_names:
            entry["shortNames"] = list(resource.short_names)
        if resource.plural in ("pods", "jobs"):
            entry["categories"] = ["all"]
        resources.append(entry)
        for sub in resource.subresources:
            resources.append(
                {
                    "name": f"{resource.plural}/{sub}",
                    "singularName": "",
                    "namespaced": resource.namespaced,
                    "kind": resource.kind,
                    "verbs": ["get"] if sub == "log" else ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def parse_target(path: str) -> _Target | None:
    """Which resource a URL path addresses, with its logged template; None for unknown paths."""
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 2 and segments[0] == "api":
        group, version, rest, base = "", segments[1], segments[2:], f"/api/{segments[1]}"
    elif len(segments) >= 3 and segments[0] == "apis":
        group, version, rest, base = segments[1], segments[2], segments[3:], f"/apis/{segments[1]}/{segments[2]}"
    else:
        return None
    if not rest:
        return None
    namespace = None
    template = base
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace = rest[1]
        rest = rest[2:]
        template += "/namespaces/{namespace}"
    resource = resource_for(group, version, rest[0])
    if resource is None or len(rest) > 3:
        return None
    if namespace is not None and not resource.namespaced:
        return None
    if namespace is None and resource.namespaced and len(rest) > 1:
        return None
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource is not None and subresource not in resource.subresources:
        return None
    template += f"/{resource.plural}"
    if name is not None:
        template += "/{name}"
    if subresource is not None:
        template += f"/{subresource}"
    return _Target(template=template, resource=resource, namespace=namespace, name=name, subresource=subresource)


class _PlainText(str):
    """A text/plain answer (pod logs)."""


class _Serialized(bytes):
    """A JSON answer already serialized."""


def _dump(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def _method_not_allowed() -> KubeError:
    return KubeError(405, "the server does not allow this method on the requested resource")


def _make_handler(emulator: KubernetesEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.emulator = emulator
    return Handler


@dataclass
class _CallState:
    method: str
    template: str
    path: str
    query: dict[str, str]
    key: str
    user: str | None = None
    dry_run: bool = False
    fault: FaultKind | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def record(self, status: int, now: float) -> KubeCall:
        return KubeCall(
            method=self.method,
            route=self.template,
            path=self.path,
            query=dict(self.query),
            status=status,
            user=self.user,
            time=now,
            key=self.key,
            dry_run=self.dry_run,
            fault=self.fault,
        )


def _admission_name(raw_body: bytes) -> str:
    """The object's name as an admission plugin's refusal names it: metadata.name, else generateName (names
    are generated after admission), else "Unknown" (k8s.io/apiserver/pkg/admission/errors.go,
    extractResourceName)."""
    try:
        metadata = json.loads(raw_body or b"{}").get("metadata") or {}
    except (ValueError, AttributeError):
        return "Unknown"
    return str(metadata.get("name") or metadata.get("generateName") or "Unknown")


def _call_state(
    method: str, path: str, *, raw_path: str, query: dict[str, str], target: _Target | None, found: bool
) -> tuple[_CallState, tuple[str, ...]]:
    """The record of a call and the names a fault may be injected under: the route template, the call's
    key ('GET jobs(list)'), the resource's plural and qualified names; discovery (`found`) or the path."""
    if target is not None:
        key = target.key(method, query)
        names: tuple[str, ...] = (
            target.template,
            key,
            key.split(" ", 1)[1],
            str(target.resource.plural if target.resource else ""),
            str(target.resource.qualified if target.resource else ""),
        )
    else:
        key = f"{method} discovery" if found else f"{method} {path}"
        names = ("discovery", path) if found else (path,)
    state = _CallState(
        method=method,
        template=target.template if target else path,
        path=raw_path,
        query=query,
        key=key,
        dry_run=query.get("dryRun") == "All",
    )
    return state, names


class _Handler(FaultingHandler):
    """Turns HTTP requests into emulator calls in the API server's order: faults (test-only),
    authentication, routing, authorization, then the handler."""

    emulator: KubernetesEmulator
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY each response waits ~40 ms.
    disable_nagle_algorithm = True

    def _serve(self, method: str) -> None:
        emulator = self.emulator
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        raw_body = self._read_body()
        path = parts.path.rstrip("/") or "/"
        target = parse_target(path)
        discovery = None if target is not None else emulator.discovery(path, self.headers.get("Host", ""))
        state, names = _call_state(
            method, path, raw_path=parts.path, query=query, target=target, found=discovery is not None
        )
        fault = emulator._take_fault(method, names)
        if fault is not None:
            state.fault = fault.kind
            if self._apply_fault(fault, state, raw_body):
                return

        user = emulator.authenticate(self.headers.get("Authorization"))
        if user is None:
            self._send_json(401, KubeError(401, "Unauthorized").status(), state)
            return
        state.user = user
        if discovery is not None:
            self._send_json(200, discovery, state)
            return
        if target is None or target.resource is None:
            self._send_json(
                404, KubeError(404, "the server could not find the requested resource", details={}).status(), state
            )
            return
        self._serve_resource(target, method=method, query=query, raw_body=raw_body, state=state, user=user)

    def _serve_resource(
        self, target: _Target, *, method: str, query: Mapping[str, str], raw_body: bytes, state: _CallState, user: str
    ) -> None:
        """Validate, authorize and carry out a request to a resource, and answer it."""
        emulator = self.emulator
        content_type = self.headers.get("Content-Type") or "application/json"
        if raw_body and "protobuf" in content_type:
            self._send_json(
                415,
                KubeError(
                    415,
                    "the body of the request was in an unknown format - accepted "
                    "media types include: application/json, application/yaml",
                ).status(),
                state,
            )
            return
        try:
            body = _parse_body(raw_body, content_type)
            verb = target.verb(method, query)
            emulator.authorize(user, target, verb)
            if verb in ("create", "update") and isinstance(body, dict) and emulator.validate_version:
                state.headers.update(_field_validation(body, query, emulator.validate_version))
            state.headers.update(_delete_warnings(target.resource, verb, query, body))
            if verb == "watch":
                self._stream_watch(target, query, state)
                return
            emulator._warnings.items = []
            status, payload = emulator.dispatch(
                method,
                target,
                query,
                body,
                user=user,
                content_type=content_type,
                accept=self.headers.get("Accept") or "application/json",
            )
        except KubeError as error:
            state.headers.update(error.headers)
            status, payload = error.code, error.status()
        _add_warnings(state.headers, emulator._take_warnings())
        emulator._deliver_hooks()
        self._send_payload(status, payload, state)

    def _send_payload(self, status: int, payload: Any, state: _CallState) -> None:
        """Answer with plain text (logs), an already serialized list, or JSON."""
        if isinstance(payload, _PlainText):
            self._send_raw(status, str(payload).encode(), "text/plain", state)
        elif isinstance(payload, _Serialized):
            self._send_raw(status, payload, "application/json", state)
        else:
            self._send_json(status, payload, state)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _stream_watch(self, target: _Target, query: Mapping[str, str], state: _CallState) -> None:
        self.emulator._record(state.record(200, self.emulator.clock()))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            for event in self.emulator.watch_events(target, query):
                chunk = json.dumps(event, separators=(",", ":")).encode() + b"\n"
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _apply_fault(self, fault: Fault, state: _CallState, raw_body: bytes) -> bool:
        """Carry out a fault; True when the request is answered (or dropped) by it. A status body's
        `{name}` becomes the name admission gives the object (see `_admission_name`)."""
        emulator = self.emulator
        if fault.kind == "delay":
            emulator._stopping.wait(fault.delay)
            return False
        if fault.kind == "status":
            if fault.retry_after is not None:
                state.headers["Retry-After"] = f"{fault.retry_after:g}"
            if fault.body is not None:
                body = fault.body.replace("{name}", _admission_name(raw_body))
                self._send_raw(fault.status, body.encode(), "application/json", state)
            else:
                self._send_json(fault.status, injected_status(fault.status), state)
            return True
        if fault.kind == "html":
            self._send_raw(200, (fault.body or _HTML_PAGE).encode(), "text/html", state)
            return True
        self.transport_fault(
            fault.kind,
            record=lambda status: emulator._record(state.record(status, emulator.clock())),
            hold=lambda: emulator._stopping.wait(fault.delay or emulator.hang_seconds),
            body=(fault.body or _TRUNCATED_DEFAULT).encode(),
            content_type="application/json",
        )
        return True

    def _send_json(self, status: int, payload: Any, state: _CallState) -> None:
        self._send_raw(status, _dump(payload), "application/json", state)

    def _send_raw(self, status: int, body: bytes, content_type: str, state: _CallState) -> None:
        self.emulator._record(state.record(status, self.emulator.clock()))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", "e0c8d4a0-4b0e-4a55-9d2e-6f1c3b7a9e21")
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid", "8f3a2c1d-7e6b-4d5a-9c8b-1a2b3c4d5e6f")
        for key, value in state.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and state.method != "HEAD":
            self.wfile.write(body)


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw.strip():
        return None
    try:
        if "yaml" in content_type:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as error:
        raise KubeError(400, f"the body of the request was in an unknown format: {error}") from None


def dispatch(
    self: KubernetesEmulator,
    method: str,
    target: _Target,
    query: Mapping[str, str],
    body: Any,
    *,
    user: str,
    content_type: str,
    accept: str,
) -> tuple[int, Any]:
    """Carry out one API request (lock taken here); returns status and JSON payload."""
    resource = target.resource
    assert resource is not None
    dry_run = _dry_run(method, query)
    with self._lock:
        if resource.plural == "selfsubjectaccessreviews":
            if method != "POST":
                raise _method_not_allowed()
            return 201, self._access_review(body, user)
        verb = target.verb(method, query)
        if verb not in resource.verbs and verb not in ("watch", "deletecollection"):
            raise _method_not_allowed()
        if target.subresource == "log":
            pod = self._existing(resource, target.namespace, str(target.name))
            return 200, _PlainText(self._pod_log(pod, query.get("container")))
        if target.subresource not in (None, "status"):
            raise KubeError(404, "the server could not find the requested resource")
        if verb == "get":
            return 200, copy.deepcopy(self._existing(resource, target.namespace, str(target.name)))
        if verb == "list":
            return 200, _serialized_list(self, resource, target, query, accept=accept)
        if verb == "create":
            if target.subresource:
                raise _method_not_allowed()
            return 201, self._create(resource, target.namespace, body, dry_run=dry_run)
        if verb in ("update", "patch", "delete"):
            current = self._existing(resource, target.namespace, str(target.name))
            answer = self._write(verb, resource, target, query, body, content_type=content_type, dry_run=dry_run)
            # Counted once the write succeeded: a refused write touched nothing.
            if not dry_run and _foreign(resource, current):
                self._foreign_writes += 1
            return answer
        if verb == "deletecollection":
            return 200, _delete_collection(self, resource, target, query, body, dry_run=dry_run)
    raise _method_not_allowed()


def _serialized_list(
    self: KubernetesEmulator, resource: Resource, target: _Target, query: Mapping[str, str], *, accept: str
) -> _Serialized:
    """A list (or kubectl's Table view of it), serialized here, under the lock, so the items need no copies."""
    listed = self._list(resource, target.namespace, query, copies=False)
    if "as=table" in accept.replace(" ", "").lower():
        return _Serialized(_dump(table(resource, listed["items"], now=self.clock(), list_meta=listed["metadata"])))
    return _Serialized(_dump(listed))


def _delete_collection(
    self: KubernetesEmulator, resource: Resource, target: _Target, query: Mapping[str, str], body: Any, *, dry_run: bool
) -> dict[str, Any]:
    """Delete every object the query selects; answers the list of them as they were."""
    listed = self._list(resource, target.namespace, query)
    for item in listed["items"]:
        if not dry_run and _foreign(resource, item):
            self._foreign_writes += 1
        self._delete(
            resource,
            item["metadata"].get("namespace"),
            item["metadata"]["name"],
            dict(body) if isinstance(body, dict) else {},
            dry_run=dry_run,
        )
    return listed


def _write(
    self: KubernetesEmulator,
    verb: str,
    resource: Resource,
    target: _Target,
    query: Mapping[str, str],
    body: Any,
    *,
    content_type: str,
    dry_run: bool,
) -> tuple[int, Any]:
    name = str(target.name)
    if verb == "update":
        return 200, self._update(
            resource, target.namespace, name, body, dry_run=dry_run, subresource=target.subresource
        )
    if verb == "patch":
        return 200, self._patch(
            resource,
            target.namespace,
            name,
            body,
            content_type=content_type,
            dry_run=dry_run,
            subresource=target.subresource,
        )
    options = dict(body) if isinstance(body, dict) else {}
    for key in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
        if key in query and key not in options:
            options[key] = query[key] if key != "orphanDependents" else _truthy(query[key])
    return self._delete(resource, target.namespace, name, options, dry_run=dry_run)


def discovery(self: KubernetesEmulator, path: str, host: str) -> dict[str, Any] | None:
    """The discovery document at `path`, or None."""
    major, minor = self.validate_version.split(".")[:2]
    if path == "/version":
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{self.validate_version}",
            "gitCommit": hashlib.sha1(self.validate_version.encode()).hexdigest(),
            "gitTreeState": "clean",
            "buildDate": "2024-04-17T17:27:03Z",
            "goVersion": "go1.22.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }
    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                    "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
                }
                for group, version in GROUP_VERSIONS
            ],
        }
    for group, version in [("", "v1"), *GROUP_VERSIONS]:
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if path == base:
            return _resource_list(group, version)
        if group and path == f"/apis/{group}":
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
            }
    return None


def watch_events(self: KubernetesEmulator, target: _Target, query: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Watch events for a collection: the current objects as ADDED, then changes until timeoutSeconds."""
    resource = target.resource
    assert resource is not None
    timeout = float(query.get("timeoutSeconds") or 30)
    deadline = time.monotonic() + min(timeout, 300.0)
    seen: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    first = True
    while not self._stopping.is_set():
        with self._lock:
            listed = self._list(resource, target.namespace, {k: v for k, v in query.items() if k != "continue"})
        current = {(i["metadata"].get("namespace", ""), i["metadata"]["name"]): i for i in listed["items"]}
        changes = []
        for key, item in current.items():
            item = {"kind": resource.kind, "apiVersion": resource.api_version, **item}
            version = item["metadata"]["resourceVersion"]
            if key not in seen:
                if (
                    not first
                    or query.get("resourceVersion") in (None, "", "0")
                    or int(version) > int(query.get("resourceVersion") or 0)
                ):
                    changes.append({"type": "ADDED", "object": item})
            elif seen[key][0] != version:
                changes.append({"type": "MODIFIED", "object": item})
            seen[key] = (version, item)
        for key in [k for k in seen if k not in current]:
            changes.append({"type": "DELETED", "object": seen.pop(key)[1]})
        first = False
        yield from changes
        if time.monotonic() >= deadline:
            return
        self._stopping.wait(TICK_SECONDS)
