"""We test the reconciler without a PAT: the real CLI authenticates with Microsoft Entra ID (the emulator in
azp_simulation/entra.py, over HTTPS with a throwaway CA trusted through REQUESTS_CA_BUNDLE) as a service
principal (client secret or certificate), a workload identity or a managed identity, and the Azure DevOps
emulator accepts those Bearer tokens only for identities added to the organization."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sim

from azp_simulation.entra import EntraEmulator
from azp_simulation.identities import register_identity


@pytest.fixture
def make_entra(tmp_path: Path) -> Iterator[Callable[..., EntraEmulator]]:
    started: list[EntraEmulator] = []

    def build(**kwargs: Any) -> EntraEmulator:
        emulator = EntraEmulator(directory=tmp_path / f"entra-{len(started)}", **kwargs)
        emulator.start()
        started.append(emulator)
        return emulator

    yield build
    for emulator in started:
        emulator.stop()


def use_identity(
    sim: Sim, entra: EntraEmulator, method: str, tmp_path: Path, *, member: bool = True
) -> tuple[dict[str, str], str, str]:
    """Register an identity of this kind in the tenant, add it to the organization (unless not `member`), point
    the reconciler's configuration at it. Returns the CLI's environment, the identity's display name in the
    organization and its client id."""
    identity = register_identity(entra, sim.azdo, method, tmp_path, member=member)
    document = sim.config()
    document["auth"] = identity.auth
    sim.write_config(document)
    return identity.env, identity.name, identity.client_id


@pytest.mark.parametrize("method", ["secret", "certificate", "workload", "managed"])
def test_each_method_serves_jobs_with_bearer_tokens(
    make_sim: Callable[..., Sim], make_entra: Callable[..., EntraEmulator], tmp_path: Path, method: str
) -> None:
    """We test: with each Entra ID method, a pass registers the placeholder and creates a Job per queued
    request; every Azure DevOps call was made as the identity (its Bearer token), and `check` names the method,
    client id and tenant and finds the pool manageable."""
    sim = make_sim(install=False)
    entra = make_entra()
    env, name, client_id = use_identity(sim, entra, method, tmp_path)
    assert sim.reconcile(env=env).code == 0
    sim.queue("linux", 2)
    result = sim.reconcile(env=env)
    assert result.code == 0, result.text
    assert len(sim.jobs()) == 2
    identities = {call.identity for call in sim.azdo.calls()}
    assert identities == {name}, identities
    assert entra.issued and all(claims["appid"] == client_id for claims in entra.issued)
    checked = sim.cli("check", env=env)
    assert "identity" in checked.out and client_id in checked.out, checked.text
    assert f"as {name}" in checked.out and "pool linux" in checked.out and "may be managed" in checked.out
    if method != "managed":
        assert entra.tenant_id in checked.out


def test_wrong_client_secret_is_a_clear_credentials_error(
    make_sim: Callable[..., Sim], make_entra: Callable[..., EntraEmulator], tmp_path: Path
) -> None:
    """We test: a client secret Entra ID refuses ends the run with exit 2 and its AADSTS7000215 reason, names the
    keys to check, shows no traceback and never the secret; Azure DevOps was not called. `check` reports the
    identity it tried and the refusal."""
    sim = make_sim(install=False)
    entra = make_entra()
    env, _, _ = use_identity(sim, entra, "secret", tmp_path)
    (tmp_path / "client-secret").write_text("not-the-secret-0c4d\n")
    result = sim.reconcile(env=env)
    assert result.code == 2, result.text
    assert "AADSTS7000215" in result.err and "auth.clientId" in result.err
    assert "Traceback" not in result.text and "not-the-secret-0c4d" not in result.text
    assert entra.refusals == ["AADSTS7000215"] and not sim.azdo.calls()
    checked = sim.cli("check", env=env)
    assert checked.code == 1 and "servicePrincipal (client id" in checked.out, checked.text
    assert "AADSTS7000215" in checked.out and "not-the-secret-0c4d" not in checked.text


def test_identity_not_in_the_organization_is_refused(
    make_sim: Callable[..., Sim], make_entra: Callable[..., EntraEmulator], tmp_path: Path
) -> None:
    """We test: a valid token of an identity nobody added to the organization gets 401 (TF400813); the run exits 2
    and says to add the identity to the organization."""
    sim = make_sim(install=False)
    entra = make_entra()
    env, _, _ = use_identity(sim, entra, "secret", tmp_path, member=False)
    result = sim.reconcile(env=env)
    assert result.code == 2, result.text
    assert "was rejected by" in result.err and "add the identity to the organization" in result.err
    assert entra.issued, "the token was issued: Azure DevOps refused it"


def test_identity_without_the_pool_role_is_told_what_to_grant(
    make_sim: Callable[..., Sim], make_entra: Callable[..., EntraEmulator], tmp_path: Path
) -> None:
    """We test: an identity with only the Reader role on the pool is accepted, but `check` reports the pool not
    manageable and names the Administrator role; a pass that must register a placeholder gets 403 on it."""
    sim = make_sim(install=False)
    entra = make_entra()
    env, name, _ = use_identity(sim, entra, "secret", tmp_path)
    sim.azdo.set_pool_role(sim.pool_ids["linux"], name, "Reader")
    checked = sim.cli("check", env=env)
    assert checked.code == 1
    assert "may not manage it" in checked.out and "Administrator role" in checked.out, checked.out
    result = sim.reconcile(env=env)
    assert result.code == 1, result.text
    assert any(call.status == 403 and call.method == "POST" for call in sim.azdo.calls())


def test_loop_outlives_several_tokens(
    make_sim: Callable[..., Sim], make_entra: Callable[..., EntraEmulator], tmp_path: Path
) -> None:
    """We test: with 6-second tokens, one reconcile run looping for 20 s serves a job queued after its first
    pass and its first token renewal: it takes a new token before each one expires (several issued), and Azure
    DevOps refused none of its calls."""
    sim = make_sim(install=False)
    entra = make_entra(token_lifetime=6)
    env, _, _ = use_identity(sim, entra, "secret", tmp_path)
    document = sim.config()
    document["loop"] = {"loopFor": 20, "interval": 0.5, "idleInterval": 0.5}
    sim.write_config(document)
    queued: list[int] = []

    def queue_after_a_renewal() -> None:
        # Once the first pass registered the placeholder (else the service fails the job at once) and the first
        # token was replaced.
        sim.wait_for(lambda: len(entra.issued) >= 2 and bool(sim.agents()), timeout=40, what="a renewal")
        queued.extend(sim.queue("linux", 1, duration=30))

    queuer = threading.Thread(target=queue_after_a_renewal, daemon=True)
    queuer.start()
    result = sim.reconcile(env=env, timeout=90)
    queuer.join(timeout=1)
    assert result.code == 0, result.text
    assert queued and len(sim.jobs()) == 1, result.text
    assert len(entra.issued) >= 4, len(entra.issued)
    assert [c for c in sim.azdo.calls() if c.status in (203, 401)] == []
