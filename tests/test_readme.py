"""We test: every command the README gives a user runs and does what the README says."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOOLS = ROOT / ".tools" / "bin"


def code_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, continuation lines joined."""
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_first_screen_gives_the_two_commands() -> None:
    """We test: the first code block holds exactly `make demo` and `make test`, and .ci/run runs `make test`."""
    first = commands(code_blocks()[0])
    assert first == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec make test$", ci, flags=re.M)
    assert README.index("make demo") < 1500, "the two commands must be on the first screen"


@pytest.mark.slow
def test_make_demo_serves_every_job() -> None:
    """We test: `make demo` (the README's first command) runs the burst simulation and every job is served."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AZP_", "ORG_"))}
    done = subprocess.run(["make", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "result: every job served" in done.stdout
    assert re.search(r"jobs\s+40: served 39, canceled 1, failed 0, unserved 0", done.stdout), done.stdout[-2000:]
    assert re.search(r"jobs aborted by agent loss\s+0", done.stdout)
    assert re.search(r"leftovers of ours\s+offline_agents 0, online_agents 0, active_jobs 0", done.stdout)


def test_helm_install_command_renders() -> None:
    """We test: the README's `helm install` line, run as `helm template` with the same arguments, renders a
    CronJob and a Secret (there is no cluster to install into here)."""
    helm = TOOLS / "helm"
    if not helm.exists():
        pytest.skip("helm is fetched by scripts/fetch-tools.sh (make test runs it)")
    install = next(c for block in code_blocks() for c in commands(block) if c.startswith("helm install"))
    args = shlex.split(install.replace("$AZP_PAT", "readme-test-pat"))
    assert args[:4] == ["helm", "install", "azp-agents", "./chart"]
    rendered = subprocess.run([str(helm), "template", *args[2:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc}
    assert {"CronJob", "Secret", "ConfigMap", "Role", "RoleBinding", "ServiceAccount"} <= kinds


def test_kubectl_watch_command_against_the_emulator(tmp_path: Path) -> None:
    """We test: the README's `kubectl get jobs ... -l ...` works against the Kubernetes emulator and lists the
    agent Jobs the reconciler created."""
    kubectl = TOOLS / "kubectl" if (TOOLS / "kubectl").exists() else shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl binary (scripts/fetch-tools.sh provides one)")
    from azp_simulation.kube_emulator import KubernetesEmulator

    get_jobs = next(c for block in code_blocks() for c in commands(block) if c.startswith("kubectl get jobs"))
    with KubernetesEmulator() as kube:
        kube.add_namespace("azp-agents")
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        kube.create(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": "azp-linux-1",
                    "namespace": "azp-agents",
                    "labels": {"app.kubernetes.io/managed-by": "azp-agents"},
                },
                "spec": {
                    "template": {
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "agent", "image": "agent:1"}]}
                    }
                },
            }
        )
        args = [str(kubectl), "--kubeconfig", str(kubeconfig), *shlex.split(get_jobs)[1:]]
        listed = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "azp-linux-1" in listed.stdout


def test_commands_table_lists_real_subcommands() -> None:
    """We test: every `azp-reconciler X` in the README is a subcommand the CLI has."""
    from reconciler.cli import COMMANDS

    used = set(re.findall(r"azp-reconciler (\w+)", README))
    assert used and used <= set(COMMANDS)


@pytest.mark.slow
def test_simulate_idle_and_emulate() -> None:
    """We test: `azp-reconciler simulate --scenario idle` prunes the leftovers; `emulate` prints an organization
    URL, a PAT and a kubeconfig, and stops on SIGTERM."""
    python = sys.executable
    idle = subprocess.run(
        [python, "-m", "reconciler", "simulate", "--scenario", "idle", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert idle.returncode == 0, idle.stdout + idle.stderr
    assert re.search(r"leftovers of ours\s+offline_agents 0", idle.stdout)
    emulate = subprocess.Popen(
        [python, "-m", "reconciler", "emulate", "--world", "idle"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    assert emulate.stdout is not None
    while time.monotonic() < deadline and not any("press Ctrl-C" in line for line in lines):
        lines.append(emulate.stdout.readline())
    emulate.send_signal(signal.SIGTERM)
    emulate.wait(timeout=20)
    text = "".join(lines)
    assert "Azure DevOps organization: http://127.0.0.1:" in text and "kubeconfig:" in text and "PAT:" in text


CHART_VERSION = yaml.safe_load((ROOT / "chart" / "Chart.yaml").read_text())["version"]
README_ENV = {"AZP_PAT": "readme-test-pat-0123456789", "REGISTRY": "registry.contoso.com/azp"}
# Commands that need a cluster, a registry or a Docker engine: their flags are checked, not their effect.
NEEDS_A_CLUSTER = ("kubectl ", "helm uninstall ", "helm test ", "helm push ", "helm registry ")
NEEDS_DOCKER = "docker "


def install_commands() -> list[str]:
    """Every command of the README after the first screen (code blocks and the Troubleshooting table), with
    the README's variables filled in."""
    found = [c for block in code_blocks()[1:] for c in commands(block)]
    found += re.findall(r"\| `((?:kubectl|helm) [^`]+)` \|$", README, flags=re.M)  # the Troubleshooting table
    return [re.sub(r"\$(\w+)", lambda m: README_ENV.get(m.group(1), m.group(0)), c) for c in found]


