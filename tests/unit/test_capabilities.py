"""What placeholders advertise: the known set of a template before its agents register, then theirs.

Demands below are those real tasks add, from microsoft/azure-pipelines-tasks `Tasks/<task>/task.json`
(`demands`, and `minimumAgentVersion`, which the server adds as `Agent.Version -gtVersion`):
Npm@1 (NpmV1) -> npm, 1.91.0; Maven@3 (MavenV3) -> maven, 1.89.0; CMake@1 (CMakeV1) -> cmake, 1.91.0;
DotNetCoreCLI@2 (DotNetCoreCLIV2) -> none, 2.115.0.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from plan_builders import NOW, agent, config, job_for, of, pod_for, pool, queued, state, template, world

from reconciler import capabilities, checks, names
from reconciler.demands import satisfies_all
from reconciler.model import ReportUnroutable, UpdatePlaceholder, frozen_map
from reconciler.plan import LEARN_RETRY, effective_capabilities, plan, pools_needing_agents

NPM = ("npm", "Agent.Version -gtVersion 1.91.0")
MAVEN = ("maven", "Agent.Version -gtVersion 1.89.0")
CMAKE = ("cmake", "Agent.Version -gtVersion 1.91.0")
DOTNET_CLI = ("Agent.Version -gtVersion 2.115.0",)
LINUX = ("Agent.OS -equals Linux",)
WINDOWS = ("Agent.OS -equals Windows_NT",)

OWNER = names.Owner(prefix="azp", release="azp-agents")


def known(image: str, **pod: Any) -> dict[str, str]:
    """The placeholder capabilities of a split template of `image`, before any agent registered."""
    runner = {"name": "agent", "image": image, "args": ["run"]}
    cfg = config(pool("linux", template("t")))
    tpl = cfg.pools[0].templates[0]
    defaults = capabilities.defaults(pod_spec={"containers": [runner], **pod}, container=runner, declared={})
    return dict(effective_capabilities(cfg, replace(tpl, known_capabilities=defaults)))


@pytest.mark.parametrize(
    ("image", "served", "refused"),
    [
        ("ghcr.io/azp-agents/agent-linux:4.269.0", [DOTNET_CLI, LINUX], [NPM, MAVEN, CMAKE, WINDOWS]),
        ("ghcr.io/azp-agents/agent-linux:4.269.0-node", [NPM, LINUX], [MAVEN, CMAKE]),
        ("ghcr.io/azp-agents/agent-linux-java:0.1.0", [("java", "JDK", "java.version -equals 17")], [MAVEN]),
        ("ghcr.io/azp-agents/agent-linux:4.269.0-dotnet", [("dotnet", *DOTNET_CLI)], [NPM]),
        ("ghcr.io/azp-agents/agent-linux:4.269.0-docker-cli", [("docker",)], [NPM]),
        ("ghcr.io/azp-agents/agent-windows:4.269.0", [WINDOWS, DOTNET_CLI], [LINUX, NPM]),
    ],
)
def test_built_in_templates_advertise_what_their_image_holds(
    image: str, served: list[tuple[str, ...]], refused: list[tuple[str, ...]]
) -> None:
    """We test: a built-in image's placeholder satisfies the demands of real tasks its image serves (so Azure
    DevOps queues them instead of failing them) and not those it cannot (Maven@3: no image has mvn)."""
    advertised = known(image)
    assert advertised["Agent.OSArchitecture"] == "X64"
    for demands in served:
        assert satisfies_all(demands, advertised), (image, demands)
    for demands in refused:
        assert not satisfies_all(demands, advertised), (image, demands)


def test_unknown_image_falls_back_to_the_pod_spec() -> None:
    """We test: for a custom image, Agent.OS and Agent.OSArchitecture come from the pod's nodeSelector."""
    advertised = known("contoso/agent:1", nodeSelector={"kubernetes.io/os": "windows", "kubernetes.io/arch": "arm64"})
    assert (advertised["Agent.OS"], advertised["Agent.OSArchitecture"]) == ("Windows_NT", "ARM64")
    assert "git" not in advertised


def registered(agent_id: int, name: str, template_name: str, **caps: str) -> Any:
    own = {"Agent.Name": name, "Agent.ComputerName": name, "HOSTNAME": name, "AZP_AGENT_NAME": name}
    return agent(agent_id, name, online=False, capabilities={**own, "AZP_TEMPLATE": template_name, **caps})


def test_learn_takes_the_newest_agent_of_the_template() -> None:
    """We test: the newest agent advertising AZP_TEMPLATE=<template> is learned, less the values that name
    that one agent; other templates' agents are ignored; a learned placeholder is kept when none is left."""
    placeholder = names.placeholder_name(OWNER, pool_name="linux", template="java")
    agents = [
        registered(3, "azp-linux-1-aaaaa", "java", terraform="/usr/bin/terraform"),
        registered(7, "azp-linux-2-bbbbb", "java", terraform="/usr/bin/terraform", mvn="/usr/bin/mvn"),
        registered(9, "azp-linux-3-ccccc", "node", npm="/usr/bin/npm"),
    ]
    learned = capabilities.learn(agents, template="java", placeholder=placeholder)
    assert learned is not None and dict(learned) == {
        "AZP_TEMPLATE": "java",
        "terraform": "/usr/bin/terraform",
        "mvn": "/usr/bin/mvn",
    }
    kept = agent(1, placeholder, online=False, enabled=False, capabilities=learned)
    assert capabilities.learn([kept], template="java", placeholder=placeholder) == learned
    fresh = agent(1, placeholder, online=False, enabled=False, capabilities={"Agent.OS": "Linux"})
    assert capabilities.learn([fresh], template="java", placeholder=placeholder) is None


