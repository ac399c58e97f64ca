"""We test: helm refuses bad values with an error that names the key (and, for cross-field rules,
the fix), in the wording of both helm 3 and helm 4; and accepts the good neighbours of each case."""

from __future__ import annotations

import re
from typing import Any

import pytest
from chart_helpers import ORGANIZATION, TEST_PAT, config_of, render_chart, render_failure, with_defaults

# (id, values, patterns the error must match, case-insensitive)
BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("typo-top-level-key", {**with_defaults(), "organisation": {"url": ORGANIZATION}}, ["organisation"]),
    ("typo-nested-key", with_defaults(reconciler={"shedule": "* * * * *"}), ["shedule"]),
    ("string-for-integer", with_defaults(reconciler={"loop": {"loopFor": "forty"}}), ["loopFor"]),
    ("string-for-boolean", with_defaults(agent={"privileged": "yes"}), ["privileged"]),
    ("pools-as-string", with_defaults(pools="Default"), ["pools"]),
    ("pool-without-name", with_defaults(pools=[{"maxAgents": 2}]), ["name"]),
    ("negative-max-agents", with_defaults(pools=[{"name": "Default", "maxAgents": -1}]), ["maxAgents"]),
    ("missing-organization-url", {"auth": {"pat": TEST_PAT}}, [r"organization\.url is required"]),
    (
        "url-inside-a-project",
        with_defaults(organization={"url": "https://dev.azure.com/contoso/web/_build"}),
        [r"organization[./]url"],
    ),
    (
        "url-of-a-project",
        with_defaults(organization={"url": "https://dev.azure.com/contoso/web"}),
        [r"organization\.url", "not an organization URL"],
    ),
    (
        "http-without-opt-in",
        with_defaults(organization={"url": "http://ado.contoso.local/tfs/DefaultCollection"}),
        [r"organization\.url", r"organization\.allowInsecureHttp"],
    ),
    (
        "pat-and-existing-secret",
        with_defaults(auth={"pat": TEST_PAT, "existingSecret": "my-pat"}),
        [r"auth\.pat", r"auth\.existingSecret", "both set"],
    ),
    ("no-credentials", {"organization": {"url": ORGANIZATION}}, [r"auth\.pat", r"auth\.existingSecret"]),
    ("cron-not-five-fields", with_defaults(reconciler={"schedule": "0 * * * * *"}), ["schedule"]),
    ("cron-words", with_defaults(reconciler={"schedule": "every minute"}), ["schedule"]),
    ("cron-out-of-range", with_defaults(reconciler={"schedule": "61 * * * *"}), [r"reconciler\.schedule", "61"]),
    (
        "loop-for-not-below-period",
        with_defaults(reconciler={"schedule": "* * * * *", "loop": {"loopFor": 60}}),
        [r"reconciler\.loop\.loopFor", "60"],
    ),
    (
        "loop-for-not-below-deadline",
        with_defaults(reconciler={"schedule": "*/5 * * * *", "activeDeadlineSeconds": 100, "loop": {"loopFor": 100}}),
        [r"reconciler\.loop\.loopFor"],
    ),
    (
        "deadline-not-below-period",
        with_defaults(reconciler={"activeDeadlineSeconds": 60}),
        [r"reconciler\.activeDeadlineSeconds", "period"],
    ),
    (
        "unknown-job-template",
        with_defaults(pools=[{"name": "Default", "jobTemplate": "gpu"}]),
        [r"pools\[0\]\.jobTemplate", "gpu"],
    ),
    (
        "ambiguous-job-template",
        with_defaults(jobTemplates={"linux": "", "big": ""}, pools=[{"name": "Default"}]),
        [r"pools\[0\]\.jobTemplate", "one of big, linux"],
    ),
    (
        "template-needs-a-job-template",
        with_defaults(pools=[{"name": "Default", "templates": [{"name": "gpu"}]}]),
        [r"pools\[0\]\.templates\[0\]\.jobTemplate"],
    ),
    (
        "duplicate-pool",
        with_defaults(pools=[{"name": "Default"}, {"name": "Default"}]),
        [r"pools\[1\]\.name", "twice"],
    ),
    (
        "templates-and-job-template",
        with_defaults(pools=[{"name": "Default", "jobTemplate": "linux", "templates": [{"name": "linux"}]}]),
        [r"pools\[0\]"],
    ),
    ("reserved-template-name", with_defaults(jobTemplates={"linux": "", "config": ""}), [r"jobTemplates\.config"]),
    (
        "shard-index-too-big",
        with_defaults(reconciler={"shard": {"index": 2, "count": 2}}),
        [r"reconciler\.shard\.index"],
    ),
    ("long-job-name-prefix", with_defaults(reconciler={"jobNamePrefix": "much-too-long-prefix"}), ["jobNamePrefix"]),
    ("unknown-log-format", with_defaults(reconciler={"logFormat": "xml"}), ["logFormat"]),
    ("unknown-agent-mode", with_defaults(agent={"mode": "forever"}), ["mode"]),
    ("empty-pools", with_defaults(pools=[]), ["pools"]),
]


@pytest.mark.parametrize(("values", "patterns"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_values_are_refused_with_the_key_named(values: dict[str, Any], patterns: list[str], helm: str) -> None:
    """We test: helm fails and its error text names the offending key."""
    error = render_failure(values, helm=helm)
    for pattern in patterns:
        assert re.search(pattern, error, re.IGNORECASE), f"{pattern!r} not in:\n{error}"


GOOD_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("dev-azure-com", with_defaults(organization={"url": "https://dev.azure.com/contoso"})),
    ("dev-azure-com-trailing-slash", with_defaults(organization={"url": "https://dev.azure.com/contoso/"})),
    ("visualstudio-com", with_defaults(organization={"url": "https://contoso.visualstudio.com"})),
    ("server-collection", with_defaults(organization={"url": "https://ado.contoso.local/tfs/DefaultCollection"})),
    ("server-with-port", with_defaults(organization={"url": "https://ado.contoso.local:8443/DefaultCollection"})),
    (
        "http-with-opt-in",
        with_defaults(
            organization={"url": "http://ado.contoso.local/tfs/DefaultCollection", "allowInsecureHttp": True}
        ),
    ),
    ("existing-secret", with_defaults(auth={"pat": "", "existingSecret": "my-pat"})),
    ("hourly-macro", with_defaults(reconciler={"schedule": "@hourly"})),
    ("every-five-minutes", with_defaults(reconciler={"schedule": "*/5 * * * *", "loop": {"loopFor": 240}})),
    ("weekday-names", with_defaults(reconciler={"schedule": "*/2 8-18 * * MON-FRI"})),
    ("one-pass-per-run", with_defaults(reconciler={"loop": {"loopFor": 0}})),
]


@pytest.mark.parametrize("values", [c[1] for c in GOOD_VALUES], ids=[c[0] for c in GOOD_VALUES])
def test_good_neighbours_render(values: dict[str, Any], helm: str) -> None:
    """We test: values just on the right side of each rule render, and their URL reaches config.yaml."""
    document = config_of(render_chart(values, helm=helm))
    assert document["organization"] == values["organization"]["url"].rstrip("/")
