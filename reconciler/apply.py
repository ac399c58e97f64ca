"""Carry out a plan: actions in a safe order, each idempotent, one failure never stopping the rest.

Order: deletions first (a stuck Job holding a ResourceQuota must go even while every create is refused),
then placeholders (so Azure DevOps queues demand-matched jobs instead of failing them), then new Jobs.
A refusal (403: a missing role on a pool, an exceeded quota, a namespace being terminated, an admission
webhook) fails that action, and the same kind of write to that pool or namespace is not tried again in
the pass; only credentials the service rejects (AuthError) stop it. Every action has a dry-run path
that logs what it would do in the same words as the real run, and makes no call at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler import agent_files, names, standby
from reconciler.azdo import AzureDevOps
from reconciler.errors import AuthError, CreateRefusedError, ForbiddenError, NotFoundError, ReconcilerError
from reconciler.model import (
    Action,
    Config,
    CreateJob,
    DeleteAgent,
    DeleteJob,
    DisableAgent,
    DrainAgent,
    RecordStandbyHistory,
    RegisterPlaceholder,
    ReportCrashBackoff,
    ReportMissingPool,
    ReportUnroutable,
    StandbyHistory,
    TemplateConfig,
    UpdatePlaceholder,
)

if TYPE_CHECKING:
    from reconciler.backend import Backend
    from reconciler.kube import Kubernetes

log = logging.getLogger("reconciler.apply")

_ORDER = {
    "report-missing-pool": 0,
    "report-unroutable": 1,
    "report-crash-backoff": 1,
    "delete-job": 2,
    "delete-agent": 3,
    "drain-agent": 4,
    "disable-agent": 4,
    "register-placeholder": 5,
    "update-placeholder": 6,
    "create-job": 7,
    "record-standby-history": 8,
}

REFUSED_BACKOFF_SECONDS = 30.0
"""The first wait of a template whose create was refused (a quota); it doubles per refusal in a row."""
MAX_REFUSED_BACKOFF_SECONDS = 600.0

_AGENT_ACTIONS = frozenset(
    {"register-placeholder", "update-placeholder", "delete-agent", "drain-agent", "disable-agent", "delete-job"}
)


@dataclass
class Outcome:
    """What a pass did: counters for the summary line and the failures it met."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    created: list[CreateJob] = field(default_factory=list)
    pruned_agents: list[str] = field(default_factory=list)
    failed_agent_pools: set[str] = field(default_factory=set)
    """Pools where an action on agents failed: their agents must be listed again next pass."""
    standby_history: StandbyHistory | None = None
    """The standby history as written this pass (with its new resourceVersion)."""
    standby_history_stale: bool = False
    """Another run changed the standby history first: read it again."""

    @property
    def failed(self) -> int:
        return len(self.failures)


def _refusal_scope(action: Action) -> tuple[str, str] | None:
    """Where a 403 on this action means the same write would be refused again this pass: creating Jobs in
    one namespace (quota, terminating namespace, webhook), registering placeholders in one pool (role)."""
    if isinstance(action, CreateJob):
        return ("create-job", action.namespace)
    if isinstance(action, RegisterPlaceholder | UpdatePlaceholder):
        return ("placeholder", action.pool)
    return None


def _verb(dry_run: bool, done: str, would: str) -> str:
    return would if dry_run else done


