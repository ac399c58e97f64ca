"""Unit tests of plan()'s issue-20 rules: stale capabilities, crash backoff, rescue of lost requests, and the
prevention of the race behind them (a `--once` agent is disabled while it runs its one job)."""

from __future__ import annotations

from dataclasses import replace

from plan_builders import (
    NOW,
    agent,
    ago,
    apply_to_world,
    config,
    job_for,
    of,
    pod_for,
    pool,
    queued,
    running,
    state,
    template,
    world,
)

from reconciler.model import (
    AgentJob,
    AgentPod,
    CreateJob,
    DeleteAgent,
    DeleteJob,
    DisableAgent,
    DrainAgent,
    JobRequest,
    ReportCrashBackoff,
)
from reconciler.plan import CRASH_BACKOFF_BASE, CRASH_BACKOFF_CAP, cleanup_plan, plan, pools_needing_agents


def test_idle_agent_with_stale_capabilities_is_drained_and_not_supply() -> None:
    """We test: after a template's capabilities change, an idle agent advertising the old ones is drained
    at once (not after idleTimeout) and does not count as supply, so a request demanding the new
    capability gets a Job; an agent advertising the new ones (names case-insensitive) is left alone."""
    java21 = template("java", capabilities={"java": "21"}, placeholder=False)
    cfg = config(pool("linux", java21, idle_timeout=3600))
    job = job_for("linux", template_name="java", slot=0, created=900)
    pod = pod_for(job, created=899, started=898)
    old = agent(11, pod.name, changed=30, capabilities={"java": "17", "Agent.Version": "4.269.0"})
    actions = plan(
        cfg, world(state("linux", queued(5, "java -equals 21"), agents=(old,)), jobs=(job,), pods=(pod,)), NOW
    )
    assert [(d.agent_id, d.job_name) for d in of(DrainAgent, actions)] == [(11, job.name)]
    assert "capabilities" in of(DrainAgent, actions)[0].reason
    assert [c.request_id for c in of(CreateJob, actions)] == [5]
    current = agent(11, pod.name, changed=30, capabilities={"JAVA": "21"})
    actions = plan(
        cfg, world(state("linux", queued(5, "java -equals 21"), agents=(current,)), jobs=(job,), pods=(pod,)), NOW
    )
    assert of(DrainAgent, actions) == [] and of(CreateJob, actions) == []


def test_stale_capabilities_never_touch_busy_or_unlisted_agents() -> None:
    """We test: a busy agent with old capabilities is never drained, and without the agent list (not read
    this pass) nothing is judged stale."""
    java21 = template("java", capabilities={"java": "21"}, placeholder=False)
    cfg = config(pool("linux", java21))
    job = job_for("linux", template_name="java", slot=0, created=900)
    pod = pod_for(job, created=899, started=898)
    busy = agent(11, pod.name, busy_with=3, capabilities={"java": "17"})
    assert of(DrainAgent, plan(cfg, world(state("linux", agents=(busy,)), jobs=(job,), pods=(pod,)), NOW)) == []
    assert plan(cfg, world(state("linux"), jobs=(job,), pods=(pod,)), NOW) == []


def _crashed(request_id: int, *, finished: float, generation: int = 0) -> tuple[AgentJob, AgentPod]:
    job = job_for("linux", request_id=request_id, created=finished + 20, failed=True)
    if generation:
        job = replace(job, name=f"{job.name}-g{generation}")
    pod = replace(
        pod_for(job, phase="Failed", created=finished + 19, started=finished + 18, finished=finished),
        reason="Error",
        message="config.sh: 401 Unauthorized",
        exit_code=1,
    )
    return job, pod


def test_pods_failing_before_their_agent_came_online_back_off_exponentially() -> None:
    """We test: after the n-th pod of a template failed before its agent came online, no new Job is made
    for CRASH_BACKOFF_BASE * 2**(n-1) after the failure; meanwhile a report names the last failed Job with
    its reason, exit code and termination message; once the backoff has passed the request gets a Job."""
    one = _crashed(1, finished=5)
    actions = plan(config(), world(state("linux", queued(1)), jobs=(one[0],), pods=(one[1],)), NOW)
    assert of(CreateJob, actions) == []
    [report] = of(ReportCrashBackoff, actions)
    assert (report.failures, report.job_name, report.retry_at) == (1, one[0].name, ago(5) + CRASH_BACKOFF_BASE)
    assert report.reason == "Error (exit code 1): config.sh: 401 Unauthorized"
    later = plan(config(), world(state("linux", queued(1)), jobs=(one[0],), pods=(one[1],)), ago(-10))
    assert [c.job_name for c in of(CreateJob, later)] == ["azp-eeca0-linux-1-g1"] and of(
        ReportCrashBackoff, later
    ) == []
    three = [_crashed(1, finished=30), _crashed(1, finished=20, generation=1), _crashed(1, finished=10, generation=2)]
    w = world(state("linux", queued(1)), jobs=tuple(j for j, _ in three), pods=tuple(p for _, p in three))
    [report] = of(ReportCrashBackoff, plan(config(), w, NOW))
    assert (report.failures, report.retry_at) == (3, ago(10) + 4 * CRASH_BACKOFF_BASE)


