"""The task pages of the admin: list, filters, detail (explain, JSON, timeline), cancel and retry, audit rows."""

from __future__ import annotations

import html
import json
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from registry.models import Agent
from tasks import actions
from tasks.admin import tasks as task_admin
from tasks.engine.reports import Report
from tasks.models import Job, Task, TaskEvent, TaskState
from tests.support import staff_user

pytestmark = pytest.mark.django_db

OPERATOR = Actor("seed")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def changelist(query: str = "") -> str:
    return reverse("admin:tasks_task_changelist") + query


def detail(task_id: int) -> str:
    return reverse("admin:tasks_task_change", args=[task_id])


def operate(task_id: int) -> str:
    return reverse("admin:tasks_task_operate", args=[task_id])


def send(agent_id: str, kind: str, task: Task, **fields: Any) -> None:
    outcome = actions.report(agent_id, Report(kind, task.pk, task.attempt, message_id=uuid.uuid4().hex, **fields))
    assert outcome.status == "applied", outcome


def submit(spec: Any, **fields: Any) -> Job:
    job, _ = actions.submit_job(spec(**fields), OPERATOR)
    return job


def pinned_task(spec: Any, agent_id: str, **fields: Any) -> Task:
    job = submit(spec, target_agent_ids=[agent_id], **fields)
    return Task.objects.get(job=job)


def running_task(spec: Any, agent_id: str, **fields: Any) -> Task:
    task = pinned_task(spec, agent_id, **fields)
    actions.claim_tasks(agent_id, 10)
    task.refresh_from_db()
    send(agent_id, "accepted", task)
    task.refresh_from_db()
    assert task.state == TaskState.RUNNING
    return task


def failed_task(spec: Any, agent_id: str) -> Task:
    task = running_task(spec, agent_id, max_attempts=1)
    send(agent_id, "failed", task, error={"code": "E", "message": "boom"})
    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    return task


def listed_ids(client: Client, query: str = "") -> list[int]:
    response = client.get(changelist(query))
    assert response.status_code == 200
    return [task.pk for task in response.context["cl"].result_list]


def audit_rows(action: str, task_id: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, object_type="task", object_id=str(task_id)).order_by("id"))


def is_login_redirect(response: Any) -> bool:
    return response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


# --- the list --------------------------------------------------------------------------


