"""A TLS reverse proxy in front of the real API server that can hold one write of its client.

The realkube crash tests point the reconciler's kubeconfig here instead of at the API server. Every
request is forwarded as it came (method, path and query, body, the client's bearer token), and the
answer is sent back with its status, Content-Type and Warning headers. Writes (any method but GET;
access reviews excepted) are counted; the one `hold()` names is held, like the emulators' held
faults: `lost` never reaches the server, `landed` is carried out but its answer never comes. The test
then kills the client: a crash right after the write before it. The proxy serves the API server's own
certificate (its SANs hold 127.0.0.1), so the client's CA check is unchanged.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from control_plane import ControlPlane

FORWARDED_HEADERS = ("Authorization", "Content-Type", "Accept", "User-Agent")
RETURNED_HEADERS = ("Content-Type", "Warning")


class WriteGate:
    """The proxy, its count of writes and the write it holds (see the module docstring)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.writes = 0
        self.held = threading.Event()
        self._release = threading.Event()
        self._hold_at: int | None = None
        self._landed = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(plane.pki / "server.crt", plane.pki / "server.key")
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> WriteGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def hold(self, index: int, *, landed: bool) -> None:
        """Hold the index-th write (1-based) from now on, carried out (`landed`) or not."""
        with self._lock:
            self.writes, self._hold_at, self._landed = 0, index, landed
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        """Let the held request's thread end (its client is gone by then)."""
        self._release.set()

    def _count(self, method: str, path: str) -> tuple[bool, bool]:
        """(hold this request, carry it out)."""
        if method == "GET" or "selfsubjectaccessreviews" in path:
            return False, True
        with self._lock:
            self.writes += 1
            hold = self.writes == self._hold_at
        return hold, not hold or self._landed

    def _park(self) -> None:
        self.held.set()
        self._release.wait(timeout=120)


def _handler(gate: WriteGate) -> type[BaseHTTPRequestHandler]:
    session = gate.plane.server.session()
    session.cert = None  # the client's own bearer token authenticates it

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            hold, carry_out = gate._count(self.command, self.path)
            response = None
            if carry_out:
                headers = {h: self.headers[h] for h in FORWARDED_HEADERS if self.headers.get(h)}
                response = session.request(
                    self.command, gate.plane.url + self.path, data=body, headers=headers, timeout=60
                )
            if hold or response is None:  # held: lost (never sent) or landed (answer withheld)
                gate._park()
                self.close_connection = True
                return
            self.send_response(response.status_code)
            for name in RETURNED_HEADERS:
                if name in response.headers:
                    self.send_header(name, response.headers[name])
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler
