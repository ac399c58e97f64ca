"""Where agents run: the backend protocol that apply and observe use, and its Kubernetes implementation.

`plan()` never sees a backend: it plans over AgentJob/AgentPod snapshots (model.py) and emits actions
naming a `namespace` and a `job_name`. A backend lists its workloads as those snapshots, turns a
CreateJob into its own object (a batch/v1 Job, an ACI container group) and creates or deletes it.
For Kubernetes a scope is a namespace; for Azure Container Instances it is a resource group.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from reconciler import names, render
from reconciler.errors import ConfigError
from reconciler.model import AgentJob, AgentPod, Config, PoolConfig, TemplateConfig

if TYPE_CHECKING:
    from reconciler.config import Credentials
    from reconciler.deadline import Deadline
    from reconciler.kube import Kubernetes


class Backend(Protocol):
    """What the reconciler needs from the place agents run."""

    kind: str
    """What one workload is called in log lines: "Job", "container group"."""

    @property
    def call_count(self) -> int: ...

    def list_workloads(self, scope: str, *, owner: names.Owner) -> tuple[list[AgentJob], list[AgentPod]]:
        """The workloads of this release's shard in one scope, each as a Job and the pod that runs its agent."""
        ...

    def render(
        self,
        *,
        config: Config,
        pool: PoolConfig,
        template: TemplateConfig,
        job_template: Mapping[str, Any],
        job_name: str,
        request_id: int | None,
        demands: tuple[str, ...],
        agent_id: int | None = None,
        crash_failures: int = 0,
    ) -> dict[str, Any]:
        """The object that runs one agent of `template`, from the user's template; `agent_id`: the agent the
        reconciler registered for it (agents.registration reconciler), whose files `hand_over` gives it;
        `crash_failures`: a named instance's failures in a row (CreateJob.crash_failures), kept on the object."""
        ...

    def create(self, manifest: Mapping[str, Any]) -> str | None:
        """Create (or start creating) the object: its id (what owns what is handed over to it); None when it
        already existed."""
        ...

    def hand_over(self, manifest: Mapping[str, Any], *, files: Mapping[str, str], uid: str) -> None:
        """Give the created object its agent's files, owned by it (deleted with it)."""
        ...

    def delete(self, scope: str, name: str) -> bool:
        """Delete the object; False when it was already gone."""
        ...

    def post_event(
        self, *, namespace: str, job_name: str, reason: str, message: str, warning: bool = False, now: datetime
    ) -> None:
        """Record a decision beside the object it concerns, where the backend has a place for it."""
        ...

    def close(self) -> None: ...


class KubernetesBackend:
    """Agents as batch/v1 Jobs in the pools' namespaces (kube.py does the calls)."""

    kind = "Job"

    def __init__(self, kube: Kubernetes) -> None:
        self.kube = kube

    @property
    def call_count(self) -> int:
        return self.kube.call_count

    def list_workloads(self, scope: str, *, owner: names.Owner) -> tuple[list[AgentJob], list[AgentPod]]:
        return self.kube.list_jobs(scope, owner=owner), self.kube.list_pods(scope, owner=owner)

    def render(
        self,
        *,
        config: Config,
        pool: PoolConfig,
        template: TemplateConfig,
        job_template: Mapping[str, Any],
        job_name: str,
        request_id: int | None,
        demands: tuple[str, ...],
        agent_id: int | None = None,
        crash_failures: int = 0,
    ) -> dict[str, Any]:
        # No named instances on Kubernetes (config refuses them): every Job keeps its own history.
        return render.render_job(
            config=config,
            pool=pool,
            template=template,
            job_template=job_template,
            job_name=job_name,
            request_id=request_id,
            demands=demands,
            agent_id=agent_id,
        )

    def create(self, manifest: Mapping[str, Any]) -> str | None:
        return self.kube.create_job_uid(manifest)

    def hand_over(self, manifest: Mapping[str, Any], *, files: Mapping[str, str], uid: str) -> None:
        self.kube.create_secret(render.agent_files_secret(manifest, files=dict(files), job_uid=uid))

    def delete(self, scope: str, name: str) -> bool:
        return self.kube.delete_job(scope, name)

    def post_event(
        self, *, namespace: str, job_name: str, reason: str, message: str, warning: bool = False, now: datetime
    ) -> None:
        self.kube.post_event(
            namespace=namespace, job_name=job_name, reason=reason, message=message, warning=warning, now=now
        )

    def close(self) -> None:
        self.kube.close()


def container_instances(config: Config, credentials: Credentials, *, deadline: Deadline | None = None) -> Backend:
    """The ACI backend (aci.py); a ConfigError saying what to install when the Azure SDK is missing."""
    try:
        from reconciler.aci import ContainerInstances
    except ImportError as exc:
        raise ConfigError(
            f"backend: aci needs the Azure SDK ({exc.name} is missing): install azp-agents[aci] "
            "(pip install 'azp-agents[aci]'); the reconciler image has it"
        ) from None
    return ContainerInstances(config, credentials, deadline=deadline)
