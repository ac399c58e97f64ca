"""Where the Kubernetes API server is and how to prove who we are: in-cluster config or a kubeconfig.

kube.py makes a dozen kinds of REST call; the official client's configuration loader and generated API
classes cost about 2 s of CPU to import, more than a whole pass (benchmarks/cold_start.py). This module
reads the inputs the official clients read, and nothing else:

- In a pod (client-go rest.InClusterConfig): KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, the
  ServiceAccount token and CA under /var/run/secrets/kubernetes.io/serviceaccount. The token is read once:
  a pass lasts seconds, a projected token an hour at least.
- A kubeconfig (https://kubernetes.io/docs/reference/config-api/kubeconfig.v1/): the files KUBECONFIG lists
  (the first file to set a map key or the current context wins, as kubectl merges them) or
  ~/.kube/config; the current context or the one named. Cluster: server, certificate-authority(-data),
  insecure-skip-tls-verify, tls-server-name, proxy-url. User: token, tokenFile, client-certificate(-data),
  client-key(-data), username and password, and exec credential plugins (client.authentication.k8s.io/v1
  and v1beta1, https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins).
  Relative file paths are relative to the kubeconfig that names them.

Not supported, and refused with what to use instead: `auth-provider` (the azure and gcp providers were
removed from kubectl in 1.26; use an exec plugin such as kubelogin), interactive exec plugins (a CronJob
has no terminal), and an exec credential's expiry (a pass is shorter than any credential's life).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import AuthError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
_EXEC_TIMEOUT = 60.0


@dataclass(frozen=True)
class ClusterAccess:
    """The API server's address and our credentials. PEM text or a file path for each certificate."""

    server: str
    token: str | None = None
    basic_auth: tuple[str, str] | None = None
    ca_file: str | None = None
    ca_data: str | None = None
    client_cert_file: str | None = None
    client_cert_data: str | None = None
    client_key_file: str | None = None
    client_key_data: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    proxy_url: str | None = None


def load(kubeconfig: str | None, *, context: str | None = None, env: Mapping[str, str] | None = None) -> ClusterAccess:
    """In-cluster config when no kubeconfig is named and we run in a pod; else the kubeconfig."""
    env = os.environ if env is None else env
    if kubeconfig is None and env.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster(env)
    return from_kubeconfig(kubeconfig, context=context, env=env)


def in_cluster(env: Mapping[str, str], directory: Path = SERVICE_ACCOUNT_DIR) -> ClusterAccess:
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise AuthError("in a pod without KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT: no API server")
    try:
        token = (directory / "token").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuthError(
            f"no ServiceAccount token at {directory / 'token'} ({exc.strerror}): "
            "set automountServiceAccountToken: true on the pod"
        ) from None
    ca = directory / "ca.crt"
    if not ca.is_file():
        raise AuthError(f"no cluster CA at {ca}: the ServiceAccount volume is incomplete")
    bracketed = f"[{host}]" if ":" in host else host
    return ClusterAccess(server=f"https://{bracketed}:{port}", token=token, ca_file=str(ca))


