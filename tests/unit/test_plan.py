"""Unit tests of plan(): one test per scaling rule of DESIGN.md."""

from __future__ import annotations

from dataclasses import replace

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
from reconciler.model import (
    CreateJob,
    DeleteAgent,
    DeleteJob,
    DrainAgent,
    PoolState,
    RegisterPlaceholder,
    ReportMissingPool,
    ReportUnroutable,
    UpdatePlaceholder,
)
from reconciler.plan import plan, pools_needing_agents, route


def test_ten_queued_with_max_four_creates_four_oldest_first() -> None:
    """We test: 10 queued requests and maxAgents 4 give exactly 4 Jobs, for the 4 oldest requests."""
    cfg = config(pool("linux", template(placeholder=False), max_agents=4))
    requests = [queued(100 + i, at=100 - i) for i in range(10)]
    creates = of(CreateJob, plan(cfg, world(state("linux", *requests)), NOW))
    assert [c.request_id for c in creates] == [100, 101, 102, 103]
    assert {c.job_name for c in creates} == {f"azp-eeca0-linux-{100 + i}" for i in range(4)}


def test_nothing_queued_creates_nothing() -> None:
    """We test: an empty queue and no standby means no action at all."""
    assert plan(config(), world(state("linux")), NOW) == []


def test_second_pass_with_jobs_pending_creates_nothing() -> None:
    """We test: requests already covered by pending Jobs are not served twice."""
    cfg = config()
    first_world = world(state("linux", queued(1), queued(2)))
    actions = plan(cfg, first_world, NOW)
    assert len(of(CreateJob, actions)) == 2
    assert of(CreateJob, plan(cfg, apply_to_world(first_world, actions), NOW)) == []


def test_busy_agents_are_not_supply() -> None:
    """We test: a Job whose agent runs a request does not count as supply for a new request."""
    job = job_for("linux", request_id=1)
    pod = pod_for(job)
    w = world(state("linux", running(1, pod.name), queued(2)), jobs=(job,), pods=(pod,))
    creates = of(CreateJob, plan(config(), w, NOW))
    assert [c.request_id for c in creates] == [2]


def test_job_taken_by_another_request_gets_a_new_generation() -> None:
    """We test: when request 1's Job went to request 2, request 1 gets a Job with a new name."""
    job = job_for("linux", request_id=1)
    pod = pod_for(job)
    w = world(state("linux", running(2, pod.name), queued(1)), jobs=(job,), pods=(pod,))
    creates = of(CreateJob, plan(config(), w, NOW))
    assert [(c.request_id, c.job_name) for c in creates] == [(1, "azp-eeca0-linux-1-g1")]


def test_finished_job_name_is_not_reused() -> None:
    """We test: a finished Job that still exists (TTL) does not block a new Job for the same request."""
    job = job_for("linux", request_id=5, finished=20)
    w = world(state("linux", queued(5)), jobs=(job,))
    assert [c.job_name for c in of(CreateJob, plan(config(), w, NOW))] == ["azp-eeca0-linux-5-g1"]


def test_request_its_pod_ran_after_the_queue_was_read_waits_for_the_next_read() -> None:
    """We test: a request read as queued whose own Job's pod finished after (or in the second before) the
    queue was read gets no second Job this pass: the pod may have run it since; one that finished well
    before the read gets its next generation, as before."""
    job = job_for("linux", request_id=5, finished=1)
    just_now = pod_for(job, phase="Succeeded", finished=1)
    read = replace(state("linux", queued(5)), read_at=ago(2))
    assert of(CreateJob, plan(config(), world(read, jobs=(job,), pods=(just_now,)), NOW)) == []
    long_ago = pod_for(job, phase="Succeeded", finished=20)
    creates = of(CreateJob, plan(config(), world(read, jobs=(job,), pods=(long_ago,)), NOW))
    assert [c.job_name for c in creates] == ["azp-eeca0-linux-5-g1"]


def test_queued_request_whose_job_finished_since_the_read_gets_no_second_job() -> None:
    """We test: when only the Job's end is known (its pods are gone), a Job that finished after the queue
    was read keeps its request from a second Job too; one that finished long before does not."""
    read = replace(state("linux", queued(5)), read_at=ago(2))
    just_now = job_for("linux", request_id=5, finished=1)
    assert of(CreateJob, plan(config(), world(read, jobs=(just_now,)), NOW)) == []
    long_ago = job_for("linux", request_id=5, finished=20)
    assert [c.job_name for c in of(CreateJob, plan(config(), world(read, jobs=(long_ago,)), NOW))] == [
        "azp-eeca0-linux-5-g1"
    ]


