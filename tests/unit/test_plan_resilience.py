"""Unit tests of plan()'s issue-20 rules: stale capabilities, crash backoff, rescue of lost requests."""

from __future__ import annotations

from plan_builders import NOW, agent, config, job_for, of, pod_for, pool, queued, state, template, world

from reconciler.model import CreateJob, DrainAgent
from reconciler.plan import plan


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
