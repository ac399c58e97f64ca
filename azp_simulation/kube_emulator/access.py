"""Authentication and RBAC of the Kubernetes emulator: bearer tokens, SelfSubjectAccessReview,
authorization of every request."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from azp_simulation.kube_emulator.admission import _cause
from azp_simulation.kube_emulator.routing import _Target
from azp_simulation.kube_support import (
    RESOURCE_BY_PLURAL,
    RbacSubject,
    Resource,
    forbidden,
    invalid,
)

if TYPE_CHECKING:
    from azp_simulation.kube_emulator.core import KubernetesEmulator


ADMIN_USER = "kubernetes-admin"


def _access_review(self: KubernetesEmulator, body: Any, user: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise invalid(
            RESOURCE_BY_PLURAL["selfsubjectaccessreviews"],
            "",
            [_cause("spec", "Invalid value: resourceAttributes or nonResourceAttributes is required")],
        )
    attributes = body["spec"].get("resourceAttributes")
    subject = self._subject(user)
    if attributes is None:
        allowed, reason = subject is None, "" if subject is not None else "no RBAC emulation: everything allowed"
    else:
        resource = str(attributes.get("resource", ""))
        if attributes.get("subresource"):
            resource += "/" + str(attributes["subresource"])
        verb = str(attributes.get("verb", ""))
        group = str(attributes.get("group", ""))
        namespace = attributes.get("namespace") or None
        if subject is None:
            allowed, reason = True, "no RBAC emulation: everything allowed"
        else:
            allowed = subject.allows(
                verb=verb, group=group, resource=resource, namespace=namespace, name=attributes.get("name")
            )
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            reason = (
                f'RBAC: allowed by a rule granting "{verb}" on "{resource}" in API group "{group}" {scope}'
                if allowed
                else f'RBAC: no rule grants "{verb}" on "{resource}" in API group "{group}" {scope}'
            )
    return {
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": copy.deepcopy(body["spec"]),
        "status": {"allowed": allowed, "reason": reason} if allowed or reason else {"allowed": False},
    }


def _subject(self: KubernetesEmulator, user: str) -> RbacSubject | None:
    if self.rbac is None:
        return None
    return next((s for s in self.rbac.values() if s.name == user), None)


def authenticate(self: KubernetesEmulator, authorization: str | None) -> str | None:
    """The user a request acts as; None when RBAC mode refuses the credentials (401)."""
    token = ""
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    if self.rbac is None:
        subject = None
    else:
        subject = self.rbac.get(token)
        if subject is None:
            return None
    return subject.name if subject is not None else ADMIN_USER


def authorize(self: KubernetesEmulator, user: str, target: _Target, verb: str) -> None:
    """Raise 403 Forbidden when RBAC mode does not grant the request."""
    subject = self._subject(user)
    resource = target.resource
    if subject is None or resource is None or resource.plural == "selfsubjectaccessreviews":
        return
    plural = f"{resource.plural}/{target.subresource}" if target.subresource else resource.plural
    if not subject.allows(
        verb=verb, group=resource.group, resource=plural, namespace=target.namespace, name=target.name
    ):
        shown = (
            resource
            if not target.subresource
            else Resource(plural, resource.kind, resource.group, resource.version, resource.namespaced)
        )
        raise forbidden(shown, user=user, verb=verb, namespace=target.namespace, name=target.name)
