"""Each event of the catalogue fires exactly once for its cause, in the cause's transaction (docs/notifications.md).

The engine is driven through ``tasks.actions`` and ``registry.actions`` as the other apps'
tests drive it; a subscription to every event type counts what was written.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction

from aegis_site.core import clock
from notify import scans
from notify.models import Delivery, Event, EventType, Subscription
from notify.outbox import emit
from registry import actions as registry_actions
from registry.models import AdminState, Agent, Connectivity
from tasks import actions
from tasks.engine import control
from tasks.engine.reports import Report
from tasks.models import Job, JobState, Task, TaskState

pytestmark = pytest.mark.django_db

EVERYTHING = [value for value, _label in EventType.choices]


def subscribe(name: str = "all", events: list[str] | None = None, **fields: Any) -> Subscription:
    now = clock.now()
    return Subscription.objects.create(
        name=name,
        url=f"https://hooks.example.com/{name}",
        events=EVERYTHING if events is None else events,
        created_at=now,
        updated_at=now,
        **fields,
    )


def fired(subscription: Subscription | None = None) -> Counter[str]:
    """Event types written, counted; with ``subscription``, those of its deliveries."""
    if subscription is None:
        return Counter(Event.objects.values_list("type", flat=True))
    return Counter(Delivery.objects.filter(subscription=subscription).values_list("event__type", flat=True))


def only(event_type: str) -> Event:
    (event,) = Event.objects.filter(type=event_type)
    return event


@pytest.fixture
def everything(frozen_clock) -> Subscription:
    return subscribe()


def test_a_job_that_succeeds_starts_once_and_finishes_once(everything, make_agent, spec, operator):
    make_agent("a1")
    make_agent("a2")
    job, _ = actions.submit_job(spec(mode="any", task_count=2), operator)

    (first,) = actions.claim_tasks("a1", 1)
    (second,) = actions.claim_tasks("a2", 1)  # the job runs already: no second start
    actions.report("a1", Report("succeeded", first.task_id, first.attempt))
    actions.report("a2", Report("succeeded", second.task_id, second.attempt))

    assert fired() == {EventType.JOB_STARTED: 1, EventType.JOB_FINISHED: 1}
    assert fired(everything) == fired()
    finished = only(EventType.JOB_FINISHED)
    assert finished.payload["outcome"] == "succeeded"
    assert finished.payload["job"]["counts"] == {"total": 2, "succeeded": 2, "failed": 0, "canceled": 0}
    assert finished.job_id == job.pk
    assert only(EventType.JOB_STARTED).key == f"job.started:{job.pk}"


def test_a_job_canceled_by_an_operator_finishes_canceled_even_with_a_failed_task(
    everything, make_agent, spec, operator
):
    make_agent("a1", max_concurrency=2)
    job, _ = actions.submit_job(spec(mode="any", task_count=2, max_attempts=1), operator)
    first, _second = actions.claim_tasks("a1", 2)
    actions.report("a1", Report("failed", first.task_id, first.attempt, error={"code": "boom", "message": "no"}))

    actions.cancel_job(job.pk, operator, force=True)

    assert Job.objects.get(pk=job.pk).state == JobState.CANCELED
    assert fired() == {EventType.JOB_STARTED: 1, EventType.TASK_FAILED: 1, EventType.JOB_FINISHED: 1}
    assert only(EventType.JOB_FINISHED).payload["outcome"] == "canceled"


def test_a_job_canceled_while_its_task_runs_finishes_when_the_agent_stops(everything, make_agent, spec, operator):
    make_agent("a1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    (assignment,) = actions.claim_tasks("a1", 1)

    actions.cancel_job(job.pk, operator)  # not forced: the task ends when the agent says so
    assert fired()[EventType.JOB_FINISHED] == 0
    actions.report("a1", Report("failed", assignment.task_id, assignment.attempt, error={"code": "x", "message": "y"}))

    assert fired() == {EventType.JOB_STARTED: 1, EventType.JOB_FINISHED: 1}  # canceled: not a task failure
    assert only(EventType.JOB_FINISHED).payload["outcome"] == "canceled"


def test_a_job_aborted_by_its_failure_threshold_notifies_abort_and_end_once(everything, make_agent, spec, operator):
    make_agent("a1")
    job, _ = actions.submit_job(spec(mode="any", task_count=3, max_attempts=1, abort_failure_ratio=0.5), operator)
    (assignment,) = actions.claim_tasks("a1", 1)

    actions.report("a1", Report("failed", assignment.task_id, assignment.attempt, error={"code": "e", "message": "m"}))

    assert Job.objects.get(pk=job.pk).state == JobState.ABORTED
    assert fired() == {
        EventType.JOB_STARTED: 1,
        EventType.TASK_FAILED: 1,
        EventType.JOB_ABORTED: 1,
        EventType.JOB_FINISHED: 1,
    }
    assert only(EventType.JOB_FINISHED).payload["outcome"] == "aborted"
    assert only(EventType.JOB_ABORTED).payload["job"]["counts"]["failed"] == 1


def test_a_task_that_times_out_with_no_attempt_left_notifies_its_failure_and_the_jobs_end(
    everything, make_agent, spec, operator, frozen_clock
):
    make_agent("a1", labels={"env": "prod"})
    job, _ = actions.submit_job(spec(target_agent_ids=["a1"], max_attempts=1, execution_timeout_s=60), operator)
    (assignment,) = actions.claim_tasks("a1", 1)
    actions.report("a1", Report("accepted", assignment.task_id, assignment.attempt))

    frozen_clock.advance(61)
    assert actions.expire_leases(10) == 1

    assert fired() == {EventType.JOB_STARTED: 1, EventType.TASK_FAILED: 1, EventType.JOB_FINISHED: 1}
    failed = only(EventType.TASK_FAILED)
    assert failed.key == f"task.failed:{assignment.task_id}:1"
    assert failed.payload == {
        "job": {"id": job.pk, "kind": "echo", "state": "running"},
        "tasks": [
            {
                "id": assignment.task_id,
                "attempt": 1,
                "agent_id": "a1",
                "state": "timed_out",
                "error": {"code": "execution_timeout", "message": "lease expired"},
                "finished_at": "2026-01-01T12:01:01Z",
            }
        ],
        "count": 1,
    }
    assert only(EventType.JOB_FINISHED).payload["outcome"] == "failed"


def test_a_failure_with_attempts_left_is_not_a_final_failure(everything, make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"], max_attempts=2), operator)
    (assignment,) = actions.claim_tasks("a1", 1)
    actions.report("a1", Report("failed", assignment.task_id, 1, error={"code": "e", "message": "m"}))
    assert fired()[EventType.TASK_FAILED] == 0

    frozen_clock.advance(1000)
    (again,) = actions.claim_tasks("a1", 1)
    actions.report("a1", Report("failed", again.task_id, 2, error={"code": "e", "message": "m"}))
    assert only(EventType.TASK_FAILED).key == f"task.failed:{again.task_id}:2"


def test_a_paused_job_notifies_each_pause(everything, make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    actions.pause_job(job.pk, operator)
    actions.resume_job(job.pk, operator)
    frozen_clock.advance(5)
    actions.pause_job(job.pk, operator)

    assert fired() == {EventType.JOB_PAUSED: 2}


def test_a_rolled_back_cause_writes_no_event(everything, make_agent, spec, operator):
    make_agent("a1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a1"]), operator)

    def pause_then_fail() -> None:
        with transaction.atomic():
            control.pause_job(job.pk, clock.now())
            assert fired() == {EventType.JOB_PAUSED: 1}
            raise RuntimeError("the change fails after the event was written")

    with pytest.raises(RuntimeError):
        pause_then_fail()

    assert Event.objects.count() == 0
    assert Delivery.objects.count() == 0


def test_agent_connectivity_notifies_only_real_changes(everything, make_agent, frozen_clock):
    make_agent("a1", labels={"env": "prod"})

    registry_actions.mark_online("a1")  # online already: nothing
    registry_actions.mark_offline("a1", "agent went offline (status or Last Will)")
    registry_actions.mark_offline("a1", "again")  # offline already: nothing
    frozen_clock.advance(1)
    registry_actions.mark_online("a1")

    assert fired() == {EventType.AGENT_OFFLINE: 1, EventType.AGENT_ONLINE: 1}
    offline = only(EventType.AGENT_OFFLINE)
    assert offline.payload["agent"]["labels"] == {"env": "prod"}
    assert offline.payload["reason"] == "agent went offline (status or Last Will)"


def test_the_silence_sweep_and_a_reviving_heartbeat_notify(everything, make_agent, frozen_clock):
    make_agent("a1")
    frozen_clock.advance(3600)
    assert registry_actions.mark_silent_agents_offline(30, 3) == 1
    assert registry_actions.mark_silent_agents_offline(30, 3) == 0
    frozen_clock.advance(1)
    registry_actions.touch_agents({"a1": clock.now()})
    registry_actions.touch_agents({"a1": clock.now()})

    assert Agent.objects.get(pk="a1").connectivity == Connectivity.ONLINE
    assert fired() == {EventType.AGENT_OFFLINE: 1, EventType.AGENT_ONLINE: 1}
    assert only(EventType.AGENT_OFFLINE).payload["reason"] == "heartbeat timeout"


def test_disabling_an_agent_notifies_and_other_admin_states_do_not(everything, make_agent, operator):
    make_agent("a1")
    registry_actions.set_admin_state("a1", AdminState.DRAINING, operator)
    registry_actions.set_admin_state("a1", AdminState.DISABLED, operator)
    registry_actions.set_admin_state("a1", AdminState.DISABLED, operator)  # no change: nothing

    assert fired() == {EventType.AGENT_DISABLED: 1}
    assert only(EventType.AGENT_DISABLED).payload["previous"] == "draining"


def test_filters_pick_the_subscriptions_by_job_kind_and_agent_labels(frozen_clock, make_agent, spec, operator):
    echo = subscribe("echo", job_kinds=["echo"])
    deploy = subscribe("deploy", job_kinds=["deploy"])
    prod = subscribe("prod", agent_labels={"env": ["prod", "staging"]})
    dev = subscribe("dev", agent_labels={"env": "dev"})
    make_agent("a1", labels={"env": "prod"})
    actions.submit_job(spec(target_agent_ids=["a1"], max_attempts=1), operator)
    (assignment,) = actions.claim_tasks("a1", 1)
    actions.report("a1", Report("failed", assignment.task_id, 1, error={"code": "e", "message": "m"}))
    registry_actions.mark_offline("a1", "gone")

    job_events = {EventType.JOB_STARTED: 1, EventType.TASK_FAILED: 1, EventType.JOB_FINISHED: 1}
    assert fired(echo) == {**job_events, EventType.AGENT_OFFLINE: 1}  # a job filter does not apply to agents
    assert fired(deploy) == {EventType.AGENT_OFFLINE: 1}
    assert fired(prod) == {**job_events, EventType.TASK_FAILED: 1, EventType.AGENT_OFFLINE: 1}
    assert fired(dev) == {EventType.JOB_STARTED: 1, EventType.JOB_FINISHED: 1}  # no agent: the filter does not apply


def test_disabled_subscriptions_and_unsubscribed_types_get_nothing(frozen_clock, make_agent):
    off = subscribe("off", enabled=False)
    finished_only = subscribe("finished", events=[EventType.JOB_FINISHED])
    make_agent("a1")
    registry_actions.mark_offline("a1", "gone")

    assert fired() == {}  # no enabled subscription wants it: no event row at all
    assert fired(off) == {}
    assert fired(finished_only) == {}


def test_a_second_emit_of_a_key_writes_nothing(everything, frozen_clock):
    assert emit(EventType.AGENT_OFFLINE, "agent.offline:x:1", {}, clock.now()) is not None
    assert emit(EventType.AGENT_OFFLINE, "agent.offline:x:1", {}, clock.now()) is None
    assert (Event.objects.count(), Delivery.objects.count()) == (1, 1)


def test_task_failures_of_one_job_gather_within_the_digest_window(everything, frozen_clock):
    window = timedelta(seconds=settings.NOTIFY_DIGEST_WINDOW_S)
    start = clock.now()

    def fail(task_id: int, job_id: int = 1) -> Delivery:
        event = emit(EventType.TASK_FAILED, f"task.failed:{task_id}:1", {}, clock.now(), job_id=job_id)
        assert event is not None
        return Delivery.objects.get(event=event)

    first = fail(1)
    frozen_clock.advance(10)
    second = fail(2)
    other_job = fail(3, job_id=2)
    frozen_clock.advance(window.total_seconds())  # the first one is out of the window now; the second is not
    third = fail(4)
    frozen_clock.advance(window.total_seconds())
    later = fail(5)

    assert first.next_attempt_at == start  # the first is sent at once
    assert second.next_attempt_at == start + window  # the others wait for the first one's window
    assert other_job.next_attempt_at == other_job.created_at  # another job: its own digest
    assert third.next_attempt_at == second.created_at + window
    assert later.next_attempt_at == later.created_at
    assert {d.deadline - d.created_at for d in (first, later)} == {timedelta(seconds=settings.NOTIFY_DEADLINE_S)}


def test_scan_notifies_a_stuck_task_once_per_attempt(everything, make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"], execution_timeout_s=3600), operator)
    (assignment,) = actions.claim_tasks("a1", 1)
    actions.report("a1", Report("accepted", assignment.task_id, 1))
    Agent.objects.filter(pk="a1").update(connectivity=Connectivity.OFFLINE)  # the sweep is not what is tested

    assert scans.scan(clock.now()) == 0  # offline, but not for long
    frozen_clock.advance(settings.NOTIFY_STUCK_AFTER_S + 1)
    assert scans.scan(clock.now()) == 1
    assert scans.scan(clock.now()) == 0

    stuck = only(EventType.RECONCILIATION_STUCK)
    assert stuck.key == f"reconciliation.stuck:{assignment.task_id}:1"
    assert stuck.payload["reason"] == "offline_agent"
    assert stuck.payload["task"]["state"] == TaskState.RUNNING
    assert Task.objects.get(pk=assignment.task_id).state == TaskState.RUNNING  # a scan changes nothing
    assert fired(everything)[EventType.RECONCILIATION_STUCK] == 1


def test_scan_notifies_an_expiring_certificate_once_per_serial(everything, tmp_path, settings):
    from broker import mosquitto
    from registry.pki import crypto

    layout = mosquitto.write_broker_files(tmp_path / "broker").layout
    ca = crypto.load_issued(layout.ca_cert, layout.ca_key)
    issued = crypto.issue_agent_cert(ca, "agent-soon", validity_days=5)
    crypto.write_public(layout.issued / f"agent-soon-{issued.serial:x}.crt", issued.cert_pem)
    settings.BROKER_DIR = str(layout.directory)
    now = datetime.now(UTC)  # the certificates' own times are real ones

    assert scans.scan_certificates(now) == 1
    assert scans.scan_certificates(now) == 0

    event = only(EventType.CERTIFICATE_EXPIRING)
    certificate = event.payload["certificate"]
    assert certificate["agent_id"] == "agent-soon"
    assert certificate["serial"] == crypto.normalize_serial(issued.serial)
    assert event.key == f"certificate.expiring:{certificate['serial']}"
    assert certificate["days_left"] < settings.NOTIFY_CERT_EXPIRY_WARN_DAYS
