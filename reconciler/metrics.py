"""Prometheus metrics of the reconciler: what its passes saw and did, and the hints it received.

Written in the Prometheus text exposition format 0.0.4 by hand (a few gauges, counters and one
histogram do not justify a dependency): served on `/metrics` by `azp-reconciler serve`, and pushed
to a Pushgateway (`PUT /metrics/job/<job>/instance/<instance>`, which replaces the group) at the end
of a CronJob run when one is configured.
Format: https://prometheus.io/docs/instrumenting/exposition_formats/ ; Pushgateway API:
https://github.com/prometheus/pushgateway#api (PUT replaces every metric of the grouping key).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from reconciler.errors import TransientError

if TYPE_CHECKING:
    from reconciler.reconcile import PassReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PASS_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_OUTCOMES = ("created", "drained", "pruned", "stuck")

HELP = {
    "azp_requests_queued": ("gauge", "Job requests waiting for an agent in the pools polled by the last pass."),
    "azp_requests_running": ("gauge", "Job requests assigned to an agent in the pools polled by the last pass."),
    "azp_agents": ("gauge", "Registered agents of a pool by state, as last listed."),
    "azp_jobs_active": ("gauge", "Kubernetes Jobs of this release that have not finished."),
    "azp_jobs_total": ("counter", "Kubernetes Jobs and agents acted on, by what was done."),
    "azp_actions_failed_total": ("counter", "Failed actions and reads, and configured pools that do not exist."),
    "azp_azdo_calls_total": ("counter", "Azure DevOps REST calls made, retries included."),
    "azp_azdo_throttled_total": ("counter", "Azure DevOps answers that asked to slow down (429, Retry-After)."),
    "azp_kube_calls_total": ("counter", "Kubernetes API calls made."),
    "azp_passes_total": ("counter", "Passes run."),
    "azp_pass_duration_seconds": ("histogram", "Wall time of one pass."),
    "azp_hints_total": ("counter", "Service hook posts received, by what became of them."),
}


def agent_state(*, online: bool, enabled: bool, busy: bool) -> str:
    """The state an agent is counted under: busy, idle, disabled or offline."""
    if busy:
        return "busy"
    if not online:
        return "offline"
    return "idle" if enabled else "disabled"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items())) + "}"


class Metrics:
    """The figures of a reconciler process; thread-safe (the receiver reads while the loop writes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._buckets = [0] * len(PASS_SECONDS_BUCKETS)
        self._seconds_sum = 0.0
        self._passes = 0
        self._agents: dict[str, Counter[str]] = {}

    def _count(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self._counters[key] = self._counters.get(key, 0.0) + value

    def _set(self, name: str, value: float, **labels: str) -> None:
        self._gauges[(name, tuple(sorted(labels.items())))] = value

    def record_pass(self, report: PassReport, *, azdo_throttled: int = 0) -> None:
        """Add one pass: its gauges replace the previous pass's, its counts add up."""
        with self._lock:
            counts = report.outcome.counts
            self._set("azp_requests_queued", report.queued)
            self._set("azp_requests_running", report.running)
            self._set("azp_jobs_active", report.jobs)
            for outcome in JOB_OUTCOMES:
                self._count("azp_jobs_total", counts[outcome], outcome=outcome)
            self._count("azp_actions_failed_total", report.failed)
            self._count("azp_azdo_calls_total", report.azdo_calls)
            self._count("azp_azdo_throttled_total", azdo_throttled)
            self._count("azp_kube_calls_total", report.kube_calls)
            self._agents.update({pool: Counter(states) for pool, states in report.agents_by_state.items()})
            self._passes += 1
            self._seconds_sum += report.seconds
            for index, bound in enumerate(PASS_SECONDS_BUCKETS):
                if report.seconds <= bound:
                    self._buckets[index] += 1

    def record_hint(self, result: str) -> None:
        with self._lock:
            self._count("azp_hints_total", result=result)

    def _samples(self) -> dict[str, list[tuple[str, dict[str, str], float]]]:
        samples: dict[str, list[tuple[str, dict[str, str], float]]] = {name: [] for name in HELP}
        for (name, labels), value in sorted(self._gauges.items()):
            samples[name].append((name, dict(labels), value))
        for (name, labels), value in sorted(self._counters.items()):
            samples[name].append((name, dict(labels), value))
        for pool, states in sorted(self._agents.items()):
            for state in ("busy", "idle", "disabled", "offline"):
                samples["azp_agents"].append(("azp_agents", {"pool": pool, "state": state}, states[state]))
        samples["azp_passes_total"].append(("azp_passes_total", {}, self._passes))
        histogram = samples["azp_pass_duration_seconds"]
        for bound, count in zip(PASS_SECONDS_BUCKETS, self._buckets, strict=True):
            histogram.append(("azp_pass_duration_seconds_bucket", {"le": f"{bound:g}"}, count))
        histogram.append(("azp_pass_duration_seconds_bucket", {"le": "+Inf"}, self._passes))
        histogram.append(("azp_pass_duration_seconds_sum", {}, self._seconds_sum))
        histogram.append(("azp_pass_duration_seconds_count", {}, self._passes))
        return samples

    def render(self) -> str:
        """Every metric in the text exposition format."""
        with self._lock:
            samples = self._samples()
        lines: list[str] = []
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f"{sample}{_labels(labels)} {value:g}" for sample, labels, value in samples[name]]
        return "\n".join(lines) + "\n"


def push(url: str, metrics: Metrics, *, job: str, instance: str, timeout: float = 10.0) -> None:
    """Replace this run's group on a Pushgateway; TransientError when it does not take it."""
    target = f"{url.rstrip('/')}/metrics/job/{quote(job, safe='')}/instance/{quote(instance, safe='')}"
    request = urllib.request.Request(
        target, data=metrics.render().encode(), method="PUT", headers={"Content-Type": CONTENT_TYPE}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise TransientError(f"the Pushgateway at {url} refused the metrics: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransientError(f"the Pushgateway at {url} did not answer: {exc}") from None
    if status >= 300:
        raise TransientError(f"the Pushgateway at {url} answered HTTP {status}")