class Applier:
    """Runs actions against Azure DevOps and the backend agents run on (or only logs them in a dry run).

    It lives as long as its Reconciler: a template whose creates were refused stays backed off across passes."""

    def __init__(
        self,
        *,
        config: Config,
        azdo: AzureDevOps,
        backend: Backend,
        job_templates: Mapping[tuple[str, str], Mapping[str, Any]],
        dry_run: bool,
        clock: Callable[[], datetime],
        kube: Kubernetes | None = None,
    ) -> None:
        """`kube`: the cluster that keeps the release's own state (the standby history); None without one."""
        self.config = config
        self.azdo = azdo
        self.backend = backend
        self.kube = kube
        self.job_templates = job_templates
        self.dry_run = dry_run
        self.clock = clock
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.refused_until: dict[tuple[str, str], datetime] = {}

    def apply(self, actions: Sequence[Action]) -> Outcome:
        """Run every action; an AuthError stops the pass (nothing else can work), others are counted."""
        outcome = Outcome()
        refused: dict[tuple[str, str], str] = {}
        for action in sorted(actions, key=lambda a: _ORDER[a.kind]):
            scope = _refusal_scope(action)
            try:
                if scope in refused:
                    raise ForbiddenError(f"not tried: {refused[scope]}")
                self._run(action, outcome)
            except AuthError:
                raise
            except ReconcilerError as exc:
                if isinstance(exc, ForbiddenError) and scope is not None:
                    refused.setdefault(scope, str(exc))
                self._failed(action, exc, outcome)
        return outcome

    def _failed(self, action: Action, exc: ReconcilerError, outcome: Outcome) -> None:
        """Count and report a failed action with its object, its pool and the reason."""
        outcome.counts["failed"] += 1
        if action.kind in _AGENT_ACTIONS:
            outcome.failed_agent_pools.add(action.pool)
        target = getattr(action, "job_name", None) or getattr(action, "agent_name", None) or ""
        namespace = getattr(action, "namespace", None)
        where = f"pool {action.pool!r}" + (f", namespace {namespace}" if namespace else "")
        outcome.failures.append(f"{action.kind} {target} ({where}): {exc}")
        log.error("%s %s (%s) failed: %s", action.kind, target, where, exc)

    def _event(
        self, *, namespace: str | None, job_name: str | None, reason: str, message: str, warning: bool = False
    ) -> None:
        if not self.config.events or self.dry_run or not namespace or not job_name:
            return
        try:
            self.backend.post_event(
                namespace=namespace,
                job_name=job_name,
                reason=reason,
                message=message,
                warning=warning,
                now=self.clock(),
            )
        except ReconcilerError as exc:
            log.warning(
                "could not record event %s on %s %s/%s: %s", reason, self.backend.kind, namespace, job_name, exc
            )

    def _report_backoff(self, action: ReportCrashBackoff, outcome: Outcome) -> None:
        outcome.counts["crash_backoff"] += 1
        message = (
            f"{action.failures} pod(s) of template {action.template!r} failed before their agent came online, "
            f"the last with {action.reason}; no new Job for it before {action.retry_at.isoformat()}: fix the "
            "image, its credentials or the job template"
        )
        log.warning("pool %r: %s", action.pool, message)
        self._event(
            namespace=action.namespace,
            job_name=action.job_name,
            reason="AgentCrashBackoff",
            message=message,
            warning=True,
        )

    def _run(self, action: Action, outcome: Outcome) -> None:
        dry = self.dry_run
        if isinstance(action, ReportMissingPool):
            outcome.counts["missing_pools"] += 1
            log.error(
                "%s (names must match an agent pool, not a project queue)", self.azdo.missing_pool_message(action.pool)
            )
        elif isinstance(action, ReportUnroutable):
            outcome.counts["unroutable"] += 1
            log.warning(
                "request %d in pool %r demands %s, which no template of the pool satisfies: add a template with "
                "those capabilities or change the pipeline's demands",
                action.request_id,
                action.pool,
                list(action.demands),
            )
        elif isinstance(action, ReportCrashBackoff):
            self._report_backoff(action, outcome)
        elif isinstance(action, RegisterPlaceholder):
            log.info(
                "%s placeholder agent %s in pool %r with capabilities %s",
                _verb(dry, "registering", "would register"),
                action.agent_name,
                action.pool,
                dict(action.capabilities),
            )
            if not dry:
                self.azdo.register_placeholder(
                    action.pool_id,
                    name=action.agent_name,
                    capabilities=action.capabilities,
                    version=self.config.agent_version,
                )
            outcome.counts["placeholders"] += 1
        elif isinstance(action, UpdatePlaceholder):
            log.info(
                "%s placeholder agent %s in pool %r to capabilities %s (disabled)",
                _verb(dry, "updating", "would update"),
                action.agent_name,
                action.pool,
                dict(action.capabilities),
            )
            if not dry:
                self.azdo.update_placeholder(
                    action.pool_id,
                    action.agent_id,
                    name=action.agent_name,
                    capabilities=action.capabilities,
                    version=self.config.agent_version,
                )
            outcome.counts["placeholders"] += 1
        elif isinstance(action, CreateJob):
            self._create(action, outcome)
        elif isinstance(action, RecordStandbyHistory):
            self._record_history(action, outcome)
        elif isinstance(action, DrainAgent):
            self._drain(action, outcome)
        elif isinstance(action, DisableAgent):
            self._disable(action, outcome)
        elif isinstance(action, DeleteJob):
            detail = f" ({action.detail})" if action.detail else ""
            log.info(
                "%s %s %s/%s of pool %r: %s%s",
                _verb(dry, "deleting", "would delete"),
                self.backend.kind,
                action.namespace,
                action.job_name,
                action.pool,
                action.reason,
                detail,
            )
            stuck = action.reason.startswith("stuck")
            self._event(
                namespace=action.namespace,
                job_name=action.job_name,
                reason="AgentStuck" if stuck else "AgentJobRemoved",
                message=f"{action.reason}{detail}",
                warning=stuck,
            )
            if not dry:
                self.backend.delete(action.namespace, action.job_name)
                if action.agent_id is not None and action.pool_id is not None:
                    self.azdo.delete_agent(action.pool_id, action.agent_id)
            outcome.counts["stuck" if stuck else "deleted"] += 1
        elif isinstance(action, DeleteAgent):
            log.info(
                "%s agent %s (id %d) from pool %r: %s",
                _verb(dry, "deleting", "would delete"),
                action.agent_name,
                action.agent_id,
                action.pool,
                action.reason,
            )
            if not dry:
                self.azdo.delete_agent(action.pool_id, action.agent_id)
                outcome.pruned_agents.append(action.agent_name)
            outcome.counts["pruned"] += 1

    def _create(self, action: CreateJob, outcome: Outcome) -> None:
        pool = self.config.pool(action.pool)
        template = pool.template(action.template) if pool else None
        job_template = self.job_templates.get((action.pool, action.template))
        if pool is None or template is None or job_template is None:
            raise ReconcilerError(f"no job template for pool {action.pool!r} template {action.template!r}")
        key = (action.pool, action.template)
        if self._refused_now(key, action, outcome):
            return
        by_reconciler = self.config.agent_registration == "reconciler"
        registered = self._register(action, template) if by_reconciler and not self.dry_run else None
        manifest = self.backend.render(
            config=self.config,
            pool=pool,
            template=template,
            job_template=job_template,
            job_name=action.job_name,
            request_id=action.request_id,
            demands=action.demands,
            agent_id=registered[0] if registered else None,
            crash_failures=action.crash_failures,
        )
        log.info(
            "%s %s %s/%s for pool %r template %r%s: %s",
            _verb(self.dry_run, "creating", "would create"),
            self.backend.kind,
            action.namespace,
            action.job_name,
            action.pool,
            action.template,
            " with its agent's files" if by_reconciler else "",
            action.reason,
        )
        if self.dry_run:
            outcome.counts["created"] += 1
            outcome.created.append(action)
            return
        uid = self._create_or_forget(manifest, action, registered, key)
        if uid is None:
            outcome.counts["existing"] += 1
            log.info(
                "%s %s/%s already exists (an overlapping pass made it)",
                self.backend.kind,
                action.namespace,
                action.job_name,
            )
            return
        if registered is not None:
            self._hand_over(manifest, action, registered, uid)
        outcome.counts["created"] += 1
        outcome.created.append(action)

    def _refused_now(self, key: tuple[str, str], action: CreateJob, outcome: Outcome) -> bool:
        """True while the template backs off after a refused create (quota, an image the backend cannot pull)."""
        until = self.refused_until.get(key)
        if until is None or self.clock() >= until:
            return False
        outcome.counts["refused_backoff"] += 1
        log.info(
            "not creating %s %s for pool %r template %r: its last create was refused; next try after %s",
            self.backend.kind,
            action.job_name,
            action.pool,
            action.template,
            until.isoformat(),
        )
        return True

    def _register(self, action: CreateJob, template: TemplateConfig) -> tuple[int, dict[str, str]]:
        """Register the Job's agent under the Job's name with a fresh key pair: (agent id, its three files)."""
        if action.pool_id is None:
            raise ReconcilerError(f"pool {action.pool!r}: no pool id to register agent {action.job_name} in")
        key = agent_files.AgentKey.generate()
        registered = self.azdo.register_agent(
            action.pool_id,
            name=action.job_name,
            capabilities={**template.known_capabilities, **template.capabilities},
            version=self.config.agent_version,
            public_key=key.public_key(),
        )
        files = agent_files.agent_files(
            registered=registered,
            key=key,
            pool_id=action.pool_id,
            pool_name=action.pool,
            server_url=self.config.organization,
        )
        log.info("registered agent %s (id %d) in pool %r", action.job_name, registered["id"], action.pool)
        return registered["id"], files

    def _create_or_forget(
        self,
        manifest: Mapping[str, Any],
        action: CreateJob,
        registered: tuple[int, dict[str, str]] | None,
        key: tuple[str, str],
    ) -> str | None:
        """Create the object (its id; None when it existed); an agent registered for an object not created is
        deleted, and a refused create backs the template off."""
        try:
            uid = self.backend.create(manifest)
        except CreateRefusedError as exc:
            self._forget(action, registered)
            raise self._create_refused(key, exc) from None
        except ReconcilerError:
            self._forget(action, registered)
            raise
        self.refusals.pop(key, None)
        self.refused_until.pop(key, None)
        if uid is None:
            self._forget(action, registered)
        return uid

    def _hand_over(
        self, manifest: Mapping[str, Any], action: CreateJob, registered: tuple[int, dict[str, str]], uid: str
    ) -> None:
        """The agent's files, owned by its Job; without them the pod could never start: the Job and the agent go."""
        try:
            self.backend.hand_over(manifest, files=registered[1], uid=uid)
        except ReconcilerError:
            self.backend.delete(action.namespace, action.job_name)
            self._forget(action, registered)
            raise

    def _forget(self, action: CreateJob, registered: tuple[int, dict[str, str]] | None) -> None:
        if registered is not None and action.pool_id is not None:
            self.azdo.delete_agent(action.pool_id, registered[0])

    def _create_refused(self, key: tuple[str, str], exc: CreateRefusedError) -> CreateRefusedError:
        """Back the template off: REFUSED_BACKOFF_SECONDS doubled per refusal in a row, at most the maximum."""
        self.refusals[key] += 1
        delay = min(REFUSED_BACKOFF_SECONDS * 2 ** (self.refusals[key] - 1), MAX_REFUSED_BACKOFF_SECONDS)
        until = self.clock() + timedelta(seconds=delay)
        self.refused_until[key] = until
        return CreateRefusedError(
            f"{exc}; template {key[1]!r} creates nothing before {until.isoformat()} (refusal "
            f"{self.refusals[key]} in a row)"
        )

    def _record_history(self, action: RecordStandbyHistory, outcome: Outcome) -> None:
        namespace, name = self.config.lease_namespace, standby.configmap_name(self.config.release)
        log.info(
            "%s the standby history %s/%s: %s",
            _verb(self.dry_run, "recording", "would record"),
            namespace,
            name,
            action.reason,
        )
        if self.dry_run or self.kube is None:
            return
        version = self.kube.write_configmap(
            namespace,
            name,
            data=standby.encode(action.history.peaks),
            labels={names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_INSTANCE: self.config.release},
            resource_version=action.history.resource_version,
        )
        if version is None:
            outcome.standby_history_stale = True
            log.info("the standby history %s/%s changed under us (another run): read again next pass", namespace, name)
            return
        outcome.standby_history = replace(action.history, resource_version=version)
        outcome.counts["standby_history"] += 1

    def _disable(self, action: DisableAgent, outcome: Outcome) -> None:
        """PATCH enabled=false on an agent running its one job (plan._plan_once_disables); its job goes on."""
        log.info(
            "%s agent %s (id %d) of pool %r: %s",
            _verb(self.dry_run, "disabling", "would disable"),
            action.agent_name,
            action.agent_id,
            action.pool,
            action.reason,
        )
        if not self.dry_run:
            try:
                self.azdo.set_enabled(action.pool_id, action.agent_id, enabled=False)
            except NotFoundError:
                log.info("agent %s of pool %r is gone already: nothing to disable", action.agent_name, action.pool)
                return
        outcome.counts["disabled"] += 1

    def _drain(self, action: DrainAgent, outcome: Outcome) -> None:
        log.info(
            "%s agent %s (id %d) of pool %r: %s",
            _verb(self.dry_run, "draining", "would drain"),
            action.agent_name,
            action.agent_id,
            action.pool,
            action.reason,
        )
        if self.dry_run:
            outcome.counts["drained"] += 1
            return
        self.azdo.set_enabled(action.pool_id, action.agent_id, enabled=False)
        agent = self.azdo.agent(action.pool_id, action.agent_id)
        if agent is not None and agent.busy:
            # A job was assigned between our decision and the disable: let it run.
            self.azdo.set_enabled(action.pool_id, action.agent_id, enabled=True)
            outcome.counts["drain_aborted"] += 1
            log.info(
                "agent %s got request %s while draining: re-enabled, its Job stays",
                action.agent_name,
                agent.assigned_request_id,
            )
            return
        self._event(namespace=action.namespace, job_name=action.job_name, reason="AgentDrained", message=action.reason)
        if action.namespace and action.job_name:
            self.backend.delete(action.namespace, action.job_name)
        if agent is not None:
            self.azdo.delete_agent(action.pool_id, action.agent_id)
        outcome.counts["drained"] += 1
