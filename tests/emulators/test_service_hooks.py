"""We test the emulator's service hooks: the subscriptions API (validation, scopes, masked secrets) and the
delivery of `ms.vss-pipelines.job-state-changed-event` (shape, basic auth, retries, 410, loss)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import requests

from azp_simulation.azdo_emulator import AzureDevOpsEmulator
from azp_simulation.hooks import EVENT_TYPE, HookDelivery

PAT = "hooks-pat-0123456789"
POOLS_ONLY = "pools-pat-0123456789"


class Consumer(HTTPServer):
    """A web hook consumer that records posts and answers with the queued statuses (then 200)."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.statuses: list[int] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"


class _Handler(BaseHTTPRequestHandler):
    server: Consumer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.posts.append((dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def consumer() -> Iterator[Consumer]:
    server = Consumer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def emulator() -> Iterator[AzureDevOpsEmulator]:
    with AzureDevOpsEmulator() as emu:
        emu.add_pat(PAT, scopes=("vso.agentpools_manage", "vso.hooks_write"))
        emu.add_pat(POOLS_ONLY, scopes=("vso.agentpools_manage",))
        emu.hooks.delivery = HookDelivery(delay=(0.0, 0.0), late=0.0)
        yield emu


def subscription(emu: AzureDevOpsEmulator, url: str, **changes: Any) -> dict[str, Any]:
    body = {
        "publisherId": "pipelines",
        "eventType": EVENT_TYPE,
        "resourceVersion": "5.1-preview.1",
        "consumerId": "webHooks",
        "consumerActionId": "httpRequest",
        "publisherInputs": {"projectId": emu.project_id, "jobStateId": "Waiting"},
        "consumerInputs": {"url": url, "basicAuthUsername": "azp", "basicAuthPassword": "s3cret"},
    }
    body.update(changes)
    return body


def post(emu: AzureDevOpsEmulator, body: Any, pat: str = PAT) -> requests.Response:
    return requests.post(
        f"{emu.base_url}/_apis/hooks/subscriptions", params={"api-version": "7.1"}, json=body, auth=("", pat), timeout=5
    )


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)
    assert condition()


def test_subscriptions_api_validates_and_masks(emulator: AzureDevOpsEmulator, consumer: Consumer) -> None:
    """We test: another event gets 400, an unknown project 404, a PAT without vso.hooks_write 403 on POST
    and without a hooks scope 403 on GET; a good subscription is stored enabled and its password is
    never read back."""
    assert post(emulator, subscription(emulator, consumer.url, eventType="build.complete")).status_code == 400
    unknown = subscription(emulator, consumer.url, publisherInputs={"projectId": "nope"})
    assert post(emulator, unknown).status_code == 404
    assert post(emulator, subscription(emulator, consumer.url), pat=POOLS_ONLY).status_code == 403
    listed = requests.get(
        f"{emulator.base_url}/_apis/hooks/subscriptions",
        params={"api-version": "7.1"},
        auth=("", POOLS_ONLY),
        timeout=5,
    )
    assert listed.status_code == 403
    created = post(emulator, subscription(emulator, consumer.url))
    assert created.status_code == 200
    assert created.json()["status"] == "enabled"
    assert created.json()["consumerInputs"]["basicAuthPassword"] == "********"
    assert "s3cret" not in json.dumps(emulator.hooks.subscriptions())


def test_a_waiting_job_is_posted_with_the_real_shape(emulator: AzureDevOpsEmulator, consumer: Consumer) -> None:
    """We test: queuing a job posts one event with basic auth and the sample's shape: event type,
    publisher, project, the job's id (the request's jobId), attempt and state 'waiting', the run and
    pipeline, resource containers; no pool and no request id anywhere in it."""
    assert post(emulator, subscription(emulator, consumer.url)).status_code == 200
    pool = emulator.add_pool("linux")
    emulator.add_agent(pool["id"], "placeholder", enabled=False, capabilities={"docker": ""})
    request_id = emulator.queue_request(pool["id"], demands=("docker",))
    wait_for(lambda: len(consumer.posts) == 1)
    headers, event = consumer.posts[0]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"azp:s3cret").decode()
    assert event["eventType"] == EVENT_TYPE and event["publisherId"] == "pipelines"
    resource = event["resource"]
    job_id = next(r["jobId"] for r in emulator.requests(pool["id"]) if r["requestId"] == request_id)
    assert resource["job"] == {"id": job_id, "name": "Job", "attempt": 1, "state": "waiting"}
    assert resource["projectId"] == emulator.project_id
    assert set(resource) == {"projectId", "job", "stage", "run", "pipeline", "repositories"}
    assert event["resourceContainers"]["project"]["id"] == emulator.project_id
    assert "poolId" not in json.dumps(event) and str(request_id) not in json.dumps(resource["job"])


