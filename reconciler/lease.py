"""The Lease that keeps two runs of one release from acting at once, as plain data (no client)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any


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
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds") or 0
    return renewed is None or renewed + timedelta(seconds=int(duration)) < now
