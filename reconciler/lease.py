"""The Lease that keeps two runs of one release from acting at once, as plain data (no client)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

CLOCK_TOLERANCE = timedelta(seconds=30)
"""How far another clock (the Lease's writer, the services) may be ahead of ours and still be trusted."""


def parse_time(value: Any) -> datetime | None:
    """Parse an RFC 3339 timestamp as Kubernetes writes it."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    *,
    name: str,
    namespace: str,
    holder: str,
    duration: int,
    now: datetime,
    annotations: Mapping[str, str],
    labels: Mapping[str, str],
    resource_version: str | None = None,
    acquire_time: datetime | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "annotations": dict(annotations),
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": format_time(acquire_time or now),
            "renewTime": format_time(now),
        },
    }


def lease_expired(lease: Mapping[str, Any], *, now: datetime) -> bool:
    """Whether the Lease's holder lost it. Its renewTime comes from the holder's clock: one more than
    CLOCK_TOLERANCE ahead of ours is not trusted (a skewed clock must not hold it for hours), so the
    Lease counts as expired and taking it over is left to the resourceVersion check of the update."""
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if renewed is None or renewed > now + CLOCK_TOLERANCE:
        return True
    duration = spec.get("leaseDurationSeconds")
    seconds = duration if isinstance(duration, int) and not isinstance(duration, bool) else 0
    return renewed + timedelta(seconds=seconds) < now


# When the holder's run means to stop looping (RFC 3339), written with every renewal: a run that finds
# the Lease held (a Job created by hand from the CronJob while the scheduled run loops) knows how long
# to wait for it.
ANNOTATION_RUN_UNTIL = "azp-agents.dev/run-until"


def wait_limit(lease: Mapping[str, Any] | None, *, now: datetime, grace: float, cap: float) -> datetime:
    """Until when a run that found `lease` held waits for it: the holder's announced end plus `grace` (for
    its last pass and the release), or the Lease's expiry when it announced none; at most `cap` seconds
    from now. A Lease that is gone or free by now gets `grace` for the retry."""
    spec = (lease or {}).get("spec") or {}
    if not spec.get("holderIdentity"):
        return now + timedelta(seconds=grace)
    annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
    announced = parse_time(annotations.get(ANNOTATION_RUN_UNTIL))
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime")) or now
    expiry = renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
    end = announced + timedelta(seconds=grace) if announced is not None else expiry
    return min(end, now + timedelta(seconds=cap))
