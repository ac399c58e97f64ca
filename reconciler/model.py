"""Frozen data: the effective configuration, the observed world, and the actions a plan returns.

Nothing here does I/O. `config.py` builds the configuration, `azdo.py` and `kube.py` build the
world, `plan.py` turns both into actions and `apply.py` carries them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import Any, Literal

from reconciler.names import Owner

Capabilities = Mapping[str, str]


def frozen_map(values: Mapping[str, str] | None = None) -> Capabilities:
    """A read-only copy of a string map (dataclasses here are frozen all the way down)."""
    return MappingProxyType(dict(values or {}))


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PodPolicy:
    """What a user's job template may ask for."""

    allow_privileged: bool = False
    allow_host_network: bool = False
    allow_host_path: bool = False
    allow_service_account_token: bool = False


@dataclass(frozen=True)
class StandbyWindow:
    """A time of the week when more idle agents are kept (standby.py reads it)."""

    days: frozenset[int]
    """Weekdays the window starts on, Monday 0."""
    start: int
    """Minutes after local midnight."""
    end: int
    """Minutes after local midnight, up to 1440; not after `start`: the window ends the next day."""
    zone: tzinfo
    min_idle: int


@dataclass(frozen=True)
class StandbyLearning:
    """History-based warm-up of a template (standby.learned): what share of an hour's learned peak to keep idle."""

    zone: tzinfo
    """The clock whose hours of the week are learned (an office's time zone follows its daylight saving)."""
    fraction: float = 0.5
    """Idle agents kept per request of the hour's learned peak of queued+running requests (rounded up)."""
    lead: int = 10
    """Minutes before a learned hour that its minIdle starts (agents take that long to come online)."""
    most: int | None = None
    """At most this many idle agents from the history (None: the template's maxAgents bounds it)."""


@dataclass(frozen=True)
class TemplateConfig:
    """One kind of agent a pool can start: a job.yaml and the capabilities its agents advertise."""

    name: str
    job_template: str
    capabilities: Capabilities = field(default_factory=frozen_map)
    priority: int = 0
    max_agents: int | None = None
    min_idle: int = 0
    standby: tuple[StandbyWindow, ...] = ()
    """Windows when another minIdle applies (standby.py)."""
    learn: StandbyLearning | None = None
    """Keep idle agents from the queue's history (standby.learned), None: no history is recorded."""
    arch: str | None = None
    """kubernetes.io/arch its pods select (render.select_arch), None: the template's own nodeSelector."""
    min_agents: int = 0
    instances: int | None = None
    """Backend aci: exactly this many named container groups that restart after each job (restartPolicy
    Always; the agent re-registers under the group's name), None: one group per job (restartPolicy Never)."""
    placeholder: bool = True
    match_any: bool = False
    """No capabilities declared: serve any request, as ado-agent-orchestrator does (no routing)."""
    cost: tuple[int, int] = (0, 0)
    """(cpu millicores, memory bytes) requested by the template: cheaper wins a tie."""
    known_capabilities: Capabilities = field(default_factory=frozen_map)
    """What its agents are known to advertise before one has registered (capabilities.defaults):
    Agent.OS/OSArchitecture, the tools of a built-in image, the agent container's literal env."""


@dataclass(frozen=True)
class PoolConfig:
    """One Azure DevOps agent pool served by this release."""

    name: str
    namespace: str
    templates: tuple[TemplateConfig, ...]
    max_agents: int = 10
    min_idle: int = 0
    standby: tuple[StandbyWindow, ...] = ()
    min_agents: int = 0
    provisioning_timeout: int = 600
    idle_timeout: int = 300

    def template(self, name: str) -> TemplateConfig | None:
        """The template called `name`, if this pool has one."""
        return next((t for t in self.templates if t.name == name), None)


@dataclass(frozen=True)
class LoopConfig:
    loop_for: float = 0.0
    interval: float = 10.0
    idle_interval: float = 30.0


