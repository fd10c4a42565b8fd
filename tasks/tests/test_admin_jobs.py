"""The operators' job pages: create with a dry run, list with progress, follow one job, control it."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from registry.models import AdminState
from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Job, JobMode, JobState, Task, TaskState
from tests.support import staff_user

pytestmark = pytest.mark.django_db

ADD = reverse("admin:tasks_job_add")
LIST = reverse("admin:tasks_job_changelist")
OPERATOR = ("tasks.view_job", "tasks.change_job")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def detail_url(job: Job | int) -> str:
    return reverse("admin:tasks_job_change", args=[getattr(job, "pk", job)])


def control_url(job: Job, name: str) -> str:
    return reverse(f"admin:tasks_job_{name}", args=[job.pk])


def form_data(labels: list[tuple[str, str, str]] = (), **fields: Any) -> dict[str, Any]:  # type: ignore[assignment]
    """What the browser posts: every field of the form, three label rows and the formset's management form."""
    data: dict[str, Any] = {
        "kind": "echo",
        "payload": "{}",
        "target_agent_ids": "",
        "target_capabilities": "",
        "mode": "each",
        "task_count": "1",
        "priority": "0",
        "max_attempts": "3",
        "backoff_base_s": "5",
        "backoff_cap_s": "600",
        "delivery_timeout_s": "60",
        "execution_timeout_s": "600",
        "abort_min_finished": "1",
        "labels-TOTAL_FORMS": "3",
        "labels-INITIAL_FORMS": "0",
        "labels-MIN_NUM_FORMS": "0",
        "labels-MAX_NUM_FORMS": "64",
    }
    for number, (key, op, value) in enumerate(labels):
        data.update({f"labels-{number}-key": key, f"labels-{number}-op": op, f"labels-{number}-value": value})
    data.update({name: str(value) for name, value in fields.items()})
    return data


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def nothing_written() -> bool:
    return not Job.objects.exists() and not Task.objects.exists() and not AuditEvent.objects.exists()


def current_attempt(agent_id: str, task: Task) -> int:
    """The task's attempt on the agent, claiming (a batch of tasks) first if it is still queued."""
    task.refresh_from_db()
    if task.state == TaskState.QUEUED:
        actions.claim_tasks(agent_id, 100)
        task.refresh_from_db()
    assert task.state == TaskState.ASSIGNED
    assert task.agent_id == agent_id
    return task.attempt


def fail(agent_id: str, task: Task, code: str = "E", message: str = "boom") -> None:
    error = {"code": code, "message": message}
    attempt = current_attempt(agent_id, task)
    actions.report(agent_id, Report("failed", task.pk, attempt, message_id=uuid.uuid4().hex, error=error))


def succeed(agent_id: str, task: Task) -> None:
    attempt = current_attempt(agent_id, task)
    actions.report(agent_id, Report("succeeded", task.pk, attempt, message_id=uuid.uuid4().hex, result={}))


@pytest.fixture
def fleet(make_agent: Any) -> None:
    make_agent("web-1", labels={"role": "web"})
    make_agent("web-2", online=False, labels={"role": "web"})
    make_agent("web-3", labels={"role": "web"}, admin_state=AdminState.DRAINING)
    make_agent("db-1", labels={"role": "db"}, capabilities=["gpu"])


# --- create: preview ------------------------------------------------------------------------


def test_preview_lists_the_matching_agents_and_their_state_and_writes_nothing(admin_client, fleet):
    response = admin_client.post(ADD, form_data(labels=[("role", "=", "web")], _preview="Preview"))

    assert response.status_code == 200
    preview = response.context["preview"]
    assert preview.preview.agent_count == 3
    assert [agent.id for agent in preview.agents] == ["web-1", "web-2", "web-3"]
    assert (preview.offline, preview.draining) == (1, 1)
    region = re.search(r'<div id="job-preview".*?<div class="submit-row">', response.content.decode(), re.S)
    assert region
    assert "web-2" in region.group()
    assert "db-1" not in region.group()
    assert nothing_written()


