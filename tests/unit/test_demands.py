"""We test: demand parsing and matching follow the service's rules (reference section 5)."""

from __future__ import annotations

import pytest

from reconciler.demands import Demand, demand_satisfied, parse_demand, parse_version, satisfies_all

CAPS = {
    "docker": "/usr/bin/docker",
    "Agent.Version": "4.261.0",
    "Agent.OS": "Linux",
    "java": "17",
    "empty": "",
    "node.js": "v20.11.1",
    "dotnet": "8.0.100-rc.2",
    "tool": "2.10",
    "short": "3.1",
    "label": "has spaces here",
    "quoted": '"x"',
}

# (demands, capabilities, expected)
CASES: list[tuple[list[str], dict[str, str], bool]] = [
    (["docker"], CAPS, True),
    (["Docker"], CAPS, True),
    (["DOCKER"], CAPS, True),
    (["podman"], CAPS, False),
    (["empty"], CAPS, True),
    (["Agent.OS -equals Linux"], CAPS, True),
    (["Agent.OS -equals linux"], CAPS, True),
    (["agent.os -equals LINUX"], CAPS, True),
    (["Agent.OS -equals Windows_NT"], CAPS, False),
    (["java -equals 17"], CAPS, True),
    (["java -equals 17.0"], CAPS, False),
    (["missing -equals 1"], CAPS, False),
    (["empty -equals x"], CAPS, False),
    (["Agent.Version -gtVersion 2.182.1"], CAPS, True),
    (["Agent.Version -gtVersion 4.261.0"], CAPS, True),
    (["Agent.Version -gtVersion 4.261.1"], CAPS, False),
    (["Agent.Version -gtVersion 5.0"], CAPS, False),
    (["agent.version -gtVersion 4.0"], CAPS, True),
    (["tool -gtVersion 2.9"], CAPS, True),
    (["tool -gtVersion 2.11"], CAPS, False),
    (["tool -gtVersion 2.10"], CAPS, True),
    (["tool -gtVersion 2.10.0"], CAPS, False),
    (["short -gtVersion 3.1"], CAPS, True),
    (["short -gtVersion 3"], CAPS, True),
    (["dotnet -gtVersion 8.0.100"], CAPS, True),
    (["dotnet -gtVersion 8.0.100-preview.1"], CAPS, True),
    (["dotnet -gtVersion 8.0.101"], CAPS, False),
    (["node.js -gtVersion 18.0"], CAPS, False),
    (["docker -gtVersion 1.0"], CAPS, False),
    (["missing -gtVersion 1.0"], CAPS, False),
    (["x -gtVersion 1.2.3.4"], {"x": "1.2.3.4"}, True),
    (["x -gtVersion 1.2.3.5"], {"x": "1.2.3.4"}, False),
    (["x -gtVersion 1.0"], {"x": "1.2.3.4.5"}, False),
    (["docker", "java -equals 17", "Agent.Version -gtVersion 2.163.1"], CAPS, True),
    (["docker", "java -equals 11", "Agent.Version -gtVersion 2.163.1"], CAPS, False),
    ([], CAPS, True),
    ([], {}, True),
    (["docker"], {}, False),
    (["java -eq 17"], CAPS, False),
    (["java -Equals 17"], CAPS, False),
    (["java -notequals 8"], CAPS, False),
    (["java equals 17"], CAPS, False),
    (["label -equals has spaces here"], CAPS, True),
    (["label -equals has  spaces here"], CAPS, False),
    (['quoted -equals "x"'], CAPS, True),
    (["quoted -equals x"], CAPS, False),
    ([""], CAPS, False),
]


@pytest.mark.parametrize(("demands", "capabilities", "expected"), CASES)
def test_satisfies_all(demands: list[str], capabilities: dict[str, str], expected: bool) -> None:
    """We test: each demand list against a capability map gives the service's answer."""
    assert satisfies_all(demands, capabilities) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker", Demand(name="docker", op="exists")),
        ("java -equals 17", Demand(name="java", op="equals", value="17")),
        ("Agent.Version -gtVersion 2.182.1", Demand(name="Agent.Version", op="gtVersion", value="2.182.1")),
        ('label -equals "a b"', Demand(name="label", op="equals", value='"a b"')),
        ("name -equals  two  spaces ", Demand(name="name", op="equals", value="two  spaces ")),
        ("java -eq 17", None),
        ("java -gtversion 1.0", None),
        ("", None),
        ("two words", None),
    ],
)
def test_parse_demand(text: str, expected: Demand | None) -> None:
    """We test: the grammar keeps the value verbatim and rejects unknown operators."""
    assert parse_demand(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.10", (2, 10)),
        ("4.261.0", (4, 261, 0)),
        ("1.2.3.4", (1, 2, 3, 4)),
        ("8.0.100-rc.2", (8, 0, 100)),
        ("3", None),
        ("1.2.3.4.5", None),
        ("v20.1", None),
        ("1.x", None),
        ("", None),
    ],
)
def test_parse_version(text: str, expected: tuple[int, ...] | None) -> None:
    """We test: 2 to 4 numeric parts, pre-release tag dropped, anything else unparseable."""
    assert parse_version(text) == expected


def test_unparseable_demanded_version_is_met_by_any_present_capability() -> None:
    """We test: the service sorts an unreadable version lowest, so a garbled demand only needs the name."""
    demand = Demand(name="tool", op="gtVersion", value="latest")
    assert demand_satisfied(demand, {"tool": "2.0"})
    assert not demand_satisfied(demand, {})
