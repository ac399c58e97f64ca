"""What a pipeline step that builds a container image finds in its agent's pod.

A job may carry steps (world files: `arrivals[].steps`); the simulated agent runs them in the container that
runs the agent, with that container's environment, and a step that cannot reach a working BuildKit daemon
fails the job, as the real client's non-zero exit fails the real step. Steps:

    buildctl-build       `buildctl build ...`: needs `buildctl` in the agent's image
    docker-buildx-build  `docker buildx create --driver remote "$BUILDKIT_HOST" --use && docker buildx build ...`:
                         needs `docker` and its buildx plugin in the agent's image

Sources, modelled here, never the chart or the reconciler:
- buildctl (moby/buildkit cmd/buildctl/main.go): its `--addr` defaults to $BUILDKIT_HOST, else
  util/appdefaults.Address, unix:///run/buildkit/buildkitd.sock. buildx's remote driver
  (docs.docker.com/build/builders/drivers/remote) connects to the endpoint it was created with; an empty
  endpoint is refused by `docker buildx create`.
- buildkitd (cmd/buildkitd/main.go): listens on every `--addr` (repeatable); without one on
  unix:///run/buildkit/buildkitd.sock, or unix:///run/user/<uid>/buildkit/buildkitd.sock when rootless.
- Kubernetes pods: the containers of a pod share one network namespace and reach each other on localhost
  (kubernetes.io/docs/concepts/workloads/pods, "Pod networking"); a unix socket is a file, which another
  container sees only through a volume both mount. A native sidecar (an init container with
  restartPolicy Always) runs beside the main containers (KEP-753).
- The rootless image (moby/buildkit Dockerfile, stage `rootless`; docs/rootless.md; examples/kubernetes/
  *.rootless.yaml): `rootlesskit buildkitd` as USER 1000, whose /etc/subuid entry (user:100000:65536) is the
  only one, so another uid cannot map its sub-ids; newuidmap/newgidmap are setuid, so no_new_privs
  (allowPrivilegeEscalation: false) or a bounding set without CAP_SETUID/CAP_SETGID (capabilities.drop)
  stops them (prctl(2) PR_SET_NO_NEW_PRIVS, capabilities(7)). It needs seccomp `Unconfined` (unshare,
  mount) and AppArmor `Unconfined`, and, as Kubernetes has no systempaths=unconfined, buildkitd's
  --oci-worker-no-process-sandbox (else each RUN fails mounting /proc; procMount Unmasked with hostUsers
  false is the alternative). `privileged` lifts all of these. The root image runs buildkitd as root and
  needs `privileged` (examples/kubernetes/*.privileged.yaml).
- Profiles a container gets when it sets none: the pod's; else seccomp Unconfined (the kubelet's
  seccompDefault is false unless configured) and the runtime's default AppArmor profile (the nodes are
  assumed to use AppArmor, as Ubuntu and Container-Optimized OS do).

Not emulated: daemons outside the pod (a Service, another host: such an address is unreachable here), the
docker-container:// and kube-pod:// connection helpers, TLS, the build itself, registries and their
credentials, and node prerequisites of rootless mode (user namespaces enabled).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azp_simulation.agent_images import ImageEntry

STEPS: Mapping[str, tuple[str, ...]] = {
    "buildctl-build": ("buildctl",),
    "docker-buildx-build": ("docker", "docker-buildx"),
}
DEFAULT_ADDRESS = "unix:///run/buildkit/buildkitd.sock"
ROOTLESS_UID = 1000
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "[::]", "")
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"

Lookup = Callable[[str], ImageEntry | None]


@dataclass(frozen=True)
class Daemon:
    """A buildkitd in the pod: where it listens, and why it cannot build ("" when it can)."""

    container: Mapping[str, Any]
    addresses: tuple[str, ...]
    failure: str


def _flag_values(args: list[str], flag: str) -> list[str]:
    values = [args[i + 1] for i, word in enumerate(args[:-1]) if word == flag]
    return values + [word.split("=", 1)[1] for word in args if word.startswith(f"{flag}=")]


def _context(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The container's security context with the pod's fields it does not set itself, and the AppArmor
    profile of the annotation Kubernetes before 1.30 used (`unconfined`)."""
    pod_context = (pod.get("spec") or {}).get("securityContext") or {}
    inherited = {k: pod_context[k] for k in ("runAsUser", "seccompProfile", "appArmorProfile") if k in pod_context}
    annotation = ((pod.get("metadata") or {}).get("annotations") or {}).get(f"{APPARMOR_ANNOTATION}{container['name']}")
    if annotation == "unconfined":
        inherited["appArmorProfile"] = {"type": "Unconfined"}
    return inherited | (container.get("securityContext") or {})


