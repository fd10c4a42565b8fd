"""The operators' job API: submit, preview, list, read and control jobs over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from aegis_site.core.models import AuditEvent
from tasks import actions
from tasks.api.serializers import MAX_PAYLOAD_BYTES
from tasks.engine import preview
from tasks.engine.reports import Report
from tasks.models import Job, JobMode, JobState, Task, TaskEvent, TaskState
from tests import support
from tests.support import client_for

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs/"
ALL_JOB_PERMS = ("tasks.view_job", "tasks.add_job", "tasks.change_job")


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    cache.clear()  # the rate limits count in the cache, which outlives each test's database


@pytest.fixture
def alice() -> User:
    return staff_user()


@pytest.fixture
def api(alice: User) -> APIClient:
    return client_for(alice)


def audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def fail_task(agent_id: str, task: Task) -> None:
    """Claim the task for its agent and report it failed, for good (the job allows one attempt)."""
    assignments = actions.claim_tasks(agent_id, 10)
    attempt = next(a.attempt for a in assignments if a.task_id == task.pk)
    error = {"code": "E", "message": "boom"}
    actions.report(agent_id, Report("failed", task.pk, attempt, message_id=uuid.uuid4().hex, error=error))


# --- submit ---------------------------------------------------------------------------------


def test_create_job_makes_a_task_per_matching_agent_and_answers_its_detail(api, alice, make_agent):
    make_agent("web-1", labels={"role": "web"})
    make_agent("web-2", labels={"role": "web"})
    make_agent("db-1", labels={"role": "db"})

    response = api.post(
        JOBS,
        {"kind": "deploy.app", "payload": {"version": "1.2"}, "target_labels": {"role": "web"}, "priority": 5},
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    job = Job.objects.get()
    assert body["id"] == job.pk
    assert body["kind"] == "deploy.app"
    assert body["payload"] == {"version": "1.2"}
    assert body["state"] == "scheduled"
    assert body["mode"] == "each"
    assert body["priority"] == 5
    assert body["tasks_total"] == 2
    assert body["created_by"] == "alice"
    assert body["counts"] == {
        "queued": 2,
        "assigned": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "timed_out": 0,
        "canceled": 0,
    }
    assert sorted(Task.objects.filter(job=job).values_list("agent_id", flat=True)) == ["web-1", "web-2"]
    [event] = audit("job.submit")
    assert (event.actor_id, event.actor_label, event.object_id) == (alice.pk, "alice", str(job.pk))


def test_fields_left_out_take_the_server_defaults(api, make_agent, settings):
    settings.TASK_DEFAULT_MAX_ATTEMPTS = 7
    settings.TASK_DEFAULT_EXECUTION_TIMEOUT = 1234

    body = {"kind": "echo", "mode": "any", "task_count": 3, "target_all": True, "allow_no_agents": True}
    response = api.post(JOBS, body, format="json")

    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert (job.max_attempts, job.execution_timeout_s, job.tasks_total) == (7, 1234, 3)
    assert response.json()["max_attempts"] == 7


def test_every_spec_field_reaches_the_job(api, make_agent):
    make_agent("a1", capabilities=["echo"])
    body = {
        "kind": "echo",
        "target_agent_ids": ["a1", "a1"],
        "target_capabilities": ["echo"],
        "continuous": True,
        "priority": -3,
        "max_attempts": 4,
        "backoff_base_s": 2.5,
        "backoff_cap_s": 30,
        "delivery_timeout_s": 15,
        "execution_timeout_s": 90,
        "not_before": "2030-01-01T00:00:00Z",
        "idempotency_key": "k-1",
        "max_in_flight": 10,
        "max_in_flight_percent": 50,
        "rate_per_minute": 20,
        "abort_failure_ratio": 0.25,
        "abort_min_finished": 4,
    }

    response = api.post(JOBS, body, format="json")

    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert job.target_agent_ids == ["a1"]  # duplicates dropped
    assert job.continuous is True
    assert (job.priority, job.max_attempts, job.backoff_base_s, job.backoff_cap_s) == (-3, 4, 2.5, 30.0)
    assert (job.delivery_timeout_s, job.execution_timeout_s) == (15, 90)
    assert job.not_before is not None
    assert job.not_before.year == 2030
    assert (job.max_in_flight, job.max_in_flight_percent, job.rate_per_minute) == (10, 50, 20)
    assert (job.abort_failure_ratio, job.abort_min_finished, job.idempotency_key) == (0.25, 4, "k-1")


def test_same_idempotency_key_returns_the_existing_job_with_200(api, make_agent):
    body = {"kind": "echo", "mode": "any", "task_count": 2, "idempotency_key": "deploy-42", "target_all": True}
    body["allow_no_agents"] = True
    first = api.post(JOBS, body, format="json")
    second = api.post(JOBS, body, format="json")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1
    assert Task.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "kind"),
        ({"kind": "has space"}, "kind"),
        ({"kind": "k" * 65}, "kind"),
        ({"kind": "echo", "payload": [1, 2]}, "payload"),
        ({"kind": "echo", "payload": {"text": "x" * (MAX_PAYLOAD_BYTES + 1)}}, "payload"),
        ({"kind": "echo", "target_agent_ids": ["Bad ID"]}, "target_agent_ids"),
        ({"kind": "echo", "target_agent_ids": "a1"}, "target_agent_ids"),
        ({"kind": "echo", "target_labels": {"role": True}}, "target_labels"),
        ({"kind": "echo", "target_labels": {"role": {"nested": "x"}}}, "target_labels"),
        ({"kind": "echo", "target_labels": ["role"]}, "target_labels"),
        ({"kind": "echo", "target_capabilities": [{"x": 1}]}, "target_capabilities"),
        ({"kind": "echo", "mode": "all"}, "mode"),
        ({"kind": "echo", "mode": "any", "task_count": 0}, "task_count"),
        ({"kind": "echo", "mode": "any", "task_count": 100_001}, "task_count"),
        ({"kind": "echo", "task_count": 5}, "task_count"),  # mode 'each' decides the count itself
        ({"kind": "echo", "mode": "any", "continuous": True}, "continuous"),
        ({"kind": "echo", "priority": 1001}, "priority"),
        ({"kind": "echo", "max_attempts": 0}, "max_attempts"),
        ({"kind": "echo", "max_attempts": 101}, "max_attempts"),
        ({"kind": "echo", "delivery_timeout_s": 0}, "delivery_timeout_s"),
        ({"kind": "echo", "execution_timeout_s": 0}, "execution_timeout_s"),
        ({"kind": "echo", "backoff_base_s": 50, "backoff_cap_s": 10}, "backoff_cap_s"),
        ({"kind": "echo", "max_in_flight": 0}, "max_in_flight"),
        ({"kind": "echo", "max_in_flight_percent": 101}, "max_in_flight_percent"),
        ({"kind": "echo", "rate_per_minute": 0}, "rate_per_minute"),
        ({"kind": "echo", "abort_failure_ratio": 1.5}, "abort_failure_ratio"),
        ({"kind": "echo", "abort_min_finished": 0}, "abort_min_finished"),
        ({"kind": "echo", "not_before": "tomorrow"}, "not_before"),
        ({"kind": "echo", "idempotency_key": "k" * 201}, "idempotency_key"),
    ],
)
def test_invalid_job_body_is_400_naming_the_field_and_creates_nothing(api, body, field):
    response = api.post(JOBS, body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"], error
    assert not Job.objects.exists()
    assert not AuditEvent.objects.exists()


def test_a_payload_with_nul_is_refused_by_the_parser_and_creates_nothing(api):
    """The body's decoder (the MQTT protocol's) refuses NUL anywhere, before the serializer: 400 bad_string."""
    response = api.post(JOBS, {"kind": "echo", "payload": {"nul": "a\u0000b"}}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_string"
    assert not Job.objects.exists()


def test_body_that_is_not_an_object_is_400(api):
    response = api.post(JOBS, [{"kind": "echo"}], format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "non_field_errors" in response.json()["error"]["fields"]


def test_unknown_explicit_agent_is_400_on_the_target(api, make_agent):
    make_agent("a1")

    response = api.post(JOBS, {"kind": "echo", "target_agent_ids": ["a1", "ghost"]}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "ghost" in error["fields"]["target"][0]
    assert not Job.objects.exists()


# --- list and detail ------------------------------------------------------------------------


def submit(spec_factory: Any, operator: Any, **fields: Any) -> Job:
    job, _ = actions.submit_job(spec_factory(**fields), operator)
    return job


def test_list_is_newest_first_without_payloads(api, spec, operator):
    older = submit(spec, operator, mode=JobMode.ANY, payload={"secret": "x" * 100})
    newer = submit(spec, operator, mode=JobMode.ANY, kind="other")

    response = api.get(JOBS)

    assert response.status_code == 200
    results = response.json()["results"]
    assert [job["id"] for job in results] == [newer.pk, older.pk]
    assert "payload" not in results[0]
    assert "counts" not in results[0]
    assert results[1]["kind"] == "echo"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=paused", ["paused-any"]),
        ("kind=build", ["build-each"]),
        ("mode=any", ["paused-any", "echo-any"]),
        ("mode=each&kind=build", ["build-each"]),
    ],
)
def test_list_filters(api, spec, operator, query, expected):
    submit(spec, operator, mode=JobMode.ANY, idempotency_key="echo-any")
    paused = submit(spec, operator, mode=JobMode.ANY, idempotency_key="paused-any")
    actions.pause_job(paused.pk, operator)
    submit(spec, operator, kind="build", idempotency_key="build-each")

    response = api.get(f"{JOBS}?{query}")

    assert response.status_code == 200
    assert [job["idempotency_key"] for job in response.json()["results"]] == expected


@pytest.mark.parametrize("query", ["state=bogus", "mode=every", "state=", "mode="])
def test_invalid_filter_value_is_400(api, query):
    response = api.get(f"{JOBS}?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert query.split("=")[0] in response.json()["error"]["fields"]


def test_list_pages_with_a_cursor_and_caps_page_size(api, spec, operator, settings):
    settings.API_PAGE_SIZE = 2
    settings.API_MAX_PAGE_SIZE = 3
    ids = [submit(spec, operator, mode=JobMode.ANY).pk for _ in range(5)]

    first = api.get(JOBS).json()
    assert [job["id"] for job in first["results"]] == ids[::-1][:2]
    assert first["next"] is not None
    second = api.get(first["next"]).json()
    assert [job["id"] for job in second["results"]] == ids[::-1][2:4]

    capped = api.get(f"{JOBS}?page_size=100").json()
    assert len(capped["results"]) == 3


def test_list_reads_a_constant_number_of_queries(api, alice, spec):
    from aegis_site.core.audit import Actor

    as_alice = Actor.of_user(alice)
    submit(spec, as_alice, mode=JobMode.ANY)
    api.get(JOBS)  # the user's permissions are cached from here on
    with CaptureQueriesContext(connection) as few:
        assert api.get(JOBS).status_code == 200
    for _ in range(5):
        submit(spec, as_alice, mode=JobMode.ANY)
    with CaptureQueriesContext(connection) as many:
        response = api.get(JOBS)

    assert [job["created_by"] for job in response.json()["results"]] == ["alice"] * 6
    assert len(many.captured_queries) == len(few.captured_queries) == 1


def test_detail_counts_tasks_per_state(api, spec, operator, make_agent):
    for agent_id in ("a1", "a2", "a3"):
        make_agent(agent_id)
    job = submit(spec, operator, max_attempts=1)
    tasks = {task.agent_id: task for task in Task.objects.filter(job=job)}
    fail_task("a1", tasks["a1"])
    actions.claim_tasks("a2", 10)

    response = api.get(f"{JOBS}{job.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["counts"]["failed"] == 1
    assert body["counts"]["assigned"] == 1
    assert body["counts"]["queued"] == 1
    assert sum(body["counts"].values()) == 3
    assert body["payload"] == {}
    assert body["tasks_failed"] == 1


@pytest.mark.parametrize("path", [f"{JOBS}999999/", f"{JOBS}abc/", f"{JOBS}99999999999999999999/", f"{JOBS}-1/"])
def test_unknown_job_is_404_json(api, path):
    response = api.get(path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- controls -------------------------------------------------------------------------------


def test_cancel_ends_queued_tasks_and_is_audited(api, alice, spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY, task_count=2)

    response = api.post(f"{JOBS}{job.pk}/cancel/", {"force": True}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "canceled"
    assert response.json()["counts"]["canceled"] == 2
    [event] = audit("job.cancel")
    assert (event.actor_label, event.object_id, event.data) == ("alice", str(job.pk), {"force": True})


def test_cancel_without_body_does_not_force_and_held_tasks_wait_for_their_agent(api, spec, operator, make_agent):
    make_agent("a1")
    job = submit(spec, operator)
    actions.claim_tasks("a1", 10)

    response = api.post(f"{JOBS}{job.pk}/cancel/")

    assert response.status_code == 200
    assert response.json()["counts"]["assigned"] == 1
    assert Task.objects.get(job=job).cancel_requested_at is not None
    assert audit("job.cancel")[0].data == {"force": False}


def test_cancel_of_a_finished_job_is_409(api, spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)
    actions.cancel_job(job.pk, operator)

    response = api.post(f"{JOBS}{job.pk}/cancel/", {}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"
    assert len(audit("job.cancel")) == 1  # only the first one


def test_cancel_with_a_bad_force_is_400(api, spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)

    response = api.post(f"{JOBS}{job.pk}/cancel/", {"force": "maybe"}, format="json")

    assert response.status_code == 400
    assert "force" in response.json()["error"]["fields"]
    assert Job.objects.get().state == JobState.SCHEDULED


def test_pause_then_resume(api, spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)

    paused = api.post(f"{JOBS}{job.pk}/pause/")
    assert paused.status_code == 200
    assert paused.json()["state"] == "paused"
    resumed = api.post(f"{JOBS}{job.pk}/resume/")
    assert resumed.status_code == 200
    assert resumed.json()["state"] == "scheduled"
    assert [e.action for e in AuditEvent.objects.filter(object_id=str(job.pk)).order_by("id")] == [
        "job.submit",
        "job.pause",
        "job.resume",
    ]


def test_pause_of_a_finished_job_and_resume_of_a_running_one_are_409(api, spec, operator):
    finished = submit(spec, operator, mode=JobMode.ANY)
    actions.cancel_job(finished.pk, operator)
    open_job = submit(spec, operator, mode=JobMode.ANY)

    pause = api.post(f"{JOBS}{finished.pk}/pause/")
    resume = api.post(f"{JOBS}{open_job.pk}/resume/")

    assert (pause.status_code, resume.status_code) == (409, 409)
    assert pause.json()["error"]["code"] == "invalid_state"
    assert "canceled" in pause.json()["error"]["message"]
    assert not audit("job.pause")
    assert not audit("job.resume")


@pytest.mark.parametrize("job_id", [424242, 9999999999999999999])
@pytest.mark.parametrize("verb", ["cancel", "pause", "resume", "retry-failed"])
def test_control_of_an_unknown_job_is_404(api, verb, job_id):
    response = api.post(f"{JOBS}{job_id}/{verb}/", {}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_retry_failed_queues_failed_tasks_again(api, spec, operator, make_agent):
    for agent_id in ("a1", "a2", "a3"):
        make_agent(agent_id)
    job = submit(spec, operator, max_attempts=1)
    tasks = {task.agent_id: task for task in Task.objects.filter(job=job)}
    fail_task("a1", tasks["a1"])
    fail_task("a2", tasks["a2"])

    response = api.post(f"{JOBS}{job.pk}/retry-failed/", {"task_ids": [tasks["a2"].pk]}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["retried"] == 1
    assert body["job"]["id"] == job.pk
    assert body["job"]["counts"]["failed"] == 1
    assert Task.objects.get(pk=tasks["a2"].pk).state == TaskState.QUEUED
    assert Task.objects.get(pk=tasks["a1"].pk).state == TaskState.FAILED

    rest = api.post(f"{JOBS}{job.pk}/retry-failed/", format="json")
    assert rest.json()["retried"] == 1
    assert rest.json()["job"]["counts"]["failed"] == 0
    assert [e.data["subset"] for e in audit("job.retry_failed")] == [[tasks["a2"].pk], None]


def test_retry_failed_of_a_canceled_job_is_409_and_bad_ids_400(api, spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)
    actions.cancel_job(job.pk, operator)

    refused = api.post(f"{JOBS}{job.pk}/retry-failed/", {}, format="json")
    invalid = api.post(f"{JOBS}{job.pk}/retry-failed/", {"task_ids": ["x", 2**63]}, format="json")

    assert refused.status_code == 409
    assert invalid.status_code == 400
    assert set(invalid.json()["error"]["fields"]["task_ids"]) == {"0", "1"}


# --- preview --------------------------------------------------------------------------------


def test_preview_lists_matching_agents_and_waves_and_creates_nothing(api, make_agent):
    for n in range(5):
        make_agent(f"web-{n}", labels={"role": "web"}, capabilities=["deploy"])
    make_agent("db-1", labels={"role": "db"})

    response = api.post(
        f"{JOBS}preview/", {"kind": "deploy", "target_labels": {"role": "web"}, "max_in_flight": 2}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert response.json() == {
        "agents": ["web-0", "web-1", "web-2", "web-3", "web-4"],
        "agent_count": 5,
        "task_count": 5,
        "wave_size": 2,
        "paced_by": "in_flight",
        "wave_count": 3,
        "waves": [{"wave": 1, "tasks": 2}, {"wave": 2, "tasks": 2}, {"wave": 3, "tasks": 1}],
        "target_all": False,
        "warnings": [],
    }
    assert not Job.objects.exists()
    assert not Task.objects.exists()
    assert not TaskEvent.objects.exists()
    assert not AuditEvent.objects.exists()


def test_preview_of_mode_any_lists_only_agents_that_can_take_work_now(api, make_agent):
    make_agent("a-online")
    make_agent("b-offline", online=False)
    make_agent("c-draining", admin_state="draining")

    body = {"kind": "echo", "mode": "any", "task_count": 7, "target_all": True}
    response = api.post(f"{JOBS}preview/", body, format="json")

    body = response.json()
    assert (body["agents"], body["agent_count"], body["task_count"]) == (["a-online"], 1, 7)
    assert body["waves"] == [{"wave": 1, "tasks": 7}]
    assert (body["wave_size"], body["paced_by"]) == (None, "none")


def test_preview_with_a_rate_makes_a_wave_per_minute(api):
    body = {"kind": "echo", "mode": "any", "task_count": 25, "rate_per_minute": 10, "max_in_flight": 20}
    body["target_all"] = True

    response = api.post(f"{JOBS}preview/", body, format="json")

    assert response.json()["paced_by"] == "rate"
    assert response.json()["waves"] == [{"wave": 1, "tasks": 10}, {"wave": 2, "tasks": 10}, {"wave": 3, "tasks": 5}]


def test_preview_caps_the_listed_agents_but_counts_them_all(api, make_agent, monkeypatch):
    monkeypatch.setattr(preview, "MAX_LISTED", 2)
    for n in range(4):
        make_agent(f"a{n}")

    body = api.post(f"{JOBS}preview/", {"kind": "echo", "target_all": True}, format="json").json()

    assert (body["agents"], body["agent_count"]) == (["a0", "a1"], 4)


def test_preview_of_unknown_agent_is_400_and_of_bad_body_400(api):
    unknown = api.post(f"{JOBS}preview/", {"kind": "echo", "target_agent_ids": ["ghost"]}, format="json")
    bad = api.post(f"{JOBS}preview/", {"kind": "echo", "priority": 5000}, format="json")

    assert unknown.status_code == 400
    assert "target" in unknown.json()["error"]["fields"]
    assert bad.status_code == 400
    assert "priority" in bad.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("task_count", "limits", "expected_size", "expected_waves"),
    [
        (0, {}, None, []),
        (3, {}, None, [3]),
        (10, {"max_in_flight": 4}, 4, [4, 4, 2]),
        (10, {"max_in_flight_percent": 30}, 3, [3, 3, 3, 1]),
        (10, {"max_in_flight_percent": 1}, 1, [1] * 10),  # at least one task at once
        (10, {"max_in_flight": 5, "max_in_flight_percent": 20}, 2, [2] * 5),
        (10, {"rate_per_minute": 6, "max_in_flight": 8}, 6, [6, 4]),
        (4, {"max_in_flight": 9}, 9, [4]),
    ],
)
def test_waves_follow_the_tightest_rollout_limit(task_count, limits, expected_size, expected_waves):
    size, _ = preview.wave_size(task_count, **limits)
    count, waves = preview.waves(task_count, size)

    assert size == expected_size
    assert [wave.tasks for wave in waves] == expected_waves
    assert [wave.number for wave in waves] == list(range(1, len(expected_waves) + 1))
    assert count == len(expected_waves)


def test_wave_list_is_capped_but_counted():
    count, waves = preview.waves(5000, 1, limit=10)

    assert count == 5000
    assert len(waves) == 10


# --- who may ------------------------------------------------------------------------------


def test_without_credentials_is_401(spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)
    client = APIClient()

    for response in (client.get(JOBS), client.post(JOBS, {"kind": "echo"}, format="json")):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"
    assert client.post(f"{JOBS}{job.pk}/cancel/").status_code == 401
    assert Job.objects.get().state == JobState.SCHEDULED


def test_staff_without_the_model_permission_is_403(spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)
    client = client_for(staff_user("bob", perms=()))

    for response in (
        client.get(JOBS),
        client.get(f"{JOBS}{job.pk}/"),
        client.post(JOBS, {"kind": "echo"}, format="json"),
        client.post(f"{JOBS}preview/", {"kind": "echo"}, format="json"),
        client.post(f"{JOBS}{job.pk}/pause/"),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
    assert Job.objects.get().state == JobState.SCHEDULED


def test_a_viewer_reads_but_neither_submits_nor_controls(spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)
    client = client_for(staff_user("viewer", perms=("tasks.view_job",)))

    assert client.get(f"{JOBS}{job.pk}/").status_code == 200
    assert client.post(JOBS, {"kind": "echo"}, format="json").status_code == 403
    assert client.post(f"{JOBS}preview/", {"kind": "echo"}, format="json").status_code == 403
    for verb in ("cancel", "pause", "retry-failed"):
        assert client.post(f"{JOBS}{job.pk}/{verb}/", {}, format="json").status_code == 403
    assert Job.objects.count() == 1


def test_submitter_without_change_permission_cannot_cancel(spec, operator):
    job = submit(spec, operator, mode=JobMode.ANY)
    client = client_for(staff_user("submitter", perms=("tasks.add_job", "tasks.view_job")))

    body = {"kind": "echo", "mode": "any", "target_all": True, "allow_no_agents": True}
    assert client.post(JOBS, body, format="json").status_code == 201
    assert client.post(f"{JOBS}{job.pk}/cancel/").status_code == 403


def test_non_staff_user_with_permissions_is_403():
    client = client_for(staff_user("mallory", is_staff=False))

    response = client.get(JOBS)

    assert response.status_code == 403
    assert client.post(JOBS, {"kind": "echo", "mode": "any"}, format="json").status_code == 403
    assert not Job.objects.exists()


# --- the OpenAPI description ----------------------------------------------------------------


def test_schema_describes_request_and_response_bodies_of_job_operations():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]

    def body(path: str, method: str, status: str | None = None) -> str:
        operation = paths[path][method]
        content = operation["requestBody" if status is None else "responses"]
        if status is not None:
            content = content[status]
        content = content["content"]
        return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert body("/api/v1/jobs/", "post") == "JobCreateRequest"
    assert body("/api/v1/jobs/", "post", "201") == "JobDetail"
    assert body("/api/v1/jobs/preview/", "post") == "JobCreateRequest"
    assert body("/api/v1/jobs/preview/", "post", "200") == "JobPreview"
    assert body("/api/v1/jobs/{id}/cancel/", "post") == "CancelRequest"
    assert body("/api/v1/jobs/{id}/retry-failed/", "post", "200") == "RetryFailedResult"
    assert "requestBody" not in paths["/api/v1/jobs/{id}/pause/"]["post"]
    create = schema["components"]["schemas"]["JobCreateRequest"]
    assert create["required"] == ["kind"]
    assert create["properties"]["task_count"]["maximum"] == 100_000
    detail = schema["components"]["schemas"]["JobDetail"]
    assert detail["properties"]["counts"]["allOf"] == [{"$ref": "#/components/schemas/TaskStateCounts"}]
    assert detail["properties"]["payload"]["type"] == "object"
    assert "state" in detail["required"]


def staff_user(username: str = "alice", perms: tuple[str, ...] = ALL_JOB_PERMS, is_staff: bool = True) -> User:
    return support.staff_user(username, perms, is_staff)
