"""We test the reconciler CronJob: schedule and deadlines, one run at a time, the command line, the
mounts of config, templates and PAT, the locked-down pod, and the config checksum."""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import NAMESPACE, find, only, render_chart, with_defaults

SHOW = ["templates/reconciler-cronjob.yaml"]


def _cron_job(**overrides: Any) -> dict[str, Any]:
    return dict(only(render_chart(with_defaults(**overrides), show_only=SHOW), "CronJob"))


def _pod(cron_job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def test_defaults() -> None:
    """We test: every minute, Forbid, a starting deadline, history limits, and a run deadline below a minute."""
    cron_job = _cron_job()
    spec = cron_job["spec"]
    assert cron_job["metadata"] == {**cron_job["metadata"], "name": "azp-agents-reconciler", "namespace": NAMESPACE}
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 30
    assert spec["successfulJobsHistoryLimit"] == 1 and spec["failedJobsHistoryLimit"] == 3
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 50
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert "timeZone" not in spec


@pytest.mark.parametrize(
    ("schedule", "deadline"),
    [
        ("*/5 * * * *", 290),
        ("0,30 * * * *", 1790),
        ("*/7 * * * *", 230),  # minute 56 is followed by minute 0: four minutes, the shortest gap
        ("15 * * * *", 3590),
        ("0 */6 * * *", 21590),
        ("30 2 * * *", 86390),
        ("@hourly", 3590),
        ("@daily", 86390),
        ("*/2 8-18 * * MON-FRI", 110),
    ],
)
def test_run_deadline_follows_the_schedule(schedule: str, deadline: int) -> None:
    """We test: with activeDeadlineSeconds 0 a run may last the shortest gap between runs minus 10 s."""
    cron_job = _cron_job(reconciler={"schedule": schedule})
    assert cron_job["spec"]["schedule"] == schedule
    assert cron_job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == deadline


def test_explicit_deadline_and_time_zone() -> None:
    """We test: activeDeadlineSeconds and timeZone are passed through when set."""
    cron_job = _cron_job(
        reconciler={
            "schedule": "*/5 * * * *",
            "activeDeadlineSeconds": 120,
            "timeZone": "Europe/Amsterdam",
            "suspend": True,
        }
    )
    assert cron_job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 120
    assert cron_job["spec"]["timeZone"] == "Europe/Amsterdam"
    assert cron_job["spec"]["suspend"] is True


def test_command_and_log_format() -> None:
    """We test: the container runs `azp-reconciler reconcile --config ...` with the chosen log format and
    the run's deadline (the CronJob's activeDeadlineSeconds), which bounds every call of the run."""
    cron_job = _cron_job(reconciler={"logFormat": "json"})
    container = _pod(cron_job)["containers"][0]
    assert container["command"] == [
        "azp-reconciler",
        "reconcile",
        "--config",
        "/etc/azp-agents/config.yaml",
        "--log-format",
        "json",
        "--deadline",
        str(cron_job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]),
    ]
    assert container["image"] == "ghcr.io/azp-agents/reconciler:0.1.0"


def test_image_digest_wins_over_tag() -> None:
    """We test: a digest pins the image."""
    digest = "sha256:" + "a" * 64
    container = _pod(_cron_job(reconciler={"image": {"repository": "r.example/rec", "tag": "1.2", "digest": digest}}))
    assert container_image(container) == f"r.example/rec@{digest}"


def container_image(pod_or_container: dict[str, Any]) -> str:
    """The image of a container, or of a pod's first container."""
    container = pod_or_container["containers"][0] if "containers" in pod_or_container else pod_or_container
    image: str = container["image"]
    return image


def test_mounts() -> None:
    """We test: config and templates at /etc/azp-agents, the PAT file at /var/run/secrets/azp/pat, /tmp writable."""
    pod = _pod(
        _cron_job(
            jobTemplates={"linux": "", "java": ""},
            auth={"pat": "", "existingSecret": "mine", "existingSecretKey": "token"},
        )
    )
    container = pod["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/azp-agents", "readOnly": True}
    assert mounts["pat"] == {"name": "pat", "mountPath": "/var/run/secrets/azp", "readOnly": True}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "azp-agents-config"
    assert volumes["config"]["configMap"]["items"] == [
        {"key": "config.yaml", "path": "config.yaml"},
        {"key": "java.yaml", "path": "templates/java.yaml"},
        {"key": "linux.yaml", "path": "templates/linux.yaml"},
    ]
    assert volumes["pat"]["secret"]["secretName"] == "mine"
    assert volumes["pat"]["secret"]["items"] == [{"key": "token", "path": "pat"}]
    assert "emptyDir" in volumes["tmp"]


def test_pod_security() -> None:
    """We test: non-root 10001, read-only root, no capabilities, RuntimeDefault seccomp, API token mounted."""
    pod = _pod(_cron_job())
    assert pod["serviceAccountName"] == "azp-agents-reconciler"
    assert pod["automountServiceAccountToken"] is True
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = pod["containers"][0]["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["containers"][0]["resources"]["limits"]["memory"] == "256Mi"


def test_config_checksum_changes_with_the_config() -> None:
    """We test: the pod template's checksum/config annotation follows the rendered config."""

    def checksum(**overrides: Any) -> str:
        annotations = _cron_job(**overrides)["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    assert checksum() == checksum()
    assert checksum() != checksum(pools=[{"name": "Other"}])


def test_pod_labels_annotations_and_scheduling() -> None:
    """We test: podLabels, podAnnotations, nodeSelector, tolerations and pull secrets reach the pod."""
    cron_job = _cron_job(
        imagePullSecrets=["regcred"],
        reconciler={
            "podLabels": {"team": "ci"},
            "podAnnotations": {"a": "b"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "priorityClassName": "high",
        },
    )
    template = cron_job["spec"]["jobTemplate"]["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "ci"
    assert template["metadata"]["annotations"]["a"] == "b"
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert template["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert template["spec"]["priorityClassName"] == "high"
    assert template["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_job_labels_never_look_like_agent_jobs() -> None:
    """We test: the reconciler's own Jobs are not selected by the reconciler's agent-Job selector."""
    cron_job = _cron_job()
    labels = cron_job["spec"]["jobTemplate"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] != "azp-agents"
    assert not find([cron_job], "Job")
