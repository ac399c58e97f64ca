"""We test: the chart's reconciler CronJob under the real CronJob controller, and
`kubectl create job --from=cronjob/...` against the real server."""

from __future__ import annotations

import time
from pathlib import Path

from control_plane import ControlPlane
from realkube_helpers import api, run
from release import install

from azp_simulation.kubelet import Kubelet


def _owners(plane: ControlPlane, namespace: str) -> set[str]:
    """Names of the owners of the namespace's Jobs."""
    jobs = api(plane, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    return {ref["name"] for job in jobs for ref in job["metadata"].get("ownerReferences") or []}


def test_cronjob_fires_and_creates_a_job_by_hand(
    control_plane: ControlPlane, kubelet: Kubelet, organization: str, namespace: str, tmp_path: Path
) -> None:
    """We test: with the schedule `* * * * *` the real CronJob controller creates a Job owned by the
    chart's CronJob within its first minute, whose pod (Pod Security `restricted` enforced) is created
    and bound; `kubectl create job --from=cronjob/...` makes one more from the same template."""
    install(control_plane, organization, namespace, tmp_path, {"reconciler": {"schedule": "* * * * *"}})
    (cronjob,) = api(control_plane, "GET", f"/apis/batch/v1/namespaces/{namespace}/cronjobs")["items"]
    name = cronjob["metadata"]["name"]
    run(
        "kubectl",
        "create",
        "job",
        "by-hand",
        f"--from=cronjob/{name}",
        "-n",
        namespace,
        kubeconfig=control_plane.kubeconfig,
    )
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline:
        if name in _owners(control_plane, namespace):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"the CronJob controller created no Job for {name} within 75 s")
    pods = api(control_plane, "GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    assert {p["metadata"]["labels"]["job-name"] for p in pods} >= {"by-hand"}
