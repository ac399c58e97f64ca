"""The kubeconfig and in-cluster loader (reconciler/kubeconfig.py): what the official clients read, read the
same way, and every refusal names the file and the key."""

from __future__ import annotations

import base64
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.errors import AuthError
from reconciler.kubeconfig import ClusterAccess, from_kubeconfig, in_cluster, load

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def write(path: Path, *, user: dict[str, Any], cluster: dict[str, Any] | None = None, name: str = "c") -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster or {"server": "https://api.example:6443"}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_in_cluster_reads_the_service_account(tmp_path: Path) -> None:
    """We test: in a pod, the API server is KUBERNETES_SERVICE_HOST:PORT over https with the mounted token
    and CA (an IPv6 host in brackets)."""
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text(PEM)
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    access = in_cluster(env, tmp_path)
    assert access == ClusterAccess(server="https://[fd00::1]:443", token="sa-token", ca_file=str(tmp_path / "ca.crt"))


def test_in_cluster_without_a_token_says_how_to_mount_it(tmp_path: Path) -> None:
    """We test: a pod without its ServiceAccount token is refused with the setting that mounts it."""
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(AuthError, match="automountServiceAccountToken"):
        in_cluster(env, tmp_path)


def test_a_named_kubeconfig_wins_over_in_cluster(tmp_path: Path) -> None:
    """We test: --kubeconfig is read even inside a pod (in-cluster only when none is named)."""
    path = write(tmp_path / "config", user={"token": "t"})
    access = load(str(path), env={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert access.server == "https://api.example:6443" and access.token == "t"


def test_kubeconfig_list_first_file_wins_and_paths_are_relative_to_their_file(tmp_path: Path) -> None:
    """We test: KUBECONFIG lists files; the first to define a name or current-context wins (kubectl's
    merge); a relative certificate path is relative to the file naming it; a missing listed file is skipped."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write(tmp_path / "a" / "config", user={"client-certificate": "crt.pem", "client-key": "/abs/key.pem"})
    second = write(tmp_path / "b" / "config", user={"token": "loser"}, cluster={"server": "https://other"})
    env = {"KUBECONFIG": f"{tmp_path / 'missing'}:{first}:{second}"}
    access = load(None, env=env)
    assert access.server == "https://api.example:6443"
    assert access.token is None
    assert access.client_cert_file == str(tmp_path / "a" / "crt.pem")
    assert access.client_key_file == "/abs/key.pem"


def test_inline_data_is_decoded_and_skip_verify_read(tmp_path: Path) -> None:
    """We test: *-data fields are base64 PEM; insecure-skip-tls-verify and tls-server-name are kept."""
    encoded = base64.b64encode(PEM.encode()).decode()
    cluster = {
        "server": "https://10.1.2.3/",
        "certificate-authority-data": encoded,
        "insecure-skip-tls-verify": True,
        "tls-server-name": "kubernetes",
    }
    path = write(
        tmp_path / "config", user={"client-certificate-data": encoded, "client-key-data": encoded}, cluster=cluster
    )
    access = from_kubeconfig(str(path), context=None, env={})
    assert (access.server, access.ca_data, access.client_cert_data, access.client_key_data) == (
        "https://10.1.2.3", PEM, PEM, PEM)  # fmt: skip
    assert access.verify is False and access.tls_server_name == "kubernetes"


@pytest.mark.parametrize(
    ("user", "cluster", "context", "message"),
    [
        ({"auth-provider": {"name": "azure"}}, None, None, "auth-provider 'azure' is not supported.*kubelogin"),
        ({"token": "t"}, None, "nope", "no context named 'nope'"),
        ({"token": "t"}, {"server": "api.example"}, None, "has no https:// server"),
        ({"client-key-data": "%%%"}, None, None, "client-key-data is not base64"),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}}, None, None, "apiVersion"),
        (
            {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "no-such-plugin-here",
                    "installHint": "install kubelogin",
                }
            },
            None,
            None,
            "not found: install kubelogin",
        ),
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "x", "interactiveMode": "Always"}},
            None,
            None,
            "interactiveMode Always",
        ),
    ],
)
def test_refusals_name_the_file_and_the_key(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None, context: str | None, message: str
) -> None:
    """We test: what cannot be used is refused with the kubeconfig's path and the offending key."""
    path = write(tmp_path / "config", user=user, cluster=cluster)
    with pytest.raises(AuthError, match=message) as caught:
        from_kubeconfig(str(path), context=context, env={})
    assert str(path) in str(caught.value)


def test_a_missing_kubeconfig_says_where_to_point(tmp_path: Path) -> None:
    """We test: no kubeconfig and not in a pod: the error says to run in a cluster or set KUBECONFIG."""
    with pytest.raises(AuthError, match="KUBECONFIG/--kubeconfig"):
        load(None, env={"HOME": str(tmp_path)})


def plugin(tmp_path: Path, status: dict[str, Any], *, version: str = "client.authentication.k8s.io/v1") -> Path:
    """An exec credential plugin: records what it was given, prints an ExecCredential with `status`."""
    script = tmp_path / "bin" / "cred-plugin"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(tmp_path / 'seen.json')!r}, 'w').write(json.dumps("
        "{'info': json.loads(os.environ['KUBERNETES_EXEC_INFO']), 'args': sys.argv[1:],"
        " 'env': os.environ.get('FOO')}))\n"
        f"print(json.dumps({{'apiVersion': {version!r}, 'kind': 'ExecCredential', 'status': {status!r}}}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_an_exec_plugin_token_is_used_and_gets_the_cluster_info(tmp_path: Path) -> None:
    """We test: an exec plugin (kubelogin's shape) runs once, non-interactive, with its args and env, and
    KUBERNETES_EXEC_INFO carrying the cluster when provideClusterInfo; its token is the bearer token; a
    relative command with a slash is relative to the kubeconfig."""
    plugin(tmp_path, {"token": "from-plugin", "expirationTimestamp": "2030-01-01T00:00:00Z"})
    spec = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "./bin/cred-plugin",
        "args": ["get-token", "--server-id", "6dae42f8"],
        "env": [{"name": "FOO", "value": "bar"}],
        "provideClusterInfo": True,
        "interactiveMode": "IfAvailable",
    }
    path = write(tmp_path / "config", user={"exec": spec})
    access = from_kubeconfig(str(path), context=None, env={})
    assert access.token == "from-plugin"
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["args"] == ["get-token", "--server-id", "6dae42f8"] and seen["env"] == "bar"
    assert seen["info"]["spec"] == {"interactive": False, "cluster": {"server": "https://api.example:6443"}}


def test_an_exec_plugin_certificate_and_a_wrong_answer(tmp_path: Path) -> None:
    """We test: a plugin may answer a client certificate instead of a token; an answer of another
    apiVersion than asked is refused."""
    plugin(tmp_path, {"clientCertificateData": PEM, "clientKeyData": PEM})
    spec = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(tmp_path / "bin" / "cred-plugin")}
    access = from_kubeconfig(str(write(tmp_path / "config", user={"exec": spec})), context=None, env={})
    assert (access.token, access.client_cert_data, access.client_key_data) == (None, PEM, PEM)
    plugin(tmp_path, {"token": "t"}, version="client.authentication.k8s.io/v1beta1")
    with pytest.raises(AuthError, match=r"printed no client\.authentication\.k8s\.io/v1 ExecCredential"):
        from_kubeconfig(str(tmp_path / "config"), context=None, env={})
