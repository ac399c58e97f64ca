"""We test: the chart's `arch` and `standby` keys reach the reconciler, which routes and keeps standby by them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chart_helpers import config_of, render_chart, render_failure, with_defaults
from chart_reconciler import agent_jobs, load_config

OFFICE = {"days": ["Mon-Fri"], "from": "08:00", "to": "18:00", "timeZone": "Europe/Paris", "minIdle": 2}


def mixed(**template_keys: Any) -> dict[str, Any]:
    return with_defaults(
        pools=[
            {
                "name": "Mixed",
                "standby": [{"from": "22:00", "to": "06:00", "minIdle": 1}],
                "templates": [
                    {"name": "linux", "capabilities": {}},
                    {"name": "arm", "jobTemplate": "linux", "arch": "arm64", "standby": [OFFICE], **template_keys},
                ],
            }
        ]
    )


def test_arch_and_standby_reach_the_reconciler(tmp_path: Path) -> None:
    """We test: the rendered config carries arch and standby; the reconciler loads them (the ARM64 template
    advertises ARM64, the other X64) and the ARM64 template's Jobs select arm64 nodes."""
    objects = render_chart(mixed())
    pool = config_of(objects)["pools"][0]
    assert pool["standby"] == [{"from": "22:00", "to": "06:00", "minIdle": 1}]
    assert pool["templates"][1]["arch"] == "arm64" and pool["templates"][1]["standby"] == [OFFICE]
    config = load_config(objects, tmp_path)
    linux, arm = config.pools[0].templates
    assert (linux.known_capabilities["Agent.OSArchitecture"], arm.known_capabilities["Agent.OSArchitecture"]) == (
        "X64",
        "ARM64",
    )
    assert [len(arm.standby), len(config.pools[0].standby)] == [1, 1]
    selectors = [job["spec"]["template"]["spec"].get("nodeSelector", {}) for job in agent_jobs(objects, tmp_path)]
    assert [s.get("kubernetes.io/arch") for s in selectors] == [None, "arm64"]


def test_bad_arch_or_window_fails_the_render_naming_the_key() -> None:
    """We test: an arch Kubernetes does not name, or a window without minIdle, is refused by the chart schema;
    a window's minIdle above the template's maxAgents fails the render naming the key."""
    assert "arch" in render_failure(mixed(arch="x86_64"))
    assert "minIdle" in render_failure(mixed(standby=[{"from": "08:00", "to": "18:00"}]))
    message = render_failure(mixed(maxAgents=1))
    assert "pools[0].templates[1].standby[0].minIdle: 2 is above pools[0].templates[1].maxAgents (1)" in message
