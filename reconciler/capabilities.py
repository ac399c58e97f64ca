"""What the agents of a template advertise, before and after one of them has registered.

A real agent advertises (microsoft/azure-pipelines-agent, `src/Agent.Listener/Capabilities/`):
- `EnvironmentCapabilitiesProvider`: every environment variable of its process, less a few well-known
  names, the names listed in `VSO_AGENT_IGNORE` and values of 1024 characters or more;
- `NixCapabilitiesProvider`: tools found on PATH (git, curl, sh, java, JDK=javac, maven=mvn,
  node.js=node, npm, python, python3, make, cmake, ...), as name -> path;
- `AgentCapabilitiesProvider`: `Agent.Name`, `Agent.Version`, `Agent.OS`, `Agent.OSArchitecture`,
  `Agent.ComputerName`, `Agent.HomeDirectory`, ...

So the placeholder of a template (the offline agent Azure DevOps matches demands against until a real
agent exists) should advertise the same. Before any agent of the template has registered, the best
knowledge is: the declared capabilities (they reach the agent as environment variables, see render.py),
the literal environment of its agent container, and what the project's own images are known to carry
(`BUILT_IN_IMAGES`, read off agent-images/*/Dockerfile). Once one has registered, its system
capabilities are copied (`learn`), less the values that name that one agent.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.model import Agent, Capabilities, frozen_map

_LINUX_BASE: dict[str, str] = {
    # agent-images/linux/Dockerfile: apt installs git and curl; ubuntu has sh. ENV lines.
    "Agent.OS": "Linux",
    "git": "/usr/bin/git",
    "curl": "/usr/bin/curl",
    "sh": "/usr/bin/sh",
    "agent.disableupdate": "true",
    "AZP_AGENT_DIR": "/azp/agent",
    "AZP_WORK": "/azp/_work",
    "AZP_STATE_DIR": "/azp/state",
}
_TOOLCHAINS: dict[str, dict[str, str]] = {
    # agent-images/toolchains/<name>/Dockerfile: their ENV lines, and the tools their PATH adds that
    # NixCapabilitiesProvider looks for.
    "dotnet": {"dotnet": "/usr/share/dotnet/dotnet", "dotnet.sdk": "8.0", "DOTNET_ROOT": "/usr/share/dotnet"},
    "node": {"node.js": "/usr/local/bin/node", "npm": "/usr/local/bin/npm"},
    "java": {
        "JAVA_HOME": "/opt/java/openjdk",
        "JAVA_HOME_17_X64": "/opt/java/openjdk",
        "java": "/opt/java/openjdk/bin/java",
        "JDK": "/opt/java/openjdk/bin/javac",
        "java.version": "17",
    },
    "docker-cli": {"docker": "/usr/local/bin/docker"},
}
BUILT_IN_IMAGES: tuple[tuple[str, Mapping[str, str]], ...] = (
    # agent-images/README.md tags a toolchain as agent-linux:<version>-<name>; values files also use
    # agent-linux-<name>:<version>.
    *(
        (pattern, {**_LINUX_BASE, **tools})
        for name, tools in _TOOLCHAINS.items()
        for pattern in (f"ghcr.io/azp-agents/agent-linux:*-{name}", f"ghcr.io/azp-agents/agent-linux-{name}:*")
    ),
    ("ghcr.io/azp-agents/agent-linux:*", _LINUX_BASE),
    # agent-images/windows/Dockerfile: Server Core with the agent; Agent.OS is Windows_NT on Windows.
    ("ghcr.io/azp-agents/agent-windows:*", {"Agent.OS": "Windows_NT", "agent.disableupdate": "true"}),
)
"""(image pattern, capabilities) of the project's agent images, the first match wins."""

