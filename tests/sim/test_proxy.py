"""We test that the reconciler sends its Azure DevOps calls through the proxy its environment names (the
chart's proxy.url becomes HTTP_PROXY/HTTPS_PROXY): a plain HTTP forward proxy on loopback, in front of the
emulator, records every request it forwards."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from conftest import Sim


class ForwardProxy(ThreadingHTTPServer):
    """A forward proxy for http:// URLs (absolute-form request targets, RFC 9112 section 3.2.2)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: ForwardProxy

    def _forward(self) -> None:
        target = urlsplit(self.path)
        if not target.scheme or target.hostname is None:
            self.send_error(400, "a proxy wants an absolute URL")
            return
        with self.server.lock:
            self.server.seen.append((self.command, target.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path, body=body, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_azure_devops_calls_go_through_the_proxy(sim: Sim, proxy: ForwardProxy) -> None:
    """We test: with HTTP_PROXY/HTTPS_PROXY set (and NO_PROXY empty) every Azure DevOps call of a pass that
    creates Jobs reaches the emulator through the proxy, and the pass works as without it."""
    sim.queue("linux", 2, demands=("docker",), duration=30)
    before = len(sim.azdo.calls())
    env = {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "NO_PROXY": "", "no_proxy": ""}
    result = sim.reconcile(env=env)
    assert result.code == 0, result.text
    assert len(sim.jobs(active_only=True)) == 2
    emulator_calls = sim.azdo.calls()[before:]
    organization_path = urlsplit(sim.simulation.organization_url).path
    proxied = [(method, path) for method, path in proxy.seen if path.startswith(organization_path)]
    assert emulator_calls and len(proxied) == len(emulator_calls)
    assert sorted(proxied) == sorted((c.method, c.path) for c in emulator_calls)
