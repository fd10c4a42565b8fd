"""Submitting jobs (idempotency, targeting, modes, continuous jobs) and which agent may claim what."""

from __future__ import annotations

from datetime import timedelta

import pytest

from aegis_site.core.errors import InvalidTarget, NotFound
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from registry import actions as registry_actions
from registry.models import AdminState
from tasks import actions
from tasks.engine.checks import IdempotencyConflict
from tasks.engine.reports import Report
from tasks.models import Job, JobMode, JobState, Task, TaskEvent, TaskState

pytestmark = pytest.mark.django_db


def pinned_agents(job: Job) -> list[str]:
    tasks = Task.objects.filter(job=job)
    assert all(task.pinned for task in tasks)
    return sorted(str(task.agent_id) for task in tasks)


def claimed_jobs(agent_id: str, limit: int = 10, push: bool = False) -> list[int]:
    return [a.job_id for a in actions.claim_tasks(agent_id, limit, push=push)]


# --- idempotency --------------------------------------------------------------------


def test_same_idempotency_key_returns_the_same_job_without_new_tasks(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    make_agent("a2")
    job, created = actions.submit_job(spec(idempotency_key="deploy-42"), operator)

    again, created_again = actions.submit_job(spec(idempotency_key="deploy-42"), operator)

    assert (created, created_again) == (True, False)
    assert again.pk == job.pk
    assert Job.objects.count() == 1
    assert Task.objects.count() == 2
    assert AuditEvent.objects.filter(action="job.submit").count() == 1


def test_same_idempotency_key_with_another_specification_is_a_conflict_naming_the_job(make_agent, spec, operator):
    make_agent("a1")
    job, _ = actions.submit_job(spec(idempotency_key="deploy-42"), operator)

    with pytest.raises(IdempotencyConflict) as conflict:
        actions.submit_job(spec(idempotency_key="deploy-42", payload={"other": 1}), operator)

    assert conflict.value.details == {"existing_job": job.pk, "idempotency_key": "deploy-42"}
    assert f"used by job {job.pk} with a different specification" in str(conflict.value)
    assert Job.objects.count() == 1


def test_a_job_from_before_fingerprints_matches_any_body_with_its_key(make_agent, spec, operator):
    make_agent("a1")
    job, _ = actions.submit_job(spec(idempotency_key="old"), operator)
    Job.objects.filter(pk=job.pk).update(spec_fingerprint="")  # as migration 0007 leaves older jobs

    again, created = actions.submit_job(spec(idempotency_key="old", payload={"other": 1}), operator)

    assert (again.pk, created) == (job.pk, False)


def test_resubmitting_after_new_agents_appear_adds_no_tasks(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    job, _ = actions.submit_job(spec(idempotency_key="k"), operator)
    make_agent("a2")

    again, created = actions.submit_job(spec(idempotency_key="k"), operator)

    assert not created
    assert again.pk == job.pk
    assert pinned_agents(job) == ["a1"]


def test_different_idempotency_keys_create_separate_jobs(make_agent, spec, operator, frozen_clock):
    make_agent("a1")

    first, _ = actions.submit_job(spec(idempotency_key="one"), operator)
    second, created = actions.submit_job(spec(idempotency_key="two"), operator)

    assert created
    assert first.pk != second.pk
    assert Task.objects.count() == 2


def test_jobs_without_idempotency_key_are_never_merged(make_agent, spec, operator, frozen_clock):
    make_agent("a1")

    actions.submit_job(spec(), operator)
    _, created = actions.submit_job(spec(), operator)

    assert created
    assert Job.objects.count() == 2


# --- mode 'each': targeting ---------------------------------------------------------


@pytest.fixture
def fleet(make_agent, frozen_clock):
    make_agent("eu-1", labels={"region": "eu", "tier": "web"}, capabilities=["echo", "shell"])
    make_agent("eu-2", labels={"region": "eu", "tier": "db"}, capabilities=["echo"])
    make_agent("us-1", labels={"region": "us", "tier": "web"}, capabilities=["echo", "shell", "gpu"])
    make_agent("ap-1", labels={"region": "ap"}, capabilities=[])


def test_each_mode_creates_one_pinned_task_per_agent_when_target_is_empty(fleet, spec, operator):
    job, _ = actions.submit_job(spec(), operator)

    assert pinned_agents(job) == ["ap-1", "eu-1", "eu-2", "us-1"]
    job.refresh_from_db()
    assert job.tasks_total == 4
    assert set(TaskEvent.objects.filter(task__job=job).values_list("kind", "to_state")) == {("created", "queued")}


def test_label_selector_picks_agents_with_that_label(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}), operator)

    assert pinned_agents(job) == ["eu-1", "eu-2"]


def test_label_selector_with_list_value_matches_any_listed_value(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": ["eu", "ap"]}), operator)

    assert pinned_agents(job) == ["ap-1", "eu-1", "eu-2"]


def test_label_selector_requires_every_key(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": ["eu", "ap"], "tier": "web"}), operator)

    assert pinned_agents(job) == ["eu-1"]


def test_required_capabilities_must_all_be_present(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_capabilities=["shell", "gpu"]), operator)

    assert pinned_agents(job) == ["us-1"]


def test_explicit_agent_ids_select_only_those_agents(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_agent_ids=["us-1", "ap-1"]), operator)

    assert pinned_agents(job) == ["ap-1", "us-1"]