def test_crash_backoff_is_capped_reset_by_a_success_and_per_template() -> None:
    """We test: the backoff never exceeds CRASH_BACKOFF_CAP; a pod of the template that succeeded after the
    failures resets it; another template of the pool is not held back; nothing is reported with no demand."""
    many = [_crashed(1, finished=5 + n, generation=n) for n in range(12)]
    jobs, pods = tuple(j for j, _ in many), tuple(p for _, p in many)
    [report] = of(ReportCrashBackoff, plan(config(), world(state("linux", queued(1)), jobs=jobs, pods=pods), NOW))
    assert report.retry_at == ago(5) + CRASH_BACKOFF_CAP
    ok_job = job_for("linux", request_id=2, created=8, finished=3)
    ok_pod = pod_for(ok_job, phase="Succeeded", finished=3)
    w = world(state("linux", queued(1)), jobs=(*jobs, ok_job), pods=(*pods, ok_pod))
    assert len(of(CreateJob, plan(config(), w, NOW))) == 1
    cfg = config(pool("linux", template("default", placeholder=False), template("java", capabilities={"java": ""})))
    w = world(state("linux", queued(1), queued(3, "java")), jobs=jobs, pods=pods)
    assert [c.request_id for c in of(CreateJob, plan(cfg, w, NOW))] == [3]
    assert plan(config(), world(state("linux"), jobs=jobs, pods=pods), NOW) == []


def _assigned(request_id: int, agent_name: str, agent_id: int, *, at: float) -> JobRequest:
    """A request the service assigned to an agent that has not received it."""
    return JobRequest(
        request_id=request_id,
        queue_time=ago(at + 5),
        assign_time=ago(at),
        reserved_agent_id=agent_id,
        reserved_agent_name=agent_name,
    )


def test_request_held_by_an_agent_whose_pod_finished_or_vanished_is_released() -> None:
    """We test: a request assigned to an agent of ours that never received it is released by deleting that
    agent when its pod finished (the exiting --once agent race) or is gone for longer than TTL_GRACE
    (eviction) and the agent list shows it offline; never when the job started, the pod still runs, the pod
    vanished only just now, the listed agent is online, or the agent is not ours. Without the agent list
    nothing is rescued (the service refuses to delete an agent it still shows online with a job assigned,
    as in the exiting agent's last seconds), and the pool's agents are listed in the next pass."""
    done_job = job_for("linux", request_id=1, created=100, finished=20)
    done_pod = pod_for(done_job, phase="Succeeded", finished=20)
    live_job = job_for("linux", request_id=2, created=100)
    live_pod = pod_for(live_job)
    requests = (
        _assigned(11, done_pod.name, 31, at=10),  # pod finished: released
        _assigned(12, "azp-eeca0-linux-9-zzzzz", 32, at=120),  # pod gone for 2 minutes: released
        _assigned(13, "azp-eeca0-linux-8-yyyyy", 33, at=5),  # pod gone only just now: not yet
        _assigned(14, live_pod.name, 34, at=10),  # pod still running: it may yet receive it
        _assigned(15, "build-server-01", 35, at=120),  # not ours
        replace(_assigned(16, "azp-eeca0-linux-7-xxxxx", 36, at=120), receive_time=ago(100)),  # the job started
    )
    jobs, pods = (done_job, live_job), (done_pod, live_pod)
    unlisted = replace(world(state("linux", *requests), jobs=jobs, pods=pods), agents_observed={"linux": ago(1)})
    assert of(DeleteAgent, plan(config(), unlisted, NOW)) == []
    assert pools_needing_agents(config(), unlisted, NOW) == {"linux"}
    offline = tuple(
        agent(int(r.reserved_agent_id or 0), str(r.reserved_agent_name), online=False, busy_with=r.request_id)
        for r in requests
    )
    w = world(state("linux", *requests, agents=offline), jobs=jobs, pods=pods)
    rescued = of(DeleteAgent, plan(config(), w, NOW))
    assert sorted((d.agent_id, d.agent_name) for d in rescued) == [(31, done_pod.name), (32, "azp-eeca0-linux-9-zzzzz")]
    assert all("before the job started" in d.reason for d in rescued)
    online = (agent(31, done_pod.name, online=True, busy_with=11), *offline[1:])
    w = world(state("linux", *requests, agents=online), jobs=jobs, pods=pods)
    assert [d.agent_id for d in of(DeleteAgent, plan(config(), w, NOW))] == [32]


