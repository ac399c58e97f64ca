"""Scheduler and kubelet of the Kubernetes emulator: nodes, binding, image pulls, container states,
restarts and termination."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from azp_simulation.kube_support import (
    RESOURCE_BY_PLURAL,
    KubeError,
    Requirement,
    format_time,
    labels_match,
    parse_quantity,
)

if TYPE_CHECKING:
    from azp_simulation.kube_emulator.core import KubernetesEmulator


IMAGE_MODES = ("ok", "ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "Unschedulable")


ImagePolicy = Callable[[str], str] | Mapping[str, str]


PodHook = Callable[[dict[str, Any]], None]


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


def _finished_pod(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


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


def _pod_log(self: KubernetesEmulator, pod: Mapping[str, Any], container: str | None) -> str:
    phase = pod["status"].get("phase")
    if phase == "Pending":
        name = pod["metadata"]["name"]
        raise KubeError(
            400, f'container "{container or "agent"}" in pod "{name}" is waiting to start: ContainerCreating'
        )
    return f"simulated log of pod {pod['metadata']['name']} ({phase})\n"


def _add_node(
    self: KubernetesEmulator, name: str, labels: dict[str, str], index: int, taints: list[dict[str, str]]
) -> None:
    now = self.clock()
    node = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": format_time(now),
            "labels": _node_labels(name, labels),
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24", **({"taints": taints} if taints else {})},
        "status": _node_status(self, name, labels.get("kubernetes.io/arch", "amd64"), index, now),
    }
    self._touch(node)
    self._store_object(RESOURCE_BY_PLURAL["nodes"], node)


def _node_labels(name: str, labels: dict[str, str]) -> dict[str, str]:
    """The kubelet sets kubernetes.io/os and kubernetes.io/arch to its GOOS/GOARCH (and the deprecated
    beta.* copies): https://kubernetes.io/docs/reference/labels-annotations-taints/"""
    arch = labels.get("kubernetes.io/arch", "amd64")
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": labels.get("kubernetes.io/os", "linux"),
        "beta.kubernetes.io/arch": arch,
        **labels,
    }


def _node_status(self: KubernetesEmulator, name: str, arch: str, index: int, now: float) -> dict[str, Any]:
    """A Ready node's status: capacity, addresses and the kubelet's nodeInfo."""
    return {
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
    }


def node_labels(self: KubernetesEmulator, name: str) -> dict[str, str]:
    """The labels of node `name` ({} when there is none): what its kubelet reports about the machine."""
    with self._lock:
        node = self._objects["nodes"].get(("", name))
        return dict(node["metadata"].get("labels") or {}) if node else {}


def _nodes(self: KubernetesEmulator) -> list[dict[str, Any]]:
    return [self._objects["nodes"][key] for key in sorted(self._objects["nodes"])]


def _image_mode(self: KubernetesEmulator, image: str) -> str:
    mode = "ok"
    policy = self.image_policy
    if callable(policy):
        mode = policy(image) or "ok"
    elif policy is not None:
        mode = policy.get(image, "ok")
    if mode == "ok" and "does-not-exist" in image:
        mode = "ErrImagePull"
    return mode if mode in IMAGE_MODES else "ok"


def _unschedulable(self: KubernetesEmulator, pod: Mapping[str, Any]) -> str | None:
    """Why no node fits the pod, worded like the scheduler; None when one does."""
    spec = pod.get("spec") or {}
    nodes = self._nodes()
    count = len(nodes)
    images = [str(c.get("image", "")) for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
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


def _schedule(self: KubernetesEmulator, pod: dict[str, Any], now: float) -> str:
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


def _run_kubelet(self: KubernetesEmulator, now: float) -> None:
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


def _mark_unschedulable(
    self: KubernetesEmulator, pod: dict[str, Any], runtime: _PodRuntime, message: str, now: float
) -> None:
    conditions = pod["status"].get("conditions") or []
    current = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
    if current is not None and current.get("message") == message:
        return
    condition = _condition("PodScheduled", "False", now, reason="Unschedulable", message=message)
    pod["status"]["conditions"] = [condition]
    self._touch(pod)
    self._event(pod, "FailedScheduling", message, component="default-scheduler", warning=True, runtime=runtime)


def _try_start(self: KubernetesEmulator, pod: dict[str, Any], runtime: _PodRuntime, now: float) -> None:
    """Start the pod unless a Secret or ConfigMap it needs is missing or an image cannot be pulled."""
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
                if group is containers and init:
                    self._complete_init(pod, now)
                _pull_failed(self, pod, status[entries_key][index], image=image, mode=mode, runtime=runtime, now=now)
                return
    self._run_pod(pod, runtime, now)


def _pull_failed(
    self: KubernetesEmulator,
    pod: dict[str, Any],
    entry: dict[str, Any],
    *,
    image: str,
    mode: str,
    runtime: _PodRuntime,
    now: float,
) -> None:
    """A container waiting on an image it cannot pull: ErrImagePull, then ImagePullBackOff, and an Event."""
    if mode == "ErrImagePull" and "does-not-exist" in image and now - runtime.created >= 3 * max(self.start_delay, 0.1):
        mode = "ImagePullBackOff"
    message = (
        f'Back-off pulling image "{image}"'
        if mode == "ImagePullBackOff"
        else f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": failed to '
        f'resolve reference "{image}": {image}: not found'
    )
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


def _complete_init(self: KubernetesEmulator, pod: dict[str, Any], now: float) -> None:
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


def _run_pod(self: KubernetesEmulator, pod: dict[str, Any], runtime: _PodRuntime, now: float) -> None:
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
        self._event(pod, "Started", f"Started container {container.get('name')}", component="kubelet", runtime=runtime)
    if crashing:
        self._crash_again(pod, runtime, now)
        return
    if not runtime.running_notified:
        runtime.running_notified = True
        self._queue_hook(self.on_pod_running, pod)


def _crash_again(self: KubernetesEmulator, pod: dict[str, Any], runtime: _PodRuntime, now: float) -> None:
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
                "message": f"back-off 10s restarting failed container={entry['name']} pod={pod['metadata']['name']}",
            }
        }
        entry["ready"] = False
    runtime.next_restart = now + min(10.0, max(self.start_delay, 0.05) * 2**runtime.restarts)
    runtime.restarts += 1
    self._touch(pod)
    self._sync_owner_job(pod, now)


def _restart_containers(
    self: KubernetesEmulator, pod: dict[str, Any], now: float, *, exit_code: int, reason: str
) -> None:
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
    self: KubernetesEmulator,
    pod: dict[str, Any],
    now: float,
    *,
    exit_code: int,
    reason: str | None = None,
    touch: bool = True,
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
