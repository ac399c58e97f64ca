"""We test the service hook receiver and metrics objects: the webhook Deployment, Service, Ingress and
Secret, the ServiceMonitor, the Grafana dashboard ConfigMap, the CronJob's Pushgateway flag, and the
values helm refuses for them."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from chart_helpers import TEST_PAT, find, only, render_chart, render_failure, with_defaults

SECRET = "hook-secret-0a1b2c3d4e5f"
HTTPS = {"enabled": True, "secret": SECRET, "tlsSecretName": "hooks-tls"}


def _render(**overrides: Any) -> list[dict[str, Any]]:
    return render_chart(with_defaults(**overrides))


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = only(objects, "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_disabled_by_default() -> None:
    """We test: the default values render no receiver, Secret of it, ServiceMonitor or dashboard."""
    objects = _render()
    assert find(objects, "Deployment") == [] and find(objects, "Service") == [] and find(objects, "Ingress") == []
    assert find(objects, "ServiceMonitor") == []
    assert [o["metadata"]["name"] for o in find(objects, "Secret")] == ["azp-agents-pat"]
    assert find(objects, "ConfigMap", "azp-agents-dashboard") == []


def test_receiver_serves_https_with_the_mounted_secret_and_certificate() -> None:
    """We test: `serve` runs with the TLS files and the secret file mounted from their Secrets, the secret
    is only in its own Secret (never in the command line or a ConfigMap), the pod stays locked down,
    probes use HTTPS, and the Service selects exactly the receiver's pod."""
    objects = _render(webhook=HTTPS)
    container = _container(objects)
    command = container["command"]
    assert command[:2] == ["azp-reconciler", "serve"]
    assert command[command.index("--tls-cert") + 1] == "/var/run/secrets/azp-tls/tls.crt"
    assert command[command.index("--secret-file") + 1] == "/var/run/secrets/azp-hook/secret"
    assert "--insecure-http" not in command
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "hooks-tls"
    assert volumes["hook-secret"]["secret"]["secretName"] == "azp-agents-webhook"
    assert pod["restartPolicy"] == "Always" and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    secret = only(objects, "Secret", "azp-agents-webhook")
    assert set(secret["data"]) == {"secret"}
    for obj in objects:
        if obj["kind"] != "Secret":
            assert SECRET not in json.dumps(obj), obj["kind"]
        if obj is not find(objects, "Secret", "azp-agents-pat")[0]:
            assert TEST_PAT not in json.dumps(obj), obj["kind"]
    service = only(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "hooks"


def test_existing_secret_and_plain_http_behind_an_ingress() -> None:
    """We test: with existingSecret no Secret is rendered and the pod mounts the given one; insecureHttp
    serves plain HTTP; the Ingress exposes only the hook path on the host, with its TLS Secret."""
    webhook = {
        "enabled": True,
        "existingSecret": "my-hook",
        "insecureHttp": True,
        "ingress": {"enabled": True, "host": "hooks.example.com", "tlsSecretName": "public-tls", "className": "nginx"},
    }
    objects = _render(webhook=webhook)
    assert find(objects, "Secret", "azp-agents-webhook") == []
    container = _container(objects)
    assert "--insecure-http" in container["command"] and "--tls-cert" not in container["command"]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["hook-secret"]["secret"]["secretName"] == "my-hook"
    ingress = only(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["hooks.example.com"], "secretName": "public-tls"}]
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/hooks/azure-devops"]


def test_helm_test_checks_the_hooks_of_the_public_url() -> None:
    """We test: with the receiver behind an Ingress, the `helm test` pod's check is given the public hook URL
    (so it verifies the projects' subscriptions); without an Ingress, or without the receiver, it is not."""
    webhook = {**HTTPS, "ingress": {"enabled": True, "host": "hooks.example.com"}}

    def check_command(**overrides: Any) -> list[str]:
        pod = only(_render(**overrides), "Pod")
        command: list[str] = pod["spec"]["containers"][0]["command"]
        return command

    with_ingress = check_command(webhook=webhook)
    assert with_ingress[with_ingress.index("--hooks-url") + 1] == "https://hooks.example.com/hooks/azure-devops"
    assert "--hooks-url" not in check_command(webhook=HTTPS)
    assert "--hooks-url" not in check_command()


def test_service_monitor_and_dashboard() -> None:
    """We test: the ServiceMonitor scrapes /metrics on the receiver's port with the extra labels; the
    dashboard ConfigMap carries grafana_dashboard: "1" and a dashboard whose queries use our metrics."""
    objects = _render(
        webhook=HTTPS,
        metrics={
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
            "dashboard": {"enabled": True},
        },
    )
    monitor = only(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "hooks" and endpoint["path"] == "/metrics" and endpoint["scheme"] == "https"
    assert endpoint["interval"] == "15s"
    dashboard_map = only(objects, "ConfigMap", "azp-agents-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["azp-agents.json"])
    queries = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in ("azp_requests_queued", "azp_agents", "azp_jobs_total", "azp_azdo_throttled_total"):
        assert metric in queries


def test_cron_job_pushes_to_the_pushgateway_when_configured() -> None:
    """We test: metrics.pushgateway adds --pushgateway URL to the CronJob's command; unset, it does not."""
    pushed = only(_render(metrics={"pushgateway": "http://pushgateway.monitoring:9091"}), "CronJob")
    command = pushed["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--pushgateway") + 1] == "http://pushgateway.monitoring:9091"
    plain = only(_render(), "CronJob")
    assert "--pushgateway" not in plain["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]


@pytest.mark.parametrize("version", [kubernetes_validate.latest_version()])
def test_new_objects_are_valid_kubernetes(version: str) -> None:
    """We test: the Deployment, Service, Ingress and Secret pass kubernetes-validate (strict); the
    ServiceMonitor is a CRD it does not know, so only its apiVersion and kind are checked."""
    webhook = {**HTTPS, "ingress": {"enabled": True, "host": "hooks.example.com"}}
    objects = _render(webhook=webhook, metrics={"serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True}})
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"webhook": {"enabled": True, "tlsSecretName": "t"}}, "webhook.secret: set a long random string"),
        ({"webhook": {**HTTPS, "existingSecret": "x"}}, "set only one of them"),
        ({"webhook": {"enabled": True, "secret": SECRET}}, "webhook.tlsSecretName"),
        ({"webhook": {**HTTPS, "insecureHttp": True}}, "set exactly one"),
        ({"webhook": {**HTTPS, "ingress": {"enabled": True}}}, "webhook.ingress.host"),
        ({"metrics": {"serviceMonitor": {"enabled": True}}}, "needs webhook.enabled"),
        ({"metrics": {"pushgateway": "pushgateway:9091"}}, "pushgateway"),
        ({"webhook": {"enabled": True, "prot": 1}}, "prot"),
    ],
    ids=[
        "no-secret",
        "two-secrets",
        "no-tls",
        "tls-and-http",
        "ingress-without-host",
        "monitor-alone",
        "bad-url",
        "typo",
    ],
)
def test_bad_values_are_refused_with_the_key_named(values: dict[str, Any], message: str) -> None:
    """We test: each mistake fails helm with a message naming the key (and the fix)."""
    assert message in render_failure(with_defaults(**values))
