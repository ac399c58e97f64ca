"""The chart's values as the configuration of a local run: `--values FILE` on check, render and reconcile.

What a release runs is what the chart renders into its ConfigMap, so this renders that ConfigMap with
`helm template` (the user's values files and --set, in helm's order) and reads config.yaml and the job
templates out of it. In the pod the templates are mounted at in-pod paths (/etc/azp-agents/templates/...);
here they are written into a temporary directory and the configuration points at them. The PAT, which the
chart mounts from its Secret, is read from $AZP_TOKEN instead.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler import config as config_module
from reconciler.errors import ConfigError
from reconciler.model import Config

CONFIGMAP = "templates/reconciler-configmap.yaml"
CLONE = Path(__file__).resolve().parent.parent
# The chart's own message when neither auth.pat nor auth.existingSecret is set (chart/templates/_helpers.tpl).
NO_AUTH = "auth.pat or auth.existingSecret is required"
# Satisfies that check when the values name no Secret: the PAT goes only into the chart's Secret, which is
# not rendered here, so this value reaches nothing the reconciler reads.
PLACEHOLDER_PAT = "unused-by-a-local-run"
HELM_TIMEOUT = 120


@dataclass(frozen=True)
class ChartValues:
    """What `helm install` would be given: values files, --set pairs, chart, release name and namespace."""

    files: tuple[Path, ...]
    sets: tuple[str, ...] = ()
    chart: Path | None = None
    release: str = "azp-agents"
    namespace: str = "azp-agents"


def find_chart(explicit: Path | None) -> Path:
    """The chart directory: --chart, else the chart/ beside the package in a clone."""
    chart = explicit if explicit is not None else CLONE / "chart"
    if not (chart / "Chart.yaml").is_file():
        where = f"--chart {explicit}" if explicit is not None else f"no chart beside the package ({chart})"
        raise ConfigError(
            f"{where}: not a chart directory (no Chart.yaml): pass --chart PATH, the chart/ directory of a clone "
            "or an unpacked `helm pull` of the chart"
        )
    return chart


def find_helm() -> str:
    """helm from PATH, else the one a clone's `make tools` fetched into .tools/bin."""
    found = shutil.which("helm") or shutil.which("helm", path=str(CLONE / ".tools" / "bin"))
    if found is None:
        raise ConfigError(
            "--values renders the chart with helm, which is not on PATH: install helm 3 or 4 "
            "(https://helm.sh/docs/intro/install/), or give the rendered configuration with --config"
        )
    return found


def _helm_template(
    helm: str, chart: Path, values: ChartValues, extra: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    command = [helm, "template", values.release, str(chart), "--namespace", values.namespace]
    command += ["--show-only", CONFIGMAP]
    for path in values.files:
        command += ["--values", str(path)]
    for pair in values.sets:
        command += ["--set", pair]
    try:
        return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=HELM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"helm template {chart} did not finish in {HELM_TIMEOUT} s") from None


def render_configmap(values: ChartValues) -> dict[str, Any]:
    """The chart's ConfigMap for these values, as `helm template` renders it."""
    for path in values.files:
        if not path.is_file():
            raise ConfigError(f"--values {path}: no such file")
    chart, helm = find_chart(values.chart), find_helm()
    done = _helm_template(helm, chart, values, ())
    if done.returncode != 0 and NO_AUTH in done.stderr:
        done = _helm_template(helm, chart, values, ("--set-string", f"auth.pat={PLACEHOLDER_PAT}"))
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "--debug" not in line]
        raise ConfigError(f"helm template {chart} rejected the values: {' '.join(lines) or 'no message'}")
    configmap = yaml.safe_load(done.stdout)
    if not isinstance(configmap, dict) or not isinstance(configmap.get("data"), dict):
        raise ConfigError(f"helm template {chart} rendered no ConfigMap data from {CONFIGMAP}: is it this chart?")
    return configmap


def _local_templates(document: dict[str, Any], data: dict[str, str], directory: Path) -> None:
    """Write each job template the configuration names into `directory` and point the configuration there."""
    templates = directory / "templates"
    templates.mkdir()
    for pool in document.get("pools") or []:
        for entry in [pool, *(pool.get("templates") or [])]:
            mounted = entry.get("jobTemplate")
            if not isinstance(mounted, str):
                continue
            key = Path(mounted).name
            if key not in data:
                raise ConfigError(f"the chart's ConfigMap has no {key} for pool {pool.get('name')!r} ({mounted})")
            (templates / key).write_text(data[key], encoding="utf-8")
            entry["jobTemplate"] = str(templates / key)


@contextmanager
def load(values: ChartValues) -> Iterator[tuple[Config, dict[str, Any]]]:
    """The Config a release with these values runs, valid while the context is open (its templates live
    in a temporary directory)."""
    data = render_configmap(values)["data"]
    document = yaml.safe_load(data.get("config.yaml") or "")
    if not isinstance(document, dict):
        raise ConfigError("the chart's ConfigMap has no config.yaml mapping")
    document["auth"] = {"patEnv": config_module.DEFAULT_PAT_ENV}
    source = f"{', '.join(str(p) for p in values.files)} (rendered by helm template)"
    with tempfile.TemporaryDirectory(prefix="azp-values-") as directory:
        _local_templates(document, data, Path(directory))
        config = config_module.build_config(document, source=source, base_dir=Path(directory))
        yield config, document
