"""We test the plan of a template with `instances` (backend aci): a fixed set of named agents that restart
after each job, kept at exactly that number whatever is queued."""

from __future__ import annotations

from datetime import timedelta

from plan_builders import (
    NOW,
    OWNER,
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

from reconciler import names
from reconciler.model import CreateJob, DeleteJob, DrainAgent, ReportCrashBackoff, World
from reconciler.plan import plan


def instance(index: int) -> str:
    return names.instance_name(OWNER, pool_name="linux", template="default", index=index)


def instances_config(count: int = 2, **pool_settings: object) -> object:
    return config(pool("linux", template(instances=count, placeholder=False), **pool_settings))


def test_missing_instances_are_created_under_stable_names_and_queued_jobs_add_none() -> None:
    """We test: two instances wanted, none there: both are created, named after their index, whatever is
    queued (5 requests give no per-request group); once they exist the next pass creates nothing."""
    cfg = instances_config()
    first = world(state("linux", *(queued(n) for n in range(1, 6)), agents=()))
    creates = of(CreateJob, plan(cfg, first, NOW))  # type: ignore[arg-type]
    assert [(c.job_name, c.request_id) for c in creates] == [(instance(0), None), (instance(1), None)]
    assert of(CreateJob, plan(cfg, apply_to_world(first, creates), NOW)) == []  # type: ignore[arg-type]


def test_instances_stay_idle_past_idle_timeout_and_offline_between_jobs() -> None:
    """We test: an instance's agent idle far past idleTimeout is not drained, and one offline while its
    container restarts after a job is not pruned: the set stays as it is."""
    cfg = instances_config(idle_timeout=60)
    jobs = (job_for("linux", name=instance(0), created=900), job_for("linux", name=instance(1), created=900))
    pods = tuple(pod_for(j, created=899, started=898) for j in jobs)
    agents = (agent(1, pods[0].name, changed=800), agent(2, pods[1].name, online=False, completed=4, changed=2))
    assert plan(cfg, world(state("linux", agents=agents), jobs=jobs, pods=pods), NOW) == []  # type: ignore[arg-type]


def test_surplus_instances_go_but_never_a_busy_one() -> None:
    """We test: instances lowered from 3 to 1: the idle online one beyond the count is drained, the one still
    starting (no agent) is deleted, and a busy one stays until its job ends."""
    cfg = instances_config(1)
    jobs = tuple(job_for("linux", name=instance(n), created=900) for n in range(4))
    pods = tuple(pod_for(j, created=899, started=898) for j in jobs[:3])
    agents = (agent(1, pods[0].name), agent(2, pods[1].name), agent(3, pods[2].name, busy_with=9))
    w = world(state("linux", running(9, pods[2].name, 3), agents=agents), jobs=jobs, pods=pods)
    actions = plan(cfg, w, NOW)  # type: ignore[arg-type]
    assert [(d.job_name, d.agent_id) for d in of(DrainAgent, actions)] == [(instance(1), 2)]
    assert [d.job_name for d in of(DeleteJob, actions)] == [instance(3)]
    assert of(CreateJob, actions) == []


def failed_instance(*, finished: float, crash_failures: int = 0) -> World:
    """Instance 0 alone, its group failed in provisioning `finished` seconds ago (created just before), carrying
    `crash_failures` failures of the groups before it."""
    job = job_for(
        "linux", name=instance(0), created=finished + 1, finished=finished, failed=True, crash_failures=crash_failures
    )
    pod = pod_for(
        job, phase="Failed", created=finished + 1, started=None, reason="ProvisioningFailed", finished=finished
    )
    return world(state("linux", agents=()), jobs=(job,), pods=(pod,))


def test_failed_instance_is_replaced_after_its_backoff() -> None:
    """We test: an instance whose group failed before its agent came online backs its template off (reported,
    kept, not recreated); once the backoff is over it is deleted and created again in the same pass, the new
    group carrying the one failure."""
    cfg = instances_config(1)
    recent = failed_instance(finished=5)
    actions = plan(cfg, recent, NOW)  # type: ignore[arg-type]
    assert of(DeleteJob, actions) == [] and of(CreateJob, actions) == []
    assert [(r.template, r.failures) for r in of(ReportCrashBackoff, actions)] == [("default", 1)]
    over = failed_instance(finished=60)
    actions = plan(cfg, over, NOW)  # type: ignore[arg-type]
    assert [d.job_name for d in of(DeleteJob, actions)] == [instance(0)]
    assert [(c.job_name, c.crash_failures) for c in of(CreateJob, actions)] == [(instance(0), 1)]
    assert [a.kind for a in actions] == ["delete-job", "create-job"]  # apply deletes first too
    assert of(CreateJob, plan(cfg, apply_to_world(over, actions), NOW)) == []  # type: ignore[arg-type]


def test_failed_instance_backoff_grows_across_re_creates() -> None:
    """We test: a re-created instance that fails again counts the failures its group carries: the 2nd failure in
    a row waits 20 s (not the first failure's 10 s: 15 s after it, it is still backing off, reported as failure
    2), and once that is over the next group carries 2; the 7th and later wait the 5-minute cap."""
    cfg = instances_config(1)
    second = failed_instance(finished=15, crash_failures=1)
    actions = plan(cfg, second, NOW)  # type: ignore[arg-type]
    assert of(DeleteJob, actions) == [] and of(CreateJob, actions) == []
    (report,) = of(ReportCrashBackoff, actions)
    assert (report.failures, report.retry_at) == (2, ago(15) + timedelta(seconds=20))
    later = failed_instance(finished=25, crash_failures=1)
    assert [(c.job_name, c.crash_failures) for c in of(CreateJob, plan(cfg, later, NOW))] == [(instance(0), 2)]  # type: ignore[arg-type]
    capped = failed_instance(finished=299, crash_failures=6)
    (report,) = of(ReportCrashBackoff, plan(cfg, capped, NOW))  # type: ignore[arg-type]
    assert (report.failures, report.retry_at) == (7, ago(299) + timedelta(minutes=5))


def test_instance_creates_obey_max_create_per_pass() -> None:
    """We test: maxCreatePerPass bounds instance creates as it bounds Jobs: with a brake of 3, 5 missing instances
    give 3 creates (the first three, by index), and the pass after creates the other 2; a pool planned first whose
    queued jobs spend 2 of the brake leaves the instances 1."""
    cfg = config(pool("linux", template(instances=5, placeholder=False)), max_create_per_pass=3)
    first = world(state("linux", agents=()))
    creates = of(CreateJob, plan(cfg, first, NOW))  # type: ignore[arg-type]
    assert [c.job_name for c in creates] == [instance(n) for n in range(3)]
    rest = of(CreateJob, plan(cfg, apply_to_world(first, creates), NOW))  # type: ignore[arg-type]
    assert [c.job_name for c in rest] == [instance(3), instance(4)]
    busy_first = config(
        pool("windows", template(placeholder=False)),
        pool("linux", template(instances=5, placeholder=False)),
        max_create_per_pass=3,
    )
    both = world(state("windows", queued(1), queued(2), agents=()), state("linux", agents=()))
    creates = of(CreateJob, plan(busy_first, both, NOW))  # type: ignore[arg-type]
    assert [(c.pool, c.request_id) for c in creates] == [("windows", 1), ("windows", 2), ("linux", None)]
    assert creates[-1].job_name == instance(0)
