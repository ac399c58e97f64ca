"""The key pair and the three files of an agent the reconciler registers itself (`agents.registration:
reconciler`), so that its pod runs it without any organization credential.

What the real agent writes when `config.sh` registers it, and reads back when it runs (all from
microsoft/azure-pipelines-agent, commit 42bde98 of 2026-08-21):
- `.agent`: the AgentSettings JSON (src/Microsoft.VisualStudio.Services.Agent/ConfigurationStore.cs,
  camelCase data members): agentId, agentName, poolId, poolName, serverUrl, workFolder. `IsConfigured()` is
  "`.agent` exists".
- `.credentials`: `{"scheme": "OAuth", "data": {"clientId", "authorizationUrl", "oauthEndpointUrl"}}` from the
  registration's `authorization` (src/Agent.Listener/Configuration/ConfigurationManager.cs,
  UpdateCredentialData: on Azure DevOps Services the OAuth endpoint is the authorizationUrl itself).
  `HasCredentials()` is "`.credentials` exists".
- `.credentials_rsaparams`: the RSA-2048 private key as RSAParametersSerializable JSON (Configuration/
  IRSAKeyManager.cs): ContainerName, UseCng, d, dp, dq, exponent, inverseQ, modulus, p, q, the byte arrays in
  base64 (Newtonsoft), big-endian, D as long as the modulus and the CRT parts half as long, as
  `RSA.ImportParameters` requires. Linux reads it as is (RSAFileKeyManager.cs); Windows reads it protected
  with DPAPI in LocalMachine scope (Configuration.Windows/RSAEncryptedFileKeyManager.cs), which only the
  agent's own machine can do: start.ps1 protects the plain file when it copies it into the agent directory.
The running listener then signs a JWT with that key (OAuthCredential.cs, VssOAuthJwtBearerClientCredential)
and trades it for access tokens: no PAT is ever in the pod.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from reconciler.errors import TransientError

KEY_BITS = 2048
AGENT_FILE = ".agent"
CREDENTIALS_FILE = ".credentials"
RSA_PARAMS_FILE = ".credentials_rsaparams"
FILES = (AGENT_FILE, CREDENTIALS_FILE, RSA_PARAMS_FILE)


def _b64(value: int, length: int) -> str:
    return base64.b64encode(value.to_bytes(length, "big")).decode()


@dataclass(frozen=True)
class AgentKey:
    """A fresh RSA-2048 key pair for one agent."""

    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> AgentKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS))

    def public_key(self) -> dict[str, str]:
        """`authorization.publicKey` of the registration: exponent and modulus, base64 big-endian."""
        numbers = self.private.public_key().public_numbers()
        return {"exponent": _b64(numbers.e, 3), "modulus": _b64(numbers.n, KEY_BITS // 8)}

    def rsa_parameters(self) -> str:
        """The `.credentials_rsaparams` JSON (RSAParametersSerializable)."""
        numbers = self.private.private_numbers()
        full, half = KEY_BITS // 8, KEY_BITS // 16
        public = self.public_key()
        return json.dumps(
            {
                "ContainerName": "",
                "UseCng": False,
                "d": _b64(numbers.d, full),
                "dp": _b64(numbers.dmp1, half),
                "dq": _b64(numbers.dmq1, half),
                "exponent": public["exponent"],
                "inverseQ": _b64(numbers.iqmp, half),
                "modulus": public["modulus"],
                "p": _b64(numbers.p, half),
                "q": _b64(numbers.q, half),
            }
        )


def agent_files(
    *, registered: Mapping[str, Any], key: AgentKey, pool_id: int, pool_name: str, server_url: str
) -> dict[str, str]:
    """The three files of the agent the service returned from `POST .../agents` (`registered`)."""
    authorization = registered.get("authorization")
    authorization = authorization if isinstance(authorization, Mapping) else {}
    client_id, url = authorization.get("clientId"), authorization.get("authorizationUrl")
    agent_id, name = registered.get("id"), registered.get("name")
    if not all(isinstance(v, str) and v for v in (client_id, url, name)) or not isinstance(agent_id, int):
        raise TransientError("POST pools/{poolId}/agents: the response has no agent id, name or OAuth client identity")
    settings = {
        "agentId": agent_id,
        "agentName": name,
        "poolId": pool_id,
        "poolName": pool_name,
        "serverUrl": server_url.rstrip("/") + "/",
        "workFolder": "_work",
    }
    credentials = {
        "scheme": "OAuth",
        "data": {"clientId": client_id, "authorizationUrl": url, "oauthEndpointUrl": url},
    }
    return {
        AGENT_FILE: json.dumps(settings),
        CREDENTIALS_FILE: json.dumps(credentials),
        RSA_PARAMS_FILE: key.rsa_parameters(),
    }
