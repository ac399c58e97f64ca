"""Helpers for the Kubernetes emulator tests: the official client's APIs on a started emulator, a fake
clock and a Job like the reconciler renders."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from azp_simulation.kube_emulator import KubernetesEmulator

NAMESPACE = "azp-agents"
MANAGED = {"app.kubernetes.io/managed-by": "azp-agents"}
PAT = "emulated-pat-value"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Cluster:
    """A running emulator and the official client's APIs pointed at it through a kubeconfig."""

    emulator: KubernetesEmulator
    kubeconfig: Path
    api: client.ApiClient
    batch: client.BatchV1Api
    core: client.CoreV1Api
    coordination: client.CoordinationV1Api
    authorization: client.AuthorizationV1Api

    @property
    def url(self) -> str:
        return self.emulator.base_url

    def pods(self, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return self.emulator.objects("pods", namespace)

    def wait_for(self, condition: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


def connect(emulator: KubernetesEmulator, directory: Path, *, token: str | None = None) -> Cluster:
    """Start the emulator (if needed), write a kubeconfig and load it like the reconciler does."""
    emulator.start()
    kubeconfig = emulator.write_kubeconfig(directory / f"kubeconfig-{token or 'admin'}", token=token)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.retries = False
    api = client.ApiClient(configuration)
    return Cluster(
        emulator=emulator,
        kubeconfig=kubeconfig,
        api=api,
        batch=client.BatchV1Api(api),
        core=client.CoreV1Api(api),
        coordination=client.CoordinationV1Api(api),
        authorization=client.AuthorizationV1Api(api),
    )


def agent_job(
    name: str = "azp-linux-1000-abcde",
    *,
    image: str = "ghcr.io/azp-agents/agent-linux:4.261.0",
    labels: dict[str, str] | None = None,
    restart_policy: str = "Never",
    **spec: Any,
) -> dict[str, Any]:
    """A Job like the reconciler renders: register init container, agent container, token volume."""
    all_labels = {
        "app.kubernetes.io/name": "azp-agent",
        **MANAGED,
        "app.kubernetes.io/instance": "azp-agents",
        "azp-agents.dev/shard": "0",
        **(labels or {}),
    }
    env = [
        {"name": "AZP_URL", "value": "https://dev.azure.com/contoso"},
        {"name": "AZP_POOL", "value": "linux"},
        {"name": "AZP_AGENT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "AZP_TEMPLATE", "value": "default"},
    ]
    token_mount = {"name": "azp-token", "mountPath": "/var/run/secrets/azp", "readOnly": True}
    state = {"name": "agent-state", "mountPath": "/azp/state"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": copy.deepcopy(all_labels),
            "annotations": {"azp-agents.dev/pool-name": "linux"},
        },
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"labels": copy.deepcopy(all_labels)},
                "spec": {
                    "restartPolicy": restart_policy,
                    "initContainers": [
                        {
                            "name": "register",
                            "image": image,
                            "args": ["register"],
                            "env": [*env, {"name": "AZP_TOKEN_FILE", "value": "/var/run/secrets/azp/token"}],
                            "volumeMounts": [token_mount, state],
                        }
                    ],
                    "containers": [
                        {
                            "name": "agent",
                            "image": image,
                            "args": ["run"],
                            "env": env,
                            "volumeMounts": [state],
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                        }
                    ],
                    "volumes": [
                        {"name": "agent-state", "emptyDir": {}},
                        {
                            "name": "azp-token",
                            "secret": {"secretName": "azp-agents-pat", "items": [{"key": "pat", "path": "token"}]},
                        },
                    ],
                },
            },
        },
    }
