"""We test secret hygiene: with a known PAT, every CLI command and every shipped scenario, at debug
level in text and json, with errors that carry the PAT back from a server, leaves the PAT (or its
base64 form) in no output, no exception message, no Kubernetes object other than the PAT Secret, no
agent registration, and no rendered chart manifest other than the Secret. The same for an Entra ID
service principal's client secret and the access tokens the reconciler obtains with it."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from reliability_support import PAT, REPO, Result, Rig, base_env, run_cli, start_rig

from azp_simulation.entra import EntraEmulator
from azp_simulation.world import SCENARIOS

ENTRA_SECRET = "entra-client-secret-7e3a9b0c44d1"
FORMS = (PAT, base64.b64encode(PAT.encode()).decode(), base64.b64encode(f":{PAT}".encode()).decode())
HELM = REPO / ".tools" / "bin" / "helm"
SCANNED: dict[str, int] = {"outputs": 0, "objects": 0, "agents": 0, "manifests": 0}


def occurrences(text: str) -> int:
    """How many times the PAT appears in the text, in any of its forms."""
    return sum(text.count(form) for form in FORMS)


def assert_clean(text: str, where: str) -> None:
    SCANNED["outputs"] += 1
    assert occurrences(text) == 0, f"the PAT appears in {where}"


def assert_emulators_clean(rig: Rig) -> None:
    """No Kubernetes object but the PAT Secret, and no agent registration, holds the PAT."""
    kube = rig.kube
    for resource in ("jobs", "pods", "events", "leases", "configmaps", "secrets"):
        for obj in kube.objects(resource):
            if resource == "secrets":
                continue
            SCANNED["objects"] += 1
            text = json.dumps(obj)
            assert occurrences(text) == 0, f"the PAT appears in {resource} {obj['metadata'].get('name')}"
    for pool_id in rig.simulation.pool_ids.values():
        for agent in rig.azdo.agents(pool_id):
            SCANNED["agents"] += 1
            assert occurrences(json.dumps(agent)) == 0, f"the PAT appears in agent {agent.get('name')}"


WORLD: dict[str, Any] = {
    "name": "hygiene",
    "timeout": 60,
    "reconciler": {"loopFor": 0, "interval": 0.2, "idleInterval": 0.2, "sweepInterval": 10},
    "pools": [
        {
            "name": "linux",
            "maxAgents": 3,
            "provisioningTimeout": 30,
            "idleTimeout": 1,
            "templates": [{"name": "default", "capabilities": {"docker": ""}}],
        }
    ],
    "agents": [{"pool": "linux", "name": "azp-eeca0-linux-77-qqqqq", "status": "offline"}],
}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    started = start_rig(WORLD, tmp_path)
    yield started
    started.simulation.stop()


def test_every_command_at_debug_level_in_both_formats(rig: Rig) -> None:
    """We test: reconcile (real and dry run), check and render, text and json at debug level, while jobs
    run and agents come and go, never print the PAT; nor do the objects and registrations they leave."""
    rig.azdo.queue_request(rig.pool_id(), demands=(), duration=0.2)
    results: list[tuple[str, Result]] = []
    for fmt in ("text", "json"):
        results.append((f"reconcile {fmt}", rig.reconcile("--log-level", "debug", "--log-format", fmt)))
        results.append((f"dry run {fmt}", rig.reconcile("--dry-run", "--log-level", "debug", "--log-format", fmt)))
        results.append(
            (
                f"check {fmt}",
                run_cli(
                    [
                        "check",
                        "--config",
                        str(rig.config_path),
                        "--kubeconfig",
                        str(rig.kubeconfig_path),
                        "--log-level",
                        "debug",
                        "--log-format",
                        fmt,
                    ]
                ),
            )
        )
    results.append(("render", run_cli(["render", "--config", str(rig.config_path), "--pool", "linux"])))
    rig.wait_for(lambda: not rig.azdo.requests(rig.pool_id(), unfinished_only=True), what="the job to finish")
    rig.forget_lease()
    results.append(("reconcile after the job", rig.reconcile("--log-level", "debug")))
    for name, result in results:
        assert result.code == 0, (name, result.out)
        assert_clean(result.out, name)
    assert "azp-eeca0-linux-77-qqqqq" in results[0][1].out  # the passes did real work worth logging
    assert_emulators_clean(rig)


def _echo_body(secret: str) -> str:
    return json.dumps({"message": f"bad credential {secret}", "typeKey": "UnauthorizedRequestException"})


def _failing_pass(rig: Rig, fmt: str, secret: str) -> tuple[Result, Result]:
    """A pass whose reads and writes fail with error bodies that quote `secret`, then a refused credential."""
    kube_echo = json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": f"invalid {secret}", "code": 422}
    )
    rig.azdo.queue_request(rig.pool_id(), demands=(), duration=30)
    rig.azdo.inject_fault(
        "GET", "pools/{poolId}/jobrequests", kind="status", status=500, times=1, body=_echo_body(secret)
    )
    rig.kube.inject_fault("POST", "jobs", kind="status", status=422, times=5, body=kube_echo)
    failed = rig.reconcile("--log-level", "debug", "--log-format", fmt)
    assert failed.code == 1, failed.out
    assert "retry 1 of" in failed.out
    assert re.search(r"create-job \S+ \(pool .linux., namespace \S+\) failed", failed.out), failed.out
    rig.azdo.inject_fault("GET", "pools", kind="status", status=401, times=10, body=_echo_body(secret))
    refused = rig.reconcile("--log-level", "debug", "--log-format", fmt)
    assert refused.code == 2 and "credentials error" in refused.out, refused.out
    rig.azdo.clear_faults()
    rig.kube.clear_faults()
    return failed, refused


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_errors_that_echo_the_pat_are_scrubbed(rig: Rig, fmt: str) -> None:
    """We test: error bodies that carry the PAT back (a proxy echoing the credential), a rejected PAT, a
    transient failure logged with its retries and a failed action: the PAT is masked in every message."""
    failed, refused = _failing_pass(rig, fmt, PAT)
    assert "***" in failed.out
    assert_clean(failed.out, f"a failed pass ({fmt})")
    assert_clean(refused.out, f"a refused credential ({fmt})")
    assert_emulators_clean(rig)


def test_errors_that_echo_the_basic_credential_are_scrubbed(rig: Rig) -> None:
    """We test: an error body quoting the Authorization header (base64 of ':PAT', as good as the PAT)
    is masked too."""
    failed, refused = _failing_pass(rig, "text", f"Basic {FORMS[2]}")
    assert_clean(failed.out, "a failed pass quoting the Authorization header")
    assert_clean(refused.out, "a refused credential quoting the Authorization header")


def test_exception_messages_never_hold_the_pat(rig: Rig) -> None:
    """We test: the exceptions the clients raise (what a traceback would show) for every kind of
    failure, and the credential's and config's repr, hold no PAT."""
    from reconciler.azdo import AzureDevOps
    from reconciler.config import load_file, read_credentials
    from reconciler.errors import ReconcilerError

    config, document = load_file(rig.config_path)
    credentials = read_credentials(document)
    assert credentials.pat == PAT
    assert_clean(repr(credentials), "repr(Credentials)")
    assert_clean(repr(config), "repr(Config)")
    client = AzureDevOps(config.organization, pat=credentials.pat, timeout=0.5, retries=0)
    faults: list[dict[str, Any]] = [{"kind": "status", "status": s} for s in (401, 403, 404, 409, 429, 500)]
    faults += [{"kind": "html"}, {"kind": "reset"}, {"kind": "truncated"}, {"kind": "timeout", "delay": 1}]
    messages = []
    try:
        for fault in faults:
            rig.azdo.inject_fault("GET", "pools", times=1, **fault)
            with pytest.raises(ReconcilerError) as caught:
                client.pools_by_name(["linux"])
            messages += [str(caught.value), repr(caught.value), repr(caught.value.__cause__)]
    finally:
        client.close()
    assert len(messages) == 3 * len(faults)
    for message in messages:
        assert_clean(message, "an exception message")


@pytest.mark.slow
def test_simulate_command(tmp_path: Path) -> None:
    """We test: `azp-reconciler simulate --scenario idle --quiet` (its reconciler runs as subprocesses)
    prints no PAT, in text and json logs and in its JSON summary."""
    for fmt in ("text", "json"):
        summary = tmp_path / f"summary-{fmt}.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "simulate",
                "--scenario",
                "idle",
                "--quiet",
                "--log-format",
                fmt,
                "--json",
                str(summary),
            ],
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert_clean(done.stdout + done.stderr, f"simulate output ({fmt})")
        assert_clean(summary.read_text(), f"simulate summary ({fmt})")


@pytest.mark.parametrize("scenario", sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
def test_every_shipped_scenario(tmp_path: Path, scenario: str) -> None:
    """We test: each shipped scenario's world, driven through a few passes at debug level (arrivals,
    prunes, agents registering with the token), leaves the PAT nowhere."""
    world = yaml.safe_load((SCENARIOS / f"{scenario}.yaml").read_text())
    world["reconciler"] = {**(world.get("reconciler") or {}), "loopFor": 0}
    rig = start_rig(world, tmp_path)
    try:
        outputs = []
        for index in range(4):
            fmt = "json" if index % 2 else "text"
            outputs.append(rig.reconcile("--log-level", "debug", "--log-format", fmt))
            if index == 0:
                rig.wait_for(
                    lambda: bool(rig.simulation.request_ids) or not rig.simulation.world.arrivals,
                    timeout=5,
                    what="the first arrivals",
                )
            time.sleep(0.4)
        if rig.simulation.world.arrivals:
            assert rig.jobs(), "the passes created no Job: nothing was exercised"
        for index, result in enumerate(outputs):
            assert result.code in (0, 1), result.out
            assert_clean(result.out, f"scenario {scenario} pass {index + 1}")
        assert_emulators_clean(rig)
    finally:
        rig.simulation.stop()


def _values_files() -> list[Path]:
    return sorted((REPO / "values").glob("*.yaml"))


@pytest.mark.skipif(
    not os.access(HELM, os.X_OK), reason="helm is not in .tools/bin: run `make tools` (scripts/fetch-tools.sh)"
)
@pytest.mark.parametrize("values", _values_files(), ids=lambda p: p.stem)
def test_rendered_chart_holds_the_pat_only_in_secrets(values: Path) -> None:
    """We test: `helm template` with each example values file and a known PAT puts it in the Secrets
    only: no ConfigMap, CronJob, Job template, NOTES-like object or annotation carries it."""
    command = [
        str(HELM),
        "template",
        "azp-agents",
        str(REPO / "chart"),
        "--namespace",
        "azp-agents",
        "-f",
        str(values),
        "--set",
        "organization.url=https://dev.azure.com/contoso",
    ]
    document = yaml.safe_load(values.read_text()) or {}
    if not (document.get("auth") or {}).get("existingSecret"):
        command += ["--set-string", f"auth.pat={PAT}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr, "helm's messages")
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    secrets = [o for o in objects if o.get("kind") == "Secret"]
    # The PAT is rendered where something reads it: the reconciler (auth.method pat) or self-registering agents.
    auth, agent = document.get("auth") or {}, document.get("agent") or {}
    read_by_someone = auth.get("method", "pat") == "pat" or agent.get("registration") == "token"
    if "auth.pat=" in " ".join(command) and read_by_someone:
        assert secrets, "the chart rendered no Secret for auth.pat"
    for obj in objects:
        if obj.get("kind") == "Secret":
            continue
        SCANNED["manifests"] += 1
        assert occurrences(json.dumps(obj)) == 0, f"the PAT appears in {obj.get('kind')} {obj['metadata'].get('name')}"


def test_entra_id_secret_and_tokens_never_leak(rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """We test: with a service principal (client secret) and 4-second Entra ID tokens (renewed during the passes),
    reconcile, check, a failing pass whose error bodies quote the secret, and a refused secret, at debug level in
    text and json, print neither the client secret nor any token issued; nor do the objects and registrations."""
    entra = EntraEmulator(directory=tmp_path / "entra", token_lifetime=4)
    entra.start()
    try:
        app = entra.register_app(secret=ENTRA_SECRET)
        rig.azdo.trust_entra(entra)
        rig.azdo.add_entra_identity(app.object_id, name="azp-agents (service principal)")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(entra.ca.ca_file))
        (tmp_path / "client-secret").write_text(ENTRA_SECRET)
        document = rig.config()
        document["auth"] = {
            "method": "servicePrincipal",
            "tenantId": entra.tenant_id,
            "clientId": app.client_id,
            "clientSecretFile": str(tmp_path / "client-secret"),
            "authorityHost": entra.authority_host,
        }
        rig.write_config(document)
        rig.azdo.queue_request(rig.pool_id(), demands=(), duration=0.2)
        outputs: list[Result] = []
        for fmt in ("text", "json"):
            outputs.append(rig.reconcile("--log-level", "debug", "--log-format", fmt))
            check = ["check", "--config", str(rig.config_path), "--kubeconfig", str(rig.kubeconfig_path)]
            outputs.append(run_cli([*check, "--log-level", "debug", "--log-format", fmt]))
            time.sleep(2.5)  # past half the token's life: the next run renews it
            outputs += _failing_pass(rig, fmt, ENTRA_SECRET)
        (tmp_path / "client-secret").write_text("entra-wrong-secret-91c2")
        outputs.append(rig.reconcile("--log-level", "debug"))
    finally:
        entra.stop()
    assert [r.code for r in outputs] == [0, 0, 1, 2, 0, 0, 1, 2, 2], [r.out for r in outputs]
    assert len(entra.tokens) >= 3 and "AADSTS7000215" in outputs[-1].out
    forms = (ENTRA_SECRET, "entra-wrong-secret-91c2", *entra.tokens)
    for index, result in enumerate(outputs):
        SCANNED["outputs"] += 1
        assert not [f for f in forms if f in result.out], f"an Entra ID secret or token appears in output {index}"
    texts = [json.dumps(o) for r in ("jobs", "pods", "events", "leases", "configmaps") for o in rig.kube.objects(r)]
    texts += [json.dumps(rig.azdo.agents(pool_id)) for pool_id in rig.simulation.pool_ids.values()]
    assert not [t for t in texts for f in forms if f in t], "an Entra ID secret or token appears in an object"


def test_pat_occurrences_figure() -> None:
    """We test the scans above ran, and print what they covered (-s shows it): 0 PAT occurrences."""
    if SCANNED["outputs"] == 0:
        pytest.skip("the hygiene scans did not run (tests deselected)")
    print(
        f"\nsecret hygiene: 0 PAT occurrences in {SCANNED['outputs']} outputs and messages, {SCANNED['objects']} "
        f"Kubernetes objects, {SCANNED['agents']} agent registrations, {SCANNED['manifests']} rendered manifests"
    )
