"""Storage of the Kubernetes emulator: objects by resource, resourceVersions, create, update, patch,
delete with propagation, list with selectors and continue, and watch."""

from __future__ import annotations

import base64
import copy
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from azp_simulation.kube_emulator.admission import _cause
from azp_simulation.kube_emulator.controllers import _controller_uid, _JobRuntime
from azp_simulation.kube_emulator.scheduling import PodHook, _finished_pod, _PodRuntime
from azp_simulation.kube_objects import (
    default_object,
    immutable_causes,
    json_patch,
    merge_patch,
    normalize_times,
    strategic_merge_patch,
    validate_object,
)
from azp_simulation.kube_support import (
    KUBE_ALPHABET,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RESOURCE_BY_PLURAL,
    Cause,
    KubeError,
    Requirement,
    Resource,
    SelectorError,
    already_exists,
    conflict,
    format_time,
    invalid,
    labels_match,
    not_found,
    parse_field_selector,
    parse_label_selector,
    success_status,
)

if TYPE_CHECKING:
    from azp_simulation.kube_emulator.core import KubernetesEmulator

log = logging.getLogger("azp_simulation.kube")


def _foreign(resource: Resource, obj: Mapping[str, Any]) -> bool:
    if resource.plural in ("leases", "events"):
        return False
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE


def _selected(obj: Mapping[str, Any], labels: Sequence[Requirement], fields: Sequence[Any]) -> bool:
    return labels_match(labels, obj["metadata"].get("labels")) and all(term.matches(obj) for term in fields)


def _encode_continue(start: str, version: int) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": version, "start": start + "\x00"}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode()


def _decode_continue(token: str) -> str | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"==="))
        return str(data["start"]).rstrip("\x00")
    except (ValueError, KeyError, TypeError):
        raise KubeError(400, "continue key is not valid: illegal base64 data or JSON") from None


def _non_negative_int(text: str, name: str) -> int:
    try:
        value = int(text or "0")
    except ValueError:
        raise KubeError(400, f'invalid {name} value "{text}": must be an integer') from None
    return max(0, value)


def _next_version(self: KubernetesEmulator) -> str:
    self._resource_version += 1
    return str(self._resource_version)


def _touch(self: KubernetesEmulator, obj: dict[str, Any]) -> None:
    obj["metadata"]["resourceVersion"] = self._next_version()


def _store_object(self: KubernetesEmulator, resource: Resource, obj: dict[str, Any]) -> None:
    metadata = obj["metadata"]
    key = (metadata.get("namespace", ""), metadata["name"])
    self._objects[resource.plural][key] = obj
    self._by_uid[metadata["uid"]] = (resource.plural, key)
    if resource.plural == "pods":
        self._index_pod(key, _controller_uid(obj))
    elif resource.plural == "events":
        self._event_times.append((self.clock(), key, metadata["uid"]))


def _index_pod(self: KubernetesEmulator, key: tuple[str, str], controller: str | None) -> None:
    previous = self._pod_controller.pop(key, None)
    if previous is not None:
        self._owned_pods.get(previous, set()).discard(key)
    if controller is not None:
        self._pod_controller[key] = controller
        self._owned_pods.setdefault(controller, set()).add(key)


def _drop_object(self: KubernetesEmulator, resource: Resource, obj: dict[str, Any]) -> None:
    metadata = obj["metadata"]
    self._objects[resource.plural].pop((metadata.get("namespace", ""), metadata["name"]), None)
    self._by_uid.pop(metadata["uid"], None)
    if resource.plural == "pods":
        self._index_pod((metadata.get("namespace", ""), metadata["name"]), None)
        runtime = self._pods.pop(metadata["uid"], None)
        if runtime is not None and not runtime.deleted_notified and not _finished_pod(obj):
            self._queue_hook(self.on_pod_deleted, obj)
    elif resource.plural == "jobs":
        self._jobs.pop(metadata["uid"], None)


