"""The Kubernetes adapter: the only module that talks to the API server, in JSON over urllib3.

The official client is not used: importing its configuration loader and generated API classes costs about
2 s of CPU per run, more than a pass's own work; the calls below are a dozen plain REST requests
(https://kubernetes.io/docs/reference/using-api/api-concepts/), and kubeconfig.py finds the server and the
credentials as the official clients do.

Lists are read as raw JSON (`_preload_content=False`): building the client's model objects for
thousands of Jobs and Pods costs far more CPU than the JSON itself, and we need a few fields only.
They are read in pages of LIST_PAGE_SIZE (one call for a namespace of usual size), each page turned
into model objects before the next is fetched, and the specs we never read are dropped as each item is
parsed: a pass's memory does not grow with the whole list's JSON.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import urllib3

from reconciler import kubeconfig as kubeconfig_loader
from reconciler import names
from reconciler.deadline import Deadline
from reconciler.errors import (
    AdmissionRefusedError,
    AuthError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from reconciler.kubeconfig import ClusterAccess
from reconciler.lease import format_time, parse_time
from reconciler.model import AgentJob, AgentPod

log = logging.getLogger("reconciler.kube")

LEASE_NAME_SUFFIX = "-reconciler"
_TIMEOUT = (5.0, 30.0)
LIST_PAGE_SIZE = 1000
"""Items per list call: a namespace with up to this many Jobs (or Pods) of ours costs one call each."""
_LIST_RESTARTS = 2
"""How often a list starts over when its continue token expired (HTTP 410) between two pages."""

T = TypeVar("T")
Convert = Callable[[Mapping[str, Any]], T | None]


class _ContinueExpired(Exception):
    """HTTP 410 on a list: its continue token is too old, the list must start over."""


def _skim(item: dict[str, Any]) -> dict[str, Any]:
    """A json.loads object hook for Job and Pod lists: an object's spec and metadata.managedFields, the bulk
    of each item, are dropped as soon as that item is parsed (job_from_json and pod_from_json read metadata
    and status only)."""
    if "metadata" in item:
        item.pop("spec", None)
        metadata = item["metadata"]
        if isinstance(metadata, dict):
            metadata.pop("managedFields", None)
    return item


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


def _exit_code(status: Mapping[str, Any]) -> int | None:
    """The first non-zero exit code among the pod's (init) containers, if one failed."""
    for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        code = ((entry.get("state") or {}).get("terminated") or {}).get("exitCode")
        if isinstance(code, int) and code != 0:
            return code
    return None


def _published_agent_id(status: Mapping[str, Any]) -> int | None:
    """The agent id an init container published as its termination message (`start.sh register` does).

    Only init containers count: they finish before the container running pipeline steps starts, so no
    pipeline can write there, and the id is known as soon as the agent is registered."""
    for entry in status.get("initContainerStatuses") or []:
        message = ((entry.get("state") or {}).get("terminated") or {}).get("message")
        if not isinstance(message, str):
            continue
        for line in message.splitlines():
            text = line.strip()
            value = text.removeprefix(names.AGENT_ID_MESSAGE)
            if value != text and value.isascii() and value.isdigit():
                return int(value)
    return None


