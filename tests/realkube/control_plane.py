"""etcd, kube-apiserver and kube-controller-manager on loopback, as the realkube tier runs them.

The binaries are the ones scripts/build-kube.sh builds. Certificates are made with openssl: a CA,
the server's certificate for 127.0.0.1, an admin client certificate in group system:masters, and the
service-account signing key pair. The flags follow what kubeadm and controller-runtime's envtest set
(only loopback, no cloud provider, leader election off), plus RBAC and Node authorization and the
PodSecurity admission plugin. The API server's audit log records every write a ServiceAccount makes,
request and response (AUDIT_POLICY), so a test can see what the reconciler wrote and when.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from azp_simulation.kubelet import ApiServer

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-kube.sh"
CONTROLLERS = ",".join(
    f"{name}-controller"
    for name in ("job", "cronjob", "ttl-after-finished", "garbage-collector", "serviceaccount", "namespace")
)
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "RequestResponse", "userGroups": ["system:serviceaccounts"], "verbs": list(WRITE_VERBS)},
        {"level": "None"},
    ],
}


def binaries_dir() -> Path:
    """.tools/kube/<key>/bin, the key read from the build script so the two never disagree."""
    text = BUILD_SCRIPT.read_text(encoding="utf-8")
    key = re.search(r'^KEY="([^"]+)"', text, re.MULTILINE)
    assert key is not None, f"no KEY= line in {BUILD_SCRIPT}"
    value = key.group(1)
    for name, setting in re.findall(r'^([A-Z_]+)="([^"$]+)"', text, re.MULTILINE):
        value = value.replace(f"${name}", setting)
    return REPO / ".tools" / "kube" / value / "bin"


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if not os.access(binaries_dir() / name, os.X_OK)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _sign(name: str, subject: str, cwd: Path, extensions: str) -> None:
    _openssl("req", *EC_KEY, "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


def make_certificates(directory: Path) -> None:
    """CA, server and admin certificates, and the service-account key pair, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *EC_KEY, "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=realkube-ca", cwd=directory)  # fmt: skip
    names = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
    _sign("server", "/CN=kube-apiserver", directory, f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
    _sign("admin", "/O=system:masters/CN=realkube-admin", directory, "extendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


def write_kubeconfig(path: Path, server: str, pki: Path, *, token: str | None = None) -> Path:
    """A kubeconfig for the admin certificate, or for a bearer token (a service account's)."""
    user = {"token": token} if token else {
        "client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}  # fmt: skip
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "realkube", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "realkube", "context": {"cluster": "realkube", "user": "user"}}],
        "current-context": "realkube",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@dataclass
class ControlPlane:
    """The three processes, their logs and how to reach the API server."""

    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "admin.kubeconfig"

    @property
    def server(self) -> ApiServer:
        return ApiServer(self.url, self.pki / "ca.crt", self.pki / "admin.crt", self.pki / "admin.key")

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen([str(binaries_dir() / name), *args], stdout=log, stderr=subprocess.STDOUT)
        )

    def logs(self, name: str, lines: int = 40) -> str:
        text = (self.directory / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        make_certificates(self.pki)
        etcd_port, apiserver_port = free_port(), free_port()
        self._spawn("etcd", [
            f"--data-dir={self.directory / 'etcd'}", f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{free_port()}", "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip
        pki = self.pki
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={apiserver_port}",
            f"--tls-cert-file={pki / 'server.crt'}", f"--tls-private-key-file={pki / 'server.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=PodSecurity", "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--cert-dir={pki}", "--endpoint-reconciler-type=none", "--v=0",
            f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
            # As kubeadm, kind and AKS run it: privileged containers are left to Pod Security admission.
            "--allow-privileged=true",
        ])  # fmt: skip
        self.url = f"https://127.0.0.1:{apiserver_port}"
        write_kubeconfig(self.kubeconfig, self.url, pki)
        self._wait_ready("kube-apiserver")
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={self.kubeconfig}", f"--controllers={CONTROLLERS}", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true", "--secure-port=0", "--v=0",
        ])  # fmt: skip
        # The serviceaccount controller's first work: the default ServiceAccount of `default`.
        self._wait_ready("kube-controller-manager", "/api/v1/namespaces/default/serviceaccounts/default")

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    def _audit_policy(self) -> Path:
        path = self.directory / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(AUDIT_POLICY), encoding="utf-8")
        return path

    def writes(self, user: str, namespace: str) -> list[dict[str, Any]]:
        """The audit events of `user`'s successful writes in `namespace`, in order (access reviews left out)."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the line the API server is writing now
                continue
            where = event.get("objectRef") or {}
            if (
                event["user"].get("username") == user
                and where.get("namespace") == namespace
                and where.get("resource") != "selfsubjectaccessreviews"
                and event.get("responseStatus", {}).get("code", 500) < 300
            ):
                events.append(event)
        return events

    def _wait_ready(self, name: str, path: str = "/readyz", timeout: float = 120) -> None:
        session = self.server.session()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{self.logs(name)}")  # type: ignore[index]
            try:
                if session.get(f"{self.url}{path}", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{name} not ready after {timeout}s:\n{self.logs(name)}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
