"""Load and validate the configuration: a YAML file (the chart's ConfigMap) or the environment
variables of akanieski/ado-agent-orchestrator. Every mistake becomes one `ConfigError` that names
the key and says how to fix it. Secrets are read here, from files or the environment, never from
the configuration file itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml

from reconciler import capabilities, container_groups, logs, render
from reconciler.errors import ConfigError
from reconciler.model import (
    AciConfig,
    Capabilities,
    Config,
    LoopConfig,
    PodPolicy,
    PoolConfig,
    RegistryCredential,
    StandbyLearning,
    StandbyWindow,
    TemplateConfig,
    frozen_map,
)

log = logging.getLogger("reconciler.config")

DEFAULT_PAT_ENV = "AZP_TOKEN"
ORCHESTRATOR_ENV = (
    "ORG_URL",
    "ORG_PAT",
    "AGENT_POOLS",
    "JOB_IMAGE",
    "JOB_NAMESPACE",
    "JOB_PREFIX",
    "JOB_DEFINITION_FILE",
    "RUN_ONCE",
    "POLLING_DELAY",
    "JOB_DOCKER_SOCKET_PATH",
    "MINIMUM_AGENT_COUNT",
    "MINIMUM_IDLE_AGENT_COUNT",
    "HOST_TYPE",
    "JOB_OS",
    "AZ_SUBSCRIPTION_ID",
    "AZ_RESOURCE_GROUP",
    "AZ_TENANT_ID",
    "AZ_REGION",
    "AZ_ENVIRONMENT",
)
# HOST_TYPE values of microsoft/azure-pipelines-orchestrator (src/Program.cs) and the AZ_ENVIRONMENT names its
# Fluent SDK accepts (AzureEnvironment.FromName), with each cloud's Entra authority and ARM endpoint.
_ACI_HOST_TYPES = ("aci", "azurecontainerinstance", "azurecontainerinstances")
_AZURE_CLOUDS = {
    "azureglobalcloud": None,
    "azurepubliccloud": None,
    "azurechinacloud": ("https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn"),
    "azureusgovernment": ("https://login.microsoftonline.us", "https://management.usgovcloudapi.net"),
}


AUTH_METHODS = ("pat", "workloadIdentity", "managedIdentity", "servicePrincipal")
METHOD_KEYS = {
    "pat": ("patFile", "patEnv"),
    "workloadIdentity": ("tenantId", "clientId", "tokenFile", "authorityHost"),
    "managedIdentity": ("clientId",),
    "servicePrincipal": (
        "tenantId",
        "clientId",
        "clientSecretFile",
        "clientSecretEnv",
        "certificateFile",
        "authorityHost",
    ),
}
"""The auth keys each method reads; any other one is a mistake worth naming (e.g. a secret left behind)."""
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"


@dataclass(frozen=True)
class Credentials:
    """What the reconciler authenticates with: a PAT, or a Microsoft Entra ID identity (`method`) with the
    settings azure-identity needs. `repr` never shows a secret (the PAT or the client secret)."""

    method: str
    source: str
    pat: str = ""
    tenant_id: str = ""
    client_id: str = ""
    client_secret: str = ""
    certificate_file: str = ""
    token_file: str = ""
    authority_host: str = DEFAULT_AUTHORITY_HOST

    def __repr__(self) -> str:
        shown = {"method": self.method, "source": self.source, "tenant_id": self.tenant_id, "client_id": self.client_id}
        masked = {"pat": self.pat, "client_secret": self.client_secret}
        fields = [f"{k}={v!r}" for k, v in shown.items() if v] + [f"{k}=***" for k, v in masked.items() if v]
        return f"Credentials({', '.join(fields)})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values to mask in every log line."""
        return tuple(s for s in (self.pat, self.client_secret) if s)


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, shipped inside the package."""
    text = (Path(__file__).parent / "config.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _key_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe_schema_error(error: jsonschema.ValidationError) -> str:
    where = _key_path(error.absolute_path)
    validator = error.validator
    rule: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    if validator == "additionalProperties":
        allowed = sorted(rule.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        unknown = ", ".join(repr(k) for k in extra)
        return f"{where}: unknown key {unknown}: check its spelling (allowed keys: {', '.join(allowed)})"
    if validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        key = f"{where}.{missing[0]}" if missing and where != "(top level)" else (missing[0] if missing else where)
        return f"{key}: is required but missing: add it"
    if validator == "type":
        return f"{where}: expected {error.validator_value}, got {json.dumps(error.instance)[:60]}"
    if validator in ("minimum", "exclusiveMinimum", "maximum"):
        return f"{where}: {error.instance} is out of range ({validator} {error.validator_value})"
    if validator == "enum":
        return f"{where}: {error.instance!r} is not one of {error.validator_value}"
    if validator == "pattern":
        hint = rule.get("description", "")
        return f"{where}: {error.instance!r} is not valid{': ' + hint if hint else ''}"
    if validator == "oneOf" and where.startswith("pools["):
        return f"{where}: give either jobTemplate (one template) or templates (several), not both and not neither"
    if validator in ("minItems", "minLength"):
        return f"{where}: must not be empty"
    return f"{where}: {error.message}"


def _check_organization(url: str, *, allow_http: bool, source: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(
            f"{source}: organization: {url!r} uses http://: use https://, or set allowInsecureHttp: true "
            "for an Azure DevOps Server on a trusted network"
        )
    segments = [s for s in parts.path.split("/") if s]
    if any(s.startswith("_") for s in segments) or (parts.hostname == "dev.azure.com" and len(segments) != 1):
        raise ConfigError(
            f"{source}: organization: {url!r} points inside a project or is not an organization URL: "
            "use https://dev.azure.com/ORG (or your Azure DevOps Server collection URL)"
        )
    return url.rstrip("/")


def validate_document(document: Any, *, source: str = "config") -> None:
    """Validate a parsed configuration document against the schema and the rules it cannot express.

    Raises ConfigError naming the first bad key. Job template files are not read here.
    """
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: (list(e.absolute_path), e.validator))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"{source}: {_describe_schema_error(best or errors[0])}")
    _check_organization(document["organization"], allow_http=bool(document.get("allowInsecureHttp")), source=source)
    names = [p["name"] for p in document["pools"]]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise ConfigError(f"{source}: pools[{index}].name: pool {name!r} is listed twice: merge the entries")
        templates = [t["name"] for t in document["pools"][index].get("templates", [])]
        for t_index, t_name in enumerate(templates):
            if templates.index(t_name) != t_index:
                raise ConfigError(
                    f"{source}: pools[{index}].templates[{t_index}].name: template {t_name!r} is listed twice"
                )
    shard = document.get("shard")
    if shard and shard["index"] >= shard["count"]:
        raise ConfigError(f"{source}: shard.index: {shard['index']} must be below shard.count ({shard['count']})")


def _templates_of(pool: Mapping[str, Any], *, base_dir: Path) -> list[dict[str, Any]]:
    if "templates" in pool:
        templates = [dict(t) for t in pool["templates"]]
    else:
        templates = [{"name": "default", "jobTemplate": pool["jobTemplate"]}]
        if "capabilities" in pool:
            templates[0]["capabilities"] = pool["capabilities"]
    for template in templates:
        if "arch" in pool:
            template.setdefault("arch", pool["arch"])
        path = Path(template["jobTemplate"])
        template["jobTemplate"] = str(path if path.is_absolute() else base_dir / path)
    return templates


_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _standby(document: Sequence[Mapping[str, Any]], *, key: str, source: str) -> tuple[StandbyWindow, ...]:
    """The windows of a `standby` list (already schema-valid in shape); a ConfigError names the bad key."""
    return tuple(_standby_window(entry, key=f"{key}[{index}]", source=source) for index, entry in enumerate(document))


def _standby_window(entry: Mapping[str, Any], *, key: str, source: str) -> StandbyWindow:
    start = _clock_minutes(entry["from"], key=f"{key}.from", source=source)
    if start == 24 * 60:
        raise ConfigError(f"{source}: {key}.from: a window cannot start at 24:00: write 00:00 and the next day")
    end = _clock_minutes(entry["to"], key=f"{key}.to", source=source)
    if start == end:
        raise ConfigError(f"{source}: {key}: from and to are both {entry['from']!r}: a window needs a length")
    return StandbyWindow(
        days=_standby_days(entry.get("days", list(_DAYS)), key=f"{key}.days", source=source),
        start=start,
        end=end,
        zone=_time_zone(entry.get("timeZone", "UTC"), key=f"{key}.timeZone", source=source),
        min_idle=int(entry["minIdle"]),
    )


def _standby_learn(entry: Mapping[str, Any], *, key: str, source: str) -> StandbyLearning | None:
    """A template's history-based warm-up (schema-valid in shape), None unless enabled."""
    if not entry.get("enabled", False):
        return None
    return StandbyLearning(
        zone=_time_zone(entry.get("timeZone", "UTC"), key=f"{key}.timeZone", source=source),
        fraction=float(entry.get("fraction", 0.5)),
        lead=int(entry.get("leadMinutes", 10)),
        most=entry.get("max"),
    )