def test_once_agent_is_disabled_once_its_job_has_started() -> None:
    """We test: an agent of ours whose request the service shows received (its job started) is disabled, once:
    read from the request's agent reference when the agents are not listed, from the agent list when they are
    (the list wins); after the PATCH the next plan has nothing more to do. Never an agent whose request is
    only assigned (its job message may not be delivered yet), whose enabled state nothing shows, that is
    already disabled, whose pod has finished, that is not ours (no Job of ours), or of an instance template
    (config.sh --replace would keep it disabled for its next job)."""
    jobs = tuple(job_for("linux", request_id=n, created=100) for n in (1, 2, 3, 4))
    done = job_for("linux", request_id=5, created=100, finished=1)
    instance = job_for("linux", template_name="aci", name="azp-eeca0-linux-aci-i0", created=100)
    pods = (*(pod_for(j) for j in jobs), pod_for(done, phase="Succeeded", finished=1), pod_for(instance))
    shown = [replace(running(n, pods[n - 1].name, 30 + n), reserved_agent_enabled=True) for n in (1, 2, 5)]
    requests = (
        shown[0],  # running, shown enabled: disabled
        replace(_assigned(2, pods[1].name, 32, at=10), reserved_agent_enabled=True),  # not received yet
        running(3, pods[2].name, 33),  # enabled shown nowhere (agents not listed)
        replace(running(4, pods[3].name, 34), reserved_agent_enabled=False),  # disabled already
        shown[2],  # its pod finished
        replace(running(6, "build-server-01", 36), reserved_agent_enabled=True),  # not ours
        replace(running(7, pods[5].name, 37), reserved_agent_enabled=True),  # an instance
    )
    cfg = config(pool("linux", template(placeholder=False), template("aci", instances=1, placeholder=False)))
    w = replace(
        world(state("linux", *requests), jobs=(*jobs, done, instance), pods=pods), agents_observed={"linux": ago(1)}
    )
    actions = plan(cfg, w, NOW)
    assert [(d.agent_id, d.agent_name, d.request_id) for d in of(DisableAgent, actions)] == [(31, pods[0].name, 1)]
    assert "no second job" in of(DisableAgent, actions)[0].reason
    assert of(DisableAgent, plan(cfg, apply_to_world(w, actions), NOW)) == []
    listed = (agent(33, pods[2].name, busy_with=3), agent(31, pods[0].name, enabled=False, busy_with=1))
    w = world(state("linux", *requests, agents=listed), jobs=(*jobs, done, instance), pods=pods)
    assert [d.agent_id for d in of(DisableAgent, plan(cfg, w, NOW))] == [33]


def test_enabled_state_of_a_runner_comes_from_the_list_else_from_its_request() -> None:
    """We test the fallback of the disable's enabled check with the agents listed: the listed agent's `enabled`
    wins over the request's agent reference either way (listed enabled, reference disabled: disabled; listed
    disabled, reference enabled: left alone); an agent missing from the list (registered after the list was
    read) is judged by the reference; one neither shows is left alone."""
    jobs = tuple(job_for("linux", request_id=n, created=100) for n in (1, 2, 3, 4))
    pods = tuple(pod_for(j) for j in jobs)
    requests = tuple(
        replace(running(n, pods[n - 1].name, 30 + n), reserved_agent_enabled=shown)
        for n, shown in ((1, True), (2, False), (3, True), (4, None))
    )
    listed = (agent(32, pods[1].name, busy_with=2), agent(33, pods[2].name, enabled=False, busy_with=3))
    cfg = config(pool("linux", template(placeholder=False)))
    w = world(state("linux", *requests, agents=listed), jobs=jobs, pods=pods)
    assert sorted(d.agent_id for d in of(DisableAgent, plan(cfg, w, NOW))) == [31, 32]


def test_agent_disabled_for_its_job_that_stays_idle_is_drained() -> None:
    """We test: an agent disabled for its one job that, the job done, stays online and idle while its pod runs
    (a template whose agent does not run --once) is drained like a half-done drain, so it never holds a slot
    it can no longer serve from; an agent still running its job is not."""
    job = job_for("linux", request_id=1, created=100)
    pod = pod_for(job)
    cfg = config(pool("linux", template(placeholder=False)))
    stays = agent(31, pod.name, enabled=False, completed=1)
    drains = of(DrainAgent, plan(cfg, world(state("linux", agents=(stays,)), jobs=(job,), pods=(pod,)), NOW))
    assert [(d.agent_id, d.job_name) for d in drains] == [(31, job.name)]
    busy = agent(31, pod.name, enabled=False, busy_with=1)
    w = world(state("linux", running(1, pod.name, 31), agents=(busy,)), jobs=(job,), pods=(pod,))
    assert plan(cfg, w, NOW) == []


