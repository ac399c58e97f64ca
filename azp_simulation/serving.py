"""What both emulators share: an HTTP server on a loopback port, a ticker thread that runs the
emulated controllers (the Azure DevOps scheduler, the Kubernetes Job controller and kubelet), and the
injected faults."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

log = logging.getLogger("azp_simulation")


FaultKind = Literal["status", "delay", "timeout", "reset", "truncated", "html"]


@dataclass
class Fault:
    """One injected failure: which calls it hits and how many more times. `route` is '*' or one of the
    names an emulator gives a call (a route template, a resource, a call key)."""

    method: str
    route: str
    kind: FaultKind
    status: int = 500
    times: int = 1
    delay: float = 0.0
    retry_after: float | None = None
    body: str | None = None

    def matches(self, method: str, routes: Collection[str]) -> bool:
        if self.method != "*" and self.method.upper() != method:
            return False
        return self.route == "*" or self.route in routes


class FaultList:
    """The faults injected into one emulator, each taken by the next `times` calls it matches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self, fault: Fault) -> bool:
        """Whether this very fault is still waiting for a call it matches."""
        with self._lock:
            return any(held is fault for held in self._faults)

    def take(self, method: str, routes: Collection[str]) -> Fault | None:
        """The first fault this call matches, counted down (and forgotten when spent), or None."""
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(method, routes):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None


TICK_SECONDS = 0.05


class QuietServer(ThreadingHTTPServer):
    """The HTTP server; a client that hangs up mid-answer is normal here, not an error to print."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended abruptly", client_address, exc_info=True)


class ServedEmulator:
    """Start/stop, context manager and the ticker for an emulator; subclasses give the handler."""

    name = "emulator"
    auto_tick: bool

    def _init_serving(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._faults = FaultList()
        self.base_url = ""

    def inject_fault(
        self,
        method: str,
        route: str,
        *,
        kind: FaultKind,
        status: int = 500,
        times: int = 1,
        delay: float = 0.0,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> Fault:
        """Make the next `times` requests matching the method ('*' = any) and route fail this way. `route`
        is '*' or a name the emulator gives a call: for Azure DevOps a route template; for Kubernetes a
        resource ('jobs'), a call key without the method ('jobs(list)') or a path template
        ('/apis/batch/v1/namespaces/{namespace}/jobs'). Returns the fault, for `fault_pending`."""
        fault = Fault(
            method=method,
            route=self._fault_route(route),
            kind=kind,
            status=status,
            times=times,
            delay=delay,
            retry_after=retry_after,
            body=body,
        )
        self._faults.add(fault)
        return fault

    def fault_pending(self, fault: Fault) -> bool:
        """Whether an injected fault still waits for a call (it is dropped once taken `times` times)."""
        return self._faults.pending(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def _fault_route(self, route: str) -> str:
        return route

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def _url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}"

    def tick(self, now: float | None = None) -> None:
        raise NotImplementedError

    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Serve HTTP on host:port (0 = an ephemeral port); returns the base URL."""
        if self._server is not None:
            return self.base_url
        self._stopping.clear()
        server = QuietServer((host, port), self._handler())
        self._server = server
        bound_host, bound_port = server.server_address[:2]
        self.base_url = self._url(str(bound_host), int(bound_port))
        serve = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"{self.name}-http", daemon=True
        )
        ticker = threading.Thread(target=self._tick_forever, name=f"{self.name}-ticker", daemon=True)
        self._threads = [serve, ticker]
        serve.start()
        ticker.start()
        return self.base_url

    def stop(self) -> None:
        """Stop the server and the ticker; held (timeout-fault) connections are released."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick_forever(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            if self.auto_tick:
                try:
                    self.tick()
                except Exception:
                    # A broken controller must show, not silently stop the emulated world.
                    log.exception("%s controllers failed", self.name)


class FaultingHandler(BaseHTTPRequestHandler):
    """The request handler both emulators share: every method goes to `_serve`, access logs go to debug,
    and transport-level faults misbehave the same way in both."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _serve(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def transport_fault(
        self, kind: str, *, record: Callable[[int], None], hold: Callable[[], object], body: bytes, content_type: str
    ) -> None:
        """Answer a "timeout", "reset" or "truncated" fault; `record` logs the call with its status."""
        if kind == "timeout":
            record(0)
            hold()
            self.drop_connection(reset=False)
            return
        if kind == "reset":
            record(0)
            self.drop_connection(reset=True)
            return
        # "truncated": valid headers, then half the JSON and the connection closes. Without a
        # Content-Length the client reads to EOF and gets a cut JSON document.
        record(200)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[: max(1, len(body) // 2)])
        self.wfile.flush()
        self.drop_connection(reset=False)

    def drop_connection(self, *, reset: bool) -> None:
        self.close_connection = True
        if reset:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()
