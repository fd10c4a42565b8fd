"""Notifications end to end (issue 18, Acceptance): each event reaches a real receiver exactly once for its cause.

The web role (daphne), the dispatcher and ``manage.py run_notifier`` run as processes on the
test's PostgreSQL database with production defaults (tests/roles.py). The test drives them only
through public surfaces: the operator API with a staff token (a subscription to every event type,
jobs, cancel, pause, disable) and the agent HTTP API (enrol, heartbeat, claim, reports). It counts
at the receiver (notify/tests/receiver.py, a real HTTP server in this process), by event type and
cause, after checking every request's signature with the reference ``standardwebhooks`` verifier.

The receiver listens on 127.0.0.1, so the notifier runs with ``NOTIFY_ALLOW_PRIVATE_ADDRESSES=true``
(loopback is refused by default). ``NOTIFY_DIGEST_WINDOW_S`` is 2 s in the roles that emit
(web and dispatcher) so a job's later failures gather for 2 s, not a minute.
"""

from __future__ import annotations

import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from standardwebhooks.webhooks import Webhook

from aegis_site.core.audit import Actor
from aegis_site.core.models import RoleHeartbeat
from notify.models import Delivery, DeliveryState, Event, EventType
from notify.tests.receiver import Receiver
from ops import actions as ops_actions
from registry import actions as registry_actions
from tests.roles import Roles, request
from tests.support import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

API = "/api/v1"
EMITTING = {"NOTIFY_DIGEST_WINDOW_S": "2"}  # the roles that write events: a job's failures gather for 2 s
QUIET_FLEET = {"AGENT_HEARTBEAT_INTERVAL": "3600"}  # no silence sweep unless a test asks for it


@dataclass
class Notification:
    webhook_id: str
    type: str
    data: dict[str, Any]


@dataclass
class System:
    """The running roles, the receiver, the subscription's secret and an operator token."""

    roles: Roles
    receiver: Receiver
    staff_token: str
    secret: str = ""
    agent_tokens: dict[str, str] = field(default_factory=dict)

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """An API call as the operator (``token`` None), an agent (its token) or anonymous (``""``)."""
        bearer = self.staff_token if token is None else token
        status, answer = request(self.roles.web_url, method, API + path, body, token=bearer)
        assert status in (200, 201, 204), f"{method} {path}: {status} {answer}"
        return answer

    def subscribe(self) -> None:
        body = {"name": "e2e", "target_kind": "webhook", "url": self.receiver.url(), "events": list(EventType.values)}
        self.secret = self.api("POST", "/notifications/subscriptions/", body)["secret"]

    def enrol(self, agent_id: str, max_concurrency: int = 4) -> str:
        """An agent enrols and sends its first heartbeat: enrolled offline, it comes online (agent.online)."""
        _token, bootstrap = registry_actions.create_enrolment_token(
            Actor("tester"), name=agent_id, allowed_capabilities=["echo"]
        )
        enrol = {
            "enrolment_token": bootstrap,
            "agent_id": agent_id,
            "capabilities": ["echo"],
            "max_concurrency": max_concurrency,
        }
        token = str(self.api("POST", "/agent/enrol/", enrol, token="")["token"])
        self.agent_tokens[agent_id] = token
        self.heartbeat(agent_id)
        return token

    def heartbeat(self, agent_id: str) -> None:
        self.api("POST", "/agent/heartbeat/", {}, token=self.agent_tokens[agent_id])

    def submit(self, agent_id: str, **spec: Any) -> int:
        body = {"kind": "echo", "payload": {"say": "hi"}, "target_agent_ids": [agent_id], "max_attempts": 1, **spec}
        return int(self.api("POST", "/jobs/", body)["id"])

    def claim(self, agent_id: str, count: int) -> list[dict[str, Any]]:
        """Claim until ``count`` tasks are held (the answer may hold fewer than asked at a time)."""
        held: list[dict[str, Any]] = []

        def more() -> bool:
            body = {"max_tasks": count - len(held), "wait_s": 5}
            answer = self.api("POST", "/agent/tasks/claim/", body, token=self.agent_tokens[agent_id])
            held.extend(answer["tasks"])
            return len(held) >= count

        wait_for(more, f"{count} tasks for {agent_id}", timeout=120, interval=0)
        assert len(held) == count, held
        return held

    def report(self, agent_id: str, task: dict[str, Any], kind: str, **extra: Any) -> str:
        event = {"type": kind, "attempt": task["attempt"], "event_id": f"{task['id']}-{task['attempt']}-{kind}"}
        path = f"/agent/tasks/{task['id']}/events/"
        answer = self.api("POST", path, {**event, **extra}, token=self.agent_tokens[agent_id])
        assert answer["status"] == "applied", answer
        return str(answer["state"])

    def fail(self, agent_id: str, task: dict[str, Any]) -> str:
        error = {"code": "exit_code", "message": "exit 1"}
        return self.report(agent_id, task, "failed", error=error, retryable=False)

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.api("GET", f"/jobs/{job_id}/"))

    def received(self) -> list[Notification]:
        """Every POST so far, each checked with the reference verifier (signature and timestamp)."""
        with self.receiver.lock:
            posts = list(self.receiver.requests)
        verifier = Webhook(self.secret)
        notifications = []
        for post in posts:
            body = verifier.verify(post.body, post.headers)
            assert body["version"] == 1, body
            assert body["id"].startswith("evt_"), body
            notifications.append(Notification(post.headers["webhook-id"], body["type"], body["data"]))
        return notifications

    def of_type(self, event_type: str) -> list[Notification]:
        return [item for item in self.received() if item.type == event_type]

    def settle(self) -> list[Notification]:
        """Wait until no delivery is pending and the receiver has one POST per delivered one; then all received."""

        def quiet() -> bool:
            if Delivery.objects.filter(state=DeliveryState.PENDING).exists():
                return False
            return self.receiver.count() == Delivery.objects.filter(state=DeliveryState.SUCCEEDED).count()

        wait_for(quiet, "every delivery to be sent", timeout=120, interval=0.2)
        notifications = self.received()
        ids = Counter(item.webhook_id for item in notifications)
        assert set(ids.values()) == {1}, f"a webhook-id came twice: {ids}"  # no crash here: no redelivery
        return notifications


