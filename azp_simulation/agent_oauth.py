"""The agent's OAuth flow in the Azure DevOps emulator: a client assertion signed with the agent's key, traded
for an access token that is good for that agent's own session and messages only.

What the real agent sends, from its source (microsoft/azure-pipelines-agent 42bde98
src/Agent.Listener/Configuration/OAuthCredential.cs, and the VSS client it uses, as published in actions/runner
src/Sdk/WebApi/WebApi/OAuth/):
- VssOAuthJwtBearerClientCredential(clientId, authorizationUrl, key): a VssOAuthJwtBearerAssertion with
  issuer = subject = clientId, audience = authorizationUrl, a fresh `jti`, valid from now for 5 minutes
  (BearerTokenLifetime), signed with the agent's RSA key (RS256).
- VssOAuthTokenHttpClient posts a form to the OAuth endpoint (`oauthEndpointUrl`, the authorizationUrl on
  Services): grant_type=client_credentials (VssOAuthConstants.ClientCredentialsGrantType),
  client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer, client_assertion=<the JWT>.
- The answer is a VssOAuthTokenResponse: access_token, token_type, expires_in; or, with HTTP 400 and a JSON
  body, error and error_description, which the client raises as VssOAuthTokenRequestException.
- ConfigurationManager.cs quotes two of the service's refusals (clock skew): "The bearer token expired on
  {ValidTo}. Current server time is {now}." and "The bearer token is not valid until {ValidFrom}. Current
  server time is {now}."

The emulator checks every claim against what it stored at registration (the agent's clientId, the public
key of `POST .../agents` and the authorizationUrl it returned), never anything a caller says about itself.
Choices where no source settles it ([unconfirmed]): the error codes (`invalid_client` for a bad assertion,
`unsupported_grant_type`), the wording of refusals other than the two quoted above, a one-hour access token,
and no clock-skew allowance. Not emulated: refresh tokens, token revocation other than deleting the agent,
and serving the endpoint over HTTP (its host, vstoken.dev.azure.com, is not the organization's: simulated
agents, like the rest of the agent side, call it in process).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCESS_TOKEN_SECONDS = 3600
AGENT_FILES = (".agent", ".credentials", ".credentials_rsaparams")
"""What a configured agent runs from (ConfigurationStore.cs, RSAFileKeyManager.cs)."""
ASSERTION_SECONDS = 300
"""VssOAuthJwtBearerAssertion.BearerTokenLifetime."""


@dataclass(frozen=True)
class OAuthClient:
    """What the service stored for one agent at registration."""

    agent_id: int
    client_id: str
    authorization_url: str
    public_key: Mapping[str, str]


class OAuthRefusal(Exception):
    """A token request the service refuses: HTTP 400 with {error, error_description}."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.body = {"error": error, "error_description": description}


def _b64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise OAuthRefusal("invalid_client", "The client assertion is not a JSON web token.") from None


def _public_key(key: Mapping[str, str]) -> rsa.RSAPublicKey:
    exponent = int.from_bytes(base64.b64decode(key["exponent"]), "big")
    modulus = int.from_bytes(base64.b64decode(key["modulus"]), "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%m/%d/%Y %H:%M:%S")


def _claims(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    parts = assertion.split(".")
    if len(parts) != 3:
        raise OAuthRefusal("invalid_client", "The client assertion is not a JSON web token.")
    try:
        header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
    except ValueError:
        raise OAuthRefusal("invalid_client", "The client assertion is not a JSON web token.") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise OAuthRefusal("invalid_client", "The client assertion is not a JSON web token.")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), _b64url(parts[2])