def pod_from_json(item: Mapping[str, Any]) -> AgentPod | None:
    """An AgentPod from a Pod's JSON, with the reason it is not running, if any."""
    metadata = item.get("metadata") or {}
    if not metadata.get("name"):
        return None
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    registered_id = str(annotations.get(names.ANNOTATION_AGENT_ID, ""))
    status = item.get("status") or {}
    reason, message = _pod_reason(status)
    finished = None
    for entry in status.get("containerStatuses") or []:
        moment = parse_time(((entry.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if moment is not None and (finished is None or moment > finished):
            finished = moment
    return AgentPod(
        agent_id=int(registered_id)
        if registered_id.isascii() and registered_id.isdigit()
        else _published_agent_id(status),
        exit_code=_exit_code(status),
        # An agent the reconciler registered is named after its Job (annotated); otherwise agent name = pod name.
        name=str(annotations.get(names.ANNOTATION_AGENT_NAME) or metadata["name"]),
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


def _status_message(response: urllib3.BaseHTTPResponse) -> str:
    """The API server's Status message, else the HTTP reason."""
    try:
        body = json.loads(response.data or b"{}")
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or response.reason or "no details")


def _refusal(key: str, status: int, message: str, *, continued: bool) -> Exception:
    """The error an HTTP status means; TransientError for those worth retrying."""
    if status == 410 and continued:
        return _ContinueExpired(message)
    if status == 401:
        return AuthError(f"Kubernetes rejected the credentials ({key}): {message}")
    if status == 403:
        hint = _forbidden_hint(message)
        refused = ForbiddenError if hint else AdmissionRefusedError
        return refused(f"Kubernetes forbids {key}: {message}{hint}")
    if status == 404:
        return NotFoundError(f"{key}: {message}")
    if status == 409:
        return ConflictError(f"{key}: {message}")
    if status == 429 or status >= 500:
        return TransientError(f"{key}: HTTP {status}: {message}")
    return PermanentError(f"{key}: HTTP {status}: {message}")


def _forbidden_hint(message: str) -> str:
    """What to do about a 403, from the API server's message: a quota, a namespace being deleted and an
    admission webhook's denial are not for the Role to fix."""
    if "exceeded quota" in message or "being terminated" in message or "denied the request" in message:
        return ""
    return ": grant it in the reconciler's Role"


def _ssl_context(access: ClusterAccess) -> ssl.SSLContext:
    """TLS as the kubeconfig asks: its CA (else the system's), its client certificate, or no check at all."""
    context = ssl.create_default_context(cafile=access.ca_file, cadata=access.ca_data)
    if not access.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if access.client_cert_file or access.client_cert_data:
        # load_cert_chain reads files only: PEM data goes through a private directory gone right after.
        with tempfile.TemporaryDirectory(prefix="azp-kube-") as private:
            cert = access.client_cert_file or _private_file(private, "client.crt", access.client_cert_data)
            key = access.client_key_file or (
                _private_file(private, "client.key", access.client_key_data) if access.client_key_data else None
            )
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise AuthError(f"the kubeconfig's client certificate or key cannot be used: {exc}") from None
    return context


def _private_file(directory: str, name: str, text: str | None) -> str:
    path = os.path.join(directory, name)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as out:
        out.write(text or "")
    return path


class _Transport:
    """JSON over HTTP(S) to one API server with our credentials: one urllib3 pool, no retries of its own."""

    def __init__(self, access: ClusterAccess) -> None:
        self.base = access.server
        self.headers = {"Accept": "application/json", "User-Agent": "azp-agents-reconciler"}
        if access.token:
            self.headers["Authorization"] = f"Bearer {access.token}"
        elif access.basic_auth:
            self.headers.update(urllib3.make_headers(basic_auth=":".join(access.basic_auth)))
        options: dict[str, Any] = {"maxsize": 4}
        if access.server.startswith("https://"):
            options["ssl_context"] = _ssl_context(access)
            if access.tls_server_name:
                options["server_hostname"] = access.tls_server_name
        self.pool = (
            urllib3.ProxyManager(access.proxy_url, **options) if access.proxy_url else urllib3.PoolManager(**options)
        )

    def request(
        self, method: str, path: str, *, query: Mapping[str, Any], body: Any, timeout: tuple[float, float]
    ) -> urllib3.BaseHTTPResponse:
        url = self.base + path + (f"?{urlencode(query)}" if query else "")
        headers = self.headers
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers = {**headers, "Content-Type": "application/json"}
        return self.pool.request(
            method, url, body=data, headers=headers, retries=False, redirect=False,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
        )  # fmt: skip

    def close(self) -> None:
        self.pool.clear()


_CORE = "/api/v1"
_BATCH = "/apis/batch/v1"
_COORDINATION = "/apis/coordination.k8s.io/v1"


def _path(api: str, namespace: str, resource: str, name: str | None = None) -> str:
    """The REST path of a namespaced collection, or of one object in it."""
    path = f"{api}/namespaces/{quote(namespace, safe='')}/{resource}"
    return f"{path}/{quote(name, safe='')}" if name is not None else path


class Kubernetes:
    """Lists, creates and deletes the objects of one release, counting every call."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        retries: int = 3,
        deadline: Deadline | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.transport = _Transport(kubeconfig_loader.load(kubeconfig, context=context))
        self.calls: Counter[str] = Counter()
        self.retries = retries
        self.deadline = deadline or Deadline.unbounded()
        self.page_size = page_size

    def close(self) -> None:
        self.transport.close()

    @property
    def call_count(self) -> int:
        return sum(self.calls.values())

    def _call(
        self,
        key: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        object_hook: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        attempt = 0
        while True:
            timeout = (self.deadline.timeout(_TIMEOUT[0], what=key), self.deadline.timeout(_TIMEOUT[1], what=key))
            self.calls[key] += 1
            try:
                response = self.transport.request(method, path, query=query or {}, body=body, timeout=timeout)
            except urllib3.exceptions.SSLError as exc:
                raise AuthError(f"{key}: the API server's TLS certificate is not trusted: {exc}") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                error: Exception = TransientError(f"{key}: {type(exc).__name__}: the API server did not answer")
            else:
                status = response.status
                if status < 300:
                    try:
                        return json.loads(response.data, object_hook=object_hook) if response.data else None
                    except ValueError:
                        error = TransientError(f"{key}: the response body is not complete JSON")
                else:
                    error = _refusal(
                        key, status, _status_message(response), continued=bool((query or {}).get("continue"))
                    )
            attempt += 1
            if attempt > self.retries or not isinstance(error, TransientError):
                raise error
            delay = 0.2 * (2 ** (attempt - 1))
            log.warning("%s; retry %d of %d in %.1fs", error, attempt, self.retries, delay)
            self.deadline.sleep(delay, what=key, error=error)

    # --- reads ---------------------------------------------------------------------------------

    def _list(
        self, key: str, api: str, resource: str, namespace: str, *, owner: names.Owner, convert: Convert[T]
    ) -> list[T]:
        """Every object of the release in a namespace, as model objects; read again from the start when the
        continue token expired between two pages (HTTP 410), as the API conventions ask."""
        for restart in range(_LIST_RESTARTS + 1):
            try:
                return self._list_pages(key, _path(api, namespace, resource), owner=owner, convert=convert)
            except _ContinueExpired as exc:
                if restart == _LIST_RESTARTS:
                    raise TransientError(f"{key}: the continue token expired {restart + 1} times: {exc}") from None
                log.warning("%s: the continue token expired (%s); listing again from the start", key, exc)
        raise AssertionError("unreachable")

    def _list_pages(self, key: str, path: str, *, owner: names.Owner, convert: Convert[T]) -> list[T]:
        """Page by page (limit/continue), each page converted and freed before the next is fetched."""
        found: list[T] = []
        token: str | None = None
        while True:
            query: dict[str, Any] = {"labelSelector": names.selector(owner), "limit": self.page_size}
            if token:
                query["continue"] = token
            page = self._call(key, "GET", path, query=query, object_hook=_skim)
            page = page if isinstance(page, dict) else {}
            found.extend(obj for obj in map(convert, page.get("items") or []) if obj is not None)
            token = (page.get("metadata") or {}).get("continue") or None
            del page
            if token is None:
                return found

    def list_jobs(self, namespace: str, *, owner: names.Owner) -> list[AgentJob]:
        return self._list("list jobs", _BATCH, "jobs", namespace, owner=owner, convert=job_from_json)

    def list_pods(self, namespace: str, *, owner: names.Owner) -> list[AgentPod]:
        return self._list("list pods", _CORE, "pods", namespace, owner=owner, convert=pod_from_json)

    # --- writes --------------------------------------------------------------------------------

    def create_job(self, job: Mapping[str, Any], *, dry_run: bool = False) -> bool:
        """Create a Job; False when it already existed (an overlapping pass made it: success)."""
        return self.create_job_uid(job, dry_run=dry_run) is not None

    def create_job_uid(self, job: Mapping[str, Any], *, dry_run: bool = False) -> str | None:
        """Create a Job and return its uid (what an ownerReference names); None when it already existed."""
        # Strict: a mistyped field of a job template (`resource:` for `resources:`) is refused with its name
        # instead of dropped with a warning nobody reads (pods without limits).
        query = {"fieldValidation": "Strict", **({"dryRun": "All"} if dry_run else {})}
        path = _path(_BATCH, job["metadata"]["namespace"], "jobs")
        try:
            created = self._call("create job", "POST", path, query=query, body=job)
        except ConflictError:
            return None
        metadata = created.get("metadata") if isinstance(created, dict) else None
        return str((metadata or {}).get("uid") or "")

    def create_secret(self, secret: Mapping[str, Any]) -> None:
        """Create a Secret (an agent's files, owned by its Job)."""
        self._call("create secret", "POST", _path(_CORE, secret["metadata"]["namespace"], "secrets"), body=secret)

    def delete_job(self, namespace: str, name: str) -> bool:
        """Delete a Job and, in the background, its pods; False when it was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._call("delete job", "DELETE", _path(_BATCH, namespace, "jobs", name), body=body)
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
        self._call("create event", "POST", _path(_CORE, namespace, "events"), body=event)

    # --- the Lease and the standby history: objects read, created and replaced by name -----------

    def _read(self, kind: str, api: str, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._call(f"get {kind}", "GET", _path(api, namespace, resource, name))
        except NotFoundError:
            return None
        return found if isinstance(found, dict) else None

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("lease", _COORDINATION, "leases", namespace, name)

    def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create the Lease; None when someone else created it first."""
        try:
            created = self._call("create lease", "POST", _path(_COORDINATION, namespace, "leases"), body=lease)
        except ConflictError:
            return None
        return created if isinstance(created, dict) else None

    def replace_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any] | None:
        """Replace the Lease at its resourceVersion; None when it changed under us."""
        path = _path(_COORDINATION, namespace, "leases", lease["metadata"]["name"])
        try:
            replaced = self._call("update lease", "PUT", path, body=lease)
        except ConflictError:
            return None
        return replaced if isinstance(replaced, dict) else None

    def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap of ours; None when it does not exist."""
        return self._read("configmap", _CORE, "configmaps", namespace, name)

    def write_configmap(
        self,
        namespace: str,
        name: str,
        *,
        data: Mapping[str, str],
        labels: Mapping[str, str],
        resource_version: str | None,
    ) -> str | None:
        """Create the ConfigMap (resource_version None) or replace it at resource_version; its new
        resourceVersion, or None when another run created, changed or deleted it first (read it again)."""
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(data)}
        try:
            if resource_version is None:
                written = self._call("create configmap", "POST", _path(_CORE, namespace, "configmaps"), body=body)
            else:
                path = _path(_CORE, namespace, "configmaps", name)
                written = self._call("update configmap", "PUT", path, body=body)
        except ConflictError:
            return None  # created or changed by another run since we read it
        except NotFoundError:
            if resource_version is None:
                raise  # the namespace itself is missing
            return None  # deleted since we read it
        version = ((written or {}).get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    # --- permissions ---------------------------------------------------------------------------

    def can_i(
        self, *, verb: str, resource: str, group: str, namespace: str, name: str | None = None
    ) -> tuple[bool, str]:
        """Ask the API server whether our identity may do `verb` on `resource` (one object of it when `name`
        is given: a rule limited by resourceNames allows only that) (SelfSubjectAccessReview)."""
        attributes = {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
        if name is not None:
            attributes["name"] = name
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        answer = self._call("create selfsubjectaccessreview", "POST", path, body=review)
        status = (answer or {}).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or status.get("evaluationError") or "")