def failed_entries(notifications: list[Notification]) -> Counter[tuple[int, int]]:
    """(task id, attempt) of every task in every task.failed body (single or digest)."""
    entries: Counter[tuple[int, int]] = Counter()
    for item in notifications:
        if item.type == EventType.TASK_FAILED:
            assert item.data["count"] == len(item.data["tasks"]), item.data
            entries.update((entry["id"], entry["attempt"]) for entry in item.data["tasks"])
    return entries


def by_job(notifications: list[Notification], event_type: str) -> Counter[tuple[int, str]]:
    """(job id, outcome or "") of every job event of this type."""
    return Counter(
        (item.data["job"]["id"], str(item.data.get("outcome", ""))) for item in notifications if item.type == event_type
    )


@pytest.fixture
def start_system(transactional_db: Any, tmp_path: Path) -> Iterator[Any]:
    """Starts web, dispatcher (with ``dispatcher_env``) and a notifier, a receiver and the subscription."""
    receiver = Receiver().start()
    roles = Roles(tmp_path)

    def start(**dispatcher_env: str) -> System:
        user = User.objects.create_superuser(f"ops-{uuid.uuid4().hex[:6]}", password="unused-password")
        _token, staff_token = ops_actions.issue_api_token(user, "e2e", Actor("test"))
        roles.web(**EMITTING)
        roles.start("dispatcher", [sys.executable, "manage.py", "run_dispatcher"], **EMITTING, **dispatcher_env)
        roles.start(
            "notifier",
            [sys.executable, "manage.py", "run_notifier"],
            NOTIFY_ALLOW_PRIVATE_ADDRESSES="true",  # the receiver is on loopback, refused by default
            NOTIFY_POLL_INTERVAL_S="0.2",
        )
        wait_for(
            lambda: (
                roles.alive("dispatcher")
                and roles.alive("notifier")
                and {"dispatcher", "notifier"} <= set(RoleHeartbeat.objects.values_list("role", flat=True))
            ),
            "the dispatcher and the notifier to report",
            timeout=90,
            interval=0.2,
        )
        system = System(roles, receiver, staff_token)
        system.subscribe()
        return system

    try:
        yield start
    finally:
        roles.stop()
        receiver.stop()


