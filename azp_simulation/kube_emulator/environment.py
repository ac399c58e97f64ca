"""What a container of the Kubernetes emulator sees: env with $(VAR) expansion and valueFrom,
Secret and ConfigMap volume files, and the references a pod needs before it starts."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azp_simulation.kube_emulator.core import KubernetesEmulator


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known variables are replaced, $$ escapes, unknown ones stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def _field_value(pod: Mapping[str, Any], path: str) -> str | None:
    metadata = pod.get("metadata") or {}
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
    }
    if path in simple:
        value = simple[path]
        return str(value) if value is not None else ""
    found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if found:
        return str((metadata.get(found.group(1)) or {}).get(found.group(2), ""))
    return None


def _secret_values(self: KubernetesEmulator, namespace: str, name: str) -> dict[str, str] | None:
    secret = self._objects["secrets"].get((namespace, name))
    if secret is None:
        return None
    return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}


def _configmap_values(self: KubernetesEmulator, namespace: str, name: str) -> dict[str, str] | None:
    found = self._objects["configmaps"].get((namespace, name))
    return dict(found.get("data") or {}) if found is not None else None


def _value_from(
    self: KubernetesEmulator, pod: Mapping[str, Any], namespace: str, source: Mapping[str, Any]
) -> str | None:
    if source.get("fieldRef"):
        return _field_value(pod, str(source["fieldRef"].get("fieldPath", "")))
    for ref_key, lookup in (("secretKeyRef", self._secret_values), ("configMapKeyRef", self._configmap_values)):
        ref = source.get(ref_key)
        if ref:
            values = lookup(namespace, str(ref.get("name")))
            return (values or {}).get(str(ref.get("key")))
    if source.get("resourceFieldRef"):
        return "0"
    return None


def _volume_files(self: KubernetesEmulator, namespace: str, volume: Mapping[str, Any]) -> dict[str, str] | None:
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if volume.get("secret"):
        sources.append(("secret", volume["secret"]))
    elif volume.get("configMap"):
        sources.append(("configMap", volume["configMap"]))
    elif volume.get("projected"):
        for entry in volume["projected"].get("sources") or []:
            for kind in ("secret", "configMap"):
                if entry.get(kind):
                    sources.append((kind, entry[kind]))
    if not sources:
        return None
    files: dict[str, str] = {}
    for kind, source in sources:
        name = str(source.get("secretName") or source.get("name") or "")
        values = (self._secret_values if kind == "secret" else self._configmap_values)(namespace, name)
        if values is None:
            continue
        items = source.get("items")
        if items:
            for item in items:
                if item.get("key") in values:
                    files[str(item.get("path"))] = values[str(item["key"])]
        else:
            files.update(values)
    return files


def _missing_references(self: KubernetesEmulator, pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first secret/configmap the pod needs and the namespace lacks: (reason, message)."""
    namespace = str(pod["metadata"].get("namespace", ""))
    spec = pod.get("spec") or {}
    for volume in spec.get("volumes") or []:
        secret = volume.get("secret")
        if (
            secret
            and not secret.get("optional")
            and self._secret_values(namespace, str(secret.get("secretName"))) is None
        ):
            return (
                "ContainerCreating",
                f'MountVolume.SetUp failed for volume "{volume.get("name")}" : secret '
                f'"{secret.get("secretName")}" not found',
            )
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for entry in container.get("env") or []:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            if not ref or ref.get("optional"):
                continue
            values = self._secret_values(namespace, str(ref.get("name")))
            if values is None:
                return "CreateContainerConfigError", f'secret "{ref.get("name")}" not found'
            if ref.get("key") not in values:
                return (
                    "CreateContainerConfigError",
                    f"couldn't find key {ref.get('key')} in Secret {namespace}/{ref.get('name')}",
                )
    return None