class TokenService:
    """The token endpoint and the access tokens it issued."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._tokens: dict[str, tuple[int, float]] = {}

    def exchange(
        self, form: Mapping[str, str], client: Callable[[str], OAuthClient | None], url: str
    ) -> dict[str, Any]:
        """Check a token request posted to `url` and issue an access token; OAuthRefusal when refused.
        `client` finds the stored registration by clientId (None: no such agent, e.g. deleted)."""
        if form.get("grant_type") != CLIENT_CREDENTIALS:
            raise OAuthRefusal("unsupported_grant_type", f"The grant type {form.get('grant_type')!r} is not supported.")
        if form.get("client_assertion_type") != JWT_BEARER_ASSERTION:
            raise OAuthRefusal("invalid_client", "A client assertion of type jwt-bearer is required.")
        header, claims, signed, signature = _claims(form.get("client_assertion", ""))
        registered = client(str(claims.get("iss", "")))
        if registered is None or claims.get("sub") != registered.client_id:
            raise OAuthRefusal("invalid_client", f"The client {claims.get('iss')!r} is not registered.")
        if url != registered.authorization_url or claims.get("aud") != registered.authorization_url:
            raise OAuthRefusal("invalid_client", f"The client assertion's audience is not {url}.")
        if header.get("alg") != "RS256":
            raise OAuthRefusal("invalid_client", f"The signing algorithm {header.get('alg')!r} is not supported.")
        try:
            _public_key(registered.public_key).verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise OAuthRefusal("invalid_client", "The client assertion's signature is not valid.") from None
        self._check_lifetime(claims)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (registered.agent_id, self.clock() + ACCESS_TOKEN_SECONDS)
        return {"access_token": token, "token_type": "bearer", "expires_in": ACCESS_TOKEN_SECONDS}

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        valid_from, valid_to = claims.get("nbf"), claims.get("exp")
        if not isinstance(valid_from, int | float) or not isinstance(valid_to, int | float):
            raise OAuthRefusal("invalid_client", "The client assertion has no lifetime (nbf, exp).")
        if valid_to <= now:
            raise OAuthRefusal(
                "invalid_client",
                f"The bearer token expired on {_stamp(valid_to)}. Current server time is {_stamp(now)}.",
            )
        if valid_from > now:
            raise OAuthRefusal(
                "invalid_client",
                f"The bearer token is not valid until {_stamp(valid_from)}. Current server time is {_stamp(now)}.",
            )

    def agent_of(self, access_token: str) -> int | None:
        """The agent an unexpired access token was issued to."""
        entry = self._tokens.get(access_token)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def revoke_agent(self, agent_id: int) -> None:
        """An agent deleted (or re-keyed): its tokens stop working."""
        self._tokens = {t: e for t, e in self._tokens.items() if e[0] != agent_id}


def client_assertion(*, client_id: str, audience: str, private_key: rsa.RSAPrivateKey, now: float) -> str:
    """The JWT a real agent signs (VssOAuthJwtBearerAssertion): what simulated agents send."""
    header = {"typ": "JWT", "alg": "RS256"}
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": secrets.token_hex(16),
        "nbf": int(now),
        "exp": int(now) + ASSERTION_SECONDS,
    }

    def encode(value: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=").decode()

    signed = f"{encode(header)}.{encode(claims)}"
    signature = private_key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def private_key_from_rsa_parameters(text: str) -> rsa.RSAPrivateKey:
    """The key in a `.credentials_rsaparams` file (RSAParametersSerializable JSON), as the agent imports it."""
    params = json.loads(text)

    def number(name: str) -> int:
        return int.from_bytes(base64.b64decode(params[name]), "big")

    public = rsa.RSAPublicNumbers(number("exponent"), number("modulus"))
    private = rsa.RSAPrivateNumbers(
        p=number("p"),
        q=number("q"),
        d=number("d"),
        dmp1=number("dp"),
        dmq1=number("dq"),
        iqmp=number("inverseQ"),
        public_numbers=public,
    )
    return private.private_key()


def token_request(files: Mapping[str, str], *, now: float) -> tuple[int, str, dict[str, str]]:
    """What the listener of an agent with these files posts to get an access token (OAuthCredential.cs): its
    agent id, the OAuth endpoint URL and the form."""
    settings, credentials = json.loads(files[".agent"]), json.loads(files[".credentials"])["data"]
    assertion = client_assertion(
        client_id=credentials["clientId"],
        audience=credentials["authorizationUrl"],
        private_key=private_key_from_rsa_parameters(files[".credentials_rsaparams"]),
        now=now,
    )
    form = {
        "grant_type": CLIENT_CREDENTIALS,
        "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": assertion,
    }
    # For back compat with .credentials files without 'oauthEndpointUrl' (OAuthCredential.GetVssCredentials).
    url = credentials.get("oauthEndpointUrl") or credentials["authorizationUrl"]
    return int(settings["agentId"]), url, form