def test_queued_request_an_agent_holds_gets_no_second_job() -> None:
    """We test: the agent list is read after the queue; a request it shows an agent of ours holding was
    assigned in between, so it is not served again although the queue read still calls it queued."""
    job = job_for("linux", request_id=5)
    pod = pod_for(job)
    holder = agent(3, pod.name, busy_with=5)
    read = replace(state("linux", queued(5), agents=(holder,)), read_at=ago(1))
    assert of(CreateJob, plan(config(), world(read, jobs=(job,), pods=(pod,)), NOW)) == []
    idle = agent(3, pod.name)
    read = replace(state("linux", queued(5), queued(6), agents=(idle,)), read_at=ago(1))
    creates = of(CreateJob, plan(config(), world(read, jobs=(job,), pods=(pod,)), NOW))
    assert [c.request_id for c in creates] == [6]


def test_min_idle_keeps_standby_agents() -> None:
    """We test: minIdle 2 with nothing queued creates 2 standby Jobs; with 2 idle agents it creates none."""
    cfg = config(pool("linux", template(min_idle=2, placeholder=False)))
    creates = of(CreateJob, plan(cfg, world(state("linux")), NOW))
    assert [c.job_name for c in creates] == ["azp-eeca0-linux-default-s0", "azp-eeca0-linux-default-s1"]
    assert all(c.request_id is None for c in creates)
    jobs = tuple(job_for("linux", slot=i) for i in range(2))
    pods = tuple(pod_for(j) for j in jobs)
    assert of(CreateJob, plan(cfg, world(state("linux"), jobs=jobs, pods=pods), NOW)) == []


def test_min_idle_adds_to_demand() -> None:
    """We test: 3 queued with minIdle 1 creates 3 request Jobs and 1 standby."""
    cfg = config(pool("linux", template(min_idle=1, placeholder=False)))
    creates = of(CreateJob, plan(cfg, world(state("linux", queued(1), queued(2), queued(3))), NOW))
    assert sorted((c.request_id is None) for c in creates) == [False, False, False, True]


def test_min_agents_counts_busy_agents() -> None:
    """We test: minAgents 2 with one busy agent creates one more (busy or idle, MINIMUM_AGENT_COUNT)."""
    cfg = config(pool("linux", template(placeholder=False), min_agents=2))
    job = job_for("linux", request_id=1)
    pod = pod_for(job)
    creates = of(CreateJob, plan(cfg, world(state("linux", running(1, pod.name)), jobs=(job,), pods=(pod,)), NOW))
    assert len(creates) == 1 and creates[0].request_id is None


def test_max_agents_counts_active_jobs() -> None:
    """We test: 3 running agents and maxAgents 4 leave room for exactly one more."""
    jobs = tuple(job_for("linux", request_id=i) for i in range(1, 4))
    pods = tuple(pod_for(j) for j in jobs)
    requests = [running(i, pods[i - 1].name) for i in range(1, 4)] + [queued(10), queued(11)]
    cfg = config(pool("linux", template(placeholder=False), max_agents=4))
    assert len(of(CreateJob, plan(cfg, world(state("linux", *requests), jobs=jobs, pods=pods), NOW))) == 1


def test_max_agents_zero_creates_nothing() -> None:
    """We test: a pool with maxAgents 0 creates no Job."""
    cfg = config(pool("linux", template(placeholder=False), max_agents=0))
    assert of(CreateJob, plan(cfg, world(state("linux", queued(1))), NOW)) == []


def test_template_max_agents_caps_the_template() -> None:
    """We test: a template's own maxAgents caps it below the pool's."""
    cfg = config(pool("linux", template(max_agents=1, placeholder=False), max_agents=10))
    assert len(of(CreateJob, plan(cfg, world(state("linux", queued(1), queued(2))), NOW))) == 1


