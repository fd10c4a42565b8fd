"""docs/api.md's curl session, over real HTTP, while a dispatcher and a bridge run (issue 12, item 5).

An agent that enrols, heartbeats and claims over HTTP must get its work from
``claim``: the dispatcher may not assign its tasks and push them to an MQTT
inbox nobody reads. An MQTT agent next to it still gets its work pushed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_site.core.audit import Actor
from aegis_site.core.models import RoleHeartbeat
from broker.models import OutboxMessage
from registry import actions as registry_actions
from registry.models import Agent
from tasks import actions as task_actions
from tasks.engine.submit import JobSpec
from tasks.models import Job, JobState, Task
from tests.roles import Roles, request
from tests.support import broker_reachable, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883"),
    pytest.mark.timeout(240),
]

API = "/api/v1"


@pytest.fixture
def roles(transactional_db: Any, tmp_path: Path) -> Iterator[Roles]:
    running = Roles(tmp_path)
    try:
        running.bridge()
        running.dispatcher()
        running.web()
        wait_for(
            lambda: (
                running.alive("bridge")
                and running.alive("dispatcher")
                and {"bridge", "dispatcher"} <= set(RoleHeartbeat.objects.values_list("role", flat=True))
            ),
            "the bridge and the dispatcher to report",
            timeout=60,
            interval=0.2,
        )
        yield running
    finally:
        running.stop()


def test_an_agent_following_the_documented_curl_session_gets_all_its_tasks_by_claim(roles: Roles) -> None:
    from tests.test_bridge import FakeAgent  # an MQTT agent next to it: it must still get its work pushed

    web = roles.web_url
    operator = Actor("tester")
    _enrolment, bootstrap = registry_actions.create_enrolment_token(
        operator, name="edge-7", allowed_capabilities=["echo"]
    )

    # The session of docs/api.md, "An agent, with curl".
    status, enrolled = request(
        web,
        "POST",
        f"{API}/agent/enrol/",
        {"enrolment_token": bootstrap, "agent_id": "edge-7", "capabilities": ["echo"], "max_concurrency": 2},
    )
    assert status == 201, enrolled
    token = enrolled["token"]
    status, me = request(web, "GET", f"{API}/agent/me/", token=token)
    assert (status, me["id"]) == (200, "edge-7"), me
    status, beat = request(web, "POST", f"{API}/agent/heartbeat/", {}, token=token)
    assert (status, beat["admin_state"]) == (200, "active"), beat

    mqtt_agent = FakeAgent(f"t-{uuid.uuid4().hex[:10]}")
    try:
        mqtt_agent.hello()
        wait_for(lambda: Agent.objects.filter(pk=mqtt_agent.id, connectivity="online").exists(), "the MQTT hello")

        # Six tasks for edge-7 (two jobs pinned to it, an ``any`` job of four it is the only target of), one for
        # the MQTT agent. The dispatcher is woken by the submissions; it must leave edge-7's tasks alone.
        jobs = [
            task_actions.submit_job(JobSpec(kind="echo", payload={"say": "hi"}, target_agent_ids=["edge-7"]), operator)[
                0
            ]
            for _ in range(2)
        ]
        jobs += [
            task_actions.submit_job(
                JobSpec(kind="echo", payload={"say": "hi"}, target_agent_ids=["edge-7"], mode="any", task_count=4),
                operator,
            )[0]
        ]
        pushed, _ = task_actions.submit_job(JobSpec(kind="echo", target_agent_ids=[mqtt_agent.id]), operator)

        assign = next_assignment(mqtt_agent)
        assert assign["task"]["job_id"] == pushed.pk

        done: list[int] = []
        while len(done) < 6:
            # Wait up to 20 s for up to 5 tasks (edge-7 holds at most 2 at a time: max_concurrency).
            status, answer = request(
                web, "POST", f"{API}/agent/tasks/claim/", {"max_tasks": 5, "wait_s": 20}, token=token, timeout=60
            )
            assert status == 200, answer
            held = {
                task.pk: (task.state, task.agent_id) for task in Task.objects.filter(job__in=jobs).exclude(pk__in=done)
            }
            assert answer["tasks"], f"claim returned no task; {6 - len(done)} not done yet: {held}"
            for task in answer["tasks"]:
                report(web, token, task["id"], {"type": "accepted", "attempt": task["attempt"]})
                succeeded = {"type": "succeeded", "attempt": task["attempt"], "result": {"said": "hi"}}
                assert report(web, token, task["id"], succeeded) == "succeeded"
                done.append(task["id"])

        assert sorted(done) == sorted(Task.objects.filter(job__in=jobs).values_list("pk", flat=True))
        assert set(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list("state", flat=True)) == {
            JobState.SUCCEEDED
        }
        # Nothing was ever pushed to edge-7's MQTT inbox.
        assert not OutboxMessage.objects.filter(agent_id="edge-7", message_type="task.assign").exists()
        assert request(web, "GET", f"{API}/agent/me/", token=token)[1]["transport"] == "http"
    finally:
        mqtt_agent.close()


def next_assignment(agent: Any) -> dict[str, Any]:
    while True:
        message = agent.next_message(timeout=30)
        if message["type"] == "task.assign":
            return dict(message)


def report(web: str, token: str, task_id: int, event: dict[str, Any]) -> str:
    event_id = f"{task_id}-{event['attempt']}-{event['type']}"
    status, answer = request(
        web, "POST", f"{API}/agent/tasks/{task_id}/events/", {**event, "event_id": event_id}, token=token
    )
    assert (status, answer["status"]) == (200, "applied"), answer
    return str(answer["state"])
