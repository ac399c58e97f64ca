"""Building blocks of the Kubernetes API emulator: Status errors, the resource table, label and field
selectors, name and object validation, quantities, RBAC rules, injected-fault bodies and the call log. No HTTP
server and no cluster state here."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from azp_simulation.serving import FaultKind as FaultKind

KUBE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "azp-agents"

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def format_time(epoch: float) -> str:
    """RFC 3339 with second precision and 'Z', as the API server writes metav1.Time."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(epoch: float) -> str:
    """RFC 3339 with microseconds, as the API server writes metav1.MicroTime (Events, Leases)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Resource:
    """One REST resource: how it is addressed, what it is called and what discovery says about it."""

    plural: str
    kind: str
    group: str
    version: str
    namespaced: bool
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update")
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    stored: bool = True
    # The registry strategy's AllowUnconditionalUpdate: false means an update must carry a resourceVersion.
    unconditional_update: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """'jobs.batch' or 'pods': how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_qualified(self) -> str:
        """'Job.batch' or 'Pod': how validation errors name the kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def base_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


RESOURCES: tuple[Resource, ...] = (
    Resource(
        "namespaces",
        "Namespace",
        "",
        "v1",
        False,
        ("create", "delete", "get", "list", "patch", "update"),
        ("ns",),
        ("status",),
    ),
    Resource("nodes", "Node", "", "v1", False, ("get", "list"), ("no",), ("status",)),
    Resource(
        "pods",
        "Pod",
        "",
        "v1",
        True,
        ("create", "delete", "get", "list", "patch", "update"),
        ("po",),
        ("status", "log"),
    ),
    Resource("events", "Event", "", "v1", True, short_names=("ev",)),
    Resource("secrets", "Secret", "", "v1", True),
    Resource("configmaps", "ConfigMap", "", "v1", True, short_names=("cm",)),
    Resource("serviceaccounts", "ServiceAccount", "", "v1", True, short_names=("sa",)),
    Resource("jobs", "Job", "batch", "v1", True, subresources=("status",)),
    # k8s.io/kubernetes pkg/registry/coordination/lease/strategy.go: AllowUnconditionalUpdate is false.
    Resource("leases", "Lease", "coordination.k8s.io", "v1", True, unconditional_update=False),
    Resource(
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        "authorization.k8s.io",
        "v1",
        False,
        ("create",),
        stored=False,
    ),
)
RESOURCE_BY_PLURAL = {r.plural: r for r in RESOURCES}
RESOURCE_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}
GROUP_VERSIONS: tuple[tuple[str, str], ...] = (
    ("batch", "v1"),
    ("coordination.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
)


def resource_for(group: str, version: str, plural: str) -> Resource | None:
    found = RESOURCE_BY_PLURAL.get(plural)
    if found is None or found.group != group or found.version != version:
        return None
    return found


class KubeError(Exception):
    """An API answer other than success, carried as a metav1.Status."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "InternalError")
        self.details = dict(details) if details else None
        self.headers = dict(headers or {})

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.message, reason=self.reason, details=self.details)


def status_object(
    code: int, message: str, *, reason: str | None = None, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A metav1.Status with status Failure."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "InternalError"),
    }
    if details:
        body["details"] = dict(details)
    body["code"] = code
    return body


