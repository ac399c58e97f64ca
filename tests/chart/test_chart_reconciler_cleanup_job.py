"""We test the reconciler's cleanup Job: a Helm pre-delete hook that runs `azp-reconciler cleanup` with the
CronJob's pod (service account, config, PAT, locked-down container) and is removed once it succeeded."""

from __future__ import annotations

from typing import Any

from chart_helpers import NAMESPACE, only, render_chart, with_defaults

SHOW = ["templates/reconciler-cleanup-job.yaml"]


def _job(**overrides: Any) -> dict[str, Any]:
    return dict(only(render_chart(with_defaults(**overrides), show_only=SHOW), "Job"))


def test_pre_delete_hook_runs_cleanup_with_the_reconcilers_pod() -> None:
    """We test: the hook annotations, one attempt with a deadline, the cleanup command line, and the same
    service account, mounts and security context as the reconciler CronJob's pod."""
    job = _job()
    metadata = job["metadata"]
    assert metadata["name"] == "azp-agents-reconciler-cleanup" and metadata["namespace"] == NAMESPACE
    assert metadata["annotations"]["helm.sh/hook"] == "pre-delete"
    assert metadata["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 300
    pod = job["spec"]["template"]["spec"]
    cron = only(render_chart(with_defaults(), show_only=["templates/reconciler-cronjob.yaml"]), "CronJob")
    cron_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == [
        "azp-reconciler",
        "cleanup",
        "--config",
        "/etc/azp-agents/config.yaml",
        "--log-format",
        "text",
    ]
    [cron_container] = cron_pod["containers"]
    assert container["volumeMounts"] == cron_container["volumeMounts"]
    assert container["securityContext"] == cron_container["securityContext"]
    for key in ("serviceAccountName", "volumes", "securityContext", "restartPolicy"):
        assert pod[key] == cron_pod[key], key


def test_pod_labels_and_annotations_follow_the_reconciler_values() -> None:
    """We test: reconciler.podLabels and podAnnotations reach the cleanup pod too."""
    job = _job(reconciler={"podLabels": {"team": "ci"}, "podAnnotations": {"example.com/x": "1"}})
    template = job["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "ci" and template["annotations"] == {"example.com/x": "1"}