def test_each_job_and_agent_event_reaches_the_receiver_once_for_its_cause(start_system: Any) -> None:
    system: System = start_system(**QUIET_FLEET)
    agent = "edge-1"
    system.enrol(agent, max_concurrency=10)

    # A job whose task succeeds.
    succeeded = system.submit(agent)
    [task] = system.claim(agent, 1)
    system.report(agent, task, "accepted")
    assert system.report(agent, task, "succeeded", result={"said": "hi"}) == "succeeded"

    # A job the operator cancels while its task runs (no force): it finishes when the task stops.
    canceled = system.submit(agent)
    [task] = system.claim(agent, 1)
    system.report(agent, task, "accepted")
    assert system.api("POST", f"/jobs/{canceled}/cancel/", {"force": False})["state"] == "canceled"
    system.report(agent, task, "succeeded", result={"said": "hi"})
    assert system.job(canceled)["finished_at"] is not None

    # A job aborted by its failure threshold: 2 of 4 tasks fail, the 2 still queued are canceled.
    aborted = system.submit(agent, mode="any", task_count=4, abort_failure_ratio=0.5, abort_min_finished=2)
    first, second = system.claim(agent, 2)
    for task in (first, second):
        system.report(agent, task, "accepted")
    system.fail(agent, first)
    system.fail(agent, second)
    assert system.job(aborted)["state"] == "aborted"

    # A job whose task runs past its execution timeout: the dispatcher expires it (one attempt: final).
    timed_out = system.submit(agent, execution_timeout_s=2)
    [late] = system.claim(agent, 1)
    system.report(agent, late, "accepted")
    wait_for(lambda: system.job(timed_out)["state"] == "failed", "the dispatcher to expire the task", timeout=90)

    # A job paused before any task ran (the HTTP agent never claims it), then the agent disabled.
    paused = system.submit(agent)
    assert system.api("POST", f"/jobs/{paused}/pause/", {})["state"] == "paused"
    assert system.api("POST", f"/agents/{agent}/disable/")["admin_state"] == "disabled"

    wait_for(lambda: system.of_type(EventType.AGENT_DISABLED), "agent.disabled at the receiver", timeout=60)
    wait_for(lambda: len(failed_entries(system.received())) == 3, "the three failed tasks", timeout=60)
    received = system.settle()

    started = by_job(received, EventType.JOB_STARTED)
    assert started == {(job, ""): 1 for job in (succeeded, canceled, aborted, timed_out)}
    assert by_job(received, EventType.JOB_FINISHED) == {
        (succeeded, "succeeded"): 1,
        (canceled, "canceled"): 1,
        (aborted, "aborted"): 1,
        (timed_out, "failed"): 1,
    }
    assert by_job(received, EventType.JOB_ABORTED) == {(aborted, ""): 1}
    assert by_job(received, EventType.JOB_PAUSED) == {(paused, ""): 1}
    assert failed_entries(received) == {(first["id"], 1): 1, (second["id"], 1): 1, (late["id"], 1): 1}
    [timeout_entry] = [
        entry
        for item in system.of_type(EventType.TASK_FAILED)
        for entry in item.data["tasks"]
        if entry["id"] == late["id"]
    ]
    assert (timeout_entry["state"], timeout_entry["error"]["code"]) == ("timed_out", "execution_timeout")
    [disabled] = system.of_type(EventType.AGENT_DISABLED)
    assert (disabled.data["agent"]["id"], disabled.data["previous"]) == (agent, "active")
    online = [item.data["agent"]["id"] for item in system.of_type(EventType.AGENT_ONLINE)]
    assert online == [agent]  # its first heartbeat after enrolling (it was offline since the enrolment)

    # Nothing extra: no type arrived more often than its causes, and every event the outbox wrote arrived.
    assert Counter(item.type for item in received) == Counter(
        {
            EventType.JOB_STARTED: 4,
            EventType.JOB_FINISHED: 4,
            EventType.JOB_ABORTED: 1,
            EventType.JOB_PAUSED: 1,
            EventType.AGENT_ONLINE: 1,
            EventType.AGENT_DISABLED: 1,
            EventType.TASK_FAILED: len(system.of_type(EventType.TASK_FAILED)),  # 1 to 3 requests (digests)
        }
    )
    written = Counter(Event.objects.values_list("type", flat=True))
    assert written == {**Counter(item.type for item in received), EventType.TASK_FAILED: 3}