def test_preview_shows_the_rollout_waves(admin_client, fleet):
    data = form_data(mode="any", task_count=10, max_in_flight=4, target_capabilities="gpu", _preview="Preview")

    preview = admin_client.post(ADD, data).context["preview"]

    assert [agent.id for agent in preview.agents] == ["db-1"]
    assert (preview.preview.task_count, preview.preview.paced_by) == (10, "in_flight")
    assert [wave.tasks for wave in preview.waves] == [4, 4, 2]
    assert nothing_written()


def test_label_rows_with_in_select_any_of_the_values(admin_client, fleet):
    data = form_data(labels=[("role", "in", "web, db"), ("", "=", "")], target_agent_ids="web-1 db-1", _preview="1")

    preview = admin_client.post(ADD, data).context["preview"]

    assert preview.preview.agent_ids == ["db-1", "web-1"]


# --- create: launch -------------------------------------------------------------------------


def test_launch_submits_the_job_and_audits_it_as_the_operator(admin_client, admin_user, fleet):
    data = form_data(
        labels=[("role", "in", "web,db")],
        kind="deploy.app",
        payload='{"version": "1.2"}',
        target_capabilities="gpu",
        priority=7,
        max_attempts=5,
        backoff_base_s=2,
        backoff_cap_s=30,
        delivery_timeout_s=20,
        execution_timeout_s=90,
        max_in_flight_percent=50,
        rate_per_minute=10,
        abort_failure_ratio=0.25,
        abort_min_finished=4,
        not_before="2030-01-02T03:04",
        idempotency_key="deploy-1.2",
        allow_unsupported_kind="on",  # db-1 offers gpu only: its task will fail, and the operator says so
        _launch="Launch",
    )

    response = admin_client.post(ADD, data)

    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == detail_url(job)
    assert (job.kind, job.payload, job.mode) == ("deploy.app", {"version": "1.2"}, JobMode.EACH)
    assert (job.target_labels, job.target_capabilities, job.target_agent_ids) == ({"role": ["web", "db"]}, ["gpu"], [])
    assert (job.priority, job.max_attempts, job.backoff_base_s, job.backoff_cap_s) == (7, 5, 2.0, 30.0)
    assert (job.delivery_timeout_s, job.execution_timeout_s) == (20, 90)
    assert (job.max_in_flight, job.max_in_flight_percent, job.rate_per_minute) == (None, 50, 10)
    assert (job.abort_failure_ratio, job.abort_min_finished) == (0.25, 4)
    assert job.not_before is not None
    assert job.not_before.year == 2030
    assert job.idempotency_key == "deploy-1.2"
    assert list(Task.objects.filter(job=job).values_list("agent_id", flat=True)) == ["db-1"]
    (audit,) = AuditEvent.objects.all()
    assert (audit.action, audit.object_id, audit.actor_id) == ("job.submit", str(job.pk), admin_user.pk)
    assert job.created_by_id == admin_user.pk
    page = admin_client.get(response["Location"])
    assert f"Launched job {job.pk}" in page.content.decode()


def test_launch_of_mode_any_makes_task_count_tasks(admin_client, fleet):
    admin_client.post(ADD, form_data(mode="any", task_count=6, target_all="on", _launch="Launch"))

    job = Job.objects.get()
    assert (job.mode, job.tasks_total, Task.objects.filter(agent__isnull=True).count()) == (JobMode.ANY, 6, 6)
    assert job.target_all
    assert "every agent of the fleet (target_all)" in admin_client.get(detail_url(job)).content.decode()


def test_launch_with_a_used_idempotency_key_shows_the_existing_job(admin_client, fleet):
    admin_client.post(ADD, form_data(idempotency_key="once", target_agent_ids="web-1", _launch="Launch"))
    first = Job.objects.get()

    response = admin_client.post(ADD, form_data(idempotency_key="once", target_agent_ids="web-1", _launch="Launch"))

    assert response["Location"] == detail_url(first)
    assert Job.objects.count() == 1
    assert AuditEvent.objects.count() == 1


