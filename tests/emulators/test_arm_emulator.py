"""We test the ARM emulator through the real Azure SDK (azure-identity's ClientSecretCredential and
azure-mgmt-containerinstance) over HTTPS: tokens from the Entra ID emulator, the long-running create the SDK's
ARM poller follows, list pages with nextLink, ARM error bodies, quotas and what a GET never shows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.mgmt.containerinstance.models import ContainerGroup

from azp_simulation.arm_emulator import ArmEmulator, Quotas
from azp_simulation.entra import AZURE_DEVOPS_APP_ID, EntraEmulator

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
IMAGE = "ghcr.io/azp-agents/agent-linux:4.269.0"


@pytest.fixture
def arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmEmulator]:
    entra = EntraEmulator(directory=tmp_path / "entra")
    entra.start()
    emulator = ArmEmulator(
        subscription=SUBSCRIPTION, entra=entra, start_delay=30, time_scale=0.01,
        page_size=2, quotas=Quotas(container_groups=5, standard_cores=4),
    )  # fmt: skip
    emulator.add_resource_group("agents", "westeurope")
    emulator.start()
    # The SDK's transport (requests) trusts the emulators' CA as it would a private CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.ca_path))
    yield emulator
    emulator.stop()
    entra.stop()


def client(arm: ArmEmulator, secret: str = "secret") -> ContainerInstanceManagementClient:
    entra = arm.entra
    app = next(iter(entra.apps.values()), None) or entra.register_app(secret="secret")
    credential = ClientSecretCredential(
        entra.tenant_id, app.client_id, secret, authority=entra.authority_host, disable_instance_discovery=True
    )
    return ContainerInstanceManagementClient(
        credential, SUBSCRIPTION, base_url=arm.base_url, credential_scopes=[f"{arm.base_url}/.default"]
    )


def group(cpu: float = 1, secret_env: str = "s3cret") -> ContainerGroup:
    body = {
        "location": "westeurope",
        "tags": {"owner": "test"},
        "properties": {
            "osType": "Linux",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "web",
                    "properties": {
                        "image": "nginx",
                        "resources": {"requests": {"cpu": cpu, "memoryInGB": 1}},
                        "environmentVariables": [{"name": "TOKEN", "secureValue": secret_env}],
                    },
                }
            ],
            "volumes": [{"name": "s", "secret": {"token": "dG9rZW4="}}],
        },
    }
    model: ContainerGroup = ContainerGroup.deserialize(body)
    return model


def test_create_is_a_long_running_operation_the_sdk_follows(arm: ArmEmulator) -> None:
    """We test: begin_create_or_update returns at once with provisioningState Creating; the SDK's poller
    follows Azure-AsyncOperation to Succeeded; a GET then shows the group, its instance view and neither the
    secure value nor the secret volume's contents."""
    aci = client(arm)
    poller = aci.container_groups.begin_create_or_update("agents", "g1", group(), polling_interval=0.1)
    assert not poller.done()
    created = poller.result(timeout=30)
    assert created.provisioning_state == "Succeeded"
    fetched = aci.container_groups.get("agents", "g1")
    assert fetched.instance_view is not None and fetched.tags == {"owner": "test"}
    raw = json.dumps(fetched.serialize(keep_readonly=True))
    assert "s3cret" not in raw and "dG9rZW4=" not in raw
    assert "s3cret" in json.dumps(arm.stored("agents"))


def test_list_pages_follow_next_link(arm: ArmEmulator) -> None:
    """We test: five groups listed two per page come back complete through nextLink (three requests)."""
    aci = client(arm)
    for index in range(5):
        aci.container_groups.begin_create_or_update("agents", f"g{index}", group(cpu=0.5), polling=False)
    before = arm.call_counts().get("GET containerGroups", 0)
    names = sorted(g.name for g in aci.container_groups.list_by_resource_group("agents"))
    assert names == [f"g{index}" for index in range(5)]
    assert arm.call_counts()["GET containerGroups"] - before == 3


def test_errors_use_arms_envelope(arm: ArmEmulator) -> None:
    """We test: a missing group is 404 ResourceNotFound, a missing resource group 404 ResourceGroupNotFound,
    deleting a missing group is 204 (no error), and a wrong client secret fails the token request."""
    aci = client(arm)
    with pytest.raises(ResourceNotFoundError) as missing:
        aci.container_groups.get("agents", "nope")
    assert missing.value.error is not None and missing.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as no_group:
        list(aci.container_groups.list_by_resource_group("other"))
    assert no_group.value.error is not None and no_group.value.error.code == "ResourceGroupNotFound"
    aci.container_groups.begin_delete("agents", "nope").result(timeout=10)
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        client(arm, secret="wrong").container_groups.get("agents", "nope")


