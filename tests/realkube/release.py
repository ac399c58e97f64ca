"""A chart release on the real server, and the reconciler CLI run as its ServiceAccount.

`install` runs `helm install` against the real server with the organization URL pointing at the
Azure DevOps emulator; `reconcile` writes the release's ConfigMap out as the reconciler pod would see
it, takes a token of the chart's reconciler ServiceAccount from the TokenRequest API, and runs the
real `azp-reconciler reconcile` with a kubeconfig holding that token: what the API server allows is
what the chart's own Role and RoleBinding grant.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from chart_helpers import CHART
from chart_reconciler import TEMPLATE_DIR
from control_plane import REPO, ControlPlane, write_kubeconfig
from realkube_helpers import PAT, api, run


@dataclass
class Release:
    plane: ControlPlane
    name: str
    namespace: str
    directory: Path

    def objects(self, kind: str, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        items: list[dict[str, Any]] = api(
            self.plane, "GET", f"/api/v1/namespaces/{self.namespace}/{kind}", labelSelector=selector
        )["items"]
        return items

    def service_account_kubeconfig(self, server: str | None = None) -> Path:
        """A kubeconfig with a bound token of the chart's reconciler ServiceAccount, for the API server
        (or `server`, a proxy in front of it)."""
        (account,) = self.objects("serviceaccounts", "reconciler")
        name = account["metadata"]["name"]
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{name}/token"
        token = api(self.plane, "POST", path, {"spec": {"expirationSeconds": 3600}})["status"]["token"]
        path = self.directory / "reconciler.kubeconfig"
        return write_kubeconfig(path, server or self.plane.url, self.plane.pki, token=token)

    def config(self, **pool: Any) -> Path:
        """The release's config.yaml and job templates as files, the PAT in a file beside them; `pool`
        changes every pool's entry (as a `helm upgrade` of the pool's values would)."""
        (config_map,) = self.objects("configmaps", "reconciler")
        templates = self.directory / "templates"
        templates.mkdir(parents=True, exist_ok=True)
        for key, text in config_map["data"].items():
            if key != "config.yaml":
                (templates / key).write_text(text, encoding="utf-8")
        text = config_map["data"]["config.yaml"].replace(TEMPLATE_DIR, f"{templates}/")
        document = yaml.safe_load(text)
        document["pools"] = [entry | pool for entry in document["pools"]]
        (self.directory / "pat").write_text(PAT + "\n", encoding="utf-8")
        document["auth"] = {"patFile": str(self.directory / "pat")}
        path = self.directory / "config.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path

    @property
    def user(self) -> str:
        """The reconciler ServiceAccount's user name, as the API server (and its audit log) names it."""
        (account,) = self.objects("serviceaccounts", "reconciler")
        return f"system:serviceaccount:{self.namespace}:{account['metadata']['name']}"

    def command(self, *args: str, server: str | None = None, **pool: Any) -> list[str]:
        """The command line of `azp-reconciler reconcile` as the release's ServiceAccount."""
        command = [sys.executable, "-m", "reconciler", "reconcile", "--config", str(self.config(**pool))]
        kubeconfig = self.service_account_kubeconfig(server)
        return [*command, "--kubeconfig", str(kubeconfig), "--log-format", "json", *args]

    def reconcile(self, *args: str, **pool: Any) -> subprocess.CompletedProcess[str]:
        """`azp-reconciler reconcile` as the release's ServiceAccount."""
        return subprocess.run(self.command(*args, **pool), capture_output=True, text=True, timeout=240, cwd=REPO)


def install(plane: ControlPlane, organization: str, namespace: str, directory: Path, values: dict[str, Any]) -> Release:
    """`helm install` a release whose organization is the Azure DevOps emulator at `organization`."""
    base = {"organization": {"url": organization, "allowInsecureHttp": True}, "auth": {"pat": PAT}}
    layer = directory / "values.yaml"
    layer.write_text(yaml.safe_dump(base | values), encoding="utf-8")
    run("helm", "install", "azp-agents", str(CHART), "-n", namespace, "-f", str(layer), kubeconfig=plane.kubeconfig)
    return Release(plane, "azp-agents", namespace, directory)
