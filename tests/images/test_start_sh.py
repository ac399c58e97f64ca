"""Behaviour of agent-images/linux/start.sh against a fake agent that records its arguments and environment.

We test the three modes the pods use (register in the init container, run in the main container, once in
a single container), that the PAT never reaches the process that runs pipeline steps, signal forwarding,
and that missing or invalid inputs exit 2 with a message naming the variable.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from image_support import (
    ORG_URL,
    START_SH,
    TOKEN,
    Sandbox,
    base_env,
    registration_env,
    run_start_sh,
)

IDENTITY_FILES = (".agent", ".credentials", ".credentials_rsaparams")
TOKEN_VARS = ("AZP_TOKEN", "AZP_TOKEN_FILE", "VSTS_AGENT_INPUT_TOKEN")


def register(box: Sandbox, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run the init container's `start.sh register`, asserting it succeeded."""
    result = run_start_sh("register", {**registration_env(box), **extra})
    assert result.returncode == 0, result.stderr
    return result


def files_containing_token(box: Sandbox) -> list[Path]:
    """Every file of the fake pod whose bytes contain the PAT, except the Secret mount and the fake's records."""
    found = []
    for path in box.root.rglob("*"):
        if not path.is_file() or box.secret in path.parents or box.record in path.parents:
            continue
        if TOKEN.encode() in path.read_bytes():
            found.append(path)
    return found


def wait_for(path: Path, *, timeout: float = 10.0) -> None:
    """Poll until path exists (the fake agent's readiness marker)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def test_register_passes_the_configuration_flags_and_the_token_from_the_file(sandbox: Sandbox) -> None:
    """We test: register calls config.sh unattended with URL, PAT (newline stripped), pool, name, work, --replace."""
    register(sandbox)

    assert sandbox.recorded("config.args").splitlines() == [
        "--unattended",
        "--url", ORG_URL,
        "--auth", "pat",
        "--token", TOKEN,
        "--pool", "linux-pool",
        "--agent", "azp-linux-7f9c2",
        "--work", str(sandbox.work),
        "--replace",
        "--acceptTeeEula",
    ]  # fmt: skip
    assert sandbox.recorded("config.cwd").strip() == str(sandbox.agent)


def test_register_hides_token_variables_from_the_agent(sandbox: Sandbox) -> None:
    """We test: config.sh gets VSO_AGENT_IGNORE covering every token variable and no token in its environment."""
    register(sandbox, VSO_AGENT_IGNORE="MY_SECRET")

    env = sandbox.recorded_env("config.env")
    ignored = env["VSO_AGENT_IGNORE"].split(",")
    assert ignored[0] == "MY_SECRET"
    assert set(TOKEN_VARS) <= set(ignored)
    assert "AZP_TOKEN" not in env
    assert TOKEN not in sandbox.recorded("config.env")


def test_register_disables_log_uploads_only_when_asked(sandbox: Sandbox) -> None:
    """We test: AZP_DISABLE_LOG_UPLOADS=true adds --disableloguploads (off by default: logs would die with the pod)."""
    register(sandbox, AZP_DISABLE_LOG_UPLOADS="true")
    assert "--disableloguploads" in sandbox.recorded("config.args").splitlines()


def test_register_writes_the_identity_files_to_the_state_dir(sandbox: Sandbox) -> None:
    """We test: the identity files (and optional ones present) land in the state dir, mode 600, PAT-free."""
    register(sandbox, FAKE_WRITE_CAPABILITIES="1")

    copied = sorted(p.name for p in sandbox.state.iterdir())
    assert copied == sorted([*IDENTITY_FILES, ".capabilities"])
    for name in copied:
        assert (sandbox.state / name).read_bytes() == (sandbox.agent / name).read_bytes()
        assert stat.S_IMODE((sandbox.state / name).stat().st_mode) == 0o600
    assert files_containing_token(sandbox) == [], "the PAT was written to disk"


def test_register_publishes_the_agent_id_as_its_termination_message(sandbox: Sandbox) -> None:
    """We test: after registering, the agent id from .agent is the init container's termination message
    (what the reconciler reads from the pod list); without an id, or with an unwritable path, register
    still succeeds and says why."""
    register(sandbox)
    assert (sandbox.root / "termination-log").read_text() == "azp-agents.dev/agent-id=4711\n"

    (sandbox.root / "termination-log").unlink()
    result = run_start_sh("register", {**registration_env(sandbox), "FAKE_NO_AGENT_ID": "1"})
    assert result.returncode == 0, result.stderr
    assert not (sandbox.root / "termination-log").exists()
    assert "no agentId in" in result.stderr

    unwritable = {**registration_env(sandbox), "AZP_TERMINATION_LOG": str(sandbox.root / "missing" / "log")}
    result = run_start_sh("register", unwritable)
    assert result.returncode == 0, result.stderr
    assert "could not write" in result.stderr and "4711" in result.stderr


def test_register_accepts_azp_token_with_a_warning(sandbox: Sandbox) -> None:
    """We test: AZP_TOKEN still works for compatibility, warns, and is removed from config.sh's environment."""
    env = registration_env(sandbox)
    del env["AZP_TOKEN_FILE"]
    env["AZP_TOKEN"] = TOKEN
    result = run_start_sh("register", env)

    assert result.returncode == 0, result.stderr
    assert "warning: AZP_TOKEN" in result.stderr
    assert "--token\n" + TOKEN in sandbox.recorded("config.args")
    assert "AZP_TOKEN" not in sandbox.recorded_env("config.env")


