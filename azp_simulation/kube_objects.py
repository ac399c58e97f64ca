"""Object rules of the Kubernetes API emulator: server-side defaulting, validation, immutable fields,
patches (merge, strategic merge, JSON patch) and the kubectl Table view. Pure functions on dicts."""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from azp_simulation.kube_support import (
    Cause,
    KubeError,
    Resource,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    label_causes,
    qualified_name_errors,
    schema_causes,
)

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# Fields of a pod spec that may change after creation (everything else is immutable).
_MUTABLE_POD_FIELDS = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")


def image_pull_policy(image: str) -> str:
    """The default imagePullPolicy: Always for ':latest' or no tag, else IfNotPresent."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def default_pod_spec(spec: dict[str, Any], *, restart_policy: str = "Always") -> None:
    """Fill in what the API server defaults in a pod spec (in place)."""
    spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if not isinstance(container, dict):
            continue
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        if isinstance(container.get("image"), str):
            container.setdefault("imagePullPolicy", image_pull_policy(container["image"]))
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict) and isinstance(volume.get("secret"), dict):
            volume["secret"].setdefault("defaultMode", 420)


def _default_host_network_ports(spec: dict[str, Any]) -> None:
    """SetDefaults_Pod (pkg/apis/core/v1/defaults.go, Pods only, not templates): in a host-network pod
    a port's hostPort defaults to its containerPort."""
    if spec.get("hostNetwork") is not True:
        return
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for port in (container.get("ports") or []) if isinstance(container, dict) else []:
            if isinstance(port, dict) and not port.get("hostPort") and "containerPort" in port:
                port["hostPort"] = port["containerPort"]