def test_max_create_per_pass_is_a_global_brake() -> None:
    """We test: maxCreatePerPass bounds creations across all pools."""
    cfg = config(
        pool("a", template(placeholder=False), max_agents=50),
        pool("b", template(placeholder=False), max_agents=50),
        max_create_per_pass=5,
    )
    w = world(state("a", *[queued(i) for i in range(10)]), state("b", *[queued(100 + i) for i in range(10)], pool_id=8))
    assert len(of(CreateJob, plan(cfg, w, NOW))) == 5


def test_routing_by_demands_and_unroutable_report() -> None:
    """We test: docker and java requests go to their templates; a request nobody can serve is reported."""
    docker = template("docker", capabilities={"docker": "", "Agent.OS": "Linux"}, placeholder=False)
    java = template("java", capabilities={"java": "17", "Agent.OS": "Linux"}, placeholder=False)
    cfg = config(pool("linux", docker, java, max_agents=20))
    requests = [queued(i, "docker") for i in range(1, 6)] + [queued(i, "java -equals 17") for i in range(6, 9)]
    requests.append(queued(9, "gpu"))
    actions = plan(cfg, world(state("linux", *requests)), NOW)
    creates = of(CreateJob, actions)
    assert sorted(c.request_id for c in creates if c.template == "docker") == [1, 2, 3, 4, 5]
    assert sorted(c.request_id for c in creates if c.template == "java") == [6, 7, 8]
    assert [(r.request_id, r.demands) for r in of(ReportUnroutable, actions)] == [(9, ("gpu",))]


def test_routing_prefers_priority_then_cost() -> None:
    """We test: of two templates that satisfy a request, the higher priority wins, then the cheaper."""
    big = template("big", capabilities={"docker": ""}, cost=(4000, 8 * 2**30))
    small = template("small", capabilities={"docker": ""}, cost=(500, 2**30))
    vip = template("vip", capabilities={"docker": ""}, priority=5, cost=(8000, 16 * 2**30))
    cfg = config(pool("linux", big, small))
    assert route(cfg, cfg.pools[0], queued(1, "docker")).name == "small"  # type: ignore[union-attr]
    cfg = config(pool("linux", big, small, vip))
    assert route(cfg, cfg.pools[0], queued(1, "docker")).name == "vip"  # type: ignore[union-attr]


def test_agent_version_demand_uses_the_configured_version() -> None:
    """We test: Agent.Version -gtVersion demands compare with the agent version we run."""
    cfg = config(agent_version="4.269.0")
    assert route(cfg, cfg.pools[0], queued(1, "Agent.Version -gtVersion 2.182.1")) is not None
    assert route(cfg, cfg.pools[0], queued(1, "Agent.Version -gtVersion 9.0.0")) is None


def test_shard_serves_only_its_requests() -> None:
    """We test: shard 1 of 2 serves only odd request ids."""
    cfg = config(shard_index=1, shard_count=2)
    creates = of(CreateJob, plan(cfg, world(state("linux", *[queued(i) for i in range(1, 7)])), NOW))
    assert sorted(c.request_id for c in creates) == [1, 3, 5]


def test_missing_pool_is_reported() -> None:
    """We test: a pool Azure DevOps does not know is reported, not planned."""
    actions = plan(config(), world(PoolState(name="linux", pool_id=None)), NOW)
    assert actions == [ReportMissingPool(pool="linux")]


def test_stuck_image_pull_is_deleted_with_reason() -> None:
    """We test: a pod in ImagePullBackOff past provisioningTimeout is deleted, the reason reported."""
    job = job_for("linux", request_id=1, created=700)
    pod = pod_for(job, phase="Pending", created=690, reason="ImagePullBackOff", message="Back-off pulling image x")
    deletes = of(DeleteJob, plan(config(), world(state("linux", queued(1)), jobs=(job,), pods=(pod,)), NOW))
    assert len(deletes) == 1
    assert deletes[0].job_name == job.name and deletes[0].reason.startswith("stuck")
    assert "ImagePullBackOff" in deletes[0].detail


def test_stuck_job_is_replaced_in_the_same_pass() -> None:
    """We test: the stuck Job does not count as supply, so its request gets a new Job at once."""
    job = job_for("linux", request_id=1, created=700)
    pod = pod_for(job, phase="Pending", created=690, reason="Unschedulable")
    creates = of(CreateJob, plan(config(), world(state("linux", queued(1)), jobs=(job,), pods=(pod,)), NOW))
    assert [c.job_name for c in creates] == ["azp-eeca0-linux-1-g1"]


