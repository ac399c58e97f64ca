"""A small harness for the reliability tests: both emulators with their simulated agents (the
project's `Simulation`), the real CLI run in-process through `reconciler.cli.main` (the same code path
as the console script, without paying the interpreter start-up for each of hundreds of passes) or as
a subprocess (for SIGKILL), and a "rich world" in which one pass calls every route the reconciler has.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from azp_simulation.world import NAMESPACE, PAT, RELEASE, Simulation, load_world
from reconciler import cli, names

REPO = Path(__file__).resolve().parents[2]
LEASE = f"{RELEASE}-reconciler"
OWNER = names.Owner(prefix="azp", release=RELEASE)
POOL = "linux"
BROKEN_IMAGE = "ghcr.io/azp-agents/does-not-exist:1"

# Every Azure DevOps call site of a pass: (method, short route) as the emulator's call log names them.
AZDO_SITES: tuple[tuple[str, str], ...] = (
    ("GET", "pools"),
    ("GET", "pools/{poolId}/jobrequests"),
    ("GET", "pools/{poolId}/agents"),
    ("GET", "pools/{poolId}/agents/{agentId}"),
    ("PATCH", "pools/{poolId}/agents/{agentId}"),
    ("PUT", "pools/{poolId}/agents/{agentId}"),
    ("POST", "pools/{poolId}/agents"),
    ("DELETE", "pools/{poolId}/agents/{agentId}"),
)
# Every Kubernetes call site: (method, route for inject_fault, key in the emulator's call log, the
# client's name for it in messages).
KUBE_SITES: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "jobs(list)", "GET jobs(list)", "list jobs"),
    ("GET", "pods(list)", "GET pods(list)", "list pods"),
    ("POST", "jobs", "POST jobs", "create job"),
    ("DELETE", "jobs", "DELETE jobs", "delete job"),
    ("POST", "events", "POST events", "create event"),
    ("GET", "leases", "GET leases", "get lease"),
    ("POST", "leases", "POST leases", "create lease"),
    ("PUT", "leases", "PUT leases", "update lease"),
    ("GET", "configmaps", "GET configmaps", "get configmap"),
    ("POST", "configmaps", "POST configmaps", "create configmap"),
)


# Qualified resource (as an API server's messages name it) and API group of the create sites' objects.
CREATED_RESOURCES: dict[str, tuple[str, str]] = {
    "jobs": ("jobs.batch", "batch"),
    "events": ("events", ""),
    "leases": ("leases.coordination.k8s.io", "coordination.k8s.io"),
    "configmaps": ("configmaps", ""),
}


def admission_refusal(resource: str, refusal: str, *, namespace: str = NAMESPACE) -> str:
    """The body of the 403 an admission plugin answers a create of `resource` (a plural) with, as the API
    server sends it: admission.NewForbidden (k8s.io/apiserver/pkg/admission/errors.go) names the object by
    its name or generateName, which the Kubernetes emulator puts for `{name}`. `refusal` is "quota": the
    ResourceQuota plugin's "exceeded quota" (k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go),
    or "terminating": the NamespaceLifecycle plugin's refusal with its NamespaceTerminating cause
    (k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go)."""
    qualified, group = CREATED_RESOURCES[resource]
    details: dict[str, Any] = {"name": "{name}", "group": group, "kind": resource}
    if refusal == "quota":
        count = f"count/{qualified}"
        reason = f"exceeded quota: agents, requested: {count}=1, used: {count}=20, limited: {count}=20"
    else:
        reason = f"unable to create new content in namespace {namespace} because it is being terminated"
        cause = {"reason": "NamespaceTerminating", "message": f"namespace {namespace} is being terminated"}
        details["causes"] = [{**cause, "field": "metadata.namespace"}]
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{qualified} "{{name}}" is forbidden: {reason}',
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    }
    return json.dumps(status)


@dataclass
class Result:
    """What one CLI run returned and printed (stdout and stderr together)."""

    code: int
    out: str
    seconds: float = 0.0

    def summaries(self) -> list[dict[str, Any]]:
        """The json pass-summary lines of the run."""
        found = []
        for line in self.out.splitlines():
            if '"pass summary"' in line:
                with contextlib.suppress(ValueError):
                    found.append(yaml.safe_load(line))
        return found


def run_cli(argv: list[str]) -> Result:
    """Run `azp-reconciler ARGV` in this process, capturing its output; logging is restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse errors
                code = int(exc.code or 0)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    return Result(code=code, out=buffer.getvalue(), seconds=time.monotonic() - started)