def test_concurrent_final_failures_of_one_job_notify_each_task_once_and_finish_once(start_system: Any) -> None:
    tasks_in_job, threads = 20, 5
    system: System = start_system(**QUIET_FLEET)
    agent = "edge-many"
    system.enrol(agent, max_concurrency=tasks_in_job)
    job = system.submit(agent, mode="any", task_count=tasks_in_job)
    held = system.claim(agent, tasks_in_job)
    for task in held:
        system.report(agent, task, "accepted")

    # Every thread reports its share of failures at once, each request on its own connection.
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def report_share(share: list[dict[str, Any]]) -> None:
        try:
            barrier.wait(30)
            for task in share:
                system.fail(agent, task)
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    workers = [threading.Thread(target=report_share, args=(held[number::threads],)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors, errors
    assert system.job(job)["state"] == "failed"

    wait_for(lambda: len(failed_entries(system.received())) >= tasks_in_job, "every failed task", timeout=90)
    received = system.settle()
    assert failed_entries(received) == {(task["id"], task["attempt"]): 1 for task in held}
    assert by_job(received, EventType.JOB_FINISHED) == {(job, "failed"): 1}
    assert by_job(received, EventType.JOB_STARTED) == {(job, ""): 1}
    counts = Counter(item.type for item in received)
    assert counts - Counter({EventType.TASK_FAILED: counts[EventType.TASK_FAILED]}) == Counter(
        {EventType.JOB_STARTED: 1, EventType.JOB_FINISHED: 1, EventType.AGENT_ONLINE: 1}
    )
    assert Event.objects.filter(type=EventType.TASK_FAILED).count() == tasks_in_job
    failed_job = {item.data["job"]["id"] for item in received if item.type == EventType.TASK_FAILED}
    assert failed_job == {job}


def test_an_agent_that_misses_its_heartbeats_goes_offline_and_its_next_heartbeat_brings_it_back(
    start_system: Any,
) -> None:
    # The dispatcher's silence sweep: 5 missed heartbeats of 1 s take an agent offline.
    system: System = start_system(AGENT_HEARTBEAT_INTERVAL="1", AGENT_OFFLINE_AFTER_MISSED="5")
    agent = "edge-quiet"
    system.enrol(agent)
    wait_for(lambda: system.of_type(EventType.AGENT_OFFLINE), "the sweep to take the silent agent offline", timeout=90)

    # Heartbeats again, often enough that the sweep leaves it online until the dispatcher is stopped.
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            system.heartbeat(agent)
            stop.wait(0.3)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        wait_for(
            lambda: len(system.of_type(EventType.AGENT_ONLINE)) == 2, "agent.online after the heartbeat", timeout=60
        )
        dispatcher = system.roles.processes["dispatcher"]
        dispatcher.send_signal(signal.SIGTERM)
        assert dispatcher.wait(30) == 0
    finally:
        stop.set()
        beating.join(30)

    received = system.settle()
    assert Counter(item.type for item in received) == {EventType.AGENT_ONLINE: 2, EventType.AGENT_OFFLINE: 1}
    [offline] = system.of_type(EventType.AGENT_OFFLINE)
    assert (offline.data["agent"]["id"], offline.data["reason"]) == (agent, "heartbeat timeout")
    assert all(item.data["agent"]["id"] == agent for item in received)
    assert Counter(Event.objects.values_list("type", flat=True)) == {
        EventType.AGENT_OFFLINE: 1,
        EventType.AGENT_ONLINE: 2,
    }
