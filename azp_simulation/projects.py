"""Projects and agent queues of the Azure DevOps emulator: which projects can send jobs to which pool.

A pool belongs to the organization; a project uses it through an agent queue ("Queues (called 'pools' in the
UI) connect projects to agent pools", learn.microsoft.com/rest/api/azure/devops/distributedtask/queues). A
pipeline of a project can only queue a job into a pool that project has a queue for, and the job request
then carries the project as `scopeId` and the queue as `queueId` (reference azure-devops-api.md, section 4).

Modelled on:
- Core, Projects - List: `GET {org}/_apis/projects` (learn.microsoft.com/rest/api/azure/devops/core/projects/
  list): a `{count, value}` list of TeamProjectReference {id, name, description, url, state, revision,
  visibility, lastUpdateTime}, paged by `$top` (default 100) and `$skip`; scope `vso.project`.
- Queues - Get Agent Queues For Pools: `GET {org}/{project}/_apis/distributedtask/queues?poolIds=1,2`
  (learn.microsoft.com/rest/api/azure/devops/distributedtask/queues/get-agent-queues-for-pools): the
  project's TaskAgentQueue {id, projectId, name, pool: TaskAgentPoolReference} for those pools; the project
  by id or name; scope `vso.agentpools`. Pools the project has no queue for are left out.

Choices where the sources say nothing [unconfirmed]: an unknown project gets 404 with the TF200016 text
(ProjectDoesNotExistWithNameException); a queue route without a project is not served (the docs give the
route with `{project}` only); the queue is named after its pool (the portal's default when a project adds a
pool). Deliberately not emulated: creating projects or queues over REST, `stateFilter` (every project is
wellFormed), `continuationToken` paging of projects, teams, project-level permissions and the queue's
`actionFilter`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azp_simulation.azdo_support import ApiError, format_time

SCOPE_PROJECT_READ = "vso.project"
SCOPE_BUILD_READ = "vso.build"
DEFAULT_PROJECT = "project"
PROJECTS_PAGE = 100
FIRST_QUEUE_ID = 101


@dataclass(frozen=True)
class Project:
    project_id: str
    name: str
    created: float


class Projects:
    """The organization's projects and their agent queues (project, pool) -> queue id."""

    def __init__(self, *, organization: str, clock: Callable[[], float]) -> None:
        self._organization = organization
        self._clock = clock
        self._lock = threading.RLock()
        self._projects: dict[str, Project] = {}
        self._queues: dict[tuple[str, int], int] = {}
        self._next_queue_id = FIRST_QUEUE_ID
        self.default_id = self.add(DEFAULT_PROJECT)

    def add(self, name: str) -> str:
        """Create a project; its id is derived from the organization and name (stable across runs)."""
        with self._lock:
            if self.find(name) is not None:
                raise ValueError(f"project {name!r} already exists")
            project_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://dev.azure.com/{self._organization}/{name}"))
            self._projects[project_id] = Project(project_id, name, self._clock())
            return project_id

    def find(self, reference: str) -> Project | None:
        """A project by id or by name (names are case-insensitive, as on the service)."""
        with self._lock:
            found = self._projects.get(reference.lower())
            if found is not None:
                return found
            return next((p for p in self._projects.values() if p.name.casefold() == reference.casefold()), None)

    def require(self, reference: str) -> Project:
        project = self.find(reference)
        if project is None:
            raise ApiError(
                404,
                f"TF200016: The following project does not exist: {reference}. Verify that the name of the project "
                "is correct and that the project exists on the specified Azure DevOps Server.",
                "ProjectDoesNotExistWithNameException",
            )
        return project

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._projects)

    def add_queue(self, project_id: str, pool_id: int) -> int:
        """Connect a project to a pool (Project settings > Agent pools > Add); returns the queue id."""
        with self._lock:
            project = self.require(project_id)
            key = (project.project_id, pool_id)
            if key not in self._queues:
                self._queues[key] = self._next_queue_id
                self._next_queue_id += 1
            return self._queues[key]

    def queue_of(self, project_id: str, pool_id: int) -> int | None:
        with self._lock:
            return self._queues.get((project_id, pool_id))

    def projects_of(self, pool_id: int) -> list[str]:
        """Ids of the projects that have a queue for this pool, oldest queue first."""
        with self._lock:
            return [
                project for (project, pool), _ in sorted(self._queues.items(), key=lambda i: i[1]) if pool == pool_id
            ]

    def remove_pool(self, pool_id: int) -> None:
        """Deleting a pool deletes its queues in every project."""
        with self._lock:
            self._queues = {key: queue for key, queue in self._queues.items() if key[1] != pool_id}

    def list_json(self, query: Mapping[str, str], *, base_url: str) -> list[dict[str, Any]]:
        """GET _apis/projects: one page, `$skip` projects in, at most `$top` (default 100)."""
        top, skip = _count(query, "$top", PROJECTS_PAGE), _count(query, "$skip", 0)
        with self._lock:
            ordered = sorted(self._projects.values(), key=lambda p: p.name.casefold())
            return [self._project_json(p, base_url) for p in ordered[skip : skip + top]]

    def _project_json(self, project: Project, base_url: str) -> dict[str, Any]:
        return {
            "id": project.project_id,
            "name": project.name,
            "url": f"{base_url}/_apis/projects/{project.project_id}",
            "state": "wellFormed",
            "revision": 11,
            "visibility": "private",
            "lastUpdateTime": format_time(project.created),
        }

    def queues_json(
        self, reference: str, query: Mapping[str, str], *, pool_json: Callable[[int], dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """GET {project}/_apis/distributedtask/queues?poolIds=: the project's queues of those pools."""
        project = self.require(reference)
        wanted = _pool_ids(query.get("poolids"))
        with self._lock:
            queues = sorted(
                (queue, pool) for (owner, pool), queue in self._queues.items() if owner == project.project_id
            )
        shown = []
        for queue, pool_id in queues:
            pool = pool_json(pool_id) if wanted is None or pool_id in wanted else None
            if pool is not None:
                reference_fields = ("id", "scope", "name", "isHosted", "poolType", "size", "isLegacy", "options")
                shown.append(
                    {
                        "id": queue,
                        "projectId": project.project_id,
                        "name": pool["name"],
                        "pool": {key: pool[key] for key in reference_fields if key in pool},
                    }
                )
        return shown


def _count(query: Mapping[str, str], key: str, default: int) -> int:
    raw = query.get(key)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ApiError(400, f"The value '{raw}' of the parameter {key} is not valid.", "InvalidArgumentValueException")
    return int(raw)


def _pool_ids(raw: str | None) -> set[int] | None:
    if raw is None:
        return None
    try:
        return {int(part) for part in raw.split(",") if part.strip()}
    except ValueError:
        raise ApiError(
            400, f"The value '{raw}' of the parameter poolIds is not valid.", "InvalidArgumentValueException"
        ) from None
