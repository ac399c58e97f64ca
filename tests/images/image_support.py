"""Helpers for the image tests: paths, a fake agent (config.sh / run.sh) that records what start.sh did."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "agent-images"
START_SH = IMAGES / "linux" / "start.sh"
TOKEN = "pat-s3cr3t-0123456789abcdef"
ORG_URL = "https://dev.azure.com/contoso"

# The fake config.sh writes the files the real agent writes and records its arguments (one per line)
# and environment; FAKE_CONFIG_EXIT makes it fail.
FAKE_CONFIG_SH = r"""#!/usr/bin/env bash
set -eu
printf '%s\n' "$@" > "$FAKE_RECORD/config.args"
env > "$FAKE_RECORD/config.env"
pwd > "$FAKE_RECORD/config.cwd"
if [ "${FAKE_CONFIG_EXIT:-0}" != 0 ]; then exit "$FAKE_CONFIG_EXIT"; fi
here="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${FAKE_NO_AGENT_ID:-}" ]; then
  printf '{"agentName": "fake", "workFolder": "_work"}\n' > "$here/.agent"
else
  # As the real agent writes it: indented JSON, camelCase names.
  printf '{\n  "agentId": 4711,\n  "agentName": "fake",\n  "poolId": 12,\n  "workFolder": "_work"\n}\n' > "$here/.agent"
fi
printf '{"scheme": "OAuth"}\n' > "$here/.credentials"
printf '{"d": "private-key"}\n' > "$here/.credentials_rsaparams"
if [ -n "${FAKE_WRITE_CAPABILITIES:-}" ]; then printf 'fake=1\n' > "$here/.capabilities"; fi
"""

# The fake run.sh records its arguments, environment and the agent files it finds; with FAKE_RUN_WAIT it
# waits for SIGTERM/SIGINT, records which one came, and exits with FAKE_RUN_EXIT.
FAKE_RUN_SH = r"""#!/usr/bin/env bash
set -u
here="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${FAKE_RUN_VIA_LISTENER:-}" ]; then
  # Like the real run.sh: the listener runs in the foreground and run.sh itself traps nothing.
  "$here/bin/Agent.Listener" run "$@"
  exit $?
fi
printf '%s\n' "$@" > "$FAKE_RECORD/run.args"
env > "$FAKE_RECORD/run.env"
tr '\0' '\n' < "/proc/$PPID/environ" > "$FAKE_RECORD/run.parent-environ"
ls -A "$here" > "$FAKE_RECORD/run.files"
got=""
trap 'got=TERM' TERM
trap 'got=INT' INT
if [ -n "${FAKE_RUN_WAIT:-}" ]; then
  : > "$FAKE_RECORD/run.ready"
  while [ -z "$got" ]; do sleep 0.05; done
  printf '%s\n' "$got" > "$FAKE_RECORD/run.signal"
fi
exit "${FAKE_RUN_EXIT:-0}"
"""


# Stands in for bin/Agent.Listener when FAKE_RUN_VIA_LISTENER is set: handles SIGTERM like the real one.
FAKE_LISTENER = r"""#!/usr/bin/env bash
set -u
got=""
trap 'got=TERM' TERM
trap 'got=INT' INT
: > "$FAKE_RECORD/listener.ready"
while [ -z "$got" ]; do sleep 0.05; done
printf '%s\n' "$got" > "$FAKE_RECORD/listener.signal"
exit 0
"""


@dataclass(frozen=True)
class Sandbox:
    """Directories standing in for one pod: agent install, shared state, work, Secret mount, records."""

    root: Path
    agent: Path
    state: Path
    work: Path
    secret: Path
    record: Path

    @property
    def token_file(self) -> Path:
        """The mounted Secret file holding the PAT (with the trailing newline hand-edited Secrets have)."""
        return self.secret / "token"

    def fresh_agent_dir(self, name: str) -> Path:
        """A second copy of the agent install, as the main container's own image filesystem would be."""
        path = self.root / name
        install_fake_agent(path)
        return path

    def recorded(self, name: str) -> str:
        """The content of one file the fake agent recorded."""
        return (self.record / name).read_text()

    def recorded_env(self, name: str) -> dict[str, str]:
        """The environment the fake config.sh or run.sh saw, as a dict."""
        env: dict[str, str] = {}
        for line in self.recorded(name).splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
        return env


def install_fake_agent(path: Path) -> None:
    """Write executable fake config.sh and run.sh into path."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "bin").mkdir(exist_ok=True)
    scripts = (("config.sh", FAKE_CONFIG_SH), ("run.sh", FAKE_RUN_SH), ("bin/Agent.Listener", FAKE_LISTENER))
    for name, text in scripts:
        script = path / name
        script.write_text(text)
        script.chmod(0o755)


def make_sandbox(tmp_path: Path) -> Sandbox:
    """A fresh fake pod: agent dir with fake scripts, empty state/work dirs, a Secret dir with the PAT."""
    box = Sandbox(
        root=tmp_path,
        agent=tmp_path / "agent",
        state=tmp_path / "state",
        work=tmp_path / "work",
        secret=tmp_path / "secret",
        record=tmp_path / "record",
    )
    install_fake_agent(box.agent)
    for path in (box.state, box.work, box.secret, box.record):
        path.mkdir()
    box.token_file.write_text(TOKEN + "\n")
    box.token_file.chmod(0o440)
    return box


def base_env(box: Sandbox, *, agent_dir: Path | None = None) -> dict[str, str]:
    """The environment of a start.sh run: PATH, HOME and the AZP_* inputs, nothing from pytest."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(box.root),
        "HOSTNAME": "azp-linux-7f9c2",
        "FAKE_RECORD": str(box.record),
        "AZP_AGENT_DIR": str(agent_dir or box.agent),
        "AZP_STATE_DIR": str(box.state),
        "AZP_WORK": str(box.work),
        # Points `run` at a directory with no token unless a test puts one there.
        "AZP_SECRET_DIR": str(box.root / "no-secret-here"),
        # The container's terminationMessagePath, here a file of the sandbox.
        "AZP_TERMINATION_LOG": str(box.root / "termination-log"),
    }


def registration_env(box: Sandbox) -> dict[str, str]:
    """The init container's environment as the reconciler renders it."""
    return {
        **base_env(box),
        "AZP_URL": ORG_URL,
        "AZP_POOL": "linux-pool",
        "AZP_AGENT_NAME": "azp-linux-7f9c2",
        "AZP_TOKEN_FILE": str(box.token_file),
    }


def run_start_sh(mode: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run start.sh with exactly the given environment; returns the completed process."""
    return subprocess.run(
        ["bash", str(START_SH), mode],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
