"""The service hook receiver: Azure DevOps posts "a job is waiting for an agent", a pass starts at once.

Azure DevOps delivers `ms.vss-pipelines.job-state-changed-event` (publisher `pipelines`) to a Web Hooks
consumer: an HTTP POST of a JSON event whose `resource` carries the project id and the job (`id`,
`attempt`, `state`), never the pool or the request id (reference entra-hooks-aci.md, 1.2; the payload
of liatrio/liatrio-otel-collector receiver/azuredevopsreceiver/testdata/example-job-event.json). The
Web Hooks consumer signs nothing: it sends basic auth credentials and extra headers it was configured
with (docs/service-hooks/consumers.md), so a post must carry the shared secret as the basic auth
password or in the `X-Azp-Hook-Secret` header, over HTTPS. Delivery is best effort (late, out of order,
sometimes never), so a hint only makes the loop poll the project's pools sooner; polling stays the
backstop. The reconciler loop runs in the same process (`azp-reconciler serve`), holding the Lease.

Hints are deduplicated by (job id, attempt, state), a hint raised longer than `idleInterval` ago is
stale (every pool has been polled since), and hints are rate-limited by the loop: a hinted pool is
polled no sooner than `interval` after its previous poll, so a flood of hooks costs at most one
job-requests call per pool per `interval` (and at most a few reads of a run's timeline a pass, for jobs not
in the pools their project's jobs were seen in). Posts are refused before their body is read when they are
not authenticated (401), and when their body is too large (413) or not such an event (400).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import signal
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.azdo import parse_time
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from reconciler.azdo import AzureDevOps
    from reconciler.reconcile import Reconciler

log = logging.getLogger("reconciler.receiver")

EVENT_TYPE = "ms.vss-pipelines.job-state-changed-event"
PUBLISHER = "pipelines"
SECRET_HEADER = "X-Azp-Hook-Secret"
HOOK_PATH = "/hooks/azure-devops"
MAX_BODY_BYTES = 256 * 1024
MAX_CONNECTIONS = 32
SOCKET_TIMEOUT = 10.0
DEDUP_SIZE = 10_000
DEDUP_SECONDS = 3600.0


class MalformedHook(ValueError):
    """The body is not a job-state-changed event this receiver can use."""


@dataclass(frozen=True)
class Hint:
    """What a job-state-changed event tells: in which project which job (attempt) entered which state."""

    project_id: str | None
    job_id: str
    attempt: int
    state: str
    created: datetime | None = None
    """When the service raised the event (`createdDate`)."""
    run_id: int | None = None
    """The pipeline run (`resource.run.id`, the build id) the job belongs to."""

    @property
    def waiting(self) -> bool:
        return self.state.lower() == "waiting"


def parse_hint(body: bytes) -> Hint:
    """The hint in a service hook post; MalformedHook says what is wrong with it."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedHook("the body is not JSON") from None
    if not isinstance(event, dict):
        raise MalformedHook("the body is not a JSON object")
    if event.get("eventType") != EVENT_TYPE:
        raise MalformedHook(f"eventType is {event.get('eventType')!r}, expected {EVENT_TYPE!r}")
    resource = event.get("resource")
    job = resource.get("job") if isinstance(resource, dict) else None
    if not isinstance(resource, dict) or not isinstance(job, dict):
        raise MalformedHook("resource.job is missing")
    job_id, state, attempt = job.get("id"), job.get("state"), job.get("attempt", 1)
    if not isinstance(job_id, str) or not job_id or not isinstance(state, str) or not state:
        raise MalformedHook("resource.job.id and resource.job.state must be non-empty strings")
    if not isinstance(attempt, int):
        raise MalformedHook("resource.job.attempt must be a number")
    project = resource.get("projectId")
    if not isinstance(project, str):
        container = (event.get("resourceContainers") or {}).get("project")
        project = container.get("id") if isinstance(container, dict) else None
    run = resource.get("run")
    run_id = run.get("id") if isinstance(run, dict) else None
    return Hint(
        project_id=project if isinstance(project, str) else None,
        job_id=job_id.lower(),
        attempt=attempt,
        state=state,
        created=parse_time(event.get("createdDate")),
        run_id=run_id if isinstance(run_id, int) and not isinstance(run_id, bool) else None,
    )


class HookAuth:
    """The shared secret a post must carry, as the basic auth password or in the secret header."""

    def __init__(self, secret: str, *, username: str | None = None) -> None:
        if not secret:
            raise ConfigError("the service hook secret is empty: put a random string in the --secret-file file")
        self._secret = secret.encode()
        self._username = username

    @classmethod
    def from_file(cls, path: Path, *, username: str | None = None) -> HookAuth:
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--secret-file {path}: cannot read the service hook secret: {exc.strerror}") from None
        return cls(secret, username=username)

    @property
    def secret(self) -> str:
        return self._secret.decode()

    def allows(self, headers: Any) -> bool:
        header = headers.get(SECRET_HEADER)
        if header is not None:
            return hmac.compare_digest(header.strip().encode(), self._secret)
        scheme, _, encoded = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user_ok = self._username is None or hmac.compare_digest(user.encode(), self._username.encode())
        return hmac.compare_digest(password.encode(), self._secret) and user_ok


