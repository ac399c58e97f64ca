"""We test: a user's mistake gives its exit code and one message that names what to fix, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import Sim


def assert_clean_error(result_text: str) -> None:
    assert "Traceback" not in result_text


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.update(organisation="x"), "configuration error: "),
        (lambda c: c["pools"][0].update(maxAgents=-1), "pools[0].maxAgents: -1 is out of range"),
        (lambda c: c.update(pools="linux"), "pools: expected array"),
        (lambda c: c.pop("organization"), "organization: is required but missing"),
        (
            lambda c: c["pools"][0]["templates"][0].update(jobTemplate="/nowhere/job.yaml"),
            "pools[0].templates[0].jobTemplate: job template '/nowhere/job.yaml' not found",
        ),
    ],
)
def test_bad_config_exits_2(sim: Sim, change, expected: str) -> None:  # type: ignore[no-untyped-def]
    """We test: each bad configuration exits 2 with the key in the message."""
    config = sim.config()
    change(config)
    sim.write_config(config)
    result = sim.reconcile()
    assert result.code == 2, result.text
    assert expected in result.err
    assert_clean_error(result.text)


def test_job_yaml_that_is_not_a_job(sim: Sim, tmp_path: Path) -> None:
    """We test: a job template holding a Deployment exits 2 naming the file and the fix."""
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}}))
    config = sim.config()
    config["pools"][0]["templates"][0]["jobTemplate"] = str(bad)
    sim.write_config(config)
    result = sim.reconcile()
    assert result.code == 2
    assert f"job template '{bad}': is a Deployment, not a Job: give a batch/v1 Job (or a Pod template)" in result.err


def test_wrong_pat_exits_2(sim: Sim) -> None:
    """We test: a PAT the organization rejects exits 2 and says what the PAT needs."""
    (sim.simulation.directory / "pat").write_text("not-the-right-pat\n")
    result = sim.reconcile()
    assert result.code == 2, result.text
    assert "credentials error: the PAT was rejected by" in result.err
    assert "has the Agent Pools (read & manage) scope" in result.err
    assert "not-the-right-pat" not in result.text
    assert_clean_error(result.text)


def test_missing_pat_file_exits_2(sim: Sim) -> None:
    """We test: an unreadable PAT file names auth.patFile."""
    (sim.simulation.directory / "pat").unlink()
    result = sim.reconcile()
    assert result.code == 2 and "auth.patFile: cannot read" in result.err


def test_unknown_pool_is_reported(sim: Sim) -> None:
    """We test: a pool the organization lacks is reported by name (exit 1: the pass could not serve it)."""
    config = sim.config()
    config["pools"].append({**config["pools"][0], "name": "no-such-pool"})
    sim.write_config(config)
    result = sim.reconcile()
    assert result.code == 1, result.text
    organization = config["organization"]
    assert f"pool 'no-such-pool' not found in {organization}; pools visible to this PAT: linux" in result.err
    assert "check pools[].name" in result.err
    checked = sim.cli("check")
    assert checked.code == 1, checked.text
    assert "pool no-such-pool" in checked.out and "pools visible to this PAT: linux" in checked.out


def test_wrong_organization_exits_2_naming_the_key(sim: Sim) -> None:
    """We test: an organization URL the service answers with 404 is a configuration error (exit 2) that
    names organization.url, for `reconcile`; `check` reports it as a failed organization row."""
    config = sim.config()
    config["organization"] = config["organization"].rsplit("/", 1)[0] + "/no-such-org"
    sim.write_config(config)
    result = sim.reconcile()
    assert result.code == 2, result.text
    assert "configuration error: organization: " in result.err and "check organization.url" in result.err
    assert_clean_error(result.text)
    checked = sim.cli("check")
    assert checked.code == 1, checked.text
    row = next(line for line in checked.out.splitlines() if line.startswith("organization "))
    assert row.split()[1] == "FAILED" and "check organization.url" in row, checked.out


def test_kubernetes_forbidden_exits_2(sim: Sim) -> None:
    """We test: a 403 from Kubernetes exits 2 naming the permission to grant."""
    sim.queue("linux", 1, demands=("docker",))
    sim.kube.inject_fault("GET", "*", kind="status", status=403, times=100)
    result = sim.reconcile()
    assert result.code == 2, result.text
    assert "Kubernetes forbids" in result.err and "grant it in the reconciler's Role" in result.err
    assert_clean_error(result.text)
