"""An emulator of the Kubernetes API server, its Job and garbage-collection controllers and a kubelet:
a real HTTP server on 127.0.0.1 that the official `kubernetes` Python client and `kubectl` use
unchanged through a kubeconfig it writes.

It follows the API conventions: discovery documents, typed lists with a resourceVersion, server-side
defaulting (uid, a global resourceVersion counter, creationTimestamp, generateName), metav1.Status
errors with the API server's messages, set-based label selectors and basic field selectors, limit and
continue, DeleteOptions propagation, dryRun=All, optimistic concurrency on update, merge, strategic and
JSON patches, strict schema validation (kubernetes-validate), optional RBAC by bearer token, and
kubectl's Table view. Controllers (run by `tick()`, in the background every 50 ms while serving) turn
Jobs into Pods, count them, enforce backoffLimit, activeDeadlineSeconds and ttlSecondsAfterFinished,
garbage-collect by ownerReferences, and a simulated kubelet schedules and starts pods, or leaves them
Pending for an image-pull failure or an unschedulable request.

Choices where the real server differs or the emulator simplifies:
- unknown fields on create and update follow the `fieldValidation` parameter as the API server's decoder
  does (k8s.io/apiserver handlers/create.go and update.go; KEP-2885 "Server Side Unknown Field
  Validation"): `Strict` answers 400 BadRequest `Job in version "v1" cannot be handled as a Job: strict
  decoding error: unknown field "spec.x"`, `Warn` (the default since 1.27) drops them and sends one
  `Warning: 299 - "unknown field \"spec.x\""` header per field, `Ignore` drops them silently. Duplicate
  JSON keys (also reported by Strict) are not detected: the body is parsed before validation;
- a list with limit/continue pages through the current state, not a snapshot at the first page's
  resourceVersion; continue tokens never expire;
- there is one ResourceVersion counter for all kinds, and no watch history: a watch streams the
  current objects as ADDED, then changes it sees every 50 ms;
- strategic merge patch knows the merge keys of the fields the reconciler's objects use only;
- pods get no job-tracking finalizer; a Job counts a pod deleted before finishing as failed.

Differences from a real kube-apiserver v1.35.4 found by tests/realkube/test_differential.py and not
fixed yet (the test lists them in KNOWN and fails on any other): bad base64 in a Secret is 422 (real:
400 at decoding); a bad dryRun value is 400 (real: 422 Invalid CreateOptions); an update without
metadata.resourceVersion is accepted (real: 422 "must be specified for an update"); deleting a Job
without propagationPolicy sends no Warning header; the messages of a failed JSON-patch test and of
immutable Job template and pod spec changes differ in their detail.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from azp_simulation.kube_objects import (
    default_object,
    immutable_causes,
    json_patch,
    merge_patch,
    normalize_times,
    strategic_merge_patch,
    table,
    validate_object,
)
from azp_simulation.kube_support import (
    GROUP_VERSIONS,
    KUBE_ALPHABET,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RESOURCE_BY_KIND,
    RESOURCE_BY_PLURAL,
    RESOURCES,
    KubeCall,
    KubeError,
    RbacSubject,
    Requirement,
    Resource,
    SelectorError,
    _field_path,
    already_exists,
    conflict,
    forbidden,
    format_time,
    injected_status,
    invalid,
    labels_match,
    not_found,
    parse_field_selector,
    parse_label_selector,
    parse_quantity,
    rbac_subject_from_file,
    resource_for,
    success_status,
)
from azp_simulation.kube_support import _validator as _schema_validator
from azp_simulation.serving import TICK_SECONDS, Fault, FaultingHandler, FaultKind, ServedEmulator

log = logging.getLogger("azp_simulation.kube")

__all__ = ["KubeCall", "KubeError", "KubernetesEmulator", "RbacSubject", "rbac_subject_from_file"]

ADMIN_USER = "kubernetes-admin"
IMAGE_MODES = ("ok", "ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "Unschedulable")
ImagePolicy = Callable[[str], str] | Mapping[str, str]
PodHook = Callable[[dict[str, Any]], None]

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


@dataclass
class _PodRuntime:
    """What the simulated kubelet remembers about one pod."""

    created: float
    node: str | None = None
    started: float | None = None
    running_notified: bool = False
    deleted_notified: bool = False
    remove_at: float | None = None
    restarts: int = 0
    next_restart: float | None = None
    events: set[str] = field(default_factory=set)


@dataclass
class _JobRuntime:
    """What the Job controller remembers about one Job: which pods it has seen and counted."""

    start: float | None = None
    finished_at: float | None = None
    known: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)


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


class KubernetesEmulator(ServedEmulator):
    """An emulated cluster: API server, Job and GC controllers, scheduler and kubelet, in one process.

    Set-up helpers (`add_namespace`, `add_secret`, `create`) and observers (`objects`, `get`, `calls`)
    are in-process calls; the reconciler uses the HTTP server started with `start()`. One re-entrant
    lock guards the state; hooks (`on_pod_running`, `on_pod_deleted`) are called outside it."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        validate_version: str = "1.30.0",
        ttl_controller: bool = True,
        image_policy: ImagePolicy | None = None,
        rbac: Mapping[str, RbacSubject] | None = None,
        start_delay: float = 0.2,
        termination_delay: float = 0.1,
        node_capacity: Mapping[str, str] | None = None,
        nodes: Mapping[str, Mapping[str, str]] | None = None,
        node_taints: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
        emit_events: bool = True,
        auto_tick: bool = True,
        hang_seconds: float = 35.0,
        event_ttl: float = 3600.0,
        seed: int | None = None,
    ) -> None:
        self.clock = clock
        self.validate_version = validate_version
        self.ttl_controller = ttl_controller
        self.image_policy = image_policy
        self.rbac = dict(rbac) if rbac is not None else None
        self.start_delay = start_delay
        self.termination_delay = termination_delay
        self.node_capacity = {"cpu": "16", "memory": "64Gi", **(node_capacity or {})}
        self.emit_events = emit_events
        self.auto_tick = auto_tick
        self.hang_seconds = hang_seconds
        self.event_ttl = event_ttl
        self._event_times: deque[tuple[float, tuple[str, str], str]] = deque()
        self.on_pod_running: PodHook | None = None
        self.on_pod_deleted: PodHook | None = None
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r.plural: {} for r in RESOURCES if r.stored}
        self._by_uid: dict[str, tuple[str, tuple[str, str]]] = {}
        # Pods by the uid of their controller, so the Job controller need not scan every pod.
        self._owned_pods: dict[str, set[tuple[str, str]]] = {}
        self._pod_controller: dict[tuple[str, str], str] = {}
        self._pods: dict[str, _PodRuntime] = {}
        self._jobs: dict[str, _JobRuntime] = {}
        self._resource_version = 1000
        self._calls: list[KubeCall] = []
        self._foreign_writes = 0
        self._hooks: list[tuple[PodHook, dict[str, Any]]] = []
        self._pod_counter = 0
        self._init_serving()
        node_labels = nodes or {
            f"emulator-node-{index}": {"node.kubernetes.io/instance-type": "standard-16"} for index in (1, 2, 3)
        }
        with self._lock:
            for index, (name, labels) in enumerate(node_labels.items()):
                self._add_node(name, dict(labels), index, [dict(t) for t in (node_taints or {}).get(name, ())])
            for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
                self.add_namespace(namespace)

    name = "kube-emulator"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    def write_kubeconfig(self, path: Path | str, *, token: str | None = None, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server (plain http, optional bearer token); returns its path."""
        target = Path(path)
        user: dict[str, Any] = {"token": token} if token else {}
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.base_url}}],
            "users": [{"name": "emulator", "user": user}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
            ],
            "current-context": "emulator",
            "preferences": {},
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return target

    # World set-up and observation

    def add_namespace(self, name: str, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create a namespace (no-op if it exists); returns it."""
        with self._lock:
            existing = self._objects["namespaces"].get(("", name))
            if existing is not None:
                return copy.deepcopy(existing)
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
            return self._create(RESOURCE_BY_PLURAL["namespaces"], None, body, dry_run=False)

    def add_secret(
        self, namespace: str, name: str, data: Mapping[str, str], *, labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Create (or replace) an Opaque Secret from plain-text values."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        with self._lock:
            self.add_namespace(namespace)
            self._objects["secrets"].pop((namespace, name), None)
            return self._create(RESOURCE_BY_PLURAL["secrets"], namespace, body, dry_run=False)

    def add_configmap(self, namespace: str, name: str, data: Mapping[str, str]) -> dict[str, Any]:
        """Create (or replace) a ConfigMap."""
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}
        with self._lock:
            self.add_namespace(namespace)
            self._objects["configmaps"].pop((namespace, name), None)
            return self._create(RESOURCE_BY_PLURAL["configmaps"], namespace, body, dry_run=False)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create any supported object as the API would (defaulting, validation); raises KubeError."""
        resource = RESOURCE_BY_KIND.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
        if resource is None or not resource.stored:
            raise KubeError(400, f"no kind {obj.get('kind')!r} is registered for version {obj.get('apiVersion')!r}")
        namespace = (obj.get("metadata") or {}).get("namespace") or ("default" if resource.namespaced else None)
        with self._lock:
            created = self._create(resource, namespace, copy.deepcopy(dict(obj)), dry_run=False)
        self._deliver_hooks()
        return created

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One stored object (a copy), or None."""
        with self._lock:
            found = self._objects[resource].get((namespace or "", name))
            return copy.deepcopy(found) if found is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the stored objects of one resource ('jobs', 'pods', 'events', 'leases', 'secrets',
        'namespaces', ...), in one namespace or all, in API order (namespace, name)."""
        with self._lock:
            store = self._objects[resource]
            return [copy.deepcopy(store[key]) for key in sorted(store) if namespace is None or key[0] == namespace]

    def delete(self, resource: str, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        """Delete as the API would with this propagation policy; False when it did not exist."""
        with self._lock:
            try:
                self._delete(RESOURCE_BY_PLURAL[resource], namespace, name, {"propagationPolicy": propagation})
            except KubeError:
                return False
        self._deliver_hooks()
        return True

    def finish_pod(self, namespace: str, name: str, *, exit_code: int = 0) -> bool:
        """The pod's containers exit with `exit_code`: Succeeded or Failed (restartPolicy OnFailure
        restarts a failed container instead). False when the pod is gone or already finished."""
        with self._lock:
            pod = self._objects["pods"].get((namespace, name))
            if pod is None or pod["status"].get("phase") in ("Succeeded", "Failed"):
                return False
            now = self.clock()
            if exit_code != 0 and pod["spec"].get("restartPolicy") == "OnFailure":
                self._restart_containers(pod, now, exit_code=exit_code, reason="Error")
            else:
                self._terminate_pod(pod, now, exit_code=exit_code)
            self._sync_owner_job(pod, now)
        self._deliver_hooks()
        return True

    def set_termination_message(self, namespace: str, name: str, container: str, message: str) -> bool:
        """What a container wrote to its terminationMessagePath, shown in its terminated state (as the
        kubelet does when it exits). False when the pod or a terminated container of that name is gone."""
        with self._lock:
            pod = self._objects["pods"].get((namespace, name))
            if pod is None:
                return False
            status = pod["status"]
            for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                terminated = (entry.get("state") or {}).get("terminated")
                if entry.get("name") == container and terminated is not None:
                    # The kubelet keeps at most 4096 bytes of it.
                    terminated["message"] = message[:4096]
                    self._touch(pod)
                    return True
        return False

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> bool:
        """Force a pod's phase: 'Running' starts it now, 'Succeeded'/'Failed' finish it (exit 0/1)."""
        if phase in ("Succeeded", "Failed"):
            return self.finish_pod(namespace, name, exit_code=0 if phase == "Succeeded" else 1)
        with self._lock:
            pod = self._objects["pods"].get((namespace, name))
            if pod is None:
                return False
            now = self.clock()
            if phase == "Running":
                runtime = self._pods[pod["metadata"]["uid"]]
                runtime.node = runtime.node or self._schedule(pod, now)
                self._run_pod(pod, runtime, now)
            else:
                pod["status"]["phase"] = phase
                self._touch(pod)
        self._deliver_hooks()
        return True

    def resolve_env(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        """The environment a container sees: envFrom, literal values with $(VAR) expansion, fieldRef,
        secretKeyRef and configMapKeyRef (missing optional references are left out)."""
        namespace = str(pod.get("metadata", {}).get("namespace", ""))
        env: dict[str, str] = {}
        with self._lock:
            for source in container.get("envFrom") or []:
                prefix = str(source.get("prefix", ""))
                if source.get("secretRef"):
                    values = self._secret_values(namespace, str(source["secretRef"].get("name")))
                elif source.get("configMapRef"):
                    values = self._configmap_values(namespace, str(source["configMapRef"].get("name")))
                else:
                    values = None
                for key, value in (values or {}).items():
                    env[prefix + key] = value
            for entry in container.get("env") or []:
                name = str(entry.get("name"))
                if "value" in entry:
                    env[name] = _expand(str(entry.get("value") or ""), env)
                    continue
                resolved = self._value_from(pod, namespace, entry.get("valueFrom") or {})
                if resolved is not None:
                    env[name] = resolved
        return env

    def read_secret_file(self, pod: Mapping[str, Any], container: Mapping[str, Any], path: str) -> str | None:
        """The content of a file a secret (or projected secret) volume puts at `path` in the container."""
        volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
        namespace = str(pod.get("metadata", {}).get("namespace", ""))
        with self._lock:
            for mount in container.get("volumeMounts") or []:
                mount_path = str(mount.get("mountPath", "")).rstrip("/")
                volume = volumes.get(mount.get("name")) or {}
                files = self._volume_files(namespace, volume)
                if files is None:
                    continue
                sub_path = mount.get("subPath")
                if sub_path:
                    if path == mount_path and sub_path in files:
                        return files[sub_path]
                    continue
                if path.startswith(mount_path + "/"):
                    relative = path[len(mount_path) + 1 :]
                    if relative in files:
                        return files[relative]
        return None

    @property
    def touched_foreign(self) -> int:
        """How many API writes (update, patch, delete) hit objects without the label
        app.kubernetes.io/managed-by=azp-agents (Leases and Events excepted)."""
        with self._lock:
            return self._foreign_writes

    # Call log and faults

    def calls(self) -> list[KubeCall]:
        """Every HTTP request served so far, in order."""
        with self._lock:
            return list(self._calls)

    def call_counts(self) -> dict[str, int]:
        """Requests per key: 'POST jobs', 'GET jobs(list)', 'GET jobs', 'DELETE jobs', 'PUT leases',
        'POST selfsubjectaccessreviews', 'GET pods/log', 'GET discovery' (see KubeCall.key)."""
        counts: dict[str, int] = {}
        for call in self.calls():
            counts[call.key] = counts.get(call.key, 0) + 1
        return counts

    def write_calls(self) -> int:
        """How many requests could change state: not GET/HEAD, not dryRun=All, not an access review."""
        return sum(
            1
            for call in self.calls()
            if call.method not in ("GET", "HEAD") and not call.dry_run and "selfsubjectaccessreviews" not in call.key
        )

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _take_fault(self, method: str, names: Sequence[str]) -> Fault | None:
        return self._faults.take(method, names)

    def _record(self, call: KubeCall) -> None:
        with self._lock:
            self._calls.append(call)

    # Storage primitives (lock held)

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _touch(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = self._next_version()

    def _store_object(self, resource: Resource, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        key = (metadata.get("namespace", ""), metadata["name"])
        self._objects[resource.plural][key] = obj
        self._by_uid[metadata["uid"]] = (resource.plural, key)
        if resource.plural == "pods":
            self._index_pod(key, _controller_uid(obj))
        elif resource.plural == "events":
            self._event_times.append((self.clock(), key, metadata["uid"]))

    def _index_pod(self, key: tuple[str, str], controller: str | None) -> None:
        previous = self._pod_controller.pop(key, None)
        if previous is not None:
            self._owned_pods.get(previous, set()).discard(key)
        if controller is not None:
            self._pod_controller[key] = controller
            self._owned_pods.setdefault(controller, set()).add(key)

    def _drop_object(self, resource: Resource, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        self._objects[resource.plural].pop((metadata.get("namespace", ""), metadata["name"]), None)
        self._by_uid.pop(metadata["uid"], None)
        if resource.plural == "pods":
            self._index_pod((metadata.get("namespace", ""), metadata["name"]), None)
            runtime = self._pods.pop(metadata["uid"], None)
            if runtime is not None and not runtime.deleted_notified and not _finished_pod(obj):
                self._queue_hook(self.on_pod_deleted, obj)
        elif resource.plural == "jobs":
            self._jobs.pop(metadata["uid"], None)

    def _queue_hook(self, hook: PodHook | None, pod: dict[str, Any]) -> None:
        if hook is not None:
            self._hooks.append((hook, copy.deepcopy(pod)))

    def _deliver_hooks(self) -> None:
        with self._lock:
            hooks, self._hooks = self._hooks, []
        for hook, pod in hooks:
            try:
                hook(pod)
            except Exception:
                log.exception("pod hook failed for %s", pod["metadata"]["name"])

    def _generate_name(self, resource: Resource, namespace: str, prefix: str) -> str:
        base = prefix[:58]
        for _ in range(100):
            name = base + "".join(self._random.choice(KUBE_ALPHABET) for _ in range(5))
            if (namespace, name) not in self._objects[resource.plural]:
                return name
        raise KubeError(409, f"failed to generate a unique name with prefix {prefix!r}", reason="AlreadyExists")

    def _require_namespace(self, resource: Resource, namespace: str | None, *, creating: bool, name: str) -> None:
        if not resource.namespaced or namespace is None:
            return
        found = self._objects["namespaces"].get(("", namespace))
        if found is None:
            raise not_found(RESOURCE_BY_PLURAL["namespaces"], namespace)
        if creating and found["status"].get("phase") == "Terminating":
            raise KubeError(
                403,
                f'{resource.qualified} "{name}" is forbidden: unable to create new content in namespace '
                f"{namespace} because it is being terminated",
                details={
                    "name": name,
                    "group": resource.group,
                    "kind": resource.plural,
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    # API operations (lock held)

    def _create(
        self, resource: Resource, namespace: str | None, body: Any, *, dry_run: bool, validate: bool = True
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise KubeError(400, "the body of the request was in an unknown format")
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        if body["apiVersion"] != resource.api_version or body["kind"] != resource.kind:
            raise KubeError(
                400,
                f"the API version in the data ({body['apiVersion']}) does not match the expected API version "
                f"({resource.api_version})"
                if body["apiVersion"] != resource.api_version
                else f"the kind in the data ({body['kind']}) does not match the expected kind ({resource.kind})",
            )
        metadata = body.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise KubeError(400, "metadata must be an object")
        if resource.namespaced:
            if metadata.get("namespace") and metadata["namespace"] != namespace:
                raise KubeError(
                    400, "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        if validate:
            validate_object(resource, body, version=self.validate_version)
        if not metadata.get("name"):
            metadata["name"] = self._generate_name(resource, namespace or "", str(metadata["generateName"]))
        name = metadata["name"]
        self._require_namespace(resource, namespace, creating=True, name=name)
        if (namespace or "", name) in self._objects[resource.plural]:
            raise already_exists(resource, name)
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation", "selfLink"):
            metadata.pop(key, None)
        now = self.clock()
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = format_time(now)
        if resource.plural in ("jobs", "pods"):
            metadata["generation"] = 1
        default_object(resource, body)
        normalize_times(resource, body)
        # The JSON shape the server returns starts with kind and apiVersion, then metadata.
        obj = {"kind": resource.kind, "apiVersion": resource.api_version, **body}
        if dry_run:
            return copy.deepcopy(obj)
        self._touch(obj)
        self._store_object(resource, obj)
        if resource.plural == "pods":
            self._pods[metadata["uid"]] = _PodRuntime(created=now)
        elif resource.plural == "jobs":
            self._jobs[metadata["uid"]] = _JobRuntime()
            self._sync_job(obj, now)
        return copy.deepcopy(obj)

    def _existing(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        self._require_namespace(resource, namespace, creating=False, name=name)
        found = self._objects[resource.plural].get((namespace or "", name))
        if found is None:
            raise not_found(resource, name)
        return found

    def _update(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        dry_run: bool,
        subresource: str | None,
        from_patch: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise KubeError(400, "the body of the request was in an unknown format")
        current = self._existing(resource, namespace, name)
        metadata = body.setdefault("metadata", {})
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        if metadata.get("name", name) != name:
            raise KubeError(
                400, f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
            )
        if resource.namespaced and metadata.get("namespace", namespace) != namespace:
            raise KubeError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )
        wanted_version = metadata.get("resourceVersion")
        if wanted_version and wanted_version != current["metadata"]["resourceVersion"]:
            raise conflict(resource, name)
        if metadata.get("uid") and metadata["uid"] != current["metadata"]["uid"]:
            raise conflict(
                resource,
                name,
                f"Precondition failed: UID in precondition: {metadata['uid']}, UID in "
                f"object meta: {current['metadata']['uid']}",
            )
        if subresource == "status":
            updated = copy.deepcopy(current)
            updated["status"] = copy.deepcopy(body.get("status") or {})
        else:
            updated = copy.deepcopy(body)
            updated["metadata"] = {**copy.deepcopy(metadata), "name": name}
            if resource.namespaced:
                updated["metadata"]["namespace"] = namespace
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if key in current["metadata"]:
                    updated["metadata"][key] = current["metadata"][key]
                else:
                    updated["metadata"].pop(key, None)
            if resource.plural in ("jobs", "pods", "namespaces"):
                updated["status"] = copy.deepcopy(current.get("status") or {})
            if resource.plural == "namespaces":
                updated["spec"] = copy.deepcopy(current.get("spec") or {})
            if resource.plural == "pods" and current["spec"].get("nodeName"):
                updated.setdefault("spec", {})["nodeName"] = current["spec"]["nodeName"]
            updated["metadata"].pop("resourceVersion", None)
            normalize_times(resource, updated)
            validate_object(resource, updated, version=self.validate_version, creating=False)
            causes = immutable_causes(resource, current, updated)
            if causes:
                raise invalid(resource, name, causes)
            if updated.get("spec") != current.get("spec") and "generation" in current["metadata"]:
                updated["metadata"]["generation"] = int(current["metadata"]["generation"]) + 1
        updated = {"kind": resource.kind, "apiVersion": resource.api_version, **updated}
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if updated == current:
            return copy.deepcopy(current)
        if dry_run:
            return updated
        self._touch(updated)
        if (
            updated["metadata"].get("deletionTimestamp")
            and not updated["metadata"].get("finalizers")
            and resource.plural not in ("pods", "namespaces")
        ):
            self._drop_object(resource, updated)
            return copy.deepcopy(updated)
        self._store_object(resource, updated)
        return copy.deepcopy(updated)

    def _patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str,
        dry_run: bool,
        subresource: str | None,
    ) -> dict[str, Any]:
        current = self._existing(resource, namespace, name)
        media = content_type.split(";")[0].strip().lower()
        if media == "application/merge-patch+json":
            patched = merge_patch(current, patch)
        elif media == "application/strategic-merge-patch+json":
            patched = strategic_merge_patch(current, patch)
        elif media == "application/json-patch+json":
            patched = json_patch(current, patch)
        else:
            raise KubeError(
                415,
                f"the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {media or 'no Content-Type'})",
            )
        if not isinstance(patched, dict):
            raise KubeError(422, f'{resource.kind_qualified} "{name}" is invalid: the patch replaced the object')
        patched_meta = patched.setdefault("metadata", {})
        if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
            patched_meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self._update(
            resource, namespace, name, patched, dry_run=dry_run, subresource=subresource, from_patch=True
        )

    def _delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any],
        *,
        dry_run: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        current = self._existing(resource, namespace, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
            raise conflict(
                resource,
                name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID "
                f"in object meta: {current['metadata']['uid']}",
            )
        if (
            preconditions.get("resourceVersion")
            and preconditions["resourceVersion"] != current["metadata"]["resourceVersion"]
        ):
            raise conflict(
                resource,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                f"{current['metadata']['resourceVersion']}",
            )
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options.get("orphanDependents") else "Background"
        if policy is None:
            # batch/v1 Jobs orphan their pods by default, for compatibility; everything else is Background.
            policy = "Orphan" if resource.plural == "jobs" else "Background"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise invalid(
                resource,
                name,
                [
                    _cause(
                        "propagationPolicy",
                        f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan"',
                    )
                ],
            )
        now = self.clock()
        obj = copy.deepcopy(current)
        metadata = obj["metadata"]
        if metadata.get("deletionTimestamp"):
            return 200, obj
        if resource.plural == "namespaces":
            metadata["deletionTimestamp"] = format_time(now)
            obj["status"]["phase"] = "Terminating"
            if not dry_run:
                self._touch(obj)
                self._store_object(resource, obj)
            return 200, copy.deepcopy(obj)
        if resource.plural == "pods":
            return 200, self._delete_pod(obj, now, options, dry_run=dry_run)
        finalizers = list(metadata.get("finalizers") or [])
        if policy == "Foreground" and self._dependents(metadata["uid"]):
            finalizers.append("foregroundDeletion")
        elif policy == "Orphan" and self._dependents(metadata["uid"]):
            finalizers.append("orphan")
        if finalizers:
            metadata["finalizers"] = finalizers
            metadata["deletionTimestamp"] = format_time(now)
            metadata["deletionGracePeriodSeconds"] = 0
            if "generation" in metadata:
                metadata["generation"] = int(metadata["generation"]) + 1
            if not dry_run:
                self._touch(obj)
                self._store_object(resource, obj)
            return 200, copy.deepcopy(obj)
        if not dry_run:
            self._drop_object(resource, current)
        return 200, success_status(resource, name, metadata["uid"])

    def _delete_pod(
        self, pod: dict[str, Any], now: float, options: Mapping[str, Any], *, dry_run: bool
    ) -> dict[str, Any]:
        grace = options.get("gracePeriodSeconds")
        grace = int(grace) if grace is not None else int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        runtime = self._pods.get(pod["metadata"]["uid"])
        immediate = grace == 0 or not pod["spec"].get("nodeName") or _finished_pod(pod)
        if dry_run:
            return pod
        if immediate:
            self._drop_object(RESOURCE_BY_PLURAL["pods"], pod)
            return pod
        pod["metadata"]["deletionTimestamp"] = format_time(now + grace)
        pod["metadata"]["deletionGracePeriodSeconds"] = grace
        self._touch(pod)
        self._store_object(RESOURCE_BY_PLURAL["pods"], pod)
        if runtime is not None:
            runtime.remove_at = now + min(float(grace), self.termination_delay)
            if not runtime.deleted_notified:
                runtime.deleted_notified = True
                self._queue_hook(self.on_pod_deleted, pod)
        return copy.deepcopy(pod)

    def _dependents(self, owner_uid: str) -> list[tuple[Resource, dict[str, Any]]]:
        found = []
        for plural, store in self._objects.items():
            for obj in store.values():
                if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or []):
                    found.append((RESOURCE_BY_PLURAL[plural], obj))
        return found

    def _list(
        self, resource: Resource, namespace: str | None, query: Mapping[str, str], *, copies: bool = True
    ) -> dict[str, Any]:
        """A typed list; with copies=False the items share the stored objects (serialize under the lock)."""
        try:
            labels = parse_label_selector(query.get("labelSelector", ""))
            fields = parse_field_selector(query.get("fieldSelector", ""), resource)
        except SelectorError as error:
            raise KubeError(400, str(error)) from None
        if namespace is not None:
            self._require_namespace(resource, namespace, creating=False, name="")
        store = self._objects[resource.plural]
        keys = sorted(k for k in store if namespace is None or k[0] == namespace)
        start = _decode_continue(query.get("continue", ""))
        if start is not None:
            keys = [k for k in keys if f"{k[0]}/{k[1]}" > start]
        items = [store[k] for k in keys if _selected(store[k], labels, fields)]
        limit = _non_negative_int(query.get("limit", "0"), "limit")
        list_meta: dict[str, Any] = {"resourceVersion": str(self._resource_version)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            list_meta["continue"] = _encode_continue(
                f"{last.get('namespace', '')}/{last['name']}", self._resource_version
            )
            list_meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": list_meta,
            # Items of a typed list carry no kind/apiVersion, as on a real API server.
            "items": [
                {k: copy.deepcopy(v) if copies else v for k, v in item.items() if k not in ("kind", "apiVersion")}
                for item in items
            ],
        }

    def _access_review(self, body: Any, user: str) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise invalid(
                RESOURCE_BY_PLURAL["selfsubjectaccessreviews"],
                "",
                [_cause("spec", "Invalid value: resourceAttributes or nonResourceAttributes is required")],
            )
        attributes = body["spec"].get("resourceAttributes")
        subject = self._subject(user)
        if attributes is None:
            allowed, reason = subject is None, "" if subject is not None else "no RBAC emulation: everything allowed"
        else:
            resource = str(attributes.get("resource", ""))
            if attributes.get("subresource"):
                resource += "/" + str(attributes["subresource"])
            verb = str(attributes.get("verb", ""))
            group = str(attributes.get("group", ""))
            namespace = attributes.get("namespace") or None
            if subject is None:
                allowed, reason = True, "no RBAC emulation: everything allowed"
            else:
                allowed = subject.allows(
                    verb=verb, group=group, resource=resource, namespace=namespace, name=attributes.get("name")
                )
                scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
                reason = (
                    f'RBAC: allowed by a rule granting "{verb}" on "{resource}" in API group "{group}" {scope}'
                    if allowed
                    else f'RBAC: no rule grants "{verb}" on "{resource}" in API group "{group}" {scope}'
                )
        return {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": copy.deepcopy(body["spec"]),
            "status": {"allowed": allowed, "reason": reason} if allowed or reason else {"allowed": False},
        }

    def _subject(self, user: str) -> RbacSubject | None:
        if self.rbac is None:
            return None
        return next((s for s in self.rbac.values() if s.name == user), None)

    def authenticate(self, authorization: str | None) -> str | None:
        """The user a request acts as; None when RBAC mode refuses the credentials (401)."""
        token = ""
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        if self.rbac is None:
            subject = None
        else:
            subject = self.rbac.get(token)
            if subject is None:
                return None
        return subject.name if subject is not None else ADMIN_USER

    def authorize(self, user: str, target: _Target, verb: str) -> None:
        """Raise 403 Forbidden when RBAC mode does not grant the request."""
        subject = self._subject(user)
        resource = target.resource
        if subject is None or resource is None or resource.plural == "selfsubjectaccessreviews":
            return
        plural = f"{resource.plural}/{target.subresource}" if target.subresource else resource.plural
        if not subject.allows(
            verb=verb, group=resource.group, resource=plural, namespace=target.namespace, name=target.name
        ):
            shown = (
                resource
                if not target.subresource
                else Resource(plural, resource.kind, resource.group, resource.version, resource.namespaced)
            )
            raise forbidden(shown, user=user, verb=verb, namespace=target.namespace, name=target.name)

    def dispatch(
        self,
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
        dry_run = query.get("dryRun") == "All"
        if "dryRun" in query and query["dryRun"] not in ("All", ""):
            raise KubeError(400, f'Invalid dryRun value: "{query["dryRun"]}"; supported values: "All"')
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
                listed = self._list(resource, target.namespace, query, copies=False)
                if "as=table" in accept.replace(" ", "").lower():
                    shown = table(resource, listed["items"], now=self.clock(), list_meta=listed["metadata"])
                    return 200, _Serialized(_dump(shown))
                # Serialized here, under the lock, so the items need no copies.
                return 200, _Serialized(_dump(listed))
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
                return 200, listed
        raise _method_not_allowed()

    def _write(
        self,
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

    def _pod_log(self, pod: Mapping[str, Any], container: str | None) -> str:
        phase = pod["status"].get("phase")
        if phase == "Pending":
            name = pod["metadata"]["name"]
            raise KubeError(
                400, f'container "{container or "agent"}" in pod "{name}" is waiting to start: ContainerCreating'
            )
        return f"simulated log of pod {pod['metadata']['name']} ({phase})\n"

    # Environment and volumes (lock held)

    def _secret_values(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self._objects["secrets"].get((namespace, name))
        if secret is None:
            return None
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}

    def _configmap_values(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self._objects["configmaps"].get((namespace, name))
        return dict(found.get("data") or {}) if found is not None else None

    def _value_from(self, pod: Mapping[str, Any], namespace: str, source: Mapping[str, Any]) -> str | None:
        if source.get("fieldRef"):
            return _field_value(pod, str(source["fieldRef"].get("fieldPath", "")))
        for ref_key, lookup in (("secretKeyRef", self._secret_values), ("configMapKeyRef", self._configmap_values)):
            ref = source.get(ref_key)
            if ref:
                values = lookup(namespace, str(ref.get("name")))
                return (values or {}).get(str(ref.get("key")))
        if source.get("resourceFieldRef"):
            return "0"
        return None

    def _volume_files(self, namespace: str, volume: Mapping[str, Any]) -> dict[str, str] | None:
        sources: list[tuple[str, Mapping[str, Any]]] = []
        if volume.get("secret"):
            sources.append(("secret", volume["secret"]))
        elif volume.get("configMap"):
            sources.append(("configMap", volume["configMap"]))
        elif volume.get("projected"):
            for entry in volume["projected"].get("sources") or []:
                for kind in ("secret", "configMap"):
                    if entry.get(kind):
                        sources.append((kind, entry[kind]))
        if not sources:
            return None
        files: dict[str, str] = {}
        for kind, source in sources:
            name = str(source.get("secretName") or source.get("name") or "")
            values = (self._secret_values if kind == "secret" else self._configmap_values)(namespace, name)
            if values is None:
                continue
            items = source.get("items")
            if items:
                for item in items:
                    if item.get("key") in values:
                        files[str(item.get("path"))] = values[str(item["key"])]
            else:
                files.update(values)
        return files

    def _missing_references(self, pod: Mapping[str, Any]) -> tuple[str, str] | None:
        """The first secret/configmap the pod needs and the namespace lacks: (reason, message)."""
        namespace = str(pod["metadata"].get("namespace", ""))
        spec = pod.get("spec") or {}
        for volume in spec.get("volumes") or []:
            secret = volume.get("secret")
            if (
                secret
                and not secret.get("optional")
                and self._secret_values(namespace, str(secret.get("secretName"))) is None
            ):
                return (
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{volume.get("name")}" : secret '
                    f'"{secret.get("secretName")}" not found',
                )
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            for entry in container.get("env") or []:
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if not ref or ref.get("optional"):
                    continue
                values = self._secret_values(namespace, str(ref.get("name")))
                if values is None:
                    return "CreateContainerConfigError", f'secret "{ref.get("name")}" not found'
                if ref.get("key") not in values:
                    return (
                        "CreateContainerConfigError",
                        f"couldn't find key {ref.get('key')} in Secret {namespace}/{ref.get('name')}",
                    )
        return None

    # Controllers

    def tick(self, now: float | None = None) -> None:
        """Run every controller once: kubelet, Job controller, TTL, garbage collector, namespaces."""
        with self._lock:
            moment = self.clock() if now is None else now
            self._run_kubelet(moment)
            for job in list(self._objects["jobs"].values()):
                self._sync_job(job, moment)
            if self.ttl_controller:
                self._run_ttl(moment)
            self._collect_garbage(moment)
            self._finalize_namespaces(moment)
            self._expire_events(moment)
        self._deliver_hooks()

    def _expire_events(self, now: float) -> None:
        """Events live event_ttl seconds (the API server's --event-ttl, one hour by default)."""
        store = self._objects["events"]
        while self._event_times and self._event_times[0][0] <= now - self.event_ttl:
            _, key, uid = self._event_times.popleft()
            event = store.get(key)
            if event is not None and event["metadata"]["uid"] == uid:
                self._drop_object(RESOURCE_BY_PLURAL["events"], event)

    def _add_node(self, name: str, labels: dict[str, str], index: int, taints: list[dict[str, str]]) -> None:
        resource = RESOURCE_BY_PLURAL["nodes"]
        now = self.clock()
        arch = labels.get("kubernetes.io/arch", "amd64")
        node = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": format_time(now),
                # The kubelet sets kubernetes.io/os and kubernetes.io/arch to its GOOS/GOARCH (and the
                # deprecated beta.* copies): https://kubernetes.io/docs/reference/labels-annotations-taints/
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "beta.kubernetes.io/os": labels.get("kubernetes.io/os", "linux"),
                    "beta.kubernetes.io/arch": arch,
                    **labels,
                },
            },
            "spec": {"podCIDR": f"10.244.{index}.0/24", **({"taints": taints} if taints else {})},
            "status": {
                "capacity": {**self.node_capacity, "pods": "110"},
                "allocatable": {**self.node_capacity, "pods": "110"},
                "addresses": [
                    {"type": "InternalIP", "address": f"172.18.0.{index + 2}"},
                    {"type": "Hostname", "address": name},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": format_time(now),
                        "lastTransitionTime": format_time(now),
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": f"v{self.validate_version}",
                    "operatingSystem": "linux",
                    "architecture": arch,
                    "containerRuntimeVersion": "containerd://1.7.15",
                },
            },
        }
        self._touch(node)
        self._store_object(resource, node)

    def node_labels(self, name: str) -> dict[str, str]:
        """The labels of node `name` ({} when there is none): what its kubelet reports about the machine."""
        with self._lock:
            node = self._objects["nodes"].get(("", name))
            return dict(node["metadata"].get("labels") or {}) if node else {}

    def _nodes(self) -> list[dict[str, Any]]:
        return [self._objects["nodes"][key] for key in sorted(self._objects["nodes"])]

    def _image_mode(self, image: str) -> str:
        mode = "ok"
        policy = self.image_policy
        if callable(policy):
            mode = policy(image) or "ok"
        elif policy is not None:
            mode = policy.get(image, "ok")
        if mode == "ok" and "does-not-exist" in image:
            mode = "ErrImagePull"
        return mode if mode in IMAGE_MODES else "ok"

    def _unschedulable(self, pod: Mapping[str, Any]) -> str | None:
        """Why no node fits the pod, worded like the scheduler; None when one does."""
        spec = pod.get("spec") or {}
        nodes = self._nodes()
        count = len(nodes)
        images = [
            str(c.get("image", "")) for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        ]
        if any(self._image_mode(image) == "Unschedulable" for image in images):
            return f"0/{count} nodes are available: {count} Insufficient cpu."
        requested = _pod_requests(spec)
        short = []
        for resource_name in ("cpu", "memory"):
            capacity = parse_quantity(self.node_capacity.get(resource_name, "0"))
            if requested.get(resource_name, Decimal(0)) > capacity:
                short.append(f"{count} Insufficient {resource_name}")
        if short:
            return f"0/{count} nodes are available: {', '.join(short)}."
        if not [n for n in nodes if _node_matches(spec, n)]:
            return f"0/{count} nodes are available: {count} node(s) didn't match Pod's node affinity/selector."
        return None

    def _schedule(self, pod: dict[str, Any], now: float) -> str:
        candidates = [n for n in self._nodes() if _node_matches(pod.get("spec") or {}, n)] or self._nodes()
        self._pod_counter += 1
        node = candidates[self._pod_counter % len(candidates)]
        name = str(node["metadata"]["name"])
        pod["spec"]["nodeName"] = name
        status = pod["status"]
        status["conditions"] = [_condition("PodScheduled", "True", now)]
        host_ip = node["status"]["addresses"][0]["address"]
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
        spec = pod["spec"]
        init = spec.get("initContainers") or []
        if init:
            status["initContainerStatuses"] = [
                _waiting_status(c, "PodInitializing" if i else "ContainerCreating") for i, c in enumerate(init)
            ]
        status["containerStatuses"] = [
            _waiting_status(c, "PodInitializing" if init else "ContainerCreating") for c in spec.get("containers") or []
        ]
        status["startTime"] = format_time(now)
        self._touch(pod)
        self._event(
            pod,
            "Scheduled",
            f"Successfully assigned {pod['metadata']['namespace']}/{pod['metadata']['name']} to {name}",
            component="default-scheduler",
        )
        return name

    def _run_kubelet(self, now: float) -> None:
        for pod in list(self._objects["pods"].values()):
            uid = pod["metadata"]["uid"]
            runtime = self._pods.setdefault(uid, _PodRuntime(created=now))
            if pod["metadata"].get("deletionTimestamp"):
                if runtime.remove_at is None or now >= runtime.remove_at:
                    if not _finished_pod(pod):
                        self._terminate_pod(pod, now, exit_code=137, reason="Error", touch=False)
                    self._drop_object(RESOURCE_BY_PLURAL["pods"], pod)
                continue
            if _finished_pod(pod):
                continue
            if runtime.node is None:
                reason = self._unschedulable(pod)
                if reason is not None:
                    self._mark_unschedulable(pod, runtime, reason, now)
                    continue
                runtime.node = self._schedule(pod, now)
            if runtime.started is None and now - runtime.created >= self.start_delay:
                self._try_start(pod, runtime, now)
            elif runtime.next_restart is not None and now >= runtime.next_restart:
                self._crash_again(pod, runtime, now)

    def _mark_unschedulable(self, pod: dict[str, Any], runtime: _PodRuntime, message: str, now: float) -> None:
        conditions = pod["status"].get("conditions") or []
        current = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
        if current is not None and current.get("message") == message:
            return
        condition = _condition("PodScheduled", "False", now, reason="Unschedulable", message=message)
        pod["status"]["conditions"] = [condition]
        self._touch(pod)
        self._event(pod, "FailedScheduling", message, component="default-scheduler", warning=True, runtime=runtime)

    def _try_start(self, pod: dict[str, Any], runtime: _PodRuntime, now: float) -> None:
        spec = pod["spec"]
        init = spec.get("initContainers") or []
        containers = spec.get("containers") or []
        status = pod["status"]
        missing = self._missing_references(pod)
        if missing is not None:
            reason, message = missing
            target = "initContainerStatuses" if init else "containerStatuses"
            entries = status.get(target) or []
            if entries and (entries[0]["state"].get("waiting") or {}).get("message") != message:
                entries[0]["state"] = {"waiting": {"reason": reason, "message": message}}
                self._touch(pod)
                self._event(
                    pod,
                    "FailedMount" if reason == "ContainerCreating" else "Failed",
                    message,
                    component="kubelet",
                    warning=True,
                    runtime=runtime,
                )
            return
        for group, entries_key in ((init, "initContainerStatuses"), (containers, "containerStatuses")):
            for index, container in enumerate(group):
                image = str(container.get("image", ""))
                mode = self._image_mode(image)
                if mode in ("ImagePullBackOff", "ErrImagePull"):
                    if (
                        mode == "ErrImagePull"
                        and "does-not-exist" in image
                        and now - runtime.created >= 3 * max(self.start_delay, 0.1)
                    ):
                        mode = "ImagePullBackOff"
                    message = (
                        f'Back-off pulling image "{image}"'
                        if mode == "ImagePullBackOff"
                        else f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": failed to '
                        f'resolve reference "{image}": {image}: not found'
                    )
                    if group is containers and init:
                        self._complete_init(pod, now)
                    entry = status[entries_key][index]
                    if (entry["state"].get("waiting") or {}).get("reason") != mode:
                        entry["state"] = {"waiting": {"reason": mode, "message": message}}
                        self._touch(pod)
                        self._event(
                            pod,
                            "Failed",
                            f'Failed to pull image "{image}": {mode}',
                            component="kubelet",
                            warning=True,
                            runtime=runtime,
                        )
                    return
        self._run_pod(pod, runtime, now)

    def _complete_init(self, pod: dict[str, Any], now: float) -> None:
        """Init containers ran (exit 0) before a main container's image failed: Initialized, not Ready."""
        status = pod["status"]
        if any(entry["state"].get("terminated") for entry in status.get("initContainerStatuses") or []):
            return
        status["initContainerStatuses"] = _completed_init_statuses(pod["spec"], format_time(now))
        status["conditions"] = [
            _condition("PodReadyToStartContainers", "True", now),
            _condition("Initialized", "True", now),
            _condition("Ready", "False", now, reason="ContainersNotReady"),
            _condition("ContainersReady", "False", now, reason="ContainersNotReady"),
            _condition("PodScheduled", "True", now),
        ]
        self._touch(pod)

    def _run_pod(self, pod: dict[str, Any], runtime: _PodRuntime, now: float) -> None:
        spec = pod["spec"]
        status = pod["status"]
        stamp = format_time(now)
        if spec.get("initContainers"):
            status["initContainerStatuses"] = _completed_init_statuses(spec, stamp)
        crashing = any(self._image_mode(str(c.get("image", ""))) == "CrashLoopBackOff" for c in spec["containers"])
        status["containerStatuses"] = [
            {
                **_base_status(c),
                "state": {"running": {"startedAt": stamp}},
                "ready": not crashing,
                "started": True,
                "containerID": _container_id(),
            }
            for c in spec["containers"]
        ]
        status["phase"] = "Running"
        node = self._objects["nodes"].get(("", str(spec.get("nodeName"))))
        index = int(node["spec"]["podCIDR"].split(".")[2]) if node else 0
        self._pod_counter += 1
        status["podIP"] = f"10.244.{index}.{2 + self._pod_counter % 250}"
        status["podIPs"] = [{"ip": status["podIP"]}]
        ready = "False" if crashing else "True"
        status["conditions"] = [
            _condition("PodReadyToStartContainers", "True", now),
            _condition("Initialized", "True", now),
            _condition("Ready", ready, now, reason=None if not crashing else "ContainersNotReady"),
            _condition("ContainersReady", ready, now, reason=None if not crashing else "ContainersNotReady"),
            _condition("PodScheduled", "True", now),
        ]
        runtime.started = now
        self._touch(pod)
        for container in spec["containers"]:
            self._event(
                pod, "Started", f"Started container {container.get('name')}", component="kubelet", runtime=runtime
            )
        if crashing:
            self._crash_again(pod, runtime, now)
            return
        if not runtime.running_notified:
            runtime.running_notified = True
            self._queue_hook(self.on_pod_running, pod)

    def _crash_again(self, pod: dict[str, Any], runtime: _PodRuntime, now: float) -> None:
        """A CrashLoopBackOff image: the container exits 1 at once; Never fails the pod, else back-off."""
        if pod["spec"].get("restartPolicy") == "Never":
            self._terminate_pod(pod, now, exit_code=1)
            self._sync_owner_job(pod, now)
            return
        self._restart_containers(pod, now, exit_code=1, reason="Error")
        for entry in pod["status"]["containerStatuses"]:
            entry["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 10s restarting failed "
                    f"container={entry['name']} pod={pod['metadata']['name']}",
                }
            }
            entry["ready"] = False
        runtime.next_restart = now + min(10.0, max(self.start_delay, 0.05) * 2**runtime.restarts)
        runtime.restarts += 1
        self._touch(pod)
        self._sync_owner_job(pod, now)

    def _restart_containers(self, pod: dict[str, Any], now: float, *, exit_code: int, reason: str) -> None:
        stamp = format_time(now)
        for entry in pod["status"].get("containerStatuses") or []:
            started = (entry.get("state", {}).get("running") or {}).get("startedAt", stamp)
            entry["lastState"] = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": started,
                    "finishedAt": stamp,
                    "containerID": entry.get("containerID", ""),
                }
            }
            entry["restartCount"] = int(entry.get("restartCount", 0)) + 1
            entry["state"] = {"running": {"startedAt": stamp}}
            entry["containerID"] = _container_id()
        self._touch(pod)

    def _terminate_pod(
        self, pod: dict[str, Any], now: float, *, exit_code: int, reason: str | None = None, touch: bool = True
    ) -> None:
        stamp = format_time(now)
        status = pod["status"]
        reason = reason or ("Completed" if exit_code == 0 else "Error")
        for entry in status.get("containerStatuses") or []:
            state = entry.get("state") or {}
            started = (state.get("running") or {}).get("startedAt", stamp)
            entry["state"] = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": started,
                    "finishedAt": stamp,
                    "containerID": entry.get("containerID") or _container_id(),
                }
            }
            entry["ready"] = False
            entry["started"] = False
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        why = "PodCompleted" if exit_code == 0 else "PodFailed"
        conditions = [c for c in status.get("conditions") or [] if c.get("type") not in ("Ready", "ContainersReady")]
        conditions += [
            _condition("Ready", "False", now, reason=why),
            _condition("ContainersReady", "False", now, reason=why),
        ]
        status["conditions"] = conditions
        runtime = self._pods.get(pod["metadata"]["uid"])
        if runtime is not None:
            runtime.next_restart = None
        if touch:
            self._touch(pod)

    def _sync_owner_job(self, pod: Mapping[str, Any], now: float) -> None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            located = self._by_uid.get(str(ref.get("uid")))
            if located is not None and located[0] == "jobs":
                self._sync_job(self._objects["jobs"][located[1]], now)

    def _sync_job(self, job: dict[str, Any], now: float) -> None:
        """One pass of the Job controller over one Job."""
        metadata = job["metadata"]
        if metadata.get("deletionTimestamp"):
            return
        uid = metadata["uid"]
        runtime = self._jobs.setdefault(uid, _JobRuntime())
        spec = job["spec"]
        status = job.setdefault("status", {})
        before = copy.deepcopy(status)
        if _job_finished(job):
            return
        if spec.get("suspend"):
            return
        if runtime.start is None:
            runtime.start = now
            status["startTime"] = format_time(now)
        pods = self._pods_of(uid)
        present = set()
        for pod in pods:
            pod_uid = pod["metadata"]["uid"]
            present.add(pod_uid)
            runtime.known.add(pod_uid)
            phase = pod["status"].get("phase")
            if phase == "Succeeded":
                runtime.succeeded.add(pod_uid)
            elif phase == "Failed":
                runtime.failed.add(pod_uid)
        for gone in runtime.known - present - runtime.succeeded - runtime.failed:
            runtime.failed.add(gone)
        active = [
            p
            for p in pods
            if p["status"].get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")
        ]
        restarts = sum(
            int(entry.get("restartCount", 0))
            for p in pods
            if p["spec"].get("restartPolicy") == "OnFailure"
            for entry in p["status"].get("containerStatuses") or []
        )
        completions = int(spec.get("completions") or 1)
        parallelism = int(spec.get("parallelism") if spec.get("parallelism") is not None else 1)
        failures = len(runtime.failed) + restarts
        deadline = spec.get("activeDeadlineSeconds")
        finish: tuple[str, str, str] | None = None
        if len(runtime.succeeded) >= completions:
            finish = ("Complete", "", "")
        elif failures > int(spec.get("backoffLimit", 6)):
            finish = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline is not None and now - runtime.start >= float(deadline):
            finish = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        if finish is not None:
            for pod in active:
                self._delete_pod(copy.deepcopy(pod), now, {}, dry_run=False)
            active = []
            kind, reason, message = finish
            runtime.finished_at = now
            condition = _condition(kind, "True", now, reason=reason or None, message=message or None)
            condition["lastProbeTime"] = format_time(now)
            status["conditions"] = [*(status.get("conditions") or []), condition]
            if kind == "Complete":
                status["completionTime"] = format_time(now)
                self._event(job, "Completed", "Job completed", component="job-controller")
            else:
                self._event(job, reason, message, component="job-controller", warning=True)
        else:
            wanted = max(0, min(parallelism, completions - len(runtime.succeeded)) - len(active))
            for _ in range(wanted):
                active.append(self._create_job_pod(job, now))
        ready = sum(
            1
            for p in active
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in p["status"].get("conditions") or [])
        )
        for key, value in (
            ("active", len(active)),
            ("succeeded", len(runtime.succeeded)),
            ("failed", len(runtime.failed) + restarts),
        ):
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        status["ready"] = ready
        status["terminating"] = sum(1 for p in pods if p["metadata"].get("deletionTimestamp"))
        status["uncountedTerminatedPods"] = {}
        if status != before:
            self._touch(job)

    def _pods_of(self, owner_uid: str) -> list[dict[str, Any]]:
        store = self._objects["pods"]
        return [store[key] for key in sorted(self._owned_pods.get(owner_uid, ())) if key in store]

    def _create_job_pod(self, job: Mapping[str, Any], now: float) -> dict[str, Any]:
        template = copy.deepcopy(job["spec"].get("template") or {})
        job_meta = job["metadata"]
        template_meta = template.get("metadata") or {}
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{job_meta['name']}-",
                "namespace": job_meta["namespace"],
                "labels": dict(template_meta.get("labels") or {}),
                "annotations": dict(template_meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job_meta["name"],
                        "uid": job_meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec") or {},
        }
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        created = self._create(RESOURCE_BY_PLURAL["pods"], job_meta["namespace"], pod, dry_run=False, validate=False)
        self._event(job, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", component="job-controller")
        return self._objects["pods"][(job_meta["namespace"], created["metadata"]["name"])]

    def _run_ttl(self, now: float) -> None:
        for job in list(self._objects["jobs"].values()):
            ttl = job["spec"].get("ttlSecondsAfterFinished")
            if ttl is None or job["metadata"].get("deletionTimestamp") or not _job_finished(job):
                continue
            runtime = self._jobs.get(job["metadata"]["uid"])
            finished = runtime.finished_at if runtime and runtime.finished_at is not None else now
            if now >= finished + float(ttl):
                self._delete(
                    RESOURCE_BY_PLURAL["jobs"],
                    job["metadata"]["namespace"],
                    job["metadata"]["name"],
                    {"propagationPolicy": "Background"},
                )

    def _collect_garbage(self, now: float) -> None:
        for plural in list(self._objects):
            resource = RESOURCE_BY_PLURAL[plural]
            for obj in list(self._objects[plural].values()):
                metadata = obj["metadata"]
                finalizers = metadata.get("finalizers") or []
                if metadata.get("deletionTimestamp") and resource.plural not in ("pods", "namespaces"):
                    dependents = self._dependents(metadata["uid"])
                    if "orphan" in finalizers:
                        for dep_resource, dependent in dependents:
                            refs = [
                                r
                                for r in dependent["metadata"].get("ownerReferences") or []
                                if r.get("uid") != metadata["uid"]
                            ]
                            dependent["metadata"]["ownerReferences"] = refs
                            if not refs:
                                del dependent["metadata"]["ownerReferences"]
                            self._touch(dependent)
                            self._store_object(dep_resource, dependent)
                        finalizers = [f for f in finalizers if f != "orphan"]
                    elif "foregroundDeletion" in finalizers:
                        for dep_resource, dependent in dependents:
                            self._gc_delete(dep_resource, dependent, now)
                        if not self._dependents(metadata["uid"]):
                            finalizers = [f for f in finalizers if f != "foregroundDeletion"]
                    if finalizers != (metadata.get("finalizers") or []):
                        metadata["finalizers"] = finalizers
                        self._touch(obj)
                    if not finalizers:
                        self._drop_object(resource, obj)
                    continue
                owners = [r for r in metadata.get("ownerReferences") or [] if r.get("uid")]
                if (
                    owners
                    and not metadata.get("deletionTimestamp")
                    and all(str(r["uid"]) not in self._by_uid for r in owners)
                ):
                    self._gc_delete(resource, obj, now)

    def _gc_delete(self, resource: Resource, obj: dict[str, Any], now: float) -> None:
        if obj["metadata"].get("deletionTimestamp"):
            return
        if resource.plural == "pods":
            self._delete_pod(copy.deepcopy(obj), now, {}, dry_run=False)
        else:
            self._delete(
                resource, obj["metadata"].get("namespace"), obj["metadata"]["name"], {"propagationPolicy": "Background"}
            )

    def _finalize_namespaces(self, now: float) -> None:
        for namespace in list(self._objects["namespaces"].values()):
            if not namespace["metadata"].get("deletionTimestamp"):
                continue
            name = namespace["metadata"]["name"]
            remaining = 0
            for plural, store in self._objects.items():
                if not RESOURCE_BY_PLURAL[plural].namespaced:
                    continue
                for key, obj in list(store.items()):
                    if key[0] != name:
                        continue
                    remaining += 1
                    if plural == "pods":
                        self._gc_delete(RESOURCE_BY_PLURAL["pods"], obj, now)
                    else:
                        obj["metadata"].pop("finalizers", None)
                        self._drop_object(RESOURCE_BY_PLURAL[plural], obj)
                        remaining -= 1
            if remaining == 0:
                self._drop_object(RESOURCE_BY_PLURAL["namespaces"], namespace)

    def _event(
        self,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        component: str,
        warning: bool = False,
        runtime: _PodRuntime | None = None,
    ) -> None:
        """Record an Event the way controllers do (once per reason and message for a pod)."""
        if not self.emit_events:
            return
        if runtime is not None:
            key = f"{reason}:{message}"
            if key in runtime.events:
                return
            runtime.events.add(key)
        metadata = involved["metadata"]
        namespace = metadata.get("namespace") or "default"
        if ("", namespace) not in self._objects["namespaces"]:
            return
        now = self.clock()
        event = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": format_time(now),
            },
            "involvedObject": {
                "kind": involved.get("kind"),
                "namespace": namespace,
                "name": metadata["name"],
                "uid": metadata["uid"],
                "apiVersion": involved.get("apiVersion"),
                "resourceVersion": metadata.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "firstTimestamp": format_time(now),
            "lastTimestamp": format_time(now),
            "count": 1,
            "type": "Warning" if warning else "Normal",
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": "",
        }
        self._touch(event)
        self._store_object(RESOURCE_BY_PLURAL["events"], event)

    # Discovery

    def discovery(self, path: str, host: str) -> dict[str, Any] | None:
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

    def watch_events(self, target: _Target, query: Mapping[str, str]) -> Iterator[dict[str, Any]]:
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


def _cause(field_name: str, message: str) -> Any:
    from azp_simulation.kube_support import Cause

    return Cause(field_name, "FieldValueInvalid", message)


def _method_not_allowed() -> KubeError:
    return KubeError(405, "the server does not allow this method on the requested resource")


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


def _finished_pod(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _job_finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _foreign(resource: Resource, obj: Mapping[str, Any]) -> bool:
    if resource.plural in ("leases", "events"):
        return False
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE


def _selected(obj: Mapping[str, Any], labels: Sequence[Requirement], fields: Sequence[Any]) -> bool:
    return labels_match(labels, obj["metadata"].get("labels")) and all(term.matches(obj) for term in fields)


def _encode_continue(start: str, version: int) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": version, "start": start + "\x00"}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode()


def _decode_continue(token: str) -> str | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"==="))
        return str(data["start"]).rstrip("\x00")
    except (ValueError, KeyError, TypeError):
        raise KubeError(400, "continue key is not valid: illegal base64 data or JSON") from None


