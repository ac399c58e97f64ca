"""We test the plan of a template with `instances` (backend aci): a fixed set of named agents that restart
after each job, kept at exactly that number whatever is queued."""

from __future__ import annotations

from plan_builders import (
    NOW,
    OWNER,
    agent,
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
from reconciler.model import CreateJob, DeleteJob, DrainAgent, ReportCrashBackoff
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


def test_failed_instance_is_replaced_after_its_backoff() -> None:
    """We test: an instance whose group failed before its agent came online backs its template off (reported,
    kept, not recreated); once the backoff is over it is deleted, and the pass after creates it again."""
    cfg = instances_config(1)
    failed = job_for("linux", name=instance(0), created=30, finished=5, failed=True)
    pod = pod_for(failed, phase="Failed", created=29, started=None, reason="ProvisioningFailed", finished=5)
    recent = world(state("linux", agents=()), jobs=(failed,), pods=(pod,))
    actions = plan(cfg, recent, NOW)  # type: ignore[arg-type]
    assert of(DeleteJob, actions) == [] and of(CreateJob, actions) == []
    assert [r.template for r in of(ReportCrashBackoff, actions)] == ["default"]
    old = job_for("linux", name=instance(0), created=90, finished=60, failed=True)
    old_pod = pod_for(old, phase="Failed", created=89, started=None, reason="ProvisioningFailed", finished=60)
    over = world(state("linux", agents=()), jobs=(old,), pods=(old_pod,))
    actions = plan(cfg, over, NOW)  # type: ignore[arg-type]
    assert [d.job_name for d in of(DeleteJob, actions)] == [instance(0)] and of(CreateJob, actions) == []
    after = apply_to_world(over, actions)
    assert [c.job_name for c in of(CreateJob, plan(cfg, after, NOW))] == [instance(0)]  # type: ignore[arg-type]


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
