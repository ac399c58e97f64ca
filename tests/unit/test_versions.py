"""We test: the agent version has one source of truth that the config, the chart and the simulation agree with."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from azp_simulation import world
from reconciler import config as config_module
from reconciler.model import Config

ROOT = Path(__file__).resolve().parents[2]


def pinned_version() -> str:
    version: str = json.loads((ROOT / "agent-images" / "agent-version.json").read_text())["version"]
    return version


def test_agent_version_agrees_everywhere() -> None:
    """We test: agent-version.json, the config default, the chart's value and the simulated agents agree,
    so placeholders advertise the Agent.Version the images really run."""
    version = pinned_version()
    assert config_module.schema()["properties"]["agentVersion"]["default"] == version
    assert Config(organization="https://dev.azure.com/x", pools=()).agent_version == version
    chart_values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    assert chart_values["reconciler"]["agentVersion"] == version
    assert version == world.AGENT_VERSION and world.AGENT_IMAGE.endswith(f":{version}")