def _non_negative_int(text: str, name: str) -> int:
    try:
        value = int(text or "0")
    except ValueError:
        raise KubeError(400, f'invalid {name} value "{text}": must be an integer') from None
    return max(0, value)


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known variables are replaced, $$ escapes, unknown ones stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def _field_value(pod: Mapping[str, Any], path: str) -> str | None:
    metadata = pod.get("metadata") or {}
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
    }
    if path in simple:
        value = simple[path]
        return str(value) if value is not None else ""
    found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if found:
        return str((metadata.get(found.group(1)) or {}).get(found.group(2), ""))
    return None


def _pod_requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """Effective requests: the sum over containers, or the largest init container if that is more."""

    def requests(container: Mapping[str, Any]) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        result = {}
        for key in ("cpu", "memory"):
            if key in merged:
                try:
                    result[key] = parse_quantity(merged[key])
                except ValueError:
                    result[key] = Decimal(0)
        return result

    total: dict[str, Decimal] = {"cpu": Decimal(0), "memory": Decimal(0)}
    for container in spec.get("containers") or []:
        for key, value in requests(container).items():
            total[key] += value
    for container in spec.get("initContainers") or []:
        for key, value in requests(container).items():
            total[key] = max(total[key], value)
    return total


def _tolerates(spec: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether the pod tolerates a NoSchedule taint (Kubernetes' toleration matching: key, operator Equal or
    Exists, value, effect). GKE's Arm nodes carry kubernetes.io/arch=arm64:NoSchedule and GKE adds the
    toleration to pods that select that arch by nodeSelector: https://cloud.google.com/kubernetes-engine/docs/
    how-to/prepare-arm-workloads-for-deployment"""
    if taint.get("effect") != "NoSchedule":
        return True
    key, value = taint.get("key"), taint.get("value")
    if key == "kubernetes.io/arch" and (spec.get("nodeSelector") or {}).get(key) == value:
        return True
    return any(
        (t.get("key") in (None, "", key))
        and (t.get("operator") == "Exists" or t.get("value") == value)
        and t.get("effect") in (None, "", "NoSchedule")
        for t in spec.get("tolerations") or []
    )


def _node_matches(spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    if not all(_tolerates(spec, taint) for taint in (node.get("spec") or {}).get("taints") or []):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!", "Gt": ">", "Lt": "<"}
    for term in terms:
        expressions = term.get("matchExpressions") or []
        requirements = [
            Requirement(str(e.get("key")), operators.get(str(e.get("operator")), "in"), tuple(e.get("values") or ()))
            for e in expressions
        ]
        if labels_match(requirements, labels):
            return True
    return False


def _condition(
    kind: str, status: str, now: float, *, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": format_time(now),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _image_id(image: str) -> str:
    repository = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image.split("@")[0]
    return f"{repository}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _container_id() -> str:
    return f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}"


def _completed_init_statuses(spec: Mapping[str, Any], stamp: str) -> list[dict[str, Any]]:
    """The statuses of a pod's init containers once each ran and exited 0 at `stamp`."""
    statuses = []
    for container in spec.get("initContainers") or []:
        container_id = _container_id()
        terminated = {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": stamp,
            "finishedAt": stamp,
            "containerID": container_id,
        }
        statuses.append(
            {
                **_base_status(container),
                "state": {"terminated": terminated},
                "ready": True,
                "started": False,
                "containerID": container_id,
            }
        )
    return statuses


def _base_status(container: Mapping[str, Any]) -> dict[str, Any]:
    image = str(container.get("image", ""))
    return {
        "name": container.get("name"),
        "image": image,
        "imageID": _image_id(image),
        "lastState": {},
        "restartCount": 0,
    }


def _waiting_status(container: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {
        **_base_status(container),
        "imageID": "",
        "state": {"waiting": {"reason": reason}},
        "ready": False,
        "started": False,
    }


def _make_handler(emulator: KubernetesEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.emulator = emulator
    return Handler


def _unknown_fields(body: dict[str, Any], version: str) -> list[tuple[list[Any], str]]:
    """(path of the object, name) of every field the schema does not know."""
    try:
        validator = _schema_validator(str(body.get("apiVersion")), str(body.get("kind")), version)
    except (LookupError, OSError, ValueError):
        return []
    found = []
    for error in validator.iter_errors(body):
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            extra = set(error.instance) - set((error.schema or {}).get("properties") or {})
            found += [(list(error.absolute_path), name) for name in sorted(extra)]
    return found


def _field_validation(body: dict[str, Any], query: Mapping[str, str], version: str) -> dict[str, str]:
    """Apply `fieldValidation` to a create or update body: raise for Strict, drop unknown fields otherwise;
    returns the Warning header to send (Warn)."""
    mode = query.get("fieldValidation") or "Warn"
    if mode not in ("Strict", "Warn", "Ignore"):
        raise KubeError(400, f'Invalid fieldValidation value: "{mode}"; supported values: "Ignore", "Warn", "Strict"')
    unknown = _unknown_fields(body, version)
    if not unknown:
        return {}
    paths = [".".join(filter(None, [_field_path(path), name])) for path, name in unknown]
    if mode == "Strict":
        kind, group_version = str(body.get("kind")), str(body.get("apiVersion"))
        fields = ", ".join(f'unknown field "{path}"' for path in paths)
        raise KubeError(
            400,
            f'{kind} in version "{group_version.rsplit("/", 1)[-1]}" cannot be handled as a {kind}: strict decoding '
            f"error: {fields}",
        )
    for path, name in unknown:
        parent: Any = body
        for part in path:
            parent = parent[part]
        parent.pop(name, None)
    if mode == "Ignore":
        return {}
    return {"Warning": ", ".join("299 - " + json.dumps(f'unknown field "{path}"') for path in paths)}


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
            key = f"{method} discovery" if discovery is not None else f"{method} {path}"
            names = ("discovery", path) if discovery is not None else (path,)
        state = _CallState(
            method=method,
            template=target.template if target else path,
            path=parts.path,
            query=query,
            key=key,
            dry_run=query.get("dryRun") == "All",
        )

        fault = emulator._take_fault(method, names)
        if fault is not None:
            state.fault = fault.kind
            if self._apply_fault(fault, state):
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
            if verb == "watch":
                self._stream_watch(target, query, state)
                return
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
            self._send_json(error.code, error.status(), state)
            emulator._deliver_hooks()
            return
        emulator._deliver_hooks()
        if isinstance(payload, _PlainText):
            self._send_raw(status, str(payload).encode(), "text/plain", state)
            return
        if isinstance(payload, _Serialized):
            self._send_raw(status, payload, "application/json", state)
            return
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

    def _apply_fault(self, fault: Fault, state: _CallState) -> bool:
        """Carry out a fault; True when the request is answered (or dropped) by it."""
        emulator = self.emulator
        if fault.kind == "delay":
            emulator._stopping.wait(fault.delay)
            return False
        if fault.kind == "status":
            if fault.retry_after is not None:
                state.headers["Retry-After"] = f"{fault.retry_after:g}"
            if fault.body is not None:
                self._send_raw(fault.status, fault.body.encode(), "application/json", state)
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
