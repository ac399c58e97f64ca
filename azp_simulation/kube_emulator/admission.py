"""Admission and validation of the Kubernetes emulator: namespace checks and `fieldValidation`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from azp_simulation.kube_support import (
    RESOURCE_BY_PLURAL,
    KubeError,
    Resource,
    _field_path,
    not_found,
)
from azp_simulation.kube_support import _validator as _schema_validator

if TYPE_CHECKING:
    from azp_simulation.kube_emulator.core import KubernetesEmulator


def _cause(field_name: str, message: str) -> Any:
    from azp_simulation.kube_support import Cause

    return Cause(field_name, "FieldValueInvalid", message)


def _unknown_fields(body: dict[str, Any], version: str) -> list[tuple[list[Any], str]]:
    """(path of the object, name) of every field the schema does not know."""
    try:
        validator = _schema_validator(str(body.get("apiVersion")), str(body.get("kind")), version)
    except (LookupError, OSError, ValueError):
        return []
    found = []
    for error in validator.iter_errors(body):
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            extra = set(error.instance) - set((error.schema or {}).get("properties") or {})
            found += [(list(error.absolute_path), name) for name in sorted(extra)]
    return found


def _field_validation(body: dict[str, Any], query: Mapping[str, str], version: str) -> dict[str, str]:
    """Apply `fieldValidation` to a create or update body: raise for Strict, drop unknown fields otherwise;
    returns the Warning header to send (Warn)."""
    mode = query.get("fieldValidation") or "Warn"
    if mode not in ("Strict", "Warn", "Ignore"):
        raise KubeError(400, f'Invalid fieldValidation value: "{mode}"; supported values: "Ignore", "Warn", "Strict"')
    unknown = _unknown_fields(body, version)
    if not unknown:
        return {}
    paths = [".".join(filter(None, [_field_path(path), name])) for path, name in unknown]
    if mode == "Strict":
        kind, group_version = str(body.get("kind")), str(body.get("apiVersion"))
        fields = ", ".join(f'unknown field "{path}"' for path in paths)
        raise KubeError(
            400,
            f'{kind} in version "{group_version.rsplit("/", 1)[-1]}" cannot be handled as a {kind}: strict decoding '
            f"error: {fields}",
        )
    for path, name in unknown:
        parent: Any = body
        for part in path:
            parent = parent[part]
        parent.pop(name, None)
    if mode == "Ignore":
        return {}
    return {"Warning": ", ".join("299 - " + json.dumps(f'unknown field "{path}"') for path in paths)}


def _require_namespace(
    self: KubernetesEmulator, resource: Resource, namespace: str | None, *, creating: bool, name: str
) -> None:
    if not resource.namespaced or namespace is None:
        return
    found = self._objects["namespaces"].get(("", namespace))
    if found is None:
        raise not_found(RESOURCE_BY_PLURAL["namespaces"], namespace)
    if creating and found["status"].get("phase") == "Terminating":
        raise KubeError(
            403,
            f'{resource.qualified} "{name}" is forbidden: unable to create new content in namespace '
            f"{namespace} because it is being terminated",
            details={
                "name": name,
                "group": resource.group,
                "kind": resource.plural,
                "causes": [
                    {
                        "reason": "NamespaceTerminating",
                        "message": f"namespace {namespace} is being terminated",
                        "field": "metadata.namespace",
                    }
                ],
            },
        )
