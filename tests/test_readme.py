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
