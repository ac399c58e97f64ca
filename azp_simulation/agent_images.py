"""The image catalogue of the simulated world, and what a real agent in a pod would do and advertise.

A world file may list images under `image_catalogue` (image or glob pattern -> entry); the project's
own agent images are built in (`BUILT_IN`). An entry says what a container of that image holds and how
its entrypoint runs the agent:

    os                  Agent.OS (Linux, Windows_NT, Darwin)
    architectures       the node architectures (kubernetes.io/arch) the image is published for; on a node of
                        another architecture its entrypoint fails with `exec format error` (exit 1)
    env                 the image's ENV lines
    tools               what the agent's NixCapabilitiesProvider finds on PATH (name -> path)
    home                the agent's directory (Agent.HomeDirectory)
    script              the entrypoint script; a container `command` that does not run it bypasses it
    modes               first container argument -> what the script then does: register, run, or both
    default_args        the image's CMD
    token_file_env / token_env   where the script reads the PAT from
    agent_files_env     names the directory of an agent's .agent, .credentials and .credentials_rsaparams made
                        for it (start.sh AZP_AGENT_FILES): the script then runs the agent from them, no config.sh
    hidden_env          variables the script removes before the agent runs (env -u, VSO_AGENT_IGNORE)
    refuses_tokens      a run-only start exits 2 when a token variable or the token file is visible
    programs            other programs on PATH a pipeline step can run (buildctl, docker, docker-buildx)
    daemon              what the image's entrypoint serves instead of an agent: `buildkitd` (root) or
                        `rootless-buildkitd` (container_builds.py models both)

Sources, modelled here, never the reconciler's configuration or code:
- microsoft/azure-pipelines-agent `src/Agent.Listener/Capabilities/EnvironmentCapabilitiesProvider.cs`:
  every environment variable of the agent process is a capability, except the well-known names below,
  those in `VSO_AGENT_IGNORE` (comma list) and values of 1024 characters or more.
- `NixCapabilitiesProvider.cs`: tools found on PATH (ant, curl, git, java, JDK=javac, make, maven=mvn,
  node.js=node, npm, python, python3, sh, ...); `AgentCapabilitiesProvider.cs` (Order 99, overrides the
  others): Agent.Name, Agent.Version, Agent.OS, Agent.OSArchitecture, Agent.ComputerName (the machine
  name: a pod's hostname is its name, or spec.hostname), Agent.HomeDirectory.
- The listener sends its capabilities when its session starts (`MessageListener.CreateSessionAsync`),
  so the container that *runs* the agent decides what is advertised, not the one that registered it.
- agent-images/linux/Dockerfile and start.sh, agent-images/toolchains/*/Dockerfile,
  agent-images/windows/Dockerfile and start.ps1 for the built-in entries.
- Agent.OSArchitecture is the machine's, not the image's or the configuration's: the agent reports
  `RuntimeInformation.OSArchitecture` of the host as X86, X64, ARM or ARM64 (src/Agent.Sdk/Util/VarUtil.cs,
  OSArchitecture), so it follows the node the pod runs on (its kubernetes.io/arch label, Go's GOARCH:
  https://kubernetes.io/docs/reference/labels-annotations-taints/#kubernetes-io-arch).
- A binary for another architecture cannot be executed: the kernel refuses it with ENOEXEC, which the
  container runtime reports as `exec /azp/start.sh: exec format error` and the container exits 1
  (containerd/runc behaviour; there is no emulation such as QEMU binfmt on a normal node).
- Kubernetes: the container runtime sets HOSTNAME to the pod's hostname; the kubelet adds
  KUBERNETES_SERVICE_HOST/PORT to every container.
- moby/buildkit's images (its Dockerfile): `moby/buildkit:<v>-rootless` runs `rootlesskit buildkitd` as uid
  1000, `moby/buildkit:<v>` runs buildkitd as root; both carry buildctl.

Not emulated: the agent's `.env`/`.path` files, user capabilities, Agent.OSVersion, InteractiveSession,
service links of other Services, and tools a pipeline installs at run time.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ConfigError

WELL_KNOWN_IGNORED = (
    *("comp_wordbreaks", "ls_colors", "TERM", "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "SHLVL"),
    "SYSTEM_ACCESSTOKEN",
)
IGNORE_VALUE_LENGTH = 1024
KUBERNETES_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@dataclass(frozen=True)
class ImageEntry:
    """What one image holds and how its entrypoint runs the agent (see the module docstring)."""

    os: str = "Linux"
    architectures: tuple[str, ...] = ("amd64",)
    env: Mapping[str, str] = field(default_factory=dict)
    tools: Mapping[str, str] = field(default_factory=dict)
    home: str = "/azp/agent"
    script: str = ""
    modes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_args: tuple[str, ...] = ()
    token_file_env: str = ""
    token_env: tuple[str, ...] = ()
    hidden_env: tuple[str, ...] = ()
    refuses_tokens: bool = False
    token_dir_env: str = ""
    token_dir: str = ""
    programs: tuple[str, ...] = ()
    daemon: str = ""
    agent_files_env: str = ""

    @property
    def runs_agent(self) -> bool:
        return bool(self.modes)


_UBUNTU_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# agent-images/linux: start.sh register | run | once (CMD once); it reads AZP_TOKEN_FILE (or AZP_TOKEN),
# unsets the token variables before the agent runs, and `run` exits 2 when it sees a token.
_START_SH = {
    "script": "/azp/start.sh",
    "modes": {"register": ("register",), "run": ("run",), "once": ("register", "run")},
    "default_args": ("once",),
    "token_file_env": "AZP_TOKEN_FILE",
    "token_env": ("AZP_TOKEN",),
    "hidden_env": ("AZP_TOKEN", "AZP_TOKEN_FILE", "VSTS_AGENT_INPUT_TOKEN"),
    "refuses_tokens": True,
    "token_dir_env": "AZP_SECRET_DIR",
    "token_dir": "/var/run/secrets/azp",
    "agent_files_env": "AZP_AGENT_FILES",
}
_LINUX_ENV = {
    "PATH": _UBUNTU_PATH,
    "agent.disableupdate": "true",
    "AZP_AGENT_DIR": "/azp/agent",
    "AZP_WORK": "/azp/_work",
    "AZP_STATE_DIR": "/azp/state",
    "HOME": "/home/agent",
}
_LINUX_TOOLS = {"curl": "/usr/bin/curl", "git": "/usr/bin/git", "sh": "/usr/bin/sh"}
# agent-images/linux/Dockerfile copies buildctl to /usr/local/bin; toolchains/docker-cli adds docker and buildx.
_LINUX_PROGRAMS = ("buildctl",)
_TOOLCHAIN_PROGRAMS = {"docker-cli": ("docker", "docker-buildx")}
_TOOLCHAINS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    # name: (ENV lines of agent-images/toolchains/<name>/Dockerfile, tools it puts on PATH)
    "dotnet": (
        {
            "dotnet": "/usr/share/dotnet/dotnet",
            "dotnet.sdk": "8.0",
            "DOTNET_ROOT": "/usr/share/dotnet",
            "DOTNET_CLI_TELEMETRY_OPTOUT": "1",
            "DOTNET_NOLOGO": "1",
            "DOTNET_SKIP_FIRST_TIME_EXPERIENCE": "1",
        },
        {},
    ),
    "node": (
        {"node.js": "/usr/local/bin/node", "npm": "/usr/local/bin/npm", "node.version": "22.12.0"},
        {"node.js": "/usr/local/bin/node", "npm": "/usr/local/bin/npm"},
    ),
    "java": (
        {
            "JAVA_HOME": "/opt/java/openjdk",
            "JAVA_HOME_17_X64": "/opt/java/openjdk",
            "java": "/opt/java/openjdk/bin/java",
            "JDK": "/opt/java/openjdk/bin/javac",
            "java.version": "17",
            "PATH": f"/opt/java/openjdk/bin:{_UBUNTU_PATH}",
        },
        {"java": "/opt/java/openjdk/bin/java", "JDK": "/opt/java/openjdk/bin/javac"},
    ),
    "docker-cli": ({"docker": "/usr/local/bin/docker", "docker.version": "27.5.1"}, {}),
}


def _linux(
    env: Mapping[str, str] | None = None, tools: Mapping[str, str] | None = None, programs: tuple[str, ...] = ()
) -> ImageEntry:
    # agent-images/azure-pipelines.yml and .github/workflows/images.yml publish linux/amd64 and linux/arm64.
    return ImageEntry(
        env={**_LINUX_ENV, **(env or {})},
        tools={**_LINUX_TOOLS, **(tools or {})},
        architectures=("amd64", "arm64"),
        programs=(*_LINUX_PROGRAMS, *programs),
        **_START_SH,  # type: ignore[arg-type]
    )


_BUILDKIT_ARCHITECTURES = ("amd64", "arm64", "arm", "s390x", "ppc64le", "riscv64")


BUILT_IN: tuple[tuple[str, ImageEntry], ...] = (
    *(
        (pattern, _linux(*parts, programs=_TOOLCHAIN_PROGRAMS.get(name, ())))
        for name, parts in _TOOLCHAINS.items()
        for pattern in (f"ghcr.io/azp-agents/agent-linux:*-{name}", f"ghcr.io/azp-agents/agent-linux-{name}:*")
    ),
    ("ghcr.io/azp-agents/agent-linux:*", _linux()),
    (
        "moby/buildkit:*-rootless",
        ImageEntry(daemon="rootless-buildkitd", programs=("buildctl",), architectures=_BUILDKIT_ARCHITECTURES),
    ),
    ("moby/buildkit:*", ImageEntry(daemon="buildkitd", programs=("buildctl",), architectures=_BUILDKIT_ARCHITECTURES)),
    (
        "ghcr.io/azp-agents/agent-windows:*",
        ImageEntry(
            os="Windows_NT",
            env={"agent.disableupdate": "true", "AZP_AGENT_DIR": "C:\\azp\\agent", "AZP_WORK": "C:\\azp\\_work"},
            home="C:\\azp\\agent",
            **{**_START_SH, "script": "C:\\azp\\start.ps1", "token_dir": "C:\\var\\run\\secrets\\azp"},  # type: ignore[arg-type]
        ),
    ),
)

_FIELDS = set(ImageEntry.__dataclass_fields__)
# Go's GOARCH (kubernetes.io/arch) -> the agent's OSArchitecture names (VarUtil.OSArchitecture).
AGENT_ARCHITECTURES = {"386": "X86", "amd64": "X64", "arm": "ARM", "arm64": "ARM64"}
EXEC_FORMAT_ERROR = "exec /azp/start.sh: exec format error"


def parse_catalogue(raw: Any, *, where: str) -> tuple[tuple[str, ImageEntry], ...]:
    """The world file's `image_catalogue` (pattern -> entry), checked; its entries come before BUILT_IN."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: image_catalogue: expected a mapping of image (pattern) -> entry")
    entries = []
    for pattern, body in raw.items():
        body = body or {}
        unknown = set(body) - _FIELDS
        if unknown:
            raise ConfigError(f"{where}: image_catalogue[{pattern!r}]: unknown keys {sorted(unknown)}")
        values = dict(body)
        for key in ("default_args", "token_env", "hidden_env", "architectures", "programs"):
            if key in values:
                values[key] = tuple(values[key])
        if "modes" in values:
            values["modes"] = {str(k): tuple(v) for k, v in values["modes"].items()}
        entries.append((str(pattern), ImageEntry(**values)))
    return tuple(entries)


