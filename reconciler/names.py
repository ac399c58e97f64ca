"""Names and labels of the objects the reconciler owns: one place, so every module agrees.

Kubernetes names must be DNS-1123 labels and a Job name becomes the `job-name` label value of its
pods, while the pod's generated name adds a 6-character suffix to it and serves as the agent's name and
the pod's hostname (63 characters at most). So a Job name is kept to 57 characters: prefix (12) - owner
tag (5 or more) - pool part - request id (19 digits) - generation (`-g99`), where the pool part is the
pool slug, hashed shorter when a long prefix leaves it less room.

Every name carries its owner's tag (a release's shard, `Owner`): releases and shards that share a pool
and a jobNamePrefix never take each other's agents, placeholders or Jobs for their own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MANAGED_BY = "azp-agents"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_POOL = "azp-agents.dev/pool"
LABEL_TEMPLATE = "azp-agents.dev/template"
LABEL_REQUEST_ID = "azp-agents.dev/request-id"
LABEL_STANDBY = "azp-agents.dev/standby"
LABEL_SHARD = "azp-agents.dev/shard"
ANNOTATION_OWNER = "azp-agents.dev/owner"
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

MAX_JOB_NAME = 57
_LONGEST_REQUEST = len("-9223372036854775807-g99")
_SLUG_MAX = 16
_NOT_DNS = re.compile(r"[^a-z0-9]+")


def _short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def pool_slug(pool_name: str, limit: int = _SLUG_MAX) -> str:
    """A DNS-1123 label of at most `limit` (16, at least 8) characters that identifies a pool name.

    Names that are already clean and short map to themselves (readable objects); any other name
    (spaces, unicode, capitals, length) keeps a readable stem and gains a hash of the exact name, so
    two different pools never share a slug.
    """
    lowered = pool_name.lower()
    stem = _NOT_DNS.sub("-", lowered).strip("-")
    if stem == lowered and 0 < len(stem) <= limit and not stem.startswith("placeholder"):
        return stem
    digest = _short_hash(pool_name)
    stem = stem[: limit - len(digest) - 1].strip("-")
    return f"{stem}-{digest}" if stem else f"p-{digest}"


@dataclass(frozen=True)
class Owner:
    """Who gives a name: one shard of one release, with its jobNamePrefix."""

    prefix: str
    release: str
    shard: int = 0

    @property
    def tag(self) -> str:
        """In every name this owner gives: a hash of the release name, then the shard index (`3f2a0`)."""
        return f"{_short_hash(self.release, 4)}{self.shard}"

    @property
    def annotation(self) -> str:
        """The owner in words, on every Job (`ANNOTATION_OWNER`)."""
        return f"release {self.release}, shard {self.shard}"


def selector(owner: Owner) -> str:
    """Label selector of every object this release's shard owns."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={owner.release},{LABEL_SHARD}={owner.shard}"


def request_job_name(owner: Owner, *, pool_name: str, request_id: int, generation: int = 0) -> str:
    """Name of the Job created for one job request; generation > 0 when an earlier Job was used up."""
    base = f"{agent_prefix(owner, pool_name=pool_name)}{request_id}"
    return base if generation == 0 else f"{base}-g{generation}"


def standby_job_name(owner: Owner, *, pool_name: str, template: str, slot: int) -> str:
    """Name of the Job that keeps standby slot `slot` of a template filled."""
    return f"{agent_prefix(owner, pool_name=pool_name)}{template}-s{slot}"


def instance_name(owner: Owner, *, pool_name: str, template: str, index: int) -> str:
    """Stable name of named instance `index` of a template (`instances`): its container group and agent."""
    return f"{agent_prefix(owner, pool_name=pool_name)}{template}-i{index}"


def agent_prefix(owner: Owner, *, pool_name: str) -> str:
    """Every ephemeral agent this owner starts in this pool has a name that starts with this (the pool slug
    shortened when the prefix and tag leave a request's Job name under MAX_JOB_NAME no room for it)."""
    stem = f"{owner.prefix}-{owner.tag}-"
    room = MAX_JOB_NAME - len(stem) - 1 - _LONGEST_REQUEST
    return f"{stem}{pool_slug(pool_name, max(8, min(_SLUG_MAX, room)))}-"


def placeholder_name(owner: Owner, *, pool_name: str, template: str) -> str:
    """Name of the disabled, offline agent that stands for a template in its pool."""
    return f"{placeholder_prefix(owner, pool_name=pool_name)}{template}"


def placeholder_prefix(owner: Owner, *, pool_name: str) -> str:
    """Every placeholder this owner keeps in this pool has a name that starts with this (a tag is hex and
    digits, never `placeholder`, so no agent prefix is a placeholder prefix)."""
    return f"{owner.prefix}-placeholder-{owner.tag}-{pool_slug(pool_name)}-"
