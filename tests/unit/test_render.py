"""render_job: the user's template keeps what it declares; we add only what we own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from plan_builders import config, pool, template

from reconciler import names, render
from reconciler.errors import ConfigError

USER_JOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "ignored", "labels": {"team": "web"}},
    "spec": {
        "backoffLimit": 6,
        "activeDeadlineSeconds": 7200,
        "template": {
            "metadata": {"annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
            "spec": {
                "initContainers": [{"name": "register", "image": "agent:1", "args": ["register"]}],
                "containers": [
                    {
                        "name": "agent",
                        "image": "agent:1",
                        "args": ["run"],
                        "env": [
                            {"name": "AZP_POOL", "value": "user-choice"},
                            {"name": "WHERE", "value": "${NAMESPACE}/${HOME}"},
                        ],
                    },
                ],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "restartPolicy": "OnFailure",
            },
        },
    },
}


def rendered(job: dict[str, Any] | None = None, request_id: int | None = 42) -> dict[str, Any]:
    cfg = config(pool("Linux Pool", template("docker")), release="prod", agent_secret_name="prod-pat")
    return render.render_job(
        config=cfg,
        pool=cfg.pools[0],
        template=cfg.pools[0].templates[0],
        job_template=job or USER_JOB,
        job_name="azp-x-42",
        request_id=request_id,
        demands=("docker",),
    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_ours_is_set_and_user_fields_kept() -> None:
    """We test: name, namespace, labels, restartPolicy, backoffLimit and TTL are ours; the rest is the user's."""
    job = rendered()
    meta = job["metadata"]
    assert meta["name"] == "azp-x-42" and meta["namespace"] == "agents"
    assert meta["labels"]["team"] == "web"
    assert meta["labels"][names.LABEL_INSTANCE] == "prod"
    assert meta["labels"][names.LABEL_POOL] == names.pool_slug("Linux Pool")
    assert meta["labels"][names.LABEL_REQUEST_ID] == "42"
    assert meta["annotations"][names.ANNOTATION_POOL_NAME] == "Linux Pool"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 300
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][names.LABEL_MANAGED_BY] == "azp-agents"
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_env_and_token_only_in_the_registering_container() -> None:
    """We test: AZP_* reach every container (user values win) and the token file only the init container."""
    pod = rendered()["spec"]["template"]["spec"]
    init, main = pod["initContainers"][0], pod["containers"][0]
    assert env_of(main)["AZP_POOL"] == "user-choice"
    assert env_of(init)["AZP_POOL"] == "Linux Pool"
    assert env_of(main)["AZP_AGENT_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_of(init)["AZP_TOKEN_FILE"] == render.TOKEN_FILE
    assert "AZP_TOKEN_FILE" not in env_of(main)
    assert not any(m["name"] == render.TOKEN_VOLUME for m in main.get("volumeMounts", []))
    volume = next(v for v in pod["volumes"] if v["name"] == render.TOKEN_VOLUME)
    assert volume["secret"]["secretName"] == "prod-pat"


def test_single_container_gets_the_token() -> None:
    """We test: without init containers the one agent container registers, so it gets the token file."""
    job = render.single_container_template(image="agent:1")
    pod = rendered(job)["spec"]["template"]["spec"]
    assert env_of(pod["containers"][0])["AZP_TOKEN_FILE"] == render.TOKEN_FILE


def test_only_known_variables_are_substituted() -> None:
    """We test: ${NAMESPACE} is filled in, ${HOME} is left for the shell."""
    main = rendered()["spec"]["template"]["spec"]["containers"][0]
    assert env_of(main)["WHERE"] == "agents/${HOME}"


def test_standby_job_labels() -> None:
    """We test: a standby Job carries the standby label instead of a request id."""
    labels = rendered(request_id=None)["metadata"]["labels"]
    assert labels[names.LABEL_STANDBY] == "true" and names.LABEL_REQUEST_ID not in labels


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a", "image": "x"}]}}, None),
        ({"spec": {"containers": [{"name": "a", "image": "x"}]}}, None),
        ({"containers": [{"name": "a", "image": "x"}]}, None),
        ({"apiVersion": "batch/v1beta1", "kind": "Job", "spec": {}}, "use batch/v1"),
        ({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {}}}}, "containers is missing"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "data": {}}, "is a ConfigMap, not a Job"),
    ],
)
def test_template_kinds(tmp_path: Path, document: dict[str, Any], expected: str | None) -> None:
    """We test: Jobs, Pods and bare pod specs are accepted; anything else is refused with the reason."""
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(document))
    if expected is None:
        job = render.load_template(path, key="k", source="s")
        assert job["kind"] == "Job" and job["spec"]["template"]["spec"]["containers"]
    else:
        with pytest.raises(ConfigError, match=expected):
            render.load_template(path, key="k", source="s")


def test_multi_document_template_refused(tmp_path: Path) -> None:
    """We test: a file with two objects is refused (which one would be the agent?)."""
    path = tmp_path / "t.yaml"
    path.write_text("kind: Job\n---\nkind: Job\n")
    with pytest.raises(ConfigError, match="exactly one object"):
        render.load_template(path, key="k", source="s")


def test_pool_names_always_give_valid_labels() -> None:
    """We test: spaces, unicode, capitals and 200 characters still give a DNS-1123 slug <= 16 characters."""
    import re

    for name in ["linux", "Linux Pool", "ünïcødé-池", "x" * 200, "placeholder", "a b", "A-B", "---"]:
        slug = names.pool_slug(name)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", slug) and len(slug) <= 16, (name, slug)
    assert names.pool_slug("Linux Pool") != names.pool_slug("linux-pool")
    longest = names.request_job_name(prefix="a" * 12, pool_name="x" * 200, request_id=2**63 - 1, generation=99)
    # The pod adds '-xxxxx' and the pod name is the agent's name and the pod's hostname (63 at most).
    assert len(longest) + 6 <= 63