def _queue_hook(self: KubernetesEmulator, hook: PodHook | None, pod: dict[str, Any]) -> None:
    if hook is not None:
        self._hooks.append((hook, copy.deepcopy(pod)))


def _deliver_hooks(self: KubernetesEmulator) -> None:
    with self._lock:
        hooks, self._hooks = self._hooks, []
    for hook, pod in hooks:
        try:
            hook(pod)
        except Exception:
            log.exception("pod hook failed for %s", pod["metadata"]["name"])


def _generate_name(self: KubernetesEmulator, resource: Resource, namespace: str, prefix: str) -> str:
    base = prefix[:58]
    for _ in range(100):
        name = base + "".join(self._random.choice(KUBE_ALPHABET) for _ in range(5))
        if (namespace, name) not in self._objects[resource.plural]:
            return name
    raise KubeError(409, f"failed to generate a unique name with prefix {prefix!r}", reason="AlreadyExists")


def _creation_metadata(resource: Resource, namespace: str | None, body: Any) -> dict[str, Any]:
    """Check a create's body against its URL (object, apiVersion, kind, namespace) and default them;
    returns its metadata."""
    if not isinstance(body, dict):
        raise KubeError(400, "the body of the request was in an unknown format")
    body.setdefault("apiVersion", resource.api_version)
    body.setdefault("kind", resource.kind)
    if body["apiVersion"] != resource.api_version or body["kind"] != resource.kind:
        raise KubeError(
            400,
            f"the API version in the data ({body['apiVersion']}) does not match the expected API version "
            f"({resource.api_version})"
            if body["apiVersion"] != resource.api_version
            else f"the kind in the data ({body['kind']}) does not match the expected kind ({resource.kind})",
        )
    metadata = body.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise KubeError(400, "metadata must be an object")
    if resource.namespaced:
        if metadata.get("namespace") and metadata["namespace"] != namespace:
            raise KubeError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    return metadata


def _create(
    self: KubernetesEmulator,
    resource: Resource,
    namespace: str | None,
    body: Any,
    *,
    dry_run: bool,
    validate: bool = True,
) -> dict[str, Any]:
    metadata = _creation_metadata(resource, namespace, body)
    if validate:
        validate_object(resource, body, version=self.validate_version)
    if not metadata.get("name"):
        metadata["name"] = self._generate_name(resource, namespace or "", str(metadata["generateName"]))
    name = metadata["name"]
    self._require_namespace(resource, namespace, creating=True, name=name)
    for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation", "selfLink"):
        metadata.pop(key, None)
    now = self.clock()
    metadata["uid"] = str(uuid.uuid4())
    metadata["creationTimestamp"] = format_time(now)
    if resource.plural in ("jobs", "pods"):
        metadata["generation"] = 1
    default_object(resource, body)
    normalize_times(resource, body)
    # Validating admission sees the defaulted object, before storage finds a name taken.
    self._pod_security(resource, body, None)
    if (namespace or "", name) in self._objects[resource.plural]:
        raise already_exists(resource, name)
    # The JSON shape the server returns starts with kind and apiVersion, then metadata.
    obj = {"kind": resource.kind, "apiVersion": resource.api_version, **body}
    if dry_run:
        return copy.deepcopy(obj)
    self._touch(obj)
    self._store_object(resource, obj)
    if resource.plural == "pods":
        self._pods[metadata["uid"]] = _PodRuntime(created=now)
    elif resource.plural == "jobs":
        self._jobs[metadata["uid"]] = _JobRuntime()
        self._sync_job(obj, now)
    return copy.deepcopy(obj)


