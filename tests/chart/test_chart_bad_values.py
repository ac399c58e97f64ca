"""We test: helm refuses bad values with an error that names the key (and, for cross-field rules,
the fix), in the wording of both helm 3 and helm 4; and accepts the good neighbours of each case."""

from __future__ import annotations

import re
from typing import Any

import pytest
from chart_helpers import CHART, ORGANIZATION, TEST_PAT, config_of, render_chart, render_failure, with_defaults

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

_JOB = "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n        - name: agent\n"


def _job_with(container: str) -> str:
    """A one-container Job template whose container gets the extra YAML lines given (indented 10)."""
    return _JOB + "".join(f"          {line}\n" for line in container.splitlines())


def _templates(text: Any) -> dict[str, Any]:
    return with_defaults(
        jobTemplates={"linux": "", "custom": text}, pools=[{"name": "Default", "jobTemplate": "custom"}]
    )


SCALED_JOB = (
    "apiVersion: keda.sh/v1alpha1\nkind: ScaledJob\nmetadata:\n  name: azdevops-scaledjob\nspec:\n"
    "  jobTargetRef:\n    template:\n      spec:\n        containers:\n          - name: agent\n"
)
DEPLOYMENT = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers: []\n"

# Issue 13 item 5: what users really pass, refused in the chart's words (never a bare regex).
PLAIN_WORDS: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "keda-scaled-job",
        _templates(SCALED_JOB),
        [r"jobTemplates\.custom", "ScaledJob", r"spec\.jobTargetRef\.template"],
    ),
    ("deployment", _templates(DEPLOYMENT), [r"jobTemplates\.custom", "Deployment", r"spec\.template", "Job"]),
    ("two-documents", _templates(_JOB + "---\napiVersion: v1\nkind: ConfigMap\n"), ["2 YAML documents"]),
    ("file-path-with-set", _templates("job.yaml"), [r"--set-file jobTemplates\.custom=job\.yaml"]),
    ("relative-file-path", _templates("./x/job.yaml"), [r"--set-file jobTemplates\.custom=\./x/job\.yaml"]),
    ("not-yaml", _templates("kind: Job\n  spec: [\n"), [r"jobTemplates\.custom", "not valid YAML"]),
    ("job-v1beta1", _templates(_JOB.replace("batch/v1", "batch/v1beta1")), ["use batch/v1"]),
    (
        "job-without-containers",
        _templates("apiVersion: batch/v1\nkind: Job\n"),
        [r"jobTemplates\.custom", r"spec\.template\.spec\.containers is missing"],
    ),
    *[
        (f"literal-{name}", _templates(_job_with(f"env:\n  - name: {name}\n    value: abc")), [name, "literal"])
        for name in ("AZP_TOKEN", "VSTS_TOKEN", "VSTS_AGENT_INPUT_TOKEN", "ORG_PAT", "AZURE_DEVOPS_EXT_PAT")
    ],
    ("token-in-args", _templates(_job_with("args: [--token, abc123]")), ["literal --token", "agent"]),
    (
        "token-in-command",
        _templates(_job_with("command: [sh, -c, './config.sh --unattended --token=abc123']")),
        ["literal --token"],
    ),
    (
        "min-idle-above-max",
        with_defaults(pools=[{"name": "Default", "maxAgents": 2, "minIdle": 3}]),
        [r"pools\[0\]\.minIdle: 3 is above pools\[0\]\.maxAgents \(2\)"],
    ),
    (
        "min-agents-above-template-max",
        with_defaults(pools=[{"name": "Default", "templates": [{"name": "linux", "maxAgents": 1, "minAgents": 2}]}]),
        [r"pools\[0\]\.templates\[0\]\.minAgents: 2 is above"],
    ),
    (
        "min-idle-above-default-max",
        with_defaults(pools=[{"name": "Default", "minIdle": 11}]),
        [r"pools\[0\]\.minIdle: 11 is above pools\[0\]\.maxAgents, unset, so the default \(10\)"],
    ),
    (
        "template-min-idle-above-pool-max",
        with_defaults(pools=[{"name": "Default", "maxAgents": 2, "templates": [{"name": "linux", "minIdle": 3}]}]),
        [r"pools\[0\]\.templates\[0\]\.minIdle: 3 is above .*the pool's \(2\)"],
    ),
    (
        "pool-names-differ-in-case",
        with_defaults(pools=[{"name": "Default"}, {"name": "default"}]),
        [r"pools\[1\]\.name", "ignore case"],
    ),
    (
        "project-on-visualstudio-com",
        with_defaults(organization={"url": "https://contoso.visualstudio.com/web"}),
        [r"organization\.url", "project", "https://contoso.visualstudio.com"],
    ),
    ("url-not-a-url", with_defaults(organization={"url": "dev.azure.com/contoso"}), ["not an organization URL"]),
    (
        "repository-with-tag",
        with_defaults(agent={"image": {"repository": "ghcr.io/azp-agents/agent-linux:1.2"}}),
        [r"agent\.image\.repository", "already holds a tag", r"agent\.image\.tag=1\.2"],
    ),
    (
        "repository-with-digest",
        with_defaults(reconciler={"image": {"repository": "r.example/reconciler@sha256:" + "a" * 64}}),
        [r"reconciler\.image\.repository", "digest", r"reconciler\.image\.digest=sha256:"],
    ),
    ("tag-with-colon", with_defaults(agent={"image": {"tag": "v1:2"}}), [r"agent\.image\.tag", "image tag"]),
    *[
        (f"placeholder-pat-{pat}", with_defaults(auth={"pat": pat}), [r"auth\.pat", "placeholder"])
        for pat in ("your-pat", "<PAT>", "$AZP_PAT", "changeme", "xxx", "YOUR_PAT", "${AZP_PAT}")
    ],
    (
        "allow-privileged-in-restricted-namespace",
        with_defaults(
            pools=[{"name": "Default", "namespace": "agents"}],
            agent={"createNamespaces": True, "namespaceLabels": {"pod-security.kubernetes.io/enforce": "baseline"}},
            reconciler={"podPolicy": {"allowPrivileged": True}},
        ),
        [r"agent\.namespaceLabels", "baseline", r"reconciler\.podPolicy\.allowPrivileged"],
    ),
    (
        "docker-socket-in-restricted-namespace",
        with_defaults(
            pools=[{"name": "Default", "namespace": "agents"}],
            agent={
                "createNamespaces": True,
                "namespaceLabels": {"pod-security.kubernetes.io/enforce": "restricted"},
                "dockerSocket": {"enabled": True, "groupId": 999},
            },
        ),
        [r"agent\.dockerSocket\.enabled", "restricted"],
    ),
    (
        "buildkit-in-baseline-namespace",
        with_defaults(
            pools=[{"name": "Default", "namespace": "agents"}],
            agent={
                "createNamespaces": True,
                "namespaceLabels": {"pod-security.kubernetes.io/enforce": "baseline"},
                "buildkit": {"enabled": True},
            },
        ),
        [r"agent\.namespaceLabels", "baseline", r"agent\.buildkit\.enabled"],
    ),
    (
        "docker-socket-without-group",
        with_defaults(agent={"dockerSocket": {"enabled": True}}),
        [r"agent\.dockerSocket\.groupId", "stat -c %g /var/run/docker.sock", r"agent\.buildkit\.enabled"],
    ),
    (
        "buildkit-without-built-in-template",
        with_defaults(jobTemplates={"linux": "containers:\n  - name: agent\n"}, agent={"buildkit": {"enabled": True}}),
        [r"agent\.buildkit\.enabled", "built-in job template", "Container builds"],
    ),
    (
        "buildkit-image-digest-in-tag",
        with_defaults(agent={"buildkit": {"enabled": True, "image": {"tag": "v0.32.2-rootless@sha256:ab"}}}),
        [r"agent\.buildkit\.image\.tag"],
    ),
    (
        "cron-tz-in-schedule",
        with_defaults(reconciler={"schedule": "CRON_TZ=Europe/Paris * * * * *"}),
        [r"reconciler\.schedule", r"reconciler\.timeZone=Europe/Paris"],
    ),
    ("bad-time-zone", with_defaults(reconciler={"timeZone": "Paris time"}), [r"reconciler\.timeZone", "tz database"]),
    ("secret-name", with_defaults(auth={"pat": "", "existingSecret": "My_Secret"}), [r"auth\.existingSecret", "name"]),
    ("pull-secret-name", with_defaults(imagePullSecrets=[{"name": "Reg Cred"}]), [r"imagePullSecrets\[0\]"]),
    (
        "memory-in-gb",
        with_defaults(agent={"resources": {"limits": {"memory": "4GB"}}}),
        [r"agent\.resources\.limits\.memory", '"4GB"', "4Gi or 4G"],
    ),
    ("cpu-in-cores", with_defaults(reconciler={"resources": {"requests": {"cpu": "2 cores"}}}), [r"requests\.cpu"]),
    ("cache-size", with_defaults(caches={"tool": {"enabled": True, "size": "20GB"}}), [r"caches\.tool\.size"]),
    (
        "pool-namespace",
        with_defaults(pools=[{"name": "Default", "namespace": "CI_Agents"}]),
        [r"pools\[0\]\.namespace"],
    ),
    ("template-name", with_defaults(jobTemplates={"Linux": ""}), [r"jobTemplates\.Linux", "template name"]),
]