def test_list_shows_links_state_badge_attempts_and_age(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = running_task(spec, "node-1")

    page = admin_client.get(changelist()).content.decode()

    assert f'href="{reverse("admin:tasks_job_change", args=[task.job_id])}"' in page
    assert f'href="{reverse("admin:registry_agent_change", args=["node-1"])}"' in page
    assert '<span class="task-badge task-running">running</span>' in page
    assert "1/3" in page
    assert "just now" in page  # the age column
    assert "lease ends in 10" in page  # execution timeout 600 s: "in 10 minutes"
    assert 'data-live="tasks"' in page
    assert reverse("admin:tasks_task_reconcile") in page


def test_list_is_newest_first(admin_client, spec):
    first = Task.objects.get(job=submit(spec, mode="any"))
    second = Task.objects.get(job=submit(spec, mode="any"))

    assert listed_ids(admin_client) == [second.pk, first.pk]


def test_list_sorts_by_id_only(admin_client):
    model_admin = task_admin.TaskAdmin(Task, task_admin.admin.site)
    assert list(model_admin.sortable_by) == ["id"]


def test_filters_by_state_kind_agent_and_job(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    make_agent("node-2")
    on_one = running_task(spec, "node-1", kind="deploy")
    on_two = running_task(spec, "node-2")
    queued = Task.objects.get(job=submit(spec, mode="any", kind="deploy", target_capabilities=["none"]))

    assert listed_ids(admin_client, "?state__exact=queued") == [queued.pk]
    assert listed_ids(admin_client, "?kind=deploy") == [queued.pk, on_one.pk]
    assert listed_ids(admin_client, "?agent=node-2") == [on_two.pk]
    assert listed_ids(admin_client, f"?job={on_one.job_id}") == [on_one.pk]
    assert listed_ids(admin_client, "?job=not-a-number") == []
    assert listed_ids(admin_client, "?kind=deploy&state__exact=running") == [on_one.pk]


def test_typed_filter_keeps_the_other_filters_in_its_form(admin_client):
    page = admin_client.get(changelist("?state__exact=queued&kind=echo")).content.decode()

    agent_form = page[page.index('id="filter-agent"') - 600 : page.index('id="filter-agent"')]
    assert '<input type="hidden" name="state__exact" value="queued">' in agent_form
    assert '<input type="hidden" name="kind" value="echo">' in agent_form


def test_filters_by_attempt(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    tasks = {n: running_task(spec, "node-1") for n in (1, 2, 3)}
    for number, task in tasks.items():
        Task.objects.filter(pk=task.pk).update(attempt=number)

    assert listed_ids(admin_client, "?attempt=1") == [tasks[1].pk]
    assert listed_ids(admin_client, "?attempt=2") == [tasks[2].pk]
    assert listed_ids(admin_client, "?attempt=3%2B") == [tasks[3].pk]


def test_filters_by_age(admin_client, spec):
    ages = {"new": timedelta(minutes=1), "hour": timedelta(minutes=30), "day": timedelta(hours=5)}
    ages["old"] = timedelta(days=3)
    tasks = {}
    for name, age in ages.items():
        tasks[name] = Task.objects.get(job=submit(spec, mode="any"))
        Task.objects.filter(pk=tasks[name].pk).update(created_at=timezone.now() - age)

    assert listed_ids(admin_client, "?age=5m") == [tasks["new"].pk]
    assert listed_ids(admin_client, "?age=1h") == [tasks["hour"].pk, tasks["new"].pk]
    assert listed_ids(admin_client, "?age=1d") == [tasks["day"].pk, tasks["hour"].pk, tasks["new"].pk]
    assert listed_ids(admin_client, "?age=older") == [tasks["old"].pk]


def test_search_finds_a_task_by_id_and_ignores_words(admin_client, spec):
    task = Task.objects.get(job=submit(spec, mode="any"))
    submit(spec, mode="any")

    assert listed_ids(admin_client, f"?q={task.pk}") == [task.pk]
    assert listed_ids(admin_client, "?q=node-1") == []


def page_queries(client: Client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return [query["sql"] for query in captured.captured_queries]


def test_list_costs_the_same_queries_for_3_or_30_tasks(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1", max_concurrency=50)
    for _ in range(3):
        running_task(spec, "node-1")
    few = page_queries(admin_client, changelist())

    for _ in range(27):
        running_task(spec, "node-1")
    many = page_queries(admin_client, changelist())

    assert Task.objects.count() == 30
    assert len(many) == len(few)
    agents_table = connection.ops.quote_name("agents")
    assert not [sql for sql in many if agents_table in sql]  # agent links come from the task row


# --- the detail page ---------------------------------------------------------------------


def region(page: str, element_id: str) -> str:
    """The text of the element with this id, up to the next element that has an id of its own."""
    start = page.index(f'id="{element_id}"')
    following = re.search(r'\sid="', page[start + 10 :])
    return page[start : start + 10 + following.start()] if following else page[start:]


def test_detail_explains_a_queued_task_that_no_agent_can_run(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1", capabilities=["cpu"])
    task = Task.objects.get(job=submit(spec, mode="any", target_capabilities=["gpu"]))

    page = admin_client.get(detail(task.pk)).content.decode()

    explanation = actions.explain_task(task.pk)
    assert explanation.code == "no_matching_agent"
    assert "capability gpu" in explanation.message
    assert html.escape(explanation.message) in region(page, "task-explain")
    assert '<span id="task-state" class="task-badge task-queued">queued</span>' in page


def test_detail_explains_a_held_task_too(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = running_task(spec, "node-1")

    page = admin_client.get(detail(task.pk)).content.decode()

    assert f"running on agent node-1 (attempt {task.attempt} of {task.max_attempts})" in region(page, "task-explain")


def test_detail_shows_payload_progress_result_and_error_as_indented_json(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    payload = {"image": "web:2", "env": {"A": "1"}}
    task = running_task(spec, "node-1", payload=payload)
    send("node-1", "progress", task, progress={"percent": 40})
    send("node-1", "succeeded", task, result={"log": ["done"]})

    page = admin_client.get(detail(task.pk)).content.decode()

    stored = Job.objects.get(pk=task.job_id).payload  # PostgreSQL's jsonb keeps its own key order
    assert stored == payload
    assert f'<pre id="task-payload">{html.escape(json.dumps(stored, indent=2))}</pre>' in page
    assert f'<pre id="task-progress">{html.escape(json.dumps({"percent": 40}, indent=2))}</pre>' in page
    assert f'<pre id="task-result">{html.escape(json.dumps({"log": ["done"]}, indent=2))}</pre>' in page
    assert 'id="task-error"' not in page
    assert f'href="{reverse("admin:tasks_job_change", args=[task.job_id])}"' in page
    assert f'href="{reverse("admin:registry_agent_change", args=["node-1"])}"' in page


def test_detail_timeline_lists_the_events_in_order(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = running_task(spec, "node-1")
    send("node-1", "progress", task, progress={"percent": 50})
    send("node-1", "failed", task, error={"code": "E", "message": "boom"})

    page = admin_client.get(detail(task.pk)).content.decode()

    kinds_shown = re.findall(r'class="timeline-event" data-kind="([a-z_]+)"', region(page, "task-timeline"))
    kinds_stored = list(TaskEvent.objects.filter(task=task).order_by("id").values_list("kind", flat=True))
    assert kinds_shown == kinds_stored == ["created", "assigned", "accepted", "progress", "failed"]
    assert "running → queued" in page  # the failure's transition, with attempts left
    assert html.escape('"code": "E"') in region(page, "task-timeline")


def test_detail_timeline_shows_the_latest_events_when_the_history_is_long(
    admin_client, spec, make_agent, frozen_clock, monkeypatch
):
    monkeypatch.setattr("tasks.admin.task_detail.TIMELINE_LIMIT", 3)
    make_agent("node-1")
    task = running_task(spec, "node-1")
    for percent in (10, 20, 30):
        send("node-1", "progress", task, progress={"percent": percent})

    timeline = region(admin_client.get(detail(task.pk)).content.decode(), "task-timeline")

    assert timeline.count('class="timeline-event"') == 3
    assert '"percent": 30' in html.unescape(timeline)
    assert "accepted" not in timeline
    assert "Only the latest 3 events" in timeline


def test_detail_costs_the_same_queries_for_3_or_30_events(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = running_task(spec, "node-1")
    few = page_queries(admin_client, detail(task.pk))

    for percent in range(27):
        send("node-1", "progress", task, progress={"percent": percent})
    many = page_queries(admin_client, detail(task.pk))

    assert TaskEvent.objects.filter(task=task).count() == 30
    assert len(many) == len(few)


def test_detail_buttons_follow_the_state(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    queued = Task.objects.get(job=submit(spec, mode="any", target_capabilities=["none"]))
    running = running_task(spec, "node-1")
    failed = failed_task(spec, "node-1")

    def buttons(task: Task) -> set[str]:
        page = admin_client.get(detail(task.pk)).content.decode()
        return set(re.findall(r'<button type="submit" name="(_[a-z_]+)"', page))

    assert buttons(queued) == {"_cancel"}
    assert buttons(running) == {"_cancel", "_force_cancel"}
    assert buttons(failed) == {"_retry"}


# --- cancel and retry --------------------------------------------------------------------


def test_cancel_button_cancels_a_queued_task_and_audits_the_operator(admin_client, admin_user, spec):
    task = Task.objects.get(job=submit(spec, mode="any"))

    response = admin_client.post(operate(task.pk), {"_cancel": "Cancel"})

    assert response.status_code == 302
    assert response["Location"] == detail(task.pk)
    task.refresh_from_db()
    assert task.state == TaskState.CANCELED
    (audit,) = audit_rows("task.cancel", task.pk)
    assert (audit.actor_label, audit.actor_id, audit.data["force"]) == (admin_user.get_username(), admin_user.pk, False)


def test_cancel_of_a_running_task_asks_the_agent_and_force_ends_it(
    admin_client, admin_user, spec, make_agent, frozen_clock
):
    make_agent("node-1")
    task = running_task(spec, "node-1")

    admin_client.post(operate(task.pk), {"_cancel": "Cancel"})
    task.refresh_from_db()
    assert task.state == TaskState.RUNNING
    assert task.cancel_requested_at is not None
    assert 'id="task-cancel-pending"' in admin_client.get(detail(task.pk)).content.decode()

    admin_client.post(operate(task.pk), {"_force_cancel": "Force cancel"})
    task.refresh_from_db()
    assert task.state == TaskState.CANCELED
    assert [row.data["force"] for row in audit_rows("task.cancel", task.pk)] == [False, True]
    assert {row.actor_label for row in audit_rows("task.cancel", task.pk)} == {admin_user.get_username()}


def test_retry_button_queues_a_failed_task_again(admin_client, admin_user, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = failed_task(spec, "node-1")

    admin_client.post(operate(task.pk), {"_retry": "Retry"})

    task.refresh_from_db()
    assert task.state == TaskState.QUEUED
    (audit,) = audit_rows("task.retry", task.pk)
    assert audit.actor_label == admin_user.get_username()


def test_a_refused_action_changes_nothing_and_says_why(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = running_task(spec, "node-1")

    response = admin_client.post(operate(task.pk), {"_retry": "Retry"}, follow=True)

    task.refresh_from_db()
    assert task.state == TaskState.RUNNING
    assert not audit_rows("task.retry", task.pk)
    assert "only failed, timed-out or canceled tasks retry" in response.content.decode()


def test_operate_answers_only_post(admin_client, spec):
    task = Task.objects.get(job=submit(spec, mode="any"))

    assert admin_client.get(operate(task.pk)).status_code == 405


def test_operate_needs_the_csrf_token(admin_user, spec):
    task = Task.objects.get(job=submit(spec, mode="any"))
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    assert client.post(operate(task.pk), {"_cancel": "Cancel"}).status_code == 403
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED


def bulk(client: Client, action: str, tasks: list[Task]) -> Any:
    return client.post(changelist(), {"action": action, "_selected_action": [task.pk for task in tasks]}, follow=True)


def test_bulk_cancel_and_retry_from_the_list(admin_client, admin_user, spec, make_agent, frozen_clock):
    make_agent("node-1")
    queued = [Task.objects.get(job=submit(spec, mode="any", target_capabilities=["none"])) for _ in range(2)]
    running = running_task(spec, "node-1")
    failed = [failed_task(spec, "node-1") for _ in range(2)]

    bulk(admin_client, "cancel_selected", queued)
    bulk(admin_client, "force_cancel_selected", [running])
    response = bulk(admin_client, "retry_selected", failed)

    states = dict(Task.objects.values_list("pk", "state"))
    assert [states[task.pk] for task in [*queued, running]] == [TaskState.CANCELED] * 3
    assert [states[task.pk] for task in failed] == [TaskState.QUEUED] * 2
    user = admin_user.get_username()
    for task in [*queued, running]:
        assert [row.actor_label for row in audit_rows("task.cancel", task.pk)] == [user]
    assert audit_rows("task.cancel", running.pk)[0].data["force"] is True
    for task in failed:
        assert [row.actor_label for row in audit_rows("task.retry", task.pk)] == [user]
    assert "2 task(s) queued again" in response.content.decode()


def test_bulk_action_reports_refusals_and_runs_the_rest(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    failed = failed_task(spec, "node-1")
    running = running_task(spec, "node-1")

    response = bulk(admin_client, "retry_selected", [failed, running])

    assert Task.objects.get(pk=failed.pk).state == TaskState.QUEUED
    assert Task.objects.get(pk=running.pk).state == TaskState.RUNNING
    page = response.content.decode()
    assert "1 task(s) queued again" in page
    assert f"{running.pk}: task {running.pk} is running" in page


def test_bulk_action_refuses_more_than_its_limit(admin_client, spec, monkeypatch):
    monkeypatch.setattr(task_admin, "BULK_LIMIT", 2)
    tasks = [Task.objects.get(job=submit(spec, mode="any")) for _ in range(3)]

    response = bulk(admin_client, "cancel_selected", tasks)

    assert not Task.objects.filter(state=TaskState.CANCELED).exists()
    assert not AuditEvent.objects.filter(action="task.cancel").exists()
    assert "More than 2 tasks selected" in response.content.decode()


# --- who may -----------------------------------------------------------------------------


def test_user_who_is_not_staff_is_sent_to_the_login_page(client, spec):
    task = Task.objects.get(job=submit(spec, mode="any"))
    client.force_login(staff_user("visitor", is_staff=False))

    for url in (changelist(), detail(task.pk)):
        assert is_login_redirect(client.get(url)), url
    assert is_login_redirect(client.post(operate(task.pk), {"_cancel": "Cancel"}))
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED


def test_staff_without_change_permission_sees_tasks_but_cannot_cancel_or_retry(client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    queued = Task.objects.get(job=submit(spec, mode="any", target_capabilities=["none"]))
    failed = failed_task(spec, "node-1")
    client.force_login(staff_user("watcher", perms=("tasks.view_task",)))
    before = AuditEvent.objects.count()

    page = client.get(detail(queued.pk))
    assert page.status_code == 200
    assert 'name="_cancel"' not in page.content.decode()
    listing = client.get(changelist())
    assert not set(listing.context["cl"].model_admin.get_actions(listing.wsgi_request)) & {
        "cancel_selected",
        "force_cancel_selected",
        "retry_selected",
    }

    assert client.post(operate(queued.pk), {"_cancel": "Cancel"}).status_code == 403
    assert client.post(operate(failed.pk), {"_retry": "Retry"}).status_code == 403
    bulk(client, "cancel_selected", [queued])
    bulk(client, "retry_selected", [failed])

    assert Task.objects.get(pk=queued.pk).state == TaskState.QUEUED
    assert Task.objects.get(pk=failed.pk).state == TaskState.FAILED
    assert AuditEvent.objects.count() == before


def test_staff_with_change_permission_may_cancel(client, spec):
    task = Task.objects.get(job=submit(spec, mode="any"))
    user = staff_user("operator", perms=("tasks.view_task", "tasks.change_task"))
    client.force_login(user)

    assert 'name="_cancel"' in client.get(detail(task.pk)).content.decode()
    client.post(operate(task.pk), {"_cancel": "Cancel"})

    assert Task.objects.get(pk=task.pk).state == TaskState.CANCELED
    assert [row.actor_id for row in audit_rows("task.cancel", task.pk)] == [user.pk]


def test_agent_links_survive_an_agent_id_with_dots(admin_client, spec, make_agent, frozen_clock):
    make_agent("rack.1-node")
    running_task(spec, "rack.1-node")

    page = admin_client.get(changelist()).content.decode()

    assert reverse("admin:registry_agent_change", args=["rack.1-node"]) in page
    assert Agent.objects.filter(pk="rack.1-node").exists()


# --- what operators look for first (issue 15 item 4): duration, result or error, why this attempt -------------------


def test_list_shows_duration_result_and_the_reason_of_each_attempt(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    done = running_task(spec, "node-1")
    frozen_clock.advance(3.4)
    send("node-1", "succeeded", done, result={"exit_code": 0, "stdout": "x" * 200})
    retried = running_task(spec, "node-1", max_attempts=3, execution_timeout_s=30, backoff_base_s=1)
    frozen_clock.advance(31)
    actions.expire_leases()  # attempt 1 timed out: queued again
    frozen_clock.advance(5)
    actions.claim_tasks("node-1", 10)
    by_operator = failed_task(spec, "node-1")
    actions.retry_task(by_operator.pk, Actor("alice"))

    page = admin_client.get(changelist()).content.decode()
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"<tr>.*?/tasks/task/(\d+)/change/.*?</tr>", page, re.S)}

    assert "ran 3.4 s" in rows[done.pk]
    assert 'class="task-outcome task-outcome-result"' in rows[done.pk]
    title = re.search(r'task-outcome-result" title="([^"]*)"', rows[done.pk]).group(1)
    assert json.loads(html.unescape(title)) == {"exit_code": 0, "stdout": "x" * 200}  # the whole result on hover
    assert "…</span>" in rows[done.pk]
    assert "first attempt" in rows[done.pk]
    assert "2/3" in rows[retried.pk]
    assert "retried after execution timeout" in rows[retried.pk]
    assert "waited " in rows[retried.pk]
    assert "not started yet" in rows[retried.pk]
    assert "retried by alice" in rows[by_operator.pk]
    assert "E: boom" in rows[by_operator.pk]


def test_list_reads_the_attempt_reasons_in_one_query_for_the_page(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1", max_concurrency=50)

    def queries() -> int:
        admin_client.get(changelist())
        with CaptureQueriesContext(connection) as captured:
            admin_client.get(changelist())
        return len(captured.captured_queries)

    submit(spec, mode="any", task_count=2, max_attempts=3, delivery_timeout_s=5, backoff_base_s=0)
    actions.claim_tasks("node-1", 50)
    frozen_clock.advance(6)
    actions.expire_leases()
    few = queries()
    submit(spec, mode="any", task_count=20, max_attempts=3, delivery_timeout_s=5, backoff_base_s=0)
    actions.claim_tasks("node-1", 50)
    frozen_clock.advance(6)
    actions.expire_leases()

    assert queries() == few


def test_times_show_seconds(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task = running_task(spec, "node-1")

    page = admin_client.get(detail(task.pk)).content.decode()

    assert "2026-01-01 12:00:00" in page  # assigned and started: the frozen clock, to the second
    assert "a.m." not in page
    assert "p.m." not in page
