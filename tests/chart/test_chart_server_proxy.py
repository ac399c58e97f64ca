"""We test the chart's Azure DevOps Server, proxy and private CA values: what reaches config.yaml, the
reconciler's pod and the agent containers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chart_helpers import config_of, find, job_templates_of, pod_specs, render_chart, render_failure, with_defaults
from chart_reconciler import agent_jobs

from reconciler.config import validate_document


def test_api_version_defaults_to_auto_and_a_pinned_one_reaches_the_config() -> None:
    """We test: organization.apiVersion is auto by default, 6.0 reaches azureDevOps.apiVersion for a Server 2020
    collection URL and the reconciler accepts the result; a version the client does not speak is refused."""
    assert config_of(render_chart(with_defaults()))["azureDevOps"]["apiVersion"] == "auto"
    server = with_defaults(organization={"url": "https://tfs.example.com/tfs/DefaultCollection", "apiVersion": "6.0"})
    document = config_of(render_chart(server))
    assert document["azureDevOps"]["apiVersion"] == "6.0"
    validate_document(document, source="chart")
    error = render_failure(with_defaults(organization={"apiVersion": "5.1"}))
    assert "apiVersion" in error


NETWORK = with_defaults(
    proxy={"url": "http://proxy.corp:3128", "noProxy": ["tfs.corp"], "agentBypass": [r"https://tfs\.corp/.*"]},
    caBundle={"configMap": "corp-ca", "key": "bundle.pem"},
)
CA_FILE = "/etc/azp-agents/ca/ca.crt"


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def reconciler_pods(objects: list[dict[str, Any]]) -> list[Mapping[str, Any]]:
    """The pod specs built by azp-agents.reconcilerPodSpec: the CronJob's, the helm test Pod's and the webhook
    receiver Deployment's."""
    specs = [spec for kind in ("CronJob", "Pod") for obj in find(objects, kind) for spec in pod_specs(obj)]
    return specs + [d["spec"]["template"]["spec"] for d in find(objects, "Deployment")]


def test_reconciler_pods_get_the_proxy_the_ca_and_the_extras() -> None:
    """We test: HTTPS_PROXY, NO_PROXY (Kubernetes API server first, then proxy.noProxy), REQUESTS_CA_BUNDLE and
    SSL_CERT_FILE on the mounted bundle, and reconciler.extraEnv/extraVolumes/extraVolumeMounts, in every pod
    built from the reconciler's pod spec; none of it without the values."""
    extra = {
        "extraEnv": [{"name": "LOG_EXTRA", "value": "1"}],
        "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    webhook = {"enabled": True, "secret": "hook-secret-0a1b2c3d4e5f", "tlsSecretName": "hooks-tls"}
    pods = reconciler_pods(render_chart({**NETWORK, "reconciler": extra, "webhook": webhook}))
    assert len(pods) == 3
    for pod in pods:
        container = pod["containers"][0]
        env = env_of(container)
        assert env["HTTPS_PROXY"] == "http://proxy.corp:3128"
        direct = env["NO_PROXY"].split(",")
        assert direct[0] == "$(KUBERNETES_SERVICE_HOST)" and "kubernetes.default.svc" in direct
        assert direct[-1] == "tfs.corp"
        assert env["REQUESTS_CA_BUNDLE"] == env["SSL_CERT_FILE"] == CA_FILE
        assert env["LOG_EXTRA"] == "1"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["azp-ca-bundle"]["configMap"] == {
            "name": "corp-ca",
            "items": [{"key": "bundle.pem", "path": "ca.crt"}],
        }
        assert "scratch" in volumes
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/azp-agents/ca", "/scratch"} <= mounts
    for pod in reconciler_pods(render_chart(with_defaults())):
        env = env_of(pod["containers"][0])
        assert not {"HTTPS_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE"} & set(env)


def test_proxy_credentials_come_from_the_secret_into_the_url() -> None:
    """We test: with proxy.existingSecret the username and password are read from that Secret and put into
    HTTPS_PROXY by Kubernetes' $(VAR) expansion (never written in the manifest), and given to the agents."""
    values = with_defaults(proxy={"url": "https://proxy.corp:3128", "existingSecret": "proxy-login"})
    objects = render_chart(values)
    for pod in reconciler_pods(objects):
        env = env_of(pod["containers"][0])
        assert env["AZP_PROXY_USERNAME"] == {"secretKeyRef": {"name": "proxy-login", "key": "username"}}
        assert env["HTTPS_PROXY"] == "https://$(AZP_PROXY_USERNAME):$(AZP_PROXY_PASSWORD)@proxy.corp:3128"
    for template in job_templates_of(objects).values():
        spec = template["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert env_of(container)["AZP_PROXY_PASSWORD"] == {
                "secretKeyRef": {"name": "proxy-login", "key": "password"}
            }


def test_every_agent_container_gets_the_proxy_and_ca_and_the_reconciler_accepts_it(tmp_path: Path) -> None:
    """We test: the built-in and a user's job template get AZP_PROXY_URL, AZP_PROXY_BYPASS and AZP_CA_CERT_FILE
    on every container plus the CA volume, a value the template sets itself is kept, and the Jobs the reconciler
    renders from them carry it (and pass its pod policy)."""
    user = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [{"name": "register", "image": "example.com/agent:1", "args": ["register"]}],
                    "containers": [
                        {
                            "name": "agent",
                            "image": "example.com/agent:1",
                            "args": ["run"],
                            "env": [{"name": "AZP_PROXY_URL", "value": "http://other:8080"}],
                        }
                    ],
                }
            }
        },
    }
    values = {
        **NETWORK,
        "jobTemplates": {"custom": user},
        "pools": [{"name": "linux", "jobTemplate": "linux"}, {"name": "custom", "jobTemplate": "custom"}],
    }
    objects = render_chart(values)
    jobs = agent_jobs(objects, tmp_path)
    assert len(jobs) == 2
    for job in jobs:
        spec = job["spec"]["template"]["spec"]
        assert any(v.get("configMap", {}).get("name") == "corp-ca" for v in spec["volumes"])
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = env_of(container)
            assert env["AZP_CA_CERT_FILE"] == CA_FILE
            assert env["AZP_PROXY_BYPASS"] == r"https://tfs\.corp/.*"
            assert env["AZP_PROXY_URL"] in ("http://proxy.corp:3128", "http://other:8080")
            assert "/etc/azp-agents/ca" in {m["mountPath"] for m in container.get("volumeMounts", [])}
    custom = jobs[1]["spec"]["template"]["spec"]  # the second pool's
    assert env_of(custom["containers"][0])["AZP_PROXY_URL"] == "http://other:8080"


def test_bad_network_values_are_refused_by_key() -> None:
    """We test: a proxy URL without http(s)://, a CA in both a ConfigMap and a Secret, and proxy credentials
    without a proxy are refused with the key named."""
    assert "proxy.url" in render_failure(with_defaults(proxy={"url": "proxy.corp:3128"}))
    both = render_failure(with_defaults(caBundle={"configMap": "a", "existingSecret": "b"}))
    assert "caBundle.configMap and caBundle.existingSecret" in both
    assert "proxy.existingSecret" in render_failure(with_defaults(proxy={"existingSecret": "login"}))
