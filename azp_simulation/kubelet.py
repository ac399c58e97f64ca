"""A simulated kubelet for a real API server, and the simulated agents its pods run.

`Kubelet` is an ordinary API client, as kwok's fake nodes are (sigs.k8s.io/kwok): it registers its
Nodes (by default a Linux node and a Windows node, both amd64), binds the pods no scheduler places to
the first node whose labels match the pod's nodeSelector and required node affinity and whose
NoSchedule taints the pod tolerates (the `binding` subresource, as kube-scheduler's NodeAffinity and
TaintToleration filters decide; a pod no node fits stays Pending, unbound), and
moves each pod's status through the `status` subresource the way the kubelet's status manager does
(pkg/kubelet/status, pkg/kubelet/kubelet_pods.go): init containers one by one (each runs, then
terminates with its exit code and termination message), then the main containers Running with the
Initialized/ContainersReady/Ready conditions, then Succeeded or Failed with terminated states. A pod
being deleted (deletionTimestamp set) has its containers stopped and is then deleted with grace 0, as
the kubelet confirms a graceful deletion. What runs inside the containers is a `Program`.

`SimulatedAgents` is the program of agent images: the container that has AZP_TOKEN_FILE registers
an agent in the Azure DevOps emulator (what `config.sh` does; an init container then publishes the
agent id in its termination message, as `start.sh register` does), the container that has AZP_URL
brings it online for one job (`--once`), and when the job ends the container exits and the pod
finishes. Its capabilities are the container's environment (the agent reports its environment
variables as capabilities, minus VSO_AGENT_IGNORE), plus Agent.Name, Agent.Version and Agent.OS.
This mirrors the agent side of azp_simulation/world.py (which drives the Kubernetes emulator's pods)
in its simplest form: no per-template extra capabilities, no stuck pods by count.

The Windows node carries the labels the kubelet sets on Windows (kubernetes.io/os=windows) and the
taint `os=windows:NoSchedule` that Kubernetes' "Guide for scheduling Windows containers" suggests
(kubernetes.io/docs/concepts/windows/user-guide/#ensuring-os-specific-workloads-land-on-the-appropriate-container-host),
so Linux pods without the toleration never land there. An agent reports Agent.OS of its node's OS
(Windows_NT on Windows, as the agent's PlatformUtil says).

An agent container given AZP_AGENT_FILES (the reconciler registered its agent) runs no config.sh: it reads
the agent's three files from its Secret volume and goes online through the agent's OAuth flow
(`AzureDevOpsEmulator.oauth_token`, then `agent_session`), as world.py's agents do. A pod whose Secret volume
does not exist yet stays Pending until it does, as the kubelet retries the mount.

Not emulated: images, probes, restarts (restartPolicy is treated as Never), resource accounting,
the scheduler's Unschedulable condition and events, container logs, volumes other than the Secret and
ConfigMap files `mounted_files` lists.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests

from azp_simulation import agent_oauth
from azp_simulation.azdo_emulator import AzureDevOpsEmulator, EmulatorAuthError
from azp_simulation.azdo_support import ApiError
from azp_simulation.kube_emulator import _expand, _field_value
from azp_simulation.kube_emulator.scheduling import _node_matches
from azp_simulation.kube_support import format_time
from reconciler.names import AGENT_ID_MESSAGE

AGENT_VERSION = "4.269.0"


class ServerError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status


@dataclass(frozen=True)
class ApiServer:
    """Where the API server is and the client certificate to reach it with."""

    url: str
    ca: Path
    cert: Path
    key: Path

    def session(self) -> requests.Session:
        session = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE (or a proxy setting) of the environment overrides `verify`.
        session.trust_env = False
        session.verify = str(self.ca)
        session.cert = (str(self.cert), str(self.key))
        return session


class Program(Protocol):
    """What runs in a pod's containers."""

    def init(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int, str] | None:
        """An init container runs to its end: (exit code, termination message); None: it never ends."""
        ...

    def start(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> None:
        """A main container started; it ends when someone calls `kubelet.finish_pod`."""
        ...

    def stopped(self, kubelet: Kubelet, pod: Mapping[str, Any]) -> None:
        """The pod is being deleted: its containers are killed."""
        ...


class Idle:
    """Init containers succeed at once; main containers run until `finish_pod`."""

    def init(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int, str]:
        return 0, ""

    def start(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> None:
        return None

    def stopped(self, kubelet: Kubelet, pod: Mapping[str, Any]) -> None:
        return None


def _capabilities(env: Mapping[str, str], name: str, os_name: str) -> dict[str, str]:
    """What the agent in a container with this environment on a node of this OS advertises (the module
    docstring)."""
    ignored = {"AZP_TOKEN", "AZP_TOKEN_FILE", *env.get("VSO_AGENT_IGNORE", "").split(",")}
    capabilities = {k: v for k, v in env.items() if k not in ignored}
    return capabilities | {"Agent.Name": name, "Agent.Version": AGENT_VERSION, "Agent.OS": os_name}


def _container_status(container: Mapping[str, Any], state: dict[str, Any], *, ready: bool) -> dict[str, Any]:
    image = str(container.get("image", ""))
    return {
        "name": container["name"],
        "image": image,
        "imageID": f"{image}@sha256:{'0' * 64}",
        "containerID": f"containerd://{abs(hash((container['name'], image))):016x}",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }


def _terminated(exit_code: int, started: str, message: str = "") -> dict[str, Any]:
    reason = "Completed" if exit_code == 0 else "Error"
    state = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": format_time(time.time())}
    return {"terminated": state | ({"message": message[:4096]} if message else {})}


@dataclass(frozen=True)
class FakeNode:
    """A Node the kubelet registers and runs pods on."""

    name: str
    os: str = "linux"
    arch: str = "amd64"
    taints: tuple[Mapping[str, str], ...] = ()

    def manifest(self) -> dict[str, Any]:
        labels = {"kubernetes.io/os": self.os, "kubernetes.io/arch": self.arch, "kubernetes.io/hostname": self.name}
        spec = {"taints": [dict(t) for t in self.taints]} if self.taints else {}
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels}, "spec": spec}


