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


def test_reconciler_values_win_and_token_only_in_the_registering_container() -> None:
    """We test: AZP_URL/AZP_POOL/AZP_AGENT_NAME are the reconciler's in both agent containers (a template's
    own value is replaced); the token file and mount reach only the register init container."""
    pod = rendered()["spec"]["template"]["spec"]
    init, main = pod["initContainers"][0], pod["containers"][0]
    assert env_of(main)["AZP_POOL"] == env_of(init)["AZP_POOL"] == "Linux Pool"
    assert [e["name"] for e in main["env"]].count("AZP_POOL") == 1
    assert env_of(main)["AZP_AGENT_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_of(init)["AZP_TOKEN_FILE"] == render.TOKEN_FILE
    assert "AZP_TOKEN_FILE" not in env_of(main)
    assert not any(m["name"] == render.TOKEN_VOLUME for m in main.get("volumeMounts", []))
    volume = next(v for v in pod["volumes"] if v["name"] == render.TOKEN_VOLUME)
    assert volume["secret"]["secretName"] == "prod-pat"


def test_once_container_gets_the_token() -> None:
    """We test: the orchestrator's `once` shape (opt-in) has one container, which registers and gets the token."""
    job = render.image_template(image="agent:1", once=True)
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
    """We test: spaces, unicode, capitals and 200 characters still give a DNS-1123 slug <= 16 characters; a
    Job name with the longest prefix, a two-digit shard's tag, any pool and the largest request id still leaves
    the pod's name a 63-character hostname, and a short pool keeps its readable slug."""
    import re

    for name in ["linux", "Linux Pool", "ünïcødé-池", "x" * 200, "placeholder", "a b", "A-B", "---"]:
        slug = names.pool_slug(name)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", slug) and len(slug) <= 16, (name, slug)
    assert names.pool_slug("Linux Pool") != names.pool_slug("linux-pool")
    owner = names.Owner(prefix="a" * 12, release="r" * 53, shard=99)
    for pool_name in ("x" * 200, "x" * 16, "linux"):
        longest = names.request_job_name(owner, pool_name=pool_name, request_id=2**63 - 1, generation=99)
        # The pod adds '-xxxxx' and the pod name is the agent's name and the pod's hostname (63 at most).
        assert len(longest) + 6 <= 63 and len(longest) <= names.MAX_JOB_NAME, longest
    assert names.request_job_name(owner, pool_name="linux", request_id=5) == f"{'a' * 12}-{owner.tag}-linux-5"


# --- real-world template shapes -------------------------------------------------------------------

IMAGE = "ghcr.io/azp-agents/agent-linux:4.269.0"


def shaped(
    *, inits: list[dict[str, Any]], mains: list[dict[str, Any]], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Job of these containers (the register/run pair of the chart unless replaced)."""
    template: dict[str, Any] = {"spec": {"initContainers": inits, "containers": mains}}
    if annotations:
        template["metadata"] = {"annotations": annotations}
    return {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": template}}


REGISTER = {"name": "register", "image": IMAGE, "args": ["register"]}
RUN = {"name": "agent", "image": IMAGE, "args": ["run"]}
DIND = {"name": "dind", "image": "docker:27-dind", "securityContext": {"privileged": True}}
CHOWN = {"name": "fix-perms", "image": "busybox:1.36", "command": ["sh", "-c", "chown -R 10001 /azp/_work"]}
PROXY = {"name": "proxy", "image": "envoyproxy/envoy:v1.31", "restartPolicy": "Always"}


def holders(job: dict[str, Any]) -> dict[str, set[str]]:
    """Per container of the rendered Job: which of the token mount, AZP_TOKEN_FILE and AZP_URL it has."""
    pod = rendered(job)["spec"]["template"]["spec"]
    found = {}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        has = set(env_of(container)) & {"AZP_TOKEN_FILE", "AZP_URL"}
        if any(m["name"] == render.TOKEN_VOLUME for m in container.get("volumeMounts") or []):
            has.add("mount")
        found[container["name"]] = has
    return found


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (shaped(inits=[REGISTER], mains=[RUN, DIND]), {"dind": set()}),
        (shaped(inits=[CHOWN, REGISTER], mains=[RUN]), {"fix-perms": set()}),
        (shaped(inits=[PROXY, REGISTER], mains=[RUN]), {"proxy": set()}),
        (shaped(inits=[REGISTER, PROXY | {"image": IMAGE}], mains=[RUN]), {"proxy": set()}),
    ],
    ids=["dind-sidecar", "user-init-container", "native-sidecar", "native-sidecar-of-the-agent-image"],
)
def test_token_reaches_only_the_registering_container(job: dict[str, Any], expected: dict[str, set[str]]) -> None:
    """We test: with a docker:dind sidecar, a user's init container or a native sidecar, the token (file and
    mount) goes to the register init container only, AZP_URL to the two agent containers only."""
    found = holders(job)
    assert found["register"] == {"mount", "AZP_TOKEN_FILE", "AZP_URL"}
    assert found["agent"] == {"AZP_URL"}
    for name, has in expected.items():
        assert found[name] == has, name


def test_agent_container_marked_by_annotation() -> None:
    """We test: two main containers neither wired as the agent are refused, naming both and the annotation;
    the annotation then picks the one that runs the agent."""
    custom = {"name": "builder", "image": "contoso/agent:1", "args": ["run"]}
    other = {"name": "cache", "image": "redis:7"}
    job = shaped(inits=[REGISTER | {"image": "contoso/agent:1"}], mains=[custom, other])
    with pytest.raises(
        ConfigError, match=r"'builder', 'cache' runs the agent: add the annotation azp-agents.dev/agent-container"
    ):
        render.agent_containers(job, where="t")
    marked = shaped(
        inits=job["spec"]["template"]["spec"]["initContainers"],
        mains=[custom, other],
        annotations={render.AGENT_CONTAINER_ANNOTATION: "builder"},
    )
    assert holders(marked)["cache"] == set() and holders(marked)["builder"] == {"AZP_URL"}
    wrong = shaped(inits=[], mains=[custom, other], annotations={render.AGENT_CONTAINER_ANNOTATION: "nope"})
    with pytest.raises(ConfigError, match="'nope' is not one of the containers"):
        render.agent_containers(wrong, where="t")


def test_register_container_marked_by_annotation() -> None:
    """We test: two init containers of the agent's image cannot be told apart without the annotation."""
    warm = {"name": "warm-cache", "image": IMAGE, "args": ["run"]}
    job = shaped(inits=[warm, REGISTER], mains=[RUN])
    with pytest.raises(ConfigError, match="'warm-cache', 'register' registers the agent"):
        render.agent_containers(job, where="t")
    marked = shaped(inits=[warm, REGISTER], mains=[RUN], annotations={render.REGISTER_CONTAINER_ANNOTATION: "register"})
    assert holders(marked)["warm-cache"] == set()


def test_once_mode_needs_the_opt_in() -> None:
    """We test: one container that registers and runs (no register init container) is refused without
    allowTokenInAgentContainer, with the fix and the chart key in the message; accepted with it."""
    job = shaped(inits=[CHOWN], mains=[RUN | {"args": ["once"]}, DIND])
    with pytest.raises(ConfigError, match=r"agent\.allowTokenInAgentContainer"):
        render.check_agent_containers(job, declared={}, allow_token_in_agent_container=False, where="t")
    assert render.check_agent_containers(job, declared={}, allow_token_in_agent_container=True, where="t") == []
    assert holders(job) == {"fix-perms": set(), "agent": {"mount", "AZP_TOKEN_FILE", "AZP_URL"}, "dind": set()}


def test_fixed_agent_name_is_replaced_and_noted() -> None:
    """We test: a template's own AZP_AGENT_NAME/AZP_POOL/AZP_URL lose to the reconciler's, with one note each."""
    own = [{"name": "AZP_AGENT_NAME", "value": "build-01"}, {"name": "AZP_URL", "value": "https://dev.azure.com/other"}]
    job = shaped(inits=[REGISTER], mains=[RUN | {"env": own}])
    notes = render.check_agent_containers(job, declared={}, allow_token_in_agent_container=False, where="t")
    assert len(notes) == 2 and "AZP_AGENT_NAME: the reconciler's value replaces it" in notes[0]
    main = rendered(job)["spec"]["template"]["spec"]["containers"][0]
    assert env_of(main)["AZP_AGENT_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_of(main)["AZP_URL"] == "https://dev.azure.com/contoso"


def test_declared_capabilities_reach_the_agent_containers() -> None:
    """We test: declared capabilities become env of the agent containers (not sidecars), a template's own
    value of the same name is kept, and a conflicting one is refused at load."""
    cfg = config(pool("Linux Pool", template("big", capabilities={"size": "large", "gpu": ""})))
    job = shaped(inits=[REGISTER], mains=[RUN | {"env": [{"name": "gpu", "value": ""}]}, DIND])
    pod = render.render_job(
        config=cfg, pool=cfg.pools[0], template=cfg.pools[0].templates[0], job_template=job, job_name="j", request_id=1
    )["spec"]["template"]["spec"]
    assert env_of(pod["containers"][0])["size"] == env_of(pod["initContainers"][0])["size"] == "large"
    assert [e["name"] for e in pod["containers"][0]["env"]].count("gpu") == 1
    assert "size" not in env_of(pod["containers"][1])
    with pytest.raises(
        ConfigError, match="capability size='large' is declared, but container 'agent' sets size='small'"
    ):
        render.check_agent_containers(
            shaped(inits=[REGISTER], mains=[RUN | {"env": [{"name": "size", "value": "small"}]}]),
            declared={"size": "large"},
            allow_token_in_agent_container=False,
            where="t",
        )


def test_null_lists_render() -> None:
    """We test: `env: null`, `volumeMounts: null`, `volumes: null` (YAML written by hand) render instead of crashing."""
    job = shaped(inits=[REGISTER | {"env": None, "volumeMounts": None}], mains=[RUN | {"env": None}])
    job["spec"]["template"]["spec"]["volumes"] = None
    found = holders(job)
    assert found["register"] == {"mount", "AZP_TOKEN_FILE", "AZP_URL"}


@pytest.mark.parametrize("name", render.TOKEN_ENV_NAMES)
def test_token_variables_refused_under_every_name(name: str) -> None:
    """We test: a literal or a secretKeyRef under any name real images read a PAT from is refused, naming it."""
    policy = render.PodPolicy()
    for entry in (
        {"name": name, "value": "abc"},
        {"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ):
        job = shaped(inits=[REGISTER], mains=[RUN | {"env": [entry]}])
        with pytest.raises(ConfigError, match=f"container 'agent' sets {name}"):
            render.check_policy(job, policy=policy, key="k", source="s")


@pytest.mark.parametrize(
    ("command", "args", "refused"),
    [
        (None, ["--token", "xyz123"], True),
        (None, ["--auth", "pat", "--token", "xyz123", "--pool", "p"], True),
        (["sh", "-c"], ["./config.sh --unattended --auth pat --token=xyz123 && ./run.sh"], True),
        (["sh", "-c", "VSTS_TOKEN=xyz123 ./start.sh"], None, True),
        (None, ["--token", "$(AZP_TOKEN)"], False),
        (["sh", "-c", './config.sh --auth pat --token "$(cat $AZP_TOKEN_FILE)"'], None, False),
        (None, ["run"], False),
    ],
)
def test_tokens_in_command_and_args(command: list[str] | None, args: list[str] | None, refused: bool) -> None:
    """We test: a literal token on the command line (`--token xyz`, `--auth pat --token`, VAR=xyz) is refused;
    a reference to a variable or file is not."""
    container = RUN | {k: v for k, v in (("command", command), ("args", args)) if v is not None}
    job = shaped(inits=[REGISTER], mains=[container])
    if refused:
        with pytest.raises(ConfigError, match="passes a token in its command/args") as raised:
            render.check_policy(job, policy=render.PodPolicy(), key="k", source="s")
        assert "xyz123" not in str(raised.value)
    else:
        render.check_policy(job, policy=render.PodPolicy(), key="k", source="s")


@pytest.mark.parametrize(
    "pod",
    [
        {"containers": ["agent"]},
        {"containers": [{"image": "x"}]},
        {"containers": [RUN | {"env": ["AZP_URL=x"]}]},
        {"containers": [RUN | {"env": {"AZP_URL": "x"}}]},
    ],
)
def test_malformed_containers_are_refused(pod: dict[str, Any]) -> None:
    """We test: a container that is not a mapping with a name, or an env that is not a list of {name, ...},
    is a ConfigError naming where, not a traceback."""
    job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": pod}}}
    with pytest.raises(ConfigError, match=r"k: spec\.containers|container 'agent': env must be"):
        render.check_policy(job, policy=render.PodPolicy(), key="k", source="s")