def _clock_minutes(text: str, *, key: str, source: str) -> int:
    if not _CLOCK.match(str(text)):
        raise ConfigError(f"{source}: {key}: {text!r} is not a time of day: write HH:MM, 00:00 to 24:00")
    hours, minutes = str(text).split(":")
    return int(hours) * 60 + int(minutes)


def _standby_days(items: Sequence[str], *, key: str, source: str) -> frozenset[int]:
    """Day names and ranges (`Mon-Fri`, `Sat-Mon` wraps) as weekday numbers, Monday 0."""
    days: set[int] = set()
    for item in items:
        ends = str(item).split("-")
        if len(ends) > 2 or any(e not in _DAYS for e in ends):
            raise ConfigError(
                f"{source}: {key}: {item!r} is not a day or a range of days: use {', '.join(_DAYS)} or e.g. Mon-Fri"
            )
        first, last = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        days.update((first + step) % 7 for step in range((last - first) % 7 + 1))
    return frozenset(days)


def _time_zone(name: str, *, key: str, source: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ConfigError(
            f"{source}: {key}: {name!r} is not a known IANA time zone (e.g. Europe/Paris, America/New_York, UTC)"
        ) from error


def _check_job_template(
    template: Mapping[str, Any],
    *,
    key: str,
    source: str,
    policy: PodPolicy,
    allow_once: bool,
    declared: Mapping[str, str],
) -> tuple[tuple[int, int], Capabilities]:
    """Check a Kubernetes job template; its resource cost and the capabilities its agent will advertise."""
    job = render.load_template(Path(template["jobTemplate"]), key=key, source=source)
    render.check_policy(job, policy=policy, key=key, source=source)
    for note in render.check_agent_containers(
        job, declared=declared, allow_token_in_agent_container=allow_once, where=f"{source}: {key}"
    ):
        log.warning("%s", note)
    runner = render.agent_containers(job, where=f"{source}: {key}").runner
    pod_spec = render.select_arch(job["spec"]["template"]["spec"], template.get("arch"), where=f"{source}: {key}")
    known = capabilities.defaults(pod_spec=pod_spec, container=runner, declared=declared)
    for name, value in capabilities.overridden(declared, known).items():
        log.warning(
            "%s: capability %s is declared as %r, but the agent of image %s advertises %s=%r (a tool "
            "it finds, or Agent.*): jobs demanding the declared value will not match; declare it as "
            "it is advertised",
            f"{source}: {key}",
            name,
            declared[name],
            runner.get("image"),
            name,
            value,
        )
    return render.resource_cost(job), known


def _check_group_template(path: Path, *, key: str, source: str, allow_once: bool) -> None:
    """Check an ACI container group template (backend: aci)."""
    group = container_groups.load_template(path, key=key, source=source)
    where = f"{source}: {key}"
    if container_groups.registers_where_steps_run(group, where=where) and not allow_once:
        raise ConfigError(
            f"{where}: container {container_groups.AGENT_CONTAINER!r} both registers and runs the agent, so "
            "pipeline steps could read the PAT: add an init container named 'register' of the same image "
            "(command [/azp/start.sh, register], the agent container [/azp/start.sh, run], an emptyDir for "
            "/azp/state), or accept the risk with allowTokenInAgentContainer: true"
        )


def _instances(template: Mapping[str, Any], *, key: str, source: str, aci: bool) -> int | None:
    """A template's `instances` (named container groups that restart after each job): backend aci only, and
    not with the per-job sizing keys, which it replaces."""
    instances = template.get("instances")
    if instances is None:
        return None
    if not aci:
        raise ConfigError(
            f"{source}: {key}.instances: named instances that restart after each job need backend: aci (a "
            "Kubernetes Job does not restart after it succeeds): remove it, or keep agents with minIdle/minAgents"
        )
    clashing = [k for k in ("minIdle", "minAgents", "standby", "standbyLearn") if k in template]
    if clashing:
        raise ConfigError(
            f"{source}: {key}: instances keeps exactly {instances} agents, so {', '.join(clashing)} cannot apply: "
            "remove them"
        )
    return int(instances)


def _registry(raw: Mapping[str, Any], *, key: str) -> RegistryCredential:
    """One private registry: a managed identity, or a user name and where its password is (one place)."""
    password_places = [k for k in ("passwordFile", "passwordEnv") if raw.get(k)]
    if raw.get("username") and len(password_places) != 1:
        raise ConfigError(
            f"{key}: username {raw['username']!r} needs its password in passwordFile or passwordEnv (one)"
        )
    if password_places and not raw.get("username"):
        raise ConfigError(f"{key}: {password_places[0]} needs the registry's username beside it")
    if not raw.get("identity") and not raw.get("username"):
        raise ConfigError(
            f"{key}: registry {raw['server']!r} needs identity (a managed identity with AcrPull) or username "
            "with passwordFile or passwordEnv"
        )
    return RegistryCredential(
        server=raw["server"],
        identity=raw.get("identity"),
        username=raw.get("username"),
        password_file=raw.get("passwordFile"),
        password_env=raw.get("passwordEnv"),
    )


def _check_instances_fit(templates: Sequence[TemplateConfig], *, max_agents: int | None, key: str, source: str) -> None:
    """A pool's named instances count against its maxAgents (and a template's against its own) like any agent,
    and plan() keeps the set whole: they must fit. `max_agents`: the pool's, None when unset (the default 10)."""
    counts = [(f"{key}.templates[{i}].instances", t.instances) for i, t in enumerate(templates) if t.instances]
    for index, template in enumerate(templates):
        if template.instances and template.max_agents is not None and template.instances > template.max_agents:
            raise ConfigError(
                f"{source}: {key}.templates[{index}].instances is {template.instances} but "
                f"{key}.templates[{index}].maxAgents is {template.max_agents}: lower instances to at most "
                f"{template.max_agents}, or raise maxAgents"
            )
    total = sum(count for _, count in counts)
    limit = 10 if max_agents is None else max_agents
    if total > limit:
        named = counts[0][0] if len(counts) == 1 else " + ".join(f"{k} ({n})" for k, n in counts)
        where = f"{key}.maxAgents is {limit}" + (" (unset: the default)" if max_agents is None else "")
        raise ConfigError(
            f"{source}: {named} is {total} but {where}: raise {key}.maxAgents to at least {total}, or lower instances"
        )


def _aci_config(document: Mapping[str, Any], *, source: str) -> AciConfig | None:
    """The `aci` settings when `backend: aci`; a ConfigError naming the key when they are missing."""
    if document.get("backend", "kubernetes") != "aci":
        return None
    raw = document.get("aci")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: backend is aci but the aci settings are missing: set aci.subscriptionId, "
            "aci.resourceGroup and aci.location"
        )
    return AciConfig(
        subscription_id=raw["subscriptionId"],
        resource_group=raw["resourceGroup"],
        location=raw["location"],
        credential=raw.get("credential", "default"),
        tenant_id=raw.get("tenantId"),
        client_id=raw.get("clientId"),
        client_secret_file=raw.get("clientSecretFile"),
        authority_host=raw.get("authorityHost"),
        arm_endpoint=raw.get("armEndpoint", "https://management.azure.com"),
        identity=raw.get("identity"),
        registries=tuple(
            _registry(r, key=f"{source}: aci.registries[{index}]") for index, r in enumerate(raw.get("registries", []))
        ),
        subnet_ids=tuple(raw.get("subnetIds", [])),
    )


