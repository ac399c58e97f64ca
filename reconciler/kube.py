"""The Kubernetes adapter: the only module that imports the official `kubernetes` client.

Lists are read as raw JSON (`_preload_content=False`): building the client's model objects for
thousands of Jobs and Pods costs far more CPU than the JSON itself, and we need a few fields only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from reconciler import names
from reconciler.errors import AuthError, ConflictError, NotFoundError, PermanentError, TransientError
from reconciler.lease import format_time, parse_time
from reconciler.model import AgentJob, AgentPod

log = logging.getLogger("reconciler.kube")

LEASE_NAME_SUFFIX = "-reconciler"
_TIMEOUT = (5.0, 30.0)


def job_from_json(item: Mapping[str, Any]) -> AgentJob | None:
    """An AgentJob from a Job's JSON; None for objects without our pool and template labels."""
    metadata = item.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    slug, template = labels.get(names.LABEL_POOL), labels.get(names.LABEL_TEMPLATE)
    if not slug or not template or not metadata.get("name"):
        return None
    status = item.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = "Failed" in conditions
    finished = parse_time(status.get("completionTime"))
    if finished is None and failed:
        finished = parse_time(conditions["Failed"].get("lastTransitionTime")) or parse_time(
            metadata.get("creationTimestamp")
        )
    raw_request = labels.get(names.LABEL_REQUEST_ID)
    return AgentJob(
        name=metadata["name"],
        namespace=metadata.get("namespace", ""),
        pool_slug=slug,
        pool_name=annotations.get(names.ANNOTATION_POOL_NAME),
        template=template,
        request_id=int(raw_request) if raw_request and raw_request.isdigit() else None,
        standby=labels.get(names.LABEL_STANDBY) == "true",
        created=parse_time(metadata.get("creationTimestamp")),
        finished=finished,
        failed=failed,
        deleting=bool(metadata.get("deletionTimestamp")),
    )


