"""agents.registration: reconciler against the emulators: the reconciler registers each agent with a fresh key
pair and hands its pod only that agent's files (a Secret owned by its Job); the simulated agent authenticates
with its key through the emulated OAuth flow (azp_simulation/agent_oauth.py). No PAT in the agent namespace."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml

from azp_simulation import agent_oauth
from azp_simulation.azdo_emulator import EmulatorAuthError
from azp_simulation.runner import run_simulation
from azp_simulation.world import PAT, SCENARIOS

if TYPE_CHECKING:
    # Collected first in tests/sim, this module must not import conftest at run time (pytest's prepend
    # import mode may still have another directory's conftest under that name): the fixtures bring it.
    from conftest import Sim
from reconciler import agent_files

# conftest.WORLD with the agents registered by the reconciler.
RECONCILER_MODE: dict[str, Any] = {
    "name": "agent-registration",
    "timeout": 60,
    "reconciler": {
        "loopFor": 0,
        "interval": 0.5,
        "idleInterval": 1,
        "sweepInterval": 10,
        "agents": {"registration": "reconciler"},
    },
    "pools": [
        {
            "name": "linux",
            "maxAgents": 4,
            "provisioningTimeout": 5,
            "idleTimeout": 3,
            "templates": [{"name": "default", "capabilities": {"docker": "", "Agent.OS": "Linux"}}],
        }
    ],
}


def _secret_files(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _no_pat_in_agent_namespace(sim: Sim) -> None:
    """No Secret of the agent namespace holds the PAT, and no Job refers to a PAT Secret or carries it."""
    for secret in sim.kube.objects("secrets", "azp-agents"):
        assert PAT not in json.dumps(_secret_files(secret)), secret["metadata"]["name"]
    for job in sim.jobs():
        text = json.dumps(job)
        assert PAT not in text and "azp-agents-pat" not in text and "AZP_TOKEN" not in text, job["metadata"]["name"]


def test_a_burst_is_served_with_no_pat_in_the_agent_namespace(make_sim: Callable[..., Sim]) -> None:
    """We test: 8 queued jobs are all served by agents the reconciler registered, each pod's Secret holds exactly
    its own agent's three files (owned by its Job), every agent came online through the OAuth exchange (none
    refused), and no Secret or Job of the agent namespace holds or names the PAT."""
    sim = make_sim(RECONCILER_MODE)
    sim.queue("linux", 8, demands=("docker",), duration=1.0)
    looped = sim.reconcile("--loop-for", "20", "--interval", "0.5", "--idle-interval", "1")
    assert looped.code == 0, looped.text
    sim.wait_for(lambda: not sim.requests(unfinished_only=True), timeout=40, what="the burst to finish")
    assert [r.get("result") for r in sim.requests()] == ["succeeded"] * 8
    assert sim.simulation.oauth_refusals == 0

    agents = {a["name"]: a for a in sim.agents()}
    # A request names its agent while that agent is registered (pruned ones are gone from it).
    served = {r["reservedAgent"]["name"] for r in sim.requests() if "reservedAgent" in r}
    jobs = {j["metadata"]["name"]: j for j in sim.jobs()}
    assert served <= set(jobs), "every job ran on an agent named after its Job"
    for secret in sim.kube.objects("secrets", "azp-agents"):
        name = secret["metadata"]["name"]
        [owner] = secret["metadata"]["ownerReferences"]
        assert owner["kind"] == "Job" and owner["name"] == name and owner["uid"] == jobs[name]["metadata"]["uid"]
        files = _secret_files(secret)
        assert set(files) == set(agent_files.FILES)
        settings = json.loads(files[".agent"])
        assert settings["agentName"] == name
        if name in agents:
            assert settings["agentId"] == agents[name]["id"]
            client_id = json.loads(files[".credentials"])["data"]["clientId"]
            assert client_id == agents[name]["authorization"]["clientId"]
    _no_pat_in_agent_namespace(sim)


def test_the_burst_scenario_is_served_when_the_reconciler_registers_the_agents(tmp_path: Path) -> None:
    """We test: the shipped burst scenario (three pools, Linux and Windows images, demands, a cancellation, a
    stuck pod, leftovers to prune) with agents.registration reconciler serves every job, through `simulate`'s
    runner, and leaves nothing of ours behind."""
    world = yaml.safe_load((SCENARIOS / "burst.yaml").read_text())
    world["reconciler"] = {**world["reconciler"], "agents": {"registration": "reconciler"}}
    path = tmp_path / "burst-registered.yaml"
    path.write_text(yaml.safe_dump(world))
    summary = run_simulation(str(path))
    assert summary.ok and summary.served + summary.canceled == summary.jobs, summary.as_dict()
    assert summary.leftovers == {"offline_agents": 0, "online_agents": 0, "active_jobs": 0}, summary.as_dict()


def test_a_wrong_key_or_a_deleted_agent_is_refused(make_sim: Callable[..., Sim]) -> None:
    """We test: the emulated token endpoint refuses an assertion for a registered agent signed with another key,
    an expired assertion and one for an agent deleted since, with HTTP 400 and {error, error_description};
    the right key gets an access token that starts that agent's session only."""
    sim = make_sim(RECONCILER_MODE)
    sim.queue("linux", 1, demands=("docker",), duration=2.0)
    assert sim.reconcile().code == 0
    sim.wait_for(lambda: bool(sim.kube.objects("secrets", "azp-agents")), timeout=10, what="an agent's Secret")
    files = _secret_files(sim.kube.objects("secrets", "azp-agents")[0])
    data = json.loads(files[".credentials"])["data"]
    url, client_id = data["authorizationUrl"], data["clientId"]
    agent_id = json.loads(files[".agent"])["agentId"]
    own_key = agent_oauth.private_key_from_rsa_parameters(files[".credentials_rsaparams"])

    def request(key: Any, *, now: float | None = None) -> tuple[int, dict[str, Any]]:
        assertion = agent_oauth.client_assertion(
            client_id=client_id, audience=url, private_key=key, now=time.time() if now is None else now
        )
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": agent_oauth.JWT_BEARER_ASSERTION,
            "client_assertion": assertion,
        }
        return sim.azdo.oauth_token(url, form)

    status, body = request(agent_files.AgentKey.generate().private)
    assert (status, body["error"]) == (400, "invalid_client"), body
    assert "signature" in body["error_description"]
    status, body = request(own_key, now=time.time() - 600)
    assert status == 400 and body["error_description"].startswith("The bearer token expired on"), body

    status, body = request(own_key)
    assert status == 200 and body["token_type"] == "bearer", body
    # Good for the agent's own session only: the organization's REST API does not take it.
    pools = requests.get(
        f"{sim.simulation.organization_url}/_apis/distributedtask/pools",
        params={"api-version": "7.1"},
        headers={"Authorization": f"Bearer {body['access_token']}", "X-TFS-FedAuthRedirect": "Suppress"},
        timeout=5,
    )
    assert pools.status_code == 401, pools.text
    other = sim.azdo.register_agent(pool_id=sim.pool_ids["linux"], name="someone-else", capabilities={}, token=PAT)
    with pytest.raises(EmulatorAuthError):
        sim.azdo.agent_session(body["access_token"], int(other["id"]), capabilities={})

    sim.wait_for(lambda: not sim.requests(unfinished_only=True), timeout=40, what="the job to finish")
    # The pod finished and its agent is offline: the reconciler's prune deletes it.
    sim.wait_for(lambda: all(j.get("status", {}).get("succeeded") for j in sim.jobs()), timeout=20, what="the Job")
    assert sim.reconcile().code == 0
    sim.wait_for(lambda: all(a["id"] != agent_id for a in sim.agents()), timeout=20, what="the agent to be pruned")
    status, body = request(own_key)
    assert (status, body["error"]) == (400, "invalid_client"), body