def test_register_defaults_pool_name_and_work(sandbox: Sandbox) -> None:
    """We test: AZP_POOL defaults to Default and AZP_AGENT_NAME to the hostname."""
    env = registration_env(sandbox)
    for name in ("AZP_POOL", "AZP_AGENT_NAME"):
        del env[name]
    result = run_start_sh("register", env)

    assert result.returncode == 0, result.stderr
    args = sandbox.recorded("config.args").splitlines()
    assert args[args.index("--pool") + 1] == "Default"
    assert args[args.index("--agent") + 1] == "azp-linux-7f9c2"


def test_missing_azp_url_exits_2_with_the_message(sandbox: Sandbox) -> None:
    """We test: without AZP_URL, register exits 2 naming the variable and never calls config.sh."""
    env = registration_env(sandbox)
    del env["AZP_URL"]
    result = run_start_sh("register", env)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "start.sh: AZP_URL is required (the organization URL, e.g. https://dev.azure.com/contoso)"
    )
    assert not (sandbox.record / "config.args").exists()


@pytest.mark.parametrize(
    ("mode", "change", "named"),
    [
        ("register", {"AZP_URL": "dev.azure.com/contoso"}, "AZP_URL must be an http(s) URL"),
        ("register", {"AZP_TOKEN_FILE": "/nonexistent/token"}, "AZP_TOKEN_FILE=/nonexistent/token"),
        ("register", {"AZP_TOKEN_FILE": ""}, "AZP_TOKEN_FILE is required"),
        ("register", {"AZP_AGENT_NAME": "two words"}, "AZP_AGENT_NAME"),
        ("register", {"AZP_AGENT_DIR": "/nonexistent"}, "AZP_AGENT_DIR=/nonexistent has no executable config.sh"),
        ("register", {"AZP_STATE_DIR": "/proc/azp-state"}, "AZP_STATE_DIR=/proc/azp-state"),
        ("register", {"AZP_DISABLE_LOG_UPLOADS": "yes"}, "AZP_DISABLE_LOG_UPLOADS"),
        ("once", {"AZP_URL": ""}, "AZP_URL is required"),
        ("sideways", {}, "unknown mode 'sideways'"),
    ],
)
def test_invalid_input_exits_2_naming_the_variable(
    sandbox: Sandbox, mode: str, change: dict[str, str], named: str
) -> None:
    """We test: each missing or invalid input is reported by name with exit code 2."""
    result = run_start_sh(mode, {**registration_env(sandbox), **change})

    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert TOKEN not in result.stderr


def test_empty_token_file_exits_2(sandbox: Sandbox) -> None:
    """We test: a Secret file holding only whitespace is refused before config.sh runs."""
    sandbox.token_file.chmod(0o640)
    sandbox.token_file.write_text("\n")
    result = run_start_sh("register", registration_env(sandbox))

    assert result.returncode == 2
    assert "is empty" in result.stderr
    assert not (sandbox.record / "config.args").exists()


def test_register_fails_with_config_sh_status_and_saves_nothing(sandbox: Sandbox) -> None:
    """We test: a failing config.sh fails the init container with its exit code and a hint, no state saved."""
    result = run_start_sh("register", {**registration_env(sandbox), "FAKE_CONFIG_EXIT": "3"})

    assert result.returncode == 3
    assert "config.sh failed with exit code 3" in result.stderr
    assert list(sandbox.state.iterdir()) == []


def test_run_starts_the_agent_once_with_no_token_anywhere(sandbox: Sandbox) -> None:
    """We test: run (in a fresh container filesystem) restores the identity and starts run.sh --once token-free."""
    register(sandbox)
    main_agent = sandbox.fresh_agent_dir("main-agent")
    result = run_start_sh("run", base_env(sandbox, agent_dir=main_agent))

    assert result.returncode == 0, result.stderr
    assert sandbox.recorded("run.args").splitlines() == ["--once"]
    run_env = sandbox.recorded("run.env")
    assert TOKEN not in run_env
    assert not set(TOKEN_VARS) & set(sandbox.recorded_env("run.env"))
    assert set(IDENTITY_FILES) <= set(sandbox.recorded("run.files").split())
    for name in IDENTITY_FILES:
        assert stat.S_IMODE((main_agent / name).stat().st_mode) == 0o600