def success_status(resource: Resource, name: str, uid: str) -> dict[str, Any]:
    """What DELETE answers when the object is gone at once and the store does not return it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": uid},
    }


def not_found(resource: Resource, name: str) -> KubeError:
    return KubeError(
        404,
        f'{resource.qualified} "{name}" not found',
        details={"name": name, "group": resource.group, "kind": resource.plural},
    )


def already_exists(resource: Resource, name: str) -> KubeError:
    return KubeError(
        409,
        f'{resource.qualified} "{name}" already exists',
        reason="AlreadyExists",
        details={"name": name, "group": resource.group, "kind": resource.plural},
    )


def conflict(resource: Resource, name: str, why: str | None = None) -> KubeError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return KubeError(
        409,
        f'Operation cannot be fulfilled on {resource.qualified} "{name}": {why}',
        reason="Conflict",
        details={"name": name, "group": resource.group, "kind": resource.plural},
    )


def forbidden(resource: Resource, *, user: str, verb: str, namespace: str | None, name: str | None) -> KubeError:
    subject = f'{resource.qualified} "{name}"' if name else resource.qualified
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    details: dict[str, Any] = {"group": resource.group, "kind": resource.plural}
    if name:
        details = {"name": name, **details}
    return KubeError(
        403,
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource.plural}" '
        f'in API group "{resource.group}" {scope}',
        details=details,
    )


@dataclass(frozen=True)
class Cause:
    """One metav1.StatusCause of an Invalid answer."""

    field: str
    reason: str
    message: str

    def text(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def invalid(resource: Resource, name: str, causes: Sequence[Cause], *, by_resource: bool = False) -> KubeError:
    """422 Invalid the way the API server words it: one cause inline, several in brackets; the kind
    names the object ('Job.batch'), or the resource ('leases.coordination.k8s.io') for the generic
    registry's own checks."""
    texts = [c.text() for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return KubeError(
        422,
        f'{resource.qualified if by_resource else resource.kind_qualified} "{name}" is invalid: {joined}',
        details={
            "name": name,
            "group": resource.group,
            "kind": resource.kind,
            "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
        },
    )


def injected_status(code: int) -> dict[str, Any]:
    """The Status body of an injected 'status' fault, shaped like the server's own answer."""
    messages = {
        400: "the server rejected our request for an unknown reason (injected fault)",
        401: "Unauthorized",
        403: 'jobs.batch is forbidden: User "system:anonymous" cannot list resource "jobs" in API group "batch" '
        "(injected fault)",
        404: "the server could not find the requested resource (injected fault)",
        409: 'Operation cannot be fulfilled on jobs.batch "injected": the object has been modified; please apply '
        "your changes to the latest version and try again",
        410: "The provided continue parameter is too old to display a consistent list result.",
        422: 'Job.batch "injected" is invalid: spec: Invalid value: "injected": injected fault',
        429: "Too many requests, please try again later.",
        500: "Internal error occurred: injected fault",
        503: "the server is currently unable to handle the request (injected fault)",
        504: "Timeout: request did not complete within the allotted timeout (injected fault)",
    }
    details: dict[str, Any] | None = None
    if code == 422:
        details = {
            "name": "injected",
            "group": "batch",
            "kind": "Job",
            "causes": [{"reason": "FieldValueInvalid", "message": 'Invalid value: "injected"', "field": "spec"}],
        }
    elif code in (403, 404, 409):
        details = {"group": "batch", "kind": "jobs"}
    return status_object(
        code, messages.get(code, f"Internal error occurred: injected fault (HTTP {code})"), details=details
    )


# Names and labels.

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and "
    "end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_NAME_PART_MESSAGE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def dns1123_label_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not _DNS1123_LABEL.fullmatch(value):
        errors.append(LABEL_MESSAGE)
    return errors


def dns1123_subdomain_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        errors.append(SUBDOMAIN_MESSAGE)
    return errors


def qualified_name_errors(value: str) -> list[str]:
    """Errors of a label or annotation key: an optional DNS subdomain prefix and '/', then a name part."""
    prefix, slash, name = value.rpartition("/")
    errors = []
    if slash:
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += [f"prefix part {e}" for e in dns1123_subdomain_errors(prefix)]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if name and not _QUALIFIED_NAME.fullmatch(name):
        errors.append(_NAME_PART_MESSAGE)
    return errors


def label_value_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not _LABEL_VALUE.fullmatch(value):
        errors.append(_LABEL_VALUE_MESSAGE)
    return errors


def label_causes(labels: Any, path: str) -> list[Cause]:
    """Causes for invalid label keys and values under `path` (e.g. 'metadata.labels')."""
    causes: list[Cause] = []
    if not isinstance(labels, Mapping):
        return causes
    for key, value in labels.items():
        for error in qualified_name_errors(str(key)):
            causes.append(Cause(path, "FieldValueInvalid", f'Invalid value: "{key}": {error}'))
        if not isinstance(value, str):
            continue
        for error in label_value_errors(value):
            causes.append(Cause(path, "FieldValueInvalid", f'Invalid value: "{value}": {error}'))
    return causes


# Label selectors: the full set-based grammar of k8s.io/apimachinery/pkg/labels.

_SPECIALS = ("!=", "==", "=", "!", "(", ")", ",", ">", "<")


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in ("=", "==", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in (">", "<") and present:
            try:
                number = int(str(value))
            except ValueError:
                return False
            bound = int(self.values[0])
            return number > bound if self.operator == ">" else number < bound
        return False


class SelectorError(ValueError):
    """A label or field selector the API server would refuse (400 BadRequest)."""


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
            continue
        special = next((s for s in _SPECIALS if text.startswith(s, index)), None)
        if special is not None:
            tokens.append(special)
            index += len(special)
            continue
        start = index
        while index < len(text) and not text[index].isspace() and not any(text.startswith(s, index) for s in _SPECIALS):
            index += 1
        tokens.append(text[start:index])
    return tokens


def _is_identifier(token: str | None) -> bool:
    return token is not None and token not in _SPECIALS


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    """Parse 'a=b,c!=d,e in (x,y),f notin (z),g,!h,n>3'; raises SelectorError like the server's parser."""
    tokens = _tokenize(text)
    requirements: list[Requirement] = []
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take(expected: str) -> str:
        nonlocal position
        token = peek()
        if token is None:
            raise SelectorError(f"unable to parse requirement: found '', expected: {expected}")
        position += 1
        return token

    while peek() is not None:
        negated = False
        if peek() == "!":
            take("!")
            negated = True
        key = take("identifier")
        if not _is_identifier(key):
            raise SelectorError(f"unable to parse requirement: found '{key}', expected: identifier")
        _check_key(key)
        following = peek()
        if negated:
            requirement = Requirement(key, "!")
        elif following is None or following == ",":
            requirement = Requirement(key, "exists")
        elif following in ("=", "==", "!="):
            take(following)
            value = peek()
            if value is None or value == ",":
                value = ""
            elif not _is_identifier(value):
                raise SelectorError(f"unable to parse requirement: found '{value}', expected: identifier")
            else:
                take("identifier")
            _check_value(value)
            requirement = Requirement(key, following, (value,))
        elif following in (">", "<"):
            take(following)
            value = take("integer")
            if not value.lstrip("-").isdigit():
                raise SelectorError(
                    f'unable to parse requirement: values[0]: Invalid value: "{value}": '
                    "for 'Gt', 'Lt' operators, the value must be an integer"
                )
            requirement = Requirement(key, following, (value,))
        elif following in ("in", "notin"):
            take(following)
            if take("'('") != "(":
                raise SelectorError(f"unable to parse requirement: found '{tokens[position - 1]}', expected: '('")
            values: list[str] = []
            while True:
                token = take("identifier, ',' or ')'")
                if token == ")":
                    break
                if token == ",":
                    continue
                if not _is_identifier(token):
                    raise SelectorError(
                        f"unable to parse requirement: found '{token}', expected: ',', ')' or identifier"
                    )
                _check_value(token)
                values.append(token)
            if not values:
                raise SelectorError(
                    "unable to parse requirement: values: Invalid value: \"\": for 'in', 'notin' operators, "
                    "values set can't be empty"
                )
            requirement = Requirement(key, following, tuple(values))
        else:
            raise SelectorError(
                f"unable to parse requirement: found '{following}', expected: in, notin, =, ==, !=, gt, lt"
            )
        requirements.append(requirement)
        after = peek()
        if after is None:
            break
        if after != ",":
            raise SelectorError(f"found '{after}', expected: ',' or 'end of string'")
        take(",")
        if peek() is None:
            raise SelectorError("found '', expected: identifier after ','")
    return tuple(requirements)


def _check_key(key: str) -> None:
    errors = qualified_name_errors(key)
    if errors:
        raise SelectorError(f'unable to parse requirement: key: Invalid value: "{key}": {errors[0]}')


def _check_value(value: str) -> None:
    errors = label_value_errors(value)
    if errors:
        raise SelectorError(f'unable to parse requirement: values[0][key]: Invalid value: "{value}": {errors[0]}')


def labels_match(requirements: Sequence[Requirement], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in requirements)


# Field selectors: the fields each resource supports, and equality terms joined by commas.

_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
}
_RESOURCE_FIELDS: dict[str, dict[str, Callable[[Mapping[str, Any]], str]]] = {
    "pods": {
        "status.phase": lambda o: str((o.get("status") or {}).get("phase", "")),
        "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
        "spec.restartPolicy": lambda o: str((o.get("spec") or {}).get("restartPolicy", "")),
        "spec.schedulerName": lambda o: str((o.get("spec") or {}).get("schedulerName", "")),
        "spec.serviceAccountName": lambda o: str((o.get("spec") or {}).get("serviceAccountName", "")),
        "status.podIP": lambda o: str((o.get("status") or {}).get("podIP", "")),
    },
    "jobs": {"status.successful": lambda o: str((o.get("status") or {}).get("succeeded", 0))},
    "secrets": {"type": lambda o: str(o.get("type", ""))},
    "namespaces": {"status.phase": lambda o: str((o.get("status") or {}).get("phase", ""))},
    "events": {
        "involvedObject.kind": lambda o: str((o.get("involvedObject") or {}).get("kind", "")),
        "involvedObject.name": lambda o: str((o.get("involvedObject") or {}).get("name", "")),
        "involvedObject.namespace": lambda o: str((o.get("involvedObject") or {}).get("namespace", "")),
        "involvedObject.uid": lambda o: str((o.get("involvedObject") or {}).get("uid", "")),
        "reason": lambda o: str(o.get("reason", "")),
        "type": lambda o: str(o.get("type", "")),
    },
}


@dataclass(frozen=True)
class FieldTerm:
    """One 'field=value' or 'field!=value' term of a field selector."""

    getter: Callable[[Mapping[str, Any]], str]
    value: str
    negated: bool

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (self.getter(obj) == self.value) != self.negated


def parse_field_selector(text: str, resource: Resource) -> tuple[FieldTerm, ...]:
    """Parse 'metadata.name=x,status.phase!=Running' for `resource`; unknown fields are a SelectorError."""
    terms = []
    supported = {**_FIELDS, **_RESOURCE_FIELDS.get(resource.plural, {})}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        for operator in ("!=", "==", "="):
            key, found, value = part.partition(operator)
            if found:
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        key = key.strip()
        getter = supported.get(key)
        if getter is None:
            raise SelectorError(f"field label not supported: {key}")
        terms.append(FieldTerm(getter, value.strip(), operator == "!="))
    return tuple(terms)


# Quantities.

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)")


