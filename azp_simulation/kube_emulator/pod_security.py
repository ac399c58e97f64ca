"""Pod Security admission of the Kubernetes emulator: the Pod Security Standards checks of
k8s.io/pod-security-admission v0.35.4 (the version of the realkube tier's kube-apiserver), written anew
from its sources:
- policy/check_*.go: each check, its level, the Kubernetes versions it applies from, the baseline checks
  a restricted one overrides, and its ForbiddenReason and ForbiddenDetail texts; policy/helpers.go
  (joinQuote, pluralize, relaxPolicyForUserNamespacePod) and policy/visitor.go (init containers, then
  containers, then ephemeral containers);
- policy/registry.go: the order of the checks (baseline IDs sorted, then restricted IDs sorted) and a
  restricted evaluation that includes the baseline checks no restricted check overrides;
- policy/checks.go AggregateCheckResults: `reason (detail), reason (detail)`;
- api/helpers.go PolicyToEvaluate: the namespace labels pod-security.kubernetes.io/enforce, audit, warn
  and their -version ("latest" or "v1.x"); warn defaults to the enforce level and version when only
  enforce is set; a bad label makes a Namespace create or update Invalid;
- admission/admission.go: pods are checked against enforce on create and on an update that changes a
  container image or the containers (403 Forbidden `pods "x" is forbidden: violates PodSecurity
  "restricted:latest": ...`); then, if admitted, against warn (a Warning header
  `would violate PodSecurity "baseline:latest": ...`); a workload resource with a pod template (here:
  Jobs) is never refused, it only gets the warn check's Warning, on create and update; the status and
  other subresources are not checked.

A Namespace update that tightens enforce warns about the pods already there that the new level would
refuse. Deliberately not emulated: audit (it only annotates the audit log, which the emulator does not
keep), exemptions (usernames, runtime classes, namespaces: none are configured by default), the limits of
that namespace check (3000 pods, 1 s), the size limits of Warning headers, and the AppArmor and seccomp
annotations the API server turns into fields on pod create.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from azp_simulation.kube_support import RESOURCE_BY_PLURAL, Cause, KubeError, Resource, invalid

LABEL_PREFIX = "pod-security.kubernetes.io/"
LEVELS = ("privileged", "baseline", "restricted")
VERSION = re.compile(r"v1\.([0-9]|[1-9][0-9]*)")
"""api/helpers.go versionRegexp."""
LATEST_MINOR = 35
"""The newest minor version whose checks pod-security-admission v0.35.4 knows ("latest")."""

Result = tuple[str, str] | None
"""(ForbiddenReason, ForbiddenDetail) of a failed check, None when the pod passes."""


@dataclass(frozen=True)
class LevelVersion:
    level: str
    version: str
    """"latest" or "v1.x"."""

    def minor(self, server: int) -> int:
        """The minor version whose checks apply on a server of minor version `server` (policy/registry.go:
        latest, or a version newer than the server's or than the checks known, means the server's own)."""
        known = min(server, LATEST_MINOR)
        return known if self.version == "latest" else min(int(self.version[3:]), known)

    def __str__(self) -> str:
        return f"{self.level}:{self.version}"


PRIVILEGED = LevelVersion("privileged", "latest")


@dataclass(frozen=True)
class Policy:
    enforce: LevelVersion
    warn: LevelVersion


def _quote(items: list[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def _plural(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _context(item: Mapping[str, Any], key: str = "securityContext") -> Mapping[str, Any]:
    return item.get(key) or {}


def _windows(spec: Mapping[str, Any], minor: int) -> bool:
    """From 1.25 a pod with spec.os.name windows is exempt from the Linux-only restricted checks."""
    return minor >= 25 and (spec.get("os") or {}).get("name") == "windows"


def _user_namespace(spec: Mapping[str, Any], minor: int) -> bool:
    """relaxPolicyForUserNamespacePod, applied from 1.35: a pod with hostUsers: false."""
    return minor >= 35 and spec.get("hostUsers") is False


def _named(names: list[str]) -> str:
    """'container "a"' or 'containers "a", "b"'."""
    return f"{_plural('container', 'containers', len(names))} {_quote(names)}"


def _setters(pod_bad: bool, containers: list[str]) -> list[str]:
    """Who set a forbidden value: "pod" and/or the containers."""
    return (["pod"] if pod_bad else []) + ([_named(containers)] if containers else [])


def _bad_containers(spec: Mapping[str, Any], bad: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    return [str(c.get("name")) for c in _containers(spec) if bad(_context(c))]


def _app_armor(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_appArmorProfile.go: profile types other than RuntimeDefault and Localhost, and the beta
    annotations other than runtime/default and localhost/*."""
    values: set[str] = set()

    def bad(context: Mapping[str, Any]) -> bool:
        kind = (context.get("appArmorProfile") or {}).get("type")
        if context.get("appArmorProfile") is not None and kind not in ("RuntimeDefault", "Localhost"):
            values.add(str(kind or ""))
            return True
        return False

    setters = _setters(bad(_context(spec)), _bad_containers(spec, bad))
    prefix = "container.apparmor.security.beta.kubernetes.io/"
    annotations = sorted(
        f"{key}={json.dumps(value)}"
        for key, value in (meta.get("annotations") or {}).items()
        if key.startswith(prefix) and value and value != "runtime/default" and not value.startswith("localhost/")
    )
    if annotations:
        setters.append(_plural("annotation", "annotations", len(annotations)))
    if not setters:
        return None
    listed = sorted(values) + annotations
    reason = _plural("forbidden AppArmor profile", "forbidden AppArmor profiles", len(listed))
    return reason, f"{' and '.join(setters)} must not set AppArmor profile type to {_quote(listed)}"


BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip


def _added(context: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in (context.get("capabilities") or {}).get("add") or []]


def _capabilities_baseline(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_capabilities_baseline.go: capabilities added beyond the container runtime's defaults."""
    extra = {c for container in _containers(spec) for c in _added(_context(container))} - BASELINE_CAPABILITIES
    names = _bad_containers(spec, lambda context: bool(set(_added(context)) - BASELINE_CAPABILITIES))
    if not names:
        return None
    return "non-default capabilities", (
        f"{_named(names)} must not include {_quote(sorted(extra))} in securityContext.capabilities.add"
    )


def _host_namespaces(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_hostNamespaces.go."""
    used = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    return ("host namespaces", ", ".join(used)) if used else None


def _host_path_volumes(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_hostPathVolumes.go."""
    names = [str(v.get("name")) for v in spec.get("volumes") or [] if v.get("hostPath") is not None]
    return ("hostPath volumes", f"{_plural('volume', 'volumes', len(names))} {_quote(names)}") if names else None


def _host_ports(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_hostPorts.go: the ports are listed as sorted strings."""
    ports = {str(p["hostPort"]) for c in _containers(spec) for p in c.get("ports") or [] if p.get("hostPort")}
    names = [str(c.get("name")) for c in _containers(spec) if any(p.get("hostPort") for p in c.get("ports") or [])]
    if not names:
        return None
    uses = _plural("uses", "use", len(names))
    return (
        "hostPort",
        f"{_named(names)} {uses} {_plural('hostPort', 'hostPorts', len(ports))} {', '.join(sorted(ports))}",
    )


def _handler_hosts(container: Mapping[str, Any]) -> list[str]:
    """Hosts of the container's probes and lifecycle handlers (httpGet and tcpSocket)."""
    lifecycle = container.get("lifecycle") or {}
    handlers = [container.get(k) for k in ("livenessProbe", "readinessProbe", "startupProbe")]
    handlers += [lifecycle.get(k) for k in ("postStart", "preStop")]
    return [
        str(action["host"])
        for handler in handlers
        if handler
        for action in (handler.get("httpGet"), handler.get("tcpSocket"))
        if action and action.get("host")
    ]


def _host_probes(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_hostProbesAndhostLifecycle.go (1.34+): containers and hosts are sorted sets."""
    names = sorted({str(c.get("name")) for c in _containers(spec) if _handler_hosts(c)})
    hosts = sorted({host for c in _containers(spec) for host in _handler_hosts(c)})
    if not names:
        return None
    what = _plural("probe or lifecycle host", "probe or lifecycle hosts", len(hosts))
    return "probe or lifecycle host", f"{_named(names)} {_plural('uses', 'use', len(names))} {what} {_quote(hosts)}"


def _privileged(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_privileged.go."""
    names = _bad_containers(spec, lambda context: context.get("privileged") is True)
    return ("privileged", f"{_named(names)} must not set securityContext.privileged=true") if names else None


def _proc_mount_any(spec: Mapping[str, Any]) -> Result:
    """procMount_1_0: a procMount other than Default."""
    types = {
        str(_context(c)["procMount"])
        for c in _containers(spec)
        if _context(c).get("procMount") not in (None, "Default")
    }
    names = _bad_containers(spec, lambda context: context.get("procMount") not in (None, "Default"))
    if not names:
        return None
    return "procMount", f"{_named(names)} must not set securityContext.procMount to {_quote(sorted(types))}"


def _proc_mount(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_procMount_baseline.go: from 1.35 a user-namespaced pod may set any procMount."""
    return None if _user_namespace(spec, minor) else _proc_mount_any(spec)


def _seccomp_annotations(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> Result:
    """seccompProfileBaseline_1_0 (before 1.19): the alpha annotations."""
    annotations = meta.get("annotations") or {}
    keys = ["seccomp.security.alpha.kubernetes.io/pod"]
    keys += [f"container.seccomp.security.alpha.kubernetes.io/{c.get('name')}" for c in _containers(spec)]
    forbidden = sorted(
        f"{key}={json.dumps(annotations[key])}"
        for key in set(keys)
        if key in annotations
        and annotations[key] not in ("runtime/default", "docker/default")
        and not str(annotations[key]).startswith("localhost/")
    )
    if not forbidden:
        return None
    return "seccompProfile", f"forbidden {_plural('annotation', 'annotations', len(forbidden))} {', '.join(forbidden)}"


def _seccomp_type(context: Mapping[str, Any]) -> str | None:
    """The seccompProfile type a security context sets (None: not set)."""
    profile = context.get("seccompProfile")
    return None if profile is None else str((profile or {}).get("type") or "")


def _seccomp_explicit(spec: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(setters, values) of seccompProfile types other than RuntimeDefault and Localhost."""
    valid = (None, "RuntimeDefault", "Localhost")
    values = {t for t in [_seccomp_type(_context(spec))] + [_seccomp_type(_context(c)) for c in _containers(spec)]}
    setters = _setters(
        _seccomp_type(_context(spec)) not in valid, _bad_containers(spec, lambda ctx: _seccomp_type(ctx) not in valid)
    )
    return setters, sorted(str(v) for v in values if v not in valid)


def _seccomp_baseline(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_seccompProfile_baseline.go: the field from 1.19, the annotations before."""
    if minor < 19:
        return _seccomp_annotations(meta, spec)
    setters, values = _seccomp_explicit(spec)
    if not setters:
        return None
    return (
        "seccompProfile",
        f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to {_quote(values)}",
    )


SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}


def _selinux(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_seLinuxOptions.go: container_engine_t is allowed from 1.31."""
    allowed = SELINUX_TYPES | ({"container_engine_t"} if minor >= 31 else set())
    options = [_context(spec).get("seLinuxOptions")] + [_context(c).get("seLinuxOptions") for c in _containers(spec)]
    present = [o or {} for o in options if o is not None]

    def bad(context: Mapping[str, Any]) -> bool:
        found = context.get("seLinuxOptions")
        return found is not None and (
            (found or {}).get("type", "") not in allowed or bool((found or {}).get("user") or (found or {}).get("role"))
        )

    setters = _setters(bad(_context(spec)), _bad_containers(spec, bad))
    if not setters:
        return None
    types = sorted({str(o.get("type", "")) for o in present if o.get("type", "") not in allowed})
    data = [f"{_plural('type', 'types', len(types))} {_quote(types)}"] if types else []
    data += [f"{key} may not be set" for key in ("user", "role") if any(o.get(key) for o in present)]
    return "seLinuxOptions", f"{' and '.join(setters)} set forbidden securityContext.seLinuxOptions: {'; '.join(data)}"


SYSCTLS = {
    0: {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start"},
    27: {"net.ipv4.ip_local_reserved_ports"},
    29: {"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
         "net.ipv4.tcp_keepalive_probes"},
    32: {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"},
}  # fmt: skip


def _sysctls(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_sysctls.go: the safe set grows in 1.27, 1.29 and 1.32; listed in the pod's order."""
    allowed = set().union(*(names for since, names in SYSCTLS.items() if minor >= since))
    forbidden = [str(s.get("name")) for s in _context(spec).get("sysctls") or [] if s.get("name") not in allowed]
    return ("forbidden sysctls", ", ".join(forbidden)) if forbidden else None


def _windows_host_process(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_windowsHostProcess.go."""

    def bad(context: Mapping[str, Any]) -> bool:
        return (context.get("windowsOptions") or {}).get("hostProcess") is True

    setters = _setters(bad(_context(spec)), _bad_containers(spec, bad))
    if not setters:
        return None
    return "hostProcess", f"{' and '.join(setters)} must not set securityContext.windowsOptions.hostProcess=true"


def _privilege_escalation(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_allowPrivilegeEscalation.go: allowPrivilegeEscalation must be set to false."""
    if _windows(spec, minor):
        return None
    names = _bad_containers(spec, lambda context: context.get("allowPrivilegeEscalation") is not False)
    if not names:
        return None
    return "allowPrivilegeEscalation != false", (
        f"{_named(names)} must set securityContext.allowPrivilegeEscalation=false"
    )


def _capabilities_restricted(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_capabilities_restricted.go: drop ALL, add nothing but NET_BIND_SERVICE."""
    if _windows(spec, minor):
        return None
    missing = _bad_containers(spec, lambda ctx: "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []))
    adding = _bad_containers(spec, lambda ctx: any(c != "NET_BIND_SERVICE" for c in _added(ctx)))
    extra = sorted({c for container in _containers(spec) for c in _added(_context(container))} - {"NET_BIND_SERVICE"})
    details = [f'{_named(missing)} must set securityContext.capabilities.drop=["ALL"]'] if missing else []
    if adding:
        details.append(f"{_named(adding)} must not include {_quote(extra)} in securityContext.capabilities.add")
    return ("unrestricted capabilities", "; ".join(details)) if details else None


def _proc_mount_restricted(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_procMount_restricted.go (1.35+): no exception for user-namespaced pods."""
    return _proc_mount_any(spec)


ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
NAMED_VOLUMES = (
    "hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi", "glusterfs", "rbd",
    "flexVolume", "cinder", "cephfs", "flocker", "fc", "azureFile", "vsphereVolume", "quobyte", "azureDisk",
    "photonPersistentDisk", "portworxVolume", "scaleIO", "storageos",
)  # fmt: skip


def _volume_type(volume: Mapping[str, Any]) -> str | None:
    """The restricted volume type of a volume, None when its type is allowed."""
    if any(volume.get(key) is not None for key in ALLOWED_VOLUMES):
        return None
    return next((key for key in NAMED_VOLUMES if volume.get(key) is not None), "unknown")


def _restricted_volumes(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_restrictedVolumes.go."""
    typed = [(str(v.get("name")), _volume_type(v)) for v in spec.get("volumes") or []]
    names = [name for name, kind in typed if kind]
    kinds = sorted({str(kind) for _, kind in typed if kind})
    if not names:
        return None
    what = _plural("restricted volume type", "restricted volume types", len(kinds))
    volumes = _plural("volume", "volumes", len(names))
    return (
        "restricted volume types",
        f"{volumes} {_quote(names)} {_plural('uses', 'use', len(names))} {what} {_quote(kinds)}",
    )


def _run_as_non_root(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_runAsNonRoot.go: the pod or every container sets runAsNonRoot=true, none sets false."""
    if _user_namespace(spec, minor):
        return None
    pod = _context(spec).get("runAsNonRoot")
    setters = _setters(pod is False, _bad_containers(spec, lambda context: context.get("runAsNonRoot") is False))
    if setters:
        return "runAsNonRoot != true", f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false"
    unset = [] if pod is True else _bad_containers(spec, lambda context: context.get("runAsNonRoot") is None)
    if not unset:
        return None
    return "runAsNonRoot != true", f"pod or {_named(unset)} must set securityContext.runAsNonRoot=true"


def _run_as_user(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_runAsUser.go (1.23+)."""
    if _user_namespace(spec, minor):
        return None
    setters = _setters(
        _context(spec).get("runAsUser") == 0, _bad_containers(spec, lambda context: context.get("runAsUser") == 0)
    )
    return ("runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0") if setters else None


def _seccomp_restricted(meta: Mapping[str, Any], spec: Mapping[str, Any], minor: int) -> Result:
    """check_seccompProfile_restricted.go: RuntimeDefault or Localhost on the pod or every container."""
    if _windows(spec, minor):
        return None
    setters, values = _seccomp_explicit(spec)
    if setters:
        return "seccompProfile", (
            f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to {_quote(values)}"
        )
    unset = [] if _seccomp_type(_context(spec)) else _bad_containers(spec, lambda ctx: _seccomp_type(ctx) is None)
    if not unset:
        return None
    return "seccompProfile", (
        f'pod or {_named(unset)} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"'
    )


Check = Callable[[Mapping[str, Any], Mapping[str, Any], int], Result]


@dataclass(frozen=True)
class _Check:
    id: str
    level: str
    since: int
    """The minor version of Kubernetes the check applies from."""
    run: Check
    overrides: str | None = None
    """The baseline check a restricted one replaces."""


CHECKS = (
    _Check("appArmorProfile", "baseline", 0, _app_armor),
    _Check("capabilities_baseline", "baseline", 0, _capabilities_baseline),
    _Check("hostNamespaces", "baseline", 0, _host_namespaces),
    _Check("hostPathVolumes", "baseline", 0, _host_path_volumes),
    _Check("hostPorts", "baseline", 0, _host_ports),
    _Check("hostProbesAndHostLifecycle", "baseline", 34, _host_probes),
    _Check("privileged", "baseline", 0, _privileged),
    _Check("procMount", "baseline", 0, _proc_mount),
    _Check("seLinuxOptions", "baseline", 0, _selinux),
    _Check("seccompProfile_baseline", "baseline", 0, _seccomp_baseline),
    _Check("sysctls", "baseline", 0, _sysctls),
    _Check("windowsHostProcess", "baseline", 0, _windows_host_process),
    _Check("allowPrivilegeEscalation", "restricted", 8, _privilege_escalation),
    _Check("capabilities_restricted", "restricted", 22, _capabilities_restricted, "capabilities_baseline"),
    _Check("procMount_restricted", "restricted", 35, _proc_mount_restricted, "procMount"),
    _Check("restrictedVolumes", "restricted", 0, _restricted_volumes, "hostPathVolumes"),
    _Check("runAsNonRoot", "restricted", 0, _run_as_non_root),
    _Check("runAsUser", "restricted", 23, _run_as_user),
    _Check("seccompProfile_restricted", "restricted", 19, _seccomp_restricted, "seccompProfile_baseline"),
)
"""Baseline checks first, then restricted ones, each group sorted by ID in Go's byte order
(seLinuxOptions before seccompProfile_baseline)."""


def _failures(
    level: LevelVersion, meta: Mapping[str, Any], spec: Mapping[str, Any], server: int
) -> list[tuple[str, str]]:
    """(reason, detail) of every check the pod fails at the level, in the registry's order."""
    if level.level == "privileged":
        return []
    minor = level.minor(server)
    active = [c for c in CHECKS if c.since <= minor and (c.level == "baseline" or level.level == "restricted")]
    overridden = {c.overrides for c in active}
    results = [c.run(meta, spec, minor) for c in active if c.id not in overridden]
    return [r for r in results if r is not None]


def evaluate(level: LevelVersion, meta: Mapping[str, Any], spec: Mapping[str, Any], server: int) -> str | None:
    """The aggregated ForbiddenDetail of the pod at a level, None when it passes."""
    failed = _failures(level, meta, spec, server)
    return ", ".join(f"{reason} ({detail})" if detail else reason for reason, detail in failed) or None


def _label(labels: Mapping[str, str], mode: str, default: LevelVersion) -> tuple[LevelVersion, list[Cause]]:
    """The level and version one mode's labels set, and the causes of the invalid ones."""
    level, version, causes = default.level, default.version, []
    if f"{LABEL_PREFIX}{mode}" in labels:
        value = labels[f"{LABEL_PREFIX}{mode}"]
        if value in LEVELS:
            level = value
        else:
            causes.append(_invalid_label(f"{mode}", value, "must be one of privileged, baseline, restricted"))
            level = "restricted" if mode == "enforce" else "privileged"
    if f"{LABEL_PREFIX}{mode}-version" in labels:
        value = labels[f"{LABEL_PREFIX}{mode}-version"]
        if value == "latest" or VERSION.fullmatch(value):
            version = value
        else:
            causes.append(_invalid_label(f"{mode}-version", value, 'must be "latest" or "v1.x"'))
            version = "latest"
    return LevelVersion(level, version), causes


def _invalid_label(suffix: str, value: str, why: str) -> Cause:
    return Cause(
        f"metadata.labels[{LABEL_PREFIX}{suffix}]", "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {why}"
    )


def policy(labels: Mapping[str, str]) -> tuple[Policy, list[Cause]]:
    """The namespace's enforce and warn levels (privileged:latest by default) and the label errors;
    without a warn label, warn follows a valid enforce label that is stricter."""
    enforce, causes = _label(labels, "enforce", PRIVILEGED)
    warn, warn_causes = _label(labels, "warn", PRIVILEGED)
    _, audit_causes = _label(labels, "audit", PRIVILEGED)
    enforce_set = f"{LABEL_PREFIX}enforce" in labels and labels[f"{LABEL_PREFIX}enforce"] in LEVELS
    if f"{LABEL_PREFIX}warn" not in labels and enforce_set and LEVELS.index(enforce.level) > LEVELS.index(warn.level):
        version = warn.version if f"{LABEL_PREFIX}warn-version" in labels else enforce.version
        warn = LevelVersion(enforce.level, version)
    return Policy(enforce, warn), causes + audit_causes + warn_causes


def check_namespace(
    namespace: Mapping[str, Any], old: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], server: int
) -> list[str]:
    """ValidateNamespace: invalid labels refuse a create, or an update that changes the errors; an update
    that tightens enforce warns about the namespace's pods it would refuse (EvaluatePodsInNamespace)."""
    name = str(namespace["metadata"]["name"])
    new, causes = policy(namespace["metadata"].get("labels") or {})
    before, old_causes = policy(old["metadata"].get("labels") or {}) if old is not None else (None, [])
    if causes and (before is None or causes != old_causes):
        raise invalid(RESOURCE_BY_PLURAL["namespaces"], name, causes)
    if before is None or not _tightened(new.enforce, before.enforce):
        return []
    return _existing_pod_warnings(name, new.enforce, pods, server)


def _tightened(new: LevelVersion, old: LevelVersion) -> bool:
    """Whether a new enforce level may refuse pods the old one admitted: not privileged, and stricter or
    of another version."""
    if new == old or new.level == "privileged":
        return False
    return new.version != old.version or LEVELS.index(new.level) > LEVELS.index(old.level)


def _existing_pod_warnings(
    namespace: str, level: LevelVersion, pods: Sequence[Mapping[str, Any]], server: int
) -> list[str]:
    """One warning for the namespace, then one per distinct set of failed checks, naming the first pod by
    name and how many others fail the same way, sorted (decoratePodWarnings)."""
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for pod in pods:
        reasons = ", ".join(reason for reason, _ in _failures(level, pod["metadata"], pod.get("spec") or {}, server))
        if reasons:
            counts[reasons] += 1
            first[reasons] = min(first.get(reasons, pod["metadata"]["name"]), pod["metadata"]["name"])
    if not counts:
        return []
    pod_warnings = sorted(f"{first[r]}{_others(counts[r] - 1)}: {r}" for r in counts)
    return [
        f'existing pods in namespace "{namespace}" violate the new PodSecurity enforce level "{level}"',
        *pod_warnings,
    ]


def _others(count: int) -> str:
    return "" if count == 0 else " (and 1 other pod)" if count == 1 else f" (and {count} other pods)"


def _significant(pod: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """isSignificantPodUpdate: containers added or removed, an image changed."""
    spec, before = pod.get("spec") or {}, old.get("spec") or {}
    for key in ("containers", "initContainers"):
        now, then = spec.get(key) or [], before.get(key) or []
        if len(now) != len(then) or any(a.get("image") != b.get("image") for a, b in zip(now, then, strict=True)):
            return True
    old_ephemeral = {c.get("name"): c.get("image") for c in before.get("ephemeralContainers") or []}
    return any(
        old_ephemeral.get(c.get("name"), object()) != c.get("image") for c in spec.get("ephemeralContainers") or []
    )


def admit(
    resource: Resource,
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    labels: Mapping[str, str],
    pods: Sequence[Mapping[str, Any]] = (),
    *,
    server: int = LATEST_MINOR,
) -> list[str]:
    """Pod Security admission of a create (old None) or update of `obj` in a namespace with `labels`
    (a Namespace: with its `pods`) on a server of minor version `server`: raises 403 for a pod enforce
    refuses; returns the warnings to send."""
    if resource.plural == "namespaces":
        return check_namespace(obj, old, pods, server)
    if resource.plural not in ("pods", "jobs"):
        return []
    if resource.plural == "pods" and old is not None and not _significant(obj, old):
        return []
    found, _ = policy(labels)
    template = obj if resource.plural == "pods" else (obj.get("spec") or {}).get("template") or {}
    meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    if resource.plural == "pods":
        refused = evaluate(found.enforce, meta, spec, server)
        if refused:
            raise KubeError(
                403,
                f'pods "{obj["metadata"]["name"]}" is forbidden: violates PodSecurity "{found.enforce}": {refused}',
                details={"name": obj["metadata"]["name"], "kind": "pods"},
            )
    warned = evaluate(found.warn, meta, spec, server)
    return [f'would violate PodSecurity "{found.warn}": {warned}'] if warned else []
