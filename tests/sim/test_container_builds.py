"""We test container builds end to end (issue 18): the job template the chart renders for
values/container-builds.yaml (real `helm template`), served by the real reconciler over HTTP against the
emulators; the simulated agent runs a job's `buildctl build` step in its container, where it finds the
rootless BuildKit sidecar at $BUILDKIT_HOST. The chart's default template has no builder: the same job fails."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import WORLD, Sim

from azp_simulation.runner import ReconcilerProcess
from azp_simulation.world import load_world
from reconciler.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
# The chart tests' helper runs `helm template` (as tests/realkube does).
sys.path.insert(0, str(REPO / "tests" / "chart"))
from chart_helpers import job_templates_of, render_chart, with_defaults  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("helm") is None and not (REPO / ".tools" / "bin" / "helm").exists(),
    reason="helm is not installed (make tools)",
)
EXAMPLE = REPO / "values" / "container-builds.yaml"
BUILDKIT_HOST = "tcp://127.0.0.1:1234"


def _chart_template(values_files: list[Path]) -> dict[str, Any]:
    """The built-in job template as the chart stores it, for the simulated release `azp-agents`."""
    objects = render_chart(
        with_defaults(), values_files=values_files, show_only=["templates/reconciler-configmap.yaml"]
    )
    return job_templates_of(objects)["linux"]


def _namespace_labels(values_files: list[Path]) -> dict[str, str]:
    """The labels the chart gives the agents' namespace it creates (its Pod Security level among them)."""
    (namespace,) = render_chart(
        with_defaults(), values_files=values_files, show_only=["templates/agent-namespace.yaml"]
    )
    labels: dict[str, str] = namespace["metadata"]["labels"]
    return labels


def _world(job_template: dict[str, Any], capabilities: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    """One pool of the template, its agents in a namespace with `labels`."""
    template = {"name": "linux", "jobTemplate": job_template, "capabilities": capabilities}
    pool = {**WORLD["pools"][0], "templates": [template]}
    return {
        **WORLD,
        "pools": [pool],
        "reconciler": {**WORLD["reconciler"], "loopFor": 0},
        "namespace_labels": labels,
    }


def _serve(sim: Sim, steps: tuple[str, ...], count: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Queue `count` jobs with `steps` and run the reconciler's loop until they all finish: their requests,
    and the agents that ran them with their pods' containers, noted while they ran (afterwards the request
    no longer names its agent, and the reconciler prunes the agent)."""
    for _ in range(count):
        sim.azdo.queue_request(sim.pool_ids["linux"], duration=1.0, steps=steps)
    run = ReconcilerProcess(sim.simulation, loop_for=40, progress=None)
    ran_on: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not all(r.get("result") for r in sim.requests()):
            names = {r["reservedAgent"]["name"] for r in sim.requests() if r.get("reservedAgent")}
            pods = {p["metadata"]["name"]: p for p in sim.kube.objects("pods", "azp-agents")}
            for agent in (a for a in sim.agents() if a["name"] in names - set(ran_on)):
                containers = pods[agent["name"]]["spec"].get("initContainers") or []
                ran_on[agent["name"]] = {"agent": agent, "init": [c["name"] for c in containers]}
            time.sleep(0.1)
    finally:
        run.stop()
    return sim.requests(), ran_on


def test_build_step_finds_the_buildkit_sidecar(make_sim: Any) -> None:
    """We test: with agent.buildkit (the values example), two jobs whose step runs `buildctl build` both
    succeed, each on an agent whose pod has the sidecar and whose agent advertises BUILDKIT_HOST."""
    template = _chart_template([EXAMPLE])
    labels = _namespace_labels([EXAMPLE])
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    sim: Sim = make_sim(_world(template, {"BUILDKIT_HOST": BUILDKIT_HOST}, labels))
    requests, served = _serve(sim, ("buildctl-build",), 2)
    assert [r.get("result") for r in requests] == ["succeeded", "succeeded"], (requests, sim.simulation.step_failures)
    assert sim.simulation.step_failures == {}
    assert len(served) == 2, served
    for seen in served.values():
        assert seen["agent"]["systemCapabilities"].get("BUILDKIT_HOST") == BUILDKIT_HOST
        assert seen["init"] == ["register", "buildkitd"]


def test_build_step_fails_without_a_builder(make_sim: Any, tmp_path: Path) -> None:
    """We test: with the chart's default template (no agent.buildkit) the same job fails: buildctl finds no
    daemon at its default address, and the agent reports the step's failure."""
    template = _chart_template([])
    sim: Sim = make_sim(_world(template, {}, _namespace_labels([EXAMPLE, _without_buildkit(tmp_path)])))
    requests, _ = _serve(sim, ("buildctl-build",), 1)
    assert [r.get("result") for r in requests] == ["failed"], requests
    (failure,) = sim.simulation.step_failures.values()
    assert "unix:///run/buildkit/buildkitd.sock: connection refused" in failure


def _without_buildkit(directory: Path) -> Path:
    path = directory / "no-buildkit.yaml"
    path.write_text(yaml.safe_dump({"agent": {"buildkit": {"enabled": False}}}), encoding="utf-8")
    return path


def test_buildkit_agents_are_refused_where_the_chart_says_restricted(make_sim: Any, tmp_path: Path) -> None:
    """We test: in a namespace with the labels the chart gives agents without container builds
    (restricted), Pod Security admission refuses the BuildKit agent pods: no pod, and the Job controller's
    FailedCreate event names the sidecar's Unconfined seccomp profile."""
    labels = _namespace_labels([EXAMPLE, _without_buildkit(tmp_path)])
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    sim: Sim = make_sim(_world(_chart_template([EXAMPLE]), {"BUILDKIT_HOST": BUILDKIT_HOST}, labels))
    sim.azdo.queue_request(sim.pool_ids["linux"], duration=1.0, steps=("buildctl-build",))
    assert sim.reconcile().code == 0
    events = [e for e in sim.kube.objects("events", "azp-agents") if e["reason"] == "FailedCreate"]
    assert events and sim.kube.objects("pods", "azp-agents") == []
    message = events[0]["message"]
    assert 'violates PodSecurity "restricted:latest"' in message, message
    assert 'container "buildkitd" must not set securityContext.seccompProfile.type to "Unconfined"' in message


def test_world_files_name_unknown_steps(tmp_path: Path) -> None:
    """We test: a world file's unknown step is refused with its key and the steps there are."""
    world = {**WORLD, "arrivals": [{"pool": "linux", "steps": ["docker build"]}]}
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(world))
    with pytest.raises(ConfigError, match=r"arrivals\[0\]\.steps: 'docker build' .*buildctl-build"):
        load_world(path)


def test_world_files_name_bad_namespace_labels(tmp_path: Path) -> None:
    """We test: a world file's namespace_labels that are not a mapping of strings are refused by key."""
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump({**WORLD, "namespace_labels": {"pod-security.kubernetes.io/enforce": 1}}))
    with pytest.raises(ConfigError, match=r"namespace_labels: expected a mapping of label names to strings"):
        load_world(path)
