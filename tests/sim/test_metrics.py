"""We test the metrics: a CronJob-style run pushes them to a Pushgateway (a tiny local HTTP server that
records the push), and `serve` exposes the same figures on /metrics after its passes."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import Sim


class Recorder(HTTPServer):
    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str, str]] = []
        self.status = 200
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.pushes.append(("PUT", self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def pushgateway() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _value(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found, f"{sample} missing from:\n{text}"
    return float(found.group(1))


def test_a_run_pushes_its_metrics(sim: Sim, pushgateway: Recorder) -> None:
    """We test: `reconcile --pushgateway URL` PUTs the run's metrics to /metrics/job/azp-reconciler/
    instance/<release> in the text format: queued requests, Jobs created, Azure DevOps calls, passes,
    agents by state of the pools it listed, the pass-duration histogram."""
    sim.queue("linux", 3, demands=("docker",), duration=30)
    sim.forget_agents_scan()
    result = sim.reconcile("--pushgateway", pushgateway.url)
    assert result.code == 0, result.text
    assert len(pushgateway.pushes) == 1
    method, path, content_type, body = pushgateway.pushes[0]
    assert (method, path) == ("PUT", "/metrics/job/azp-reconciler/instance/azp-agents")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert _value(body, "azp_requests_queued") == 3
    assert _value(body, 'azp_jobs_total{outcome="created"}') == 3
    assert _value(body, "azp_passes_total") == 1
    assert _value(body, "azp_azdo_calls_total") >= 2
    assert _value(body, 'azp_agents{pool="linux",state="offline"}') >= 1  # the placeholder
    assert _value(body, 'azp_pass_duration_seconds_bucket{le="+Inf"}') == 1
    assert "# TYPE azp_jobs_total counter" in body


def test_a_failed_push_does_not_fail_the_run(sim: Sim, pushgateway: Recorder) -> None:
    """We test: a Pushgateway that answers 500, or none listening, costs a warning, not the exit code."""
    pushgateway.status = 500
    refused = sim.reconcile("--pushgateway", pushgateway.url)
    assert refused.code == 0 and "could not push the metrics" in refused.err and "HTTP 500" in refused.err
    gone = sim.reconcile("--pushgateway", "http://127.0.0.1:9")
    assert gone.code == 0 and "could not push the metrics" in gone.err