def test_launch_of_another_job_with_a_used_idempotency_key_is_a_form_error_naming_the_job(admin_client, fleet):
    admin_client.post(ADD, form_data(idempotency_key="once", target_agent_ids="web-1", _launch="Launch"))
    first = Job.objects.get()

    response = admin_client.post(
        ADD, form_data(idempotency_key="once", kind="other", target_agent_ids="web-1", _launch="Launch")
    )

    assert response.status_code == 200
    errors = response.context["form"].errors["idempotency_key"]
    assert errors == [
        f"The idempotency key 'once' was used by job {first.pk} with a different specification; nothing was "
        "launched. Send the same body to get that job, or use a new key."
    ]
    assert "Nothing was launched" in response.content.decode()
    assert Job.objects.count() == 1


# --- create: errors -------------------------------------------------------------------------


@pytest.mark.parametrize("button", ["_preview", "_launch"])
@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"payload": '{"a": 1,'}, "payload", "Not a valid payload: Expecting property name"),
        ({"payload": "[1, 2]"}, "payload", "must be a JSON object"),
        ({"payload": '{"n": NaN}'}, "payload", "NaN is not JSON"),
        ({"target_agent_ids": "web-1 Not_An_Id"}, "target_agent_ids", "item 2"),
        ({"target_agent_ids": "web-1 ghost"}, "target_agent_ids", "unknown agent ids: ghost"),
        ({"kind": "bad kind!"}, "kind", "does not match"),
        ({"task_count": 4}, "task_count", "Only for mode 'any'"),
        ({"backoff_base_s": 60, "backoff_cap_s": 5}, "backoff_cap_s", "at least backoff_base_s"),
        ({"abort_failure_ratio": 2}, "abort_failure_ratio", "less than or equal to 1"),
        ({"priority": "high"}, "priority", "whole number"),
    ],
)
def test_invalid_input_is_a_field_error_and_creates_nothing(admin_client, fleet, fields, field, message, button):
    response = admin_client.post(ADD, form_data(**fields, **{button: "1"}))

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert any(message in error for error in errors[field]), errors
    assert response.context["preview"] is None
    assert nothing_written()


def test_an_incomplete_label_row_is_an_error_on_that_row(admin_client, fleet):
    response = admin_client.post(ADD, form_data(labels=[("", "=", "web")], _launch="Launch"))

    labels = response.context["labels"]
    assert "Give the label key" in str(labels.forms[0].non_field_errors())
    assert nothing_written()


def test_label_keys_may_be_given_once(admin_client, fleet):
    response = admin_client.post(ADD, form_data(labels=[("role", "=", "web"), ("role", "=", "db")], _launch="1"))

    assert "Each label key once: role" in str(response.context["labels"].non_form_errors())
    assert nothing_written()


# --- clone ------------------------------------------------------------------------------------


def test_clone_opens_the_form_filled_in_as_the_job_was_submitted(admin_client, fleet, spec, operator):
    job, _ = actions.submit_job(
        spec(
            kind="deploy",
            payload={"v": 2},
            target_labels={"role": ["web", "db"], "zone": "a"},
            target_capabilities=["gpu"],
            priority=3,
            rate_per_minute=5,
            idempotency_key="k-1",
        ),
        operator,
    )

    response = admin_client.get(f"{ADD}?clone={job.pk}")

    form = response.context["form"]
    assert form["kind"].value() == "deploy"
    assert form["payload"].value().replace(" ", "").replace("\n", "") == '{"v":2}'
    assert (form["priority"].value(), form["rate_per_minute"].value()) == (3, 5)
    assert form["target_capabilities"].value() == "gpu"
    assert not form["idempotency_key"].value()
    rows = [(row["key"].value(), row["op"].value(), row["value"].value()) for row in response.context["labels"]]
    assert rows[:2] == [("role", "in", "web, db"), ("zone", "=", "a")]
    assert 'id="id_kind"' in response.content.decode()


def test_detail_offers_clone_only_to_those_who_may_add(fleet, spec, operator):
    job, _ = actions.submit_job(spec(), operator)
    viewer = login(staff_user("viewer", ("tasks.view_job",)))
    creator = login(staff_user("creator", ("tasks.view_job", "tasks.add_job")))

    assert 'id="job-clone"' not in viewer.get(detail_url(job)).content.decode()
    assert viewer.get(f"{ADD}?clone={job.pk}").status_code == 403
    assert 'id="job-clone"' in creator.get(detail_url(job)).content.decode()
    assert creator.get(f"{ADD}?clone={job.pk}").context["form"]["kind"].value() == "echo"


