"""The `azp-reconciler` command: reconcile, check, render, cleanup, simulate, emulate.

Exit codes: 0 all good, 1 some action or check failed, 2 bad configuration or credentials.
A user's mistake is one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler import __version__, logs
from reconciler.errors import AuthError, ConfigError, ReconcilerError

log = logging.getLogger("reconciler")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="configuration file (default: $AZP_CONFIG, or the ado-agent-orchestrator environment variables)",
    )
    parser.add_argument("--log-format", choices=["text", "json"], help="log format (default: the config's logFormat)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="azp-reconciler", description="Ephemeral Azure Pipelines agents on Kubernetes."
    )
    parser.add_argument("--version", action="version", version=f"azp-reconciler {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reconcile = commands.add_parser("reconcile", help="run one pass (or loop for --loop-for seconds)")
    _common(reconcile)
    reconcile.add_argument("--dry-run", action="store_true", help="change nothing; log what would be done")
    reconcile.add_argument("--loop-for", type=float, help="keep running passes for this many seconds")
    reconcile.add_argument("--interval", type=float, help="seconds between passes while work is queued")
    reconcile.add_argument("--idle-interval", type=float, help="seconds between passes of an idle pool")

    check = commands.add_parser("check", help="verify credentials, pools, permissions and templates")
    _common(check)

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

    emulate = commands.add_parser("emulate", help="serve the Azure DevOps and Kubernetes emulators")
    emulate.add_argument("--world", default="burst", help="scenario name or path of a world file")
    emulate.add_argument("--azdo-port", type=int, default=0)
    emulate.add_argument("--kube-port", type=int, default=0)
    emulate.add_argument("--dir", type=Path, help="where to write the kubeconfig and config (default: a temp dir)")
    return parser


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from reconciler import config as config_module

    config, document = config_module.load(args.config)
    return config, document


def _setup_logging(args: argparse.Namespace, config: Any | None = None) -> None:
    fmt = args.log_format or (config.log_format if config else "text")
    level = args.log_level or (config.log_level if config else "info")
    logs.setup(fmt=fmt, level=level)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from reconciler import config as config_module
    from reconciler.reconcile import Reconciler, startup_fields

    # Load the Kubernetes client in the background while the configuration is read and the first
    # Azure DevOps call is made (the client's import is most of the cold start).
    threading.Thread(target=importlib.import_module, args=("reconciler.kube",), daemon=True).start()
    config, document = _load(args)
    loop = config.loop
    loop = replace(
        loop,
        loop_for=args.loop_for if args.loop_for is not None else loop.loop_for,
        interval=args.interval if args.interval is not None else loop.interval,
        idle_interval=args.idle_interval if args.idle_interval is not None else loop.idle_interval,
    )
    config = replace(config, loop=loop)
    credentials = config_module.read_credentials(document)
    logs.SECRETS.add(credentials.pat)
    _setup_logging(args, config)
    log.info(
        "azp-reconciler starting", extra={"fields": startup_fields(config, dry_run=args.dry_run, mode="reconcile")}
    )
    reconciler = Reconciler(config, credentials, dry_run=args.dry_run, kubeconfig=args.kubeconfig)
    try:
        return reconciler.run()
    finally:
        reconciler.close()


def cmd_cleanup(args: argparse.Namespace) -> int:
    from reconciler import config as config_module
    from reconciler.cleanup import run_cleanup
    from reconciler.reconcile import Reconciler, startup_fields

    config, document = _load(args)
    credentials = config_module.read_credentials(document)
    logs.SECRETS.add(credentials.pat)
    _setup_logging(args, config)
    log.info("azp-reconciler starting", extra={"fields": startup_fields(config, dry_run=args.dry_run, mode="cleanup")})
    reconciler = Reconciler(config, credentials, dry_run=args.dry_run, kubeconfig=args.kubeconfig)
    try:
        return run_cleanup(reconciler, force=args.force, wait=args.wait)
    finally:
        reconciler.close()


def cmd_render(args: argparse.Namespace) -> int:
    import yaml

    from reconciler import names, render

    config, _ = _load(args)
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
    job_template = render.load_template(
        Path(template.job_template), key=f"pool {pool.name!r} template {template.name!r}", source=config.source
    )
    job_name = names.request_job_name(prefix=config.job_name_prefix, pool_name=pool.name, request_id=args.request_id)
    job = render.render_job(
        config=config,
        pool=pool,
        template=template,
        job_template=job_template,
        job_name=job_name,
        request_id=args.request_id,
    )
    sys.stdout.write(yaml.safe_dump(job, sort_keys=False))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from reconciler.checks import run_checks

    config, document = _load(args)
    _setup_logging(args, config)
    return run_checks(config, document, kubeconfig=args.kubeconfig)


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
    return int(simulate(args.scenario, seed=args.seed, quiet=args.quiet, json_out=args.json_out))


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
