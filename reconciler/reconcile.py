"""One run of the reconciler: config -> observe -> plan -> apply -> report, once or in a loop.

Observation is cheap by design: one pools call per run, one job-requests list per pool that is due,
one Job list and one Pod list per agent namespace, and a pool's agent list only when the plan's
`pools_needing_agents` says something may have changed. A Lease keeps two runs of one release
from acting at once and remembers when each pool's agents were last listed, so CronJob runs share it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import __version__, capabilities, container_groups, identity, names, render, standby
from reconciler.apply import Applier, Outcome
from reconciler.azdo import AzureDevOps
from reconciler.backend import Backend, KubernetesBackend, container_instances
from reconciler.config import Credentials
from reconciler.deadline import Deadline
from reconciler.errors import (
    AdmissionRefusedError,
    AuthError,
    ForbiddenError,
    NotFoundError,
    ReconcilerError,
    TransientError,
)
from reconciler.lease import (
    ANNOTATION_RUN_UNTIL,
    CLOCK_TOLERANCE,
    format_time,
    lease_body,
    lease_expired,
    parse_time,
    wait_limit,
)
from reconciler.metrics import agent_state
from reconciler.model import Agent, AgentJob, AgentPod, Capabilities, Config, PoolState, StandbyHistory, World
from reconciler.plan import plan, pools_needing_agents

if TYPE_CHECKING:
    from reconciler.kube import Kubernetes

log = logging.getLogger("reconciler")

REMOVED_POOLS_SCAN = ""
"""Where `agents_observed` (kept in the Lease) remembers the last look for pools no longer configured that
still hold something of ours: no pool has an empty name."""


def utc_now() -> datetime:
    return datetime.now(UTC)


# Names of deregistered agents kept in the Lease (about 40 bytes each, far below its 256 KiB of
# annotations); beyond that, a later run may delete an agent again and get a harmless 404.
MAX_PRUNED_REMEMBERED = 2000
MAX_POOL_BACKOFF = 300.0
"""The longest wait before a pool whose reads keep failing is tried again (it doubles from `interval`)."""
# A run that finds the Lease held polls it this often, and waits this long past the holder's announced
# end for its last pass and the release before it gives up.
LEASE_POLL_SECONDS = 1.0
LEASE_GRACE_SECONDS = 10.0
# A hinted job not found in this time is forgotten (the backstop poll finds it if it still waits).
HINT_MEMORY_SECONDS = 600.0
MAX_TIMELINE_READS = 5


@dataclass(frozen=True)
class _HintedJob:
    """A hinted job not found yet: the pools polled for it first (none yet: its run's timeline is to be read),
    those to poll next, when, and its project and run."""

    first: set[str]
    rest: set[str]
    hinted_at: float
    project: str = ""
    run_id: int | None = None


@dataclass
class PassReport:
    """The figures of one pass, as the summary line prints them."""

    number: int
    queued: int = 0
    running: int = 0
    jobs: int = 0
    outcome: Outcome = field(default_factory=Outcome)
    azdo_calls: int = 0
    kube_calls: int = 0
    arm_calls: int = 0
    seconds: float = 0.0
    observe_failures: int = 0
    skipped: str | None = None
    active_pools: set[str] = field(default_factory=set)
    agents_by_state: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per pool whose agents this pass listed: how many are busy, idle, disabled, offline."""

    @property
    def failed(self) -> int:
        """Failed actions and reads, and configured pools the organization does not have."""
        return self.outcome.failed + self.observe_failures + self.outcome.counts["missing_pools"]

    def fields(self) -> dict[str, Any]:
        counts = self.outcome.counts
        return {
            "pass": self.number,
            "queued": self.queued,
            "running": self.running,
            "jobs": self.jobs,
            "created": counts["created"],
            "existing": counts["existing"],
            "drained": counts["drained"],
            "disabled": counts["disabled"],
            "pruned": counts["pruned"],
            "stuck": counts["stuck"],
            "deleted": counts["deleted"],
            "placeholders": counts["placeholders"],
            "unroutable": counts["unroutable"],
            "crash_backoff": counts["crash_backoff"],
            "failed": self.failed,
            "azdo_calls": self.azdo_calls,
            "kube_calls": self.kube_calls,
            "arm_calls": self.arm_calls,
            "seconds": round(self.seconds, 3),
        }


def load_job_templates(config: Config) -> dict[tuple[str, str], dict[str, Any]]:
    """Every pool's job templates (container group templates on ACI), parsed once per run."""
    loaded: dict[tuple[str, str], dict[str, Any]] = {}
    for index, pool in enumerate(config.pools):
        for t_index, template in enumerate(pool.templates):
            key = f"pools[{index}].templates[{t_index}].jobTemplate"
            load = container_groups.load_template if config.backend == "aci" else render.load_template
            loaded[(pool.name, template.name)] = load(Path(template.job_template), key=key, source=config.source)
    return loaded


class Reconciler:
    """Runs passes for one release; holds the clients, the Lease and the per-pool schedule."""

    def __init__(
        self,
        config: Config,
        credentials: Credentials,
        *,
        dry_run: bool = False,
        kubeconfig: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        deadline: Deadline | None = None,
    ) -> None:
        self.config = config
        self.dry_run = dry_run
        self.clock = clock
        self.deadline = deadline or Deadline.unbounded()
        self.azdo = AzureDevOps(
            config.organization,
            authorization=identity.authorization(credentials),
            timeout=config.azdo_timeout,
            retries=config.azdo_retries,
            deadline=self.deadline,
            api_version=config.azdo_api_version,
            clock=clock,
        )
        # The queue's pools are looked up before the Kubernetes client is loaded: its import is the
        # larger part of a CronJob run's cold start, and it can load while this call is in flight.
        self.pool_ids: dict[str, int] = self.azdo.pools_by_name([p.name for p in config.pools])
        # That answer also serves the run's first look for pools no longer configured.
        self.startup_pools = self.azdo.last_pools
        self.kube, self.backend = _backend(config, credentials, kubeconfig=kubeconfig, deadline=self.deadline)
        self.templates = load_job_templates(config)
        self.applier = Applier(
            config=config,
            azdo=self.azdo,
            backend=self.backend,
            job_templates=self.templates,
            dry_run=dry_run,
            clock=clock,
            kube=self.kube,
        )
        self.holder = f"{os.environ.get('HOSTNAME', 'reconciler')}-{os.getpid()}-{secrets.token_hex(3)}"
        self.agents_observed: dict[str, datetime] = {}
        self.agent_ids: dict[str, int] = {}
        self.pruned: set[str] = set()
        self.learned: dict[tuple[str, str], Capabilities] = {}
        self.standby_history: StandbyHistory | None = None
        self._history_read_hour: datetime | None = None
        self.next_due: dict[str, float] = {}
        self.pool_failures: dict[str, int] = {}
        self._lease: dict[str, Any] | None = None
        self._lease_renewed = 0.0
        self.run_until: datetime | None = None
        self.last_report: PassReport | None = None
        self.stopping = self.deadline.stop
        self.on_pass: Callable[[PassReport], None] | None = None
        # A hint (service hook) sets `wake` so the loop's sleep ends early for the pools in `_hinted`.
        self.wake = threading.Event()
        self._hinted: set[str] = set()
        self._hint_lock = threading.Lock()
        self.last_polled: dict[str, float] = {}
        # Pools each project's jobs were seen in, and hinted jobs not found yet.
        self.project_pools: dict[str, set[str]] = {}
        # Pools each project has an agent queue for (None: not known, any project may use any pool).
        self.project_queues: dict[str, set[str]] | None = None
        self._hinted_jobs: dict[str, _HintedJob] = {}
        # Queue id -> pool name of the projects' queues of our pools; whether a run's timeline was refused.
        self.queue_pools: dict[int, str] = {}
        self._timeline_refused = False
        self._timeline_reads: list[float] = []

    def _terminate(self, signum: int, frame: object) -> None:
        """SIGTERM (pod deletion, CronJob deadline): finish the pass at hand, release the Lease, exit."""
        log.info("received signal %d: finishing the current pass", signum)
        self.stopping.set()
        self.wake.set()  # end the loop's sleep at once
        self.wake.set()

    def hint(self, pools: Collection[str] | None = None) -> None:
        """Work may be waiting in these pools (all when None): poll them as soon as their active `interval`
        since their last poll allows, so hints never poll a pool faster than a pool with work."""
        chosen = [p.name for p in self.config.pools] if pools is None else pools
        with self._hint_lock:
            self._hinted.update(chosen)
        self.wake.set()

    def hint_job(
        self, *, project_id: str | None, job_id: str, raised: datetime | None = None, run_id: int | None = None
    ) -> bool:
        """A job of this project and run waits for an agent (a service hook; the event names no pool). When the
        run's timeline can be read, poll the pool it names; else the pools the project's jobs were seen in, and
        its other pools only if the job is not found there (its pools: those it has an agent queue for, when
        known; else every pool). False, doing nothing, when the event was raised more than `idleInterval` ago:
        every pool has been polled since, so the job has been seen if it still waits (a late hook would only
        cost calls)."""
        if raised is not None and (self.clock() - raised).total_seconds() > self.config.loop.idle_interval:
            return False
        project = (project_id or "").lower()
        every = {p.name for p in self.config.pools}
        with self._hint_lock:
            if self.project_queues is not None and project in self.project_queues:
                every &= self.project_queues[project]
            if run_id is not None and self.queue_pools and not self._timeline_refused:
                first = set()  # the loop reads the run's timeline first (_place_hints)
            else:
                first = (self.project_pools.get(project, set()) & every) or every
            self._hinted_jobs[job_id.lower()] = _HintedJob(first, every - first, time.monotonic(), project, run_id)
        self.hint(first)
        return True

    def _place_hints(self) -> None:
        """Find the pool of hinted jobs in their runs' timelines (at most MAX_TIMELINE_READS reads per `interval`,
        so a flood of hints costs few); poll that pool, or the project's pools when the timeline is not read or
        does not say."""
        with self._hint_lock:
            unplaced = [(job, hinted) for job, hinted in self._hinted_jobs.items() if not hinted.first]
        for job_id, hinted in unplaced:
            now = time.monotonic()
            self._timeline_reads = [t for t in self._timeline_reads if t > now - self.config.loop.interval]
            located = None
            if len(self._timeline_reads) < MAX_TIMELINE_READS:
                self._timeline_reads.append(now)
                located = self._locate(job_id, hinted)
            # The timeline names the job's pool: when a poll of it does not show the job, the job has an agent
            # already (a late or repeated hook), and no other pool is polled for it.
            first = {located} if located is not None and located in hinted.rest else hinted.rest
            with self._hint_lock:
                if job_id in self._hinted_jobs:
                    self._hinted_jobs[job_id] = _HintedJob(first, set(), time.monotonic())
            self.hint(first)

    def _locate(self, job_id: str, hinted: _HintedJob) -> str | None:
        """The pool a hinted job was queued into, from its run's timeline and the projects' queues; None when
        that cannot be read (then every remaining pool of the project is polled)."""
        if hinted.run_id is None or not hinted.project or not self.queue_pools or self._timeline_refused:
            return None
        try:
            queue = self.azdo.job_queue_id(hinted.project, hinted.run_id, job_id)
        except TransientError:
            return None
        except ReconcilerError as exc:
            log.warning("cannot read a run's timeline, so hints poll every pool of the project instead: %s", exc)
            self._timeline_refused = True
            return None
        return self.queue_pools.get(queue) if queue is not None else None

    def _follow_hints(self, world: World) -> None:
        """Learn which pools serve which project; hint the remaining pools for jobs not found in the first."""
        seen = set()
        retry: set[str] = set()
        now = time.monotonic()
        with self._hint_lock:
            for state in world.pools:
                for request in state.requests:
                    seen.add(request.job_id)
                    if request.scope_id:
                        self.project_pools.setdefault(request.scope_id, set()).add(state.name)
                    if self.project_queues and request.scope_id in self.project_queues:
                        # A queue added since serve read them: its job was found by the backstop poll.
                        self.project_queues[request.scope_id].add(state.name)
            for job_id, hinted in list(self._hinted_jobs.items()):
                if not hinted.first and job_id not in seen:
                    continue  # its timeline is read first (_place_hints)
                polled = all(self.last_polled.get(pool, -1.0) >= hinted.hinted_at for pool in hinted.first)
                if job_id in seen or (polled and not hinted.rest) or now - hinted.hinted_at > HINT_MEMORY_SECONDS:
                    del self._hinted_jobs[job_id]
                elif polled:
                    self._hinted_jobs[job_id] = _HintedJob(hinted.rest, set(), now)
                    retry |= hinted.rest
        if retry:
            self.hint(retry)

    def _take_hints(self) -> None:
        with self._hint_lock:
            hinted, self._hinted = self._hinted, set()
        for pool in hinted:
            soonest = self.last_polled.get(pool, 0.0) + self.config.loop.interval
            self.next_due[pool] = min(self.next_due.get(pool, 0.0), soonest)

    def _sleep_until_due(self, deadline: float) -> bool:
        """Sleep until a pool is due or a hint makes one due; False when the loop should end instead."""
        while not self.stopping.is_set():
            self._place_hints()
            self._take_hints()
            wake = min(self.next_due.values())
            if wake >= deadline:
                return False
            if wake <= time.monotonic():
                return True
            self.wake.wait(wake - time.monotonic())
            self.wake.clear()
        return False

    def close(self) -> None:
        self.azdo.close()
        self.backend.close()
        if self.kube is not None and self.config.backend != "kubernetes":
            self.kube.close()

    @property
    def lease_kube(self) -> Kubernetes:
        """The Kubernetes client that holds the Lease (a release with `lease.enabled: false` has none)."""
        if self.kube is None:
            raise AuthError("the Lease needs a Kubernetes API server: run in a cluster, or set lease.enabled: false")
        return self.kube

    # --- the Lease -----------------------------------------------------------------------------

    @property
    def lease_name(self) -> str:
        return f"{self.config.release}-reconciler"

    def _lease_annotations(self) -> dict[str, str]:
        """What the next run needs to know: when each pool's agents were last listed, and which finished
        pods already had their agent deregistered (observe keeps only those whose pod still exists: the
        plan asks about no other, and the annotation stays small), so that it neither lists nor deletes
        again."""
        observed = {pool: format_time(moment) for pool, moment in sorted(self.agents_observed.items())}
        pruned = sorted(self.pruned)[:MAX_PRUNED_REMEMBERED]
        annotations = {
            names.ANNOTATION_AGENTS_OBSERVED: json.dumps(observed, separators=(",", ":")),
            names.ANNOTATION_AGENTS_PRUNED: json.dumps(pruned, separators=(",", ":")),
        }
        if self.run_until is not None:
            annotations[ANNOTATION_RUN_UNTIL] = format_time(self.run_until)
        return annotations

    def _remember(self, lease: Mapping[str, Any] | None) -> None:
        if not lease:
            return
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        raw = annotations.get(names.ANNOTATION_AGENTS_OBSERVED)
        try:
            observed = json.loads(raw) if raw else {}
        except ValueError:
            observed = {}
        try:
            pruned = json.loads(annotations.get(names.ANNOTATION_AGENTS_PRUNED) or "[]")
        except ValueError:
            pruned = []
        if isinstance(pruned, list):
            self.pruned.update(name.lower() for name in pruned if isinstance(name, str))
        # A stamp written by a clock ahead of ours is not trusted beyond the tolerance: the pool's agents
        # would otherwise not be listed again until our clock caught up.
        latest = self.clock() + CLOCK_TOLERANCE
        for pool, stamp in observed.items() if isinstance(observed, dict) else ():
            moment = parse_time(stamp)
            if moment is not None and moment > latest:
                log.warning("the Lease says pool %r was observed at %s, in the future: ignored", pool, stamp)
                continue
            if moment is not None and (pool not in self.agents_observed or moment > self.agents_observed[pool]):
                self.agents_observed[pool] = moment

    def acquire(self) -> str | None:
        """Take the Lease for this run; returns why not when another run holds it."""
        config = self.config
        if not config.lease_enabled:
            return None
        namespace = config.lease_namespace
        try:
            return self._acquire(namespace)
        except AdmissionRefusedError as exc:
            # A quota or a namespace being deleted: no Role to fix, but no run can work safely without the Lease.
            raise ReconcilerError(f"the Lease could not be taken: {exc}") from None
        except ForbiddenError as exc:
            # Without the Lease no run can work safely: a Role to fix, not a passing refusal.
            raise AuthError(str(exc)) from None

    def _acquire(self, namespace: str) -> str | None:
        config = self.config
        current = self.lease_kube.read_lease(namespace, self.lease_name)
        self._remember(current)
        if self.dry_run:
            return None
        now = self.clock()
        labels = {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_INSTANCE: config.release}
        if current is None:
            body = lease_body(
                name=self.lease_name,
                namespace=namespace,
                holder=self.holder,
                duration=config.lease_duration,
                now=now,
                annotations=self._lease_annotations(),
                labels=labels,
            )
            self._lease = self.lease_kube.create_lease(namespace, body)
            if self._lease is None:
                return "another run created the Lease at the same moment"
        else:
            holder = (current.get("spec") or {}).get("holderIdentity")
            if holder and holder != self.holder and not lease_expired(current, now=now):
                return f"run {holder} holds the Lease {namespace}/{self.lease_name}"
            body = lease_body(
                name=self.lease_name,
                namespace=namespace,
                holder=self.holder,
                duration=config.lease_duration,
                now=now,
                annotations=self._lease_annotations(),
                labels=labels,
                resource_version=(current.get("metadata") or {}).get("resourceVersion"),
            )
            self._lease = self.lease_kube.replace_lease(namespace, body)
            if self._lease is None:
                return "another run took the Lease at the same moment"
        self._lease_renewed = time.monotonic()
        return None

    def acquire_waiting(self) -> str | None:
        """Take the Lease, waiting while another run holds it: at most until the holder's announced end
        (plus LEASE_GRACE_SECONDS) and never longer than this run's loopFor or the Lease duration. A Job
        created by hand from the CronJob thus runs after the scheduled run's loop instead of giving up.
        Returns why not when the holder is still there."""
        reason = self.acquire()
        if reason is None:
            return None
        config = self.config
        cap = max(config.loop.loop_for, config.lease_duration) + LEASE_GRACE_SECONDS
        current = self.lease_kube.read_lease(config.lease_namespace, self.lease_name)
        limit = wait_limit(current, now=self.clock(), grace=LEASE_GRACE_SECONDS, cap=cap)
        log.info("%s: waiting for it until %s at the latest", reason, format_time(limit))
        # Leave this run time for at least one pass of its own before its deadline.
        while (
            self.clock() < limit
            and self.deadline.left() > LEASE_GRACE_SECONDS
            and not self.stopping.wait(LEASE_POLL_SECONDS)
        ):
            reason = self.acquire()
            if reason is None:
                log.info("took the Lease: running")
                return None
        return reason

    def renew(self, *, release: bool = False, force: bool = False) -> bool:
        """Renew (or release) our Lease when due; False when we lost it."""
        if self._lease is None:
            return True
        if not (release or force) and time.monotonic() - self._lease_renewed < self.config.lease_duration / 3:
            return True
        metadata = self._lease.get("metadata") or {}
        spec = self._lease.get("spec") or {}
        body = lease_body(
            name=self.lease_name,
            namespace=self.config.lease_namespace,
            holder="" if release else self.holder,
            duration=self.config.lease_duration,
            now=self.clock(),
            annotations=self._lease_annotations(),
            labels=metadata.get("labels") or {},
            resource_version=metadata.get("resourceVersion"),
            acquire_time=parse_time(spec.get("acquireTime")),
        )
        try:
            renewed = self.lease_kube.replace_lease(self.config.lease_namespace, body)
        except ForbiddenError as exc:
            raise AuthError(str(exc)) from None
        except TransientError as exc:
            if release:
                raise
            # The Lease stays ours until it expires; the next renewal tries again.
            log.warning("could not renew the Lease: %s", exc)
            return True
        if renewed is None:
            self._lease = None
            return False
        self._lease = None if release else renewed
        self._lease_renewed = time.monotonic()
        return True

    # --- one pass ------------------------------------------------------------------------------

    def _due_pools(self, now_mono: float) -> list[str]:
        return [p.name for p in self.config.pools if self.next_due.get(p.name, 0.0) <= now_mono]

    def observe(self, report: PassReport, due: list[str]) -> World:
        """Read what the plan needs: requests of due pools, our Jobs and Pods, agents when needed."""
        config = self.config
        missing = [name for name in due if name not in self.pool_ids]
        if missing:
            self.pool_ids.update(self.azdo.pools_by_name(missing))
        states = [state for state in (self._read_queue(report, name) for name in due) if state is not None]
        jobs, pods, failed_namespaces = self._list_namespaces(report)
        # Without its Jobs a pool cannot be planned (it would get duplicates): it waits.
        blocked = {pool.name for pool in config.pools if pool.namespace in failed_namespaces}
        for name in blocked & {state.name for state in states}:
            self._pool_failed(name)
        states = [state for state in states if state.name not in blocked]
        for state in states:
            for request in state.requests:
                if request.reserved_agent_id is not None and request.reserved_agent_name:
                    self.agent_ids[request.reserved_agent_name.lower()] = request.reserved_agent_id
        # The agent id each registered pod published: its agent can be deregistered when the pod
        # finishes without listing the pool's agents, whether or not a request showed it running.
        # What is known of agents whose pod is gone is never asked again: forgetting it keeps a long
        # loop's memory bounded by the pods that exist.
        present = {pod.name.lower() for pod in pods}
        self.agent_ids = {name: agent_id for name, agent_id in self.agent_ids.items() if name in present}
        self.pruned &= present
        for pod in pods:
            if pod.agent_id is not None:
                self.agent_ids.setdefault(pod.name.lower(), pod.agent_id)
        world = World(
            pools=tuple(states),
            jobs=tuple(jobs),
            pods=tuple(pods),
            agents_observed=dict(self.agents_observed),
            agent_ids=dict(self.agent_ids),
            pruned=frozenset(self.pruned),
            learned=dict(self.learned),
            standby_history=self._read_standby_history(report),
            azdo_clock_offset=self.azdo.clock_offset,
        )
        world = self._list_agents(report, world)
        # Without every namespace's Jobs an agent of a removed pool could look as if it had none.
        removed = () if failed_namespaces else self._observe_removed(report, jobs)
        return replace(world, learned=dict(self.learned), removed=removed)

    def _list_agents(self, report: PassReport, world: World) -> World:
        """The world with the agents of the pools `pools_needing_agents` names (a pool whose list fails keeps
        none, and the pass goes on); what each template's agents advertise is learned from them."""
        now = self.clock()
        needing = pools_needing_agents(self.config, world, now)
        if not needing:
            return world
        updated = []
        for state in world.pools:
            if state.name in needing and state.pool_id is not None:
                try:
                    agents = self.azdo.agents(state.pool_id)
                except AuthError:
                    raise
                except ReconcilerError as exc:
                    report.observe_failures += 1
                    log.error("could not list the agents of pool %r: %s", state.name, exc)
                    updated.append(state)
                    continue
                self.agents_observed[state.name] = now
                report.agents_by_state[state.name] = dict(
                    Counter(agent_state(online=a.online, enabled=a.enabled, busy=a.busy) for a in agents)
                )
                state = replace(state, agents=tuple(agents))
                self._learn(state.name, agents)
            updated.append(state)
        return replace(world, pools=tuple(updated), agents_observed=dict(self.agents_observed))

    def _observe_removed(self, report: PassReport, jobs: list[AgentJob]) -> tuple[PoolState, ...]:
        """Pools no longer configured that still hold something of ours, with their agents: those our Jobs
        name (their pool-name annotation) and those holding an agent or placeholder named with our identity.
        Looked for once per run and then every sweepInterval: one pools list (the run's first look reuses the
        one made at start), and the agents of each unconfigured pool that has agents or that our Jobs name."""
        now = self.clock()
        last = self.agents_observed.get(REMOVED_POOLS_SCAN)
        if last is not None and now - last < timedelta(seconds=self.config.sweep_interval):
            return ()
        configured = {p.name.lower() for p in self.config.pools}
        named = {j.pool_name.lower() for j in jobs if j.pool_name and j.pool_name.lower() not in configured}
        owner = self.config.owner
        found = []
        try:
            listing, self.startup_pools = self.startup_pools or self.azdo.pools(), None
            for name, (pool_id, size) in sorted(listing.items()):
                if name.lower() in configured or (size == 0 and name.lower() not in named):
                    continue
                agents = tuple(self.azdo.agents(pool_id))
                ours = (names.agent_prefix(owner, pool_name=name), names.placeholder_prefix(owner, pool_name=name))
                if name.lower() in named or any(a.name.lower().startswith(ours) for a in agents):
                    found.append(PoolState(name=name, pool_id=pool_id, agents=agents, read_at=now))
        except AuthError:
            raise
        except ReconcilerError as exc:
            report.observe_failures += 1
            log.error("could not look for pools removed from the configuration: %s (tried again next pass)", exc)
            return ()
        self.agents_observed[REMOVED_POOLS_SCAN] = now
        for state in found:
            log.info("pool %r is no longer configured but holds agents or Jobs of ours: cleaning it", state.name)
        return tuple(found)

    def _read_standby_history(self, report: PassReport) -> StandbyHistory | None:
        """The standby history, when a template learns from it: read at the first pass, when the hour
        changed since (another run may have recorded its peaks), or after a write found it changed; else
        the copy this run keeps (its own writes update it). None when it cannot be read."""
        if self.kube is None or not any(t.learn is not None for p in self.config.pools for t in p.templates):
            return None  # no template learns, or no cluster keeps the history (backend aci without a Lease)
        hour = self.clock().replace(minute=0, second=0, microsecond=0)
        if self.standby_history is not None and self._history_read_hour == hour:
            return self.standby_history
        namespace, name = self.config.lease_namespace, standby.configmap_name(self.config.release)
        try:
            found = self.kube.read_configmap(namespace, name)
        except AuthError:
            raise
        except ReconcilerError as exc:
            report.observe_failures += 1
            log.error(
                "could not read the standby history %s/%s: %s (standby is not learned this pass)", namespace, name, exc
            )
            self.standby_history = None
            return None
        metadata = (found or {}).get("metadata") or {}
        data = (found or {}).get("data") or {}
        self.standby_history = StandbyHistory(
            peaks=standby.decode(data if isinstance(data, dict) else {}),
            resource_version=metadata.get("resourceVersion") if found else None,
        )
        self._history_read_hour = hour
        return self.standby_history

    def _learn(self, pool_name: str, agents: list[Agent]) -> None:
        """Remember what the registered agents of each template of the pool advertise (placeholders copy it)."""
        pool = self.config.pool(pool_name)
        owner = self.config.owner
        # Only this release's agents and placeholders teach it: anyone's agent could advertise AZP_TEMPLATE.
        ours = (
            names.agent_prefix(owner, pool_name=pool_name).lower(),
            names.placeholder_prefix(owner, pool_name=pool_name).lower(),
        )
        mine = [a for a in agents if a.name.lower().startswith(ours)]
        for template in pool.templates if pool is not None else ():
            placeholder = names.placeholder_name(owner, pool_name=pool_name, template=template.name)
            learned = capabilities.learn(mine, template=template.name, placeholder=placeholder)
            if learned is not None:
                self.learned[(pool_name, template.name)] = learned

    def _list_namespaces(self, report: PassReport) -> tuple[list[AgentJob], list[AgentPod], set[str]]:
        """Our Jobs and Pods in every agent namespace (resource group on ACI), and those that could not be listed."""
        jobs: list[AgentJob] = []
        pods: list[AgentPod] = []
        failed: set[str] = set()
        for namespace in self.config.namespaces:
            try:
                found_jobs, found_pods = self.backend.list_workloads(namespace, owner=self.config.owner)
                jobs.extend(found_jobs)
                pods.extend(found_pods)
            except AuthError:
                raise
            except ReconcilerError as exc:
                failed.add(namespace)
                report.observe_failures += 1
                log.error("could not list namespace %s: %s (its pools are skipped this pass)", namespace, exc)
        return jobs, pods, failed

    def _read_queue(self, report: PassReport, name: str) -> PoolState | None:
        """A due pool's queue; None when it cannot be read (the pool backs off, the rest of the pass goes on)."""
        pool_id = self.pool_ids.get(name)
        if pool_id is None:
            return PoolState(name=name, pool_id=None)
        read_at = self.clock()
        try:
            requests_ = self.azdo.job_requests(pool_id)
        except AuthError:
            raise
        except ReconcilerError as exc:
            report.observe_failures += 1
            if isinstance(exc, NotFoundError):
                # A pool deleted and created again under its name has a new id: look it up next time.
                self.pool_ids.pop(name, None)
            delay = self._pool_failed(name)
            log.error("could not read the queue of pool %r: %s (the pool is tried again in %.1fs)", name, exc, delay)
            return None
        self.pool_failures.pop(name, None)
        return PoolState(name=name, pool_id=pool_id, requests=tuple(requests_), read_at=read_at)

    def _pool_failed(self, name: str) -> float:
        """Back a failed pool off: `interval` doubled per failure in a row, at most MAX_POOL_BACKOFF."""
        failures = self.pool_failures.get(name, 0) + 1
        self.pool_failures[name] = failures
        interval = self.config.loop.interval
        delay: float = max(interval, min(interval * 2 ** (failures - 1), MAX_POOL_BACKOFF))
        self.next_due[name] = time.monotonic() + delay
        return delay

    def one_pass(self, number: int) -> PassReport:
        """Observe, plan, apply and report once."""
        started = time.monotonic()
        cpu_started = time.process_time()
        azdo_before, kube_before, arm_before = self.azdo.call_count, self._kube_calls(), self._arm_calls()
        report = PassReport(number=number)
        due = self._due_pools(started)
        world = self.observe(report, due)
        now = self.clock()
        actions = plan(self.config, world, now)
        report.outcome = self.applier.apply(actions)
        self.pruned.update(name.lower() for name in report.outcome.pruned_agents)
        if report.outcome.standby_history is not None:
            self.standby_history = report.outcome.standby_history
        elif report.outcome.standby_history_stale:
            self.standby_history = None
        for pool_name in report.outcome.failed_agent_pools:
            # The scan is forgotten so the next pass lists the agents again and retries the action.
            self.agents_observed.pop(pool_name, None)
        for state in world.pools:
            queued = sum(1 for r in state.requests if r.queued)
            report.queued += queued
            report.running += sum(1 for r in state.requests if not r.queued)
        report.jobs = sum(1 for j in world.jobs if not j.done)
        # A pool with Jobs of ours (finished ones stay for ttlSecondsAfterFinished) had work recently
        # and is polled at `interval`; one that stayed idle that long drops to `idleInterval`.
        active_slugs = {j.pool_slug for j in world.jobs}
        for pool in self.config.pools:
            observed = world.pool(pool.name)
            if observed is None:
                continue
            busy = bool(observed.requests) or names.pool_slug(pool.name) in active_slugs
            if busy:
                report.active_pools.add(pool.name)
            interval = self.config.loop.interval if busy else self.config.loop.idle_interval
            self.next_due[pool.name] = started + interval
            self.last_polled[pool.name] = started
        self._follow_hints(world)
        report.azdo_calls = self.azdo.call_count - azdo_before
        report.kube_calls = self._kube_calls() - kube_before
        report.arm_calls = self._arm_calls() - arm_before
        report.seconds = time.monotonic() - started
        log.info(
            "pass summary",
            extra={"fields": {**report.fields(), "cpu_seconds": round(time.process_time() - cpu_started, 3)}},
        )
        return report

    def _kube_calls(self) -> int:
        return self.kube.call_count if self.kube is not None else 0

    def _arm_calls(self) -> int:
        return self.backend.call_count if self.config.backend == "aci" else 0

    def _announced_end(self, seconds: float) -> datetime | None:
        """When this run means to stop, for the Lease: None for a loop without end (`serve`)."""
        if not math.isfinite(seconds):
            return None
        return self.clock() + timedelta(seconds=max(0.0, seconds))

    def run(self) -> int:
        """Run passes until loopFor has passed (one pass when it is 0); returns the exit code."""
        loop_for = self.config.loop.loop_for
        self.run_until = self._announced_end(loop_for)
        reason = self.acquire_waiting()
        # The loop ends by loopFor from when the Lease was taken, and always by the run's deadline.
        deadline = min(time.monotonic() + loop_for, self.deadline.at - self.deadline.reserve)
        self.run_until = self._announced_end(deadline - time.monotonic())
        if reason is not None:
            log.info("another run is reconciling this release, nothing to do: %s", reason)
            return 0
        exit_code = 0
        number = 0
        previous = signal.signal(signal.SIGTERM, self._terminate) if _main_thread() else None
        try:
            while not self.stopping.is_set():
                number += 1
                try:
                    report = self.one_pass(number)
                except AuthError:
                    raise
                except ReconcilerError as exc:
                    # The API was unreachable after retries: this pass is lost, the next may work.
                    log.error("pass %d failed: %s", number, exc, extra={"fields": {"pass": number, "failed": 1}})
                    exit_code = 1
                    for pool in self.config.pools:
                        self.next_due[pool.name] = time.monotonic() + self.config.loop.interval
                else:
                    self.last_report = report
                    if self.on_pass is not None:
                        self.on_pass(report)
                    if report.failed:
                        exit_code = 1
                if not self.renew():
                    log.warning("lost the Lease to another run: stopping")
                    break
                if not self.next_due or loop_for <= 0 or not self._sleep_until_due(deadline):
                    break
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.deadline.release_reserve()
            try:
                self.renew(release=True)
            except AuthError:
                raise  # a Role without leases/update is a configuration error, not a passing glitch
            except ReconcilerError as exc:
                log.warning("could not release the Lease (it expires by itself): %s", exc)
        return exit_code


def _backend(
    config: Config, credentials: Credentials, *, kubeconfig: str | None, deadline: Deadline
) -> tuple[Kubernetes | None, Backend]:
    """The Kubernetes client (for the Lease, and the Jobs on that backend) and the backend agents run on.

    On ACI the reconciler can run anywhere: without a Lease it needs no Kubernetes API server at all."""
    from reconciler.kube import Kubernetes

    if config.backend == "aci":
        kube = Kubernetes(kubeconfig=kubeconfig, deadline=deadline) if config.lease_enabled else None
        return kube, container_instances(config, credentials, deadline=deadline)
    kube = Kubernetes(kubeconfig=kubeconfig, deadline=deadline)
    return kube, KubernetesBackend(kube)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def startup_fields(config: Config, *, dry_run: bool, mode: str) -> dict[str, Any]:
    return {
        "version": __version__,
        "mode": mode,
        "dry_run": dry_run,
        "organization": config.organization,
        "release": config.release,
        "pools": [p.name for p in config.pools],
        "namespaces": list(config.namespaces),
        "loop_for": config.loop.loop_for,
        "interval": config.loop.interval,
        "config": config.source,
    }