def _pod_reason(status: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
            return waiting["reason"], waiting.get("message")
        terminated = (entry.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") not in (None, 0):
            return terminated.get("reason") or "Error", terminated.get("message")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("reason") or "Unschedulable", condition.get("message")
    return status.get("reason"), status.get("message")


def pod_from_json(item: Mapping[str, Any]) -> AgentPod | None:
    """An AgentPod from a Pod's JSON, with the reason it is not running, if any."""
    metadata = item.get("metadata") or {}
    if not metadata.get("name"):
        return None
    labels = metadata.get("labels") or {}
    status = item.get("status") or {}
    reason, message = _pod_reason(status)
    finished = None
    for entry in status.get("containerStatuses") or []:
        moment = parse_time(((entry.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if moment is not None and (finished is None or moment > finished):
            finished = moment
    return AgentPod(
        name=metadata["name"],
        namespace=metadata.get("namespace", ""),
        job_name=labels.get("batch.kubernetes.io/job-name") or labels.get("job-name"),
        phase=str(status.get("phase") or "Pending"),
        created=parse_time(metadata.get("creationTimestamp")),
        started=parse_time(status.get("startTime")),
        finished=finished,
        reason=reason,
        message=message,
        deleting=bool(metadata.get("deletionTimestamp")),
    )


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return exc.reason or "no details"
    return str(body.get("message") or exc.reason or "no details")


class Kubernetes:
    """Lists, creates and deletes the objects of one release, counting every call."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        configuration = k8s.Configuration()
        try:
            if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        except (k8s_config.ConfigException, OSError) as exc:
            raise AuthError(
                f"no Kubernetes credentials: {exc}: run in a cluster, or point KUBECONFIG/--kubeconfig at a kubeconfig"
            ) from None
        configuration.retries = False
        self.api_client = k8s.ApiClient(configuration)
        self.batch = k8s.BatchV1Api(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        self.coordination = k8s.CoordinationV1Api(self.api_client)
        self.authorization = k8s.AuthorizationV1Api(self.api_client)
        self.calls: Counter[str] = Counter()
        self.retries = retries
        self._sleep = sleep

    def close(self) -> None:
        self.api_client.close()

    @property
    def call_count(self) -> int:
        return sum(self.calls.values())

    def _call(self, key: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            self.calls[key] += 1
            try:
                response = function(*args, _preload_content=False, _request_timeout=_TIMEOUT, **kwargs)
                data = response.data
                return json.loads(data) if data else None
            except ApiException as exc:
                status = exc.status or 0
                message = _status_message(exc)
                if status == 401:
                    raise AuthError(f"Kubernetes rejected the credentials ({key}): {message}") from None
                if status == 403:
                    raise AuthError(f"Kubernetes forbids {key}: {message}: grant it in the reconciler's Role") from None
                if status == 404:
                    raise NotFoundError(f"{key}: {message}") from None
                if status == 409:
                    raise ConflictError(f"{key}: {message}") from None
                if status == 429 or status >= 500:
                    error: Exception = TransientError(f"{key}: HTTP {status}: {message}")
                else:
                    raise PermanentError(f"{key}: HTTP {status}: {message}") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                error = TransientError(f"{key}: {type(exc).__name__}: the API server did not answer")
            except ValueError:
                error = TransientError(f"{key}: the response body is not complete JSON")
            attempt += 1
            if attempt > self.retries:
                raise error
            delay = 0.2 * (2 ** (attempt - 1))
            log.warning("%s; retry %d of %d in %.1fs", error, attempt, self.retries, delay)
            self._sleep(delay)

    # --- reads ---------------------------------------------------------------------------------

    def list_jobs(self, namespace: str, *, release: str) -> list[AgentJob]:
        data = self._call(
            "list jobs", self.batch.list_namespaced_job, namespace, label_selector=names.selector(release)
        )
        jobs = (job_from_json(item) for item in (data or {}).get("items") or [])
        return [j for j in jobs if j is not None]

    def list_pods(self, namespace: str, *, release: str) -> list[AgentPod]:
        data = self._call("list pods", self.core.list_namespaced_pod, namespace, label_selector=names.selector(release))
        pods = (pod_from_json(item) for item in (data or {}).get("items") or [])
        return [p for p in pods if p is not None]

    # --- writes --------------------------------------------------------------------------------

    def create_job(self, job: Mapping[str, Any], *, dry_run: bool = False) -> bool:
        """Create a Job; False when it already existed (an overlapping pass made it: success)."""
        kwargs = {"dry_run": "All"} if dry_run else {}
        try:
            self._call(
                "create job", self.batch.create_namespaced_job, job["metadata"]["namespace"], dict(job), **kwargs
            )
        except ConflictError:
            return False
        return True

    def delete_job(self, namespace: str, name: str) -> bool:
        """Delete a Job and, in the background, its pods; False when it was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._call("delete job", self.batch.delete_namespaced_job, name, namespace, body=body)
        except NotFoundError:
            return False
        return True

    def post_event(
        self, *, namespace: str, job_name: str, reason: str, message: str, warning: bool = False, now: datetime
    ) -> None:
        """Record a decision as an Event on the Job it concerns (kubectl describe job shows it)."""
        stamp = format_time(now)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{job_name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "namespace": namespace},
            "reason": reason,
            "message": message[:1000],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "azp-agents-reconciler"},
            "reportingComponent": "azp-agents-reconciler",
            "reportingInstance": os.environ.get("HOSTNAME", "reconciler")[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self._call("create event", self.core.create_namespaced_event, namespace, event)

    # --- the Lease -----------------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease = self._call("get lease", self.coordination.read_namespaced_lease, name, namespace)
        except NotFoundError:
            return None
        return lease if isinstance(lease, dict) else None

    def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create the Lease; None when someone else created it first."""
        try:
            created = self._call("create lease", self.coordination.create_namespaced_lease, namespace, dict(lease))
        except ConflictError:
            return None
        return created if isinstance(created, dict) else None

    def replace_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any] | None:
        """Replace the Lease at its resourceVersion; None when it changed under us."""
        name = lease["metadata"]["name"]
        try:
            replaced = self._call(
                "update lease", self.coordination.replace_namespaced_lease, name, namespace, dict(lease)
            )
        except ConflictError:
            return None
        return replaced if isinstance(replaced, dict) else None

    # --- permissions ---------------------------------------------------------------------------

    def can_i(self, *, verb: str, resource: str, group: str, namespace: str) -> tuple[bool, str]:
        """Ask the API server whether our identity may do `verb` on `resource` (SelfSubjectAccessReview)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
            },
        }
        answer = self._call(
            "create selfsubjectaccessreview", self.authorization.create_self_subject_access_review, review
        )
        status = (answer or {}).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or status.get("evaluationError") or "")