def test_cleanup_removes_everything_of_the_release_but_busy_agents() -> None:
    """We test: cleanup deregisters the placeholder and offline leftovers of ours, drains an idle agent (and
    one whose Job is gone), deletes a pending Job (and the agent it registered) and a finished one; it keeps
    a Job whose agent runs a job (named as kept) unless forced, and never touches an agent that is not ours."""
    cfg = config(pool("linux", template(placeholder=True)))
    idle_job, pending_job, busy_job, done_job = (job_for("linux", request_id=n, created=100) for n in (1, 2, 3, 4))
    idle_pod = pod_for(idle_job)
    pending_pod = pod_for(pending_job, phase="Pending")
    busy_pod = pod_for(busy_job)
    done_pod = pod_for(done_job, phase="Succeeded", finished=50)
    agents = (
        agent(1, idle_pod.name),
        agent(2, pending_pod.name, online=False),
        agent(3, busy_pod.name, busy_with=33),
        agent(4, "azp-placeholder-eeca0-linux-default", online=False, enabled=False),
        agent(5, "azp-eeca0-linux-99-zzzzz", online=False),
        agent(6, "build-server-01", online=False),
        agent(7, "azp-eeca0-linux-98-yyyyy"),  # online, its Job already gone
    )
    w = world(
        state("linux", agents=agents),
        jobs=(idle_job, pending_job, busy_job, done_job),
        pods=(idle_pod, pending_pod, busy_pod, done_pod),
    )
    actions, kept = cleanup_plan(cfg, w, NOW, force=False)
    assert kept == [f"agents/{busy_job.name}"]
    assert [(d.agent_id, d.job_name) for d in of(DrainAgent, actions)] == [(1, idle_job.name), (7, None)]
    assert sorted((d.job_name, d.agent_id) for d in of(DeleteJob, actions)) == [
        (pending_job.name, 2),
        (done_job.name, None),
    ]
    assert sorted(d.agent_id for d in of(DeleteAgent, actions)) == [4, 5]
    forced, kept = cleanup_plan(cfg, w, NOW, force=True)
    assert kept == [] and (busy_job.name, None) in [(d.job_name, d.agent_id) for d in of(DeleteJob, forced)]
    assert cleanup_plan(cfg, world(state("linux"), jobs=(idle_job,), pods=(idle_pod,)), NOW, force=True) == ([], [])


def test_idle_agents_beyond_what_a_limited_queue_can_use_are_drained() -> None:
    """We test: when agents able to serve queued requests sit idle past idleTimeout (the requests wait on
    the organization's parallel-job limit, not on agents), those past idleTimeout are drained as long as
    one idle agent stays (here the freshest), and no new Job is made for those requests; when no agent has
    been idle that long nothing is drained and demand is served as usual."""
    cfg = config(pool("linux", template(placeholder=False), idle_timeout=60))
    jobs = tuple(job_for("linux", slot=n, created=900) for n in range(3))
    pods = tuple(pod_for(j, created=899, started=898) for j in jobs)
    agents = (agent(1, pods[0].name, changed=300), agent(2, pods[1].name, changed=200), agent(3, pods[2].name))
    queue = tuple(queued(n, at=250) for n in (10, 11, 12, 13))
    actions = plan(cfg, world(state("linux", *queue, agents=agents), jobs=jobs, pods=pods), NOW)
    drains = of(DrainAgent, actions)
    assert [d.agent_id for d in drains] == [1, 2] and "parallel-job limit" in drains[0].reason
    assert of(CreateJob, actions) == []
    fresh = tuple(replace(a, status_changed_on=ago(5)) for a in agents)
    actions = plan(cfg, world(state("linux", *queue, agents=fresh), jobs=jobs, pods=pods), NOW)
    assert of(DrainAgent, actions) == [] and len(of(CreateJob, actions)) == 1


def test_a_shard_takes_over_requests_another_shard_left_queued_too_long() -> None:
    """We test: shard 1 of 2 serves its own requests at once and shard 0's only once they have been queued
    longer than shard.takeoverAfterSeconds; with 0 it never takes over."""
    cfg = config(shard_index=1, shard_count=2, shard_takeover_after=120)
    w = world(state("linux", queued(1, at=30), queued(2, at=30), queued(4, at=200)))
    assert sorted(c.request_id for c in of(CreateJob, plan(cfg, w, NOW))) == [1, 4]
    never = config(shard_index=1, shard_count=2, shard_takeover_after=0)
    assert [c.request_id for c in of(CreateJob, plan(never, w, NOW))] == [1]