def test_the_secret_goes_with_its_job(make_sim: Callable[..., Sim]) -> None:
    """We test: when the Job is deleted (here by its TTL after the job finished, or by the reconciler), the
    garbage collector deletes the agent's Secret with it (ownerReferences)."""
    sim = make_sim(RECONCILER_MODE)
    sim.queue("linux", 1, demands=("docker",), duration=0.5)
    assert sim.reconcile().code == 0
    sim.wait_for(lambda: bool(sim.kube.objects("secrets", "azp-agents")), timeout=10, what="the agent's Secret")
    [secret] = sim.kube.objects("secrets", "azp-agents")
    name = secret["metadata"]["name"]
    assert sim.kube.delete("jobs", "azp-agents", name)
    sim.wait_for(
        lambda: not any(s["metadata"]["name"] == name for s in sim.kube.objects("secrets", "azp-agents")),
        timeout=10,
        what="the Secret to be collected with its Job",
    )


def test_an_agents_key_is_only_in_its_own_secret(make_sim: Callable[..., Sim]) -> None:
    """We test: the private key of each agent the reconciler registered (every private part of it) appears in
    its own Secret only: not in the reconciler's debug output (text and json), not in any other Kubernetes
    object (Jobs, Pods, Events, ConfigMaps, Leases, other Secrets), not in any agent registration."""
    sim = make_sim(RECONCILER_MODE)
    sim.queue("linux", 3, demands=("docker",), duration=0.5)
    outputs = [sim.reconcile("--log-level", "debug", "--log-format", fmt) for fmt in ("text", "json")]
    sim.wait_for(lambda: len(sim.kube.objects("secrets", "azp-agents")) >= 3, timeout=15, what="3 agents' Secrets")
    keys = {}
    for secret in sim.kube.objects("secrets", "azp-agents"):
        params = json.loads(_secret_files(secret)[".credentials_rsaparams"])
        keys[secret["metadata"]["name"]] = [params[p] for p in ("d", "p", "q", "dp", "dq", "inverseQ")]
    assert len(keys) >= 3
    assert all(result.code == 0 for result in outputs), [r.text for r in outputs]
    assert "registered agent" in outputs[0].text  # the first pass did the work worth logging
    haystacks = [("reconciler output", result.text) for result in outputs]
    for resource in ("jobs", "pods", "events", "configmaps", "leases", "secrets"):
        for obj in sim.kube.objects(resource):
            haystacks.append((f"{resource}/{obj['metadata']['name']}", json.dumps(obj)))
    haystacks += [(f"agent {a['name']}", json.dumps(a)) for a in sim.agents()]
    for owner, parts in keys.items():
        for where, text in haystacks:
            if where == f"secrets/{owner}":
                continue
            decoded = text.replace("\\n", "")
            secret_text = "" if not where.startswith("secrets/") else json.dumps(_secret_files(json.loads(text)))
            for part in parts:
                assert part not in decoded and part not in secret_text, f"{owner}'s key is in {where}"


def test_an_agent_registered_for_a_job_not_created_is_deleted_at_once(make_sim: Callable[..., Sim]) -> None:
    """We test: when Kubernetes refuses the Job (a quota's 403) or the agent's Secret (422), the agent registered
    for it is deleted in the same pass (and the Job too when only its Secret was refused): nothing waits for the
    prune, and the pass reports the failure (exit 1)."""
    sim = make_sim(RECONCILER_MODE)
    sim.queue("linux", 2, demands=("docker",), duration=30.0)
    for resource, status in (("jobs", 403), ("secrets", 422)):
        registered = sim.azdo.stats.agents_registered
        sim.kube.inject_fault("POST", resource, kind="status", status=status, times=100)
        result = sim.reconcile()
        assert result.code == 1, result.text
        assert sim.azdo.stats.agents_registered > registered, "the pass registered no agent: nothing was tried"
        ours = [a for a in sim.agents() if "placeholder" not in a["name"]]
        assert ours == [], ours
        assert sim.jobs() == [], [j["metadata"]["name"] for j in sim.jobs()]
        sim.kube.clear_faults()
