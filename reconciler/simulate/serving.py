"""What both emulators share: an HTTP server on a loopback port and a ticker thread that runs the
emulated controllers (the Azure DevOps scheduler, the Kubernetes Job controller and kubelet)."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

log = logging.getLogger("reconciler.simulate")

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
        self.base_url = ""

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
