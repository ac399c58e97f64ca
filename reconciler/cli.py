"""The `azp-reconciler` command: reconcile, check, render, cleanup, simulate, emulate.

Exit codes: 0 all good, 1 some action or check failed, 2 bad configuration or credentials.
A user's mistake is one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler import __version__, logs
from reconciler.errors import AuthError, ConfigError, ForbiddenError, ReconcilerError

log = logging.getLogger("reconciler")

DEFAULT_DEADLINE_MARGIN = 120.0
"""Without --deadline (nothing kills the run), it may last loopFor plus this long: a slow start, one last pass
and releasing the Lease."""
LEASE_RELEASE_RESERVE = 5.0
"""Seconds of the deadline kept back from every other call, so the Lease can always be released."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="configuration file (default: $AZP_CONFIG, or the ado-agent-orchestrator environment variables)",
    )
    parser.add_argument("--log-format", choices=["text", "json"], help="log format (default: the config's logFormat)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    chart = parser.add_argument_group(
        "the chart's values instead of --config (rendered with helm template; the PAT is read from $AZP_TOKEN)"
    )
    chart.add_argument(
        "-f", "--values", type=Path, action="append", metavar="FILE", help="a values file of the chart (repeatable)"
    )
    chart.add_argument("--set", action="append", metavar="KEY=VALUE", help="a value, as helm's --set (repeatable)")
    chart.add_argument("--chart", type=Path, metavar="PATH", help="the chart directory (default: chart/ of this clone)")
    chart.add_argument("--release", default="azp-agents", help="release name to render with (default: azp-agents)")
    chart.add_argument("--namespace", default="azp-agents", help="release namespace (default: azp-agents)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="azp-reconciler", description="Ephemeral Azure Pipelines agents on Kubernetes."
    )
    parser.add_argument("--version", action="version", version=f"azp-reconciler {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reconcile = commands.add_parser("reconcile", help="run passes for the config's loopFor (--once: one pass)")
    _common(reconcile)
    reconcile.add_argument("--dry-run", action="store_true", help="change nothing; log what would be done")
    duration = reconcile.add_mutually_exclusive_group()
    duration.add_argument("--once", action="store_true", help="run exactly one pass, whatever the config's loopFor")
    duration.add_argument("--loop-for", type=float, help="keep running passes for this many seconds")
    reconcile.add_argument("--interval", type=float, help="seconds between passes while work is queued")
    reconcile.add_argument("--idle-interval", type=float, help="seconds between passes of an idle pool")
    reconcile.add_argument(
        "--deadline",
        type=float,
        help="seconds after its start the run is killed (the CronJob's activeDeadlineSeconds): no call, retry "
        f"or wait goes past it (default: the loop time plus {DEFAULT_DEADLINE_MARGIN:.0f})",
    )
    reconcile.add_argument(
        "--pushgateway",
        default=os.environ.get("AZP_METRICS_PUSHGATEWAY") or None,
        help="Prometheus Pushgateway URL to push the run's metrics to (default: $AZP_METRICS_PUSHGATEWAY)",
    )

    serve = commands.add_parser(
        "serve", help="run the loop for good, woken early by Azure DevOps service hooks; serve /metrics"
    )
    _common(serve)
    serve.add_argument("--dry-run", action="store_true", help="change nothing; log what would be done")
    serve.add_argument("--interval", type=float, help="seconds between passes while work is queued")
    serve.add_argument("--idle-interval", type=float, help="seconds between passes of an idle pool (the backstop)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    serve.add_argument("--port", type=int, default=8443, help="port to listen on (default: 8443)")
    serve.add_argument("--secret-file", type=Path, required=True, help="file holding the service hook secret")
    serve.add_argument("--username", help="basic auth user name the hooks must send (default: any)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) to serve HTTPS with")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP (only behind an ingress that terminates TLS, or in tests)",
    )

    subscribe = commands.add_parser(
        "subscribe", help="create the service hook subscriptions that send waiting jobs to `serve`"
    )
    _common(subscribe)
    subscribe.add_argument("--url", required=True, help="public URL of the receiver, ending in /hooks/azure-devops")
    subscribe.add_argument(
        "--project",
        action="append",
        help="id (GUID) of a project whose pipelines use the pools (repeatable; default: every project with an "
        "agent queue for one of the pools, which needs the Project and Team read scope)",
    )
    subscribe.add_argument("--secret-file", type=Path, required=True, help="file holding the service hook secret")
    subscribe.add_argument("--username", default="azp-agents", help="basic auth user name (default: azp-agents)")
    subscribe.add_argument("--print", dest="print_only", action="store_true", help="print the subscriptions only")
    subscribe.add_argument("--allow-http", action="store_true", help="accept an http:// URL (tests only)")

    check = commands.add_parser("check", help="verify credentials, pools, permissions and templates")
    _common(check)
    check.add_argument(
        "--hooks-url",
        help="the receiver's public URL (webhook enabled): also check that the credential can read the service hook "
        "subscriptions and that each project using the pools sends its waiting jobs there",
    )
    check.add_argument(
        "--project", action="append", help="with --hooks-url: project id to check (default: those using the pools)"
    )

    render_cmd = commands.add_parser("render", help="print the Job the reconciler would create for a pool")
    _common(render_cmd)
    render_cmd.add_argument("--pool", required=True, help="pool name")
    render_cmd.add_argument("--template", help="template name (default: the pool's first)")
    render_cmd.add_argument("--request-id", type=int, default=1, help="request id to render the Job for")

    cleanup = commands.add_parser("cleanup", help="remove the release's agents, placeholders and idle Jobs")
    _common(cleanup)
    cleanup.add_argument("--dry-run", action="store_true", help="change nothing; log what would be done")
    cleanup.add_argument("--force", action="store_true", help="also delete Jobs whose agent is running a job")
    cleanup.add_argument("--wait", type=float, default=120.0, help="seconds to wait for a running pass to end")

    simulate = commands.add_parser("simulate", help="run the reconciler against the built-in emulators")
    simulate.add_argument("--scenario", default="burst", help="scenario name or path of a world file")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--log-format", choices=["text", "json"], default="text")
    simulate.add_argument("--quiet", action="store_true", help="no live progress, only the summary")
    simulate.add_argument("--json", dest="json_out", type=Path, help="also write the summary as JSON here")
    simulate.add_argument(
        "--backend", choices=["kubernetes", "aci"], help="run agents on this backend (default: the world file's)"
    )
    simulate.add_argument(
        "--auth",
        help="override the world file's auth.method: pat, servicePrincipal, workloadIdentity or managedIdentity "
        "(the simulation registers that Entra ID identity)",
    )

    emulate = commands.add_parser("emulate", help="serve the Azure DevOps and Kubernetes emulators")
    emulate.add_argument("--world", default="burst", help="scenario name or path of a world file")
    emulate.add_argument("--azdo-port", type=int, default=0)
    emulate.add_argument("--kube-port", type=int, default=0)
    emulate.add_argument("--dir", type=Path, help="where to write the kubeconfig and config (default: a temp dir)")
    return parser


@contextmanager
def _load(args: argparse.Namespace) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The configuration from --config (or the environment), or from the chart's values (--values)."""
    from reconciler import config as config_module

    if not args.values:
        if args.set or args.chart:
            raise ConfigError("--set and --chart apply to the chart's values: give them with --values FILE")
        yield config_module.load(args.config)
        return
    if args.config is not None:
        raise ConfigError("give either --config (the reconciler's configuration) or --values (the chart's), not both")
    from reconciler import values

    chart_values = values.ChartValues(
        files=tuple(args.values),
        sets=tuple(args.set or ()),
        chart=args.chart,
        release=args.release,
        namespace=args.namespace,
    )
    with values.load(chart_values) as loaded:
        yield loaded


def _setup_logging(args: argparse.Namespace, config: Any | None = None) -> None:
    fmt = args.log_format or (config.log_format if config else "text")
    level = args.log_level or (config.log_level if config else "info")
    logs.setup(fmt=fmt, level=level)


def _loop_overrides(args: argparse.Namespace, config: Any) -> Any:
    """The config with the command line's loop settings; --once is exactly one pass."""
    from dataclasses import replace

    loop = config.loop
    loop_for = 0 if args.once else args.loop_for
    loop = replace(
        loop,
        loop_for=loop_for if loop_for is not None else loop.loop_for,
        interval=args.interval if args.interval is not None else loop.interval,
        idle_interval=args.idle_interval if args.idle_interval is not None else loop.idle_interval,
    )
    return replace(config, loop=loop)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from reconciler import config as config_module
    from reconciler.deadline import Deadline
    from reconciler.reconcile import Reconciler, startup_fields

    started = time.monotonic()  # the deadline counts from here, before the configuration is read
    if args.values and not args.dry_run:
        raise ConfigError(
            "--values tries the chart's configuration before installing: add --dry-run (the installed "
            "release's CronJob runs the real passes)"
        )
    # Load the Kubernetes client in the background while the configuration is read and the first
    # Azure DevOps call is made (the client's import is most of the cold start).
    threading.Thread(target=importlib.import_module, args=("reconciler.kube",), daemon=True).start()
    with _load(args) as (config, document):
        config = _loop_overrides(args, config)
        credentials = config_module.read_credentials(document)
        _setup_logging(args, config)
        log.info(
            "azp-reconciler starting", extra={"fields": startup_fields(config, dry_run=args.dry_run, mode="reconcile")}
        )
        seconds = args.deadline if args.deadline is not None else config.loop.loop_for + DEFAULT_DEADLINE_MARGIN
        if seconds <= 0:
            raise ConfigError(f"--deadline: {seconds} must be a positive number of seconds")
        deadline = Deadline(at=started + seconds, reserve=min(LEASE_RELEASE_RESERVE, seconds / 5))
        reconciler = Reconciler(
            config, credentials, dry_run=args.dry_run, kubeconfig=args.kubeconfig, deadline=deadline
        )
        metrics = _record_metrics(reconciler)
        try:
            return reconciler.run()
        finally:
            reconciler.close()
            if args.pushgateway:
                _push(args.pushgateway, metrics, instance=config.release)


def _record_metrics(reconciler: Any) -> Any:
    """Metrics fed by every pass of `reconciler`."""
    from reconciler.metrics import Metrics

    metrics = Metrics()
    throttled = [reconciler.azdo.throttled]

    def record(report: Any) -> None:
        metrics.record_pass(report, azdo_throttled=reconciler.azdo.throttled - throttled[0])
        throttled[0] = reconciler.azdo.throttled

    reconciler.on_pass = record
    return metrics


def _push(url: str, metrics: Any, *, instance: str) -> None:
    from reconciler.metrics import push

    try:
        push(url, metrics, job="azp-reconciler", instance=instance)
    except ReconcilerError as exc:
        # The run's work is done; a missing push shows as a gap in the graphs, not as a failed run.
        log.warning("could not push the metrics: %s", exc)


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from reconciler import config as config_module
    from reconciler import receiver
    from reconciler.reconcile import Reconciler, startup_fields

    if args.insecure_http == bool(args.tls_cert or args.tls_key) or bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("serve: give --tls-cert and --tls-key (HTTPS), or --insecure-http behind a TLS ingress")
    auth = receiver.HookAuth.from_file(args.secret_file, username=args.username)
    logs.SECRETS.add(auth.secret)
    tls = None if args.insecure_http else receiver.tls_context(args.tls_cert, args.tls_key)
    with _load(args) as (config, document):
        loop = replace(
            config.loop,
            loop_for=float("inf"),
            interval=args.interval if args.interval is not None else config.loop.interval,
            idle_interval=args.idle_interval if args.idle_interval is not None else config.loop.idle_interval,
        )
        config = replace(config, loop=loop)
        credentials = config_module.read_credentials(document)
        _setup_logging(args, config)
        log.info(
            "azp-reconciler starting", extra={"fields": startup_fields(config, dry_run=args.dry_run, mode="serve")}
        )
        reconciler = Reconciler(config, credentials, dry_run=args.dry_run, kubeconfig=args.kubeconfig)
        metrics = _record_metrics(reconciler)
        try:
            server = receiver.Receiver(
                (args.host, args.port),
                auth=auth,
                on_hint=lambda hint: reconciler.hint_job(
                    project_id=hint.project_id, job_id=hint.job_id, raised=hint.created, run_id=hint.run_id
                ),
                metrics=metrics,
                tls=tls,
            )
        except OSError as exc:
            reconciler.close()
            raise ConfigError(f"--host {args.host} --port {args.port}: cannot listen: {exc.strerror}") from None
        try:
            return receiver.serve(reconciler, server)
        finally:
            reconciler.close()


def cmd_subscribe(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from reconciler import config as config_module
    from reconciler import identity, receiver
    from reconciler.azdo import AzureDevOps

    url = urlsplit(args.url)
    if url.scheme != "https" and not (url.scheme == "http" and args.allow_http):
        raise ConfigError(f"--url {args.url!r}: the receiver must be reached over https:// (the secret travels)")
    secret = receiver.HookAuth.from_file(args.secret_file).secret
    logs.SECRETS.add(secret)
    with _load(args) as (config, document):
        _setup_logging(args, config)

        def bodies(projects: list[str]) -> list[dict[str, Any]]:
            password = "<the --secret-file secret>"
            return [
                receiver.subscription_body(project_id=p, url=args.url, username=args.username, password=password)
                for p in projects
            ]

        if args.print_only and args.project:  # printing named projects needs no credential
            sys.stdout.write(json.dumps(bodies(args.project), indent=2) + "\n")
            return 0
        credentials = config_module.read_credentials(document)
        azdo = AzureDevOps(
            config.organization,
            authorization=identity.authorization(credentials),
            timeout=config.azdo_timeout,
            api_version=config.azdo_api_version,
        )
        try:
            wanted = bodies(args.project or _projects_using(azdo, config))
            if args.print_only:
                sys.stdout.write(json.dumps(wanted, indent=2) + "\n")
            else:
                _create_subscriptions(azdo, wanted, url=args.url, secret=secret)
        finally:
            azdo.close()
        return 0


def _projects_using(azdo: Any, config: Any) -> list[str]:
    """The projects with an agent queue for one of the config's pools (the ones whose jobs can reach them)."""
    from reconciler import receiver

    try:
        found = {
            project: set(queues.values())
            for project, queues in receiver.pools_by_project(
                azdo, azdo.pools_by_name([p.name for p in config.pools])
            ).items()
        }
    except ForbiddenError:
        raise AuthError(
            f"{config.organization} refused to list its projects or their agent queues (HTTP 403): give the PAT the "
            "Project and Team (read) scope (vso.project), or name the projects with --project"
        ) from None
    if not found:
        raise ConfigError(
            "no project has an agent queue for any of the pools: add the pools to the projects that use them "
            "(Project settings > Agent pools), or name the projects with --project"
        )
    for project, pools in sorted(found.items()):
        log.info("project %s uses pools %s", project, ", ".join(sorted(pools)))
    return sorted(found)


def _create_subscriptions(azdo: Any, bodies: list[dict[str, Any]], *, url: str, secret: str) -> None:
    """Create the subscriptions of projects that do not send to `url` yet (running it twice is harmless)."""
    try:
        _subscribe_missing(azdo, bodies, url=url, secret=secret)
    except AuthError as exc:
        raise AuthError(
            f"{exc}; subscriptions also need the Service Hooks (read & write) scope (vso.hooks_write) "
            "and the Edit subscriptions permission in the project"
        ) from None
    except ForbiddenError:
        # A 403 here is about the hooks, not a pool: say what this command needs.
        raise AuthError(
            f"{azdo.organization} refused to list or create service hook subscriptions (HTTP 403): the PAT "
            "needs the Service Hooks (read & write) scope (vso.hooks_write) and its identity the Edit "
            "subscriptions permission in the project"
        ) from None


def _subscribe_missing(azdo: Any, bodies: list[dict[str, Any]], *, url: str, secret: str) -> None:
    from reconciler import receiver

    existing = receiver.subscribed_projects(azdo.subscriptions(), url=url)
    for body in bodies:
        project = body["publisherInputs"]["projectId"]
        if project.lower() in existing:
            log.info("project %s already sends waiting jobs to %s", project, url)
            continue
        body["consumerInputs"]["basicAuthPassword"] = secret
        created = azdo.create_subscription(body)
        log.info("subscribed project %s: subscription %s", project, created.get("id"))


def cmd_cleanup(args: argparse.Namespace) -> int:
    from reconciler import config as config_module
    from reconciler.cleanup import run_cleanup
    from reconciler.reconcile import Reconciler, startup_fields

    with _load(args) as (config, document):
        credentials = config_module.read_credentials(document)
        _setup_logging(args, config)
        log.info(
            "azp-reconciler starting", extra={"fields": startup_fields(config, dry_run=args.dry_run, mode="cleanup")}
        )
        reconciler = Reconciler(config, credentials, dry_run=args.dry_run, kubeconfig=args.kubeconfig)
        try:
            return run_cleanup(reconciler, force=args.force, wait=args.wait)
        finally:
            reconciler.close()


def cmd_render(args: argparse.Namespace) -> int:
    from reconciler import container_groups, names, render

    with _load(args) as (config, _):
        pool = config.pool(args.pool)
        if pool is None:
            raise ConfigError(
                f"--pool {args.pool!r}: no such pool in {config.source} (pools: {[p.name for p in config.pools]})"
            )
        template = pool.template(args.template) if args.template else pool.templates[0]
        if template is None:
            raise ConfigError(
                f"--template {args.template!r}: pool {pool.name!r} has templates {[t.name for t in pool.templates]}"
            )
        load = container_groups.load_template if config.backend == "aci" else render.load_template
        job_template = load(
            Path(template.job_template), key=f"pool {pool.name!r} template {template.name!r}", source=config.source
        )
    job_name = names.request_job_name(config.owner, pool_name=pool.name, request_id=args.request_id)
    if config.backend == "aci":
        sys.stdout.write(_plain_yaml(_render_group(config, pool, template, job_template, job_name, args.request_id)))
        return 0
    job = render.render_job(
        config=config,
        pool=pool,
        template=template,
        job_template=job_template,
        job_name=job_name,
        request_id=args.request_id,
    )
    sys.stdout.write(_plain_yaml(job))
    return 0


def _render_group(
    config: Any, pool: Any, template: Any, group_template: Any, name: str, request_id: int
) -> dict[str, Any]:
    """The container group the reconciler would create, its secrets shown as placeholders (never read)."""
    from datetime import UTC, datetime

    from reconciler import container_groups

    tags = container_groups.tags_for(
        config=config, pool=pool, template=template, request_id=request_id, now=datetime.now(UTC)
    )
    return {
        "name": name,
        "resourceGroup": pool.namespace,
        "body": container_groups.render_group(
            config=config,
            pool=pool,
            template=template,
            group_template=group_template,
            name=name,
            tags=tags,
            token="<the PAT, from auth.patFile>",
            registry_password=lambda r: f"<the password, from {r.password_file or '$' + str(r.password_env)}>",
        ),
    }


def _plain_yaml(document: Any) -> str:
    """YAML without anchors and aliases (`&id001`): a value two keys share is written twice, as in the
    job.yaml a user compares the output with."""
    import yaml

    class PlainDumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(document, Dumper=PlainDumper, sort_keys=False)


def cmd_check(args: argparse.Namespace) -> int:
    from reconciler.checks import run_checks

    if args.project and not args.hooks_url:
        raise ConfigError("check: --project names the projects whose service hooks to check: give --hooks-url too")
    with _load(args) as (config, document):
        _setup_logging(args, config)
        return run_checks(config, document, kubeconfig=args.kubeconfig, hooks_url=args.hooks_url, projects=args.project)


def _simulation() -> Any:
    """The emulators' package, which the reconciler image does not ship."""
    try:
        import azp_simulation.runner
    except ImportError:
        raise ConfigError(
            "the emulators are not installed here (the reconciler image ships without them): "
            "install the project from a clone with `pip install -e '.[simulate]'` or run `make demo`"
        ) from None
    return azp_simulation.runner


def cmd_simulate(args: argparse.Namespace) -> int:
    simulate = _simulation().simulate

    logs.setup(fmt=args.log_format, level="warning")
    return int(
        simulate(
            args.scenario,
            seed=args.seed,
            quiet=args.quiet,
            json_out=args.json_out,
            backend=args.backend,
            auth=args.auth,
        )
    )


def cmd_emulate(args: argparse.Namespace) -> int:
    emulate = _simulation().emulate

    logs.setup(fmt="text", level="info")
    return int(emulate(args.world, azdo_port=args.azdo_port, kube_port=args.kube_port, directory=args.dir))


COMMANDS = {
    "reconcile": cmd_reconcile,
    "check": cmd_check,
    "render": cmd_render,
    "cleanup": cmd_cleanup,
    "simulate": cmd_simulate,
    "emulate": cmd_emulate,
    "serve": cmd_serve,
    "subscribe": cmd_subscribe,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"azp-reconciler: configuration error: {logs.SECRETS.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except AuthError as exc:
        print(f"azp-reconciler: credentials error: {logs.SECRETS.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except ReconcilerError as exc:
        print(f"azp-reconciler: {logs.SECRETS.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
