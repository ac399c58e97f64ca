"""Errors with a meaning: each kind tells the caller whether to retry, stop, or blame the input."""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error the reconciler raises on purpose."""

    exit_code = 1


class ConfigError(ReconcilerError):
    """The configuration, a job template or an environment variable is wrong: exit 2, name the key."""

    exit_code = 2


class AuthError(ReconcilerError):
    """The credential was rejected or lacks a scope or role: exit 2, say which."""

    exit_code = 2


class TransientError(ReconcilerError):
    """A call failed in a way that may pass: throttling, 5xx, a timeout, a broken connection."""


class PermanentError(ReconcilerError):
    """A call was refused for good (404 on a pool, 422 on a Job): retrying will not help."""


class ForbiddenError(PermanentError):
    """One object was refused (HTTP 403): a missing role on one pool, a ResourceQuota's "exceeded quota", an
    admission webhook's denial, a namespace being terminated. It fails that action, pool or namespace only;
    credentials the service rejects as a whole are an AuthError."""


class AdmissionRefusedError(ForbiddenError):
    """A 403 from one of the API server's admission plugins, not from authorization: a ResourceQuota's
    "exceeded quota", a namespace being terminated, a webhook's denial. No Role grant would help."""


class ConflictError(PermanentError):
    """The object exists already or changed under us (HTTP 409)."""


class NotFoundError(PermanentError):
    """The object does not exist (HTTP 404)."""


class CreateRefusedError(ForbiddenError):
    """The cloud refused to create an agent's workload for a reason of its template or subscription (Azure's
    ContainerGroupQuotaReached, a throttled create, an image it cannot pull): creates from that template
    wait and back off; nothing else is affected."""