def _existing(self: KubernetesEmulator, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
    self._require_namespace(resource, namespace, creating=False, name=name)
    found = self._objects[resource.plural].get((namespace or "", name))
    if found is None:
        raise not_found(resource, name)
    return found


def _check_update(
    resource: Resource, current: Mapping[str, Any], metadata: Mapping[str, Any], *, namespace: str | None, name: str
) -> None:
    """An update's body must match its URL, carry a resourceVersion where the resource asks for one
    (k8s.io/apiserver pkg/registry/generic/registry/store.go Update), and match the stored
    resourceVersion and uid (409 Conflict)."""
    if metadata.get("name", name) != name:
        raise KubeError(
            400, f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
        )
    if resource.namespaced and metadata.get("namespace", namespace) != namespace:
        raise KubeError(400, "the namespace of the provided object does not match the namespace sent on the request")
    wanted_version = metadata.get("resourceVersion")
    if not wanted_version and not resource.unconditional_update:
        cause = Cause(
            "metadata.resourceVersion", "FieldValueInvalid", "Invalid value: 0: must be specified for an update"
        )
        raise invalid(resource, name, [cause], by_resource=True)
    if wanted_version and wanted_version != current["metadata"]["resourceVersion"]:
        raise conflict(resource, name)
    if metadata.get("uid") and metadata["uid"] != current["metadata"]["uid"]:
        raise conflict(
            resource,
            name,
            f"Precondition failed: UID in precondition: {metadata['uid']}, UID in "
            f"object meta: {current['metadata']['uid']}",
        )


def _update(
    self: KubernetesEmulator,
    resource: Resource,
    namespace: str | None,
    name: str,
    body: Any,
    *,
    dry_run: bool,
    subresource: str | None,
    from_patch: bool = False,
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise KubeError(400, "the body of the request was in an unknown format")
    current = self._existing(resource, namespace, name)
    metadata = body.setdefault("metadata", {})
    body.setdefault("apiVersion", resource.api_version)
    body.setdefault("kind", resource.kind)
    _check_update(resource, current, metadata, namespace=namespace, name=name)
    if subresource == "status":
        updated = copy.deepcopy(current)
        updated["status"] = copy.deepcopy(body.get("status") or {})
    else:
        updated = _updated_object(resource, current, body, namespace=namespace, name=name)
        validate_object(resource, updated, version=self.validate_version, creating=False)
        causes = immutable_causes(resource, current, updated)
        if causes:
            raise invalid(resource, name, causes)
        self._pod_security(resource, updated, current)
        if updated.get("spec") != current.get("spec") and "generation" in current["metadata"]:
            updated["metadata"]["generation"] = int(current["metadata"]["generation"]) + 1
    updated = {"kind": resource.kind, "apiVersion": resource.api_version, **updated}
    updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    if updated == current:
        return copy.deepcopy(current)
    if dry_run:
        return updated
    self._touch(updated)
    if (
        updated["metadata"].get("deletionTimestamp")
        and not updated["metadata"].get("finalizers")
        and resource.plural not in ("pods", "namespaces")
    ):
        self._drop_object(resource, updated)
        return copy.deepcopy(updated)
    self._store_object(resource, updated)
    return copy.deepcopy(updated)


def _updated_object(
    resource: Resource, current: Mapping[str, Any], body: Mapping[str, Any], *, namespace: str | None, name: str
) -> dict[str, Any]:
    """The body of an update with what a client cannot change taken from the stored object: uid,
    timestamps, generation, the status of Jobs, Pods and Namespaces, a Namespace's spec, a Pod's node."""
    updated = copy.deepcopy(dict(body))
    updated["metadata"] = {**copy.deepcopy(body["metadata"]), "name": name}
    if resource.namespaced:
        updated["metadata"]["namespace"] = namespace
    for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
        if key in current["metadata"]:
            updated["metadata"][key] = current["metadata"][key]
        else:
            updated["metadata"].pop(key, None)
    if resource.plural in ("jobs", "pods", "namespaces"):
        updated["status"] = copy.deepcopy(current.get("status") or {})
    if resource.plural == "namespaces":
        updated["spec"] = copy.deepcopy(current.get("spec") or {})
    if resource.plural == "pods" and current["spec"].get("nodeName"):
        updated.setdefault("spec", {})["nodeName"] = current["spec"]["nodeName"]
    updated["metadata"].pop("resourceVersion", None)
    normalize_times(resource, updated)
    return updated


def _patch(
    self: KubernetesEmulator,
    resource: Resource,
    namespace: str | None,
    name: str,
    patch: Any,
    *,
    content_type: str,
    dry_run: bool,
    subresource: str | None,
) -> dict[str, Any]:
    current = self._existing(resource, namespace, name)
    media = content_type.split(";")[0].strip().lower()
    if media == "application/merge-patch+json":
        patched = merge_patch(current, patch)
    elif media == "application/strategic-merge-patch+json":
        patched = strategic_merge_patch(current, patch)
    elif media == "application/json-patch+json":
        patched = json_patch(current, patch)
    else:
        raise KubeError(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, "
            f"application/strategic-merge-patch+json (got {media or 'no Content-Type'})",
        )
    if not isinstance(patched, dict):
        raise KubeError(422, f'{resource.kind_qualified} "{name}" is invalid: the patch replaced the object')
    patched_meta = patched.setdefault("metadata", {})
    if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
        patched_meta["resourceVersion"] = current["metadata"]["resourceVersion"]
    return self._update(resource, namespace, name, patched, dry_run=dry_run, subresource=subresource, from_patch=True)


def _check_preconditions(
    resource: Resource, name: str, current: Mapping[str, Any], preconditions: Mapping[str, Any]
) -> None:
    """409 Conflict when a DeleteOptions precondition (uid, resourceVersion) does not hold."""
    if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
        raise conflict(
            resource,
            name,
            f"Precondition failed: UID in precondition: {preconditions['uid']}, UID "
            f"in object meta: {current['metadata']['uid']}",
        )
    if (
        preconditions.get("resourceVersion")
        and preconditions["resourceVersion"] != current["metadata"]["resourceVersion"]
    ):
        raise conflict(
            resource,
            name,
            f"Precondition failed: ResourceVersion in precondition: "
            f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
            f"{current['metadata']['resourceVersion']}",
        )


def _propagation_policy(resource: Resource, name: str, options: Mapping[str, Any]) -> str:
    """The delete's propagationPolicy, from orphanDependents or the resource's default when not given."""
    policy = options.get("propagationPolicy")
    if policy is None and options.get("orphanDependents") is not None:
        policy = "Orphan" if options.get("orphanDependents") else "Background"
    if policy is None:
        # batch/v1 Jobs orphan their pods by default, for compatibility; everything else is Background.
        policy = "Orphan" if resource.plural == "jobs" else "Background"
    if policy not in ("Orphan", "Background", "Foreground"):
        raise invalid(
            resource,
            name,
            [
                _cause(
                    "propagationPolicy",
                    f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan"',
                )
            ],
        )
    return str(policy)


def _delete(
    self: KubernetesEmulator,
    resource: Resource,
    namespace: str | None,
    name: str,
    options: Mapping[str, Any],
    *,
    dry_run: bool = False,
) -> tuple[int, dict[str, Any]]:
    current = self._existing(resource, namespace, name)
    _check_preconditions(resource, name, current, options.get("preconditions") or {})
    policy = _propagation_policy(resource, name, options)
    now = self.clock()
    obj = copy.deepcopy(current)
    metadata = obj["metadata"]
    if metadata.get("deletionTimestamp"):
        return 200, obj
    if resource.plural == "namespaces":
        metadata["deletionTimestamp"] = format_time(now)
        obj["status"]["phase"] = "Terminating"
        if not dry_run:
            self._touch(obj)
            self._store_object(resource, obj)
        return 200, copy.deepcopy(obj)
    if resource.plural == "pods":
        return 200, self._delete_pod(obj, now, options, dry_run=dry_run)
    finalizers = list(metadata.get("finalizers") or [])
    if policy == "Foreground" and self._dependents(metadata["uid"]):
        finalizers.append("foregroundDeletion")
    elif policy == "Orphan" and self._dependents(metadata["uid"]):
        finalizers.append("orphan")
    if finalizers:
        metadata["finalizers"] = finalizers
        metadata["deletionTimestamp"] = format_time(now)
        metadata["deletionGracePeriodSeconds"] = 0
        if "generation" in metadata:
            metadata["generation"] = int(metadata["generation"]) + 1
        if not dry_run:
            self._touch(obj)
            self._store_object(resource, obj)
        return 200, copy.deepcopy(obj)
    if not dry_run:
        self._drop_object(resource, current)
    return 200, success_status(resource, name, metadata["uid"])


def _delete_pod(
    self: KubernetesEmulator, pod: dict[str, Any], now: float, options: Mapping[str, Any], *, dry_run: bool
) -> dict[str, Any]:
    grace = options.get("gracePeriodSeconds")
    grace = int(grace) if grace is not None else int(pod["spec"].get("terminationGracePeriodSeconds", 30))
    runtime = self._pods.get(pod["metadata"]["uid"])
    immediate = grace == 0 or not pod["spec"].get("nodeName") or _finished_pod(pod)
    if dry_run:
        return pod
    if immediate:
        self._drop_object(RESOURCE_BY_PLURAL["pods"], pod)
        return pod
    pod["metadata"]["deletionTimestamp"] = format_time(now + grace)
    pod["metadata"]["deletionGracePeriodSeconds"] = grace
    self._touch(pod)
    self._store_object(RESOURCE_BY_PLURAL["pods"], pod)
    if runtime is not None:
        runtime.remove_at = now + min(float(grace), self.termination_delay)
        if not runtime.deleted_notified:
            runtime.deleted_notified = True
            self._queue_hook(self.on_pod_deleted, pod)
    return copy.deepcopy(pod)


def _dependents(self: KubernetesEmulator, owner_uid: str) -> list[tuple[Resource, dict[str, Any]]]:
    found = []
    for plural, store in self._objects.items():
        for obj in store.values():
            if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or []):
                found.append((RESOURCE_BY_PLURAL[plural], obj))
    return found


def _list(
    self: KubernetesEmulator,
    resource: Resource,
    namespace: str | None,
    query: Mapping[str, str],
    *,
    copies: bool = True,
) -> dict[str, Any]:
    """A typed list; with copies=False the items share the stored objects (serialize under the lock)."""
    try:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), resource)
    except SelectorError as error:
        raise KubeError(400, str(error)) from None
    if namespace is not None:
        self._require_namespace(resource, namespace, creating=False, name="")
    store = self._objects[resource.plural]
    keys = sorted(k for k in store if namespace is None or k[0] == namespace)
    start = _decode_continue(query.get("continue", ""))
    if start is not None:
        keys = [k for k in keys if f"{k[0]}/{k[1]}" > start]
    items = [store[k] for k in keys if _selected(store[k], labels, fields)]
    limit = _non_negative_int(query.get("limit", "0"), "limit")
    list_meta: dict[str, Any] = {"resourceVersion": str(self._resource_version)}
    if limit and len(items) > limit:
        last = items[limit - 1]["metadata"]
        list_meta["continue"] = _encode_continue(f"{last.get('namespace', '')}/{last['name']}", self._resource_version)
        list_meta["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    return {
        "kind": f"{resource.kind}List",
        "apiVersion": resource.api_version,
        "metadata": list_meta,
        # Items of a typed list carry no kind/apiVersion, as on a real API server.
        "items": [
            {k: copy.deepcopy(v) if copies else v for k, v in item.items() if k not in ("kind", "apiVersion")}
            for item in items
        ],
    }


def _expire_events(self: KubernetesEmulator, now: float) -> None:
    """Events live event_ttl seconds (the API server's --event-ttl, one hour by default)."""
    store = self._objects["events"]
    while self._event_times and self._event_times[0][0] <= now - self.event_ttl:
        _, key, uid = self._event_times.popleft()
        event = store.get(key)
        if event is not None and event["metadata"]["uid"] == uid:
            self._drop_object(RESOURCE_BY_PLURAL["events"], event)
