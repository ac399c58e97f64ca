"""We test: the emulator's demand rules (azp_simulation/service_demands.py) parse and evaluate demands as the
service's Demand, DemandExists, DemandEquals and DemandMinimumVersion classes do, edge cases included."""

from __future__ import annotations

import pytest

from azp_simulation.service_demands import (
    EQUALS,
    EXISTS,
    MINIMUM_VERSION,
    Demand,
    DemandError,
    parse_demand,
    parse_demand_list,
    parse_version,
    satisfies,
)

AGENT = {
    "docker": "/usr/bin/docker",
    "Agent.Version": "4.261.0",
    "Agent.OS": "Linux",
    "java": "17",
    "empty": "",
    "node": "20.11.1-nightly",
    "odd": "latest",
    "greeting": "hello world",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker", Demand("docker")),
        ("java -equals 17", Demand("java", EQUALS, "17")),
        ("Agent.Version -gtVersion 2.182.1", Demand("Agent.Version", MINIMUM_VERSION, "2.182.1")),
        ("java   -equals   17", Demand("java", EQUALS, "17")),
        ("java\t-equals\t17", Demand("java", EQUALS, "17")),
        ("java -equals 17 ", Demand("java", EQUALS, "17 ")),
        ("greeting -equals hello world", Demand("greeting", EQUALS, "hello world")),
        ('greeting -equals "hello"', Demand("greeting", EQUALS, '"hello"')),
        ("a -equals b -equals c", Demand("a", EQUALS, "b -equals c")),
        ("x-equals", Demand("x-equals")),
        ("java -equals 17\n", Demand("java", EQUALS, "17")),
        ("java\u00a0-equals\u00a017", Demand("java", EQUALS, "17")),
    ],
)
def test_grammar_parses_like_demand_try_parse(text: str, expected: Demand) -> None:
    """We test: the name is one token, the value everything after the operator and its white space, verbatim."""
    assert parse_demand(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " docker",
        "docker ",
        "java -Equals 17",
        "java -EQUALS 17",
        "java -gtversion 1.0",
        "java -ltVersion 1.0",
        "java --equals 17",
        "java -equals",
        "java -equals ",
        "java -gtVersion  ",
        "java equals 17",
        "java 17",
        "java -equals 17\nmore",
    ],
)
def test_what_does_not_parse_is_refused_with_the_demand_named(text: str) -> None:
    """We test: unknown or miscased operators, a missing or empty value, leading space or a second word fail."""
    with pytest.raises(DemandError, match="does not parse") as caught:
        parse_demand(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        ("java  -equals  17", "java -equals 17"),
        ("Agent.Version\t-gtVersion 2.1", "Agent.Version -gtVersion 2.1"),
        ("docker", "docker"),
    ],
)
def test_a_demand_serializes_as_the_service_writes_it(demand: str, expected: str) -> None:
    """We test: str() is GetExpression: one space each side of the operator."""
    assert str(parse_demand(demand)) == expected


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        ("docker", True),
        ("DOCKER", True),
        ("empty", True),
        ("gpu", False),
        ("java -equals 17", True),
        ("JAVA -equals 17", True),
        ("agent.os -equals LINUX", True),
        ("java -equals 17.0", False),
        ("java -equals 17 ", False),
        ("gpu -equals 1", False),
        ("greeting -equals HELLO WORLD", True),
        ("empty -equals x", False),
    ],
)
def test_exists_and_equals(demand: str, expected: bool) -> None:
    """We test: exists is the key present (empty value too); equals compares ignoring case; names ignore case."""
    assert satisfies([parse_demand(demand)], AGENT) is expected


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        ("Agent.Version -gtVersion 2.182.1", True),
        ("Agent.Version -gtVersion 4.261.0", True),
        ("Agent.Version -gtVersion 4.261.1", False),
        ("Agent.Version -gtVersion 4.261", True),
        ("Agent.Version -gtVersion 4.261.0.0", False),
        ("Agent.Version -gtVersion 5.0", False),
        ("agent.version -gtVersion 1.0", True),
        ("node -gtVersion 20.11.1", True),
        ("node -gtVersion 20.11.2-rc1", False),
        ("node -gtVersion 20.11.1-rc1", True),
        ("java -gtVersion 1.0", False),
        ("odd -gtVersion 1.0", False),
        ("odd -gtVersion whatever", True),
        ("java -gtVersion whatever", True),
        ("gpu -gtVersion whatever", False),
        ("empty -gtVersion 1.0", False),
    ],
)
def test_minimum_version(demand: str, expected: bool) -> None:
    """We test: gtVersion is >= (equal passes), missing parts are lowest, a pre-release tag is dropped, an
    unparseable capability fails, an unparseable demanded version is met by any capability of that name."""
    assert satisfies([parse_demand(demand)], AGENT) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2", (1, 2, -1, -1)),
        ("1.2.3", (1, 2, 3, -1)),
        ("1.2.3.4", (1, 2, 3, 4)),
        ("1.2.3.4.5", None),
        ("1", None),
        ("", None),
        ("1.2-beta.7", (1, 2, -1, -1)),
        ("-1.2", None),
        ("-0.2", (0, 2, -1, -1)),
        (" 1. 2 ", (1, 2, -1, -1)),
        ("+1.2", (1, 2, -1, -1)),
        ("1.2\x00", (1, 2, -1, -1)),
        ("1.2\x00 ", None),
        ("1..2", None),
        ("1.a", None),
        ("1.\u0662", None),
        ("1_0.2", None),
        ("2147483647.0", (2147483647, 0, -1, -1)),
        ("2147483648.0", None),
        ("v1.2", None),
    ],
)
def test_version_parsing_follows_system_version(text: str, expected: tuple[int, ...] | None) -> None:
    """We test: 2-4 Int32 parts (ASCII digits, a sign, white space), a tag from a non-leading '-' dropped."""
    assert parse_version(text) == expected


def test_all_demands_must_hold_and_no_demands_match_every_agent() -> None:
    """We test: demands are a conjunction; an empty list is satisfied by any agent, even one without capabilities."""
    docker_java = [parse_demand("docker"), parse_demand("java -equals 17")]
    assert satisfies(docker_java, AGENT)
    assert not satisfies([*docker_java, parse_demand("gpu")], AGENT)
    assert satisfies([], {})
    assert not satisfies([Demand("docker", EXISTS)], {})


def test_agents_query_splits_on_commas_without_trimming() -> None:
    """We test: the agents list's `demands` query is split on commas, empty pieces skipped, nothing trimmed."""
    assert parse_demand_list("docker,,java -equals 17,") == [Demand("docker"), Demand("java", EQUALS, "17")]
    with pytest.raises(DemandError, match="' java'"):
        parse_demand_list("docker, java")