@dataclass(frozen=True)
class RegistryCredential:
    """How ACI pulls from a private registry: a managed identity (resource id), or a user name whose
    password is read from a file or an environment variable when a group is created (never kept in the
    configuration)."""

    server: str
    identity: str | None = None
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class AciConfig:
    """The `aci` settings: where container groups go, how the reconciler authenticates to Azure, and what
    every group gets besides its template (identity, registries, subnets)."""

    subscription_id: str
    resource_group: str
    location: str
    credential: str = "default"
    """default | managedIdentity | workloadIdentity | servicePrincipal (azure-identity credentials)."""
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_file: str | None = None
    authority_host: str | None = None
    arm_endpoint: str = "https://management.azure.com"
    identity: str | None = None
    """Resource id of a user-assigned managed identity every group runs as (ACR pulls with it)."""
    registries: tuple[RegistryCredential, ...] = ()
    subnet_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The effective configuration of one release (secrets are not part of it)."""

    organization: str
    pools: tuple[PoolConfig, ...]
    release: str = "azp-agents"
    namespace: str = "azp-agents"
    job_name_prefix: str = "azp"
    agent_secret_name: str = "azp-agents-pat"
    agent_secret_key: str = "pat"
    ttl_seconds_after_finished: int = 300
    lease_enabled: bool = True
    lease_namespace: str = "azp-agents"
    lease_duration: int = 60
    shard_index: int = 0
    shard_count: int = 1
    shard_takeover_after: int = 300
    """Seconds after which another shard's queued request is served too (0: never)."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    max_create_per_pass: int = 200
    pod_policy: PodPolicy = field(default_factory=PodPolicy)
    agent_version: str = "4.269.0"
    sweep_interval: int = 300
    events: bool = True
    log_format: str = "text"
    log_level: str = "info"
    azdo_timeout: float = 30.0
    azdo_api_version: str = "auto"
    """azureDevOps.apiVersion: auto, or a REST API version pinned (reconciler.azdo.API_VERSIONS)."""
    azdo_retries: int = 4
    allow_token_in_agent_container: bool = False
    """Accept `once` templates, whose agent container registers too (its steps can read the PAT)."""
    agent_registration: str = "token"
    """agents.registration: `reconciler` registers each agent and gives its pod only that agent's files
    (agent_files.py); `token`: the pod registers itself with the PAT Secret."""
    backend: str = "kubernetes"
    """kubernetes (batch/v1 Jobs) or aci (Azure Container Instances container groups)."""
    aci: AciConfig | None = None
    source: str = "config"

    def pool(self, name: str) -> PoolConfig | None:
        """The configured pool called `name` (exact, as Azure DevOps spells it)."""
        return next((p for p in self.pools if p.name == name), None)

    @property
    def owner(self) -> Owner:
        """This release's shard: in the name of every agent, placeholder and Job it makes."""
        return Owner(prefix=self.job_name_prefix, release=self.release, shard=self.shard_index)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace agent Jobs live in, in a stable order."""
        return tuple(sorted({p.namespace for p in self.pools}))


# --- the observed world ------------------------------------------------------------------------

Bucket = tuple[int, int, int]
"""One hour of the week of a template's history: (week it was last recorded in, that week's peak of
queued+running requests, the learned peak of the weeks before)."""


@dataclass(frozen=True)
class StandbyHistory:
    """The queue's peaks per hour of the week, per template (the `<release>-standby-history` ConfigMap)."""

    peaks: Mapping[str, Mapping[int, Bucket]] = field(default_factory=lambda: MappingProxyType({}))
    """By standby.history_key(pool, template), then hour of the week (Monday 00:00 is 0): buckets seen busy."""
    resource_version: str | None = None
    """The ConfigMap's resourceVersion (a write replaces exactly it); None: there is no ConfigMap yet."""


@dataclass(frozen=True)
class JobRequest:
    """An unfinished pipeline job of a pool (`jobrequests?completedRequestCount=0`)."""

    request_id: int
    queue_time: datetime | None = None
    demands: tuple[str, ...] = ()
    assign_time: datetime | None = None
    receive_time: datetime | None = None
    finish_time: datetime | None = None
    result: str | None = None
    reserved_agent_id: int | None = None
    reserved_agent_name: str | None = None
    reserved_agent_enabled: bool | None = None
    """The reserved agent's `enabled` as the request's agent reference shows it (None: not shown)."""
    plan_type: str | None = None
    definition: str | None = None
    job_id: str | None = None
    """The pipeline job's id (lower case): what a job-state-changed service hook names."""
    scope_id: str | None = None
    """The id (lower case) of the project whose pipeline queued it."""

    @property
    def finished(self) -> bool:
        return self.result is not None or self.finish_time is not None

    @property
    def queued(self) -> bool:
        """Waiting for an agent: nobody reserved it, nobody received it, it has not finished."""
        return (
            not self.finished
            and self.reserved_agent_id is None
            and self.reserved_agent_name is None
            and self.assign_time is None
            and self.receive_time is None
        )


