"""We test: `check`, `render` and `reconcile --dry-run --values` run the configuration the chart renders for a
values file (real `helm template`, the real CLI over HTTP against the emulators), and `--once` is one pass."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PAT, Sim

from reconciler import names

REPO = Path(__file__).resolve().parents[2]
TOKEN = {"AZP_TOKEN": PAT}

pytestmark = pytest.mark.skipif(
    shutil.which("helm") is None and not (REPO / ".tools" / "bin" / "helm").exists(),
    reason="helm is not installed (make tools)",
)


@pytest.fixture
def bare(make_sim: Any) -> Sim:
    """The emulators without a first pass: for runs that stop before any call, or only read."""
    sim: Sim = make_sim(install=False)
    return sim


def values_file(sim: Sim, tmp_path: Path, **extra: object) -> Path:
    """A chart values file for the emulated organization's pool 'linux', as a user would write it."""
    document = {
        "organization": {"url": sim.simulation.organization_url, "allowInsecureHttp": True},
        "pools": [{"name": "linux", "maxAgents": 3}],
        **extra,
    }
    path = tmp_path / "my-values.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_check_with_values_runs_the_charts_configuration(bare: Sim, tmp_path: Path) -> None:
    """We test: `check --values` verifies the chart's rendered config and built-in template against the
    emulators, with the PAT from $AZP_TOKEN, and exits 0."""
    values = values_file(bare, tmp_path)
    result = bare.cli("check", "--values", str(values), env=TOKEN, config=False)
    assert result.code == 0, result.text
    assert "template linux/default" in result.out and "pool linux" in result.out
    assert PAT not in result.text


def test_dry_run_with_values_uses_the_charts_template_and_writes_nothing(sim: Sim, tmp_path: Path) -> None:
    """We test: `reconcile --dry-run --once --values` plans with the chart's values (its maxAgents caps the
    Jobs) and its job template, and makes no write call."""
    values = values_file(sim, tmp_path)
    sim.queue("linux", 5, demands=("docker",))
    sim.azdo.reset_calls()
    sim.kube.reset_calls()
    result = sim.cli("reconcile", "--dry-run", "--once", "--values", str(values), env=TOKEN, config=False)
    assert result.code == 0, result.text
    assert result.err.count("would create Job") == 3, result.err
    assert sim.azdo.write_calls() == 0 and sim.kube.write_calls() == 0
    assert sim.jobs() == []


def test_render_with_values_prints_the_charts_job_without_anchors(bare: Sim, tmp_path: Path) -> None:
    """We test: `render --values -f --set` prints the chart's built-in Job for the pool with the release
    name given, later values winning as with helm, and no YAML anchors or aliases."""
    values = values_file(bare, tmp_path)
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"pools": [{"name": "linux"}, {"name": "windows"}]}))
    result = bare.cli(
        "render",
        *("--values", str(values), "-f", str(override), "--set", "reconciler.jobNamePrefix=local"),
        *("--release", "ci-agents", "--pool", "windows"),
        config=False,
    )
    assert result.code == 0, result.text
    assert "&id" not in result.out and "*id" not in result.out
    job = yaml.safe_load(result.out)
    owner = names.Owner(prefix="local", release="ci-agents")
    assert job["metadata"]["name"].startswith(names.agent_prefix(owner, pool_name="windows"))
    assert job["metadata"]["labels"][names.LABEL_INSTANCE] == "ci-agents"
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "ci-agents-azp-agents-agent"


def test_render_from_a_config_has_no_anchors(bare: Sim) -> None:
    """We test: `render --config` writes a value its job template shares between two keys twice, not as
    `&id001` / `*id001`."""
    config = bare.config()
    job_template = Path(config["pools"][0]["templates"][0]["jobTemplate"])
    template = yaml.safe_load(job_template.read_text())
    env = [{"name": "SHARED", "value": "x"}]
    for container in template["spec"]["template"]["spec"]["containers"]:
        container["env"] = [*container.get("env", []), *env]
    template["metadata"] = {**template.get("metadata", {}), "labels": {"team": "a"}}
    template["spec"]["template"]["metadata"] = {"labels": {"team": "a"}}
    job_template.write_text(yaml.safe_dump(template))
    result = bare.cli("render", "--pool", "linux")
    assert result.code == 0, result.text
    assert "&id" not in result.out and "*id" not in result.out, result.out
    assert yaml.safe_load(result.out)["kind"] == "Job"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("reconcile", "--values", "VALUES"), "add --dry-run"),
        (("check", "--values", "VALUES", "--chart", "/nowhere"), "--chart /nowhere: not a chart directory"),
        (("check", "--values", "/nowhere.yaml"), "--values /nowhere.yaml: no such file"),
        (("check", "--values", "VALUES", "--set", "reconciler.loop.loopFor=-1"), "rejected the values: Error:"),
        (("check", "--set", "a=b"), "give them with --values FILE"),
    ],
)
def test_bad_values_use_exits_2(bare: Sim, tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    """We test: each misuse of --values exits 2 with one line saying what to fix, never a traceback."""
    values = str(values_file(bare, tmp_path))
    result = bare.cli(*[values if a == "VALUES" else a for a in args], env=TOKEN, config=False)
    assert result.code == 2, result.text
    assert expected in result.err and "Traceback" not in result.text


def test_values_and_config_together_exit_2(bare: Sim, tmp_path: Path) -> None:
    """We test: --values with --config is refused: which configuration is meant would be a guess."""
    result = bare.cli("check", "--values", str(values_file(bare, tmp_path)), env=TOKEN)
    assert result.code == 2 and "either --config" in result.err, result.text


def test_once_runs_one_pass_whatever_loop_for_says(bare: Sim) -> None:
    """We test: `reconcile --once` makes exactly one pass with a config whose loopFor is 30 s, and --once
    with --loop-for is refused."""
    config = bare.config()
    config["loop"] = {"loopFor": 30, "interval": 0.5, "idleInterval": 0.5}
    bare.write_config(config)
    started = time.monotonic()
    result = bare.reconcile("--once")
    assert result.code == 0, result.text
    summaries = [json.loads(line) for line in result.err.splitlines() if '"pass summary"' in line]
    assert [s["pass"] for s in summaries] == [1]
    assert time.monotonic() - started < 20
    both = bare.reconcile("--once", "--loop-for", "5")
    assert both.code == 2 and "not allowed with argument" in both.err


def test_values_without_azp_token_says_where_the_pat_goes(bare: Sim, tmp_path: Path) -> None:
    """We test: with --values and no $AZP_TOKEN, reconcile --dry-run exits 2 saying to set $AZP_TOKEN (the
    chart's in-pod PAT file is not used locally)."""
    result = bare.cli("reconcile", "--dry-run", "--values", str(values_file(bare, tmp_path)), config=False)
    assert result.code == 2, result.text
    assert "the PAT is empty: set $AZP_TOKEN to a personal access token" in result.err
