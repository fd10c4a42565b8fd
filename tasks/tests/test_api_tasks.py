"""The operators' task API: list and read tasks with their history, cancel, retry and explain them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from aegis_site.core.models import AuditEvent
from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Job, JobMode, Task, TaskEvent, TaskEventKind, TaskState
from tests import support
from tests.support import client_for

pytestmark = pytest.mark.django_db

TASKS = "/api/v1/tasks/"
TASK_PERMS = ("tasks.view_task", "tasks.change_task")


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    cache.clear()  # the rate limits count in the cache, which outlives each test's database


@pytest.fixture
def api() -> APIClient:
    return client_for(staff_user())


def submit(spec_factory: Any, operator: Any, **fields: Any) -> Job:
    job, _ = actions.submit_job(spec_factory(**fields), operator)
    return job


def report(agent_id: str, kind: str, task: Task, attempt: int, **fields: Any) -> None:
    outcome = actions.report(agent_id, Report(kind, task.pk, attempt, message_id=uuid.uuid4().hex, **fields))
    assert outcome.status == "applied", outcome


@pytest.fixture
def fleet(make_agent: Any, spec: Any, operator: Any) -> dict[str, Task]:
    """A job with a task on each of a1 (succeeded), a2 (running) and a3 (queued), and a queued 'any' task."""
    for agent_id in ("a1", "a2", "a3"):
        make_agent(agent_id, max_concurrency=1)
    job = submit(spec, operator, kind="deploy", payload={"version": "2.0"})
    tasks = {str(task.agent_id): task for task in Task.objects.filter(job=job)}
    [a1] = actions.claim_tasks("a1", 1)
    [a2] = actions.claim_tasks("a2", 1)
    report("a1", "accepted", tasks["a1"], a1.attempt)
    report("a1", "succeeded", tasks["a1"], a1.attempt, result={"ok": True})
    report("a2", "accepted", tasks["a2"], a2.attempt)
    report("a2", "progress", tasks["a2"], a2.attempt, progress={"percent": 40})
    other = submit(spec, operator, kind="backup", mode=JobMode.ANY)
    actions.pause_job(other.pk, operator)
    return {**tasks, "any": Task.objects.get(job=other)}


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.json()
    return [task["id"] for task in response.json()["results"]]


# --- list ------------------------------------------------------------------------------------


def test_list_is_newest_first_and_leaves_out_outcomes(api, fleet):
    response = api.get(TASKS)

    assert ids(response) == sorted((task.pk for task in fleet.values()), reverse=True)
    first = response.json()["results"][0]
    assert first["id"] == fleet["any"].pk
    assert (first["job"], first["kind"], first["state"]) == (fleet["any"].job_id, "backup", "queued")
    assert first["agent"] is None
    for absent in ("payload", "result", "error", "progress", "events"):
        assert absent not in first


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=running", ["a2"]),
        ("state=queued", ["any", "a3"]),
        ("kind=backup", ["any"]),
        ("agent=a1", ["a1"]),
        ("attempt=1", ["a2", "a1"]),
        ("attempt=0&kind=deploy", ["a3"]),
    ],
)
def test_list_filters(api, fleet, query, expected):
    by_id = {task.pk: name for name, task in fleet.items()}

    assert [by_id[task_id] for task_id in ids(api.get(f"{TASKS}?{query}"))] == expected


def test_list_filters_by_job(api, fleet):
    assert ids(api.get(f"{TASKS}?job={fleet['any'].job_id}")) == [fleet["any"].pk]
    assert ids(api.get(f"{TASKS}?job=999999")) == []


def test_list_filters_by_creation_time(api, fleet):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for offset, name in enumerate(("a1", "a2", "a3", "any")):
        Task.objects.filter(pk=fleet[name].pk).update(created_at=base + timedelta(hours=offset))

    after = api.get(TASKS, {"created_after": "2026-03-01T01:00:00Z"})
    before = api.get(TASKS, {"created_before": "2026-03-01T01:00:00Z"})
    window = api.get(TASKS, {"created_after": "2026-03-01T01:00:00Z", "created_before": "2026-03-01T03:00:00Z"})

    assert ids(after) == [fleet["any"].pk, fleet["a3"].pk, fleet["a2"].pk]
    assert ids(before) == [fleet["a1"].pk]
    assert ids(window) == [fleet["a3"].pk, fleet["a2"].pk]


@pytest.mark.parametrize(
    "query",
    [
        "state=lost",
        "state=",
        "job=",
        "created_after=",
        "job=abc",
        "job=1.5",
        "job=99999999999999999999",
        "attempt=-x",
        "attempt=-1",
        "attempt=32768",
        "created_after=yesterday",
        "created_before=2026-13-01",
        "created_before=0001-01-01T00:00:00%2B05:00",
    ],
)
def test_malformed_filter_is_400_naming_it(api, query):
    response = api.get(f"{TASKS}?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert query.split("=")[0] in response.json()["error"]["fields"]


def test_time_filters_take_any_iso_offset(api, fleet):
    Task.objects.filter(pk=fleet["a1"].pk).update(created_at=datetime(2026, 3, 1, 12, tzinfo=UTC))
    Task.objects.exclude(pk=fleet["a1"].pk).update(created_at=datetime(2026, 3, 2, tzinfo=UTC))

    # 2026-03-01T12:00Z is 2026-03-02T11:54 at +23:54, an offset PostgreSQL would refuse as such.
    before = api.get(TASKS, {"created_before": "2026-03-02T11:55:00+23:54"})
    after = api.get(TASKS, {"created_after": "2026-03-02T11:55:00+23:54"})

    assert ids(before) == [fleet["a1"].pk]
    assert fleet["a1"].pk not in ids(after)
    assert len(ids(after)) == 3


def test_empty_text_filter_filters_nothing(api, fleet):
    assert len(ids(api.get(f"{TASKS}?kind=&agent="))) == 4


def test_list_pages_with_a_cursor_and_caps_page_size(api, spec, operator, settings):
    settings.API_PAGE_SIZE = 2
    settings.API_MAX_PAGE_SIZE = 4
    job = submit(spec, operator, mode=JobMode.ANY, task_count=7)
    newest_first = list(Task.objects.filter(job=job).order_by("-id").values_list("pk", flat=True))

    first = api.get(TASKS).json()
    second = api.get(first["next"]).json()
    capped = api.get(TASKS, {"page_size": 500}).json()

    assert [task["id"] for task in first["results"]] == newest_first[:2]
    assert [task["id"] for task in second["results"]] == newest_first[2:4]
    assert [task["id"] for task in capped["results"]] == newest_first[:4]
    assert capped["next"] is not None


def test_list_reads_a_constant_number_of_queries(api, spec, operator, make_agent):
    make_agent("a1")
    submit(spec, operator)
    api.get(TASKS)  # the user's permissions are cached from here on
    with CaptureQueriesContext(connection) as few:
        assert len(ids(api.get(TASKS))) == 1
    for n in range(2, 7):
        make_agent(f"a{n}")
    submit(spec, operator)
    with CaptureQueriesContext(connection) as many:
        assert len(ids(api.get(TASKS))) == 7

    assert len(many.captured_queries) == len(few.captured_queries) == 1


# --- detail ----------------------------------------------------------------------------------


def test_detail_has_payload_outcome_and_history_oldest_first(api, fleet):
    done = fleet["a1"]

    response = api.get(f"{TASKS}{done.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["state"], body["agent"], body["attempt"]) == (done.pk, "succeeded", "a1", 1)
    assert body["payload"] == {"version": "2.0"}
    assert body["result"] == {"ok": True}
    assert body["error"] is None
    assert [event["kind"] for event in body["events"]] == ["created", "assigned", "accepted", "succeeded"]
    assert [event["to_state"] for event in body["events"]] == ["queued", "assigned", "running", "succeeded"]
    assert body["events"][1]["agent"] == "a1"
    assert body["events_truncated"] is False


def test_detail_shows_progress_of_a_running_task(api, fleet):
    body = api.get(f"{TASKS}{fleet['a2'].pk}/").json()

    assert (body["state"], body["progress"]) == ("running", {"percent": 40})
    assert body["lease_expires_at"] is not None


def test_detail_history_is_capped_at_500_events(api, spec, operator, make_agent):
    make_agent("a1")
    job = submit(spec, operator)
    task = Task.objects.get(job=job)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    TaskEvent.objects.bulk_create(
        TaskEvent(task=task, kind=TaskEventKind.PROGRESS, attempt=1, data={"n": n}, created_at=now) for n in range(600)
    )

    body = api.get(f"{TASKS}{task.pk}/").json()

    assert len(body["events"]) == 500
    assert body["events"][0]["kind"] == "created"
    assert body["events"][-1]["data"] == {"n": 498}
    assert body["events_truncated"] is True


@pytest.mark.parametrize(
    "path", [f"{TASKS}987654/", f"{TASKS}x1/", f"{TASKS}987654/explain/", f"{TASKS}9999999999999999999/"]
)
def test_unknown_task_is_404_json(api, path):
    response = api.get(path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- controls --------------------------------------------------------------------------------


def test_cancel_of_a_queued_task_ends_it_and_is_audited(api, fleet):
    queued = fleet["a3"]

    response = api.post(f"{TASKS}{queued.pk}/cancel/", {}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "canceled"
    assert response.json()["events"][-1]["kind"] == "canceled"
    [event] = AuditEvent.objects.filter(action="task.cancel")
    assert (event.actor_label, event.object_type, event.object_id) == ("alice", "task", str(queued.pk))
    assert event.data == {"force": False, "state": "canceled"}


def test_cancel_of_a_running_task_asks_first_and_force_ends_it(api, fleet):
    running = fleet["a2"]

    asked = api.post(f"{TASKS}{running.pk}/cancel/")
    again = api.post(f"{TASKS}{running.pk}/cancel/", {"force": False}, format="json")
    forced = api.post(f"{TASKS}{running.pk}/cancel/", {"force": True}, format="json")

    assert asked.status_code == 200
    assert asked.json()["state"] == "running"
    assert asked.json()["cancel_requested_at"] is not None
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_state"
    assert forced.status_code == 200
    assert forced.json()["state"] == "canceled"
    assert AuditEvent.objects.filter(action="task.cancel").count() == 2


def test_cancel_of_a_finished_task_is_409_and_a_bad_body_400(api, fleet):
    finished = fleet["a1"]

    refused = api.post(f"{TASKS}{finished.pk}/cancel/")
    invalid = api.post(f"{TASKS}{finished.pk}/cancel/", {"force": [1]}, format="json")

    assert refused.status_code == 409
    assert "succeeded" in refused.json()["error"]["message"]
    assert invalid.status_code == 400
    assert "force" in invalid.json()["error"]["fields"]
    assert Task.objects.get(pk=finished.pk).state == TaskState.SUCCEEDED


def test_retry_of_a_canceled_task_queues_it_again(api, fleet, operator):
    task = fleet["a3"]
    actions.cancel_task(task.pk, operator)

    response = api.post(f"{TASKS}{task.pk}/retry/")

    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "queued"
    assert response.json()["events"][-1]["kind"] == "retried"
    assert AuditEvent.objects.filter(action="task.retry", object_id=str(task.pk), actor_label="alice").exists()


def test_retry_of_a_task_that_did_not_fail_is_409(api, fleet):
    response = api.post(f"{TASKS}{fleet['a2'].pk}/retry/")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"
    assert not AuditEvent.objects.filter(action="task.retry").exists()


@pytest.mark.parametrize("task_id", [55555, 9999999999999999999, 10**30])
@pytest.mark.parametrize("verb", ["cancel", "retry"])
def test_control_of_an_unknown_task_is_404(api, verb, task_id):
    response = api.post(f"{TASKS}{task_id}/{verb}/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_explain_says_why_a_task_waits(api, fleet, operator):
    ready = api.get(f"{TASKS}{fleet['a3'].pk}/explain/")
    paused = api.get(f"{TASKS}{fleet['any'].pk}/explain/")
    held = api.get(f"{TASKS}{fleet['a2'].pk}/explain/")

    assert ready.status_code == 200
    assert ready.json() == {"code": "ready", "message": "ready: the dispatcher assigns it on its next pass"}
    assert paused.json()["code"] == "job_paused"
    assert held.json()["code"] == "task_running"
    assert "a2" in held.json()["message"]


# --- who may ---------------------------------------------------------------------------------


def test_without_credentials_is_401(fleet):
    client = APIClient()

    for response in (
        client.get(TASKS),
        client.get(f"{TASKS}{fleet['a3'].pk}/explain/"),
        client.post(f"{TASKS}{fleet['a3'].pk}/cancel/"),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"
    assert Task.objects.get(pk=fleet["a3"].pk).state == TaskState.QUEUED


def test_a_viewer_reads_and_explains_but_does_not_control(fleet):
    client = client_for(staff_user("viewer", perms=("tasks.view_task",)))
    queued = fleet["a3"]

    assert client.get(TASKS).status_code == 200
    assert client.get(f"{TASKS}{queued.pk}/").status_code == 200
    assert client.get(f"{TASKS}{queued.pk}/explain/").status_code == 200
    for verb in ("cancel", "retry"):
        response = client.post(f"{TASKS}{queued.pk}/{verb}/")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
    assert Task.objects.get(pk=queued.pk).state == TaskState.QUEUED


def test_staff_without_task_permissions_and_non_staff_are_403(fleet):
    for user in (staff_user("bob", perms=("tasks.view_job",)), staff_user("eve", is_staff=False)):
        client = client_for(user)
        assert client.get(TASKS).status_code == 403
        assert client.get(f"{TASKS}{fleet['a3'].pk}/explain/").status_code == 403
        assert client.post(f"{TASKS}{fleet['a3'].pk}/cancel/").status_code == 403
    assert not AuditEvent.objects.filter(action="task.cancel").exists()


def staff_user(username: str = "alice", perms: tuple[str, ...] = TASK_PERMS, is_staff: bool = True) -> User:
    return support.staff_user(username, perms, is_staff)
