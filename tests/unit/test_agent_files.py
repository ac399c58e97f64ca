"""agents.registration: reconciler: the agent's key and files, the Job that mounts them, the Secret that holds them."""

from __future__ import annotations

import base64
import json

import pytest
from plan_builders import config, pool, template
from test_render import USER_JOB, env_of

from reconciler import agent_files, names, render
from reconciler import config as config_module
from reconciler.errors import ConfigError, TransientError

REGISTERED = {
    "id": 77,
    "name": "azp-linux-42",
    "authorization": {
        "clientId": "0b4a2f0e-5c1d-4d34-9e6b-2c8e2f6f1a10",
        "authorizationUrl": "https://vstoken.dev.azure.com/5d1c3b4a-0000-4000-8000-000000000001",
    },
}


def _int(text: str) -> int:
    return int.from_bytes(base64.b64decode(text), "big")


def test_rsa_parameters_are_the_key_in_the_agents_layout() -> None:
    """We test: .credentials_rsaparams holds RSAParametersSerializable's names with .NET's fixed byte lengths
    (D as long as the modulus, the CRT parts half as long), and the numbers make the registered public key."""
    key = agent_files.AgentKey.generate()
    params = json.loads(key.rsa_parameters())
    assert set(params) == {"ContainerName", "UseCng", "d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q"}
    lengths = {name: len(base64.b64decode(params[name])) for name in ("d", "dp", "dq", "inverseQ", "modulus", "p", "q")}
    assert lengths == {"d": 256, "dp": 128, "dq": 128, "inverseQ": 128, "modulus": 256, "p": 128, "q": 128}
    assert _int(params["p"]) * _int(params["q"]) == _int(params["modulus"])
    assert params["exponent"] == "AQAB" == key.public_key()["exponent"]
    assert params["modulus"] == key.public_key()["modulus"]


def test_files_describe_the_registered_agent_and_its_oauth_client() -> None:
    """We test: .agent names the agent, pool and server; .credentials is the OAuth scheme with the returned
    clientId and authorizationUrl (also the OAuth endpoint on Services)."""
    files = agent_files.agent_files(
        registered=REGISTERED,
        key=agent_files.AgentKey.generate(),
        pool_id=3,
        pool_name="linux",
        server_url="https://dev.azure.com/contoso",
    )
    settings = json.loads(files[".agent"])
    assert settings == {
        "agentId": 77,
        "agentName": "azp-linux-42",
        "poolId": 3,
        "poolName": "linux",
        "serverUrl": "https://dev.azure.com/contoso/",
        "workFolder": "_work",
    }
    credentials = json.loads(files[".credentials"])
    url = REGISTERED["authorization"]["authorizationUrl"]  # type: ignore[index]
    assert credentials == {
        "scheme": "OAuth",
        "data": {"clientId": REGISTERED["authorization"]["clientId"], "authorizationUrl": url, "oauthEndpointUrl": url},  # type: ignore[index]
    }


def test_a_registration_without_an_oauth_identity_is_an_error() -> None:
    """We test: a response with no authorization.clientId is refused, not turned into useless files."""
    with pytest.raises(TransientError, match="OAuth client identity"):
        agent_files.agent_files(
            registered={"id": 1, "name": "a"},
            key=agent_files.AgentKey.generate(),
            pool_id=1,
            pool_name="p",
            server_url="u",
        )


def _rendered(registration: str) -> dict[str, object]:
    cfg = config(pool("Linux Pool", template("docker")), agent_registration=registration)
    return render.render_job(
        config=cfg,
        pool=cfg.pools[0],
        template=cfg.pools[0].templates[0],
        job_template=USER_JOB,
        job_name="azp-x-42",
        request_id=42,
        agent_id=77,
    )


def test_reconciler_mode_mounts_the_agents_files_and_no_pat() -> None:
    """We test: the registering container gets the Secret named after the Job at AZP_AGENT_FILES; no container
    and no volume refers to the PAT Secret; the pod says which agent it runs (name and id)."""
    job = _rendered("reconciler")
    pod = job["spec"]["template"]["spec"]  # type: ignore[index]
    assert "prod-pat" not in json.dumps(job) and "azp-agents-pat" not in json.dumps(job)
    assert pod["volumes"] == [  # type: ignore[index]
        {"name": render.AGENT_FILES_VOLUME, "secret": {"secretName": "azp-x-42", "defaultMode": 0o440}}
    ]
    register = pod["initContainers"][0]  # type: ignore[index]
    assert env_of(register)["AZP_AGENT_FILES"] == render.AGENT_FILES_DIR
    assert env_of(register)["AZP_AGENT_NAME"] == "azp-x-42"
    assert "AZP_TOKEN_FILE" not in env_of(register)
    assert not pod["containers"][0].get("volumeMounts")  # type: ignore[index]
    annotations = job["spec"]["template"]["metadata"]["annotations"]  # type: ignore[index]
    assert annotations[names.ANNOTATION_AGENT_NAME] == "azp-x-42"
    assert annotations[names.ANNOTATION_AGENT_ID] == "77"


def test_agent_files_secret_is_owned_by_its_job() -> None:
    """We test: the Secret has the Job's name, namespace and labels, an ownerReference to the Job's uid, and
    the files base64-encoded under their own names."""
    job = _rendered("reconciler")
    secret = render.agent_files_secret(job, files={".agent": "{}", ".credentials": "c"}, job_uid="uid-1")
    assert secret["metadata"]["name"] == "azp-x-42"
    assert secret["metadata"]["labels"] == job["metadata"]["labels"]  # type: ignore[index]
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "azp-x-42", "uid": "uid-1"}
    ]
    assert base64.b64decode(secret["data"][".credentials"]) == b"c"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({}, "token"),
        ({"auth": {"method": "pat"}}, "token"),
        ({"auth": {"method": "workloadIdentity"}}, "reconciler"),
        ({"agents": {"registration": "reconciler"}}, "reconciler"),
        ({"auth": {"method": "managedIdentity"}, "agents": {"registration": "token"}}, "token"),
    ],
)
def test_registration_defaults_to_reconciler_without_a_pat(document: dict[str, object], expected: str) -> None:
    """We test: agents.registration is as set, else reconciler unless auth.method is pat (its default)."""
    assert config_module.agent_registration(document) == expected


def test_registration_is_validated() -> None:
    """We test: an unknown agents.registration is refused naming the key."""
    pools = [{"name": "linux", "jobTemplate": "job.yaml"}]
    document = {"organization": "https://dev.azure.com/x", "pools": pools, "agents": {"registration": "pat"}}
    with pytest.raises(ConfigError, match=r"agents\.registration"):
        config_module.validate_document(document)
