"""We test: the reconciler's own Kubernetes transport (reconciler/kube.py over reconciler/kubeconfig.py, no
official client) against the real kube-apiserver's TLS and authentication, for each way a kubeconfig can
carry credentials: files, inline data, an exec credential plugin, a server name other than the address,
and a CA that does not match."""

from __future__ import annotations

import base64
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from control_plane import ControlPlane

from reconciler import names
from reconciler.errors import AuthError
from reconciler.kube import Kubernetes


def _kubeconfig(path: Path, server: str, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rk", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "rk", "user": user}],
        "contexts": [{"name": "rk", "context": {"cluster": "rk", "user": "rk"}}],
        "current-context": "rk",
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _exec_plugin(directory: Path, pki: Path) -> dict[str, Any]:
    """An exec plugin answering the admin client certificate, as `kubelogin` answers a token."""
    script = directory / "cert-plugin"
    crt, key = (pki / "admin.crt").read_text(), (pki / "admin.key").read_text()
    status = {"clientCertificateData": crt, "clientKeyData": key}
    script.write_text(
        f"#!{sys.executable}\nimport json\nprint(json.dumps({{'apiVersion': 'client.authentication.k8s.io/v1', "
        f"'kind': 'ExecCredential', 'status': {status!r}}}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script)}}


def _can_list_jobs(kubeconfig: str) -> bool:
    kube = Kubernetes(kubeconfig=kubeconfig, retries=0)
    try:
        allowed, _ = kube.can_i(verb="list", resource="jobs", group="batch", namespace="default")
        kube.list_jobs("default", owner=names.Owner(prefix="azp", release="rk"))
    finally:
        kube.close()
    return allowed


def test_every_credential_form_reaches_the_real_api_server(control_plane: ControlPlane, tmp_path: Path) -> None:
    """We test: client certificate files, inline *-data, an exec plugin's certificate, and tls-server-name
    (the address is an IP, the name one of the certificate's DNS names) are each accepted by the real
    API server as the admin, who may list Jobs."""
    pki, url = control_plane.pki, control_plane.url
    files = {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}
    inline = {"client-certificate-data": _b64(pki / "admin.crt"), "client-key-data": _b64(pki / "admin.key")}
    ca_file, ca_data = (
        {"certificate-authority": str(pki / "ca.crt")},
        {"certificate-authority-data": _b64(pki / "ca.crt")},
    )
    named = {**ca_data, "tls-server-name": "kubernetes.default.svc"}
    forms = {
        "files": (ca_file, files),
        "inline": (ca_data, inline),
        "exec": (ca_file, _exec_plugin(tmp_path, pki)),
        "server name": (named, inline),
    }
    for form, (cluster, user) in forms.items():
        assert _can_list_jobs(_kubeconfig(tmp_path / f"{form}.yaml", url, cluster, user)), form


def test_a_server_the_ca_does_not_vouch_for_is_refused(control_plane: ControlPlane, tmp_path: Path) -> None:
    """We test: a CA that did not sign the server's certificate, or a server name the certificate does not
    carry, fail at once with an error that says the certificate is not trusted (no retries, no silence)."""
    pki, url = control_plane.pki, control_plane.url
    user = {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}
    wrong_ca = {"certificate-authority": str(pki / "admin.crt")}
    wrong_name = {"certificate-authority": str(pki / "ca.crt"), "tls-server-name": "api.elsewhere.example"}
    for form, cluster in {"wrong CA": wrong_ca, "wrong name": wrong_name}.items():
        with pytest.raises(AuthError, match="TLS certificate is not trusted"):
            _can_list_jobs(_kubeconfig(tmp_path / f"{form}.yaml", url, cluster, user))