def test_delivery_retries_then_a_410_disables(emulator: AzureDevOpsEmulator, consumer: Consumer) -> None:
    """We test: a 503 is retried (after 1 s) until a 2xx; a 410 disables the subscription and later jobs
    are not posted; a job that fails at once (no agent could ever run it) is never posted."""
    assert post(emulator, subscription(emulator, consumer.url)).status_code == 200
    pool = emulator.add_pool("linux")
    emulator.add_agent(pool["id"], "placeholder", enabled=False, capabilities={"docker": ""})
    consumer.statuses = [503]
    emulator.queue_request(pool["id"], demands=("docker",))
    wait_for(lambda: emulator.hooks.records[0].delivered is not None)
    assert emulator.hooks.records[0].attempts == 2 and len(consumer.posts) == 2
    emulator.queue_request(pool["id"], demands=("java",))
    assert len(emulator.hooks.records) == 1
    consumer.statuses = [410]
    emulator.queue_request(pool["id"], demands=("docker",))
    wait_for(lambda: emulator.hooks.subscriptions()[0]["status"] == "disabledBySystem")
    emulator.queue_request(pool["id"], demands=("docker",))
    time.sleep(0.3)
    assert len(consumer.posts) == 3


def test_lost_events_are_never_posted(emulator: AzureDevOpsEmulator, consumer: Consumer) -> None:
    """We test: with loss 1.0 every event is recorded as lost and nothing is posted."""
    emulator.hooks.delivery = HookDelivery(loss=1.0)
    assert post(emulator, subscription(emulator, consumer.url)).status_code == 200
    pool = emulator.add_pool("linux")
    emulator.add_agent(pool["id"], "placeholder", enabled=False, capabilities={"docker": ""})
    for _ in range(5):
        emulator.queue_request(pool["id"], demands=("docker",))
    time.sleep(0.3)
    assert [r.lost for r in emulator.hooks.records] == [True] * 5 and consumer.posts == []


PROJECTS_PAT = "projects-pat-0123456789"


def get(emu: AzureDevOpsEmulator, path: str, pat: str = PROJECTS_PAT, **params: str) -> requests.Response:
    return requests.get(f"{emu.base_url}/{path}", params={"api-version": "7.1", **params}, auth=("", pat), timeout=5)


def test_projects_and_their_queues(emulator: AzureDevOpsEmulator) -> None:
    """We test: the projects list needs vso.project and pages with $top/$skip; a project's queues of the
    given pools name the pool, by project id or name; a pool the project has no queue for is left out; an
    unknown project is a 404; the queue route is not served outside a project; a job request carries its
    project as scopeId and its project's queue as queueId, and a project without a queue cannot queue."""
    emulator.add_pat(PROJECTS_PAT, scopes=("vso.agentpools", "vso.project"))
    web = emulator.add_project("web")
    linux = emulator.add_pool("linux", projects=(emulator.project_id, web))["id"]
    gpu = emulator.add_pool("gpu", projects=("web",))["id"]
    assert get(emulator, "_apis/projects", pat=POOLS_ONLY).status_code == 403
    listed = get(emulator, "_apis/projects").json()
    assert {p["name"]: p["id"] for p in listed["value"]} == {"project": emulator.project_id, "web": web}
    assert [p["name"] for p in get(emulator, "_apis/projects", **{"$top": "1", "$skip": "1"}).json()["value"]] == [
        "web"
    ]
    pools = f"{linux},{gpu}"
    for reference in (web, "WEB"):
        queues = get(emulator, f"{reference}/_apis/distributedtask/queues", poolIds=pools).json()["value"]
        assert sorted((q["pool"]["id"], q["pool"]["name"], q["projectId"]) for q in queues) == [
            (linux, "linux", web),
            (gpu, "gpu", web),
        ]
    default = get(emulator, f"{emulator.project_id}/_apis/distributedtask/queues", poolIds=str(gpu)).json()
    assert default == {"count": 0, "value": []}
    assert get(emulator, "nope/_apis/distributedtask/queues", poolIds=pools).status_code == 404
    assert get(emulator, "_apis/distributedtask/queues", poolIds=pools).status_code == 404
    emulator.add_agent(gpu, "placeholder", enabled=False, capabilities={"docker": ""})
    request_id = emulator.queue_request(gpu, demands=("docker",))
    request = next(r for r in emulator.requests(gpu) if r["requestId"] == request_id)
    web_queue = next(
        q["id"] for q in get(emulator, f"{web}/_apis/distributedtask/queues").json()["value"] if q["pool"]["id"] == gpu
    )
    assert (request["scopeId"], request["queueId"]) == (web, web_queue)
    assert web in request["definition"]["_links"]["self"]["href"]
    with pytest.raises(ValueError, match="no queue"):
        emulator.queue_request(gpu, project=emulator.project_id)