def _kubeconfig_files(kubeconfig: str | None, env: Mapping[str, str]) -> list[Path]:
    if kubeconfig:
        return [Path(kubeconfig).expanduser()]
    listed = [Path(p).expanduser() for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        return [p for p in listed if p.exists()] or listed[:1]
    return [Path(env.get("HOME", "~")).expanduser() / ".kube" / "config"]


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise AuthError(
            f"no Kubernetes credentials: cannot read kubeconfig {path} ({exc.strerror}): run in a cluster, "
            "or point KUBECONFIG/--kubeconfig at a kubeconfig"
        ) from None
    except yaml.YAMLError as exc:
        raise AuthError(f"kubeconfig {path} is not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict):
        raise AuthError(f"kubeconfig {path} is not a mapping: it must have clusters, users and contexts")
    return document


def _named(
    documents: list[tuple[Path, dict[str, Any]]], section: str, key: str, name: str
) -> tuple[Path, dict[str, Any]]:
    """The first `section` entry called `name` across the files (kubectl's merge: the first one wins)."""
    for path, document in documents:
        for entry in document.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                value = entry.get(key)
                if not isinstance(value, dict):
                    raise AuthError(f"kubeconfig {path}: {section} entry {name!r} has no {key} mapping")
                return path, value
    files = ", ".join(str(p) for p, _ in documents)
    raise AuthError(f"kubeconfig ({files}): no {key} named {name!r} in {section}")


def from_kubeconfig(kubeconfig: str | None, *, context: str | None, env: Mapping[str, str]) -> ClusterAccess:
    documents = [(path, _read_document(path)) for path in _kubeconfig_files(kubeconfig, env)]
    chosen = context or next((str(d["current-context"]) for _, d in documents if d.get("current-context")), "")
    if not chosen:
        files = ", ".join(str(p) for p, _ in documents)
        raise AuthError(f"kubeconfig ({files}) has no current-context: set one (kubectl config use-context NAME)")
    _, ctx = _named(documents, "contexts", "context", chosen)
    cluster_file, cluster = _named(documents, "clusters", "cluster", str(ctx.get("cluster") or ""))
    user_file, user = cluster_file, dict[str, Any]()
    if ctx.get("user"):
        user_file, user = _named(documents, "users", "user", str(ctx["user"]))
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise AuthError(f"kubeconfig {cluster_file}: cluster {ctx.get('cluster')!r} has no https:// server")
    access = ClusterAccess(
        server=server,
        ca_file=_path(cluster, "certificate-authority", cluster_file),
        ca_data=_data(cluster, "certificate-authority-data", cluster_file),
        verify=not cluster.get("insecure-skip-tls-verify"),
        tls_server_name=cluster.get("tls-server-name") or None,
        proxy_url=cluster.get("proxy-url") or None,
    )
    return _with_user(access, user, user_file, cluster)


def _path(entry: Mapping[str, Any], key: str, origin: Path) -> str | None:
    value = entry.get(key)
    return str(origin.parent / Path(str(value)).expanduser()) if value else None


def _data(entry: Mapping[str, Any], key: str, origin: Path) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise AuthError(f"kubeconfig {origin}: {key} is not base64 of a PEM text") from None


def _with_user(
    access: ClusterAccess, user: Mapping[str, Any], origin: Path, cluster: Mapping[str, Any]
) -> ClusterAccess:
    if user.get("auth-provider"):
        name = (user["auth-provider"] or {}).get("name", "?")
        raise AuthError(
            f"kubeconfig {origin}: auth-provider {name!r} is not supported (kubectl removed azure and gcp in "
            "1.26): use an exec credential plugin instead, e.g. `kubelogin convert-kubeconfig`"
        )
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _read_token_file(_path(user, "tokenFile", origin) or "", origin)
    basic = (str(user["username"]), str(user.get("password") or "")) if user.get("username") else None
    fields: dict[str, Any] = {
        "token": str(token) if token else None,
        "basic_auth": basic,
        "client_cert_file": _path(user, "client-certificate", origin),
        "client_cert_data": _data(user, "client-certificate-data", origin),
        "client_key_file": _path(user, "client-key", origin),
        "client_key_data": _data(user, "client-key-data", origin),
    }
    if user.get("exec"):
        fields.update(_exec_credential(user["exec"], origin, access.server, cluster))
    return ClusterAccess(**{**access.__dict__, **{k: v for k, v in fields.items() if v is not None}})


def _read_token_file(path: str, origin: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuthError(f"kubeconfig {origin}: tokenFile {path}: {exc.strerror}") from None


def _exec_credential(spec: Any, origin: Path, server: str, cluster: Mapping[str, Any]) -> dict[str, Any]:
    """Run an exec credential plugin once and take the token or client certificate it prints."""
    if not isinstance(spec, dict) or not spec.get("command"):
        raise AuthError(f"kubeconfig {origin}: user.exec needs a command")
    version = str(spec.get("apiVersion") or "")
    if version not in EXEC_API_VERSIONS:
        raise AuthError(f"kubeconfig {origin}: user.exec.apiVersion {version!r} is not one of {EXEC_API_VERSIONS}")
    if spec.get("interactiveMode") == "Always":
        raise AuthError(f"kubeconfig {origin}: user.exec.interactiveMode Always needs a terminal, which a run has not")
    output = _run_plugin(spec, origin, _exec_info(spec, version, server, cluster))
    status = output.get("status") if isinstance(output, dict) else None
    if not isinstance(status, dict) or output.get("apiVersion") != version:
        raise AuthError(f"kubeconfig {origin}: the exec plugin {spec['command']} printed no {version} ExecCredential")
    if status.get("token"):
        return {"token": str(status["token"])}
    if status.get("clientCertificateData") and status.get("clientKeyData"):
        return {
            "client_cert_data": str(status["clientCertificateData"]),
            "client_key_data": str(status["clientKeyData"]),
        }
    raise AuthError(
        f"kubeconfig {origin}: the exec plugin {spec['command']} returned neither a token nor a certificate"
    )


_SHARED_CLUSTER_FIELDS = ("tls-server-name", "insecure-skip-tls-verify", "certificate-authority-data", "proxy-url")
_EXEC_EXTENSION = "client.authentication.k8s.io/exec"


def _exec_info(spec: Mapping[str, Any], version: str, server: str, cluster: Mapping[str, Any]) -> str:
    """KUBERNETES_EXEC_INFO: non-interactive, with the cluster when the plugin asks (provideClusterInfo)."""
    info: dict[str, Any] = {"apiVersion": version, "kind": "ExecCredential", "spec": {"interactive": False}}
    if spec.get("provideClusterInfo"):
        shown = {"server": server, **{k: cluster[k] for k in _SHARED_CLUSTER_FIELDS if k in cluster}}
        for extension in cluster.get("extensions") or []:
            if isinstance(extension, dict) and extension.get("name") == _EXEC_EXTENSION:
                shown["config"] = extension.get("extension")
        info["spec"]["cluster"] = shown
    return json.dumps(info)


def _run_plugin(spec: Mapping[str, Any], origin: Path, exec_info: str) -> Any:
    command = str(spec["command"])
    if os.sep in command and not os.path.isabs(command):
        command = str(origin.parent / command)
    found = shutil.which(command)
    if found is None:
        hint = str(spec.get("installHint") or "install it or fix user.exec.command")
        raise AuthError(f"kubeconfig {origin}: the exec plugin {command!r} is not found: {hint}")
    env = {**os.environ, **{str(e["name"]): str(e.get("value", "")) for e in spec.get("env") or []}}
    env["KUBERNETES_EXEC_INFO"] = exec_info
    args = [found, *(str(a) for a in spec.get("args") or [])]
    try:
        done = subprocess.run(
            args, env=env, capture_output=True, timeout=_EXEC_TIMEOUT, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(f"kubeconfig {origin}: the exec plugin {command!r} did not run: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip()[-500:]
        raise AuthError(f"kubeconfig {origin}: the exec plugin {command!r} exited {done.returncode}: {tail}")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise AuthError(f"kubeconfig {origin}: the exec plugin {command!r} printed no JSON") from None
