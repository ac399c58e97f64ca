"""Hand the chart's rendered config and job templates to the reconciler's own loading code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from chart_helpers import config_of, only

from reconciler import config as reconciler_config
from reconciler import render
from reconciler.model import Config

TEMPLATE_DIR = "/etc/azp-agents/templates/"


def materialise(objects: Sequence[Mapping[str, Any]], directory: Path) -> Path:
    """Write the ConfigMap's files as the pod sees them, with template paths moved under `directory`."""
    config_map = only(objects, "ConfigMap")
    templates = directory / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    for key, text in config_map["data"].items():
        if key != "config.yaml":
            (templates / key).write_text(text, encoding="utf-8")
    document = config_of(objects)
    text = yaml.safe_dump(document).replace(TEMPLATE_DIR, f"{templates}/")
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_config(objects: Sequence[Mapping[str, Any]], directory: Path) -> Config:
    """The reconciler's Config from the rendered chart, job templates loaded and policy-checked."""
    config, _ = reconciler_config.load_file(materialise(objects, directory), check_templates=True)
    return config


def agent_jobs(objects: Sequence[Mapping[str, Any]], directory: Path) -> list[dict[str, Any]]:
    """One Job per pool template, exactly as the reconciler would create it for a queued request. Each
    has its own request id, as requests in Azure DevOps do: two pools may use templates of one name."""
    config = load_config(objects, directory)
    jobs = []
    templates = [(pool, template) for pool in config.pools for template in pool.templates]
    for request_id, (pool, template) in enumerate(templates, start=1234):
        job_template = render.load_template(Path(template.job_template), key=template.name, source="chart")
        jobs.append(
            render.render_job(
                config=config,
                pool=pool,
                template=template,
                job_template=job_template,
                job_name=f"{config.job_name_prefix}-{template.name}-{request_id}",
                request_id=request_id,
            )
        )
    return jobs