def test_pending_within_timeout_is_left_alone() -> None:
    """We test: a pod still pulling its image inside provisioningTimeout is supply, not stuck."""
    job = job_for("linux", request_id=1, created=60)
    pod = pod_for(job, phase="Pending", created=59, reason="ImagePullBackOff")
    assert plan(config(), world(state("linux", queued(1)), jobs=(job,), pods=(pod,)), NOW) == []


def test_running_pod_whose_agent_never_registered_is_stuck() -> None:
    """We test: with the agent list known, a running pod without an agent past the timeout is stuck."""
    job = job_for("linux", request_id=1, created=900)
    pod = pod_for(job, created=890, started=880)
    actions = plan(config(), world(state("linux", agents=()), jobs=(job,), pods=(pod,)), NOW)
    assert [d.detail for d in of(DeleteJob, actions)] == ["the agent never registered"]


def test_prune_offline_agents_of_ours_only() -> None:
    """We test: offline agents of ours whose pod is gone or finished are deleted; busy, online,
    placeholders and agents not created by us are never deleted."""
    cfg = config(pool("linux", template(placeholder=True)))
    finished_job = job_for("linux", request_id=3, finished=30)
    finished_pod = pod_for(finished_job, phase="Succeeded", finished=30)
    placeholder = names.placeholder_name(OWNER, pool_name="linux", template="default")
    agents = (
        agent(1, "azp-eeca0-linux-1-aaaaa", online=False, completed=1),  # pod gone
        agent(2, "azp-eeca0-linux-2-bbbbb", online=False, busy_with=2),  # busy (assigned)
        agent(3, finished_pod.name, online=False, completed=3),  # pod finished
        agent(4, "azp-eeca0-linux-4-ddddd", online=True),  # online, no pod: never
        agent(5, "build-server-01", online=False),  # not ours
        agent(6, placeholder, online=False, enabled=False, capabilities={"Agent.Version": "4.269.0"}),
        agent(7, "azp-eeca0-linux-7-eeeee", online=False),  # reserved by a running request below
    )
    w = world(
        state("linux", running(70, "azp-eeca0-linux-7-eeeee", 7), agents=agents),
        jobs=(finished_job,),
        pods=(finished_pod,),
    )
    pruned = of(DeleteAgent, plan(cfg, w, NOW))
    assert sorted(a.agent_id for a in pruned) == [1, 3]


def test_placeholder_registered_when_missing_and_updated_when_changed() -> None:
    """We test: each template keeps one disabled placeholder with its capabilities (plus Agent.Version)."""
    docker = template("docker", capabilities={"docker": ""})
    cfg = config(pool("linux", docker))
    registered = of(RegisterPlaceholder, plan(cfg, world(state("linux", agents=())), NOW))
    assert [(r.agent_name, dict(r.capabilities)) for r in registered] == [
        ("azp-placeholder-eeca0-linux-docker", {"docker": "", "Agent.Version": "4.269.0"})
    ]
    stale = agent(9, "azp-placeholder-eeca0-linux-docker", online=False, enabled=False, capabilities={"java": "17"})
    updates = of(UpdatePlaceholder, plan(cfg, world(state("linux", agents=(stale,))), NOW))
    assert [u.agent_id for u in updates] == [9]
    current = replace(stale, capabilities=registered[0].capabilities)
    assert plan(cfg, world(state("linux", agents=(current,))), NOW) == []


def test_placeholder_of_removed_template_is_deleted() -> None:
    """We test: a placeholder whose template left the config is removed (it would attract jobs)."""
    old = agent(9, "azp-placeholder-eeca0-linux-java", online=False, enabled=False)
    cfg = config(pool("linux", template("docker", placeholder=False)))
    assert [a.agent_id for a in of(DeleteAgent, plan(cfg, world(state("linux", agents=(old,))), NOW))] == [9]


