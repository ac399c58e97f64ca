"""`azp-reconciler check`: verify credentials, pools, Kubernetes permissions and job templates.

Prints one row per finding and exits 0 when everything passed, 1 otherwise. The chart's
`helm test` hook runs it, so a broken install shows up at once. Rights are checked as they will be
used: one row per pool says whether the credential may manage it (a read-only PAT, or an identity
without the pool's Administrator role, fails), one row per permission in each namespace comes from the
API server's SelfSubjectAccessReview, and each template's Job is created in a server-side dry run with
fieldValidation=Strict, so a mistyped field is named before a pass drops it. On ACI (backend aci) a row says
whether the Azure identity signs in and lists the resource group's container groups, and with a Lease the
Lease's permissions are asked for as on Kubernetes (no agent namespaces there).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from reconciler import capabilities, identity, logs, names, render
from reconciler import config as config_module
from reconciler.errors import ConfigError, ForbiddenError, ReconcilerError
from reconciler.model import Agent, Config, PoolConfig

if TYPE_CHECKING:
    from reconciler.azdo import AzureDevOps
    from reconciler.kube import Kubernetes


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str


Permission = tuple[str, str, str, str, str | None]
"""(verb, group, resource, namespace, the one object's name or None for any)."""


def required_permissions(config: Config) -> list[Permission]:
    """Every Kubernetes permission the reconciler uses (rbac.json) with this configuration: on ACI only the
    Lease's (and the standby history's), as its agents are container groups in a resource group."""
    rules = json.loads((Path(__file__).parent / "rbac.json").read_text(encoding="utf-8"))
    wanted: list[Permission] = []
    for namespace in config.namespaces if config.backend == "kubernetes" else ():
        wanted += _permissions(rules["agentNamespace"], namespace, release=config.release)
    if config.lease_enabled:
        wanted += _permissions(rules["leaseNamespace"], config.lease_namespace, release=config.release)
    if any(t.learn is not None for p in config.pools for t in p.templates):
        wanted += _permissions(rules["standbyHistory"], config.lease_namespace, release=config.release)
    return wanted


def _permissions(rules: list[dict[str, Any]], namespace: str, *, release: str) -> list[Permission]:
    """The rules' permissions in a namespace; a rule limited to resourceNames gives one per name."""
    return [
        (v, g, r, namespace, name.replace("{release}", release) if name else None)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
        for name in rule.get("resourceNames") or [None]
    ]


def _template_findings(config: Config) -> tuple[list[Finding], list[tuple[str, dict[str, Any]]]]:
    """A finding per template, and the Jobs that rendered (with their label) for the server's dry run."""
    findings = []
    jobs = []
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
    for pool in config.pools:
        for template in pool.templates:
            label = f"template {pool.name}/{template.name}"
            try:
                job_template = render.load_template(Path(template.job_template), key=label, source=config.source)
                job = render.render_job(
                    config=config,
                    pool=pool,
                    template=template,
                    job_template=job_template,
                    job_name=names.request_job_name(config.owner, pool_name=pool.name, request_id=1),
                    request_id=1,
                )
            except ReconcilerError as exc:
                findings.append(Finding(label, False, str(exc)))
                continue
            detail = "renders a valid batch/v1 Job"
            if kubernetes_validate is not None:
                try:
                    kubernetes_validate.validate(job, "1.30.0", strict=True)
                except kubernetes_validate.ValidationError as exc:
                    findings.append(Finding(label, False, f"rendered Job is invalid: {exc.message}"))
                    continue
            else:
                detail = "renders (schema check skipped: kubernetes-validate is not installed)"
            findings.append(Finding(label, True, detail))
            jobs.append((label, job))
    return findings, jobs


def _pool_findings(config: Config, azdo: AzureDevOps) -> list[Finding]:
    """One row per pool: it exists, and the credential may manage it (register, disable, delete agents)."""
    found = azdo.pools_by_name([p.name for p in config.pools])
    manageable = azdo.pools_by_name([p.name for p in config.pools], manageable=True)
    findings = []
    for pool in config.pools:
        label = f"pool {pool.name}"
        if pool.name not in found:
            findings.append(Finding(label, False, azdo.missing_pool_message(pool.name)))
        elif pool.name not in manageable:
            findings.append(
                Finding(
                    label,
                    False,
                    f"exists (id {found[pool.name]}) but the credential may not manage it: "
                    f"{azdo.authorization.forbidden_hint}",
                )
            )
        else:
            findings.append(Finding(label, True, f"exists (id {found[pool.name]}), may be managed"))
            findings += capability_findings(pool, azdo.agents(found[pool.name]))
    return findings


def hook_findings(config: Config, azdo: AzureDevOps, *, url: str, projects: list[str]) -> list[Finding]:
    """With the receiver on: the credential may read service hook subscriptions, and each project that uses the
    pools (`projects`, else found from their agent queues) sends its waiting jobs to `url`."""
    from reconciler import receiver

    try:
        subscriptions = azdo.subscriptions()
    except ReconcilerError as exc:
        detail = f"{exc}" if not isinstance(exc, ForbiddenError) else "HTTP 403"
        return [
            Finding(
                "service hooks",
                False,
                f"cannot read the subscriptions ({detail}): give the PAT the Service Hooks (read) scope (vso.hooks)",
            )
        ]
    found = [Finding("service hooks", True, f"{len(subscriptions)} subscriptions readable")]
    if not projects:
        try:
            projects = sorted(receiver.pools_by_project(azdo, azdo.pools_by_name([p.name for p in config.pools])))
        except ReconcilerError as exc:
            reason = "HTTP 403" if isinstance(exc, ForbiddenError) else str(exc)
            return [
                *found,
                Finding(
                    "service hook projects",
                    False,
                    f"cannot list the projects or their agent queues ({reason}): give the PAT the Project and Team "
                    "(read) scope (vso.project), or name the projects with --project",
                ),
            ]
    for project in projects:
        problem = receiver.subscription_problem(subscriptions, project_id=project, url=url)
        found.append(Finding(f"service hook for project {project}", problem is None, problem or f"sends to {url}"))
    if not projects:
        found.append(Finding("service hook projects", False, "no project has an agent queue for any of the pools"))
    return found


def _dry_run_findings(kube: Kubernetes, jobs: list[tuple[str, dict[str, Any]]]) -> list[Finding]:
    """Each rendered Job created by the API server in a dry run, unknown fields refused (Strict)."""
    findings = []
    for label, job in jobs:
        try:
            kube.create_job(job, dry_run=True)
        except ReconcilerError as exc:
            findings.append(Finding(f"{label} (server dry run)", False, str(exc)))
        else:
            findings.append(Finding(f"{label} (server dry run)", True, "accepted with fieldValidation=Strict"))
    return findings


def capability_findings(pool: PoolConfig, agents: Iterable[Agent]) -> list[Finding]:
    """One failed finding per online agent of a template (it advertises AZP_TEMPLATE) that lacks a
    capability its template declares: jobs demanding it would match the placeholder but never this agent."""
    findings = []
    for agent in agents:
        template = pool.template(agent.capabilities.get(capabilities.TEMPLATE_CAPABILITY, ""))
        if template is None or not agent.online:
            continue
        wrong = sorted(k for k, v in template.capabilities.items() if agent.capabilities.get(k) != v)
        if wrong:
            findings.append(
                Finding(
                    f"agent {pool.name}/{agent.name}",
                    False,
                    f"lacks capabilities its template {template.name!r} declares: {', '.join(wrong)}: its agent "
                    "container must set them as environment variables (the reconciler adds them to the one it renders)",
                )
            )
    return findings


def collect(
    config: Config,
    document: dict[str, Any],
    *,
    kubeconfig: str | None,
    hooks_url: str | None = None,
    projects: list[str] | None = None,
) -> list[Finding]:
    """Every finding, in the order a user would fix them; the service hooks' when `hooks_url` is given."""
    from reconciler.azdo import AzureDevOps
    from reconciler.kube import Kubernetes

    findings = [Finding("configuration", True, f"{config.source} is valid ({len(config.pools)} pools)")]
    template_findings, jobs = _template_findings(config) if config.backend == "kubernetes" else ([], [])
    findings += template_findings
    try:
        credentials = config_module.read_credentials(document)
        authorization = identity.authorization(credentials)
    except ReconcilerError as exc:
        return [*findings, Finding("credentials", False, str(exc))]
    findings.append(Finding("identity", True, identity.describe(credentials)))
    azdo = AzureDevOps(
        config.organization,
        authorization=authorization,
        timeout=config.azdo_timeout,
        retries=1,
        api_version=config.azdo_api_version,
    )
    try:
        who = azdo.connection_data().get("authenticatedUser", {})
        findings.append(
            Finding(
                "credentials",
                True,
                f"accepted by {config.organization} as {who.get('providerDisplayName', 'an unnamed identity')}",
            )
        )
        findings += _pool_findings(config, azdo)
        if hooks_url:
            findings += hook_findings(config, azdo, url=hooks_url, projects=list(projects or ()))
    except ConfigError as exc:
        findings.append(Finding("organization", False, str(exc)))
    except ReconcilerError as exc:
        findings.append(Finding("credentials", False, str(exc)))
    finally:
        azdo.close()
    if config.backend == "aci":
        findings += [_aci_finding(config, credentials), *registry_findings(config)]
    if not required_permissions(config):
        return findings  # ACI without a Lease (the reconciler run outside a cluster): no Kubernetes to ask
    try:
        kube = Kubernetes(kubeconfig=kubeconfig, retries=1)
    except ReconcilerError as exc:
        return [*findings, Finding("kubernetes", False, str(exc))]
    try:
        findings += _permission_findings(config, kube)
        findings += _dry_run_findings(kube, jobs)
    finally:
        kube.close()
    return findings


def _permission_findings(config: Config, kube: Kubernetes) -> list[Finding]:
    """One row per permission the reconciler needs, as the API server answers a SelfSubjectAccessReview."""
    findings = []
    for verb, group, resource, namespace, name in required_permissions(config):
        label = f"can {verb} {resource}{'.' + group if group else ''}{' ' + name if name else ''} in {namespace}"
        try:
            allowed, reason = kube.can_i(verb=verb, resource=resource, group=group, namespace=namespace, name=name)
        except ReconcilerError as exc:
            findings.append(Finding(label, False, str(exc)))
            continue
        denied = f"denied{': ' + reason if reason else ''}: grant it in the reconciler's Role"
        findings.append(Finding(label, allowed, "allowed" if allowed else denied))
    return findings


def _aci_finding(config: Config, credentials: config_module.Credentials) -> Finding:
    """backend aci: the identity signs in to Azure and may list the resource group's container groups (its
    container group templates were checked when the configuration loaded)."""
    from reconciler.backend import container_instances

    assert config.aci is not None
    label = f"container groups in {config.aci.resource_group}"
    try:
        aci = container_instances(config, credentials)
        try:
            jobs, _ = aci.list_workloads(config.aci.resource_group, owner=config.owner)
        finally:
            aci.close()
    except ReconcilerError as exc:
        return Finding(label, False, str(exc))
    return Finding(label, True, f"listed ({len(jobs)} of this release)")


def registry_findings(config: Config) -> list[Finding]:
    """backend aci: a row per private registry with a user name, saying whether its password (passwordFile,
    passwordEnv) can be read, as every create reads it; the password itself is never shown."""
    try:
        from reconciler.aci import registry_password
    except ImportError:
        return []  # the container groups row already says which package is missing

    assert config.aci is not None
    findings = []
    for registry in config.aci.registries:
        if registry.username:
            label = f"registry {registry.server} password"
            try:
                registry_password(registry)
            except ReconcilerError as exc:
                findings.append(Finding(label, False, str(exc)))
                continue
            findings.append(Finding(label, True, f"readable (user {registry.username})"))
    return findings


def print_table(findings: list[Finding], stream: TextIO) -> None:
    width = max(len(f.check) for f in findings)
    stream.write(f"{'CHECK'.ljust(width)}  RESULT  DETAIL\n")
    for finding in findings:
        result = "ok" if finding.ok else "FAILED"
        stream.write(f"{finding.check.ljust(width)}  {result.ljust(6)}  {logs.SECRETS.scrub(finding.detail)}\n")


def run_checks(
    config: Config,
    document: dict[str, Any],
    *,
    kubeconfig: str | None,
    hooks_url: str | None = None,
    projects: list[str] | None = None,
) -> int:
    findings = collect(config, document, kubeconfig=kubeconfig, hooks_url=hooks_url, projects=projects)
    print_table(findings, sys.stdout)
    failed = sum(1 for f in findings if not f.ok)
    sys.stdout.write(
        f"checks: {len(findings) - failed} ok, {failed} FAILED\n" if failed else f"checks: all {len(findings)} ok\n"
    )
    return 1 if failed else 0