@pytest.mark.parametrize(("values", "patterns"), [c[1:] for c in PLAIN_WORDS], ids=[c[0] for c in PLAIN_WORDS])
def test_bad_values_are_refused_in_plain_words(values: dict[str, Any], patterns: list[str], helm: str) -> None:
    """We test: helm fails with the chart's key, what is wrong and how to fix it, and no regular expression."""
    error = render_failure(values, helm=helm)
    for pattern in patterns:
        assert re.search(pattern, error, re.IGNORECASE), f"{pattern!r} not in:\n{error}"
    assert not re.search(r"pattern|\^\[|\]\*\$|\(\?", error), f"a regular expression reached the user:\n{error}"


def test_schema_has_no_pattern() -> None:
    """We test: values.schema.json holds no `pattern` (helm would print it bare); _validate.tpl checks formats."""
    assert '"pattern"' not in (CHART / "values.schema.json").read_text(encoding="utf-8")


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
    (
        "registry-with-port",
        with_defaults(agent={"image": {"repository": "registry.local:5000/agent", "tag": "4.269.0"}}),
    ),
    ("time-zone", with_defaults(reconciler={"timeZone": "Europe/Paris"})),
    ("both-pull-secret-forms", with_defaults(imagePullSecrets=["regcred", {"name": "mirror"}])),
    ("token-from-a-variable", _templates(_job_with("args: [--token, $(AZP_TOKEN)]"))),
    ("token-env-from-secret", _templates(_job_with("env:\n  - name: AZP_TOKEN_FILE\n    value: /t"))),
    ("pod-template-body", _templates("spec:\n  containers:\n    - name: agent\n")),
    ("bare-pod-spec", _templates("containers:\n  - name: agent\n")),
    ("min-idle-equal-max", with_defaults(pools=[{"name": "Default", "maxAgents": 2, "minIdle": 2}])),
    (
        "privileged-namespaces-by-default",
        with_defaults(
            pools=[{"name": "Default", "namespace": "agents"}],
            agent={"createNamespaces": True},
            reconciler={"podPolicy": {"allowHostPath": True}},
        ),
    ),
]


@pytest.mark.parametrize("values", [c[1] for c in GOOD_VALUES], ids=[c[0] for c in GOOD_VALUES])
def test_good_neighbours_render(values: dict[str, Any], helm: str) -> None:
    """We test: values just on the right side of each rule render, and their URL reaches config.yaml."""
    document = config_of(render_chart(values, helm=helm))
    assert document["organization"] == values["organization"]["url"].rstrip("/")