def test_quotas_refuse_creates_with_arms_message(arm: ArmEmulator) -> None:
    """We test: past the region's standard cores a create is refused (400 ContainerGroupQuotaReached) with the
    quota, region, limit, usage and request in ARM's words; deleting a group frees its cores."""
    aci = client(arm)
    aci.container_groups.begin_create_or_update("agents", "big", group(cpu=3), polling=False)
    with pytest.raises(HttpResponseError) as refused:
        aci.container_groups.begin_create_or_update("agents", "more", group(cpu=2), polling=False)
    assert refused.value.status_code == 400 and refused.value.error is not None
    assert refused.value.error.code == "ContainerGroupQuotaReached"
    assert "quota 'StandardCores' exceeded in region 'westeurope'. Limit: '4', Usage: '3' Requested: '2'." in str(
        refused.value
    )
    aci.container_groups.begin_delete("agents", "big", polling=False)
    aci.container_groups.begin_create_or_update("agents", "more", group(cpu=2), polling=False)


def test_only_unexpired_entra_tokens_for_arm_are_accepted(arm: ArmEmulator) -> None:
    """We test: ARM accepts a token the Entra ID emulator issued for ARM's endpoint, and answers 401
    AuthenticationFailed to one issued for Azure DevOps, to an expired one, and to no token."""
    entra = arm.entra
    app = entra.register_app(secret="s")
    path = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/agents/providers/Microsoft.ContainerInstance/containerGroups"

    def status(token: str) -> int:
        return arm.handle("GET", f"{path}?api-version=2023-05-01", {"Authorization": f"Bearer {token}"}, b"")[0]

    assert status(entra.access_token(app, arm.base_url)[0]) == 200
    assert status(entra.access_token(app, AZURE_DEVOPS_APP_ID)[0]) == 401
    assert status("") == 401
    entra.token_lifetime = -1
    refused = arm.handle("GET", path, {"Authorization": f"Bearer {entra.access_token(app, arm.base_url)[0]}"}, b"")
    assert refused[0] == 401 and refused[1]["error"]["code"] == "AuthenticationFailed"


def test_crash_looping_container_restarts_with_the_kubelets_back_off(arm: ArmEmulator) -> None:
    """We test: an agent container of a restartPolicy Always group that exits at once (nothing registered to run,
    exit 1) is restarted with a growing back-off, not every tick: at time scale 0.01 the 2nd to 6th restarts
    wait 0.05 s plus 0.1, 0.2, 0.4, 0.8 and 1.6 s (3.35 s in all, 0.5 s without a back-off); the SDK's GET shows
    the restartCount, the ended previousState and the kubelet's BackOff Warning event counted per back-off."""
    body = group().serialize()
    body["properties"]["restartPolicy"] = "Always"
    body["properties"]["containers"][0]["properties"] |= {"image": IMAGE, "command": ["/azp/start.sh", "run"]}
    aci = client(arm)
    aci.container_groups.begin_create_or_update("agents", "looping", ContainerGroup.deserialize(body), polling=False)

    def restarts() -> int:
        (view,) = arm.groups("agents")
        instance_view = view["properties"]["containers"][0]["properties"].get("instanceView") or {}
        return int(instance_view.get("restartCount", 0))

    def wait_for(count: int) -> float:
        deadline = time.monotonic() + 20
        while restarts() < count:
            assert time.monotonic() < deadline, f"restartCount {restarts()} < {count}"
            time.sleep(0.02)
        return time.monotonic()

    first = wait_for(1)
    assert wait_for(6) - first >= 2.5
    container = aci.container_groups.get("agents", "looping").containers[0]
    assert container.instance_view is not None and container.instance_view.restart_count >= 6
    assert container.instance_view.previous_state is not None
    assert container.instance_view.previous_state.exit_code == 1
    (backoff,) = [e for e in container.instance_view.events or [] if e.name == "BackOff"]
    assert backoff.type == "Warning" and backoff.message == "Back-off restarting failed container"
    assert backoff.count is not None and backoff.count >= 5
