"""World files and the simulation that joins the two emulators.

A world file (YAML) describes a starting world and what happens in it: pools and their templates,
agents already registered (`ours: true`: a leftover of an earlier run of the installed release, named as the README
documents its agents' names, INSTALLED_AGENT_NAME), job requests arriving over time (with demands and durations),
cancellations, pods whose agent never comes online, and faults. `Simulation` builds both
emulators from it, writes the reconciler's configuration, kubeconfig and PAT file, and plays the
part of the agents: when a pod of an agent image runs in the Kubernetes emulator, a simulated agent
registers in the Azure DevOps emulator under the name its registering container was given, goes
online, takes one job (`--once`), and when the job ends the pod completes, the agent stays registered
and offline, as the real one does.

When jobs arrive: Azure DevOps fails at once a job that no agent registered in its pool (online or offline, enabled
or not) satisfies ("No agent found in pool X which satisfies the specified demands", azdo_emulator.accepts), so the
world's pipelines start queueing once the service would take the first job of every pool that has jobs to come
(`installed`): the world's clock, which times arrivals, cancellations and faults, starts then. After that a job whose
time has come waits until the service would take it (an agent satisfying its demands registered, say a template's
agent that first shows a tool), and a cancellation until the pool's nth job is queued; an event still waiting
HOLD_LIMIT seconds after its time happens anyway (the job is then failed by the service). The world knows nothing of
how the reconciler names or registers its placeholders: only what the service answers.

The simulated agents are honest (agent_images.py has the sources): which container runs the agent and
which registers it follows from each container's image (the world's image catalogue) and arguments, as
the image's start script decides, never from anything the reconciler marks; an agent advertises its
running container's environment (less VSO_AGENT_IGNORE and the variables its script hides), the tools
of its image and `Agent.*`, never the capabilities the reconciler's configuration declares. config.sh
fails (the container exits 1) when AZP_URL is not this organization or AZP_POOL not one of its pools,
and the linux image's `run` exits 2 when it sees a token. A job may carry build steps (`arrivals[].steps`,
container_builds.py): the agent runs them in its container, and a step that finds no working BuildKit daemon
in the pod fails the job (`step_failures` says why).

Agents registered for their pod (the world's `reconciler: {agents: {registration: reconciler}}`): the chart then
puts no PAT Secret in the agent namespace, and a registering container given AZP_AGENT_FILES (the image's
`agent_files_env`) runs no config.sh: its agent reads .agent, .credentials and .credentials_rsaparams from that
Secret volume (a file missing: the script exits 2), signs a client assertion with that key and trades it for an
access token at the OAuth endpoint the files name, and starts its session with it (agent_oauth.py); a refusal
ends the container with exit 1. Such an agent never sees, and could do nothing with, a PAT.

Credentials: a world file's `auth: {method: pat|servicePrincipal|workloadIdentity|managedIdentity}` (default pat)
says how the reconciler authenticates. For a method other than pat the simulation starts the Entra ID emulator
(entra.py), registers the identity there as an administrator would (identities.py: an app with a client secret,
an app federated with the cluster's service account issuer and its token file, or a managed identity of the
host), adds it to the organization with the Administrator role on every pool, and gives the reconciler that
`auth` block and the environment it needs (the CA bundle, the workload identity or App Service variables); no
PAT file is written. The PAT Secret the chart installs in the agent namespace is there only when the agents
register themselves with it (agents.registration resolves to token, reconciler.config.agent_registration).
With `backend: aci` the same Entra ID emulator (started then if no method needed it) holds the reconciler's
ARM app registration (a client secret): the ARM emulator accepts only that tenant's tokens for its endpoint.

Nodes: a world file may list node pools (`nodes: [{arch: arm64, count: 2}, ...]`, default three amd64
nodes); the Kubernetes emulator schedules on their kubernetes.io/arch label, so a pod selecting an
architecture no node has stays Pending (Unschedulable). Nodes of another arch than amd64 are tainted
kubernetes.io/arch=<arch>:NoSchedule unless `tainted: false` (GKE's Arm nodes; GKE tolerates it for
pods selecting that arch), so a pod selecting no arch lands on amd64. The agent advertises the
architecture of the node it runs on, and an image not published for it fails with `exec format error`
(agent_images.py has the sources). Not emulated: taints other than that one, scheduling preferences,
and multi-arch manifests resolved at pull time (the image's `architectures` stands in).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from azp_simulation import agent_images, agent_oauth, container_builds, service_demands
from azp_simulation.arm_emulator import DEFAULT_START_DELAY, ArmEmulator, Quotas
from azp_simulation.azdo_emulator import AzureDevOpsEmulator, EmulatorAuthError
from azp_simulation.azdo_support import SERVER_PROFILES, ApiError
from azp_simulation.entra import EntraEmulator
from azp_simulation.identities import KIND_OF_METHOD, Identity, register_identity
from azp_simulation.kube_emulator import KubernetesEmulator
from azp_simulation.projects import DEFAULT_PROJECT
from reconciler import container_groups
from reconciler.config import agent_registration
from reconciler.errors import ConfigError
from reconciler.names import AGENT_ID_MESSAGE, pool_slug

SCENARIOS = Path(__file__).parent / "scenarios"
PAT = "simulated-pat-3f9c2e7b1d04a6c58e"
# ttlSecondsAfterFinished of the simulated release: finished Jobs stay this long.
JOB_TTL_SECONDS = 30
NAMESPACE = "azp-agents"
RELEASE = "azp-agents"
INSTALLED_AGENT_NAME = "azp-eeca0-{pool}-{name}"
"""The name of an agent of the installed release (jobNamePrefix azp, release azp-agents, shard 0, as _write_files
configures it) as the README documents it: "Every agent, placeholder and Job name carries the identity of its release
and shard, a tag of a hash of the release name and the shard index (`azp-eeca0-linux-1234` for release `azp-agents`,
shard 0)". A world file's `ours: true` agent is a leftover so named; tests/reliability/test_world_rules.py pins the
reconciler's naming to it, so a rename that would leave earlier versions' agents unpruned fails a test."""
LEFTOVER_POOL = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
"""Pool names INSTALLED_AGENT_NAME is used for, of the kind of the README's example `linux`: lowercase letters and
digits with inner hyphens, at most 16 characters. A leftover in a pool of another name is given its full name."""
HOLD_LIMIT = 60.0
"""Seconds the world waits for the service to take its first jobs, and a due job (or cancellation) for the service
to take it (its job to be queued), before it happens anyway (`Simulation.hold_limit`)."""
AGENT_IMAGE = "ghcr.io/azp-agents/agent-linux:4.269.0"
AGENT_VERSION = "4.269.0"
REGISTER_DELAY = 0.3
ACI_SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
ACI_RESOURCE_GROUP = "azp-agents"
ACI_LOCATION = "westeurope"
ACI_CLIENT_SECRET = "simulated-client-secret-5e1d"
AUTH_METHODS = ("pat", *KIND_OF_METHOD)


def scenario_path(name_or_path: str) -> Path:
    """A scenario shipped with the package by name, or a world file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    shipped = SCENARIOS / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    raise ConfigError(
        f"--scenario {name_or_path!r}: no such scenario or world file (shipped scenarios: {', '.join(known)})"
    )