def test_explicit_ids_with_labels_select_agents_matching_both(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_agent_ids=["eu-1", "us-1"], target_labels={"region": "eu"}), operator)

    assert pinned_agents(job) == ["eu-1"]


def test_disabled_agents_get_no_task(fleet, make_agent, spec, operator):
    make_agent("eu-3", labels={"region": "eu"}, admin_state=AdminState.DISABLED)

    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}), operator)

    assert pinned_agents(job) == ["eu-1", "eu-2"]


def test_unknown_explicit_agent_id_raises_and_creates_nothing(fleet, spec, operator):
    with pytest.raises(InvalidTarget, match="ghost"):
        actions.submit_job(spec(target_agent_ids=["eu-1", "ghost"]), operator)

    assert not Job.objects.exists()
    assert not Task.objects.exists()
    assert not TaskEvent.objects.exists()
    assert not AuditEvent.objects.exists()


def test_pinned_task_is_claimed_only_by_its_agent(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_agent_ids=["eu-1"]), operator)

    assert claimed_jobs("eu-2") == []
    assert claimed_jobs("us-1") == []
    assert claimed_jobs("eu-1") == [job.pk]


# --- mode 'any' ---------------------------------------------------------------------


def test_any_mode_creates_task_count_unpinned_tasks(fleet, spec, operator):
    job, _ = actions.submit_job(spec(mode=JobMode.ANY, task_count=3, target_capabilities=["shell"]), operator)

    tasks = Task.objects.filter(job=job)
    assert len(tasks) == 3
    assert all(task.agent_id is None and not task.pinned for task in tasks)
    job.refresh_from_db()
    assert (job.tasks_total, job.task_count) == (3, 3)


def test_any_mode_tasks_are_claimed_only_by_matching_agents(fleet, spec, operator):
    job, _ = actions.submit_job(spec(mode=JobMode.ANY, task_count=3, target_capabilities=["shell"]), operator)

    assert claimed_jobs("eu-2") == []
    assert claimed_jobs("ap-1") == []
    assert claimed_jobs("eu-1", limit=2) == [job.pk, job.pk]
    assert claimed_jobs("us-1") == [job.pk]
    assert claimed_jobs("us-1") == []


def test_any_mode_task_goes_to_whichever_matching_agent_claims_first(fleet, spec, operator):
    actions.submit_job(spec(mode=JobMode.ANY, task_count=1, target_labels={"tier": "web"}), operator)

    (assignment,) = actions.claim_tasks("us-1", 10)

    assert Task.objects.get(pk=assignment.task_id).agent_id == "us-1"
    assert claimed_jobs("eu-1") == []


# --- continuous jobs ----------------------------------------------------------------


def test_new_matching_agent_gets_a_task_in_a_continuous_job(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}, continuous=True), operator)

    registry_actions.register_agent("eu-9", operator, labels={"region": "eu"})

    assert pinned_agents(job) == ["eu-1", "eu-2", "eu-9"]
    job.refresh_from_db()
    assert job.tasks_total == 3
    assert claimed_jobs("eu-9") == [job.pk]


def test_new_agent_that_does_not_match_gets_no_task_in_a_continuous_job(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}, continuous=True), operator)

    registry_actions.register_agent("us-9", operator, labels={"region": "us"})

    assert pinned_agents(job) == ["eu-1", "eu-2"]


def test_agent_relabelled_into_a_continuous_job_gets_one_task(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}, continuous=True), operator)

    registry_actions.register_agent("us-1", operator, labels={"region": "eu"})
    registry_actions.register_agent("us-1", operator, labels={"region": "eu"})

    assert pinned_agents(job) == ["eu-1", "eu-2", "us-1"]


def test_agent_registered_again_gets_no_second_task_in_a_continuous_job(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}, continuous=True), operator)

    registry_actions.register_agent("eu-1", operator, labels={"region": "eu", "tier": "web"})

    assert pinned_agents(job) == ["eu-1", "eu-2"]


def test_new_agent_gets_no_task_in_a_one_shot_job(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}), operator)

    registry_actions.register_agent("eu-9", operator, labels={"region": "eu"})

    assert pinned_agents(job) == ["eu-1", "eu-2"]


def test_new_agent_gets_no_task_in_a_canceled_continuous_job(fleet, spec, operator):
    job, _ = actions.submit_job(spec(target_labels={"region": "eu"}, continuous=True), operator)
    actions.cancel_job(job.pk, operator)

    registry_actions.register_agent("eu-9", operator, labels={"region": "eu"})

    assert pinned_agents(job) == ["eu-1", "eu-2"]


def test_continuous_job_that_matched_nobody_picks_up_the_first_agent(make_agent, spec, operator, frozen_clock):
    job, _ = actions.submit_job(spec(target_capabilities=["gpu"], continuous=True), operator)

    registry_actions.register_agent("g-1", operator, capabilities=["gpu"])

    assert pinned_agents(job) == ["g-1"]
    job.refresh_from_db()
    assert job.state == JobState.SCHEDULED


