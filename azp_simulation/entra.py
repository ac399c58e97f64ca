"""An emulator of Microsoft Entra ID's token service for daemon apps: a real HTTPS server on 127.0.0.1.

What it serves, and where each behaviour comes from (Microsoft identity platform documentation,
https://learn.microsoft.com/en-us/entra/identity-platform/ , and the routes MSAL for Python calls, read from
AzureAD/microsoft-authentication-library-for-python `msal/authority.py` and `msal/oauth2cli/oauth2.py`):
- `GET /{tenant}/v2.0/.well-known/openid-configuration`: the OpenID Connect metadata MSAL reads the token
  endpoint from (v2-protocols-oidc, "Find your app's OpenID configuration document URI");
- `GET /common/discovery/instance`: instance discovery (MSAL asks it about an authority host it does not know;
  the reconciler turns it off for such hosts, the route is served for clients that do not);
- `GET /{tenant}/discovery/v2.0/keys`: the signing keys (JWKS) of the tokens it issues;
- `POST /{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials` (v2-oauth2-client-creds-grant-flow):
  `client_secret`, or `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` with a
  `client_assertion` that is either a JWT signed with a registered certificate's key (certificate-credentials:
  `aud` = the token endpoint, `iss` = `sub` = the client id, `x5t` or `x5t#S256` = the thumbprint) or a token of
  a trusted external issuer (workload-identity-federation: `iss` and `sub` must match a federated credential,
  `aud` must contain `api://AzureADTokenExchange`). Answers `{"token_type": "Bearer", "expires_in", "access_token"}`;
  errors are the AADSTS bodies of reference-error-codes ({"error", "error_description", "error_codes",
  "timestamp", "trace_id", "correlation_id", "error_uri"}): AADSTS90002 unknown tenant, AADSTS700016 unknown
  client, AADSTS7000215 wrong secret, AADSTS700027 bad certificate assertion, AADSTS700024 expired assertion,
  AADSTS70021 no matching federated credential, AADSTS1002012 bad scope, AADSTS500011 unknown resource (the code
  for a certificate assertion whose `aud` is not the token endpoint, 50027 here, is unconfirmed);
- `GET /msi/token`: the App Service managed identity endpoint azure-identity uses when IDENTITY_ENDPOINT and
  IDENTITY_HEADER are set (app-service overview-managed-identity, "REST endpoint reference": api-version
  2019-08-01, `resource`, optional `client_id`, header `X-IDENTITY-HEADER`; answer `{access_token, expires_on,
  resource, token_type, client_id}`). The real endpoint is plain HTTP on the host; here it is the same HTTPS server.

Access tokens are RS256 JWTs with the claims of a v1 app-only token (access-token-claims-reference: `aud`,
`iss` https://sts.windows.net/{tid}/, `iat`, `nbf`, `exp`, `appid`, `oid`, `sub`, `tid`, `idtyp` app) and a
configurable lifetime. `ServiceAccountIssuer` stands for a cluster's OIDC issuer, the one AKS workload identity
federates with: it writes the projected service account token file the AKS webhook mounts.

Not emulated: user flows, refresh tokens, the v1 endpoint, conditional access, token revocation lists, fetching
a federated issuer's keys from its discovery document (the issuer's key is handed over by `trust_issuer`), and
IMDS (169.254.169.254 cannot be pointed elsewhere by azure-identity's ManagedIdentityCredential).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from azp_simulation.serving import FaultingHandler, ServedEmulator

AZURE_DEVOPS_APP_ID = "499b84ac-1321-427f-aa17-267ca6975798"
"""Azure DevOps' application ID: the resource of `499b84ac-.../.default` and the `aud` of its tokens."""
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
"""The audience Entra ID expects in a federated token (the AKS webhook's default)."""
MI_API_VERSION = "2019-08-01"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(claims: Mapping[str, Any], key: rsa.RSAPrivateKey, *, headers: Mapping[str, Any] | None = None) -> str:
    """An RS256 JWT (RFC 7519) of these claims."""
    header = {"typ": "JWT", "alg": "RS256", **(headers or {})}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(dict(claims)).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The header and claims of a JWT, unverified; None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = json.loads(_unb64url(parts[0])), json.loads(_unb64url(parts[1]))
    except ValueError:
        return None
    return (header, claims) if isinstance(header, dict) and isinstance(claims, dict) else None