def parse_quantity(value: Any) -> Decimal:
    """'500m' -> 0.5, '1Gi' -> 1073741824; raises ValueError for what the server would reject."""
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None or match.group(2) not in ("", *_SUFFIXES):
        raise ValueError(
            f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {value!r}"
        )
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ValueError(f"invalid quantity {value!r}") from None
    suffix = match.group(2)
    return number * Decimal(_SUFFIXES[suffix]) if suffix else number


# Object validation: kubernetes-validate's schemas with the validator cached per kind.


@lru_cache(maxsize=64)
def _validator(api_version: str, kind: str, version: str) -> Any:
    """The jsonschema validator kubernetes_validate.validate(..., strict=True) builds, built once."""
    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry
    from referencing import Resource as SchemaResource

    wanted = kv.major_minor(version)
    schema_version = [v for v in kv.all_versions() if kv.major_minor(v) <= wanted][-1]
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"v{schema_version}-local-strict"
    schema = kv.schema_contents(f"kubernetes-json-schema/{directory}/{kind.lower()}-{group}.json", version)
    definitions = kv.schema_contents(f"kubernetes-json-schema/{directory}/_definitions.json", version)
    registry: Any = SchemaResource.from_contents(schema) @ Registry()
    registry = SchemaResource.from_contents(definitions) @ registry
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_causes(obj: Mapping[str, Any], version: str) -> list[Cause]:
    """Schema errors of `obj` (strict: unknown fields are errors) as causes naming the field."""
    validator = _validator(str(obj.get("apiVersion")), str(obj.get("kind")), version)
    causes = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        path = _field_path(error.absolute_path)
        message = str(error.message)
        if error.validator == "additionalProperties":
            unknown = re.findall(r"'([^']+)'", message.split("(")[-1])
            for name in unknown or [""]:
                causes.append(
                    Cause(
                        f"{path}.{name}" if path else name,
                        "FieldValueInvalid",
                        f'unknown field "{f"{path}.{name}" if path else name}"',
                    )
                )
            continue
        if error.validator == "required":
            missing = re.findall(r"^'([^']+)'", message)
            name = missing[0] if missing else ""
            causes.append(Cause(f"{path}.{name}" if path else name, "FieldValueRequired", "Required value"))
            continue
        causes.append(Cause(path, "FieldValueInvalid", f"Invalid value: {message}"))
    return causes