def default_object(resource: Resource, obj: dict[str, Any]) -> None:
    """Server-side defaulting of a new object, after metadata (uid, name) is set (in place)."""
    metadata = obj["metadata"]
    if resource.plural == "jobs":
        spec = obj.setdefault("spec", {})
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        uid = metadata["uid"]
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template = spec.setdefault("template", {})
        template_meta = template.setdefault("metadata", {})
        labels = template_meta.setdefault("labels", {})
        for key in CONTROLLER_UID_LABELS:
            labels[key] = uid
        for key in JOB_NAME_LABELS:
            labels[key] = metadata["name"]
        # SetDefaults_Job (pkg/apis/batch/v1/defaults.go) gives a Job without labels its template's, as the
        # server answers them: with the selector's labels, defaulted again when read back from storage.
        if not metadata.get("labels"):
            metadata["labels"] = dict(labels)
        default_pod_spec(template.setdefault("spec", {}), restart_policy="Always")
        obj["status"] = {}
    elif resource.plural == "pods":
        spec = obj.setdefault("spec", {})
        default_pod_spec(spec)
        _default_host_network_ports(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault(
            "tolerations",
            [
                {
                    "key": f"node.kubernetes.io/{taint}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for taint in ("not-ready", "unreachable")
            ],
        )
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}
    elif resource.plural == "namespaces":
        metadata.setdefault("labels", {})["kubernetes.io/metadata.name"] = metadata["name"]
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
    elif resource.plural == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        if not data:
            obj.pop("data")
    elif resource.plural == "events":
        obj.setdefault("reportingComponent", "")
        obj.setdefault("reportingInstance", "")


_TIME_FIELDS = {
    "leases": (("spec", "acquireTime", True), ("spec", "renewTime", True)),
    "events": (("", "firstTimestamp", False), ("", "lastTimestamp", False), ("", "eventTime", True)),
}


def normalize_times(resource: Resource, obj: dict[str, Any]) -> None:
    """Write known timestamps the way the server stores them: UTC with 'Z' (microseconds for MicroTime),
    whatever offset the client sent (the Python client sends '+00:00')."""
    for section, key, micro in _TIME_FIELDS.get(resource.plural, ()):
        holder = obj.get(section) if section else obj
        if not isinstance(holder, dict) or not isinstance(holder.get(key), str):
            continue
        try:
            moment = datetime.fromisoformat(holder[key].replace("Z", "+00:00"))
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        holder[key] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def qos_class(spec: Mapping[str, Any]) -> str:
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get("cpu")
        and (r.get("limits") or {}).get("memory")
        and (r.get("requests") or {}).get("cpu", (r.get("limits") or {}).get("cpu")) == r["limits"]["cpu"]
        and (r.get("requests") or {}).get("memory", (r.get("limits") or {}).get("memory")) == r["limits"]["memory"]
        for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


def validate_object(resource: Resource, obj: Mapping[str, Any], *, version: str, creating: bool = True) -> None:
    """Raise 422 Invalid with the causes the API server would name; schema errors come first."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    causes = schema_causes(obj, version)
    causes += _metadata_causes(resource, obj)
    if resource.plural == "jobs":
        causes += _job_causes(obj, creating=creating)
    elif resource.plural == "pods":
        spec = obj.get("spec") or {}
        causes += _pod_spec_causes(spec, "spec", allowed=("Always", "OnFailure", "Never"))
    elif resource.plural == "secrets":
        causes += _secret_causes(obj)
    elif resource.plural == "events":
        involved = obj.get("involvedObject") or {}
        namespace = (obj.get("metadata") or {}).get("namespace")
        if involved.get("namespace") and namespace and involved["namespace"] != namespace:
            causes.append(
                Cause(
                    "involvedObject.namespace",
                    "FieldValueInvalid",
                    f'Invalid value: "{involved["namespace"]}": does not match event.namespace',
                )
            )
    if causes:
        raise _invalid(resource, name, causes)


def _invalid(resource: Resource, name: str, causes: list[Cause]) -> KubeError:
    from azp_simulation.kube_support import invalid

    return invalid(resource, name, causes)


def _metadata_causes(resource: Resource, obj: Mapping[str, Any]) -> list[Cause]:
    metadata = obj.get("metadata") or {}
    causes: list[Cause] = []
    name = metadata.get("name")
    if isinstance(name, str) and name:
        errors = dns1123_label_errors(name) if resource.plural == "namespaces" else dns1123_subdomain_errors(name)
        if resource.plural == "jobs" and len(name) > 63:
            errors = ["must be no more than 63 characters", *errors]
        causes += [Cause("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {e}') for e in errors]
    elif not metadata.get("generateName"):
        causes.append(Cause("metadata.name", "FieldValueRequired", "Required value: name or generateName is required"))
    causes += label_causes(metadata.get("labels"), "metadata.labels")
    for key in metadata.get("annotations") or {}:
        for error in qualified_name_errors(str(key)):
            causes.append(Cause("metadata.annotations", "FieldValueInvalid", f'Invalid value: "{key}": {error}'))
    return causes


def _job_causes(obj: Mapping[str, Any], *, creating: bool) -> list[Cause]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    causes = label_causes((template.get("metadata") or {}).get("labels"), "spec.template.metadata.labels")
    causes += _pod_spec_causes(template.get("spec") or {}, "spec.template.spec", allowed=("OnFailure", "Never"))
    if creating and spec.get("selector") and not spec.get("manualSelector"):
        causes.append(
            Cause("spec.selector", "FieldValueInvalid", 'Invalid value: "selector": `selector` not auto-generated')
        )
    for key in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        value = spec.get(key)
        if isinstance(value, int) and value < (1 if key == "activeDeadlineSeconds" else 0):
            bound = "greater than 0" if key == "activeDeadlineSeconds" else "greater than or equal to 0"
            causes.append(Cause(f"spec.{key}", "FieldValueInvalid", f"Invalid value: {value}: must be {bound}"))
    return causes


def _pod_spec_causes(spec: Mapping[str, Any], path: str, *, allowed: tuple[str, ...]) -> list[Cause]:
    causes: list[Cause] = []
    policy = spec.get("restartPolicy", "Always")
    if policy not in allowed:
        supported = ", ".join(f'"{p}"' for p in allowed)
        causes.append(
            Cause(
                f"{path}.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: {supported}',
            )
        )
    containers = spec.get("containers")
    if not containers:
        causes.append(Cause(f"{path}.containers", "FieldValueRequired", "Required value"))
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            if not isinstance(container, dict):
                continue
            where = f"{path}.{group}[{index}]"
            name = container.get("name")
            if not name:
                causes.append(Cause(f"{where}.name", "FieldValueRequired", "Required value"))
            else:
                for error in dns1123_label_errors(str(name)):
                    causes.append(Cause(f"{where}.name", "FieldValueInvalid", f'Invalid value: "{name}": {error}'))
                if name in seen:
                    causes.append(Cause(f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
                seen.add(str(name))
            if not container.get("image"):
                causes.append(Cause(f"{where}.image", "FieldValueRequired", "Required value"))
    volume_names = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            if not isinstance(container, dict):
                continue
            for m_index, mount in enumerate(container.get("volumeMounts") or []):
                if isinstance(mount, dict) and mount.get("name") not in volume_names:
                    causes.append(
                        Cause(
                            f"{path}.{group}[{index}].volumeMounts[{m_index}].name",
                            "FieldValueNotFound",
                            f'Not found: "{mount.get("name")}"',
                        )
                    )
    return causes


def _secret_causes(obj: Mapping[str, Any]) -> list[Cause]:
    causes = []
    for key, value in (obj.get("data") or {}).items():
        if not _SECRET_KEY.fullmatch(str(key)):
            causes.append(
                Cause(
                    f"data[{key}]",
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": a valid config key must consist of alphanumeric '
                    "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', "
                    "regex used for validation is '[-._a-zA-Z0-9]+')",
                )
            )
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            # Decoding []byte fails before validation: Go's base64.CorruptInputError names the offset.
            raise KubeError(
                400,
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte '
                f"{_corrupt_offset(str(value))}",
            ) from None
    return causes


def _corrupt_offset(text: str) -> int:
    """Where Go's base64.StdEncoding stops: the first byte outside the alphabet, else the start of the
    incomplete last quantum (padding errors of a complete quantum are reported there too)."""
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    stripped = text.rstrip("=")
    bad = next((i for i, char in enumerate(stripped) if char not in alphabet), None)
    return bad if bad is not None else len(stripped) - len(stripped) % 4


def immutable_causes(resource: Resource, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Cause]:
    """Causes for changes to fields the API server refuses to change after creation."""
    causes: list[Cause] = []
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if resource.plural == "jobs":
        for key in ("selector", "template", "completions", "completionMode"):
            if old_spec.get(key) != new_spec.get(key):
                causes.append(Cause(f"spec.{key}", "FieldValueInvalid", 'Invalid value: "object": field is immutable'))
    elif resource.plural == "pods":

        def stripped(spec: Mapping[str, Any]) -> dict[str, Any]:
            result = {k: v for k, v in spec.items() if k not in _MUTABLE_POD_FIELDS and k != "nodeName"}
            for group in ("containers", "initContainers"):
                result[group] = [
                    {k: v for k, v in c.items() if k != "image"} for c in spec.get(group) or [] if isinstance(c, dict)
                ]
            return result

        if stripped(old_spec) != stripped(new_spec):
            causes.append(
                Cause(
                    "spec",
                    "FieldValueForbidden",
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                    "(allow it to be set to 1 if it was previously negative)",
                )
            )
    return causes


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "ownerReferences": "uid",
    "conditions": "type",
    "imagePullSecrets": "name",
}
_PRIMITIVE_MERGE_LISTS = ("finalizers",)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge patch: lists of named items merge by their key, finalizers
    merge as a set, '$patch: delete' removes an item, other directives are ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field_name = key.split("/", 1)[1]
            result[field_name] = [v for v in result.get(field_name) or [] if v not in (value or [])]
            continue
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, _MERGE_KEYS[key])
        elif key in _PRIMITIVE_MERGE_LISTS and isinstance(value, list):
            merged = list(result.get(key) or [])
            result[key] = merged + [v for v in value if v not in merged]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            return copy.deepcopy(patch)
        index = next(
            (i for i, c in enumerate(merged) if isinstance(c, dict) and c.get(merge_key) == item[merge_key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
            continue
        if index is None:
            merged.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise KubeError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict):
            raise KubeError(400, "json: cannot unmarshal a JSON patch operation")
        op = operation.get("op")
        path = _pointer(str(operation.get("path", "")))
        if op == "test":
            if _get_at(document, path) != operation.get("value"):
                # The API server drops the jsonpatch library's detail ("testing value ... failed").
                raise KubeError(422, "the server rejected our request due to an error in our request")
            continue
        if op in ("move", "copy"):
            value = copy.deepcopy(_get_at(document, _pointer(str(operation.get("from", "")))))
            if op == "move":
                document = _remove_at(document, _pointer(str(operation.get("from", ""))))
            document = _add_at(document, path, value)
        elif op == "add":
            document = _add_at(document, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            document = _remove_at(document, path)
        elif op == "replace":
            document = _remove_at(document, path)
            document = _add_at(document, path, copy.deepcopy(operation.get("value")))
        else:
            raise KubeError(422, f"Unexpected kind: {op}")
    return document


def _pointer(text: str) -> list[str]:
    if text == "":
        return []
    if not text.startswith("/"):
        raise KubeError(422, f"the server rejected our request due to an error in our request: bad path {text!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]


def _parent(document: Any, path: list[str]) -> Any:
    node = document
    for part in path[:-1]:
        node = _child(node, part, path)
    return node


def _child(node: Any, part: str, path: list[str]) -> Any:
    try:
        return node[int(part)] if isinstance(node, list) else node[part]
    except (KeyError, IndexError, ValueError, TypeError):
        raise KubeError(
            422,
            f'the server rejected our request due to an error in our request: doc is missing path: "/{"/".join(path)}"',
        ) from None


def _get_at(document: Any, path: list[str]) -> Any:
    node = document
    for part in path:
        node = _child(node, part, path)
    return node


def _add_at(document: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _parent(document, path)
    last = path[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        _child(parent, last, path)
    return document


def _remove_at(document: Any, path: list[str]) -> Any:
    parent = _parent(document, path)
    last = path[-1]
    _child(parent, last, path)
    if isinstance(parent, list):
        parent.pop(int(last))
    else:
        parent.pop(last)
    return document


def _age(created: str | None, now: float) -> str:
    from datetime import datetime

    if not created:
        return "<unknown>"
    seconds = max(0, int(now - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _column(name: str, kind: str = "string", fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": kind, "format": fmt, "description": name, "priority": 0}


def table(
    resource: Resource, items: list[dict[str, Any]], *, now: float, list_meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The meta.k8s.io/v1 Table kubectl asks for (server-side printing) with the usual columns."""
    columns = [_column("Name", fmt="name")]
    if resource.plural == "pods":
        columns += [_column("Ready"), _column("Status"), _column("Restarts", "string"), _column("Age")]
    elif resource.plural == "jobs":
        columns += [_column("Status"), _column("Completions"), _column("Duration"), _column("Age")]
    elif resource.plural == "namespaces":
        columns += [_column("Status"), _column("Age")]
    elif resource.plural == "events":
        columns = [_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"), _column("Message")]
    else:
        columns += [_column("Age")]
    rows = []
    for item in items:
        metadata = item.get("metadata") or {}
        age = _age(metadata.get("creationTimestamp"), now)
        status = item.get("status") or {}
        cells: list[Any] = [metadata.get("name", "")]
        if resource.plural == "pods":
            statuses = status.get("containerStatuses") or []
            ready = sum(1 for s in statuses if s.get("ready"))
            total = len((item.get("spec") or {}).get("containers") or [])
            cells += [
                f"{ready}/{total}",
                pod_display_status(item),
                str(sum(int(s.get("restartCount", 0)) for s in statuses)),
                age,
            ]
        elif resource.plural == "jobs":
            conditions = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
            shown = "Complete" if "Complete" in conditions else "Failed" if "Failed" in conditions else "Running"
            completions = (item.get("spec") or {}).get("completions", 1)
            cells += [shown, f"{status.get('succeeded', 0)}/{completions}", "", age]
        elif resource.plural == "namespaces":
            cells += [status.get("phase", ""), age]
        elif resource.plural == "events":
            involved = item.get("involvedObject") or {}
            cells = [
                age,
                item.get("type", ""),
                item.get("reason", ""),
                f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
                item.get("message", ""),
            ]
        else:
            cells += [age]
        partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
        rows.append({"cells": cells, "object": partial})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": dict(list_meta),
        "columnDefinitions": columns,
        "rows": rows,
    }


def pod_display_status(pod: Mapping[str, Any]) -> str:
    """What kubectl shows in STATUS: a waiting or terminated reason, else the phase."""
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    for entry in status.get("initContainerStatuses") or []:
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] != "PodInitializing":
            return f"Init:{waiting['reason']}"
    for entry in status.get("containerStatuses") or []:
        state = entry.get("state") or {}
        reason = (state.get("waiting") or {}).get("reason") or (state.get("terminated") or {}).get("reason")
        if reason:
            return str(reason)
    return str(status.get("phase", "Pending"))
