"""Azure DevOps' demand rules: how the service parses a job's demands and decides which agents satisfy them.

Written from the service's own classes, never from the reconciler's code (reconciler/demands.py is the product's
reading of the same rules; tests/emulators/test_demands_differential.py compares the two):

- Grammar, `Demand.TryParse` (actions/runner src/Sdk/DTWebApi/WebApi/Demand.cs, the DistributedTask WebApi the
  service and agents share): the regular expression `^(?<name>\\S+)(\\s+\\-(?<opcode>\\S+)\\s+(?<value>.*))?$`.
  The name is one run of non-white characters; the value is everything after the operator and the white space that
  follows it, kept verbatim (quotes, inner and trailing spaces stay). The operator is switched on ordinally, so only
  `equals` and `gtVersion` exist, spelt exactly so (`-Equals` does not parse); no operator means exists. .NET's
  `\\s` is [\\f\\n\\r\\t\\v\\x85\\p{Z}], its `.` any character but a newline, its `$` the end or just before a final
  newline: _WHITE, _DEMAND and re's own `.` and `$` say the same here.
- `DemandEquals` and `DemandMinimumVersion` refuse an empty value in their constructors (ArgumentUtility
  .CheckStringForNullOrEmpty), so `java -equals ` (the operator followed by white space only) does not parse either.
- Evaluation: `DemandExists.IsSatisfied` is `capabilities.ContainsKey(name)` (an empty value counts);
  `DemandEquals.IsSatisfied` is the key present and `Value.Equals(capability, OrdinalIgnoreCase)`;
  `DemandMinimumVersion.IsSatisfied` is the key present and `CompareVersion(demanded, capability) <= 0`, so an equal
  version passes despite the operator's name. `ParseVersion` drops everything from the first `-` when it is not the
  first character (a pre-release tag), then `System.Version.TryParse`: two to four components separated by dots,
  each an Int32 of NumberStyles.Integer (ASCII digits, one leading sign, leading and trailing white space
  [\\t\\n\\v\\f\\r ], trailing NUL characters, as .NET's Number parsing allows) and not negative. Missing
  components are -1 and compare lowest, so `1.2` is below `1.2.0`. An unparseable version is null in
  `CompareVersion`: below any version, equal to another null. So an unparseable capability fails a parseable
  demand, and an unparseable demanded version is satisfied by any capability of that name (reference
  /work/shared/reference/azure-devops-api.md section 5 states the first half).
- Names: the service compares demand and capability names ordinally ignoring case (reference section 5: agents
  build their map case-insensitively, users observe the service matching names case-insensitively, KEDA #7111;
  the Azure DevOps Server 2022 service, decompiled in mjwrona/decompiled
  source/Microsoft.TeamFoundation.DistributedTask.Server/DataAccess/TaskAgentCapability.cs, compares capability
  names with OrdinalIgnoreCase). OrdinalIgnoreCase upper-cases each character by its simple case mapping:
  `ß` does not equal `SS`, unlike Python's casefold.
- The agents list's `demands` query (the same server's Controllers/TaskAgentsBaseController.cs, `AsDemands`): the
  value is split on commas, empty pieces skipped, nothing trimmed, and a piece that does not parse is an
  ArgumentException naming it (parse_demand_list).

Deliberately not emulated: the server folding several `Agent.Version -gtVersion` demands into the highest one
(`DemandMinimumVersion.MaxAndRemove`: for parseable versions all of them holding is the same thing); removing
duplicate demands (Demand.Equals ignores case); the simple case mapping of the few characters whose full upper case
is several characters (Python's `upper` gives no simple mapping for them: they are compared as they are); what the
service does with a pipeline whose demand does not parse (it never queues a job request with one: parse_demand
raises, and the emulator refuses to queue such a request).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

EXISTS = ""
EQUALS = "equals"
MINIMUM_VERSION = "gtVersion"
OPERATORS = (EQUALS, MINIMUM_VERSION)

_WHITE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_DEMAND = re.compile(rf"^(?P<name>[^{_WHITE}]+)([{_WHITE}]+-(?P<opcode>[^{_WHITE}]+)[{_WHITE}]+(?P<value>.*))?$")
_VERSION_COMPONENT = re.compile(r"[\t\n\v\f\r ]*(?P<number>[+-]?[0-9]+)[\t\n\v\f\r ]*\x00*")
_INT32_MAX = 2**31 - 1
_UNDEFINED_COMPONENT = -1

Version = tuple[int, int, int, int]


class DemandError(ValueError):
    """A demand string the service cannot parse."""


@dataclass(frozen=True)
class Demand:
    """One parsed demand: `operator` is EXISTS, EQUALS or MINIMUM_VERSION."""

    name: str
    operator: str = EXISTS
    value: str = ""

    def __str__(self) -> str:
        """The expression the service serializes a demand as (`GetExpression`): single spaces around the operator."""
        return self.name if self.operator == EXISTS else f"{self.name} -{self.operator} {self.value}"

    def is_satisfied(self, capabilities: Capabilities) -> bool:
        """Whether an agent with these capabilities satisfies this demand."""
        capability = capabilities.get(self.name)
        if capability is None:
            return False
        if self.operator == EQUALS:
            return ordinal_ignore_case(self.value) == ordinal_ignore_case(capability)
        if self.operator == MINIMUM_VERSION:
            return compare_versions(parse_version(self.value), parse_version(capability)) <= 0
        return True


class Capabilities:
    """An agent's capability map, its names looked up the way the service does (ordinal, ignoring case)."""

    def __init__(self, capabilities: Mapping[str, str]) -> None:
        self._by_name = {ordinal_ignore_case(name): value for name, value in capabilities.items()}

    def get(self, name: str) -> str | None:
        """The capability's value, or None when the agent has no capability of that name."""
        return self._by_name.get(ordinal_ignore_case(name))