@dataclass(frozen=True)
class Agent:
    """A registered agent of a pool (`pools/{id}/agents`)."""

    agent_id: int
    name: str
    enabled: bool = True
    status: str = "offline"
    assigned_request_id: int | None = None
    completed_request_id: int | None = None
    """Its last finished request: an offline ephemeral agent with one has done its job."""
    status_changed_on: datetime | None = None
    created_on: datetime | None = None
    capabilities: Capabilities = field(default_factory=frozen_map)

    @property
    def online(self) -> bool:
        return self.status == "online"

    @property
    def busy(self) -> bool:
        return self.assigned_request_id is not None


@dataclass(frozen=True)
class PoolState:
    """What Azure DevOps told us about one configured pool in this pass."""

    name: str
    pool_id: int | None
    requests: tuple[JobRequest, ...] = ()
    agents: tuple[Agent, ...] | None = None
    """None when the agents were not listed in this pass (they are listed only when needed)."""
    read_at: datetime | None = None
    """When the queue was read (our clock): a pod that finished since may have run a request read as queued."""

    @property
    def found(self) -> bool:
        return self.pool_id is not None


PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


@dataclass(frozen=True)
class AgentPod:
    """The pod of an agent Job."""

    name: str
    """The name of its agent: the pod's name, which `start.sh register` gives the agent, or for an agent the
    reconciler registered (agents.registration: reconciler) its Job's name, from the pod's annotation."""
    namespace: str
    job_name: str | None
    phase: str = "Pending"
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    reason: str | None = None
    """Why the pod is not running, from its status (ImagePullBackOff, Unschedulable, ...)."""
    message: str | None = None
    deleting: bool = False
    agent_id: int | None = None
    """The id of the pod's agent: from its register init container's termination message, or the pod's annotation
    when the reconciler registered it."""
    exit_code: int | None = None
    """The non-zero exit code of the container that failed, if one did."""

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class AgentJob:
    """A Kubernetes Job this release created, with its labels read back."""

    name: str
    namespace: str
    pool_slug: str
    pool_name: str | None
    template: str
    request_id: int | None
    standby: bool
    created: datetime | None
    finished: datetime | None = None
    failed: bool = False
    deleting: bool = False
    crash_failures: int = 0
    """A named instance re-created after failing: how many times it had failed in a row before (kept on the
    object, so its crash backoff outlives the delete of the failed one); 0 otherwise."""

    @property
    def done(self) -> bool:
        return self.finished is not None or self.failed


@dataclass(frozen=True)
class World:
    """One immutable snapshot of everything a pass looked at."""

    pools: tuple[PoolState, ...]
    jobs: tuple[AgentJob, ...] = ()
    pods: tuple[AgentPod, ...] = ()
    agents_observed: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))
    """When each pool's agents were last listed (kept in the Lease, so CronJob runs share it)."""
    agent_ids: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Agent ids by lower-case name, learned from the reservedAgent of requests seen in this run."""
    pruned: frozenset[str] = frozenset()
    """Lower-case names of agents this run already deleted."""
    learned: Mapping[tuple[str, str], Capabilities] = field(default_factory=lambda: MappingProxyType({}))
    """System capabilities a registered agent of (pool, template) advertised (capabilities.learn),
    remembered by the run from the last agent list that showed one."""
    standby_history: StandbyHistory | None = None
    """The recorded history when a template learns its standby from it; None: not read (nobody learns, or
    the read failed)."""
    azdo_clock_offset: timedelta | None = None
    """Azure DevOps' clock minus ours, as its last answer's Date header showed (None: not known)."""
    removed: tuple[PoolState, ...] = ()
    """Pools no longer configured that still hold agents, placeholders or Jobs of ours, with their agents
    listed (only in the passes that looked for them)."""

    def pool(self, name: str) -> PoolState | None:
        return next((p for p in self.pools if p.name == name), None)


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateJob:
    pool: str
    template: str
    namespace: str
    job_name: str
    request_id: int | None
    reason: str
    demands: tuple[str, ...] = ()
    pool_id: int | None = None
    """Where the reconciler registers the Job's agent (agents.registration: reconciler)."""
    crash_failures: int = 0
    """A named instance re-created after failing: its failures in a row so far (AgentJob.crash_failures)."""
    kind: Literal["create-job"] = "create-job"