DEFAULT_NODES = (
    FakeNode("realkube-node-1"),
    FakeNode("realkube-windows-1", os="windows", taints=({"key": "os", "value": "windows", "effect": "NoSchedule"},)),
)


def _conditions(**status: bool) -> list[dict[str, Any]]:
    now = format_time(time.time())
    return [
        {"type": kind, "status": "True" if value else "False", "lastTransitionTime": now}
        for kind, value in status.items()
    ]


@dataclass
class Kubelet:
    """Fake nodes: binds every unscheduled pod to a node that fits it and runs it (see the module docstring)."""

    server: ApiServer
    program: Program = field(default_factory=Idle)
    nodes: tuple[FakeNode, ...] = DEFAULT_NODES
    interval: float = 0.2
    _session: requests.Session = field(init=False)
    _started: set[str] = field(default_factory=set, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._session = self.server.session()

    def _api(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        # Agents' exits arrive on the Azure DevOps emulator's thread: one request at a time.
        with self._lock:
            response = self._session.request(
                method, self.server.url + path, json=body, headers={"Content-Type": content_type}, timeout=30
            )
        if response.status_code >= 400:
            raise ServerError(response.status_code, response.text)
        return response.json()

    def start(self) -> None:
        """Register the nodes and start syncing pods."""
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110"}
        status = {"capacity": capacity, "allocatable": capacity, "conditions": _conditions(Ready=True)}
        for node in self.nodes:
            with contextlib.suppress(ServerError):
                self._api("POST", "/api/v1/nodes", node.manifest())
            self._api("PATCH", f"/api/v1/nodes/{node.name}/status", {"status": status}, "application/merge-patch+json")
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ServerError, requests.RequestException):
                pods = self._api("GET", "/api/v1/pods")["items"]
                for pod in pods:
                    # One pod's trouble (deleted meanwhile, a conflict) must not stall the others.
                    with contextlib.suppress(ServerError):
                        self._sync(pod)
            self._stop.wait(self.interval)

    def _sync(self, pod: dict[str, Any]) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        where = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}"
        if not spec.get("nodeName"):
            fits = next((n for n in self.nodes if _node_matches(spec, n.manifest())), None)
            if fits is not None:
                binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": metadata["name"]}}
                self._api("POST", f"{where}/binding", binding | {"target": {"kind": "Node", "name": fits.name}})
        elif spec["nodeName"] not in {n.name for n in self.nodes}:
            return
        elif metadata.get("deletionTimestamp"):
            self.program.stopped(self, pod)
            options = {"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}}
            self._api("DELETE", where, {"kind": "DeleteOptions", "apiVersion": "v1"} | options)
        elif metadata["uid"] not in self._started and pod.get("status", {}).get("phase", "Pending") == "Pending":
            if self._missing_secret(pod):
                return  # the kubelet retries the mount until the Secret exists: the pod stays Pending
            self._started.add(metadata["uid"])
            self._run_pod(pod, where)

    def _missing_secret(self, pod: Mapping[str, Any]) -> bool:
        """A non-optional Secret volume whose Secret does not exist (yet): the real kubelet does not start the
        containers (MountVolume.SetUp failed ... not found) and retries (pkg/volume/secret)."""
        namespace = pod["metadata"]["namespace"]
        return any(
            self._values(namespace, "secrets", str(volume["secret"].get("secretName"))) is None
            for volume in pod["spec"].get("volumes") or []
            if "secret" in volume and not volume["secret"].get("optional")
        )

    def _patch_status(self, where: str, status: dict[str, Any]) -> None:
        self._api("PATCH", f"{where}/status", {"status": status}, "application/merge-patch+json")

    def _run_pod(self, pod: dict[str, Any], where: str) -> None:
        spec, started = pod["spec"], format_time(time.time())
        base = {"hostIP": "10.0.0.10", "podIP": "10.244.0.10", "startTime": started}
        waiting = {"waiting": {"reason": "PodInitializing"}}
        inits: list[dict[str, Any]] = []
        for container in spec.get("initContainers") or []:
            running = _container_status(container, {"running": {"startedAt": started}}, ready=False)
            self._patch_status(where, base | {"phase": "Pending", "initContainerStatuses": [*inits, running]})
            ended = self.program.init(self, pod, container)
            if ended is None:
                return
            code, message = ended
            inits.append(_container_status(container, _terminated(code, started, message), ready=False))
            if code != 0:
                mains = [_container_status(c, waiting, ready=False) for c in spec["containers"]]
                self._patch_status(
                    where,
                    base
                    | {"phase": "Failed", "initContainerStatuses": inits}
                    | {"containerStatuses": mains, "conditions": _conditions(Initialized=False, Ready=False)},
                )
                return
        mains = [_container_status(c, {"running": {"startedAt": started}}, ready=True) for c in spec["containers"]]
        conditions = _conditions(PodScheduled=True, Initialized=True, ContainersReady=True, Ready=True)
        self._patch_status(
            where,
            base
            | {"phase": "Running", "initContainerStatuses": inits, "containerStatuses": mains}
            | {"conditions": conditions},
        )
        for container in spec["containers"]:
            self.program.start(self, pod, container)

    def agent_os(self, pod: Mapping[str, Any]) -> str:
        """Agent.OS of an agent on the pod's node: the agent's PlatformUtil names Windows `Windows_NT`."""
        node = next((n for n in self.nodes if n.name == pod["spec"].get("nodeName")), None)
        return "Windows_NT" if node is not None and node.os == "windows" else "Linux"

    def finish_pod(self, namespace: str, name: str, *, exit_code: int = 0) -> bool:
        """The pod's containers exit with `exit_code`: Succeeded or Failed. False when it is gone."""
        where = f"/api/v1/namespaces/{namespace}/pods/{name}"
        try:
            pod = self._api("GET", where)
        except ServerError:
            return False
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return False
        started = status.get("startTime") or format_time(time.time())
        mains = [_container_status(c, _terminated(exit_code, started), ready=False) for c in pod["spec"]["containers"]]
        phase = "Succeeded" if exit_code == 0 else "Failed"
        conditions = _conditions(PodScheduled=True, Initialized=True, ContainersReady=False, Ready=False)
        self._patch_status(where, {"phase": phase, "containerStatuses": mains, "conditions": conditions})
        return True

    # What a container sees

    def _values(self, namespace: str, kind: str, name: str) -> dict[str, str] | None:
        try:
            obj = self._api("GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except ServerError:
            return None
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _value_from(self, pod: Mapping[str, Any], source: Mapping[str, Any]) -> str | None:
        namespace = pod["metadata"]["namespace"]
        for key, kind in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if key in source:
                values = self._values(namespace, kind, str(source[key].get("name"))) or {}
                return values.get(str(source[key].get("key")))
        if "fieldRef" in source:
            return _field_value(pod, str(source["fieldRef"].get("fieldPath")))
        return None

    def resolve_env(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        """The environment a container sees: envFrom, values with $(VAR) expansion, valueFrom."""
        namespace, env = pod["metadata"]["namespace"], {}
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            kind = "secrets" if "secretRef" in source else "configmaps"
            for key, value in (self._values(namespace, kind, str(ref.get("name"))) or {}).items():
                env[str(source.get("prefix", "")) + key] = value
        for entry in container.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = _expand(str(entry.get("value") or ""), env)
            elif (resolved := self._value_from(pod, entry.get("valueFrom") or {})) is not None:
                env[entry["name"]] = resolved
        return env

    def mounted_files(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        """Path -> content of every file that Secret and ConfigMap volumes (and those sources of projected
        volumes) put in the container, at their items' paths or one file per key, a subPath mount at the
        mount path itself."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        files: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
            root = str(mount["mountPath"]).rstrip("/")
            for kind, source in ((k, s[k]) for s in sources for k in ("secret", "configMap") if k in s):
                name = str(source.get("secretName", source.get("name")))
                values = self._values(pod["metadata"]["namespace"], f"{kind.lower()}s", name) or {}
                paths = {i["key"]: i["path"] for i in source.get("items") or []} or {k: k for k in values}
                for key, relative in paths.items():
                    if key in values and mount.get("subPath") in (None, relative):
                        files[root if mount.get("subPath") else f"{root}/{relative}"] = values[key]
        return files

    def read_file(self, pod: Mapping[str, Any], container: Mapping[str, Any], path: str) -> str | None:
        """A file a Secret or ConfigMap volume puts at `path`."""
        return self.mounted_files(pod, container).get(path)

    def token_for(self, pod: Mapping[str, Any], expiration_seconds: int = 3600) -> str:
        """A token of the pod's ServiceAccount bound to the pod: what the kubelet asks the TokenRequest API
        for to fill a projected serviceAccountToken volume."""
        metadata = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        bound = {"kind": "Pod", "apiVersion": "v1", "name": metadata["name"], "uid": metadata["uid"]}
        request = {"spec": {"expirationSeconds": expiration_seconds, "boundObjectRef": bound}}
        path = f"/api/v1/namespaces/{metadata['namespace']}/serviceaccounts/{account}/token"
        return str(self._api("POST", path, request)["status"]["token"])


@dataclass
class SimulatedAgents:
    """The program of agent pods: register, take one job, exit (see the module docstring)."""

    azdo: AzureDevOpsEmulator
    kubelet: Kubelet | None = None
    # The next this many agents hang before registering (a stuck pod: the init container never ends).
    stall_next: int = 0
    _pods: dict[str, tuple[str, str, int]] = field(default_factory=dict, init=False)
    _saved: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.azdo.on_agent_exit = self._exited

    def _register(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> int | None:
        env = kubelet.resolve_env(pod, container)
        token = kubelet.read_file(pod, container, env["AZP_TOKEN_FILE"]) or ""
        pool = next((p for p in self.azdo.pools() if p["name"] == env.get("AZP_POOL")), None)
        if pool is None:
            return None
        name = env.get("AZP_AGENT_NAME", pod["metadata"]["name"])
        capabilities = _capabilities(env, name, kubelet.agent_os(pod))
        try:
            agent = self.azdo.register_agent(
                pool_id=int(pool["id"]), name=name, capabilities=capabilities, version=AGENT_VERSION, token=token
            )
        except EmulatorAuthError:
            return None
        return int(agent["id"])

    def _files(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str] | None:
        """The agent files in the container's AZP_AGENT_FILES directory (None: not given, or one missing)."""
        directory = kubelet.resolve_env(pod, container).get("AZP_AGENT_FILES")
        if not directory:
            return None
        files = {name: kubelet.read_file(pod, container, f"{directory}/{name}") for name in agent_oauth.AGENT_FILES}
        return {k: v for k, v in files.items() if v is not None} if all(files.values()) else None

    def _online_from_files(self, files: Mapping[str, str], capabilities: Mapping[str, str]) -> int | None:
        """What the listener does with the files: its key's assertion for an access token, then its session
        with the capabilities it finds in its container."""
        agent_id, url, form = agent_oauth.token_request(files, now=self.azdo.clock())
        status, token = self.azdo.oauth_token(url, form)
        if status != 200:
            return None
        try:
            self.azdo.agent_session(token["access_token"], agent_id, capabilities=capabilities, once=True)
        except (EmulatorAuthError, ApiError):
            return None
        return agent_id

    def init(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int, str] | None:
        if any(e.get("name") == "AZP_AGENT_FILES" for e in container.get("env") or []):
            files = self._files(kubelet, pod, container)
            if files is None:
                return 2, ""  # start.sh: AZP_AGENT_FILES lacks a file
            with self._lock:  # start.sh register saves them to the state the run container restores
                self._saved[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = files
            return 0, f"{AGENT_ID_MESSAGE}{json.loads(files['.agent'])['agentId']}\n"
        if not any(e.get("name") == "AZP_TOKEN_FILE" for e in container.get("env") or []):
            return 0, ""
        with self._lock:
            if self.stall_next > 0:
                self.stall_next -= 1
                return None
        agent_id = self._register(kubelet, pod, container)
        return (1, "") if agent_id is None else (0, f"{AGENT_ID_MESSAGE}{agent_id}\n")

    def start(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> None:
        env = kubelet.resolve_env(pod, container)
        where = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        files = self._files(kubelet, pod, container)
        with self._lock:
            saved = self._saved.pop(where, None)
        files = files or saved
        if files is not None:
            self._start_from_files(kubelet, where, files, _capabilities(env, "", kubelet.agent_os(pod)))
            return
        if "AZP_URL" not in env:
            return
        pool = next((p for p in self.azdo.pools() if p["name"] == env.get("AZP_POOL")), None)
        name = env.get("AZP_AGENT_NAME", pod["metadata"]["name"])
        agent_id = None if pool is None else self.azdo.agent_id(int(pool["id"]), name)
        if agent_id is None and "AZP_TOKEN_FILE" in env:
            agent_id = self._register(kubelet, pod, container)
        if agent_id is None:
            kubelet.finish_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], exit_code=1)
            return
        with self._lock:
            self._pods[name] = (pod["metadata"]["namespace"], pod["metadata"]["name"], agent_id)
        self.kubelet = kubelet
        self.azdo.agent_online(agent_id, once=True)

    def _start_from_files(
        self, kubelet: Kubelet, where: tuple[str, str], files: Mapping[str, str], advertised: Mapping[str, str]
    ) -> None:
        """`advertised`: what the container advertises; Agent.Name comes from its .agent file."""
        name = str(json.loads(files[".agent"])["agentName"])
        with self._lock:
            self._pods[name] = (*where, int(json.loads(files[".agent"])["agentId"]))
        self.kubelet = kubelet
        if self._online_from_files(files, {**advertised, "Agent.Name": name}) is None:
            with self._lock:
                self._pods.pop(name, None)
            kubelet.finish_pod(*where, exit_code=1)

    def stopped(self, kubelet: Kubelet, pod: Mapping[str, Any]) -> None:
        with self._lock:
            found = [
                n
                for n, (ns, p, _) in self._pods.items()
                if (ns, p) == (pod["metadata"]["namespace"], pod["metadata"]["name"])
            ]
            entries = [self._pods.pop(n) for n in found]
        for _, _, agent_id in entries:
            # The registration may be gone first (a drain deletes it): then the process just ends.
            with contextlib.suppress(ApiError, KeyError):
                self.azdo.agent_lost(agent_id)

    def _exited(self, name: str, exit_code: int) -> None:
        with self._lock:
            entry = self._pods.pop(name, None)
        if entry is not None and self.kubelet is not None:
            self.kubelet.finish_pod(entry[0], entry[1], exit_code=exit_code)