def test_a_job_is_posted_only_to_its_projects_subscriptions(emulator: AzureDevOpsEmulator, consumer: Consumer) -> None:
    """We test: with subscriptions in two projects, a job queued by one project's pipeline is posted once, to
    that project's subscription, with that project's id in the resource and the resource containers."""
    web = emulator.add_project("web")
    assert post(emulator, subscription(emulator, consumer.url)).status_code == 200
    web_url = consumer.url + "/web"
    web_subscription = subscription(emulator, web_url, publisherInputs={"projectId": web, "jobStateId": "Waiting"})
    web_id = post(emulator, web_subscription).json()["id"]
    pool = emulator.add_pool("linux", projects=(emulator.project_id, web))["id"]
    emulator.add_agent(pool, "placeholder", enabled=False, capabilities={"docker": ""})
    emulator.queue_request(pool, demands=("docker",), project="web")
    wait_for(lambda: len(consumer.posts) == 1)
    time.sleep(0.3)
    assert len(consumer.posts) == 1
    event = consumer.posts[0][1]
    assert event["subscriptionId"] == web_id
    assert event["resource"]["projectId"] == web and event["resourceContainers"]["project"]["id"] == web
    emulator.queue_request(pool, demands=("docker",))
    wait_for(lambda: len(consumer.posts) == 2)
    assert consumer.posts[1][1]["resource"]["projectId"] == emulator.project_id


def test_a_runs_timeline_names_the_queue_of_its_job(emulator: AzureDevOpsEmulator, consumer: Consumer) -> None:
    """We test: the run id a job's event carries leads to the run's timeline in the job's project, whose Job
    record (id = the job's id, state pending while it waits) names the queue the job was queued to; the route
    needs vso.build, and a run of another project is a 404 there."""
    emulator.add_pat(PROJECTS_PAT, scopes=("vso.agentpools", "vso.build"))
    web = emulator.add_project("web")
    assert post(emulator, subscription(emulator, consumer.url)).status_code == 200
    pool = emulator.add_pool("linux", projects=(web, emulator.project_id))["id"]
    emulator.add_agent(pool, "placeholder", enabled=False, capabilities={"docker": ""})
    emulator.queue_request(pool, demands=("docker",), project=emulator.project_id)
    wait_for(lambda: len(consumer.posts) == 1)
    resource = consumer.posts[0][1]["resource"]
    path = f"{emulator.project_id}/_apis/build/builds/{resource['run']['id']}/timeline"
    assert get(emulator, path, pat=POOLS_ONLY).status_code == 403
    records = get(emulator, path).json()["records"]
    (job,) = [r for r in records if r["id"] == resource["job"]["id"]]
    queues = get(emulator, f"{emulator.project_id}/_apis/distributedtask/queues", poolIds=str(pool)).json()
    assert (job["type"], job["state"], job["queueId"]) == ("Job", "pending", queues["value"][0]["id"])
    assert get(emulator, f"{web}/_apis/build/builds/{resource['run']['id']}/timeline").status_code == 404