@dataclass(frozen=True)
class Arrival:
    at: float
    pool: str
    count: int
    demands: tuple[str, ...]
    duration: tuple[float, float]
    every: float = 0.0
    result: str = "succeeded"
    steps: tuple[str, ...] = ()
    project: str | None = None
    """The project whose pipeline queues the jobs (None: the pool's first project)."""


@dataclass(frozen=True)
class CrashPods:
    """Pods of a pool whose agent container exits before the agent comes online (config.sh rejected, an
    image for another architecture, a broken entrypoint): the `first`.. `first + count - 1`-th pods the
    pool starts end Failed with `exit_code` and `message` as their termination message."""

    pool: str
    first: int = 1
    count: int = 1
    exit_code: int = 1
    message: str = ""

    def covers(self, pool: str, nth: int) -> bool:
        return pool == self.pool and self.first <= nth < self.first + self.count


def _server_version(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    if str(raw) not in SERVER_PROFILES:
        raise ConfigError(f"{where}: azure_devops_server: {raw!r} is not one of {', '.join(SERVER_PROFILES)}")
    return str(raw)


@dataclass(frozen=True)
class WorldFile:
    """A parsed, checked world file."""

    name: str
    description: str
    pools: tuple[dict[str, Any], ...]
    agents: tuple[dict[str, Any], ...]
    arrivals: tuple[Arrival, ...]
    cancellations: tuple[dict[str, Any], ...]
    stuck_pods: tuple[dict[str, Any], ...]
    crash_pods: tuple[CrashPods, ...]
    once_exit_window: float
    """Seconds a `--once` agent still shows online after its job (see AzureDevOpsEmulator)."""
    parallel_jobs: int | None
    """The organization's parallel-job limit (None: unlimited)."""
    server_version: str | None
    """`azure_devops_server`: "2020" or "2022" emulates that Azure DevOps Server instead of Services."""
    faults: tuple[dict[str, Any], ...]
    reconciler: Mapping[str, Any]
    timeout: float
    images: Mapping[str, str]
    image_catalogue: tuple[tuple[str, agent_images.ImageEntry], ...] = ()
    """The world file's own image entries; the built-in ones (agent_images.BUILT_IN) come after them."""
    nodes: Nodes | None = None
    """The cluster's nodes (None: the emulator's three amd64 nodes)."""
    backend: str = "kubernetes"
    """Where the reconciler runs agents: kubernetes (the emulator's Jobs) or aci (the ARM emulator's groups)."""
    aci: Mapping[str, Any] = field(default_factory=dict)
    """`aci:` startDelay (seconds of a real start), timeScale, quotas {containerGroups, standardCores},
    inaccessibleImages (glob patterns), failProvisioning [{pool, nth, message}]."""
    projects: tuple[str, ...] = ()
    """Projects besides the default one ("project"); a pool's `projects` name those with a queue for it."""
    auth_method: str = "pat"
    """How the reconciler authenticates: `auth.method` of its configuration (one of AUTH_METHODS)."""
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    """`namespace_labels`: the labels of the agents' namespace (say the Pod Security labels the chart gives
    the namespaces it creates); none by default, so Pod Security admits every pod (privileged)."""

    @property
    def total_jobs(self) -> int:
        return sum(a.count for a in self.arrivals)


def auth_method(raw: Any, where: str) -> str:
    """The world file's `auth: {method}` (or `--auth`'s value): one of AUTH_METHODS, default pat."""
    if raw is None:
        return "pat"
    method = raw.get("method", "pat") if isinstance(raw, dict) else raw
    if method not in AUTH_METHODS:
        raise ConfigError(f"{where}: auth.method: {method!r} is not one of {', '.join(AUTH_METHODS)}")
    return str(method)


def _require(mapping: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _demands(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """An arrival's demands, each one the service can parse (it never queues a job with another)."""
    demands = tuple(str(d) for d in raw.get("demands") or ())
    for index, demand in enumerate(demands):
        try:
            service_demands.parse_demand(demand)
        except service_demands.DemandError as exc:
            raise ConfigError(f"{where}.demands[{index}]: {exc}") from None
    return demands


def _crash_pods(raw: Any, where: str, pools: set[str]) -> CrashPods:
    if not isinstance(raw, dict) or raw.get("pool") not in pools:
        raise ConfigError(f"{where}.pool: expected one of the world's pools {sorted(pools)}")
    numbers = {key: raw.get(key, default) for key, default in (("first", 1), ("count", 1), ("exit_code", 1))}
    for key, value in numbers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key != "count" else 0):
            raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return CrashPods(pool=raw["pool"], message=str(raw.get("message", "")), **numbers)


@dataclass(frozen=True)
class Nodes:
    """The cluster's nodes: labels and NoSchedule taints by node name."""

    labels: Mapping[str, Mapping[str, str]]
    taints: Mapping[str, tuple[Mapping[str, str], ...]]


def _namespace_labels(raw: Any, where: str) -> dict[str, str]:
    """`namespace_labels`: a mapping of label names to string values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"{where}: namespace_labels: expected a mapping of label names to strings")
    return {str(k): v for k, v in raw.items()}


def _nodes(raw: Any, where: str) -> Nodes | None:
    """`nodes: [{arch, count, tainted}]`: kubernetes.io/arch as the kubelet sets it; `tainted` (default: true
    for an arch other than amd64) gives the pool GKE's kubernetes.io/arch=<arch>:NoSchedule taint."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: nodes: expected a non-empty list of {{arch, count}}")
    labels: dict[str, dict[str, str]] = {}
    taints: dict[str, tuple[Mapping[str, str], ...]] = {}
    for index, group in enumerate(raw):
        arch = group.get("arch") if isinstance(group, dict) else None
        count = group.get("count", 1) if isinstance(group, dict) else None
        if not isinstance(arch, str) or not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ConfigError(f"{where}: nodes[{index}]: expected {{arch: amd64|arm64|..., count: 1 or more}}")
        tainted = bool(group.get("tainted", arch != "amd64"))
        for n in range(1, count + 1):
            name = f"{arch}-node-{index}-{n}"
            labels[name] = {"kubernetes.io/arch": arch}
            if tainted:
                taints[name] = ({"key": "kubernetes.io/arch", "value": arch, "effect": "NoSchedule"},)
    return Nodes(labels=labels, taints=taints)


def load_world(path: Path) -> WorldFile:
    """Read a world file; a mistake names the key, like the reconciler's own configuration."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the world file: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    where = str(path)
    pools = _require(document, "pools", list, where)
    names = set()
    projects = tuple(str(p) for p in document.get("projects") or ())
    pool_projects: dict[str, list[str]] = {}
    for index, pool in enumerate(pools):
        name = _require(pool, "name", str, f"{where}: pools[{index}]")
        names.add(name)
        pool_projects[name] = [str(p) for p in pool.get("projects") or [DEFAULT_PROJECT]]
        for project in set(pool_projects[name]) - {DEFAULT_PROJECT, *projects}:
            raise ConfigError(f"{where}: pools[{index}].projects: {project!r} is not in the world's projects")
        for t_index, template in enumerate(_require(pool, "templates", list, f"{where}: pools[{index}]")):
            _require(template, "name", str, f"{where}: pools[{index}].templates[{t_index}]")
    arrivals = []
    for index, raw in enumerate(document.get("arrivals") or []):
        key = f"{where}: arrivals[{index}]"
        if raw.get("pool") not in names:
            raise ConfigError(f"{key}.pool: {raw.get('pool')!r} is not one of the world's pools {sorted(names)}")
        steps = tuple(raw.get("steps") or ())
        unknown = [s for s in steps if s not in container_builds.STEPS]
        if unknown:
            known = ", ".join(container_builds.STEPS)
            raise ConfigError(f"{key}.steps: {unknown[0]!r} is not a step the simulated agent runs ({known})")
        if raw.get("project") is not None and raw["project"] not in pool_projects[raw["pool"]]:
            raise ConfigError(f"{key}.project: {raw['project']!r} has no queue for pool {raw['pool']!r}")
        duration = raw.get("duration", [3, 6])
        low, high = (duration, duration) if isinstance(duration, int | float) else (duration[0], duration[-1])
        arrivals.append(
            Arrival(
                at=float(raw.get("at", 0)),
                pool=raw["pool"],
                count=int(raw.get("count", 1)),
                demands=_demands(raw, key),
                duration=(float(low), float(high)),
                every=float(raw.get("every", 0)),
                result=str(raw.get("result", "succeeded")),
                steps=steps,
                project=raw.get("project"),
            )
        )
    crash_pods = tuple(
        _crash_pods(raw, f"{where}: crash_pods[{i}]", names) for i, raw in enumerate(document.get("crash_pods") or [])
    )
    for index, agent in enumerate(document.get("agents") or []):
        if agent.get("pool") not in names:
            raise ConfigError(f"{where}: agents[{index}].pool: {agent.get('pool')!r} is not one of the world's pools")
        if agent.get("ours") and not (LEFTOVER_POOL.fullmatch(agent["pool"]) and len(agent["pool"]) <= 16):
            raise ConfigError(
                f"{where}: agents[{index}].ours: a leftover is named {INSTALLED_AGENT_NAME}, documented only for a "
                f"pool name of lowercase letters, digits and inner '-' (at most 16), not {agent['pool']!r}: give "
                "the agent's full name without `ours`"
            )
    return WorldFile(
        name=str(document.get("name", path.stem)),
        description=str(document.get("description", "")),
        pools=tuple(pools),
        agents=tuple(document.get("agents") or ()),
        arrivals=tuple(arrivals),
        cancellations=tuple(document.get("cancellations") or ()),
        stuck_pods=tuple(document.get("stuck_pods") or ()),
        crash_pods=crash_pods,
        once_exit_window=float(document.get("once_exit_window", 0)),
        parallel_jobs=None if document.get("parallel_jobs") is None else int(document["parallel_jobs"]),
        server_version=_server_version(document.get("azure_devops_server"), where),
        faults=tuple(document.get("faults") or ()),
        reconciler=document.get("reconciler") or {},
        timeout=float(document.get("timeout", 120)),
        images=document.get("images") or {},
        image_catalogue=agent_images.parse_catalogue(document.get("image_catalogue"), where=where),
        nodes=_nodes(document.get("nodes"), where),
        backend=str(document.get("backend", "kubernetes")),
        aci=document.get("aci") or {},
        projects=projects,
        auth_method=auth_method(document.get("auth"), where),
        namespace_labels=_namespace_labels(document.get("namespace_labels"), where),
    )


def job_template(image: str) -> dict[str, Any]:
    """The chart's default pattern: a `register` init container and a `run` main container."""
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}
    state = {"name": "agent-state", "mountPath": "/azp/state"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "agent"},
        "spec": {
            "template": {
                "spec": {
                    "securityContext": {
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [
                        {
                            "name": "register",
                            "image": image,
                            "args": ["register"],
                            "securityContext": security,
                            "volumeMounts": [state],
                        }
                    ],
                    "containers": [
                        {
                            "name": "agent",
                            "image": image,
                            "args": ["run"],
                            "securityContext": security,
                            "volumeMounts": [state],
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                        }
                    ],
                    "volumes": [{"name": "agent-state", "emptyDir": {}}],
                    "restartPolicy": "Never",
                }
            }
        },
    }


@dataclass(frozen=True)
class Registration:
    """What the registering container's config.sh sends, and the runner's listener then advertises."""

    name: str
    pool: str
    url: str
    token: str
    capabilities: dict[str, str]
    publisher: str | None
    files: Mapping[str, str] | None = None
    """The agent's .agent, .credentials and .credentials_rsaparams when they were mounted for it (no config.sh)."""


@dataclass
class AgentProcess:
    """One simulated agent living in one pod."""

    pod_name: str
    namespace: str
    pool: str
    agent_id: int | None = None
    online: bool = False
    exited: bool = False
    workspace: tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, str]] | None = None
    """Where its steps run: (the pod, the container running the agent, that container's environment)."""


