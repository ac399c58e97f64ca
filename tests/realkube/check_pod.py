"""The chart's `helm test` pod, run for real by the simulated kubelet: `azp-reconciler check`.

A real kubelet starts the reconciler image with the pod's volumes mounted and its ServiceAccount's
in-cluster config. Here the container's own command runs as a local process of the project's
`reconciler` package (what the image ships), and only the filesystem and the way to the API server are
translated:
- every file the container's ConfigMap and Secret volumes hold (`Kubelet.mounted_files`) is written
  under a private root directory, and emptyDir mounts are empty directories there; a path under a mount
  point, in the command's arguments or inside a ConfigMap file (config.yaml names its job templates and
  the PAT file by path), is read under that root;
- in-cluster config (KUBERNETES_SERVICE_HOST and the token and CA under
  /var/run/secrets/kubernetes.io/serviceaccount) becomes a kubeconfig in KUBECONFIG with the API
  server's address, its CA and the pod's ServiceAccount token, bound to the pod as the kubelet's
  projected token is (`Kubelet.token_for`).
So the check's answers (pools and PAT against the Azure DevOps emulator, permissions by
SelfSubjectAccessReview as the chart's ServiceAccount, job templates) and its exit code are real; its
output stays in `outputs` by (namespace, pod name) (the API server cannot serve pod logs without a kubelet to proxy to).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane import ControlPlane, write_kubeconfig

from azp_simulation.kubelet import Kubelet, Program

COMMAND = ["azp-reconciler", "check"]


@dataclass
class CheckPods:
    """Containers whose command is `azp-reconciler check` run it; everything else goes to `other`."""

    other: Program
    plane: ControlPlane
    root: Path
    outputs: dict[tuple[str, str], subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def init(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int, str] | None:
        return self.other.init(kubelet, pod, container)

    def stopped(self, kubelet: Kubelet, pod: Mapping[str, Any]) -> None:
        self.other.stopped(kubelet, pod)

    def start(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any]) -> None:
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        if command[:2] != COMMAND:
            self.other.start(kubelet, pod, container)
            return
        threading.Thread(target=self._run, args=(kubelet, pod, container, command), daemon=True).start()

    def _run(self, kubelet: Kubelet, pod: Mapping[str, Any], container: Mapping[str, Any], command: list[str]) -> None:
        metadata = pod["metadata"]
        root = self.root / metadata["uid"]
        mounts = sorted((str(m["mountPath"]).rstrip("/") for m in container.get("volumeMounts") or []), key=len)
        pattern = re.compile("|".join(re.escape(m) for m in reversed(mounts))) if mounts else None

        def local(text: str) -> str:
            return pattern.sub(lambda match: f"{root}{match.group(0)}", text) if pattern else text

        for mount in mounts:
            (root / mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
        config_maps = _config_map_mounts(pod, container)
        for path, content in kubelet.mounted_files(pod, container).items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            from_config_map = any(path == m or path.startswith(f"{m}/") for m in config_maps)
            target.write_text(local(content) if from_config_map else content, encoding="utf-8")
        token = kubelet.token_for(pod)
        kubeconfig = write_kubeconfig(root / "kubeconfig", self.plane.url, self.plane.pki, token=token)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root), "KUBECONFIG": str(kubeconfig)}
        env |= kubelet.resolve_env(pod, container)
        completed = subprocess.run(
            [sys.executable, "-m", "reconciler", *(local(arg) for arg in command[1:])],
            capture_output=True, text=True, env=env, cwd=root, timeout=120,
        )  # fmt: skip
        self.outputs[(metadata["namespace"], metadata["name"])] = completed
        kubelet.finish_pod(metadata["namespace"], metadata["name"], exit_code=completed.returncode)


def _config_map_mounts(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """Mount points of the container's ConfigMap volumes (their files may name paths in the container)."""
    config_maps = {v["name"] for v in pod["spec"].get("volumes") or [] if "configMap" in v}
    return [str(m["mountPath"]).rstrip("/") for m in container.get("volumeMounts") or [] if m["name"] in config_maps]
