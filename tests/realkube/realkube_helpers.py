"""Helpers of the realkube tests: kubectl and helm against the real server, admin API calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from control_plane import REPO, ControlPlane

from azp_simulation.kubelet import ServerError

TOOLS_BIN = REPO / ".tools" / "bin"
SERVER_VERSION = "1.35.4"
"""The real server's version (scripts/build-kube.sh), which the emulator plays when compared with it."""
PAT = "realkube-pat-7d1e9c0a4b2f68e35c"


def run(
    tool: str, *args: str, kubeconfig: Path, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run .tools/bin/<tool> (kubectl, helm) against the real server."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(kubeconfig.parent / "helm-cache"),
        "HELM_CONFIG_HOME": str(kubeconfig.parent / "helm-config"),
    }
    completed = subprocess.run(
        [str(TOOLS_BIN / tool), *args], capture_output=True, text=True, env=env, input=stdin, timeout=240, cwd=REPO
    )
    if check and completed.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} exited {completed.returncode}:\n{completed.stderr}")
    return completed


def pod_security_labels(level: str) -> dict[str, str]:
    """The Pod Security labels the chart sets on the namespaces it creates (enforce and warn at one level)."""
    return {f"pod-security.kubernetes.io/{mode}": level for mode in ("enforce", "warn")}


def create_namespace(
    plane: ControlPlane, name: str, level: str = "restricted", *, labels: dict[str, str] | None = None
) -> str:
    """Create a namespace labelled pod_security_labels(level), or with `labels`."""
    labels = pod_security_labels(level) if labels is None else labels
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    response = plane.server.session().post(f"{plane.url}/api/v1/namespaces", json=body, timeout=30)
    if response.status_code >= 400:
        raise ServerError(response.status_code, response.text)
    return name


def api(plane: ControlPlane, method: str, path: str, body: Any = None, **params: str) -> Any:
    """One admin call; an error status raises ServerError."""
    response = plane.server.session().request(method, plane.url + path, json=body, params=params, timeout=30)
    if response.status_code >= 400:
        raise ServerError(response.status_code, response.text)
    return response.json()