def test_placeholder_copies_what_the_agents_advertise_and_routing_follows() -> None:
    """We test: with learned capabilities in the World the placeholder is updated to them (declared ones
    still win) and a request demanding a tool only the real agents showed is routed, not reported."""
    cfg = config(pool("linux", template("java", capabilities={"size": "large"})))
    placeholder = names.placeholder_name(OWNER, pool_name="linux", template="java")
    current = agent(
        1, placeholder, online=False, enabled=False, capabilities={"size": "large", "Agent.Version": "4.269.0"}
    )
    before = plan(cfg, world(state("linux", queued(5, "terraform"), agents=(current,))), NOW)
    assert [r.request_id for r in of(ReportUnroutable, before)] == [5]
    learned = frozen_map({"AZP_TEMPLATE": "java", "terraform": "/usr/bin/terraform", "size": "small"})
    w = world(state("linux", queued(5, "terraform"), agents=(current,)))
    actions = plan(cfg, replace(w, learned={("linux", "java"): learned}), NOW)
    assert of(ReportUnroutable, actions) == []
    update = of(UpdatePlaceholder, actions)[0]
    assert dict(update.capabilities) == {
        "AZP_TEMPLATE": "java",
        "terraform": "/usr/bin/terraform",
        "size": "large",
        "Agent.Version": "4.269.0",
    }


def test_check_reports_an_agent_lacking_a_declared_capability() -> None:
    """We test: `check` fails an online agent of a template that lacks (or differs on) a declared
    capability, and passes one that has them; offline agents and agents of no template are not judged."""
    big = config(pool("linux", template("big", capabilities={"size": "large", "gpu": ""}))).pools[0]
    good = agent(1, "a1", capabilities={"AZP_TEMPLATE": "big", "size": "large", "gpu": ""})
    bad = agent(2, "a2", capabilities={"AZP_TEMPLATE": "big", "size": "small"})
    gone = agent(3, "a3", online=False, capabilities={"AZP_TEMPLATE": "big"})
    foreign = agent(4, "build-01", capabilities={"size": "small"})
    findings = checks.capability_findings(big, [good, bad, gone, foreign])
    assert [(f.check, f.ok) for f in findings] == [("agent linux/a2", False)]
    assert "declares: gpu, size" in findings[0].detail


def test_declared_tool_name_loses_to_the_tool_on_path() -> None:
    """We test: as in the agent (NixCapabilitiesProvider runs after the environment provider), a declared
    `java: "17"` on the java image is advertised as the path of java; `overridden` names it for the warning."""
    runner = {"name": "agent", "image": "ghcr.io/azp-agents/agent-linux-java:0.1.0", "args": ["run"]}
    declared = {"java": "17", "size": "large"}
    known_set = capabilities.defaults(pod_spec={"containers": [runner]}, container=runner, declared=declared)
    assert (known_set["java"], known_set["size"]) == ("/opt/java/openjdk/bin/java", "large")
    assert capabilities.overridden(declared, known_set) == {"java": "/opt/java/openjdk/bin/java"}
    cfg = config(pool("linux", replace(template("java", capabilities=declared), known_capabilities=known_set)))
    advertised = effective_capabilities(cfg, cfg.pools[0].templates[0])
    assert not satisfies_all(("java -equals 17",), advertised) and satisfies_all(
        ("java", "size -equals large"), advertised
    )


def test_agents_are_listed_to_route_what_only_agents_advertise() -> None:
    """We test: a pass lists the pool's agents (before the sweep is due) when a queued request is unroutable
    with what the run knows while a template has not been learned (a tool only its agents advertise), at most
    once per LEARN_RETRY; not for routable requests, and not once every template has been learned."""
    cfg = config(pool("linux", template("java", capabilities={"size": "large"})))
    observed = {"linux": NOW - LEARN_RETRY}
    base = replace(world(state("linux", queued(2, "terraform"))), agents_observed=observed)
    assert pools_needing_agents(cfg, base, NOW) == {"linux"}
    assert pools_needing_agents(cfg, replace(base, agents_observed={"linux": NOW}), NOW) == set()
    routable = replace(world(state("linux", queued(2, "size -equals large"))), agents_observed=observed)
    assert pools_needing_agents(cfg, routable, NOW) == set()
    learned = replace(base, learned={("linux", "java"): frozen_map({"AZP_TEMPLATE": "java"})})
    assert pools_needing_agents(cfg, learned, NOW) == set()


def test_agents_are_listed_while_the_first_agent_of_a_template_is_there() -> None:
    """We test: a pod of an unlearned template that registered (published its agent id) and runs, started
    since the last scan, makes the pass read the agent list while that agent can still be read; a finished
    pod, a pod from before the scan, or a learned template does not."""
    cfg = config(pool("linux", template("java", capabilities={"size": "large"})))
    job = job_for("linux", request_id=1, template_name="java")
    fresh = replace(pod_for(job, created=3, started=2), agent_id=77)
    base = replace(world(state("linux")), agents_observed={"linux": NOW - timedelta(seconds=5)}, jobs=(job,))
    assert pools_needing_agents(cfg, replace(base, pods=(fresh,)), NOW) == {"linux"}
    finished = replace(fresh, phase="Succeeded")
    # (its agent id is known, so the finished pod alone needs no scan either)
    known_id = {finished.name.lower(): 77}
    assert pools_needing_agents(cfg, replace(base, pods=(finished,), agent_ids=known_id), NOW) == set()
    older = replace(fresh, started=NOW - timedelta(seconds=9))
    assert pools_needing_agents(cfg, replace(base, pods=(older,)), NOW) == set()
    learned = {("linux", "java"): frozen_map({"AZP_TEMPLATE": "java"})}
    assert pools_needing_agents(cfg, replace(base, pods=(fresh,), learned=learned), NOW) == set()