# NixCapabilitiesProvider's names: found on PATH, they override an environment variable of the name.
NIX_TOOLS = frozenset(
    [
        "AndroidSDK",
        "ant",
        "AzureGuestAgent",
        "bundler",
        "clang",
        "cmake",
        "curl",
        "git",
        "gulp",
        "java",
        "JDK",
        "make",
        "maven",
        "meteor",
        "MSBuild",
        "node.js",
        "npm",
        "python",
        "python3",
        "sh",
        "subversion",
        "ruby",
        "rake",
        "svn",
        "Xamarin.iOS",
        "Xamarin.Android",
        "xcode",
    ]
)
# kubernetes.io/arch (Go's GOARCH) -> the agent's Agent.OSArchitecture (src/Agent.Sdk/Util/VarUtil.cs,
# OSArchitecture: X86, X64, ARM, ARM64 from the host's RuntimeInformation.OSArchitecture).
ARCHITECTURES = {"amd64": "X64", "arm64": "ARM64", "arm": "ARM", "386": "X86"}
# Names whose value is set by the reconciler per Job or per pod: never part of what a template advertises.
PER_AGENT = ("Agent.Name", "Agent.ComputerName", "HOSTNAME", "AZP_AGENT_NAME")
TEMPLATE_CAPABILITY = "AZP_TEMPLATE"
"""The environment variable render.py gives the agent container: its agent advertises its template."""


def image_capabilities(image: str) -> Mapping[str, str]:
    """What a built-in image is known to advertise ({} for any other image)."""
    # A digest pins an image without naming its tag: image@sha256:... is matched as image:*.
    image = image.replace("@", ":@", 1) if "@" in image and ":" not in image.split("/")[-1] else image
    for pattern, capabilities in BUILT_IN_IMAGES:
        if fnmatch.fnmatchcase(image, pattern):
            return capabilities
    return {}


def defaults(*, pod_spec: Mapping[str, Any], container: Mapping[str, Any], declared: Mapping[str, str]) -> Capabilities:
    """A template's capabilities before any of its agents registered, in the agent's own order: the
    image's environment, the agent container's literal environment, the declared capabilities (render.py
    makes them environment variables), then the tools of a built-in image (NixCapabilitiesProvider
    overrides a variable of the same name), then Agent.OS and Agent.OSArchitecture (from the image, else
    the pod's `os` / nodeSelector, else Linux X64). A template's `arch` key reaches here as the
    nodeSelector render.select_arch gives its pods."""
    selector = pod_spec.get("nodeSelector") or {}
    os_name = str((pod_spec.get("os") or {}).get("name") or selector.get("kubernetes.io/os") or "linux")
    arch = str(selector.get("kubernetes.io/arch") or "amd64")
    image = image_capabilities(str(container.get("image", "")))
    capabilities = {k: v for k, v in image.items() if k not in NIX_TOOLS and k != "Agent.OS"}
    for entry in container.get("env") or []:
        if isinstance(entry, dict) and "value" in entry and not str(entry.get("name", "")).startswith("AZP_"):
            capabilities[str(entry["name"])] = str(entry.get("value") or "")
    capabilities.update(declared)
    capabilities.update({k: v for k, v in image.items() if k in NIX_TOOLS})
    capabilities["Agent.OS"] = image.get("Agent.OS") or ("Windows_NT" if os_name.lower() == "windows" else "Linux")
    capabilities["Agent.OSArchitecture"] = ARCHITECTURES.get(arch, arch.upper())
    return frozen_map(capabilities)


def overridden(declared: Mapping[str, str], known: Mapping[str, str]) -> dict[str, str]:
    """Declared capabilities the agent would advertise with another value (a tool found on PATH, Agent.*)."""
    return {k: known[k] for k, v in declared.items() if k in known and known[k] != v}


def learn(agents: Iterable[Agent], *, template: str, placeholder: str) -> Capabilities | None:
    """The system capabilities of the newest registered agent of `template` (it advertises
    AZP_TEMPLATE=<template>), less the values that name that one agent; else those a placeholder
    learned earlier (they carry the same mark); None when neither exists."""
    own = [
        a
        for a in agents
        if a.capabilities.get(TEMPLATE_CAPABILITY) == template and a.name.lower() != placeholder.lower()
    ]
    if own:
        newest = max(own, key=lambda a: a.agent_id)  # Azure DevOps hands out increasing ids
        return frozen_map({k: v for k, v in newest.capabilities.items() if k not in PER_AGENT})
    earlier = next((a for a in agents if a.name.lower() == placeholder.lower()), None)
    if earlier is not None and earlier.capabilities.get(TEMPLATE_CAPABILITY) == template:
        return earlier.capabilities
    return None
