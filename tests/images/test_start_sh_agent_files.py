"""agent-images/linux/start.sh with AZP_AGENT_FILES: the files of an agent the reconciler registered
(agents.registration: reconciler), mounted from a Secret owned by the Job. No mode runs config.sh or reads a
PAT; the agent runs from the three files, as the real agent does once `.agent` and `.credentials` exist
(azure-pipelines-agent ConfigurationStore.cs: IsConfigured, HasCredentials).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from image_support import Sandbox, base_env, run_start_sh

from reconciler.names import AGENT_ID_MESSAGE

IDENTITY_FILES = (".agent", ".credentials", ".credentials_rsaparams")


def agent_files(box: Sandbox, *, agent_id: int = 812) -> Path:
    """A directory like the mounted Secret: the three files, readable, as the reconciler writes them."""
    directory = box.root / "agent-files"
    directory.mkdir()
    settings = {"agentId": agent_id, "agentName": "azp-linux-1042", "poolId": 3, "poolName": "linux"}
    (directory / ".agent").write_text(json.dumps(settings))
    (directory / ".credentials").write_text('{"scheme": "OAuth", "data": {"clientId": "c1"}}')
    (directory / ".credentials_rsaparams").write_text('{"d": "private-key"}')
    for path in directory.iterdir():
        path.chmod(0o440)
    return directory


def test_register_copies_the_files_publishes_the_id_and_runs_no_config_sh(sandbox: Sandbox) -> None:
    """We test: register with AZP_AGENT_FILES needs no AZP_URL or token, never runs config.sh, saves the files
    to the state dir and publishes the agent id from .agent."""
    files = agent_files(sandbox)
    result = run_start_sh("register", {**base_env(sandbox), "AZP_AGENT_FILES": str(files)})

    assert result.returncode == 0, result.stderr
    assert not (sandbox.record / "config.args").exists()
    for name in IDENTITY_FILES:
        assert (sandbox.state / name).read_text() == (files / name).read_text()
    assert (sandbox.root / "termination-log").read_text() == f"{AGENT_ID_MESSAGE}812\n"


def test_run_after_register_starts_the_agent_from_the_files(sandbox: Sandbox) -> None:
    """We test: the main container then runs run.sh --once with the three files, private to the agent user."""
    files = agent_files(sandbox)
    assert run_start_sh("register", {**base_env(sandbox), "AZP_AGENT_FILES": str(files)}).returncode == 0
    main_agent = sandbox.fresh_agent_dir("main-agent")
    result = run_start_sh("run", base_env(sandbox, agent_dir=main_agent))

    assert result.returncode == 0, result.stderr
    assert sandbox.recorded("run.args").splitlines() == ["--once"]
    assert set(IDENTITY_FILES) <= set(sandbox.recorded("run.files").split())
    for name in IDENTITY_FILES:
        assert stat.S_IMODE((main_agent / name).stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", ["once", "run"])
def test_once_and_run_install_the_files_and_run_without_config_sh(sandbox: Sandbox, mode: str) -> None:
    """We test: a single container (once) or a run container given the files directly runs the agent from
    them, without config.sh and with no token variable in its environment."""
    files = agent_files(sandbox)
    result = run_start_sh(mode, {**base_env(sandbox), "AZP_AGENT_FILES": str(files)})

    assert result.returncode == 0, result.stderr
    assert not (sandbox.record / "config.args").exists()
    assert sandbox.recorded("run.args").splitlines() == ["--once"]
    assert (sandbox.agent / ".credentials_rsaparams").read_text() == '{"d": "private-key"}'
    assert "azp-linux-1042" in result.stderr


@pytest.mark.parametrize("mode", ["register", "once", "run"])
def test_a_missing_agent_file_exits_2_naming_it(sandbox: Sandbox, mode: str) -> None:
    """We test: a Secret without .credentials_rsaparams stops every mode with exit 2 and the file's name."""
    files = agent_files(sandbox)
    (files / ".credentials_rsaparams").unlink()
    result = run_start_sh(mode, {**base_env(sandbox), "AZP_AGENT_FILES": str(files)})

    assert result.returncode == 2
    assert f"AZP_AGENT_FILES={files} has no readable .credentials_rsaparams" in result.stderr
    assert not (sandbox.record / "run.args").exists()


def test_register_with_files_refuses_a_token_variable(sandbox: Sandbox) -> None:
    """We test: a PAT variable next to the agent's files is refused (that pod needs no organization credential)."""
    files = agent_files(sandbox)
    env = {**base_env(sandbox), "AZP_AGENT_FILES": str(files), "AZP_TOKEN": "pat-value"}
    result = run_start_sh("register", env)

    assert result.returncode == 2
    assert "AZP_TOKEN is set" in result.stderr
