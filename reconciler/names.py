"""Names and labels of the objects the reconciler owns: one place, so every module agrees.

Kubernetes names must be DNS-1123 labels and a Job name becomes the `job-name` label value of its
pods (63 characters at most) while the pod adds a 6-character suffix; agent name = pod name. So a
Job name is kept to 52 characters: prefix (12) - pool slug (16) - request id (19) - generation.
"""

from __future__ import annotations

import hashlib
import re

MANAGED_BY = "azp-agents"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_POOL = "azp-agents.dev/pool"
LABEL_TEMPLATE = "azp-agents.dev/template"
LABEL_REQUEST_ID = "azp-agents.dev/request-id"
LABEL_STANDBY = "azp-agents.dev/standby"
ANNOTATION_POOL_NAME = "azp-agents.dev/pool-name"
ANNOTATION_DEMANDS = "azp-agents.dev/demands"
ANNOTATION_REASON = "azp-agents.dev/reason"
ANNOTATION_AGENTS_OBSERVED = "azp-agents.dev/agents-observed"
ANNOTATION_AGENTS_PRUNED = "azp-agents.dev/agents-pruned"
ANNOTATION_AGENT_NAME = "azp-agents.dev/agent-name"
"""On the pod of an agent the reconciler registered (agents.registration: reconciler): its agent's name (its
Job's, known before the pod's name is)."""
ANNOTATION_AGENT_ID = "azp-agents.dev/agent-id"
"""On the pod of an agent the reconciler registered: its agent's id."""
# What the image's `start.sh register` writes to its init container's termination message.
AGENT_ID_MESSAGE = "azp-agents.dev/agent-id="
AGENT_APP_NAME = "azp-agent"

MAX_JOB_NAME = 52
_SLUG_MAX = 16
_NOT_DNS = re.compile(r"[^a-z0-9]+")


def _short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def pool_slug(pool_name: str) -> str:
    """A DNS-1123 label of at most 16 characters that identifies a pool name.

    Names that are already clean and short map to themselves (readable objects); any other name
    (spaces, unicode, capitals, length) keeps a readable stem and gains a hash of the exact name, so
    two different pools never share a slug.
    """
    lowered = pool_name.lower()
    stem = _NOT_DNS.sub("-", lowered).strip("-")
    if stem == lowered and 0 < len(stem) <= _SLUG_MAX and not stem.startswith("placeholder"):
        return stem
    digest = _short_hash(pool_name)
    stem = stem[: _SLUG_MAX - len(digest) - 1].strip("-")
    return f"{stem}-{digest}" if stem else f"p-{digest}"


def selector(release: str) -> str:
    """Label selector of every object this release owns."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={release}"


def request_job_name(*, prefix: str, pool_name: str, request_id: int, generation: int = 0) -> str:
    """Name of the Job created for one job request; generation > 0 when an earlier Job was used up."""
    base = f"{prefix}-{pool_slug(pool_name)}-{request_id}"
    return base if generation == 0 else f"{base}-g{generation}"


def standby_job_name(*, prefix: str, pool_name: str, template: str, slot: int) -> str:
    """Name of the Job that keeps standby slot `slot` of a template filled."""
    return f"{prefix}-{pool_slug(pool_name)}-{template}-s{slot}"


def agent_prefix(*, prefix: str, pool_name: str) -> str:
    """Every ephemeral agent of this pool has a name that starts with this."""
    return f"{prefix}-{pool_slug(pool_name)}-"


def placeholder_name(*, prefix: str, pool_name: str, template: str) -> str:
    """Name of the disabled, offline agent that stands for a template in its pool."""
    return f"{prefix}-placeholder-{pool_slug(pool_name)}-{template}"


def placeholder_prefix(*, prefix: str, pool_name: str) -> str:
    """Every placeholder of this pool has a name that starts with this."""
    return f"{prefix}-placeholder-{pool_slug(pool_name)}-"
