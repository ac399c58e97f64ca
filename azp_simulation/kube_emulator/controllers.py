"""Controllers of the Kubernetes emulator: Job, TTL-after-finished, garbage collector, namespace
finalization, and Events."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azp_simulation.kube_emulator.scheduling import _condition, _PodRuntime
from azp_simulation.kube_support import (
    RESOURCE_BY_PLURAL,
    KubeError,
    Resource,
    format_time,
)

if TYPE_CHECKING:
    from azp_simulation.kube_emulator.core import KubernetesEmulator


@dataclass
class _JobRuntime:
    """What the Job controller remembers about one Job: which pods it has seen and counted."""

    start: float | None = None
    finished_at: float | None = None
    known: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    create_failures: int = 0
    retry_at: float = 0.0
    """After a pod create the API server refused, the controller waits until then (_refused_pod)."""


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


def _job_finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _sync_owner_job(self: KubernetesEmulator, pod: Mapping[str, Any], now: float) -> None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        located = self._by_uid.get(str(ref.get("uid")))
        if located is not None and located[0] == "jobs":
            self._sync_job(self._objects["jobs"][located[1]], now)


def _sync_job(self: KubernetesEmulator, job: dict[str, Any], now: float) -> None:
    """One pass of the Job controller over one Job."""
    metadata = job["metadata"]
    if metadata.get("deletionTimestamp"):
        return
    uid = metadata["uid"]
    runtime = self._jobs.setdefault(uid, _JobRuntime())
    spec = job["spec"]
    status = job.setdefault("status", {})
    if _job_finished(job) or spec.get("suspend"):
        return
    before = copy.deepcopy(status)
    if runtime.start is None:
        runtime.start = now
        status["startTime"] = format_time(now)
    pods = self._pods_of(uid)
    _count_pods(runtime, pods)
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
    finish = _job_finish(spec, runtime, restarts=restarts, completions=completions, now=now)
    if finish is not None:
        for pod in active:
            self._delete_pod(copy.deepcopy(pod), now, {}, dry_run=False)
        active = []
        _finish_job(self, job, finish, now)
    else:
        wanted = max(0, min(parallelism, completions - len(runtime.succeeded)) - len(active))
        active += _create_pods(self, job, wanted if now >= runtime.retry_at else 0, now)
    _job_status(status, runtime, pods=pods, active=active, restarts=restarts)
    if status != before:
        self._touch(job)


def _create_pods(self: KubernetesEmulator, job: Mapping[str, Any], wanted: int, now: float) -> list[dict[str, Any]]:
    """Create up to `wanted` pods of the Job, stopping at the first the API server refuses."""
    created = []
    for _ in range(wanted):
        pod = self._create_job_pod(job, now)
        if pod is None:
            break
        created.append(pod)
    return created


def _count_pods(runtime: _JobRuntime, pods: list[dict[str, Any]]) -> None:
    """Remember the Job's pods and which succeeded or failed; one gone before finishing counts as failed."""
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


def _job_finish(
    spec: Mapping[str, Any], runtime: _JobRuntime, *, restarts: int, completions: int, now: float
) -> tuple[str, str, str] | None:
    """(condition, reason, message) when the Job is done: completions reached, backoffLimit or deadline."""
    deadline = spec.get("activeDeadlineSeconds")
    if len(runtime.succeeded) >= completions:
        return ("Complete", "", "")
    if len(runtime.failed) + restarts > int(spec.get("backoffLimit", 6)):
        return ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    if deadline is not None and runtime.start is not None and now - runtime.start >= float(deadline):
        return ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    return None


