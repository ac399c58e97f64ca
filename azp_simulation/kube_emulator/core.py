"""The Kubernetes emulator's cluster object: its state, in-process helpers, and the methods of each
concern (bound from the modules beside it)."""

from __future__ import annotations

import base64
import copy
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

from azp_simulation.kube_emulator import access, admission, controllers, environment, routing, scheduling, store
from azp_simulation.kube_emulator.controllers import _job_finished, _JobRuntime
from azp_simulation.kube_emulator.environment import _expand
from azp_simulation.kube_emulator.routing import _make_handler
from azp_simulation.kube_emulator.scheduling import ImagePolicy, PodHook, _PodRuntime
from azp_simulation.kube_support import (
    RESOURCE_BY_KIND,
    RESOURCE_BY_PLURAL,
    RESOURCES,
    KubeCall,
    KubeError,
    RbacSubject,
)
from azp_simulation.serving import Fault, ServedEmulator


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
        self.on_pod_running: PodHook | None = None
        self.on_pod_deleted: PodHook | None = None
        self._random = random.Random(seed)
        self._init_state()
        self._init_serving()
        self._seed_cluster(nodes, node_taints)

    def _init_state(self) -> None:
        """The cluster's objects and what the controllers and the call log keep."""
        self._event_times: deque[tuple[float, tuple[str, str], str]] = deque()
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
        # Warnings admission adds while the current thread serves a request (routing sets `items`).
        self._warnings = threading.local()

    def _seed_cluster(
        self,
        nodes: Mapping[str, Mapping[str, str]] | None,
        node_taints: Mapping[str, Sequence[Mapping[str, str]]] | None,
    ) -> None:
        """The nodes (three standard-16 by default) and the namespaces a new cluster has."""
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

    def unfinished_jobs(self, namespace: str) -> int:
        """How many Jobs of a namespace have neither a Complete nor a Failed condition (no copies made)."""
        with self._lock:
            return sum(
                1 for key, job in self._objects["jobs"].items() if key[0] == namespace and not _job_finished(job)
            )

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

    # Storage
    _next_version = store._next_version
    _touch = store._touch
    _store_object = store._store_object
    _index_pod = store._index_pod
    _drop_object = store._drop_object
    _queue_hook = store._queue_hook
    _deliver_hooks = store._deliver_hooks
    _generate_name = store._generate_name
    _create = store._create
    _existing = store._existing
    _update = store._update
    _patch = store._patch
    _delete = store._delete
    _delete_pod = store._delete_pod
    _dependents = store._dependents
    _list = store._list
    _expire_events = store._expire_events

    # Admission and validation
    _require_namespace = admission._require_namespace
    _pod_security = admission._pod_security
    _take_warnings = admission._take_warnings

    # Authentication and RBAC
    _access_review = access._access_review
    _subject = access._subject
    authenticate = access.authenticate
    authorize = access.authorize

    # HTTP
    dispatch = routing.dispatch
    _write = routing._write
    discovery = routing.discovery
    watch_events = routing.watch_events

    # Controllers
    _sync_owner_job = controllers._sync_owner_job
    _sync_job = controllers._sync_job
    _pods_of = controllers._pods_of
    _create_job_pod = controllers._create_job_pod
    _run_ttl = controllers._run_ttl
    _collect_garbage = controllers._collect_garbage
    _gc_delete = controllers._gc_delete
    _finalize_namespaces = controllers._finalize_namespaces
    _event = controllers._event

    # Scheduler and kubelet
    _pod_log = scheduling._pod_log
    _add_node = scheduling._add_node
    node_labels = scheduling.node_labels
    _nodes = scheduling._nodes
    _image_mode = scheduling._image_mode
    _unschedulable = scheduling._unschedulable
    _schedule = scheduling._schedule
    _run_kubelet = scheduling._run_kubelet
    _mark_unschedulable = scheduling._mark_unschedulable
    _try_start = scheduling._try_start
    _complete_init = scheduling._complete_init
    _run_pod = scheduling._run_pod
    _crash_again = scheduling._crash_again
    _restart_containers = scheduling._restart_containers
    _terminate_pod = scheduling._terminate_pod

    # What a container sees
    _secret_values = environment._secret_values
    _configmap_values = environment._configmap_values
    _value_from = environment._value_from
    _volume_files = environment._volume_files
    _missing_references = environment._missing_references