def build_config(document: Mapping[str, Any], *, source: str, base_dir: Path, check_templates: bool = True) -> Config:
    """Turn a validated document into the effective Config; job templates are loaded and checked."""
    validate_document(document, source=source)
    policy_doc = document.get("podPolicy", {})
    policy = PodPolicy(
        allow_privileged=policy_doc.get("allowPrivileged", False),
        allow_host_network=policy_doc.get("allowHostNetwork", False),
        allow_host_path=policy_doc.get("allowHostPath", False),
        allow_service_account_token=policy_doc.get("allowServiceAccountToken", False),
    )
    namespace = document.get("namespace", "azp-agents")
    aci = _aci_config(document, source=source)
    allow_once = bool(document.get("allowTokenInAgentContainer", False))
    # An agent registered by the reconciler gets no PAT, so one container may both set it up and run it.
    single_ok = allow_once or agent_registration(document) == "reconciler"
    pools: list[PoolConfig] = []
    for index, pool in enumerate(document["pools"]):
        templates: list[TemplateConfig] = []
        for t_index, template in enumerate(_templates_of(pool, base_dir=base_dir)):
            key = (
                f"pools[{index}].templates[{t_index}].jobTemplate"
                if "templates" in pool
                else f"pools[{index}].jobTemplate"
            )
            declared = template.get("capabilities", {})
            cost, known = (0, 0), frozen_map()
            if check_templates and aci is not None:
                _check_group_template(Path(template["jobTemplate"]), key=key, source=source, allow_once=allow_once)
            elif check_templates:
                cost, known = _check_job_template(
                    template, key=key, source=source, policy=policy, allow_once=single_ok, declared=declared
                )
            templates.append(
                TemplateConfig(
                    name=template["name"],
                    job_template=template["jobTemplate"],
                    capabilities=frozen_map(declared),
                    known_capabilities=known,
                    match_any="capabilities" not in template,
                    priority=template.get("priority", 0),
                    max_agents=template.get("maxAgents"),
                    min_idle=template.get("minIdle", 0),
                    standby=_standby(
                        template.get("standby", []), key=f"pools[{index}].templates[{t_index}].standby", source=source
                    ),
                    learn=_standby_learn(
                        template.get("standbyLearn", {}),
                        key=f"pools[{index}].templates[{t_index}].standbyLearn",
                        source=source,
                    ),
                    arch=template.get("arch"),
                    min_agents=template.get("minAgents", 0),
                    instances=_instances(
                        template, key=f"pools[{index}].templates[{t_index}]", source=source, aci=aci is not None
                    ),
                    placeholder=template.get("placeholder", True),
                    cost=cost,
                )
            )
        _check_instances_fit(templates, max_agents=pool.get("maxAgents"), key=f"pools[{index}]", source=source)
        pools.append(
            PoolConfig(
                name=pool["name"],
                # On ACI the pool's groups live in the resource group: it is their namespace.
                namespace=aci.resource_group if aci is not None else pool.get("namespace", namespace),
                templates=tuple(templates),
                max_agents=pool.get("maxAgents", 10),
                min_idle=pool.get("minIdle", 0),
                standby=_standby(pool.get("standby", []), key=f"pools[{index}].standby", source=source),
                min_agents=pool.get("minAgents", 0),
                provisioning_timeout=pool.get("provisioningTimeout", 600),
                idle_timeout=pool.get("idleTimeout", 300),
            )
        )
    release = document.get("release", "azp-agents")
    lease = document.get("lease", {})
    loop = document.get("loop", {})
    shard = document.get("shard", {"index": 0, "count": 1})
    agent_secret = document.get("agentSecret", {})
    client = document.get("azureDevOps", {})
    return Config(
        organization=str(document["organization"]).rstrip("/"),
        pools=tuple(pools),
        release=release,
        namespace=namespace,
        job_name_prefix=document.get("jobNamePrefix", "azp"),
        agent_secret_name=agent_secret.get("name", f"{release}-pat"),
        agent_secret_key=agent_secret.get("key", "pat"),
        ttl_seconds_after_finished=document.get("ttlSecondsAfterFinished", 300),
        lease_enabled=lease.get("enabled", True),
        lease_namespace=lease.get("namespace", namespace),
        lease_duration=lease.get("durationSeconds", 60),
        shard_index=shard["index"],
        shard_count=shard["count"],
        shard_takeover_after=shard.get("takeoverAfterSeconds", 300),
        loop=LoopConfig(
            loop_for=loop.get("loopFor", 0),
            interval=loop.get("interval", 10),
            idle_interval=loop.get("idleInterval", 30),
        ),
        max_create_per_pass=document.get("maxCreatePerPass", 200),
        pod_policy=policy,
        agent_version=document.get("agentVersion", "4.269.0"),
        sweep_interval=document.get("sweepInterval", 300),
        events=document.get("events", True),
        log_format=document.get("logFormat", "text"),
        log_level=document.get("logLevel", "info"),
        azdo_timeout=client.get("timeoutSeconds", 30),
        azdo_retries=client.get("retries", 4),
        azdo_api_version=client.get("apiVersion", "auto"),
        allow_token_in_agent_container=allow_once,
        agent_registration=agent_registration(document),
        backend="aci" if aci is not None else "kubernetes",
        aci=aci,
        source=source,
    )


