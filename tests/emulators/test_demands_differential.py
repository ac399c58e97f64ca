"""We test: the product's demand matching (reconciler/demands.py, which plan() routes requests with) agrees with
the emulated service's rules (azp_simulation/service_demands.py, written from the service's sources) on generated
demands and capability maps; where they differ, the difference is one of KNOWN_DIFFERENCES, each pinned by an
example and its reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azp_simulation import service_demands as service
from reconciler import demands as product

NAMES = ("docker", "Docker", "DOCKER", "java", "JAVA", "Agent.Version", "agent.version", "Agent.OS", "node.js", "x-y")
OPERATORS = ("", "equals", "gtVersion", "Equals", "gtversion", "ltVersion", "-equals", "eq")
VERSIONS = ("1.0", "2.182.1", "4.261", "4.261.0", "4.261.0.0", "1.2.3.4.5", "1", "-0.2", " 4. 261 ", "+4.261")
VERSIONS_TOO = ("4.261.0-rc1", "1.2-3.4", "v1.0", "1..0", "", "17", "latest", "Linux", "linux", "1.0\xa0")
SPACES = st.text(alphabet=" \t\xa0", min_size=0, max_size=2)
VALUES = st.sampled_from(VERSIONS + VERSIONS_TOO) | st.text(alphabet="0123456789.+- abAB_", max_size=9)


def product_verdict(text: str, capabilities: dict[str, str]) -> bool | None:
    """None when the product does not parse the demand, else whether it is satisfied."""
    demand = product.parse_demand(text)
    return None if demand is None else product.demand_satisfied(demand, capabilities)


def service_verdict(text: str, capabilities: dict[str, str]) -> bool | None:
    """None when the service does not parse the demand, else whether it is satisfied."""
    try:
        demand = service.parse_demand(text)
    except service.DemandError:
        return None
    return service.satisfies([demand], capabilities)


def padded(version: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return None if version is None else version + (-1,) * (4 - len(version))


def versions_read_differently(value: str) -> bool:
    return padded(product.parse_version(value)) != service.parse_version(value)


KNOWN_DIFFERENCES: dict[str, tuple[str, dict[str, str], str]] = {
    # name: (demand, capabilities, why the two may answer differently)
    "empty equals value": (
        "java -equals \t",
        {"java": ""},
        "The service's DemandEquals refuses an empty value, so the demand does not parse and no request carries "
        "it; the product parses it as equals ''. Unreachable: the product only reads demands the service queued.",
    ),
    "leading minus in a version": (
        "Agent.Version -gtVersion 0.1",
        {"Agent.Version": "-0.2"},
        "ParseVersion keeps a '-' in first place (.NET reads '-0' as 0, so '-0.2' is 0.2); the product drops "
        "everything from the first '-' and reads nothing. No agent or task has such a version.",
    ),
    "final newline": (
        "docker\n",
        {"docker": "/usr/bin/docker"},
        ".NET's `$` also matches before a final newline, so the service parses 'docker\\n' as docker; the product "
        "uses fullmatch. Unreachable: the service serializes a demand without it (GetExpression).",
    ),
    "information separators": (
        "tool\x1fa",
        {"tool\x1fa": "1"},
        "Python's \\s counts U+001C-U+001F as white space, .NET's \\s does not: the service reads one name "
        "'tool\\x1fa', the product finds no parse. Unreachable in practice (control characters in a name).",
    ),
    "trailing NULs in a version": (
        "Agent.Version -gtVersion 1.0",
        {"Agent.Version": "1.0\x00"},
        ".NET's number parsing accepts trailing NUL characters; the product does not. Unreachable in practice.",
    ),
    "two capability names differing in case": (
        "JAVA -equals 17",
        {"Java": "8", "java": "17"},
        "The service cannot hold both (agents build their map case-insensitively, the service compares names "
        "ignoring case); the product takes the first it finds, the emulator the last. Unreachable.",
    ),
}


# Differences this test found in the product, since fixed there: each must stay agreed.
FIXED_IN_THE_PRODUCT: dict[str, tuple[str, dict[str, str]]] = {
    "a Unicode space around a version part is not trimmed": (
        "Agent.Version -gtVersion 1.0",
        {"Agent.Version": "1.0\xa0"},
    ),
    "a version part above Int32 is unreadable": ("Agent.Version -gtVersion 1.0", {"Agent.Version": "3.20240512093011"}),
    "ß is not SS": ("city -equals Straße", {"city": "STRASSE"}),
    "the Kelvin sign is not k": ("unit -equals \u212a", {"unit": "k"}),
    "simple upper case still matches": ("CITY -equals straße", {"city": "STRAßE"}),
}


@pytest.mark.parametrize("name", sorted(FIXED_IN_THE_PRODUCT))
def test_differences_fixed_in_the_product_stay_fixed(name: str) -> None:
    """We test: the product answers as the service on each difference this test once found."""
    demand, capabilities = FIXED_IN_THE_PRODUCT[name]
    assert product_verdict(demand, capabilities) == service_verdict(demand, capabilities)


@pytest.mark.parametrize("name", sorted(KNOWN_DIFFERENCES))
def test_each_known_difference_is_real(name: str) -> None:
    """We test: every listed difference shows on its example (so the list says only what is true today)."""
    demand, capabilities, _why = KNOWN_DIFFERENCES[name]
    assert product_verdict(demand, capabilities) != service_verdict(demand, capabilities)


def explained(text: str, capabilities: dict[str, str]) -> str | None:
    """The known difference a disagreement on these generated inputs comes from, or None."""
    parsed = product.parse_demand(text)
    if parsed is not None and parsed.op == "equals" and parsed.value == "":
        return "empty equals value"
    if parsed is not None and parsed.op == "gtVersion":
        compared = [parsed.value or "", *(v for k, v in capabilities.items() if k.casefold() == parsed.name.casefold())]
        if any(v.startswith("-") and versions_read_differently(v) for v in compared):
            return "leading minus in a version"
    return None


CAPABILITIES = st.dictionaries(
    st.sampled_from(("docker", "java", "Agent.Version", "Agent.OS", "node.js", "x-y", "gpu")), VALUES, max_size=5
)


@st.composite
def demand_texts(draw: st.DrawFn, capabilities: dict[str, str]) -> str:
    """A demand, half the time naming a capability the agent has (in some case) and demanding the value it has."""
    if capabilities and draw(st.booleans()):
        name, value = draw(st.sampled_from(sorted(capabilities.items())))
        name = draw(st.sampled_from((name, name.upper(), name.lower())))
    else:
        name, value = draw(st.sampled_from(NAMES)), draw(VALUES)
    operator = draw(st.sampled_from(OPERATORS))
    if not operator:
        return name + draw(st.sampled_from(("", "", " ")))
    return f"{name}{draw(SPACES)}-{operator}{draw(SPACES)}{value}"


@st.composite
def agents_and_demands(draw: st.DrawFn) -> tuple[dict[str, str], list[str]]:
    capabilities = draw(CAPABILITIES)
    return capabilities, draw(st.lists(demand_texts(capabilities), max_size=3))


@settings(max_examples=1000, deadline=None)
@given(case=agents_and_demands())
def test_product_and_service_agree_on_generated_demands(case: tuple[dict[str, str], list[str]]) -> None:
    """We test: per demand, the product and the service agree on whether it parses and whether it is satisfied,
    unless a listed difference explains it; and the product's satisfies_all agrees with the service on the list."""
    capabilities, texts = case
    for text in texts:
        product_says, service_says = product_verdict(text, capabilities), service_verdict(text, capabilities)
        if product_says != service_says:
            assert explained(text, capabilities) is not None, (text, capabilities, product_says, service_says)
    if all(explained(text, capabilities) is None for text in texts):
        # A demand the service does not parse counts as unmet (None): the product's choice, as no request has one.
        verdicts = [service_verdict(text, capabilities) for text in texts]
        assert product.satisfies_all(texts, capabilities) == all(verdicts), (texts, capabilities)