def _field_path(parts: Sequence[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def json_size(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


# RBAC.


@dataclass(frozen=True)
class RbacSubject:
    """One identity the emulated cluster knows by bearer token, with its Role and ClusterRole rules."""

    name: str
    rules_by_namespace: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    cluster_rules: Sequence[Mapping[str, Any]] = ()

    def allows(self, *, verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> bool:
        """Whether some rule grants the verb; namespace rules apply inside their namespace only."""
        rules = list(self.cluster_rules)
        if namespace:
            rules += list(self.rules_by_namespace.get(namespace, ()))
        return any(_rule_allows(rule, verb=verb, group=group, resource=resource, name=name) for rule in rules)


def _rule_allows(rule: Mapping[str, Any], *, verb: str, group: str, resource: str, name: str | None) -> bool:
    verbs = rule.get("verbs") or ()
    groups = rule.get("apiGroups") or ()
    resources = rule.get("resources") or ()
    names = rule.get("resourceNames") or ()
    if "*" not in verbs and verb not in verbs:
        return False
    if "*" not in groups and group not in groups:
        return False
    if "*" not in resources and resource not in resources:
        return False
    return not names or (name is not None and name in names)


def rbac_subject_from_file(
    path: Path, *, name: str, agent_namespace: str, lease_namespace: str | None = None, release: str = "azp-agents"
) -> RbacSubject:
    """An RbacSubject with exactly the permissions of the project's rbac.json (as the chart renders them for
    `release`: its `{release}` in resourceNames stands for the release name)."""
    document = json.loads(path.read_text(encoding="utf-8").replace("{release}", release))
    rules: dict[str, list[Mapping[str, Any]]] = {agent_namespace: list(document.get("agentNamespace") or [])}
    lease_rules = list(document.get("leaseNamespace") or []) + list(document.get("standbyHistory") or [])
    rules.setdefault(lease_namespace or agent_namespace, []).extend(lease_rules)
    return RbacSubject(name=name, rules_by_namespace=rules)


# Faults and the call log.


@dataclass(frozen=True)
class KubeCall:
    """One HTTP request as the emulator saw it.

    `key` is how call_counts() groups calls: 'METHOD resource' with '(list)' for a collection GET,
    '(watch)' for a watch and '/sub' for a subresource ('GET jobs(list)', 'POST jobs', 'PUT leases',
    'GET pods/log'); discovery is 'GET discovery'."""

    method: str
    route: str
    path: str
    query: dict[str, str]
    status: int
    user: str | None
    time: float
    key: str
    dry_run: bool = False
    fault: FaultKind | None = None