def agent_registration(document: Mapping[str, Any]) -> str:
    """agents.registration: as set, else `reconciler` when the reconciler holds no PAT (auth.method is not pat).
    Container groups (backend aci) register themselves: their agents get the PAT only in a secure volume or
    variable that start.sh/start.ps1 remove before steps run."""
    method = document.get("auth", {}).get("method", "pat")
    chosen = document.get("agents", {}).get("registration")
    if document.get("backend") == "aci":
        if chosen == "reconciler":
            raise ConfigError(
                "agents.registration: reconciler is not supported with backend aci yet: set it to token (container "
                "groups register their agent with the PAT, which start.sh removes before steps run)"
            )
        return "token"
    return str(chosen or ("token" if method == "pat" else "reconciler"))


def load_file(path: Path, *, check_templates: bool = True) -> tuple[Config, dict[str, Any]]:
    """Read, parse and validate a configuration file. Returns the Config and the raw document."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: configuration file not found: check --config") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the configuration file: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: fix the syntax") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (organization, pools, ...) at the top level")
    config = build_config(document, source=source, base_dir=path.parent, check_templates=check_templates)
    return config, document


def _env_int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment: {name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"environment: {name}={raw!r} must be {minimum} or more")
    return value


def _sanitize_prefix(raw: str) -> str:
    prefix = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:12].strip("-")
    if not prefix or not prefix[0].isalpha():
        raise ConfigError(
            f"environment: JOB_PREFIX={raw!r} must start with a letter and contain letters, digits or '-'"
        )
    return prefix


def document_from_orchestrator_env(env: Mapping[str, str], *, work_dir: Path) -> dict[str, Any]:
    """Translate ado-agent-orchestrator's environment variables into a configuration document.

    Without JOB_DEFINITION_FILE a single-container job template is written into `work_dir` from
    JOB_IMAGE, the way the orchestrator builds its Jobs.
    """
    url = env.get("ORG_URL", "").strip()
    if not url:
        raise ConfigError("environment: ORG_URL is required (e.g. https://dev.azure.com/contoso)")
    pools = [p.strip() for p in env.get("AGENT_POOLS", "").split(",") if p.strip()]
    if not pools:
        raise ConfigError("environment: AGENT_POOLS is required: a comma-separated list of agent pool names")
    namespace = env.get("JOB_NAMESPACE", "").strip() or "azp-agents"
    template_path = env.get("JOB_DEFINITION_FILE", "").strip()
    socket = env.get("JOB_DOCKER_SOCKET_PATH", "").strip() or None
    # Not one of the orchestrator's variables: its single-container Jobs expose the PAT to steps, so
    # that shape is ours only on request.
    allow_once = env.get("ALLOW_TOKEN_IN_AGENT_CONTAINER", "").strip().lower() in ("1", "true", "yes")
    aci = _orchestrator_aci(env)
    if not template_path:
        image = env.get("JOB_IMAGE", "").strip()
        if not image:
            raise ConfigError(
                "environment: set JOB_IMAGE (the agent image) or JOB_DEFINITION_FILE (a job.yaml to render)"
            )
        work_dir.mkdir(parents=True, exist_ok=True)
        generated = work_dir / "orchestrator-job.yaml"
        windows = env.get("JOB_OS", "linux").strip().lower() == "windows"
        template = (
            container_groups.image_template(image=image, windows=windows)
            if aci is not None
            else render.image_template(image=image, once=allow_once, docker_socket=socket)
        )
        generated.write_text(yaml.safe_dump(template))
        template_path = str(generated)
    document: dict[str, Any] = {
        "organization": url,
        "allowInsecureHttp": url.startswith("http://"),
        "namespace": namespace,
        "jobNamePrefix": _sanitize_prefix(env.get("JOB_PREFIX", "").strip() or "azp"),
        "auth": {"patEnv": "ORG_PAT"},
        "agentSecret": {"name": env.get("AZP_SECRET_NAME", "azp-agents-pat"), "key": "pat"},
        "lease": {"namespace": namespace},
        "allowTokenInAgentContainer": allow_once,
        "pools": [],
    }
    if aci is not None:
        # The orchestrator on ACI needs no cluster: a Lease only where a Kubernetes API server is at hand.
        in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
        document |= {"backend": "aci", "aci": aci, "lease": {**document["lease"], "enabled": in_cluster}}
    if socket:
        document["podPolicy"] = {"allowHostPath": True}
    run_once = env.get("RUN_ONCE", "").strip().lower() in ("1", "true", "yes")
    delay_ms = _env_int(env, "POLLING_DELAY", minimum=1)
    interval = (delay_ms or 1000) / 1000.0
    if not run_once:
        # The orchestrator runs forever; a CronJob run loops for most of a minute instead.
        document["loop"] = {"loopFor": 55, "interval": interval, "idleInterval": max(interval, 10.0)}
    min_agents = _env_int(env, "MINIMUM_AGENT_COUNT") or 0
    min_idle = _env_int(env, "MINIMUM_IDLE_AGENT_COUNT") or 0
    for name in pools:
        document["pools"].append(
            {"name": name, "jobTemplate": template_path, "minAgents": min_agents, "minIdle": min_idle}
        )
    return document


def _orchestrator_aci(env: Mapping[str, str]) -> dict[str, Any] | None:
    """`backend: aci` settings from the orchestrator's HOST_TYPE and AZ_* variables; None for Kubernetes."""
    host_type = env.get("HOST_TYPE", "").strip().lower() or "kubernetes"
    if host_type in ("kubernetes", "k8s"):
        return None
    if host_type not in _ACI_HOST_TYPES:
        raise ConfigError(f"environment: HOST_TYPE={host_type!r} is not valid: use kubernetes or aci")
    wanted = {"AZ_SUBSCRIPTION_ID": "subscriptionId", "AZ_RESOURCE_GROUP": "resourceGroup", "AZ_REGION": "location"}
    missing = [name for name in (*wanted, "AZ_TENANT_ID") if not env.get(name, "").strip()]
    if missing:
        raise ConfigError(f"environment: HOST_TYPE={host_type} needs {', '.join(missing)}")
    cloud_name = env.get("AZ_ENVIRONMENT", "").strip() or "AzureGlobalCloud"
    if cloud_name.lower() not in _AZURE_CLOUDS:
        raise ConfigError(f"environment: AZ_ENVIRONMENT={cloud_name!r} is not one of {', '.join(_AZURE_CLOUDS)}")
    aci: dict[str, Any] = {key: env[name].strip() for name, key in wanted.items()}
    # The orchestrator authenticates with DefaultAzureCredential in AZ_TENANT_ID, as this does.
    aci |= {"credential": "default", "tenantId": env["AZ_TENANT_ID"].strip()}
    cloud = _AZURE_CLOUDS[cloud_name.lower()]
    if cloud is not None:
        aci |= {"authorityHost": cloud[0], "armEndpoint": cloud[1]}
    return aci


