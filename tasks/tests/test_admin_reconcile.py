"""The reconciliation page: tasks whose state contradicts reality are listed, and its fixes resolve them.

Built with the frozen clock: a running task on an agent that went offline, an
assigned task past its delivery timeout and a running task whose lease expired,
none of them handled by the dispatcher yet.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aegis_site.core.audit import Actor
from aegis_site.core.errors import InvalidTransition
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from registry import actions as registry_actions
from tasks import actions
from tasks.admin import reconcile
from tasks.engine.reports import Report
from tasks.engine.stuck import HANDLING_GRACE
from tasks.models import Job, JobState, Task, TaskEvent, TaskEventKind, TaskState
from tests.support import staff_user

pytestmark = pytest.mark.django_db

OPERATOR = Actor("seed")
PAGE = "admin:tasks_task_reconcile"
FIX = "admin:tasks_task_reconcile_fix"
DELIVERY_S = 60
EXECUTION_S = 30


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def send(agent_id: str, kind: str, task: Task, attempt: int | None = None, **fields: Any) -> str:
    report = Report(kind, task.pk, attempt or task.attempt, message_id=uuid.uuid4().hex, **fields)
    return actions.report(agent_id, report).status


def held_task(spec: Any, agent_id: str, accept: bool, **fields: Any) -> Task:
    job, _ = actions.submit_job(spec(target_agent_ids=[agent_id], **fields), OPERATOR)
    (assignment,) = actions.claim_tasks(agent_id, 10)
    task = Task.objects.get(pk=assignment.task_id, job=job)
    if accept:
        assert send(agent_id, "accepted", task) == "applied"
        task.refresh_from_db()
    return task


@dataclass
class Stuck:
    on_offline_agent: Task
    delivery_overdue: Task
    lease_expired: Task
    healthy: Task


@pytest.fixture
def stuck(spec, make_agent, frozen_clock) -> Stuck:
    for agent_id in ("node-gone", "node-slow", "node-busy", "node-fine"):
        make_agent(agent_id)
    stuck = Stuck(
        on_offline_agent=held_task(spec, "node-gone", accept=True),
        delivery_overdue=held_task(spec, "node-slow", accept=False, delivery_timeout_s=DELIVERY_S),
        lease_expired=held_task(spec, "node-busy", accept=True, execution_timeout_s=EXECUTION_S),
        healthy=held_task(spec, "node-fine", accept=True),
    )
    registry_actions.mark_offline("node-gone", "connection lost")
    frozen_clock.advance(DELIVERY_S + HANDLING_GRACE.total_seconds() + 5)
    for name in ("node-slow", "node-busy", "node-fine"):
        registry_actions.mark_online(name)
    return stuck


def listed(client: Client) -> dict[str, list[int]]:
    response = client.get(reverse(PAGE))
    assert response.status_code == 200
    return {group.group.code: [task.pk for task in group.tasks] for group in response.context["groups"]}


def fix(client: Client, name: str, *tasks: Task, follow: bool = False) -> Any:
    pairs = [f"{task.pk}:{task.attempt}" for task in tasks]
    return client.post(reverse(FIX), {"fix": name, "task": pairs}, follow=follow)


def audits(action: str, task: Task) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, object_type="task", object_id=str(task.pk)).order_by("id"))


def reload(task: Task) -> Task:
    return Task.objects.get(pk=task.pk)


def test_page_lists_each_contradiction_in_its_group(admin_client, stuck):
    assert listed(admin_client) == {
        "offline_agent": [stuck.on_offline_agent.pk],
        "delivery_overdue": [stuck.delivery_overdue.pk],
        "lease_expired": [stuck.lease_expired.pk],
    }


def test_page_is_linked_from_the_task_list_and_updates_live(admin_client, stuck):
    assert reverse(PAGE) == "/admin/tasks/task/reconcile/"
    assert reverse(PAGE) in admin_client.get(reverse("admin:tasks_task_changelist")).content.decode()
    page = admin_client.get(reverse(PAGE)).content.decode()
    assert 'id="reconcile-groups" data-live="tasks agents"' in page
    assert f'value="{stuck.lease_expired.pk}:{stuck.lease_expired.attempt}"' in page


def test_a_lease_that_just_ran_out_is_left_to_the_dispatcher(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    held_task(spec, "node-1", accept=False, delivery_timeout_s=DELIVERY_S)

    frozen_clock.advance(DELIVERY_S + 1)

    assert listed(admin_client)["delivery_overdue"] == []


def test_requeue_ends_each_attempt_and_queues_the_task_again(admin_client, admin_user, stuck):
    for task in (stuck.on_offline_agent, stuck.delivery_overdue, stuck.lease_expired):
        fix(admin_client, "end_attempt", task)

    expected = {
        stuck.on_offline_agent.pk: TaskEventKind.AGENT_LOST,
        stuck.delivery_overdue.pk: TaskEventKind.DELIVERY_TIMEOUT,
        stuck.lease_expired.pk: TaskEventKind.EXECUTION_TIMEOUT,
    }
    for task_id, kind in expected.items():
        task = Task.objects.get(pk=task_id)
        assert task.state == TaskState.QUEUED
        assert task.lease_expires_at is None
        event = TaskEvent.objects.filter(task_id=task_id).latest("id")
        assert (event.kind, event.attempt, event.to_state) == (kind, task.attempt, TaskState.QUEUED)
        (audit,) = audits("task.end_attempt", task)
        assert (audit.actor_label, audit.actor_id) == (admin_user.get_username(), admin_user.pk)
        assert audit.data["attempt"] == task.attempt
    assert listed(admin_client) == {"offline_agent": [], "delivery_overdue": [], "lease_expired": []}
    assert reload(stuck.healthy).state == TaskState.RUNNING


def test_requeue_tells_the_agent_to_stop_and_fences_its_late_result(admin_client, stuck, frozen_clock):
    task = stuck.lease_expired

    fix(admin_client, "end_attempt", task)

    cancel = OutboxMessage.objects.get(agent_id="node-busy", message_type="task.cancel")
    assert (cancel.payload["task_id"], cancel.payload["attempt"], cancel.payload["force"]) == (
        task.pk,
        task.attempt,
        True,
    )
    assert send("node-busy", "succeeded", task, result={}) == "stale"
    assert reload(task).state == TaskState.QUEUED
    # The next assignment is a new attempt, after the backoff.
    frozen_clock.advance(200)
    (assignment,) = actions.claim_tasks("node-busy", 10)
    assert (assignment.task_id, assignment.attempt) == (task.pk, task.attempt + 1)


def test_requeue_without_attempts_left_ends_the_task_and_counts_it(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = held_task(spec, "node-1", accept=True, max_attempts=1, execution_timeout_s=EXECUTION_S)
    frozen_clock.advance(EXECUTION_S + HANDLING_GRACE.total_seconds() + 1)
    assert "End attempt (none left)" in admin_client.get(reverse(PAGE)).content.decode()

    fix(admin_client, "end_attempt", task)

    assert reload(task).state == TaskState.TIMED_OUT
    job = Job.objects.get(pk=task.job_id)
    assert (job.state, job.tasks_failed) == (JobState.FAILED, 1)


def test_cancel_fix_ends_the_task_for_good(admin_client, admin_user, stuck):
    fix(admin_client, "cancel", stuck.on_offline_agent)

    assert reload(stuck.on_offline_agent).state == TaskState.CANCELED
    (audit,) = audits("task.cancel", stuck.on_offline_agent)
    assert (audit.actor_label, audit.data["force"]) == (admin_user.get_username(), True)
    assert listed(admin_client)["offline_agent"] == []


def test_requeue_all_shown_fixes_a_whole_group(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-gone")
    tasks = [held_task(spec, "node-gone", accept=True) for _ in range(3)]
    registry_actions.mark_offline("node-gone", "connection lost")
    assert "Requeue all 3 shown" in admin_client.get(reverse(PAGE)).content.decode()

    fix(admin_client, "end_attempt", *tasks)

    assert {reload(task).state for task in tasks} == {TaskState.QUEUED}
    assert AuditEvent.objects.filter(action="task.end_attempt").count() == 3


def test_a_fix_for_an_attempt_that_moved_on_changes_nothing(admin_client, stuck):
    task = stuck.delivery_overdue
    actions.expire_leases()  # the dispatcher got there first
    assert reload(task).state == TaskState.QUEUED
    history = TaskEvent.objects.filter(task=task).count()

    response = fix(admin_client, "end_attempt", task, follow=True)

    assert reload(task).state == TaskState.QUEUED
    assert TaskEvent.objects.filter(task=task).count() == history
    assert not audits("task.end_attempt", task)
    assert "moved on" in response.content.decode()


def test_a_healthy_task_is_not_cut_short(admin_client, stuck):
    response = fix(admin_client, "end_attempt", stuck.healthy, follow=True)

    assert reload(stuck.healthy).state == TaskState.RUNNING
    assert not audits("task.end_attempt", stuck.healthy)
    assert "cancel it instead" in response.content.decode()
    with pytest.raises(InvalidTransition):
        actions.end_held_attempt(stuck.healthy.pk, stuck.healthy.attempt, OPERATOR)


def test_a_malformed_fix_changes_nothing(admin_client, stuck):
    admin_client.post(reverse(FIX), {"fix": "end_attempt", "task": ["x:y"]})
    admin_client.post(reverse(FIX), {"fix": "drop_table", "task": [f"{stuck.lease_expired.pk}:1"]})

    assert reload(stuck.lease_expired).state == TaskState.RUNNING
    assert not AuditEvent.objects.filter(action__startswith="task.", actor_label="admin").exists()


def test_long_groups_show_the_first_rows_and_a_capped_count(admin_client, spec, make_agent, frozen_clock, monkeypatch):
    monkeypatch.setattr(reconcile, "SHOWN", 2)
    make_agent("node-gone", max_concurrency=10)
    for _ in range(5):
        held_task(spec, "node-gone", accept=True)
    registry_actions.mark_offline("node-gone", "connection lost")

    page = admin_client.get(reverse(PAGE)).content.decode()
    assert "3 more not shown" in page

    monkeypatch.setattr(reconcile, "COUNT_CAP", 3)
    response = admin_client.get(reverse(PAGE))
    (group, *_) = response.context["groups"]
    assert (len(group.tasks), group.total, group.capped) == (2, 4, True)
    assert "more than 1 more not shown" in response.content.decode()


def test_page_costs_the_same_queries_for_3_or_30_stuck_tasks(admin_client, spec, make_agent, frozen_clock):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(reverse(PAGE)).status_code == 200
        return len(captured.captured_queries)

    make_agent("node-gone", max_concurrency=50)
    for _ in range(3):
        held_task(spec, "node-gone", accept=True)
    registry_actions.mark_offline("node-gone", "connection lost")
    few = queries()
    registry_actions.mark_online("node-gone")
    for _ in range(27):
        held_task(spec, "node-gone", accept=True)
    registry_actions.mark_offline("node-gone", "connection lost")

    assert len(listed(admin_client)["offline_agent"]) == 30
    assert queries() == few


# --- who may -----------------------------------------------------------------------------


def test_user_who_is_not_staff_is_sent_to_the_login_page(client, stuck):
    client.force_login(staff_user("visitor", is_staff=False))

    for response in (client.get(reverse(PAGE)), fix(client, "end_attempt", stuck.lease_expired)):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert reload(stuck.lease_expired).state == TaskState.RUNNING


def test_staff_without_change_permission_sees_the_page_but_cannot_fix(client, stuck):
    client.force_login(staff_user("watcher", perms=("tasks.view_task",)))
    before = AuditEvent.objects.count()

    page = client.get(reverse(PAGE))
    assert page.status_code == 200
    assert 'name="fix"' not in page.content.decode()
    for name, task in (("end_attempt", stuck.lease_expired), ("cancel", stuck.on_offline_agent)):
        assert fix(client, name, task).status_code == 403

    assert reload(stuck.lease_expired).state == TaskState.RUNNING
    assert reload(stuck.on_offline_agent).state == TaskState.RUNNING
    assert AuditEvent.objects.count() == before


def test_staff_without_any_task_permission_is_refused_the_page(client, stuck):
    client.force_login(staff_user("stranger"))

    assert client.get(reverse(PAGE)).status_code == 403


def test_fix_answers_only_post(admin_client, stuck):
    assert admin_client.get(reverse(FIX)).status_code == 405