def test_idle_agent_past_timeout_is_drained_when_nothing_queued() -> None:
    """We test: an idle agent past idleTimeout is drained; with a queued request it could serve it is not."""
    cfg = config(pool("linux", template(placeholder=False), idle_timeout=300))
    job = job_for("linux", request_id=1, created=900)
    pod = pod_for(job, created=899, started=898)
    idle = agent(11, pod.name, online=True, changed=600)
    drains = of(DrainAgent, plan(cfg, world(state("linux", agents=(idle,)), jobs=(job,), pods=(pod,)), NOW))
    assert [(d.agent_id, d.job_name) for d in drains] == [(11, job.name)]
    w = world(state("linux", queued(2), agents=(idle,)), jobs=(job,), pods=(pod,))
    assert of(DrainAgent, plan(cfg, w, NOW)) == []


def test_drain_keeps_min_idle() -> None:
    """We test: with minIdle 1 and two idle agents past the timeout, only one is drained (the oldest)."""
    cfg = config(pool("linux", template(min_idle=1, placeholder=False), idle_timeout=60))
    jobs = (job_for("linux", slot=0, created=900), job_for("linux", slot=1, created=900))
    pods = tuple(pod_for(j, created=899, started=898) for j in jobs)
    agents = (agent(1, pods[0].name, changed=800), agent(2, pods[1].name, changed=500))
    drains = of(DrainAgent, plan(cfg, world(state("linux", agents=agents), jobs=jobs, pods=pods), NOW))
    assert [d.agent_id for d in drains] == [1]


def test_standby_gives_way_to_queued_demand_of_another_template() -> None:
    """We test: when maxAgents is held by an idle standby agent of one template and a request only another
    template serves is queued, the standby agent is drained (even below minIdle, before its idleTimeout),
    and the agent list is read for it; with a free slot, or with the standby busy, nothing is drained."""
    cfg = config(
        pool(
            "linux",
            template("default", min_idle=1, placeholder=False),
            template("java", capabilities={"java": "17"}, placeholder=False),
            max_agents=1,
            idle_timeout=3600,
        )
    )
    job = job_for("linux", slot=0, created=900)
    pod = pod_for(job, created=899, started=898)
    idle = agent(11, pod.name, online=True, changed=60)
    blocked = world(state("linux", queued(5, "java"), agents=(idle,)), jobs=(job,), pods=(pod,))
    actions = plan(cfg, blocked, NOW)
    assert [(d.agent_id, d.job_name) for d in of(DrainAgent, actions)] == [(11, job.name)]
    assert of(CreateJob, actions) == []
    unknown = replace(blocked, pools=(state("linux", queued(5, "java")),), agents_observed={"linux": ago(10)})
    assert pools_needing_agents(cfg, unknown, NOW) == {"linux"}
    roomy = config(replace(cfg.pools[0], max_agents=2))
    assert of(DrainAgent, plan(roomy, blocked, NOW)) == []
    assert [c.template for c in of(CreateJob, plan(roomy, blocked, NOW))] == ["java"]
    taken = world(state("linux", queued(5, "java"), running(4, pod.name), agents=(idle,)), jobs=(job,), pods=(pod,))
    assert of(DrainAgent, plan(cfg, taken, NOW)) == []


def test_recently_idle_agent_is_not_drained() -> None:
    """We test: an agent idle for less than idleTimeout stays."""
    cfg = config(pool("linux", template(placeholder=False), idle_timeout=300))
    job = job_for("linux", request_id=1, created=100)
    pod = pod_for(job, created=99, started=98)
    idle = agent(11, pod.name, online=True, changed=60)
    assert plan(cfg, world(state("linux", agents=(idle,)), jobs=(job,), pods=(pod,)), NOW) == []


def test_busy_agent_is_never_drained_or_deleted() -> None:
    """We test: whatever the timeouts, an agent with an assigned request is never drained or deleted: it is
    only disabled (so it gets no second job), and once shown disabled it is left alone."""
    cfg = config(pool("linux", template(placeholder=False), idle_timeout=1, provisioning_timeout=1))
    job = job_for("linux", request_id=1, created=9000)
    pod = pod_for(job, created=8999, started=8998)
    busy = agent(11, pod.name, online=True, busy_with=1, changed=9000)
    w = world(state("linux", running(1, pod.name, 11), agents=(busy,)), jobs=(job,), pods=(pod,))
    actions = plan(cfg, w, NOW)
    assert [a.kind for a in actions] == ["disable-agent"]
    assert plan(cfg, apply_to_world(w, actions), NOW) == []


