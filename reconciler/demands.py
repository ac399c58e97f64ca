"""Azure DevOps demand matching: does an agent's capability map satisfy a job's demands?

The server's semantics (reference section 5): a demand is `<name>` (the capability exists, an empty
value counts) or `<name> -<op> <value>` with op `equals` (values equal ignoring case) or `gtVersion`
(capability version >= demanded version). Names and values compare as .NET's OrdinalIgnoreCase does.
A demand that does not parse can never be satisfied. Pure stdlib: plan() routes requests with it. The
emulator has its own reading of the service's sources (azp_simulation/service_demands.py), and
tests/emulators/test_demands_differential.py compares the two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

# Same shape as the service's parser: one name token, then optionally " -op value" where the value
# is the rest of the line, kept verbatim (quotes and inner spaces included).
_DEMAND = re.compile(r"(?P<name>\S+)(?:\s+-(?P<op>\S+)\s+(?P<value>.*))?")
_OPERATORS: dict[str, Literal["equals", "gtVersion"]] = {"equals": "equals", "gtVersion": "gtVersion"}
_VERSION_PART = re.compile(r"\+?[0-9]+")
_INT32_MAX = 2**31 - 1
_NUMBER_SPACE = "\t\n\v\f\r "
"""What .NET's Int32 parsing trims around a version part (not Unicode spaces such as U+00A0)."""


@dataclass(frozen=True)
class Demand:
    """One parsed demand; `value` is None for an exists demand."""

    name: str
    op: Literal["exists", "equals", "gtVersion"]
    value: str | None = None


@lru_cache(maxsize=4096)
def parse_demand(text: str) -> Demand | None:
    """Parse a demand string; None when the service would not parse it (unknown operator, empty).

    Cached: a queue repeats a few demand strings many times over (plan() and the emulator match every
    request), the result is immutable, and the cache is bounded."""
    match = _DEMAND.fullmatch(text)
    if match is None:
        return None
    name, op, value = match.group("name"), match.group("op"), match.group("value")
    if op is None:
        return Demand(name=name, op="exists")
    # The service's operator switch is case-sensitive: `-Equals` does not parse.
    known = _OPERATORS.get(op)
    if known is None:
        return None
    if known == "gtVersion" and not value:
        return None
    return Demand(name=name, op=known, value=value)


def parse_version(text: str) -> tuple[int, ...] | None:
    """A version as the service reads it: a pre-release tag (anything from the first '-') is
    dropped, then .NET `Version` parsing (2 to 4 parts, each a non-negative Int32). None when it fails."""
    core = text.split("-", 1)[0]
    parts = [part.strip(_NUMBER_SPACE) for part in core.split(".")]
    if not 2 <= len(parts) <= 4 or not all(_VERSION_PART.fullmatch(part) for part in parts):
        return None
    numbers = tuple(int(part) for part in parts)
    return numbers if max(numbers) <= _INT32_MAX else None


def _version_at_least(capability: str, demanded: str) -> bool:
    have, want = parse_version(capability), parse_version(demanded)
    # The service compares with "unparseable sorts lowest": a capability it cannot read fails a
    # readable demand, and a demand it cannot read is met by any capability that is present.
    if want is None:
        return True
    if have is None:
        return False
    # .NET treats a missing build/revision part as lower than any present one (-1 < 0), so 2.9 < 2.9.0.
    width = 4
    return have + (-1,) * (width - len(have)) >= want + (-1,) * (width - len(want))


def _ignore_case(text: str) -> str:
    """The key .NET's OrdinalIgnoreCase compares by: each character's simple upper case (ß stays ß, the Kelvin
    sign stays itself), not Python's casefold, which equates ß with ss and the Kelvin sign with k."""
    return "".join(upper if len(upper := char.upper()) == 1 else char for char in text)


def _lookup(capabilities: Mapping[str, str], name: str) -> str | None:
    if name in capabilities:
        return capabilities[name]
    wanted = _ignore_case(name)
    for key, value in capabilities.items():
        if _ignore_case(key) == wanted:
            return value
    return None


def demand_satisfied(demand: Demand, capabilities: Mapping[str, str]) -> bool:
    """Whether one parsed demand is satisfied by a capability map (names case-insensitive)."""
    value = _lookup(capabilities, demand.name)
    if value is None:
        return False
    if demand.op == "exists":
        return True
    if demand.op == "equals":
        return _ignore_case(value) == _ignore_case(demand.value or "")
    return _version_at_least(value, demand.value or "")


def satisfies_all(demands: Iterable[str], capabilities: Mapping[str, str]) -> bool:
    """Whether every demand string parses and is satisfied; an unparseable demand never is."""
    for text in demands:
        demand = parse_demand(text)
        if demand is None or not demand_satisfied(demand, capabilities):
            return False
    return True