def _rootless_failure(pod: Mapping[str, Any], container: Mapping[str, Any], args: list[str]) -> str:
    context = _context(pod, container)
    if context.get("privileged"):
        return ""
    uid = context.get("runAsUser", ROOTLESS_UID)
    dropped = {str(c).upper().removeprefix("CAP_") for c in (context.get("capabilities") or {}).get("drop") or []}
    proc_unmasked = context.get("procMount") == "Unmasked" and (pod.get("spec") or {}).get("hostUsers") is False
    checks = (
        (uid != ROOTLESS_UID, f"newuidmap: uid {uid} has no /etc/subuid entry (the image's user is 1000)"),
        (
            context.get("allowPrivilegeEscalation") is False or bool(dropped & {"ALL", "SETUID", "SETGID"}),
            "newuidmap: write to uid_map failed: Operation not permitted (setuid needs privilege escalation)",
        ),
        (
            (context.get("seccompProfile") or {}).get("type", "Unconfined") != "Unconfined",
            "rootlesskit: unshare: operation not permitted (seccomp is not Unconfined)",
        ),
        (
            (context.get("appArmorProfile") or {}).get("type", "RuntimeDefault") != "Unconfined",
            "rootlesskit: failed to share mount point: /: permission denied (AppArmor is not Unconfined)",
        ),
        (
            "--oci-worker-no-process-sandbox" not in args and not proc_unmasked,
            "mount proc:/proc: operation not permitted (no --oci-worker-no-process-sandbox)",
        ),
    )
    return next((message for failed, message in checks if failed), "")


def daemons(pod: Mapping[str, Any], lookup: Lookup) -> list[Daemon]:
    """Every container of the pod that runs buildkitd: main containers and native sidecars."""
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    found = []
    for container in [*sidecars, *(spec.get("containers") or [])]:
        entry = lookup(str(container.get("image", "")))
        command = [str(word) for word in container.get("command") or []]
        if entry is None or not entry.daemon or (command and not any("buildkitd" in w for w in command)):
            continue
        args = [*command, *(str(a) for a in container.get("args") or [])]
        context = _context(pod, container)
        if entry.daemon == "rootless-buildkitd":
            default = f"unix:///run/user/{context.get('runAsUser', ROOTLESS_UID)}/buildkit/buildkitd.sock"
            failure = _rootless_failure(pod, container, args)
        else:
            default = DEFAULT_ADDRESS
            privileged = context.get("privileged")
            failure = "" if privileged else "buildkitd: mount: operation not permitted (needs privileged)"
        found.append(Daemon(container, tuple(_flag_values(args, "--addr") or [default]), failure))
    return found


def _tcp_target(address: str) -> tuple[str, str]:
    host, _, port = address.removeprefix("tcp://").rstrip("/").rpartition(":")
    return host, port


def _shares_socket(client: Mapping[str, Any], daemon: Mapping[str, Any], path: str) -> bool:
    """Both containers see the socket file: a volume mounted by each over the same path."""
    client_mounts = {(m["name"], str(m["mountPath"]).rstrip("/")) for m in client.get("volumeMounts") or []}
    for mount in daemon.get("volumeMounts") or []:
        root = str(mount["mountPath"]).rstrip("/")
        if path.startswith(f"{root}/") and (mount["name"], root) in client_mounts:
            return True
    return False


def _reaches(client: Mapping[str, Any], daemon: Daemon, address: str) -> bool:
    """The client in `client` connects to `address` and finds `daemon` there: over the pod's loopback (a
    daemon listening on loopback or on every address), or through a socket file both containers see."""
    for listening in daemon.addresses:
        if address.startswith("tcp://") and listening.startswith("tcp://"):
            host, port = _tcp_target(address)
            listen_host, listen_port = _tcp_target(listening)
            if port == listen_port and host in LOOPBACK and listen_host in (*LOOPBACK, *ANY_ADDRESS):
                return True
        elif address.startswith("unix://") and address == listening:
            path = address.removeprefix("unix://")
            if daemon.container is client or _shares_socket(client, daemon.container, path):
                return True
    return False


def run_step(
    step: str, *, pod: Mapping[str, Any], runner: Mapping[str, Any], env: Mapping[str, str], lookup: Lookup
) -> str:
    """Run one build step in the agent container `runner` with environment `env`: "" when it builds, else
    what the client prints before it exits non-zero."""
    entry = lookup(str(runner.get("image", "")))
    missing = [p for p in STEPS[step] if p not in (entry.programs if entry else ())]
    if missing:
        return f"{missing[0]}: command not found"
    address = env.get("BUILDKIT_HOST", "" if step == "docker-buildx-build" else DEFAULT_ADDRESS)
    if not address:
        return "ERROR: endpoint is required for remote driver (BUILDKIT_HOST is empty)"
    for daemon in daemons(pod, lookup):
        if _reaches(runner, daemon, address):
            return f"{step}: {daemon.failure}" if daemon.failure else ""
    return f"{step}: failed to connect to {address}: connection refused (no BuildKit daemon listens there)"
