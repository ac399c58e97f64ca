"""A template's `arch`: its pods select nodes of that architecture, its agents advertise it, jobs route to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from plan_builders import NOW, config, of, pool, queued, state, template, world
from test_config import JOB, base, error_of, write
from test_render import USER_JOB

from reconciler import config as config_module
from reconciler import render
from reconciler.model import CreateJob, RegisterPlaceholder, frozen_map
from reconciler.plan import plan


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(JOB))
    return tmp_path


def mixed(workdir: Path, **pool_keys: Any) -> dict[str, Any]:
    templates = [
        {"name": "x64", "jobTemplate": "job.yaml", "capabilities": {}},
        {"name": "arm", "jobTemplate": "job.yaml", "capabilities": {}, "arch": "arm64"},
    ]
    return base(pools=[{"name": "linux", "templates": templates, **pool_keys}])


def test_arch_feeds_known_capabilities(workdir: Path) -> None:
    """We test: `arch: arm64` makes the template known to advertise Agent.OSArchitecture=ARM64; none means X64."""
    loaded, _ = config_module.load_file(write(workdir, mixed(workdir)))
    x64, arm = loaded.pools[0].templates
    assert x64.known_capabilities["Agent.OSArchitecture"] == "X64" and x64.arch is None
    assert arm.known_capabilities["Agent.OSArchitecture"] == "ARM64" and arm.arch == "arm64"


def test_pool_arch_is_the_default_of_its_templates(workdir: Path) -> None:
    """We test: a pool's `arch` applies to its templates that set none; one with its own arch keeps it."""
    document = mixed(workdir, arch="arm")
    loaded, _ = config_module.load_file(write(workdir, document))
    assert [t.arch for t in loaded.pools[0].templates] == ["arm", "arm64"]
    assert loaded.pools[0].templates[0].known_capabilities["Agent.OSArchitecture"] == "ARM"


def test_arch_conflicting_with_the_job_node_selector_is_refused(workdir: Path) -> None:
    """We test: arch arm64 with a job.yaml selecting kubernetes.io/arch=amd64 is a ConfigError naming the key."""
    job = {**JOB, "spec": {"template": {"spec": {**JOB["spec"]["template"]["spec"]}}}}
    job["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/arch": "amd64"}
    (workdir / "job.yaml").write_text(yaml.safe_dump(job))
    message = error_of(workdir, mixed(workdir))
    assert "pools[0].templates[1].jobTemplate" in message and "'arm64'" in message and "amd64" in message, message


def test_unknown_arch_is_refused(workdir: Path) -> None:
    """We test: an arch Kubernetes does not name (x86_64) is a ConfigError naming the key."""
    document = mixed(workdir)
    document["pools"][0]["templates"][1]["arch"] = "x86_64"
    assert "pools[0].templates[1].arch" in error_of(workdir, document)


def test_rendered_pods_select_the_arch_and_keep_their_own_selector() -> None:
    """We test: the rendered pod gets nodeSelector kubernetes.io/arch=arm64 next to the user's kubernetes.io/os;
    a template without arch leaves the selector as the user wrote it."""
    for arch, expected in (("arm64", {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}), (None, None)):
        cfg = config(pool("linux", template("arm", arch=arch)))
        job = render.render_job(
            config=cfg,
            pool=cfg.pools[0],
            template=cfg.pools[0].templates[0],
            job_template=USER_JOB,
            job_name="azp-x-1",
            request_id=1,
        )
        selector = job["spec"]["template"]["spec"]["nodeSelector"]
        assert selector == (expected or {"kubernetes.io/os": "linux"})


def test_arm64_demand_routes_to_the_arm64_template_and_its_placeholder_advertises_it() -> None:
    """We test: a request demanding Agent.OSArchitecture -equals ARM64 creates a Job of the ARM64 template, one
    demanding X64 of the X64 one, one with no demand of the preferred (first) one; the placeholders advertise
    each template's architecture."""
    x64 = template("x64", known_capabilities=frozen_map({"Agent.OS": "Linux", "Agent.OSArchitecture": "X64"}))
    arm = template("arm", known_capabilities=frozen_map({"Agent.OS": "Linux", "Agent.OSArchitecture": "ARM64"}))
    requests = (
        queued(1, "Agent.OSArchitecture -equals ARM64"),
        queued(2, "Agent.OSArchitecture -equals X64"),
        queued(3),
    )
    actions = plan(config(pool("linux", x64, arm)), world(state("linux", *requests, agents=())), NOW)
    assert {c.request_id: c.template for c in of(CreateJob, actions)} == {1: "arm", 2: "x64", 3: "x64"}
    placeholders = {
        p.agent_name.rsplit("-", 1)[-1]: p.capabilities["Agent.OSArchitecture"]
        for p in of(RegisterPlaceholder, actions)
    }
    assert placeholders == {"x64": "X64", "arm": "ARM64"}