# --- list ---------------------------------------------------------------------------------------


def test_list_shows_state_and_progress_from_the_counters(admin_client, make_agent, spec, operator, frozen_clock):
    for name in ("a-1", "a-2", "a-3", "a-4"):
        make_agent(name)
    job, _ = actions.submit_job(spec(kind="deploy", max_attempts=1), operator)
    tasks = list(Task.objects.filter(job=job).order_by("id"))
    succeed("a-1", tasks[0])
    fail("a-2", tasks[1])

    page = admin_client.get(LIST).content.decode()

    assert 'class="job-badge job-badge-running"' in page
    assert 'class="job-bar-succeeded" style="width: 25.00%"' in page
    assert 'class="job-bar-failed" style="width: 25.00%"' in page
    assert 'class="job-bar-open" style="width: 50.00%"' in page
    assert 'id="changelist-live" data-live="jobs tasks"' in page


def test_list_filters_by_kind_state_and_mode_and_searches(admin_client, make_agent, spec, operator):
    make_agent("a-1")
    deploy, _ = actions.submit_job(spec(kind="deploy", idempotency_key="key-9"), operator)
    echo, _ = actions.submit_job(spec(kind="echo", mode="any", task_count=2), operator)
    actions.pause_job(echo.pk, operator)

    def listed(query: str) -> list[int]:
        response = admin_client.get(f"{LIST}?{query}")
        assert response.status_code == 200
        return [job.pk for job in response.context["cl"].result_list]

    assert listed("kind=deploy") == [deploy.pk]
    assert listed("state__exact=paused") == [echo.pk]
    assert listed("mode__exact=any") == [echo.pk]
    assert listed("q=key-9") == [deploy.pk]
    assert listed(f"q={echo.pk}") == [echo.pk]
    assert listed("q=dep") == [deploy.pk]
    assert listed("q=key") == []  # the idempotency key matches whole
    assert listed(f"q={2**70}") == []
    assert 'id="filter-kind"' in admin_client.get(LIST).content.decode()