@dataclass(frozen=True)
class DeleteJob:
    """Delete a Job of ours (stuck, orphaned by a config change, or finished past its TTL)."""

    pool: str
    namespace: str
    job_name: str
    reason: str
    detail: str = ""
    agent_id: int | None = None
    """Agent registration to remove after the Job, if the pod had registered one."""
    pool_id: int | None = None
    kind: Literal["delete-job"] = "delete-job"


@dataclass(frozen=True)
class DeleteAgent:
    """Remove the registration of an offline agent of ours (or a placeholder no longer wanted)."""

    pool: str
    pool_id: int
    agent_id: int
    agent_name: str
    reason: str
    kind: Literal["delete-agent"] = "delete-agent"


@dataclass(frozen=True)
class DrainAgent:
    """Disable an idle agent, re-read it, and only if still unassigned delete its Job and itself."""

    pool: str
    pool_id: int
    agent_id: int
    agent_name: str
    namespace: str | None
    job_name: str | None
    reason: str
    kind: Literal["drain-agent"] = "drain-agent"


@dataclass(frozen=True)
class DisableAgent:
    """Disable a `--once` agent of ours running its one job, so the service hands it no second job."""

    pool: str
    pool_id: int
    agent_id: int
    agent_name: str
    request_id: int
    reason: str
    kind: Literal["disable-agent"] = "disable-agent"


@dataclass(frozen=True)
class RegisterPlaceholder:
    pool: str
    pool_id: int
    agent_name: str
    capabilities: Capabilities
    kind: Literal["register-placeholder"] = "register-placeholder"


@dataclass(frozen=True)
class UpdatePlaceholder:
    pool: str
    pool_id: int
    agent_id: int
    agent_name: str
    capabilities: Capabilities
    kind: Literal["update-placeholder"] = "update-placeholder"


@dataclass(frozen=True)
class ReportUnroutable:
    """A queued request no template of its pool can serve: said once per pass, never served wrongly."""

    pool: str
    request_id: int
    demands: tuple[str, ...]
    kind: Literal["report-unroutable"] = "report-unroutable"


@dataclass(frozen=True)
class ReportCrashBackoff:
    """Pods of a template keep failing before their agent comes online: its new Jobs wait until `retry_at`."""

    pool: str
    template: str
    namespace: str
    job_name: str
    """The Job whose pod failed last (the Event goes on it)."""
    failures: int
    reason: str
    """The failed pod's reason, exit code and termination message."""
    retry_at: datetime
    kind: Literal["report-crash-backoff"] = "report-crash-backoff"


@dataclass(frozen=True)
class ReportMissingPool:
    pool: str
    kind: Literal["report-missing-pool"] = "report-missing-pool"


@dataclass(frozen=True)
class RecordStandbyHistory:
    """Write the standby history: a template's peak for the hour rose (replaces `history.resource_version`)."""

    pool: str
    """The pool of the first template whose peak rose (for the log)."""
    history: StandbyHistory
    reason: str
    kind: Literal["record-standby-history"] = "record-standby-history"


Action = (
    CreateJob
    | DeleteJob
    | DeleteAgent
    | DrainAgent
    | DisableAgent
    | RegisterPlaceholder
    | UpdatePlaceholder
    | ReportUnroutable
    | ReportCrashBackoff
    | ReportMissingPool
    | RecordStandbyHistory
)

WRITE_KINDS = frozenset(
    {
        "create-job",
        "delete-job",
        "delete-agent",
        "drain-agent",
        "disable-agent",
        "register-placeholder",
        "update-placeholder",
        "record-standby-history",
    }
)


def describe(action: Action) -> dict[str, Any]:
    """A flat, log-friendly view of an action (no secrets live in actions)."""
    from dataclasses import asdict

    data = asdict(action)
    if "capabilities" in data:
        data["capabilities"] = dict(action.capabilities)  # type: ignore[union-attr]
    return data