def lookup(catalogue: tuple[tuple[str, ImageEntry], ...], image: str) -> ImageEntry | None:
    """The entry of an image: an exact key first, then the first pattern that matches."""
    for pattern, entry in catalogue:
        if pattern == image:
            return entry
    return next((entry for pattern, entry in catalogue if fnmatch.fnmatchcase(image, pattern)), None)


def roles(container: Mapping[str, Any], entry: ImageEntry | None) -> tuple[str, ...] | None:
    """What the container's entrypoint does with the agent: () nothing, ("register",), ("run",), both;
    None when the script does not know the mode it is given (it exits 2)."""
    if entry is None or not entry.runs_agent:
        return ()
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if command:
        # `command` replaces the ENTRYPOINT and drops the CMD (Kubernetes' rule): the script must be in it.
        script = entry.script.replace("\\", "/").rsplit("/", 1)[-1]
        at = next((i for i, word in enumerate(command) if word.replace("\\", "/").endswith(script)), None)
        if at is None:
            return ()
        args = command[at + 1 :] + args
    elif not args:
        args = list(entry.default_args)
    mode = args[0] if args else ""
    return entry.modes.get(mode)


def advertised(
    *, env: Mapping[str, str], entry: ImageEntry, name: str, hostname: str, version: str, node_arch: str = "amd64"
) -> dict[str, str]:
    """The system capabilities the agent in a container of `entry` with environment `env` advertises, on a
    node of architecture `node_arch` (kubernetes.io/arch)."""
    ignored = set(WELL_KNOWN_IGNORED) | set(entry.hidden_env)
    ignored |= {n.strip() for n in env.get("VSO_AGENT_IGNORE", "").split(",") if n.strip()}
    capabilities = {k: v for k, v in env.items() if k not in ignored and len(v) < IGNORE_VALUE_LENGTH}
    capabilities.update(entry.tools)
    capabilities.update(
        {
            "Agent.Name": name,
            "Agent.Version": version,
            "Agent.OS": entry.os,
            "Agent.OSArchitecture": AGENT_ARCHITECTURES.get(node_arch, node_arch.upper()),
            "Agent.ComputerName": hostname,
            "Agent.HomeDirectory": entry.home,
        }
    )
    return capabilities