def verify_jwt_signature(token: str, key: rsa.RSAPublicKey) -> bool:
    """Whether the RS256 or PS256 signature of `token` is `key`'s (MSAL signs client assertions with either)."""
    parsed = jwt_parts(token)
    if parsed is None:
        return False
    signing_input, _, signature = token.rpartition(".")
    algorithm = parsed[0].get("alg")
    scheme: padding.AsymmetricPadding
    if algorithm == "RS256":
        scheme = padding.PKCS1v15()
    elif algorithm == "PS256":
        scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    else:
        return False
    try:
        key.verify(_unb64url(signature), signing_input.encode(), scheme, hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class ThrowawayCA:
    """A private CA and a server certificate for 127.0.0.1/localhost signed by it, written as PEM files: the
    CA bundle a client trusts (the reconciler's REQUESTS_CA_BUNDLE, the chart's caBundle) and the server's pair."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path) -> ThrowawayCA:
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, server_key = new_key(), new_key()
        now = dt.datetime.now(dt.UTC)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azp-agents throwaway CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        paths = cls(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
        paths.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        paths.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        paths.key_file.write_bytes(_private_pem(server_key))
        return paths

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_pem(key: rsa.RSAPrivateKey, *, subject: str) -> bytes:
    """A self-signed certificate with its private key, the PEM file azure-identity's ClientCertificateCredential
    reads (an app registration's certificate credential is usually self-signed)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return _private_pem(key) + cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class AppRegistration:
    """An application (client) registered in the tenant, with its service principal and credentials."""

    client_id: str
    object_id: str
    secrets: set[str] = field(default_factory=set)
    certificates: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    """Public keys by SHA-1 and SHA-256 thumbprint (base64url), as `x5t` / `x5t#S256` name them."""
    federated: set[tuple[str, str]] = field(default_factory=set)
    """(issuer, subject) pairs of its federated identity credentials."""


class ServiceAccountIssuer:
    """A Kubernetes cluster's service account token issuer (the OIDC issuer AKS publishes): it signs projected
    tokens with audience api://AzureADTokenExchange, as the kubelet writes them for the workload identity webhook."""

    def __init__(self, issuer: str = "https://oidc.aks.example/cluster-1/") -> None:
        self.issuer = issuer
        self.key = new_key()

    def token(self, *, namespace: str, service_account: str, lifetime: float = 3600.0) -> str:
        now = int(time.time())
        claims = {
            "aud": [TOKEN_EXCHANGE_AUDIENCE],
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
        }
        return sign_jwt(claims, self.key, headers={"kid": "sa-key"})


class AadstsError(Exception):
    """An AADSTS error answer: HTTP status, OAuth error code and the AADSTS number with its text."""

    def __init__(self, status: int, error: str, code: int, text: str) -> None:
        super().__init__(f"AADSTS{code}: {text}")
        self.status, self.error, self.code, self.text = status, error, code, text


class ManagedIdentityError(Exception):
    """An App Service identity endpoint error: `{"statusCode", "message"}`, the shape MSAL reads from it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EntraEmulator(ServedEmulator):
    """One emulated Entra ID tenant: app registrations, managed identities and trusted token issuers."""

    name = "entra-emulator"
    auto_tick = False

    def __init__(
        self,
        *,
        directory: Path,
        tenant_id: str = "72f988bf-86f1-41af-91ab-2d7cd011db47",
        token_lifetime: float = 3599.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant_id = tenant_id
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.ca = ThrowawayCA.create(directory)
        self.signing_key = new_key()
        self.key_id = b64url(hashlib.sha256(self.public_key_der()).digest()[:12])
        self.identity_header = uuid.uuid4().hex
        """The value App Service puts in IDENTITY_HEADER (and the caller must send back)."""
        self.apps: dict[str, AppRegistration] = {}
        self.managed: dict[str, AppRegistration] = {}
        """Managed identities assigned to the emulated host, by client id ('' = the system-assigned one)."""
        self.issuers: dict[str, rsa.RSAPublicKey] = {}
        self.resources: set[str] = {AZURE_DEVOPS_APP_ID}
        """Resources (application ids or URIs) tokens may be asked for: Azure DevOps, and what add_resource adds."""
        self.issued: list[dict[str, Any]] = []
        """Claims of every access token issued, in order (for tests counting renewals)."""
        self.tokens: list[str] = []
        """Every access token issued (for tests scanning outputs for them)."""
        self.refusals: list[str] = []
        self._lock = threading.Lock()
        self._init_serving()

    # Tenant setup (in-process, as an administrator would in the portal)

    def public_key_der(self) -> bytes:
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def register_app(self, *, secret: str | None = None, certificate: bytes | None = None) -> AppRegistration:
        """A new app registration (with its service principal), with a client secret and/or a certificate (PEM;
        only its public part is kept)."""
        app = AppRegistration(client_id=str(uuid.uuid4()), object_id=str(uuid.uuid4()))
        if secret:
            app.secrets.add(secret)
        if certificate is not None:
            self.add_certificate(app, certificate)
        with self._lock:
            self.apps[app.client_id] = app
        return app

    def add_certificate(self, app: AppRegistration, pem: bytes) -> None:
        """Upload a certificate (public part) to an app registration."""
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        app.certificates[b64url(hashlib.sha1(der).digest())] = key
        app.certificates[b64url(hashlib.sha256(der).digest())] = key

    def federate(self, app: AppRegistration, *, issuer: ServiceAccountIssuer, subject: str) -> None:
        """Add a federated identity credential (issuer + subject, audience api://AzureADTokenExchange)."""
        with self._lock:
            self.issuers[issuer.issuer] = issuer.key.public_key()
            app.federated.add((issuer.issuer, subject))

    def add_resource(self, resource: str) -> None:
        """Make a resource known to the tenant (an API others can ask tokens for, e.g. an ARM endpoint)."""
        with self._lock:
            self.resources.add(resource)

    def assign_managed_identity(self, *, user_assigned: bool = False) -> AppRegistration:
        """A managed identity of the emulated host: system-assigned, or a user-assigned one (used by client id)."""
        identity = AppRegistration(client_id=str(uuid.uuid4()), object_id=str(uuid.uuid4()))
        with self._lock:
            self.managed[identity.client_id if user_assigned else ""] = identity
        return identity

    @property
    def authority_host(self) -> str:
        return self.base_url

    def managed_identity_env(self) -> dict[str, str]:
        """The environment App Service gives its processes (what azure-identity reads)."""
        return {"IDENTITY_ENDPOINT": f"{self.base_url}/msi/token", "IDENTITY_HEADER": self.identity_header}

    # Serving

    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Serve HTTPS (azure-identity refuses an http:// authority) with the throwaway CA's certificate."""
        url = super().start(port, host)
        assert self._server is not None
        self._server.socket = self.ca.server_context().wrap_socket(self._server.socket, server_side=True)
        return url

    def _url(self, host: str, port: int) -> str:
        return f"https://localhost:{port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        return Handler

    def tick(self, now: float | None = None) -> None:
        """Nothing changes with time here but the tokens' validity, which is computed when checked."""

    def jwks(self) -> dict[str, Any]:
        numbers = self.signing_key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": self.key_id,
                    "n": b64url(numbers.n.to_bytes(256, "big")),
                    "e": b64url(numbers.e.to_bytes(3, "big")),
                }
            ]
        }

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        base = f"{self.base_url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{self.base_url}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.base_url}/{self.tenant_id}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU",
        }

    def instance_discovery(self, authorization_endpoint: str) -> dict[str, Any]:
        host = urlsplit(authorization_endpoint).netloc or urlsplit(self.base_url).netloc
        return {
            "tenant_discovery_endpoint": f"https://{host}/{self.tenant_id}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }

    # Tokens

    def access_token(self, identity: AppRegistration, resource: str) -> tuple[str, int]:
        """A signed v1 app-only access token for `resource` and its lifetime in whole seconds."""
        now = int(self.clock())
        lifetime = int(self.token_lifetime)
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": identity.client_id,
            "appidacr": "1",
            "idtyp": "app",
            "oid": identity.object_id,
            "sub": identity.object_id,
            "tid": self.tenant_id,
            "ver": "1.0",
            "uti": b64url(uuid.uuid4().bytes),
        }
        token = sign_jwt(claims, self.signing_key, headers={"kid": self.key_id, "x5t": self.key_id})
        with self._lock:
            self.issued.append(claims)
            self.tokens.append(token)
        return token, lifetime

    def client_credentials(self, tenant: str, form: Mapping[str, str], token_url: str) -> dict[str, Any]:
        """The token endpoint's answer for a client_credentials grant, or an AadstsError."""
        if tenant not in (self.tenant_id,):
            raise AadstsError(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into "
                "the correct cloud. Check with your subscription administrator, this may happen if there are no "
                "active subscriptions for the tenant.",
            )
        if form.get("grant_type") != "client_credentials":
            raise AadstsError(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        with self._lock:
            resources = frozenset(self.resources)
        resource = _resource_of(form.get("scope", ""), resources)
        client_id = form.get("client_id", "")
        with self._lock:
            app = self.apps.get(client_id)
        if app is None:
            raise AadstsError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{self.tenant_id}'. This "
                "can happen if the application has not been installed by the administrator of the tenant or consented "
                "to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
            )
        self._authenticate_client(app, form, token_url)
        token, lifetime = self.access_token(app, resource)
        return {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}

    def _authenticate_client(self, app: AppRegistration, form: Mapping[str, str], token_url: str) -> None:
        if "client_secret" in form:
            if form["client_secret"] not in app.secrets:
                raise AadstsError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                    f"value, not the client secret ID, for a secret added to app '{app.client_id}'.",
                )
            return
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            raise AadstsError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        assertion = form["client_assertion"]
        parsed = jwt_parts(assertion)
        if parsed is None:
            raise AadstsError(400, "invalid_client", 50027, "JWT token is invalid or malformed.")
        header, claims = parsed
        if claims.get("iss") in self.issuers:
            self._check_federated(app, assertion, claims)
        else:
            self._check_certificate_assertion(app, assertion, header, claims, token_url)

    def _check_certificate_assertion(
        self, app: AppRegistration, assertion: str, header: Mapping[str, Any], claims: Mapping[str, Any], url: str
    ) -> None:
        thumbprint = str(header.get("x5t#S256") or header.get("x5t"))
        key = app.certificates.get(thumbprint.rstrip("="))
        if key is None or not verify_jwt_signature(assertion, key):
            raise AadstsError(
                401,
                "invalid_client",
                700027,
                f"The certificate with identifier used to sign the client assertion is not registered on application. "
                f"[Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit "
                f"the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
                f"'{app.client_id}'.]",
            )
        if claims.get("sub") != app.client_id or claims.get("iss") != app.client_id:
            raise AadstsError(
                401, "invalid_client", 700021, "Client assertion application identifier doesn't match 'client_id'."
            )
        if urlsplit(str(claims.get("aud", ""))).path.rstrip("/") != urlsplit(url).path.rstrip("/"):
            raise AadstsError(
                401,
                "invalid_client",
                50027,
                "Invalid JWT token. The client assertion's audience is not this token endpoint.",
            )
        self._check_lifetime(claims)

    def _check_federated(self, app: AppRegistration, assertion: str, claims: Mapping[str, Any]) -> None:
        issuer, subject = str(claims.get("iss")), str(claims.get("sub"))
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        trusted = (issuer, subject) in app.federated and verify_jwt_signature(assertion, self.issuers[issuer])
        if not trusted or TOKEN_EXCHANGE_AUDIENCE not in audiences:
            raise AadstsError(
                400,
                "invalid_request",
                70021,
                f"No matching federated identity record found for presented assertion. Assertion Issuer: '{issuer}'. "
                f"Assertion Subject: '{subject}'. Assertion Audience: '{','.join(map(str, audiences))}'.",
            )
        self._check_lifetime(claims)

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        if not (float(claims.get("nbf", 0)) - 300 <= now < float(claims.get("exp", 0)) + 300):
            raise AadstsError(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")

    def managed_identity_token(self, query: Mapping[str, str], header: str | None) -> dict[str, Any]:
        """The App Service endpoint's answer (the `resource` is the app ID, without /.default)."""
        if header != self.identity_header:
            raise ManagedIdentityError(401, "The X-IDENTITY-HEADER header is missing or does not match.")
        if query.get("api-version") != MI_API_VERSION:
            raise ManagedIdentityError(400, f"api-version must be {MI_API_VERSION}.")
        with self._lock:
            identity = self.managed.get(query.get("client_id", ""))
        if identity is None:
            raise ManagedIdentityError(400, "No managed identity found for the specified client_id (or none assigned).")
        resource = query.get("resource", "")
        token, lifetime = self.access_token(identity, resource)
        return {
            "access_token": token,
            "expires_on": str(int(self.clock()) + lifetime),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }

    def verify_access_token(self, token: str, *, audience: str) -> dict[str, Any] | None:
        """The claims of a token this tenant issued for `audience` (expired or not), None otherwise: what a
        resource such as Azure DevOps checks with the tenant's published signing keys."""
        parsed = jwt_parts(token)
        if parsed is None or not verify_jwt_signature(token, self.signing_key.public_key()):
            return None
        claims = parsed[1]
        if claims.get("aud") != audience or claims.get("tid") != self.tenant_id:
            return None
        return claims


def _resource_of(scope: str, resources: frozenset[str]) -> str:
    """`{app id}/.default` -> the app id, one of `resources` (client_credentials takes only .default scopes)."""
    scopes = scope.split()
    defaults = [s for s in scopes if s.endswith("/.default")]
    if len(scopes) != 1 or not defaults:
        raise AadstsError(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a scope value with "
            "/.default suffixed to the resource identifier (application ID URI).",
        )
    resource = defaults[0].removesuffix("/.default")
    if resource not in resources:
        raise AadstsError(
            400,
            "invalid_resource",
            500011,
            f"The resource principal named {resource} was not found in the tenant named {resource}. This can happen "
            "if the application has not been installed by the administrator of the tenant.",
        )
    return resource


class _Handler(FaultingHandler):
    emulator: EntraEmulator

    def _serve(self, method: str) -> None:
        emulator = self.emulator
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        segments = [s for s in parts.path.split("/") if s]
        try:
            if method == "GET" and segments == ["msi", "token"]:
                self._send(200, emulator.managed_identity_token(query, self.headers.get("X-IDENTITY-HEADER")))
            elif method == "GET" and segments == ["common", "discovery", "instance"]:
                self._send(200, emulator.instance_discovery(query.get("authorization_endpoint", "")))
            elif method == "GET" and segments[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                self._send(200, emulator.openid_configuration(segments[0]))
            elif method == "GET" and segments[1:] == ["discovery", "v2.0", "keys"]:
                self._send(200, emulator.jwks())
            elif method == "POST" and segments[1:] == ["oauth2", "v2.0", "token"]:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode("utf-8")))
                url = f"{emulator.base_url}{parts.path}"
                self._send(200, emulator.client_credentials(segments[0], form, url))
            else:
                self._send(404, {"error": "not_found", "error_description": f"no route {method} {parts.path}"})
        except ManagedIdentityError as error:
            self._send(error.status, {"statusCode": error.status, "message": str(error)})
        except AadstsError as error:
            with emulator._lock:
                emulator.refusals.append(f"AADSTS{error.code}")
            self._send(error.status, _error_body(error, emulator.base_url))

    def _send(self, status: int, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _error_body(error: AadstsError, base_url: str) -> dict[str, Any]:
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "error": error.error,
        "error_description": f"AADSTS{error.code}: {error.text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}"
        f"\r\nTimestamp: {stamp}",
        "error_codes": [error.code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"{base_url}/error?code={error.code}",
    }
