"""Render the chart with the real helm binaries and hand the tests parsed objects.

`render_chart` runs `helm template` (helm 4 as `.tools/bin/helm`, helm 3 as `.tools/bin/helm3`) and
returns the rendered objects as dicts; results are cached per argument set, so each values file is
rendered once per helm version per session. `render_failure` expects helm to refuse the values and
returns its error text.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "chart"
VALUES_DIR = REPO / "values"
TOOLS_BIN = REPO / ".tools" / "bin"
FETCH_TOOLS = REPO / "scripts" / "fetch-tools.sh"

RELEASE = "azp-agents"
NAMESPACE = "azp-agents"
ORGANIZATION = "https://dev.azure.com/contoso"
# A recognisable fake PAT: the invariant tests look for it in every rendered object.
TEST_PAT = "fake-pat-0123456789abcdefghijklmnopqrstuvwxyz"
HELMS = ("helm", "helm3")

_cache: dict[str, tuple[int, str, str]] = {}


class HelmError(AssertionError):
    """helm exited non-zero where the test expected a rendered chart."""


def helm_path(helm: str = "helm") -> Path:
    """The pinned helm binary (`helm` = helm 4, `helm3` = helm 3), fetched on first use."""
    path = TOOLS_BIN / helm
    if not os.access(path, os.X_OK):
        subprocess.run(["bash", str(FETCH_TOOLS)], check=True, stdin=subprocess.DEVNULL, cwd=REPO)
    return path


def example_files() -> list[Path]:
    """Every example values file under values/."""
    return sorted(VALUES_DIR.glob("*.yaml"))


def base_values_for(example: Path) -> dict[str, Any]:
    """What the README's command line adds to an example file: the URL and PAT it does not set itself."""
    document = yaml.safe_load(example.read_text(encoding="utf-8")) or {}
    base: dict[str, Any] = {}
    if not (document.get("organization") or {}).get("url"):
        base["organization"] = {"url": ORGANIZATION}
    if not (document.get("auth") or {}).get("existingSecret"):
        base["auth"] = {"pat": TEST_PAT}
    return base


def helm_template(
    *,
    values: Mapping[str, Any] | None = None,
    values_files: Sequence[Path] = (),
    show_only: Sequence[str] = (),
    helm: str = "helm",
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    extra_args: Sequence[str] = (),
) -> tuple[int, str, str]:
    """Run `helm template` and return (exit code, stdout, stderr); `values` is layered before the files."""
    options = ["--namespace", namespace, *[f"--show-only={t}" for t in show_only], *extra_args]
    key = json.dumps([helm, release, values, [str(p) for p in values_files], options], sort_keys=True, default=str)
    if key not in _cache:
        with tempfile.TemporaryDirectory(prefix="azp-chart-") as workdir:
            values_args: list[str] = []
            if values is not None:
                layer = Path(workdir) / "values.yaml"
                layer.write_text(yaml.safe_dump(dict(values)), encoding="utf-8")
                values_args += ["-f", str(layer)]
            for path in values_files:
                values_args += ["-f", str(path)]
            args = [str(helm_path(helm)), "template", release, str(CHART), *values_args, *options]
            completed = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
        _cache[key] = (completed.returncode, completed.stdout, completed.stderr)
    return _cache[key]


def parse_documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of helm's output."""
    return [d for d in yaml.safe_load_all(text) if d]


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    values_files: Sequence[Path] = (),
    show_only: Sequence[str] = (),
    helm: str = "helm",
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """Render the chart and return its objects (a fresh copy, so tests may change them)."""
    code, stdout, stderr = helm_template(
        values=values, values_files=values_files, show_only=show_only, helm=helm, release=release, namespace=namespace
    )
    if code != 0:
        raise HelmError(f"{helm} template failed ({code}):\n{stderr}")
    return copy.deepcopy(parse_documents(stdout))


def render_failure(values: Mapping[str, Any], *, helm: str = "helm", values_files: Sequence[Path] = ()) -> str:
    """Render values helm must refuse, and return its error text."""
    code, stdout, stderr = helm_template(values=values, values_files=values_files, helm=helm)
    if code == 0:
        raise AssertionError(f"{helm} template accepted values it should refuse: {values}\n{stdout[:2000]}")
    return stderr


def render_example(example: Path, *, helm: str = "helm") -> list[dict[str, Any]]:
    """Render one values/ example as the README's command line would (URL and PAT added when missing)."""
    return render_chart(base_values_for(example), values_files=[example], helm=helm)


def with_defaults(**overrides: Any) -> dict[str, Any]:
    """Minimal valid values (URL, PAT) merged with nested overrides given as keyword arguments."""
    values: dict[str, Any] = {"organization": {"url": ORGANIZATION}, "auth": {"pat": TEST_PAT}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def find(objects: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Mapping[str, Any]]:
    """Objects of one kind (and name, if given)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objects: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> Mapping[str, Any]:
    """The single object of a kind (and name); fails if there are none or several."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config_of(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The reconciler's config.yaml, parsed out of the chart's ConfigMap."""
    config_map = only(objects, "ConfigMap")
    document: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return document


def job_templates_of(objects: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Job templates stored in the ConfigMap (name -> parsed document)."""
    config_map = only(objects, "ConfigMap")
    return {
        key.removesuffix(".yaml"): yaml.safe_load(text)
        for key, text in config_map["data"].items()
        if key != "config.yaml"
    }


def pod_specs(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Pod specs inside an object: a Pod, a Job, a CronJob (none for other kinds)."""
    kind = obj.get("kind")
    if kind == "Pod":
        return [obj["spec"]]
    if kind == "Job":
        return [obj["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def have_readme_generator() -> bool:
    """Whether the pinned readme-generator is installed (scripts/fetch-tools.sh puts it there)."""
    return (REPO / ".tools" / "node" / "node_modules" / ".bin" / "readme-generator").exists() and bool(
        shutil.which("node")
    )


def helm_lint(
    values: Mapping[str, Any] | None, *, values_files: Sequence[Path] = (), helm: str = "helm"
) -> tuple[int, str]:
    """Run `helm lint --strict` on the chart; returns (exit code, combined output)."""
    with tempfile.TemporaryDirectory(prefix="azp-chart-") as workdir:
        args = [str(helm_path(helm)), "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        if values is not None:
            layer = Path(workdir) / "values.yaml"
            layer.write_text(yaml.safe_dump(dict(values)), encoding="utf-8")
            args += ["-f", str(layer)]
        for path in values_files:
            args += ["-f", str(path)]
        completed = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    return completed.returncode, completed.stdout + completed.stderr


BUILD_CHART_TOOLS = REPO / "scripts" / "build-chart-tools.sh"


def built_tool(name: str) -> Path:
    """A tool scripts/build-chart-tools.sh builds (helm-unittest, ct). Building takes minutes, so a test
    does not do it: `make test` runs the script first. Missing, it skips the test, or fails it in CI."""
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        message = f"{path} is missing: run `bash {BUILD_CHART_TOOLS.relative_to(REPO)}` (or `make test`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