def parse_demand(text: str) -> Demand:
    """Parse one demand as `Demand.TryParse` does; DemandError when the service could not."""
    match = _DEMAND.match(text)
    opcode = match["opcode"] if match else None
    if match is None or (opcode is not None and (opcode not in OPERATORS or not match["value"])):
        raise DemandError(
            f"demand {text!r} does not parse: write 'name', 'name -equals value' or 'name -gtVersion version' "
            "(the operator spelt exactly so, a value after it)"
        )
    if opcode is None:
        return Demand(match["name"])
    return Demand(match["name"], opcode, match["value"])


def parse_demand_list(query_value: str) -> list[Demand]:
    """The agents list's `demands` query: comma-separated, empty pieces skipped, nothing trimmed."""
    return [parse_demand(piece) for piece in query_value.split(",") if piece]


def satisfies(demands: Iterable[Demand], capabilities: Mapping[str, str]) -> bool:
    """Whether an agent with `capabilities` satisfies every one of `demands`."""
    lookup = Capabilities(capabilities)
    return all(demand.is_satisfied(lookup) for demand in demands)


def ordinal_ignore_case(text: str) -> str:
    """A key that is equal for two strings exactly when .NET's OrdinalIgnoreCase calls them equal."""
    return "".join(upper if len(upper := char.upper()) == 1 else char for char in text)


def parse_version(text: str) -> Version | None:
    """`DemandMinimumVersion.ParseVersion`: the version with missing components -1, or None if it does not parse."""
    dash = text.find("-")
    if dash > 0:
        text = text[:dash]
    pieces = text.split(".") if text else []
    if not 2 <= len(pieces) <= 4:
        return None
    components = []
    for piece in pieces:
        match = _VERSION_COMPONENT.fullmatch(piece)
        number = int(match["number"]) if match else -1
        if not 0 <= number <= _INT32_MAX:
            return None
        components.append(number)
    components += [_UNDEFINED_COMPONENT] * (4 - len(components))
    return (components[0], components[1], components[2], components[3])


def compare_versions(first: Version | None, second: Version | None) -> int:
    """`DemandMinimumVersion.CompareVersion`: negative, 0 or positive; an unparseable version is the lowest."""
    if first is None or second is None:
        return (first is not None) - (second is not None)
    return (first > second) - (first < second)