class HintFilter:
    """Passes each (job, attempt) entering Waiting once; remembers a bounded number for an hour."""

    def __init__(self, *, size: int = DEDUP_SIZE, seconds: float = DEDUP_SECONDS) -> None:
        self._seen: OrderedDict[tuple[str, int, str], float] = OrderedDict()
        self._size = size
        self._seconds = seconds
        self._lock = threading.Lock()

    def admit(self, hint: Hint, *, now: float) -> str:
        """'accepted', 'duplicate' (seen before) or 'ignored' (not a job waiting for an agent)."""
        if not hint.waiting:
            return "ignored"
        key = (hint.job_id, hint.attempt, hint.state.lower())
        with self._lock:
            while self._seen and (
                len(self._seen) >= self._size or next(iter(self._seen.values())) < now - self._seconds
            ):
                self._seen.popitem(last=False)
            if key in self._seen:
                return "duplicate"
            self._seen[key] = now
        return "accepted"


class Receiver(ThreadingHTTPServer):
    """The HTTP(S) server: service hooks on HOOK_PATH, Prometheus metrics on /metrics, /healthz.

    At most MAX_CONNECTIONS connections are served at once (others are closed at once), each with a
    socket timeout, so a flood or a slow client cannot exhaust threads or memory."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        *,
        auth: HookAuth,
        on_hint: Callable[[Hint], bool],
        metrics: Metrics,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.auth = auth
        self.on_hint = on_hint
        self.metrics = metrics
        self.tls = tls
        self.hints = HintFilter()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(SOCKET_TIMEOUT)
            if self.tls is not None:
                # The handshake runs here, in the connection's thread, not in the accepting one.
                request = self.tls.wrap_socket(request, server_side=True)
            super().process_request_thread(request, client_address)
        except (OSError, ssl.SSLError):
            self.shutdown_request(request)
        finally:
            self._slots.release()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="hook-receiver", daemon=True)
        self._thread.start()
        log.info("service hook receiver listening on %s%s", self.url, HOOK_PATH)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context from PEM files (the chart mounts a kubernetes.io/tls Secret)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: cannot load the certificate: {exc}") from None
    return context


class _Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"
    server_version = "azp-reconciler"

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are counted in the metrics; the base class would print each one with its path."""

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._reply(200, self.server.metrics.render().encode(), CONTENT_TYPE)
        elif self.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain")
        else:
            self._reply(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != HOOK_PATH:
            self.close_connection = True  # its body stays unread
            self._reply(404, b"not found\n", "text/plain")
            return
        if not self.server.auth.allows(self.headers):
            self._refuse(401, "unauthorized", "authentication required\n", {"WWW-Authenticate": 'Basic realm="azp"'})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._refuse(411, "malformed", "a Content-Length is required\n")
            return
        if int(length) > MAX_BODY_BYTES:
            self._refuse(413, "malformed", f"the body is larger than {MAX_BODY_BYTES} bytes\n")
            return
        try:
            hint = parse_hint(self.rfile.read(int(length)))
        except MalformedHook as exc:
            self._refuse(400, "malformed", f"{exc}\n", keep_alive=True)
            return
        result = self.server.hints.admit(hint, now=time.monotonic())
        if result == "accepted" and not self.server.on_hint(hint):
            result = "stale"
        log.debug("hint: job %s %s in project %s: %s", hint.job_id, hint.state, hint.project_id, result)
        self.server.metrics.record_hint(result)
        self._reply(200, json.dumps({"result": result}).encode(), "application/json")

    def _refuse(
        self, status: int, result: str, text: str, headers: dict[str, str] | None = None, *, keep_alive: bool = False
    ) -> None:
        self.server.metrics.record_hint(result)
        if not keep_alive:
            # The unread body stays on the connection: close it rather than read what was refused.
            self.close_connection = True
        self._reply(status, text.encode(), "text/plain", headers)

    def _reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True


def subscription_body(*, project_id: str, url: str, username: str, password: str) -> dict[str, Any]:
    """A Service Hooks subscription (POST _apis/hooks/subscriptions) that posts every job of a project
    entering Waiting to `url` with basic auth (reference entra-hooks-aci.md 1.2 and 1.3: publisher
    `pipelines`, filter `jobStateId`, consumer `webHooks` / action `httpRequest`)."""
    return {
        "publisherId": PUBLISHER,
        "eventType": EVENT_TYPE,
        "resourceVersion": "5.1-preview.1",
        "consumerId": "webHooks",
        "consumerActionId": "httpRequest",
        "publisherInputs": {"projectId": project_id, "jobStateId": "Waiting"},
        "consumerInputs": {
            "url": url,
            "basicAuthUsername": username,
            "basicAuthPassword": password,
            "resourceDetailsToSend": "all",
            "messagesToSend": "none",
            "detailedMessagesToSend": "none",
        },
    }


def subscribed_projects(subscriptions: list[dict[str, Any]], *, url: str) -> set[str]:
    """Projects (lower-case ids) that already send job-state-changed events to `url`."""
    projects = set()
    for subscription in subscriptions:
        inputs = subscription.get("publisherInputs") or {}
        consumer = subscription.get("consumerInputs") or {}
        if subscription.get("eventType") == EVENT_TYPE and consumer.get("url") == url:
            projects.add(str(inputs.get("projectId", "")).lower())
    return projects


def subscription_problem(subscriptions: list[dict[str, Any]], *, project_id: str, url: str) -> str | None:
    """What keeps the project's waiting jobs from reaching `url` (None: an enabled subscription sends them)."""
    mine = [
        s
        for s in subscriptions
        if s.get("eventType") == EVENT_TYPE
        and str((s.get("publisherInputs") or {}).get("projectId", "")).lower() == project_id.lower()
    ]
    to_url = [s for s in mine if (s.get("consumerInputs") or {}).get("url") == url]
    waiting = [
        s for s in to_url if str((s.get("publisherInputs") or {}).get("jobStateId") or "Waiting").lower() == "waiting"
    ]
    if any(s.get("status") == "enabled" for s in waiting):
        return None
    if waiting:
        return (
            f"the subscription to {url} is {waiting[0].get('status')}: enable it again (Project settings > "
            "Service hooks) or run `azp-reconciler subscribe`"
        )
    if to_url:
        return f"the subscription to {url} does not send jobs entering Waiting: run `azp-reconciler subscribe`"
    elsewhere = sorted({str((s.get("consumerInputs") or {}).get("url")) for s in mine})
    where = f" (it sends to {', '.join(elsewhere)})" if elsewhere else ""
    return f"no subscription sends its waiting jobs to {url}{where}: run `azp-reconciler subscribe`"


def pools_by_project(azdo: AzureDevOps, pool_ids: Mapping[str, int]) -> dict[str, dict[int, str]]:
    """Which of the pools (name -> id) each project (lower-case id) may queue jobs into: its agent queues of
    them (queue id -> pool name). One call lists the projects, one per project reads its queues of these
    pools; projects with none of them are left out. Needs the Project and Team read scope (vso.project)."""
    names = {pool_id: name for name, pool_id in pool_ids.items()}
    found: dict[str, dict[int, str]] = {}
    for project in azdo.project_ids():
        queues = {queue: names[pool_id] for queue, pool_id in azdo.queues_of_pools(project, list(names)).items()}
        if queues:
            found[project] = queues
    return found


def serve(reconciler: Reconciler, receiver: Receiver) -> int:
    """Run the loop for as long as the process lives, taking the Lease over whenever it is free.

    While a CronJob run (or a second replica) holds the Lease this process only waits for it; hints
    received meanwhile are kept and served by the first pass once it holds the Lease. First it reads which
    pools each project may use (its agent queues), so that a project's hint polls only those; without the
    scope to list projects every hint may poll every pool."""

    def terminate(signum: int, frame: object) -> None:
        log.info("received signal %d: stopping", signum)
        reconciler.stopping.set()
        reconciler.wake.set()

    previous = (
        signal.signal(signal.SIGTERM, terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        queues = pools_by_project(reconciler.azdo, reconciler.pool_ids)
        reconciler.project_queues = {project: set(pools.values()) for project, pools in queues.items()}
        reconciler.queue_pools = {queue: pool for pools in queues.values() for queue, pool in pools.items()}
        log.info(
            "pools by project (from their agent queues): %s",
            {p: sorted(q) for p, q in reconciler.project_queues.items()},
        )
    except ReconcilerError as exc:
        log.warning("cannot read which projects use the pools (%s): a hint may poll every pool", exc)
    receiver.start()
    code = 0
    try:
        while not reconciler.stopping.is_set():
            reason = reconciler.acquire()
            if reason is not None:
                log.info("waiting for the Lease: %s", reason)
                reconciler.stopping.wait(max(1.0, reconciler.config.lease_duration / 3))
                continue
            code = reconciler.run()
            if not reconciler.stopping.is_set():
                # The Lease was lost to another run: try again once it may have expired.
                reconciler.stopping.wait(max(1.0, reconciler.config.lease_duration / 3))
    finally:
        receiver.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code