def queries_for(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_list_costs_the_same_queries_for_3_or_30_jobs(admin_client, admin_user, make_agent, spec):
    make_agent("a-1")
    actor = Actor.of_user(admin_user)
    for _ in range(3):
        actions.submit_job(spec(), actor)
    few = queries_for(admin_client, LIST)

    for _ in range(27):
        actions.submit_job(spec(), actor)
    many = queries_for(admin_client, LIST)

    assert many == few
    assert many <= 10


# --- detail ---------------------------------------------------------------------------------------


def test_detail_costs_the_same_queries_for_3_or_30_tasks(admin_client, make_agent, spec, operator, frozen_clock):
    make_agent("a-1", max_concurrency=100)
    small, _ = actions.submit_job(spec(mode="any", task_count=3, max_attempts=1), operator)
    large, _ = actions.submit_job(spec(mode="any", task_count=30, max_attempts=1), operator)
    for job in (small, large):
        tasks = list(Task.objects.filter(job=job).order_by("id"))
        fail("a-1", tasks[0], code="E1")
        fail("a-1", tasks[1], code="E2")

    assert queries_for(admin_client, detail_url(small)) == queries_for(admin_client, detail_url(large))


def test_detail_shows_counts_rollout_failures_and_tasks(admin_client, make_agent, spec, operator, frozen_clock):
    make_agent("a-1", max_concurrency=100)
    job, _ = actions.submit_job(
        spec(
            mode="any", task_count=60, max_attempts=1, max_in_flight=10, abort_failure_ratio=0.5, abort_min_finished=10
        ),
        operator,
    )
    tasks = list(Task.objects.filter(job=job).order_by("id"))
    for task in tasks[:3]:
        fail("a-1", task, code="disk_full", message="no space left")
    fail("a-1", tasks[3], code="oops", message="other")
    succeed("a-1", tasks[4])
    assigned = Task.objects.filter(job=job, state=TaskState.ASSIGNED).count()

    response = admin_client.get(detail_url(job))

    page = response.content.decode()
    counts = {cell.state: cell.count for cell in response.context["counts"]}
    assert (counts["failed"], counts["succeeded"], counts["assigned"]) == (4, 1, assigned)
    assert counts["queued"] == 60 - 5 - assigned
    rollout = response.context["rollout"]
    assert (rollout.in_flight, rollout.in_flight_limit, rollout.paused) == (assigned, 10, False)
    assert 0 < assigned <= 10
    assert rollout.failure_ratio == pytest.approx(0.8)
    assert not rollout.abort_armed
    assert not rollout.over_threshold
    assert "not armed yet" in page
    groups = [(g.code, g.message, g.count) for g in response.context["failures"]]
    assert groups == [("disk_full", "no space left", 3), ("oops", "other", 1)]
    assert len(response.context["tasks"]) == 50
    assert 'id="job-progress" data-live="jobs tasks"' in page
    assert 'id="job-tasks" data-live="jobs tasks"' in page
    assert "All 60 tasks" in page

    failed_list = admin_client.get(response.context["failures"][0].url)
    assert sorted(t.pk for t in failed_list.context["cl"].result_list) == [t.pk for t in tasks[:3]]
    all_tasks = admin_client.get(response.context["all_tasks_url"]).context["cl"].result_list
    assert sorted(t.pk for t in all_tasks) == [t.pk for t in tasks]


def test_failures_show_the_last_lines_of_the_newest_task_of_each_group(admin_client, make_agent, spec, operator):
    from django.db import transaction

    from aegis_site.core import clock
    from tasks.engine.logs import Caps, Chunk, store_chunks

    make_agent("a-1", max_concurrency=10)
    job, _ = actions.submit_job(spec(mode="any", task_count=3, max_attempts=1), operator)
    first, second, quiet = Task.objects.filter(job=job).order_by("id")
    printed = "".join(f"line {n}\n" for n in range(1, 13)).encode()
    for task in (first, second):
        current_attempt("a-1", task)
        lines = [printed[:40], printed[40:] + b"\x1b[31m<script>red</script>\x1b[0m\n"]
        task.refresh_from_db()
        with transaction.atomic():
            store_chunks(
                [Chunk("a-1", task.pk, task.attempt, seq, "stderr", data) for seq, data in enumerate(lines, 1)],
                clock.now(),
                Caps(per_attempt=10**6, per_task=10**6),
            )
        fail("a-1", task, code="exit_1", message="exit status 1")
    fail("a-1", quiet, code="no_output", message="silent")

    response = admin_client.get(detail_url(job))

    groups = {group.code: group for group in response.context["failures"]}
    assert groups["exit_1"].example_task_id == second.pk  # the newest of the group
    assert groups["exit_1"].last_lines.splitlines() == [f"line {n}" for n in range(4, 13)] + ["<script>red</script>"]
    assert groups["no_output"].last_lines == ""
    page = response.content.decode()
    assert "&lt;script&gt;red&lt;/script&gt;" in page  # escaped, and the colour codes are gone
    assert "<script>red" not in page
    assert "\x1b" not in page


# --- actions ----------------------------------------------------------------------------------------


def audit_of(user: User, action: str) -> list[str]:
    return list(AuditEvent.objects.filter(actor_id=user.pk, action=action).values_list("object_id", flat=True))


@pytest.fixture
def running_jobs(make_agent: Any, spec: Any, operator: Actor, frozen_clock: Any) -> list[Job]:
    make_agent("a-1", max_concurrency=100)
    jobs = [actions.submit_job(spec(mode="any", task_count=2, max_attempts=1), operator)[0] for _ in range(2)]
    for job in jobs:
        fail("a-1", Task.objects.filter(job=job).order_by("id").first())
    return jobs


def bulk(client: Client, action: str, jobs: list[Job]) -> Any:
    return client.post(LIST, {"action": action, "_selected_action": [job.pk for job in jobs]}, follow=True)


def states(jobs: list[Job]) -> list[str]:
    return [Job.objects.get(pk=job.pk).state for job in jobs]


def test_list_actions_pause_resume_retry_and_cancel(admin_client, admin_user, running_jobs):
    bulk(admin_client, "pause_jobs", running_jobs)
    assert states(running_jobs) == [JobState.PAUSED] * 2
    bulk(admin_client, "resume_jobs", running_jobs)
    assert states(running_jobs) == [JobState.RUNNING] * 2
    response = bulk(admin_client, "retry_failed_jobs", running_jobs)
    page = response.content.decode()
    assert "Queued the failed tasks of 2 jobs again. Each task gets its job&#x27;s max_attempts more attempts" in page
    assert "the backoff goes on growing" in page
    assert Task.objects.filter(state=TaskState.FAILED).count() == 0
    bulk(admin_client, "cancel_jobs", running_jobs)
    assert states(running_jobs) == [JobState.CANCELED] * 2

    ids = sorted(str(job.pk) for job in running_jobs)
    for action in ("job.pause", "job.resume", "job.retry_failed", "job.cancel"):
        assert sorted(audit_of(admin_user, action)) == ids, action


def test_a_refused_list_action_is_reported_and_the_others_still_run(admin_client, running_jobs, operator):
    actions.cancel_job(running_jobs[0].pk, operator)

    response = bulk(admin_client, "retry_failed_jobs", running_jobs)

    page = response.content.decode()
    assert f"{running_jobs[0].pk}: job {running_jobs[0].pk} is canceled" in page
    assert "of 1 jobs again" in page


def test_detail_buttons_pause_resume_retry_and_cancel(admin_client, admin_user, running_jobs):
    job = running_jobs[0]

    def offered() -> list[str]:
        page = admin_client.get(detail_url(job)).content.decode()
        names = ("pause", "resume", "retry_failed", "cancel")
        return [name for name in names if f'action="{control_url(job, name)}"' in page]

    assert offered() == ["pause", "retry_failed", "cancel"]
    assert admin_client.post(control_url(job, "pause"))["Location"] == detail_url(job)
    assert states([job]) == [JobState.PAUSED]
    assert offered() == ["resume", "retry_failed", "cancel"]
    admin_client.post(control_url(job, "resume"))
    assert states([job]) == [JobState.RUNNING]
    admin_client.post(control_url(job, "retry_failed"))
    assert not Task.objects.filter(job=job, state=TaskState.FAILED).exists()
    response = admin_client.post(control_url(job, "cancel"), {"force": "on"}, follow=True)
    assert states([job]) == [JobState.CANCELED]
    assert "Canceled the job" in response.content.decode()
    assert offered() == []

    for action in ("job.pause", "job.resume", "job.retry_failed", "job.cancel"):
        assert audit_of(admin_user, action) == [str(job.pk)], action
    assert AuditEvent.objects.get(action="job.cancel").data["force"] is True


def test_a_refused_button_says_why(admin_client, running_jobs, operator):
    job = running_jobs[0]
    actions.cancel_job(job.pk, operator)

    response = admin_client.post(control_url(job, "pause"), follow=True)

    assert response.status_code == 200
    assert f"Job {job.pk}:" in response.content.decode()
    assert not AuditEvent.objects.filter(action="job.pause").exists()


def test_buttons_answer_only_post(admin_client, running_jobs):
    assert admin_client.get(control_url(running_jobs[0], "pause")).status_code == 405
    assert states(running_jobs[:1]) == [JobState.RUNNING]


# --- permissions ------------------------------------------------------------------------------------


def test_a_user_who_is_not_staff_is_sent_to_the_login_page(running_jobs):
    client = login(staff_user("visitor", ("tasks.view_job", "tasks.add_job", "tasks.change_job"), is_staff=False))
    job = running_jobs[0]

    for url in (LIST, ADD, detail_url(job)):
        assert client.get(url)["Location"].startswith(reverse("admin:login")), url
    response = client.post(control_url(job, "cancel"))
    assert response["Location"].startswith(reverse("admin:login"))
    client.post(ADD, form_data(_launch="Launch"))
    assert states(running_jobs) == [JobState.RUNNING] * 2
    assert Job.objects.count() == 2
    assert not AuditEvent.objects.exclude(actor_label="tester").exists()


def test_staff_without_change_permission_cannot_control_jobs(running_jobs):
    viewer = staff_user("viewer", ("tasks.view_job",))
    client = login(viewer)
    job = running_jobs[0]

    assert 'id="job-pause"' not in client.get(detail_url(job)).content.decode()
    for name in ("pause", "resume", "retry_failed", "cancel"):
        assert client.post(control_url(job, name)).status_code == 403, name
    for action in ("pause_jobs", "cancel_jobs", "retry_failed_jobs"):
        bulk(client, action, running_jobs)

    assert states(running_jobs) == [JobState.RUNNING] * 2
    assert Task.objects.filter(state=TaskState.FAILED).count() == 2
    assert not AuditEvent.objects.filter(actor_id=viewer.pk).exists()


def test_staff_without_add_permission_cannot_open_or_post_the_create_page(fleet):
    client = login(staff_user("operator", OPERATOR))

    assert client.get(ADD).status_code == 403
    assert client.post(ADD, form_data(_preview="1")).status_code == 403
    assert client.post(ADD, form_data(_launch="1")).status_code == 403
    assert 'class="addlink"' not in client.get(LIST).content.decode()
    assert nothing_written()


def test_staff_with_add_permission_can_launch(fleet):
    creator = staff_user("creator", ("tasks.view_job", "tasks.add_job"))
    client = login(creator)

    assert 'id="job-preview-button"' in client.get(ADD).content.decode()
    response = client.post(ADD, form_data(target_agent_ids="web-1", _launch="1"))

    job = Job.objects.get()
    assert response["Location"] == detail_url(job)
    assert audit_of(creator, "job.submit") == [str(job.pk)]


# --- one vocabulary (issue 15 item 3) and the task table's columns (item 4) ---------------------------------------


def test_a_job_whose_tasks_timed_out_reads_the_same_everywhere_on_its_page(
    admin_client, make_agent, spec, operator, frozen_clock
):
    make_agent("a-1", max_concurrency=10)
    job, _ = actions.submit_job(spec(mode="any", task_count=3, max_attempts=1, delivery_timeout_s=5), operator)
    actions.claim_tasks("a-1", 3)
    frozen_clock.advance(10)
    actions.expire_leases()
    job.refresh_from_db()
    assert (job.state, job.tasks_failed) == (JobState.FAILED, 3)

    page = admin_client.get(detail_url(job)).content.decode()

    assert '<span class="job-badge job-badge-failed" id="job-state">failed</span>' in page
    assert "3 of 3 tasks finished: 0 succeeded, 3 failed (3 timed out), 0 canceled" in page
    assert 'id="job-count-failed-total">failed: 3</th>' in page
    assert re.search(r'id="job-count-failed"><a [^>]*>0</a>', page)
    assert re.search(r'id="job-count-timed_out"><a [^>]*>3</a>', page)
    assert page.count('<span class="job-badge job-badge-timed_out">timed out</span>') == 4  # 3 tasks, 1 failure group
    assert ">timed_out<" not in page
    assert "failed (error or timed out)" in page  # the legend
    assert "delivery_timeout: not accepted in time" in page  # the tasks' error summary

    listing = admin_client.get(reverse("admin:tasks_job_changelist")).content.decode()
    assert "3/3 finished, " in listing
    assert "3 failed (3 timed out)" in listing
    assert '<span class="job-badge job-badge-failed">failed</span>' in listing


def test_job_page_puts_progress_failures_and_tasks_before_the_policy(admin_client, make_agent, spec, operator):
    make_agent("a-1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a-1"]), operator)

    page = admin_client.get(detail_url(job)).content.decode()

    order = [page.index(marker) for marker in ('id="job-progress"', 'id="job-tasks"', 'id="job-rollout"', ">Policy<")]
    assert order == sorted(order), order
    policy = page[page.index(">Policy<") - 400 : page.index(">Policy<")]
    assert "collapse" in policy  # folded away until opened
    assert "<details>" in policy


def test_job_state_filter_shows_the_labels(admin_client):
    page = admin_client.get(reverse("admin:tasks_job_changelist")).content.decode()
    task_page = admin_client.get(reverse("admin:tasks_task_changelist")).content.decode()

    assert "?state__exact=timed_out" in task_page
    assert re.search(r'state__exact=timed_out"[^>]*>timed out</a>', task_page)
    assert "Timed Out" not in task_page
    assert re.search(r'state__exact=succeeded"[^>]*>succeeded</a>', page)