def load(
    config_path: Path | None, *, env: Mapping[str, str] | None = None, work_dir: Path | None = None
) -> tuple[Config, dict[str, Any]]:
    """Load the configuration from a file, or from the orchestrator's environment variables."""
    env = os.environ if env is None else env
    if config_path is not None:
        return load_file(config_path)
    if env.get("AZP_CONFIG"):
        return load_file(Path(env["AZP_CONFIG"]))
    if env.get("ORG_URL"):
        scratch = work_dir or Path(env.get("TMPDIR", "/tmp")) / "azp-reconciler"
        document = document_from_orchestrator_env(env, work_dir=scratch)
        return build_config(document, source="environment", base_dir=scratch), document
    raise ConfigError(
        "no configuration: pass --config FILE (or set AZP_CONFIG), or set the ado-agent-orchestrator "
        "variables ORG_URL, ORG_PAT and AGENT_POOLS"
    )


def read_credentials(document: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Credentials:
    """The credentials `auth` names: the PAT read from its file or variable, or an Entra ID identity's settings
    (with the environment variables AKS workload identity and azure-identity use as defaults). Their secrets
    are masked in every log line from here on."""
    credentials = _read_credentials(document, os.environ if env is None else env)
    for secret in credentials.secrets:
        logs.SECRETS.add(secret)
    return credentials


def _read_credentials(document: Mapping[str, Any], env: Mapping[str, str]) -> Credentials:
    auth = document.get("auth", {})
    method = auth.get("method", "pat")
    unused = sorted(set(auth) - {"method", *METHOD_KEYS[method]})
    if unused:
        key = unused[0]
        raise ConfigError(
            f"auth.{key}: not used with auth.method {method}: remove it, or set auth.method to "
            + " or ".join(m for m in AUTH_METHODS if key in METHOD_KEYS[m])
        )
    if method == "pat":
        pat, source = _read_pat(auth, env)
        return Credentials(method="pat", source=source, pat=pat)
    if method == "managedIdentity":
        client_id = auth.get("clientId", env.get("AZURE_CLIENT_ID", "")).strip()
        kind = "user-assigned" if client_id else "system-assigned"
        return Credentials(method=method, source=kind, client_id=client_id)
    tenant_id = _entra_setting(auth, env, key="tenantId", variable="AZURE_TENANT_ID", method=method)
    client_id = _entra_setting(auth, env, key="clientId", variable="AZURE_CLIENT_ID", method=method)
    authority = auth.get("authorityHost") or env.get("AZURE_AUTHORITY_HOST", "").strip() or DEFAULT_AUTHORITY_HOST
    if not authority.startswith("https://"):
        raise ConfigError(
            f"auth.authorityHost: {authority!r} (from AZURE_AUTHORITY_HOST) is not https://: Entra ID is only "
            "reached over https, e.g. https://login.microsoftonline.com"
        )
    common = {"tenant_id": tenant_id, "client_id": client_id, "authority_host": authority.rstrip("/")}
    if method == "workloadIdentity":
        token_file = _entra_setting(auth, env, key="tokenFile", variable="AZURE_FEDERATED_TOKEN_FILE", method=method)
        _readable(token_file, key="auth.tokenFile", what="the federated service account token")
        return Credentials(method=method, source=f"token file {token_file}", token_file=token_file, **common)
    return _service_principal(auth, env, common)


def _service_principal(auth: Mapping[str, Any], env: Mapping[str, str], common: Mapping[str, str]) -> Credentials:
    given = [k for k in ("clientSecretFile", "clientSecretEnv", "certificateFile") if k in auth]
    if len(given) != 1:
        raise ConfigError(
            f"auth.{given[-1] if given else 'clientSecretFile'}: a service principal needs exactly one of "
            f"auth.clientSecretFile, auth.clientSecretEnv or auth.certificateFile (given: {', '.join(given) or 'none'})"
        )
    if "certificateFile" in auth:
        path = str(auth["certificateFile"])
        _readable(path, key="auth.certificateFile", what="a PEM file with the certificate and its private key")
        return Credentials(method="servicePrincipal", source=f"certificate {path}", certificate_file=path, **common)
    if "clientSecretFile" in auth:
        path = str(auth["clientSecretFile"])
        secret = _readable(path, key="auth.clientSecretFile", what="the client secret").strip()
        key, source = "auth.clientSecretFile", f"client secret from file {path}"
    else:
        name = auth["clientSecretEnv"]
        secret = env.get(name, "").strip()
        key, source = f"auth.clientSecretEnv ({name})", f"client secret from ${name}"
    if not secret:
        raise ConfigError(
            f"{key}: the client secret is empty: put the secret of app registration {common['client_id']} there"
        )
    return Credentials(method="servicePrincipal", source=source, client_secret=secret, **common)


def _entra_setting(auth: Mapping[str, Any], env: Mapping[str, str], *, key: str, variable: str, method: str) -> str:
    value = str(auth.get(key) or env.get(variable, "")).strip()
    if not value:
        hint = ' (the AKS workload identity webhook sets it in pods labelled azure.workload.identity/use: "true")'
        raise ConfigError(
            f"auth.{key}: auth.method {method} needs it: set auth.{key} or ${variable}"
            + (hint if method == "workloadIdentity" else "")
        )
    return value


def _readable(path: str, *, key: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        raise ConfigError(f"{key}: cannot read {path!r}: mount {what} there or fix {key}") from None


def _read_pat(auth: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, str]:
    """The PAT from the file or environment variable `auth` names, and where it came from."""
    if "patFile" in auth:
        path = Path(auth["patFile"])
        try:
            pat = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise ConfigError(
                f"auth.patFile: cannot read {str(path)!r}: mount the PAT Secret there or fix auth.patFile"
            ) from None
        source = f"file {path}"
        key = "auth.patFile"
        where = "put a personal access token with Agent Pools (read & manage) there"
    else:
        name = auth.get("patEnv", DEFAULT_PAT_ENV)
        pat = env.get(name, "").strip()
        source = f"environment variable {name}"
        key = f"auth.patEnv ({name})"
        where = f"set ${name} to a personal access token with Agent Pools (read & manage)"
    if not pat:
        raise ConfigError(f"{key}: the PAT is empty: {where}")
    if any(c.isspace() for c in pat):
        raise ConfigError(f"{key}: the PAT contains whitespace inside it: copy the token again")
    return pat, source


def effective_summary(config: Config) -> dict[str, Any]:
    """The effective configuration for the startup log line (no secrets are part of Config)."""
    return {
        "organization": config.organization,
        "release": config.release,
        "pools": [
            {
                "name": p.name,
                "namespace": p.namespace,
                "maxAgents": p.max_agents,
                "templates": [t.name for t in p.templates],
            }
            for p in config.pools
        ],
        "shard": f"{config.shard_index}/{config.shard_count}",
        "loopFor": config.loop.loop_for,
        "source": config.source,
    }