# --- when and in which order tasks are claimed ------------------------------------------


def test_future_not_before_delays_the_claim(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    start = frozen_clock() + timedelta(minutes=10)
    job, _ = actions.submit_job(spec(not_before=start), operator)
    assert Task.objects.get(job=job).not_before == start

    frozen_clock.advance(599)
    assert claimed_jobs("a1") == []

    frozen_clock.advance(1)
    assert claimed_jobs("a1") == [job.pk]


def test_past_not_before_is_claimable_at_once(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    job, _ = actions.submit_job(spec(not_before=frozen_clock() - timedelta(hours=1)), operator)

    assert claimed_jobs("a1") == [job.pk]


def test_higher_priority_is_claimed_first_then_oldest_first(make_agent, spec, operator, frozen_clock):
    make_agent("a1", max_concurrency=10)
    low, _ = actions.submit_job(spec(priority=0), operator)
    first_high, _ = actions.submit_job(spec(priority=5), operator)
    urgent, _ = actions.submit_job(spec(priority=9), operator)
    second_high, _ = actions.submit_job(spec(priority=5), operator)

    assert claimed_jobs("a1", limit=1) == [urgent.pk]
    assert claimed_jobs("a1", limit=2) == [first_high.pk, second_high.pk]
    assert claimed_jobs("a1", limit=5) == [low.pk]


def test_claim_never_exceeds_agent_max_concurrency(make_agent, spec, operator, frozen_clock):
    make_agent("a1", max_concurrency=2)
    job, _ = actions.submit_job(spec(mode=JobMode.ANY, task_count=5), operator)

    first = actions.claim_tasks("a1", 10)
    assert len(first) == 2
    assert actions.claim_tasks("a1", 10) == []

    actions.report("a1", Report("succeeded", first[0].task_id, 1, message_id="done-1"))
    assert len(actions.claim_tasks("a1", 10)) == 1
    assert Task.objects.filter(job=job, agent_id="a1", state__in=["assigned", "running"]).count() == 2


def test_claim_returns_at_most_the_requested_number(make_agent, spec, operator, frozen_clock):
    make_agent("a1", max_concurrency=10)
    actions.submit_job(spec(mode=JobMode.ANY, task_count=5), operator)

    assert len(actions.claim_tasks("a1", 3)) == 3
    assert Task.objects.filter(state=TaskState.ASSIGNED).count() == 3


@pytest.mark.parametrize("admin_state", [AdminState.DRAINING, AdminState.DISABLED])
@pytest.mark.parametrize("push", [False, True])
def test_draining_or_disabled_agent_gets_nothing(make_agent, spec, operator, frozen_clock, admin_state, push):
    make_agent("a1")
    actions.submit_job(spec(), operator)
    registry_actions.set_admin_state("a1", admin_state, operator)
    actions.submit_job(spec(mode=JobMode.ANY, task_count=1), operator)

    assert claimed_jobs("a1", push=push) == []
    assert not Task.objects.filter(state=TaskState.ASSIGNED).exists()


def test_offline_agent_gets_nothing_pushed(make_agent, spec, operator, frozen_clock):
    make_agent("a1", online=False)
    actions.submit_job(spec(), operator)

    assert claimed_jobs("a1", push=True) == []
    assert not OutboxMessage.objects.filter(message_type="task.assign").exists()


def test_offline_agent_can_still_pull_its_tasks(make_agent, spec, operator, frozen_clock):
    make_agent("a1", online=False)
    job, _ = actions.submit_job(spec(), operator)

    assert claimed_jobs("a1", push=False) == [job.pk]


def test_push_claim_writes_an_assign_message_per_task(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    job, _ = actions.submit_job(spec(payload={"n": 1}, mode=JobMode.ANY, task_count=2), operator)

    assignments = actions.claim_tasks("a1", 10, push=True)

    messages = list(OutboxMessage.objects.filter(message_type="task.assign").order_by("id"))
    assert len(messages) == 2
    assert {m.agent_id for m in messages} == {"a1"}
    assert {m.topic for m in messages} == {"aegis/agents/a1/inbox"}
    assert [m.payload["task"] for m in messages] == [a.as_message() for a in assignments]
    assert {m.payload["task"]["job_id"] for m in messages} == {job.pk}


def test_pull_claim_writes_no_outbox_message(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(), operator)

    actions.claim_tasks("a1", 10, push=False)

    assert not OutboxMessage.objects.exists()


def test_claim_for_unknown_agent_raises_not_found(db):
    with pytest.raises(NotFound):
        actions.claim_tasks("nobody", 10)


def test_submit_is_audited(make_agent, spec, operator, frozen_clock):
    make_agent("a1")

    job, _ = actions.submit_job(spec(), operator)

    (audit,) = AuditEvent.objects.filter(action="job.submit")
    assert (audit.actor_label, audit.object_type, audit.object_id) == ("tester", "job", str(job.pk))
    assert audit.data["tasks"] == 1