def _finish_job(self: KubernetesEmulator, job: dict[str, Any], finish: tuple[str, str, str], now: float) -> None:
    """Set the Job's Complete or Failed condition (and completionTime) and record its Event."""
    status = job["status"]
    kind, reason, message = finish
    self._jobs[job["metadata"]["uid"]].finished_at = now
    condition = _condition(kind, "True", now, reason=reason or None, message=message or None)
    condition["lastProbeTime"] = format_time(now)
    status["conditions"] = [*(status.get("conditions") or []), condition]
    if kind == "Complete":
        status["completionTime"] = format_time(now)
        self._event(job, "Completed", "Job completed", component="job-controller")
    else:
        self._event(job, reason, message, component="job-controller", warning=True)


def _job_status(
    status: dict[str, Any],
    runtime: _JobRuntime,
    *,
    pods: list[dict[str, Any]],
    active: list[dict[str, Any]],
    restarts: int,
) -> None:
    """The counts of the Job's status: active, succeeded, failed (absent when 0), ready, terminating."""
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


def _pods_of(self: KubernetesEmulator, owner_uid: str) -> list[dict[str, Any]]:
    store = self._objects["pods"]
    return [store[key] for key in sorted(self._owned_pods.get(owner_uid, ())) if key in store]


def _create_job_pod(self: KubernetesEmulator, job: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """Create one pod of the Job; None when the API server refused it (see _refused_pod)."""
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
    # The controller's own request gets the pod's warnings, not the request that made the Job.
    client_warnings, self._warnings.items = getattr(self._warnings, "items", None), None
    try:
        created = self._create(RESOURCE_BY_PLURAL["pods"], job_meta["namespace"], pod, dry_run=False, validate=False)
    except KubeError as error:
        _refused_pod(self, job, error, now)
        return None
    finally:
        self._warnings.items = client_warnings
    self._jobs[job_meta["uid"]].create_failures = 0
    self._event(job, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", component="job-controller")
    return self._objects["pods"][(job_meta["namespace"], created["metadata"]["name"])]


def _refused_pod(self: KubernetesEmulator, job: Mapping[str, Any], error: KubeError, now: float) -> None:
    """A pod create the API server refused (Pod Security admission, say): the Warning event
    FailedCreate `Error creating: <the error>` (k8s.io/kubernetes pkg/controller/controller_utils.go
    RealPodControl.createPods), and the Job's sync retried after an exponential back-off of 1 s doubling
    to 1 min (pkg/controller/job/job_controller.go DefaultJobApiBackOff, MaxJobApiBackOff)."""
    runtime = self._jobs[job["metadata"]["uid"]]
    runtime.retry_at = now + min(2.0**runtime.create_failures, 60.0)
    runtime.create_failures += 1
    self._event(job, "FailedCreate", f"Error creating: {error.message}", component="job-controller", warning=True)


def _run_ttl(self: KubernetesEmulator, now: float) -> None:
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


def _collect_garbage(self: KubernetesEmulator, now: float) -> None:
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


def _gc_delete(self: KubernetesEmulator, resource: Resource, obj: dict[str, Any], now: float) -> None:
    if obj["metadata"].get("deletionTimestamp"):
        return
    if resource.plural == "pods":
        self._delete_pod(copy.deepcopy(obj), now, {}, dry_run=False)
    else:
        self._delete(
            resource, obj["metadata"].get("namespace"), obj["metadata"]["name"], {"propagationPolicy": "Background"}
        )


def _finalize_namespaces(self: KubernetesEmulator, now: float) -> None:
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
    self: KubernetesEmulator,
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
    namespace = involved["metadata"].get("namespace") or "default"
    if ("", namespace) not in self._objects["namespaces"]:
        return
    event = _event_object(involved, namespace, reason, message, component=component, warning=warning, now=self.clock())
    self._touch(event)
    self._store_object(RESOURCE_BY_PLURAL["events"], event)


def _event_object(
    involved: Mapping[str, Any], namespace: str, reason: str, message: str, *, component: str, warning: bool, now: float
) -> dict[str, Any]:
    """A core/v1 Event about `involved` as client-go's event recorder writes it."""
    metadata = involved["metadata"]
    return {
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
