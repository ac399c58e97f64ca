"""Job templates of real-world shapes, through the front door: the realworld scenario with honest simulated
agents, and the shapes the reconciler refuses at install, with the message a user reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from azp_simulation.runner import run_simulation

IMAGE = "ghcr.io/azp-agents/agent-linux:4.269.0"
REGISTER = {"name": "register", "image": IMAGE, "args": ["register"]}
RUN = {"name": "agent", "image": IMAGE, "args": ["run"]}


def test_realworld_scenario_serves_every_job() -> None:
    """We test: dind sidecar, user init container, native sidecar, a template fixing its own agent name,
    pool and URL, a tool learned from a team image's first agent, and the multi-pool templates: every job
    is served by agents that advertise only what they see, and nothing of ours is left behind."""
    summary = run_simulation("realworld")
    assert summary.ok and summary.served == summary.jobs, summary.as_dict()
    assert summary.unroutable == 0 and summary.stuck == 0, summary.as_dict()
    assert summary.leftovers == {"offline_agents": 0, "online_agents": 0, "active_jobs": 0}


def job(*, inits: list[dict[str, Any]], mains: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {"template": {"spec": {"initContainers": inits, "containers": mains}}},
    }


def render(tmp_path: Path, template: dict[str, Any], **config: Any) -> subprocess.CompletedProcess[str]:
    """`azp-reconciler render` of the one template, as a user would try it before installing."""
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(template))
    document = {
        "organization": "https://dev.azure.com/contoso",
        "auth": {"patFile": str(tmp_path / "pat")},
        "pools": [{"name": "apps", "jobTemplate": "job.yaml", "capabilities": {"team": "web"}}],
        **config,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZP_", "ORG_"))}
    command = [
        sys.executable,
        "-m",
        "reconciler",
        "render",
        "--config",
        str(tmp_path / "config.yaml"),
        "--pool",
        "apps",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


VSTS_TOKEN = {"name": "VSTS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "azdevops", "key": "AZP_TOKEN"}}}
DOCS_IMAGE = {
    # Microsoft's docs image: start.sh configures and runs in one container, token from AZP_TOKEN.
    "name": "azp-agent",
    "image": "contoso.azurecr.io/azp-agent:linux",
    "env": [{"name": "AZP_URL", "value": "https://dev.azure.com/contoso"}, {"name": "AZP_POOL", "value": "apps"}],
}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (job(inits=[REGISTER], mains=[RUN | {"env": [VSTS_TOKEN]}]), "container 'agent' sets VSTS_TOKEN from a Secret"),
        (
            job(inits=[], mains=[RUN | {"args": ["--auth", "pat", "--token", "abc123secret"]}]),
            "container 'agent' passes a token in its command/args",
        ),
        (job(inits=[], mains=[DOCS_IMAGE]), "container 'azp-agent' both registers and runs the agent"),
        (
            job(inits=[], mains=[DOCS_IMAGE | {"env": []}, {"name": "builder", "image": "contoso/tools:1"}]),
            "cannot tell which of the containers 'azp-agent', 'builder' runs the agent: add the annotation "
            "azp-agents.dev/agent-container",
        ),
    ],
    ids=["vsts-token-from-secret", "token-in-args", "once-without-opt-in", "unmarked-containers"],
)
def test_refused_shapes_name_the_fix(tmp_path: Path, template: dict[str, Any], message: str) -> None:
    """We test: shapes that would hand the PAT to steps or to the wrong container are refused before
    anything is created, exit 2, with a message that names the container and the fix, never the token."""
    completed = render(tmp_path, template)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert message in completed.stderr
    assert "abc123secret" not in completed.stdout + completed.stderr


def test_once_shape_accepted_with_the_opt_in(tmp_path: Path) -> None:
    """We test: with allowTokenInAgentContainer the docs image's single container is rendered, and it is the
    one container that gets the token and the reconciler's AZP_POOL."""
    completed = render(tmp_path, job(inits=[], mains=[DOCS_IMAGE]), allowTokenInAgentContainer=True)
    assert completed.returncode == 0, completed.stderr
    (container,) = yaml.safe_load(completed.stdout)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AZP_TOKEN_FILE"] == "/var/run/secrets/azp/token" and env["AZP_POOL"] == "apps"
    assert env["team"] == "web"
