"""Service hooks of the Azure DevOps emulator: subscriptions, and the delivery of "a job is waiting".

Modelled on (reference /work/shared/reference/entra-hooks-aci.md, section 1):
- subscriptions are created with `POST _apis/hooks/subscriptions` (Service Hooks REST API,
  learn.microsoft.com/rest/api/azure/devops/hooks/subscriptions/create): publisher `pipelines`, event
  `ms.vss-pipelines.job-state-changed-event`, filters in `publisherInputs` (`projectId`, `pipelineId`,
  `jobStateId` Waiting | Running | Completed), consumer `webHooks` / action `httpRequest` with `url`,
  `httpHeaders` ("Key:value" per line), `basicAuthUsername`, `basicAuthPassword`
  (MicrosoftDocs/azure-devops-docs docs/service-hooks/events.md and consumers.md);
- the event's shape is the delivered sample of liatrio/liatrio-otel-collector
  (receiver/azuredevopsreceiver/testdata/example-job-event.json): `resource.projectId`, `resource.job`
  {id, name, attempt, state}, `resource.stage`, `resource.run`, `resource.pipeline`,
  `resourceContainers`, `createdDate`; no pool, no request id. A waiting job's state is "waiting"
  (veertuinc/anklet internal/azure_devops/types.go); job.id is the job request's jobId;
- delivery is best effort: usually within seconds (the doc sample 0.75 s, the liatrio sample 9 s after the
  job changed), sometimes much later (azure-devops-docs issue #6727, "Severe lag in Web Hook"), sometimes
  never (Learn Q&A "Service Hooks stuck in Queued state"); out of order (issue #7646). 408, 502, 503 and
  504 answers are retried after 1, 2, 4, 8, 16, 32 and 60 s; 410 disables the subscription
  (docs/service-hooks/troubleshoot.md);
- a subscription is per project (`publisherInputs.projectId`, reference 1.2): a job's event goes only to the
  subscriptions of the project whose pipeline queued it, and carries that project's id.

Deliberately not emulated: the other pipeline events and consumers, probation after repeated failures,
the `message`/`detailedMessage` texts (the reconciler's subscription asks for none), certificate
validation rules of the service (the caller passes an SSL context), and parallel delivery (one
delivery thread posts in due order). A connection that fails is retried like a 503 (an assumption).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azp_simulation.azdo_support import ApiError, format_time
from azp_simulation.projects import Projects

log = logging.getLogger("azp_simulation.hooks")

EVENT_TYPE = "ms.vss-pipelines.job-state-changed-event"
PUBLISHER = "pipelines"
RESOURCE_VERSION = "5.1-preview.1"
SCOPE_HOOKS_READ = "vso.hooks"
SCOPE_HOOKS_WRITE = "vso.hooks_write"
RETRY_STATUSES = (408, 502, 503, 504)
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
POST_TIMEOUT = 20.0
JOB_STATES = ("waiting", "running", "completed")


@dataclass(frozen=True)
class HookDelivery:
    """How the service delivers events: `delay` seconds (uniform) usually, `late_delay` for a fraction
    `late`, never for a fraction `loss`."""

    delay: tuple[float, float] = (0.3, 2.0)
    late: float = 0.02
    late_delay: tuple[float, float] = (30.0, 180.0)
    loss: float = 0.0

    def due_in(self, rng: random.Random) -> float | None:
        """Seconds until an event is posted, or None when it is lost."""
        if rng.random() < self.loss:
            return None
        low, high = self.late_delay if rng.random() < self.late else self.delay
        return rng.uniform(low, high)


@dataclass
class DeliveryRecord:
    """One event for one subscription: when it happened, when it was posted and what came back."""

    subscription_id: str
    job_id: str
    created: float
    lost: bool = False
    attempts: int = 0
    delivered: float | None = None
    status: int | None = None


@dataclass(order=True)
class _Pending:
    due: float
    sequence: int
    record: DeliveryRecord = field(compare=False)
    url: str = field(compare=False)
    headers: dict[str, str] = field(compare=False)
    body: bytes = field(compare=False)


def _bad(message: str) -> ApiError:
    return ApiError(400, message, "InvalidSubscriptionException")


def _check_body(body: Any, *, projects: Projects) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("The subscription must be a JSON object.")
    for key, expected in (
        ("publisherId", PUBLISHER),
        ("eventType", EVENT_TYPE),
        ("consumerId", "webHooks"),
        ("consumerActionId", "httpRequest"),
    ):
        if body.get(key) != expected:
            raise _bad(f"{key} {body.get(key)!r} is not supported by this emulator (only {expected!r}).")
    publisher = body.get("publisherInputs") or {}
    consumer = body.get("consumerInputs") or {}
    if not isinstance(publisher, dict) or not isinstance(consumer, dict):
        raise _bad("publisherInputs and consumerInputs must be objects.")
    project = projects.find(str(publisher.get("projectId", "")))
    if project is None or project.project_id != str(publisher.get("projectId", "")).lower():
        # The filter takes the project's id (reference 1.2), not its name.
        raise ApiError(404, f"Project {publisher.get('projectId')!r} does not exist.", "ProjectDoesNotExistException")
    state = publisher.get("jobStateId")
    if state is not None and str(state).lower() not in JOB_STATES:
        raise _bad(f"publisherInputs.jobStateId {state!r} must be one of Waiting, Running, Completed.")
    if urlsplit(str(consumer.get("url", ""))).scheme not in ("http", "https"):
        raise _bad("consumerInputs.url must be an http or https URL.")
    return body


class ServiceHooks:
    """The organization's subscriptions and the thread that posts their events."""

    def __init__(
        self,
        *,
        account_id: str,
        projects: Projects,
        base_url: str,
        clock: Callable[[], float] = time.time,
        seed: int = 1,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.account_id = account_id
        self.projects = projects
        self.base_url = base_url
        self.clock = clock
        self.delivery = HookDelivery()
        self.ssl_context = ssl_context
        self.records: list[DeliveryRecord] = []
        self._subscriptions: dict[str, dict[str, Any]] = {}
        self._rng = random.Random(seed)
        self._queue: list[_Pending] = []
        self._sequence = itertools.count()
        self._notifications = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def create(self, body: Any, *, identity: Mapping[str, Any]) -> dict[str, Any]:
        """POST _apis/hooks/subscriptions: the stored subscription, its password masked."""
        checked = _check_body(body, projects=self.projects)
        subscription = {
            **checked,
            "id": str(uuid.uuid4()),
            "status": "enabled",
            "createdBy": dict(identity),
            "createdDate": format_time(self.clock()),
            "url": f"{self.base_url}/_apis/hooks/subscriptions",
        }
        with self._lock:
            self._subscriptions[subscription["id"]] = subscription
        return self._shown(subscription)

    def subscriptions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._shown(s) for s in self._subscriptions.values()]

    @staticmethod
    def _shown(subscription: Mapping[str, Any]) -> dict[str, Any]:
        # Secrets of a consumer are never read back (the portal shows them masked).
        consumer = dict(subscription.get("consumerInputs") or {})
        if "basicAuthPassword" in consumer:
            consumer["basicAuthPassword"] = "********"
        return {**subscription, "consumerInputs": consumer}

    def job_changed(
        self, job: Mapping[str, Any], *, state: str, run: Mapping[str, Any], project_id: str, when: float
    ) -> None:
        """A job of a project changed state: queue a post for every enabled subscription of that project whose
        filters match."""
        with self._lock:
            for subscription in self._subscriptions.values():
                if subscription["status"] == "enabled" and _matches(
                    subscription, state=state, run=run, project=project_id
                ):
                    event = self._event(subscription, job, state=state, run=run, project_id=project_id, when=when)
                    self._schedule(subscription, event, when)
            self._wake.notify()
        self._ensure_thread()

    def _event(
        self,
        subscription: Mapping[str, Any],
        job: Mapping[str, Any],
        *,
        state: str,
        run: Mapping[str, Any],
        project_id: str,
        when: float,
    ) -> dict[str, Any]:
        pipeline = {"id": run["pipeline_id"], "name": run["pipeline_name"]}
        container = {"id": project_id, "baseUrl": f"{self.base_url}/"}
        return {
            "subscriptionId": subscription["id"],
            "notificationId": next(self._notifications),
            "id": str(uuid.uuid4()),
            "eventType": EVENT_TYPE,
            "publisherId": PUBLISHER,
            "resource": {
                "projectId": project_id,
                "job": {"id": job["id"], "name": job["name"], "attempt": job.get("attempt", 1), "state": state},
                "stage": {"id": job["stage_id"], "name": "__default", "attempt": 1, "state": "running"},
                "run": {"id": run["id"], "name": run["name"], "state": "inProgress", "pipeline": pipeline},
                "pipeline": pipeline,
                "repositories": [],
            },
            "resourceVersion": RESOURCE_VERSION,
            "resourceContainers": {
                "account": {"id": self.account_id, "baseUrl": f"{self.base_url}/"},
                "project": container,
            },
            "createdDate": format_time(when),
        }

    def _schedule(self, subscription: Mapping[str, Any], event: Mapping[str, Any], when: float) -> None:
        record = DeliveryRecord(subscription_id=subscription["id"], job_id=event["resource"]["job"]["id"], created=when)
        self.records.append(record)
        due_in = self.delivery.due_in(self._rng)
        if due_in is None:
            record.lost = True
            return
        consumer = subscription.get("consumerInputs") or {}
        headers = {"Content-Type": "application/json; charset=utf-8"}
        for line in str(consumer.get("httpHeaders") or "").splitlines():
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip()] = value.strip()
        if consumer.get("basicAuthUsername") or consumer.get("basicAuthPassword"):
            pair = f"{consumer.get('basicAuthUsername', '')}:{consumer.get('basicAuthPassword', '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        body = json.dumps(event).encode()
        heapq.heappush(
            self._queue, _Pending(when + due_in, next(self._sequence), record, str(consumer["url"]), headers, body)
        )

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._deliver_forever, name="azdo-service-hooks", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=POST_TIMEOUT + 5)

    def _next_due(self) -> _Pending | None:
        with self._lock:
            while not self._stopping:
                if self._queue and self._queue[0].due <= self.clock():
                    return heapq.heappop(self._queue)
                timeout = self._queue[0].due - self.clock() if self._queue else None
                self._wake.wait(timeout)
            return None

    def _deliver_forever(self) -> None:
        while (pending := self._next_due()) is not None:
            status = self._post(pending)
            record = pending.record
            record.attempts += 1
            record.status = status
            if status is not None and 200 <= status < 300:
                record.delivered = self.clock()
            elif (status is None or status in RETRY_STATUSES) and record.attempts <= len(RETRY_DELAYS):
                pending.due = self.clock() + RETRY_DELAYS[record.attempts - 1]
                with self._lock:
                    heapq.heappush(self._queue, pending)
            elif status == 410:
                with self._lock:
                    self._subscriptions[record.subscription_id]["status"] = "disabledBySystem"

    def _post(self, pending: _Pending) -> int | None:
        request = urllib.request.Request(pending.url, data=pending.body, method="POST", headers=pending.headers)
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT, context=self.ssl_context) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            log.debug("service hook post to %s failed: %s", pending.url, exc)
            return None


def _matches(subscription: Mapping[str, Any], *, state: str, run: Mapping[str, Any], project: str) -> bool:
    inputs = subscription.get("publisherInputs") or {}
    if str(inputs.get("projectId", "")).lower() != project:
        return False
    wanted_state = inputs.get("jobStateId")
    if wanted_state and str(wanted_state).lower() != state:
        return False
    pipeline = inputs.get("pipelineId")
    return not pipeline or str(pipeline) == str(run["pipeline_id"])