def base_env() -> dict[str, str]:
    """The environment of a child process: no cluster, no Azure DevOps variables from outside."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AZP_", "ORG_"))}


@dataclass
class Rig:
    """A running simulation plus the reconciler's config, driven in-process."""

    simulation: Simulation
    directory: Path
    pass_results: list[Result] = field(default_factory=list)

    @property
    def azdo(self) -> Any:
        return self.simulation.azdo

    @property
    def kube(self) -> Any:
        return self.simulation.kube

    @property
    def config_path(self) -> Path:
        return self.simulation.config_path

    @property
    def kubeconfig_path(self) -> Path:
        return self.simulation.kubeconfig_path

    def pool_id(self, pool: str = POOL) -> int:
        return self.simulation.pool_ids[pool]

    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        return loaded

    def write_config(self, document: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(dict(document), sort_keys=False))

    def reconcile(self, *args: str) -> Result:
        result = run_cli(
            ["reconcile", "--config", str(self.config_path), "--kubeconfig", str(self.kubeconfig_path), *args]
        )
        self.pass_results.append(result)
        return result

    def command(self, *args: str) -> list[str]:
        """The argv of a subprocess run of the CLI against this rig."""
        return [
            sys.executable,
            "-m",
            "reconciler",
            "reconcile",
            "--config",
            str(self.config_path),
            "--kubeconfig",
            str(self.kubeconfig_path),
            *args,
        ]

    def reconcile_subprocess(self, *args: str, timeout: float = 60) -> Result:
        started = time.monotonic()
        done = subprocess.run(self.command(*args), env=base_env(), capture_output=True, text=True, timeout=timeout)
        return Result(done.returncode, done.stdout + done.stderr, time.monotonic() - started)

    def jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.kube.objects("jobs", NAMESPACE) if _ours(j)]

    def active_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs() if not job_finished(j) and not j["metadata"].get("deletionTimestamp")]

    def agents(self, pool: str = POOL) -> list[dict[str, Any]]:
        return list(self.azdo.agents(self.pool_id(pool)))

    def agent(self, name: str, pool: str = POOL) -> dict[str, Any] | None:
        return next((a for a in self.agents(pool) if a.get("name") == name), None)

    def forget_lease(self) -> None:
        """Remove the Lease, so the next pass lists every pool's agents and creates the Lease again."""
        self.kube.delete("leases", NAMESPACE, LEASE)

    def expire_lease(self) -> None:
        """Make the Lease look abandoned long ago (what a killed run's Lease becomes after
        durationSeconds), keeping what it remembers; the emulator's admin credentials write it."""
        lease = self.kube.get("leases", NAMESPACE, LEASE)
        if lease is None:
            return
        lease["spec"]["renewTime"] = lease["spec"]["acquireTime"] = "2000-01-01T00:00:00.000000Z"
        url = f"{self.simulation.kube_url}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE}"
        response = requests.put(url, json=lease, timeout=5)
        assert response.status_code == 200, response.text

    def wait_for(self, condition: Callable[[], bool], *, timeout: float = 10, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    @contextlib.contextmanager
    def shifted_clocks(self, seconds: float) -> Iterator[None]:
        """Run both emulators' clocks `seconds` behind while setting a world up: objects made meanwhile
        look that old to the reconciler (an agent idle for minutes, a pod pending for minutes)."""
        azdo_clock, kube_clock = self.azdo.clock, self.kube.clock
        self.azdo.clock = lambda: azdo_clock() - seconds
        self.kube.clock = lambda: kube_clock() - seconds
        try:
            yield
        finally:
            self.azdo.clock, self.kube.clock = azdo_clock, kube_clock


def _ours(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(names.LABEL_MANAGED_BY) == names.MANAGED_BY and labels.get(names.LABEL_INSTANCE) == RELEASE


def job_finished(job: Mapping[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def start_rig(world: Mapping[str, Any], directory: Path, *, seed: int = 1, fast_pods: bool = True) -> Rig:
    """Start a simulation of `world` (a world-file mapping) with its files under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "world.yaml"
    path.write_text(yaml.safe_dump(dict(world), sort_keys=False))
    simulation = Simulation(load_world(path), directory=directory / "run", seed=seed)
    if fast_pods:
        # Pods start at the next controller tick: the tests wait for agents, not for a kubelet.
        simulation.kube.start_delay = 0.0
    simulation.start()
    return Rig(simulation=simulation, directory=directory)


RICH_WORLD: dict[str, Any] = {
    "name": "rich",
    "timeout": 60,
    "reconciler": {"loopFor": 0, "interval": 0.2, "idleInterval": 0.2, "sweepInterval": 10},
    "images": {BROKEN_IMAGE: "ErrImagePull"},
    "pools": [
        {
            "name": POOL,
            "maxAgents": 6,
            "provisioningTimeout": 60,
            "idleTimeout": 60,
            "templates": [
                {"name": "default", "capabilities": {"docker": ""}},
                {"name": "java", "capabilities": {"java": "17"}},
                {"name": "gpu", "capabilities": {"cuda": "12"}},
                {"name": "broken", "capabilities": {"broken": ""}, "image": BROKEN_IMAGE},
            ],
        }
    ],
}
LEFTOVER_AGENT = "azp-eeca0-linux-999-zzzzz"
QUEUED = 2


def _template(document: dict[str, Any], name: str) -> dict[str, Any]:
    template: dict[str, Any] = next(t for t in document["pools"][0]["templates"] if t["name"] == name)
    return template


@dataclass
class RichWorld:
    """A world set up so that a single pass calls every Azure DevOps route and Kubernetes call the
    reconciler makes: queued requests (GET jobrequests, create Jobs), an offline leftover agent of ours
    (DELETE agent), a missing placeholder (POST), a stale one (PUT), an agent idle past idleTimeout
    (PATCH, GET agent, delete Job, event, DELETE agent), a Job whose pod never starts (delete Job,
    event), no Lease (get, create, and update on release), and a template learning its standby with no
    history yet (get and create the ConfigMap; its update is covered by tests/sim/test_standby_learned.py)."""

    rig: Rig
    request_ids: list[int]
    idle_agent: str
    idle_job: str
    stuck_job: str

    def expected_job_names(self) -> set[str]:
        return {names.request_job_name(OWNER, pool_name=POOL, request_id=r) for r in self.request_ids}


def build_rich_world(directory: Path, *, azdo_skew: float = 0.0) -> RichWorld:
    """Start the rich world: a setup pass (with clocks 300 s behind) leaves a standby agent idle
    and a standby pod pending for minutes; then the configuration changes under it. `azdo_skew`: seconds
    the organization's clock is ahead of ours (behind when negative) from the start."""
    rig = start_rig(RICH_WORLD, directory)
    if azdo_skew:
        rig.azdo.clock = lambda: time.time() + azdo_skew
    document = rig.config()
    document["azureDevOps"] = {"timeoutSeconds": 0.5, "retries": 1}
    setup = yaml.safe_load(yaml.safe_dump(document))
    _template(setup, "java")["capabilities"] = {"java": "11"}
    _template(setup, "gpu").update(placeholder=False, minIdle=1)
    _template(setup, "broken").update(placeholder=False, minIdle=1)
    rig.write_config(setup)
    with rig.shifted_clocks(300):
        first = rig.reconcile()
        assert first.code == 0, first.out
        idle_job = names.standby_job_name(OWNER, pool_name=POOL, template="gpu", slot=0)
        stuck_job = names.standby_job_name(OWNER, pool_name=POOL, template="broken", slot=0)

        def ready() -> bool:
            online = [a for a in rig.agents() if a["name"].startswith(idle_job) and a.get("status") == "online"]
            pending = [p for p in rig.kube.objects("pods", NAMESPACE) if p["metadata"]["name"].startswith(stuck_job)]
            return bool(online) and bool(pending)

        rig.wait_for(ready, what="the standby agent online and the broken pod pending")
    idle_agent = next(a["name"] for a in rig.agents() if a["name"].startswith(idle_job))
    _template(document, "broken")["placeholder"] = False
    # The queued requests' hour is recorded: the pass reads the standby history (none yet) and creates it.
    _template(document, "default")["standbyLearn"] = {"enabled": True}
    rig.write_config(document)
    rig.azdo.add_agent(rig.pool_id(), LEFTOVER_AGENT, status="offline")
    request_ids = [rig.azdo.queue_request(rig.pool_id(), demands=("docker",), duration=0.3) for _ in range(QUEUED)]
    rig.forget_lease()
    rig.azdo.reset_calls()
    rig.kube.reset_calls()
    return RichWorld(rig=rig, request_ids=request_ids, idle_agent=idle_agent, idle_job=idle_job, stuck_job=stuck_job)


def rich_world_converged(world: RichWorld) -> list[str]:
    """What still differs from the state one clean pass over the rich world must reach (empty: converged)."""
    rig = world.rig
    problems = []
    jobs = {j["metadata"]["name"]: j for j in rig.jobs()}
    for name in sorted(world.expected_job_names()):
        if name not in jobs:
            problems.append(f"no Job {name} for a queued request")
    generations = sorted(n for n in jobs if "-g" in n.rsplit("-", 1)[-1] or n.rsplit("-", 1)[-1].startswith("g"))
    if generations:
        problems.append(f"second-generation Jobs (a request served twice): {generations}")
    request_labels = [j["metadata"]["labels"].get(names.LABEL_REQUEST_ID) for j in jobs.values()]
    duplicates = {r for r in request_labels if r and request_labels.count(r) > 1}
    if duplicates:
        problems.append(f"several Jobs for requests {sorted(duplicates)}")
    agents = {a["name"]: a for a in rig.agents()}
    if LEFTOVER_AGENT in agents:
        problems.append("the offline leftover agent was not pruned")
    if world.idle_agent in agents:
        problems.append(
            f"the idle agent {world.idle_agent} was not drained (enabled={agents[world.idle_agent]['enabled']})"
        )
    if world.idle_job in jobs and not jobs[world.idle_job]["metadata"].get("deletionTimestamp"):
        problems.append(f"the idle agent's Job {world.idle_job} was not deleted")
    if world.stuck_job in jobs and not jobs[world.stuck_job]["metadata"].get("deletionTimestamp"):
        problems.append(f"the stuck Job {world.stuck_job} was not deleted")
    for template, capability in (("default", "docker"), ("java", "java"), ("gpu", "cuda")):
        placeholder = agents.get(names.placeholder_name(OWNER, pool_name=POOL, template=template))
        if placeholder is None:
            problems.append(f"placeholder of {template} missing")
            continue
        capabilities = placeholder.get("systemCapabilities") or {}
        if capability not in capabilities:
            problems.append(f"placeholder of {template} lacks {capability}")
        if placeholder.get("enabled"):
            problems.append(f"placeholder of {template} is enabled")
    java = agents.get(names.placeholder_name(OWNER, pool_name=POOL, template="java"))
    if java is not None and (java.get("systemCapabilities") or {}).get("java") != "17":
        problems.append("the java placeholder still advertises the old capabilities")
    return problems


def converge(world: RichWorld, *, passes: int = 3) -> tuple[Result, list[str]]:
    """Run clean passes until the rich world has converged (or `passes` ran); the last result and what
    still differs. A Lease left by a run that could not release it is removed (it would expire)."""
    result = Result(code=-1, out="")
    problems: list[str] = ["no pass ran"]
    for _ in range(passes):
        result = world.rig.reconcile()
        if "another run is reconciling" in result.out:
            world.rig.forget_lease()
            continue
        problems = rich_world_converged(world)
        if result.code == 0 and not problems:
            break
        time.sleep(0.1)
    return result, problems


__all__ = [
    "AZDO_SITES",
    "KUBE_SITES",
    "NAMESPACE",
    "PAT",
    "RELEASE",
    "Result",
    "RichWorld",
    "Rig",
    "admission_refusal",
    "build_rich_world",
    "converge",
    "rich_world_converged",
    "run_cli",
    "start_rig",
]
