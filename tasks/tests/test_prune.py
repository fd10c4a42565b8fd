"""Retention: only old finished rows go, in batches, and a dry run deletes nothing."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from aegis_site.core import clock
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from tasks import retention
from tasks.models import Job, JobState, Task, TaskEvent, TaskState

pytestmark = pytest.mark.django_db
OLD = timedelta(days=40)
RECENT = timedelta(days=2)


def job(state: str = JobState.SUCCEEDED, age: timedelta | None = OLD) -> Job:
    finished = clock.now() - age if age is not None else None
    return Job.objects.create(kind="echo", state=state, finished_at=finished)


def task(of: Job, state: str = TaskState.SUCCEEDED, age: timedelta | None = OLD) -> Task:
    finished = clock.now() - age if age is not None else None
    made = Task.objects.create(job=of, kind="echo", state=state, not_before=clock.now(), finished_at=finished)
    TaskEvent.objects.create(task=made, kind="created", attempt=0, created_at=clock.now() - OLD)
    return made


def audit(age: timedelta) -> AuditEvent:
    event = AuditEvent.objects.create(actor_label="t", action="x", object_type="job", object_id="1")
    AuditEvent.objects.filter(pk=event.pk).update(created_at=clock.now() - age)
    return event


def outbox(sent_age: timedelta | None) -> OutboxMessage:
    sent = clock.now() - sent_age if sent_age is not None else None
    return OutboxMessage.objects.create(
        agent_id="a", topic="t", message_type="m", payload={}, created_at=clock.now() - OLD, sent_at=sent
    )


@pytest.mark.parametrize(
    ("text", "expected"), [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90))]
)
def test_durations_parse(text, expected):
    assert retention.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "d", "3w", "-1d", ""])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        retention.parse_duration(text)


def test_only_old_finished_rows_are_pruned():
    old_done = job()
    old_tasks = [task(old_done), task(old_done, TaskState.FAILED)]
    mixed = job()  # an old finished job with one recent task keeps the job and that task
    gone_task, kept_task = task(mixed, TaskState.CANCELED), task(mixed, age=RECENT)
    running = job(JobState.RUNNING, age=None)
    live = [task(running, TaskState.RUNNING, age=None), task(running, TaskState.QUEUED, age=None)]
    recent_job = job(age=RECENT)
    recent_task = task(recent_job, age=RECENT)
    old_audit, new_audit = audit(OLD), audit(RECENT)
    old_sent, new_sent, unsent = outbox(OLD), outbox(RECENT), outbox(None)

    counts = retention.prune(timedelta(days=30))

    nothing_notified = {"notification events": 0, "notification deliveries": 0}  # notify's receiver of ``pruning``
    assert counts == retention.PruneCounts(
        tasks=3, task_events=3, jobs=1, audit_events=1, outbox_messages=1, others=nothing_notified
    )
    assert not Job.objects.filter(pk=old_done.pk).exists()
    assert not Task.objects.filter(pk__in=[t.pk for t in [*old_tasks, gone_task]]).exists()
    assert set(Job.objects.values_list("pk", flat=True)) == {mixed.pk, running.pk, recent_job.pk}
    assert set(Task.objects.values_list("pk", flat=True)) == {kept_task.pk, recent_task.pk, *(t.pk for t in live)}
    assert TaskEvent.objects.count() == 4
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == [new_audit.pk]
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {new_sent.pk, unsent.pk}
    assert old_audit.pk != new_audit.pk
    assert old_sent.pk not in {new_sent.pk, unsent.pk}


def test_batches_of_two_delete_all_five_rows():
    done = job()
    for _ in range(5):
        task(done)
        audit(OLD)
    batches: list[tuple[str, int]] = []

    counts = retention.prune(timedelta(days=30), batch_size=2, progress=lambda what, n: batches.append((what, n)))

    assert counts.tasks == 5
    assert counts.audit_events == 5
    assert [n for what, n in batches if what == "tasks"] == [2, 4, 5]
    assert not Task.objects.exists()
    assert not AuditEvent.objects.exists()


def test_dry_run_deletes_nothing_and_counts_what_would_go():
    done = job()
    task(done)
    task(done)
    audit(OLD)
    out = io.StringIO()

    call_command("prune", "--older-than", "30d", "--dry-run", stdout=out)

    assert (
        "would delete: 2 tasks, 2 task events, 0 output chunks, 1 jobs, 1 audit events, 0 sent outbox messages"
        in out.getvalue()
    )
    assert Task.objects.count() == 2
    assert Job.objects.count() == 1
    assert AuditEvent.objects.count() == 1


def test_prune_command_deletes_and_refuses_a_bad_duration():
    task(job())
    out = io.StringIO()
    call_command("prune", "--older-than", "30d", "--batch-size", "1", stdout=out)
    assert "deleted: 1 tasks" in out.getvalue()
    assert not Job.objects.exists()
    with pytest.raises(CommandError, match="not a duration"):
        call_command("prune", "--older-than", "30 days")