def test_run_exits_with_the_agent_status(sandbox: Sandbox) -> None:
    """We test: the container's exit status is the agent's."""
    register(sandbox)
    result = run_start_sh("run", {**base_env(sandbox), "FAKE_RUN_EXIT": "4"})
    assert result.returncode == 4


@pytest.mark.parametrize("variable", TOKEN_VARS)
def test_run_refuses_a_token_in_its_environment(sandbox: Sandbox, variable: str) -> None:
    """We test: run exits 2 without starting the agent when any token variable is set."""
    register(sandbox)
    result = run_start_sh("run", {**base_env(sandbox), variable: str(sandbox.token_file)})

    assert result.returncode == 2
    assert f"{variable} is set in the run container" in result.stderr
    assert not (sandbox.record / "run.args").exists()


def test_run_refuses_a_readable_token_mount(sandbox: Sandbox) -> None:
    """We test: run exits 2 when the PAT Secret is mounted (readable) into the main container too."""
    register(sandbox)
    result = run_start_sh("run", {**base_env(sandbox), "AZP_SECRET_DIR": str(sandbox.secret)})

    assert result.returncode == 2
    assert "AZP_SECRET_DIR" in result.stderr
    assert not (sandbox.record / "run.args").exists()


def test_run_without_registration_exits_2(sandbox: Sandbox) -> None:
    """We test: run with an empty state dir says the register init container must run first."""
    result = run_start_sh("run", base_env(sandbox))

    assert result.returncode == 2
    assert f"AZP_STATE_DIR={sandbox.state} has no .agent" in result.stderr


def signal_run(env: dict[str, str], ready: Path, sig: signal.Signals) -> tuple[int, str]:
    """Start `start.sh run`, send it `sig` once `ready` exists; its exit status and stderr."""
    with subprocess.Popen(
        ["bash", str(START_SH), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A container's entrypoint starts with every signal at its default. A pytest-xdist worker ignores
        # SIGINT, and bash cannot trap a signal ignored when it starts, so give start.sh the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        try:
            wait_for(ready)
            os.kill(proc.pid, sig)
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stderr


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGTERM, "TERM"), (signal.SIGINT, "INT")])
def test_run_forwards_signals_to_the_agent(sandbox: Sandbox, sig: signal.Signals, name: str) -> None:
    """We test: a SIGTERM/SIGINT sent to start.sh reaches the agent, and start.sh exits with the agent's status."""
    register(sandbox)
    env = {**base_env(sandbox), "FAKE_RUN_WAIT": "1", "FAKE_RUN_EXIT": "0"}
    code, stderr = signal_run(env, sandbox.record / "run.ready", sig)

    assert sandbox.recorded("run.signal").strip() == name
    assert code == 0, stderr
    assert f"received SIG{name}" in stderr


def test_run_signals_the_listener_that_run_sh_starts(sandbox: Sandbox) -> None:
    """We test: SIGTERM reaches the listener even though run.sh (like the real one) traps nothing.

    run.sh itself dies of the signal, so start.sh reports 143, but only after the listener finished.
    """
    register(sandbox)
    env = {**base_env(sandbox), "FAKE_RUN_VIA_LISTENER": "1"}
    code, _ = signal_run(env, sandbox.record / "listener.ready", signal.SIGTERM)

    assert sandbox.recorded("listener.signal").strip() == "TERM"
    assert code == 128 + signal.SIGTERM


def test_once_configures_then_runs_without_the_token(sandbox: Sandbox) -> None:
    """We test: once configures in place, then run.sh --once sees no token variable or value, none on disk."""
    env = {**registration_env(sandbox), "AZP_TOKEN": TOKEN, "VSTS_AGENT_INPUT_TOKEN": TOKEN}
    result = run_start_sh("once", env)

    assert result.returncode == 0, result.stderr
    assert "--token\n" + TOKEN in sandbox.recorded("config.args")
    assert sandbox.recorded("run.args").splitlines() == ["--once"]
    assert TOKEN not in sandbox.recorded("run.env")
    assert not set(TOKEN_VARS) & set(sandbox.recorded_env("run.env"))
    # start.sh stays alive for the whole job: its own /proc/<pid>/environ must not hold the PAT either.
    assert TOKEN not in sandbox.recorded("run.parent-environ")
    assert "AZP_URL=" + ORG_URL in sandbox.recorded("run.parent-environ")
    assert files_containing_token(sandbox) == [], "the PAT was written to disk"
    # The mounted Secret is not ours to delete.
    assert sandbox.token_file.read_text() == TOKEN + "\n"
