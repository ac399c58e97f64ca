"""Admission and validation of the Kubernetes emulator: namespace checks, `fieldValidation`, request
options (dryRun), Pod Security admission (pod_security) and the warnings the API server adds to a request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from azp_simulation.kube_emulator import pod_security
from azp_simulation.kube_support import (
    RESOURCE_BY_PLURAL,
    Cause,
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


_OPTIONS_KINDS = {"POST": "CreateOptions", "PUT": "UpdateOptions", "PATCH": "PatchOptions", "DELETE": "DeleteOptions"}
# k8s.io/kubernetes pkg/registry/batch/job/storage/storage.go, deleteOptionWarnings.
JOB_DELETE_WARNING = (
    "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them "
    "or set propagationPolicy=Orphan to suppress this warning"
)


def _dry_run(method: str, query: Mapping[str, str]) -> bool:
    """Whether a write is a dry run. Another dryRun value than All is refused as the options'
    validation does (k8s.io/apimachinery pkg/apis/meta/v1/validation ValidateDryRun): 422 Invalid
    naming CreateOptions, UpdateOptions, PatchOptions or DeleteOptions; reads ignore it."""
    value = query.get("dryRun")
    if method not in _OPTIONS_KINDS or value in (None, "", "All"):
        return value == "All"
    cause = Cause("dryRun", "FieldValueNotSupported", f'Unsupported value: ["{value}"]: supported values: "All"')
    kind = _OPTIONS_KINDS[method]
    causes = [{"reason": cause.reason, "message": cause.message, "field": cause.field}]
    raise KubeError(
        422,
        f'{kind}.meta.k8s.io "" is invalid: {cause.text()}',
        details={"name": "", "group": "meta.k8s.io", "kind": kind, "causes": causes},
    )


def _delete_warnings(resource: Resource | None, verb: str, query: Mapping[str, str], body: Any) -> dict[str, str]:
    """The Warning the Job storage sends when a batch/v1 Job is deleted without propagationPolicy or
    orphanDependents (its default is still to orphan the pods); sent before the Job is looked up, so
    a 404 carries it too."""
    if resource is None or resource.plural != "jobs" or verb not in ("delete", "deletecollection"):
        return {}
    options = {**query, **(body if isinstance(body, dict) else {})}
    if "propagationPolicy" in options or "orphanDependents" in options:
        return {}
    return {"Warning": "299 - " + json.dumps(JOB_DELETE_WARNING)}


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


def _pod_security(
    self: KubernetesEmulator, resource: Resource, obj: Mapping[str, Any], old: Mapping[str, Any] | None
) -> None:
    """Pod Security admission of a create (old None) or update, with the labels of the object's namespace;
    raises 403 for a pod its enforce level refuses; the warnings go to the request's sink (`_warnings`)."""
    namespace = obj["metadata"].get("namespace")
    found = self._objects["namespaces"].get(("", namespace)) if resource.namespaced else None
    labels = (found or {}).get("metadata", {}).get("labels") or {}
    pods = []
    if resource.plural == "namespaces" and old is not None:
        pods = [pod for (where, _), pod in self._objects["pods"].items() if where == obj["metadata"]["name"]]
    server = int(self.validate_version.split(".")[1]) if self.validate_version else pod_security.LATEST_MINOR
    warnings = pod_security.admit(resource, obj, old, labels, pods, server=server)
    sink = getattr(self._warnings, "items", None)
    if sink is not None:
        sink.extend(warnings)


def _take_warnings(self: KubernetesEmulator) -> list[str]:
    """The warnings admission added while this thread served its request; stops collecting."""
    taken: list[str] = getattr(self._warnings, "items", None) or []
    self._warnings.items = None
    return taken


def _add_warnings(headers: dict[str, str], texts: list[str]) -> None:
    """Add warnings to a response's Warning header (one `299 - "text"` value each, comma-joined as
    repeated headers are)."""
    values = [headers["Warning"]] if headers.get("Warning") else []
    values += ["299 - " + json.dumps(text) for text in texts]
    if values:
        headers["Warning"] = ", ".join(values)