def test_jobs_of_removed_template_are_deleted_unless_running() -> None:
    """We test: a pending Job of a template no longer configured is deleted; a running one is not killed."""
    pending = job_for("linux", request_id=1, template_name="old")
    pending_pod = pod_for(pending, phase="Pending", started=None)
    running_job = job_for("linux", request_id=2, template_name="old")
    running_pod = pod_for(running_job)
    w = world(
        state("linux", running(2, running_pod.name)), jobs=(pending, running_job), pods=(pending_pod, running_pod)
    )
    deletes = of(DeleteJob, plan(config(), w, NOW))
    assert [d.job_name for d in deletes] == [pending.name]


def test_jobs_of_removed_pool_are_deleted_unless_running() -> None:
    """We test: Jobs of a pool removed from the config go once their pod is not running."""
    gone = job_for("windows", request_id=1)
    alive = job_for("windows", request_id=2)
    w = world(state("linux"), jobs=(gone, alive), pods=(pod_for(alive),))
    assert [d.job_name for d in of(DeleteJob, plan(config(), w, NOW))] == [gone.name]


def test_finished_jobs_past_ttl_are_deleted() -> None:
    """We test: without a TTL controller, finished Jobs older than ttlSecondsAfterFinished go."""
    old = job_for("linux", request_id=1, finished=1000)
    fresh = job_for("linux", request_id=2, finished=10)
    deletes = of(DeleteJob, plan(config(ttl_seconds_after_finished=300), world(state("linux"), jobs=(old, fresh)), NOW))
    assert [d.job_name for d in deletes] == [old.name]


def test_agents_listed_only_when_needed() -> None:
    """We test: the agent list is read when never read, after sweepInterval, when a pod finished since
    the last read, or when idle pods exceed the standby allowance; otherwise not."""
    cfg = config(sweep_interval=300)
    fresh = {"linux": ago(10)}
    assert pools_needing_agents(cfg, world(state("linux")), NOW) == {"linux"}
    quiet = replace(world(state("linux")), agents_observed=fresh)
    assert pools_needing_agents(cfg, quiet, NOW) == set()
    stale = replace(world(state("linux")), agents_observed={"linux": ago(301)})
    assert pools_needing_agents(cfg, stale, NOW) == {"linux"}
    done = job_for("linux", request_id=1, finished=5)
    finished = replace(world(state("linux"), jobs=(done,)), agents_observed=fresh)
    assert pools_needing_agents(cfg, finished, NOW) == {"linux"}
    old_done = job_for("linux", request_id=1, finished=50)
    handled = replace(world(state("linux"), jobs=(old_done,)), agents_observed=fresh)
    assert pools_needing_agents(cfg, handled, NOW) == set()
    idle_job = job_for("linux", request_id=2, created=1000)
    idle_pod = pod_for(idle_job, created=999, started=998)
    idle = replace(world(state("linux"), jobs=(idle_job,), pods=(idle_pod,)), agents_observed=fresh)
    assert pools_needing_agents(cfg, idle, NOW) == {"linux"}
    busy = replace(
        world(state("linux", running(2, idle_pod.name)), jobs=(idle_job,), pods=(idle_pod,)), agents_observed=fresh
    )
    assert pools_needing_agents(cfg, busy, NOW) == set()


def test_finished_agent_with_known_id_is_pruned_without_listing() -> None:
    """We test: when the agent's id is known from the request it ran, its finished pod gets its registration
    deleted without listing the pool's agents, once; the pool's agents are then not listed for it."""
    job = job_for("linux", request_id=1, finished=5)
    pod = pod_for(job, phase="Succeeded", finished=5)
    known = replace(
        world(state("linux"), jobs=(job,), pods=(pod,)), agent_ids={pod.name: 31}, agents_observed={"linux": ago(60)}
    )
    pruned = of(DeleteAgent, plan(config(), known, NOW))
    assert [(a.agent_id, a.reason) for a in pruned] == [(31, "offline and its pod finished")]
    assert pools_needing_agents(config(), known, NOW) == set()
    done = replace(known, pruned=frozenset({pod.name}))
    assert of(DeleteAgent, plan(config(), done, NOW)) == []
    unknown = replace(known, agent_ids={})
    assert pools_needing_agents(config(), unknown, NOW) == {"linux"}