@dataclass
class Metrics:
    """What the simulation measured, for the summary table."""

    started: float = field(default_factory=time.monotonic)
    peak_agents: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    runs: int = 0
    reconciler_exit_codes: list[int] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)


def seeded_agent_name(agent: Mapping[str, Any]) -> str:
    """A world file's agent: `name` as given, or with `ours: true` a leftover of an earlier run of the installed
    release, named INSTALLED_AGENT_NAME (the given name then is the part after the pool's)."""
    if not agent.get("ours"):
        return str(agent["name"])
    return INSTALLED_AGENT_NAME.format(pool=agent["pool"], name=agent["name"])


class Simulation:
    """Both emulators, the simulated agents, and the world file's timeline, in one place."""

    def __init__(self, world: WorldFile, *, directory: Path, seed: int = 1) -> None:
        self.world = world
        self.directory = directory
        self.random = random.Random(seed)
        self.azdo = AzureDevOpsEmulator(
            organization="contoso",
            server_version=world.server_version,
            once_exit_window=world.once_exit_window,
            parallel_jobs=world.parallel_jobs,
        )
        self.kube = KubernetesEmulator(
            image_policy=dict(world.images) or None,
            nodes=world.nodes.labels if world.nodes else None,
            node_taints=world.nodes.taints if world.nodes else None,
        )
        self.processes: dict[str, AgentProcess] = {}
        self.oauth_refusals = 0
        """Token requests of simulated agents the emulated service refused (a wrong key, a deleted agent)."""
        self.metrics = Metrics()
        self.pool_ids: dict[str, int] = {}
        self.request_ids: dict[str, list[int]] = {}
        self.catalogue = (*world.image_catalogue, *agent_images.BUILT_IN)
        self.pods_started: dict[str, int] = {}
        self.step_failures: dict[str, str] = {}
        """Agent name -> what the failing build step of its job printed."""
        self._timeline: list[tuple[float, str, Any]] = []
        self.hold_limit = HOLD_LIMIT
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.organization_url = ""
        self.kube_url = ""
        self.arm: ArmEmulator | None = None
        self.entra: EntraEmulator | None = None
        self.identity: Identity | None = None
        """The reconciler's Entra ID identity (None: it uses the PAT)."""
        self.aci_client_id = ""
        """The app registration the reconciler signs in to ARM with (backend aci)."""

    # --- setup ---------------------------------------------------------------------------------

    def start(self, *, azdo_port: int = 0, kube_port: int = 0) -> None:
        """Start both emulators, seed the world, write config/kubeconfig/PAT, start the timeline."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.organization_url = self.azdo.start(port=azdo_port)
        self.kube_url = self.kube.start(port=kube_port)
        self.azdo.add_pat(PAT, scopes=("vso.agentpools_manage",))
        self.kube.add_namespace(NAMESPACE, labels=self.world.namespace_labels)
        if self.agent_registration() != "reconciler":
            # What the chart installs in the agent namespace, unless the reconciler registers the agents.
            self.kube.add_secret(NAMESPACE, f"{RELEASE}-pat", {"pat": PAT})
        for project in set(self.world.projects) - {DEFAULT_PROJECT}:
            self.azdo.add_project(project)
        for pool in self.world.pools:
            created = self.azdo.add_pool(pool["name"], projects=pool.get("projects") or ())
            self.pool_ids[pool["name"]] = int(created["id"])
        if self.world.auth_method != "pat":
            self._use_identity(KIND_OF_METHOD[self.world.auth_method])
        for agent in self.world.agents:
            self.azdo.add_agent(
                self.pool_ids[agent["pool"]],
                seeded_agent_name(agent),
                enabled=agent.get("enabled", True),
                status=agent.get("status", "offline"),
                capabilities=agent.get("capabilities") or {},
            )
        self.azdo.on_agent_exit = self._agent_exited
        self.azdo.on_job_received = self._run_steps
        self.kube.on_pod_running = self._pod_running
        self.kube.on_pod_deleted = self._pod_deleted
        if self.world.backend == "aci":
            self.arm = self._start_arm()
        self._write_files()
        self._build_timeline()
        self._thread = threading.Thread(target=self._run_timeline, name="world-timeline", daemon=True)
        self._thread.start()

    def agent_registration(self) -> str:
        """Who registers the agents, as the reconciler resolves agents.registration for this world."""
        return agent_registration({"auth": {"method": self.world.auth_method}, **self.world.reconciler})

    def _use_identity(self, kind: str) -> None:
        """Start the Entra ID emulator and register the reconciler's identity there and in the organization."""
        self.identity = register_identity(
            self._entra(), self.azdo, kind, self.directory, pool_ids=tuple(self.pool_ids.values())
        )

    def _entra(self) -> EntraEmulator:
        """The world's one Entra ID tenant (its token service signs in to Azure DevOps and to ARM), started once."""
        if self.entra is None:
            self.entra = EntraEmulator(directory=self.directory / "entra")
            self.entra.start()
        return self.entra

    def reconciler_env(self) -> dict[str, str]:
        """What the reconciler's process needs in its environment besides its configuration: its Entra ID
        identity's variables, and the CA bundle that trusts the HTTPS emulators it talks to (Entra ID, ARM)."""
        env = dict(self.identity.env) if self.identity else {}
        trusted = (env.get("REQUESTS_CA_BUNDLE"), self.entra and self.entra.ca.ca_file, self.arm and self.arm.ca_path)
        bundles = list(dict.fromkeys(Path(b) for b in trusted if b))
        if len(bundles) > 1:
            combined = self.directory / "ca-bundle.pem"
            combined.write_text("".join(b.read_text(encoding="utf-8") for b in bundles), encoding="utf-8")
            bundles = [combined]
        if bundles:
            env["REQUESTS_CA_BUNDLE"] = str(bundles[0])
        return env

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.kube.stop()
        if self.arm is not None:
            self.arm.stop()
        self.azdo.stop()
        if self.entra is not None:
            self.entra.stop()

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def kubeconfig_path(self) -> Path:
        return self.directory / "kubeconfig"

    def _write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.identity is None:
            (self.directory / "pat").write_text(PAT + "\n")
        self.kube.write_kubeconfig(self.kubeconfig_path)
        templates_dir = self.directory / "templates"
        templates_dir.mkdir(exist_ok=True)
        pools = []
        for pool in self.world.pools:
            entry = {
                k: v
                for k, v in pool.items()
                if k in ("name", "maxAgents", "minIdle", "minAgents", "provisioningTimeout", "idleTimeout")
            }
            entry["templates"] = []
            for template in pool["templates"]:
                # A world file may give a template's job.yaml inline; else the chart's default shape.
                image = template.get("image", AGENT_IMAGE)
                windows = "agent-windows" in image
                aci = self.arm is not None
                default = container_groups.image_template(image=image, windows=windows) if aci else job_template(image)
                document = template.get("jobTemplate") or default
                path = templates_dir / f"{pool_slug(pool['name'])}-{template['name']}.yaml"
                path.write_text(yaml.safe_dump(document, sort_keys=False))
                entry["templates"].append(
                    {k: v for k, v in template.items() if k not in ("image", "jobTemplate")}
                    | {"jobTemplate": str(path)}
                )
            pools.append(entry)
        loop = {
            k: self.world.reconciler[k] for k in ("loopFor", "interval", "idleInterval") if k in self.world.reconciler
        }
        config = {
            "organization": self.organization_url,
            "allowInsecureHttp": True,
            "release": RELEASE,
            "namespace": NAMESPACE,
            "jobNamePrefix": "azp",
            "auth": self.identity.auth if self.identity else {"patFile": str(self.directory / "pat")},
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "sweepInterval": int(self.world.reconciler.get("sweepInterval", 30)),
            "agentVersion": AGENT_VERSION,
            "loop": loop,
            "logFormat": "json",
            "azureDevOps": {"timeoutSeconds": 10, "retries": 3},
            "pools": pools,
        }
        for key in ("allowTokenInAgentContainer", "podPolicy", "agents"):
            if key in self.world.reconciler:
                config[key] = self.world.reconciler[key]
        if self.arm is not None:
            config |= self._aci_config()
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _start_arm(self) -> ArmEmulator:
        """The ARM emulator for `backend: aci`, its resource group, a service principal and the world's rules."""
        settings = self.world.aci
        quotas = settings.get("quotas") or {}
        entra = self._entra()
        self.aci_client_id = entra.register_app(secret=ACI_CLIENT_SECRET).client_id
        arm = ArmEmulator(
            subscription=ACI_SUBSCRIPTION,
            entra=entra,
            azdo=self.azdo,
            organization_url=self.organization_url,
            catalogue=self.catalogue,
            start_delay=float(settings.get("startDelay", DEFAULT_START_DELAY)),
            time_scale=float(settings.get("timeScale", 1.0)),
            quotas=Quotas(
                container_groups=int(quotas.get("containerGroups", 100)),
                standard_cores=float(quotas.get("standardCores", 100)),
            ),
            inaccessible_images=tuple(settings.get("inaccessibleImages") or ()),
        )
        arm.add_resource_group(ACI_RESOURCE_GROUP, ACI_LOCATION)
        arm.never_start = lambda env: self._is_stuck(env.get("AZP_POOL", ""))
        failures = tuple(settings.get("failProvisioning") or ())
        started: dict[str, int] = {}

        def fail(env: Mapping[str, str]) -> str | None:
            pool = env.get("AZP_POOL", "")
            with self._lock:
                started[pool] = started.get(pool, 0) + 1
            rule = next((f for f in failures if f.get("pool") == pool and int(f.get("nth", 0)) == started[pool]), None)
            return None if rule is None else str(rule.get("message", "The container group failed to start."))

        arm.fail_provisioning = fail
        arm.start()
        return arm

    def _aci_config(self) -> dict[str, Any]:
        """The reconciler's `backend: aci` settings for the ARM emulator (HTTPS: the reconciler trusts its CA
        through REQUESTS_CA_BUNDLE, as behind a private CA)."""
        assert self.arm is not None and self.entra is not None
        secret = self.directory / "aci-client-secret"
        secret.write_text(ACI_CLIENT_SECRET + "\n")
        return {
            "backend": "aci",
            "aci": {
                "subscriptionId": ACI_SUBSCRIPTION,
                "resourceGroup": ACI_RESOURCE_GROUP,
                "location": ACI_LOCATION,
                "credential": "servicePrincipal",
                "tenantId": self.entra.tenant_id,
                "clientId": self.aci_client_id,
                "clientSecretFile": str(secret),
                "authorityHost": self.entra.authority_host,
                "armEndpoint": self.arm.base_url,
            },
        }

    def _build_timeline(self) -> None:
        for arrival in self.world.arrivals:
            for index in range(arrival.count):
                at = arrival.at + index * arrival.every
                duration = self.random.uniform(*arrival.duration)
                self._timeline.append((at, "queue", (arrival, duration)))
        for cancel in self.world.cancellations:
            self._timeline.append((float(cancel.get("at", 0)), "cancel", cancel))
        for fault in self.world.faults:
            self._timeline.append((float(fault.get("at", 0)), "fault", fault))
        self._timeline.sort(key=lambda item: item[0])

    # --- the timeline --------------------------------------------------------------------------

    def installed(self) -> bool:
        """The service would take the first job of every pool that has jobs to come (some agent registered in the
        pool satisfies its demands): the world's pipelines start queueing, its clock starts."""
        first: dict[str, Arrival] = {}
        for arrival in sorted(self.world.arrivals, key=lambda a: a.at):
            first.setdefault(arrival.pool, arrival)
        return all(self._accepted(arrival) for arrival in first.values())

    def _accepted(self, arrival: Arrival) -> bool:
        return self.azdo.accepts(self.pool_ids[arrival.pool], arrival.demands)

    def _ready(self, kind: str, payload: Any) -> bool:
        """Whether a due event can happen now: a job once the service would take it, a cancellation once the
        pool's nth job is queued."""
        if kind == "queue":
            return self._accepted(payload[0])
        if kind == "cancel":
            return len(self.request_ids.get(payload["pool"], [])) >= int(payload.get("request", 1))
        return True

    def _run_timeline(self) -> None:
        waited = time.monotonic()
        while not self._stop.is_set() and not self.installed() and time.monotonic() - waited < self.hold_limit:
            self._stop.wait(0.1)
        start = time.monotonic()
        pending = list(self._timeline)
        due: list[tuple[float, str, Any]] = []
        while not self._stop.is_set():
            elapsed = time.monotonic() - start
            while pending and pending[0][0] <= elapsed:
                due.append(pending.pop(0))
            for event in list(due):
                at, kind, payload = event
                if self._ready(kind, payload) or elapsed - at >= self.hold_limit:
                    due.remove(event)
                    self._fire(kind, payload)
            self._sample()
            self._stop.wait(0.05)

    def _fire(self, kind: str, payload: Any) -> None:
        if kind == "queue":
            arrival, duration = payload
            request_id = self.azdo.queue_request(
                self.pool_ids[arrival.pool],
                demands=arrival.demands,
                duration=duration,
                result=arrival.result,
                steps=arrival.steps,
                project=arrival.project,
            )
            self.request_ids.setdefault(arrival.pool, []).append(request_id)
        elif kind == "cancel":
            ids = self.request_ids.get(payload["pool"], [])
            nth = int(payload.get("request", 1))
            if len(ids) >= nth:
                self.azdo.cancel_request(ids[nth - 1])
        elif kind == "fault":
            target = self.azdo if payload.get("target", "azdo") == "azdo" else self.kube
            options = {k: v for k, v in payload.items() if k not in ("at", "target", "method", "route")}
            target.inject_fault(payload.get("method", "GET"), payload.get("route", "*"), **options)

    def _sample(self) -> None:
        for pool, pool_id in list(self.pool_ids.items()):  # a test may add a pool while the timeline runs
            count = sum(1 for _, status in self.azdo.agent_statuses(pool_id) if status == "online")
            self.metrics.peak_agents[pool] = max(self.metrics.peak_agents.get(pool, 0), count)

    # --- simulated agents ----------------------------------------------------------------------

    def _entry(self, container: Mapping[str, Any]) -> agent_images.ImageEntry | None:
        return self._lookup(str(container.get("image", "")))

    def _environment(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        """What the process in the container sees: the image's ENV, HOSTNAME and the kubelet's service
        variables, then the container's own env (which wins)."""
        entry = self._entry(container)
        spec = pod.get("spec") or {}
        env = {**(entry.env if entry else {}), **agent_images.KUBERNETES_ENV}
        env["HOSTNAME"] = str(spec.get("hostname") or pod["metadata"]["name"])
        return env | self.kube.resolve_env(pod, container)

    def _agent_containers(self, pod: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
        """(the container that runs the agent, the one that registers it, whether an agent image was
        given a mode its script does not know): told by image and arguments, as the scripts decide."""
        spec = pod.get("spec") or {}
        inits = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") != "Always"]
        mains = list(spec.get("containers") or [])
        found = {id(c): agent_images.roles(c, self._entry(c)) for c in [*inits, *mains]}
        if any(r is None for r in found.values()):
            return None, None, True
        runner = next((c for c in mains if "run" in (found[id(c)] or ())), None)
        if runner is not None and "register" in (found[id(runner)] or ()):
            return runner, runner, False
        return runner, next((c for c in inits if "register" in (found[id(c)] or ())), None), False

    def _is_stuck(self, pool: str) -> bool:
        self.pods_started[pool] = self.pods_started.get(pool, 0) + 1
        return any(
            s.get("pool") == pool and int(s.get("nth", 0)) == self.pods_started[pool] for s in self.world.stuck_pods
        )

    def _token(self, pod: Mapping[str, Any], container: Mapping[str, Any], entry: agent_images.ImageEntry) -> str:
        """The PAT the register step of the image's script reads: its token file, else its token variable."""
        env = self._environment(pod, container)
        path = env.get(entry.token_file_env, "") if entry.token_file_env else ""
        if path:
            return self.kube.read_secret_file(pod, container, path) or ""
        return next((env[n] for n in entry.token_env if env.get(n)), "")

    def _sees_token(self, pod: Mapping[str, Any], container: Mapping[str, Any], entry: agent_images.ImageEntry) -> bool:
        """What start.sh `run` refuses: a token variable, or a token readable in AZP_SECRET_DIR."""
        env = self._environment(pod, container)
        secret_dir = env.get(entry.token_dir_env, "") or entry.token_dir
        return any(n in env for n in entry.hidden_env) or (
            self.kube.read_secret_file(pod, container, f"{secret_dir}/token") is not None
        )

    def _pod_running(self, pod: dict[str, Any]) -> None:
        runner, registrar, bad_mode = self._agent_containers(pod)
        namespace, pod_name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if bad_mode:
            self.kube.finish_pod(namespace, pod_name, exit_code=2)  # start.sh: unknown mode
            return
        if runner is None:
            return  # no container of this pod runs an agent
        entry = self._entry(runner)
        assert entry is not None
        if registrar is None or (
            registrar is not runner and entry.refuses_tokens and self._sees_token(pod, runner, entry)
        ):
            # No registration to restore, or start.sh run finds a token where steps run: exit 2.
            self.kube.finish_pod(namespace, pod_name, exit_code=2)
            return
        register_env = self._environment(pod, registrar)
        files = self._agent_files(pod, registrar, register_env)
        if files == {}:
            self.kube.finish_pod(namespace, pod_name, exit_code=2)  # start.sh: AZP_AGENT_FILES lacks a file
            return
        name = register_env.get("AZP_AGENT_NAME") or register_env["HOSTNAME"]
        if files is not None:
            name = str(json.loads(files[".agent"]).get("agentName", name))
        pool = register_env.get("AZP_POOL") or "Default"
        process = AgentProcess(pod_name=pod_name, namespace=namespace, pool=pool)
        with self._lock:
            self.processes[name] = process
            if self._is_stuck(pool):
                return
            crash = next((c for c in self.world.crash_pods if c.covers(pool, self.pods_started[pool])), None)
        if crash is not None:
            timer = threading.Timer(REGISTER_DELAY, self._crash, args=(process, runner.get("name", ""), crash))
            timer.daemon = True
            timer.start()
            return
        registrar_entry = self._entry(registrar)
        assert registrar_entry is not None
        node_arch = self.kube.node_labels(str(pod["spec"].get("nodeName", ""))).get("kubernetes.io/arch", "amd64")
        foreign = next(
            (c for c, e in ((runner, entry), (registrar, registrar_entry)) if node_arch not in e.architectures), None
        )
        if foreign is not None:
            self._crash(process, str(foreign.get("name", "")), CrashPods(pool, message=agent_images.EXEC_FORMAT_ERROR))
            return
        env = self._environment(pod, runner)
        process.workspace = (pod, runner, env)
        capabilities = agent_images.advertised(
            env=env, entry=entry, name=name, hostname=env["HOSTNAME"], version=AGENT_VERSION, node_arch=node_arch
        )
        registration = Registration(
            name=name,
            pool=pool,
            url=register_env.get("AZP_URL", ""),
            token=self._token(pod, registrar, registrar_entry),
            capabilities=capabilities,
            # An init container that registers (the chart's pattern) publishes the agent id when it ends.
            publisher=registrar.get("name") if registrar is not runner else None,
            files=files,
        )
        timer = threading.Timer(REGISTER_DELAY, self._register, args=(process, registration))
        timer.daemon = True
        timer.start()

    def _agent_files(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], env: Mapping[str, str]
    ) -> dict[str, str] | None:
        """The agent files the image's script finds in its AZP_AGENT_FILES directory: None when the variable is
        not set (config.sh registers), {} when one of the three is missing (the script exits 2)."""
        entry = self._entry(container)
        directory = env.get(entry.agent_files_env, "") if entry and entry.agent_files_env else ""
        if not directory:
            return None
        files = {
            name: self.kube.read_secret_file(pod, container, f"{directory}/{name}") for name in agent_oauth.AGENT_FILES
        }
        return {k: v for k, v in files.items() if v is not None} if all(files.values()) else {}

    def _register(self, process: AgentProcess, registration: Registration) -> None:
        if process.exited:
            return
        if registration.files is not None:
            self._run_from_files(process, registration, registration.files)
            return
        pool_id = self.pool_ids.get(registration.pool)
        if pool_id is None or registration.url.rstrip("/") != self.organization_url.rstrip("/"):
            # config.sh cannot find the pool in the organization it was pointed at: the container fails.
            self.kube.finish_pod(process.namespace, process.pod_name, exit_code=1)
            return
        try:
            agent = self.azdo.register_agent(
                pool_id=pool_id,
                name=registration.name,
                capabilities=registration.capabilities,
                version=AGENT_VERSION,
                token=registration.token,
            )
        except EmulatorAuthError:
            # config.sh fails: the pod's container exits with an error.
            self.kube.finish_pod(process.namespace, process.pod_name, exit_code=1)
            return
        with self._lock:
            process.agent_id = int(agent["id"])
            if process.exited:
                return
            process.online = True
        if registration.publisher is not None:
            # What `start.sh register` writes to its termination message.
            self.kube.set_termination_message(
                process.namespace, process.pod_name, registration.publisher, f"{AGENT_ID_MESSAGE}{process.agent_id}\n"
            )
        self.azdo.agent_online(process.agent_id, once=True)

    def _run_steps(self, agent_name: str, steps: tuple[str, ...]) -> str | None:
        """The agent runs its job's build steps in its container: "failed" at the first that fails."""
        with self._lock:
            process = self.processes.get(agent_name)
        if process is None or process.workspace is None:
            return None
        pod, runner, env = process.workspace
        for step in steps:
            failure = container_builds.run_step(step, pod=pod, runner=runner, env=env, lookup=self._lookup)
            if failure:
                with self._lock:
                    self.step_failures[agent_name] = failure
                return "failed"
        return None

    def _lookup(self, image: str) -> agent_images.ImageEntry | None:
        return agent_images.lookup(self.catalogue, image)

    def _run_from_files(self, process: AgentProcess, registration: Registration, files: Mapping[str, str]) -> None:
        """The listener of an agent registered for it: trade a client assertion signed with its key for an access
        token at its OAuth endpoint, then start its session with that token (agent_oauth.py has the sources). A
        refusal ends the container with an error, as the listener cannot connect."""
        agent_id, url, form = agent_oauth.token_request(files, now=self.azdo.clock())
        status, token = self.azdo.oauth_token(url, form)
        with self._lock:
            process.agent_id = agent_id
            self.oauth_refusals += status != 200
            if process.exited:
                return
            process.online = status == 200
        if registration.publisher is not None:
            self.kube.set_termination_message(
                process.namespace, process.pod_name, registration.publisher, f"{AGENT_ID_MESSAGE}{agent_id}\n"
            )
        try:
            if status != 200:
                raise EmulatorAuthError(str(token))
            self.azdo.agent_session(token["access_token"], agent_id, capabilities=registration.capabilities, once=True)
        except (EmulatorAuthError, ApiError):
            with self._lock:
                process.online = False
            self.kube.finish_pod(process.namespace, process.pod_name, exit_code=1)

    def _crash(self, process: AgentProcess, container: str, crash: CrashPods) -> None:
        """The agent container exits before its agent came online, leaving its termination message."""
        with self._lock:
            if process.exited:
                return
            process.exited = True
        if self.kube.finish_pod(process.namespace, process.pod_name, exit_code=crash.exit_code) and crash.message:
            self.kube.set_termination_message(process.namespace, process.pod_name, container, crash.message)

    def _agent_exited(self, agent_name: str, exit_code: int) -> None:
        with self._lock:
            process = self.processes.get(agent_name)
            if process is None or process.exited:
                return
            process.exited = True
            process.online = False
        self.kube.finish_pod(process.namespace, process.pod_name, exit_code=exit_code)

    def _pod_deleted(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            process = next((p for p in self.processes.values() if p.pod_name == name), None)
            if process is None or process.exited:
                return
            process.exited = True
            was_online = process.online
            process.online = False
        if process.agent_id is not None and was_online:
            # The registration may be gone first (a drain deletes it): then the agent process just ends.
            with contextlib.suppress(ApiError):
                self.azdo.agent_lost(process.agent_id)

    # --- state for the summary -----------------------------------------------------------------

    def all_queued(self) -> bool:
        return sum(len(ids) for ids in self.request_ids.values()) >= self.world.total_jobs

    def unfinished_requests(self) -> int:
        return sum(self.azdo.unfinished_count(pool_id) for pool_id in self.pool_ids.values())

    def leftovers(self) -> dict[str, int]:
        """Agents and Jobs of ours still around (the reconciler should have cleaned them up).

        Agents of ours are the ones the world knows it started or left behind, whatever their names: those its
        kubelet's simulated agents registered, those whose listener a simulated agent of its kubelet or ARM ran,
        and the world file's `ours` leftovers. A placeholder, registered by the reconciler and never run, is not."""
        with self._lock:
            started = {p.agent_id for p in self.processes.values() if p.agent_id is not None}
        ours_offline = ours_online = 0
        for pool, pool_id in self.pool_ids.items():
            seeded = {
                self.azdo.agent_id(pool_id, seeded_agent_name(a))
                for a in self.world.agents
                if a.get("ours") and a["pool"] == pool
            }
            for agent in self.azdo.agent_states(pool_id):
                if agent.listened or agent.agent_id in started | seeded:
                    if agent.status == "online":
                        ours_online += 1
                    else:
                        ours_offline += 1
        if self.arm is not None:
            groups = self.arm.groups(ACI_RESOURCE_GROUP)
            running = [g for g in groups if g["properties"]["instanceView"]["state"] in ("Pending", "Running")]
            return {"offline_agents": ours_offline, "online_agents": ours_online, "active_jobs": len(running)}
        active_jobs = self.kube.unfinished_jobs(NAMESPACE)
        return {"offline_agents": ours_offline, "online_agents": ours_online, "active_jobs": active_jobs}