def _helm() -> Path:
    helm = TOOLS / "helm"
    if not helm.exists():
        pytest.skip("helm is fetched by scripts/fetch-tools.sh (make test runs it)")
    return helm


def test_every_life_cycle_command_is_checked() -> None:
    """We test: each command of Install, Your own registry, Upgrading and Uninstalling is one the tests
    below run (helm install/upgrade/package), check against a missing cluster, or skip for Docker."""
    handled = (
        "helm install ",
        "helm upgrade ",
        "helm package ",
        "export ",
        NEEDS_DOCKER,
        *NEEDS_A_CLUSTER,
        LOCAL_RUN,
    )
    assert [c for c in install_commands() if not c.startswith(handled)] == []


# `azp-reconciler ... --values` needs an organization: tests/sim/test_local_values.py runs the same commands
# against the emulators; here each README line must parse with the real command line.
LOCAL_RUN = "azp-reconciler "


def test_local_commands_parse() -> None:
    """We test: every `azp-reconciler` command the README shows after its first screen is accepted by the
    CLI's own parser (a renamed or removed flag fails here)."""
    from reconciler.cli import build_parser

    local = [c for c in install_commands() if c.startswith(LOCAL_RUN)]
    assert local, "the README shows how to try a values file locally"
    for command in local:
        build_parser().parse_args(shlex.split(command)[1:])


@pytest.mark.parametrize("verb", ["install", "upgrade"])
def test_helm_install_and_upgrade_commands_render(verb: str, tmp_path: Path) -> None:
    """We test: every `helm install`/`helm upgrade` the README shows renders with `helm template` (the
    published chart's reference is the local chart at the same version; --reuse-values, which needs the
    installed release, becomes the README's install values)."""
    helm = _helm()
    lines = [c for c in install_commands() if c.startswith(f"helm {verb} ")]
    assert lines
    for line in lines:
        args = shlex.split(line)[2:]
        chart = args[1]
        if chart.startswith("oci://"):
            assert chart.endswith("/charts/azp-agents") and args[args.index("--version") + 1] == CHART_VERSION
            args[1] = "./chart"
            del args[args.index("--version") : args.index("--version") + 2]
        if "--reuse-values" in args:
            args.remove("--reuse-values")
            args += ["--set", "organization.url=https://dev.azure.com/contoso", "--set", "auth.pat=readme-test-pat-1"]
        args = [a for a in args if a != "--create-namespace"]
        rendered = subprocess.run([str(helm), "template", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, f"{line}\n{rendered.stderr}"
        assert any(d and d["kind"] == "CronJob" for d in yaml.safe_load_all(rendered.stdout))


def test_helm_package_makes_the_file_helm_push_sends(tmp_path: Path) -> None:
    """We test: `helm package chart --destination dist` writes the .tgz the README's `helm push` names."""
    helm = _helm()
    package = next(c for c in install_commands() if c.startswith("helm package "))
    args = shlex.split(package)[1:]
    args[args.index("--destination") + 1] = str(tmp_path / "dist")
    done = subprocess.run([str(helm), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    push = next(c for c in install_commands() if c.startswith("helm push "))
    assert (tmp_path / Path(shlex.split(push)[2])).exists(), f"{push} names a file helm package did not write"


@pytest.mark.parametrize("command", [c for c in install_commands() if c.startswith(NEEDS_A_CLUSTER)])
def test_cluster_commands_parse(command: str, tmp_path: Path) -> None:
    """We test: kubectl and helm commands that need a cluster or registry have real subcommands and flags:
    run against an unreachable API server, they fail to connect, never on their own syntax."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
    )
    args = shlex.split(command)
    binary = TOOLS / args[0] if (TOOLS / args[0]).exists() else shutil.which(args[0])
    if not binary:
        pytest.skip(f"no {args[0]} binary (scripts/fetch-tools.sh provides one)")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HELM_REGISTRY_CONFIG": str(tmp_path / "registry.json")}
    env |= {"HELM_CACHE_HOME": str(tmp_path / "cache"), "HELM_CONFIG_HOME": str(tmp_path / "config")}
    if args[:2] == ["helm", "push"]:
        args[2] = str(tmp_path / "missing.tgz")
    run = subprocess.run(
        [str(binary), *args[1:], *(["--request-timeout=2s"] if args[0] == "kubectl" else [])],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    output = run.stdout + run.stderr
    assert not re.search(r"unknown (flag|command|shorthand)|accepts \d+ arg|requires at least", output), output


def test_image_tags_in_the_readme_are_the_published_ones() -> None:
    """We test: the README's agent tags are the pinned agent version and its reconciler tag the chart's
    appVersion, the tags the image pipelines publish."""
    agent_version = yaml.safe_load((ROOT / "agent-images" / "agent-version.json").read_text())["version"]
    app_version = yaml.safe_load((ROOT / "chart" / "Chart.yaml").read_text())["appVersion"]
    agent_tags = set(re.findall(r"agent-(?:linux|windows):([0-9.]+)", README))
    reconciler_tags = set(re.findall(r"reconciler:([0-9.]+)", README))
    assert agent_tags == {agent_version}
    assert reconciler_tags == {app_version}
