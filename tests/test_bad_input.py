"""The bad-input corpus (``tests/bad_input_corpus.py``) against the API, the admin and the bridge (issue 13, item 6).

Whatever comes in, the answer is never a 5xx and nothing hostile is stored: the
HTTP edge applies the MQTT protocol's rules (``broker.protocol``: size, depth,
no NUL or lone surrogates, strict JSON) and answers 400/413 in the API's error
shape; the admin answers a page; the bridge logs, counts and drops the message
and keeps working. The endpoints and parameters come from the OpenAPI schema and
the admin's own registry, so a new endpoint or filter is covered without editing
this file.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from broker.protocol import MAX_MESSAGE_BYTES, ProtocolError, parse_agent_message
from notify import actions as notify_actions
from notify.models import Subscription
from registry import actions as registry_actions
from registry.models import Agent, AgentCredential, EnrolmentToken
from tasks import actions
from tasks.engine.submit import JobSpec
from tasks.models import Job, Task, TaskEvent
from tests.bad_input_corpus import (
    BAD_CURSORS,
    BAD_ID_CURSORS,
    CURSORS,
    DOCUMENTS,
    QUERY_VALUES,
    SLOT,
    VALUES,
    Hostile,
    bodies,
    body_with,
)
from tests.support import broker_reachable, envelope, mqtt_dropped, wait_for

API = "/api/v1"
REFUSED = {400, 413}


# --- fixtures: one agent holding one task, an operator, a token of each kind ---------------


class World:
    def __init__(self) -> None:
        self.operator = User.objects.create_superuser("root-badin", password="x")  # nosec B106
        self.agent_id = f"bad-{uuid.uuid4().hex[:8]}"
        Agent.objects.create(pk=self.agent_id, max_concurrency=4, capabilities=["echo"])
        self.credential, self.token = registry_actions.issue_token(self.agent_id, Actor("tester"))
        self.enrolment, self.bootstrap = registry_actions.create_enrolment_token(Actor("tester"), uses=5)
        self.job, _ = actions.submit_job(JobSpec(kind="echo", target_agent_ids=[self.agent_id]), Actor("tester"))
        claimed = self.agent_client().post(f"{API}/agent/tasks/claim/", {"max_tasks": 1}, format="json")
        assert claimed.status_code == 200, claimed.content
        (assignment,) = claimed.json()["tasks"]
        self.task_id = assignment["id"]
        self.api_token_id = self.operator_client().post(f"{API}/me/tokens/", {"name": "t"}, format="json").json()["id"]
        hook = {"name": "hook", "url": "https://hooks.example.org/aegis", "events": ["job.finished"]}
        self.subscription_id = notify_actions.create_subscription(Actor("tester"), **hook).pk

    def agent_client(self) -> APIClient:
        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")
        return client

    def operator_client(self) -> APIClient:
        client = APIClient(raise_request_exception=False)
        client.force_authenticate(self.operator)
        return client

    def client_for(self, path: str) -> APIClient:
        if path.startswith(f"{API}/auth/") or path in (f"{API}/agent/enrol/", f"{API}/agent/token/refresh/"):
            return APIClient(raise_request_exception=False)
        return self.agent_client() if path.startswith(f"{API}/agent/") else self.operator_client()

    def fill(self, path: str) -> str:
        """A schema path with its parameters filled from this world."""
        ids = {
            "/agents/{id}/": self.agent_id,
            "/jobs/{id}/": self.job.pk,
            "/tasks/{id}/": self.task_id,
            "/enrolment-tokens/{id}/": self.enrolment.pk,
            "/me/tokens/{id}/": self.api_token_id,
            "/notifications/subscriptions/{id}/": self.subscription_id,
        }
        for prefix, value in ids.items():
            path = path.replace(prefix, prefix.replace("{id}", str(value)))
        return path.replace("{task_id}", str(self.task_id)).replace("{credential_id}", str(self.credential.pk))

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a write could change; equal before and after a refused request."""
        task = Task.objects.get(pk=self.task_id)
        agent = Agent.objects.get(pk=self.agent_id)
        return (
            AuditEvent.objects.count(),
            TaskEvent.objects.count(),
            Job.objects.count(),
            EnrolmentToken.objects.count(),
            AgentCredential.objects.count(),
            (task.state, task.progress, task.result, task.error),
            (agent.name, agent.labels, agent.admin_state, agent.transport),
            list(Subscription.objects.order_by("pk").values_list("pk", "name", "url", "events", "enabled", "secret")),
        )


@pytest.fixture
def world(db: Any) -> World:
    return World()


@pytest.fixture(autouse=True)
def _no_throttling() -> Iterator[None]:
    # The corpus sends hundreds of requests from one address: the throttles (counted in the cache) would answer
    # 429 before the body is read. Clearing the cache before each request keeps every request a first one.
    cache.clear()
    yield
    cache.clear()


def schema_operations() -> list[tuple[str, str, dict[str, Any]]]:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [(method.upper(), path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def template_for(path: str, operation: dict[str, Any]) -> dict[str, Any]:
    """A body for the endpoint with ``SLOT`` where a value goes: the agent's event gets the real attack."""
    if path.endswith("/events/"):
        return {"type": "succeeded", "attempt": 1, "event_id": "e1", "result": {"out": SLOT}}
    if path.endswith(f"{API}/jobs/") or path.endswith("/preview/"):
        return {"kind": "echo", "target_agent_ids": [], "payload": {"p": SLOT}}
    content = operation["requestBody"]["content"]["application/json"]["schema"]
    return {"name": SLOT, "data": SLOT} if "$ref" not in content else {"name": SLOT}


def assert_refused(answer: Any, what: str) -> None:
    assert answer.status_code in REFUSED, f"{what}: {answer.status_code} {answer.content[:300]!r}"
    error = answer.json()["error"]
    assert set(error) >= {"code", "message"}, f"{what}: {error}"


# --- the protocol itself --------------------------------------------------------------------


def mqtt_event(hostile: Hostile, task_id: int = 1) -> bytes:
    if isinstance(hostile.text, bytes):
        return hostile.text
    template = json.loads(envelope("task.succeeded", task_id=task_id, attempt=1, result={"out": "x"}))
    template["result"] = {"out": SLOT}
    return body_with(template, hostile)


@pytest.mark.parametrize("hostile", [*VALUES, *DOCUMENTS], ids=lambda hostile: hostile.name)
def test_the_protocol_refuses_every_case_with_its_code(hostile: Hostile) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_agent_message("aegis/agents/a-1/events", mqtt_event(hostile))
    assert refused.value.code == hostile.mqtt_code


# --- the API --------------------------------------------------------------------------------


def test_every_write_endpoint_refuses_every_case_and_stores_nothing(world: World) -> None:
    writes = [(method, path, op) for method, path, op in schema_operations() if "requestBody" in op]
    assert len(writes) >= 12, writes  # the schema lists the API's writes
    failures = []
    for method, path, operation in writes:
        url = world.fill(path)
        for hostile, body in bodies(template_for(path, operation)):
            if hostile.oversized and not path.startswith(f"{API}/agent/"):
                continue  # within an operator's body limit (API_MAX_BODY_BYTES); below, one byte over it
            cache.clear()
            before = world.snapshot()
            client = world.client_for(path)
            answer = client.generic(method, url, body, content_type="application/json")
            what = f"{method} {url} {hostile.name}"
            if answer.status_code not in REFUSED or "error" not in answer.json():
                failures.append(f"{what}: {answer.status_code} {answer.content[:200]!r}")
            elif world.snapshot() != before:
                failures.append(f"{what}: refused but something changed")
        over = b'{"name": "' + b"x" * django_settings.API_MAX_BODY_BYTES + b'"}'
        answer = world.client_for(path).generic(method, url, over, content_type="application/json")
        if answer.status_code != 413:
            failures.append(f"{method} {url} over API_MAX_BODY_BYTES: {answer.status_code}")
    assert not failures, "\n".join(failures)
    assert_pages_of_the_task_answer(world)


def assert_pages_of_the_task_answer(world: World) -> None:
    """The task's pages still render: nothing poisoned it (on SQLite a stored NUL used to break them)."""
    assert world.agent_client().get(f"{API}/agent/tasks/{world.task_id}/").status_code == 200
    assert world.operator_client().get(f"{API}/tasks/{world.task_id}/").status_code == 200
    browser = Client(raise_request_exception=False)
    browser.force_login(world.operator)
    assert browser.get(f"/admin/tasks/task/{world.task_id}/change/").status_code == 200


def test_an_agent_report_with_nul_or_a_lone_surrogate_is_a_400_and_the_task_is_untouched(world: World) -> None:
    """The attack of the issue, one by one, on the database the suite runs on (SQLite stored it, PostgreSQL 500)."""
    url = f"{API}/agent/tasks/{world.task_id}/events/"
    cases = {
        "result": {"type": "succeeded", "attempt": 1, "result": {"x": "\x00"}},
        "surrogate": {"type": "succeeded", "attempt": 1, "result": "\ud800"},
        "progress": {"type": "progress", "attempt": 1, "progress": {"k\x00": 1}},
        "error": {"type": "failed", "attempt": 1, "error": {"code": "x", "message": "a\x00b"}},
        "reason": {"type": "rejected", "attempt": 1, "reason": "no\x00"},
    }
    for name, event in cases.items():
        before = world.snapshot()
        body = json.dumps(event).encode()  # ensure_ascii: "\u0000" and "\ud800" escapes, as an agent sends them
        answer = world.agent_client().generic("POST", url, body, content_type="application/json")
        assert_refused(answer, name)
        assert answer.json()["error"]["code"] == "bad_string", name
        assert world.snapshot() == before, name
    assert_pages_of_the_task_answer(world)


def test_every_list_parameter_and_cursor_answers_without_a_5xx(world: World) -> None:
    lists = [
        (path, [p["name"] for p in op.get("parameters", []) if p["in"] == "query"])
        for method, path, op in schema_operations()
        if method == "GET"
    ]
    lists = [(path, names) for path, names in lists if names]
    assert len(lists) >= 6, lists
    failures = []
    for path, names in lists:
        url = world.fill(path)
        client = world.client_for(path)
        for name in names:
            values = CURSORS if name == "cursor" else QUERY_VALUES
            for value in values:
                cache.clear()
                answer = client.get(f"{url}?{name}={quote(value)}")
                if answer.status_code >= 500 or (answer.status_code >= 400 and "error" not in answer.json()):
                    failures.append(f"GET {url}?{name}={value[:20]!r}: {answer.status_code} {answer.content[:200]!r}")
    assert not failures, "\n".join(failures)


def test_a_hand_made_cursor_is_a_400_in_the_error_shape(world: World) -> None:
    lists = {f"{API}/tasks/": (*BAD_CURSORS, *BAD_ID_CURSORS), f"{API}/agents/": BAD_CURSORS}
    for path, cursors in lists.items():
        for cursor in cursors:
            answer = world.operator_client().get(f"{path}?cursor={quote(cursor)}")
            assert answer.status_code == 400, (path, cursor, answer.status_code, answer.content[:200])
            assert "cursor" in answer.json()["error"]["fields"]


# --- the admin ------------------------------------------------------------------------------


def changelist_parameters(user: User) -> list[tuple[str, list[str]]]:
    """Every registered changelist with the query parameters its filters, search, ordering and paging read."""
    factory = RequestFactory()
    found = []
    for model, model_admin in admin.site._registry.items():
        request = factory.get("/")
        request.user = user
        changelist = model_admin.get_changelist_instance(request)
        names = {"q", "o", "p", "e", "_facets", "all"}
        for spec in changelist.filter_specs:
            names.update(spec.expected_parameters())
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        found.append((url, sorted(name for name in names if name)))
    return found


def test_every_admin_changelist_filter_and_change_page_answers_without_a_5xx(world: World) -> None:
    browser = Client(raise_request_exception=False)
    browser.force_login(world.operator)
    changelists = changelist_parameters(world.operator)
    assert len(changelists) >= 6, changelists
    failures = []
    for url, names in changelists:
        for name in names:
            for value in QUERY_VALUES:
                answer = browser.get(f"{url}?{name}={quote(value)}")
                if answer.status_code >= 500:
                    failures.append(f"GET {url}?{name}={value[:20]!r}: {answer.status_code}")
        for object_id in ("\x00", "9" * 30, "abc", "-1", "a" * 5000):
            answer = browser.get(f"{url}{quote(object_id)}/change/")
            if answer.status_code >= 500:
                failures.append(f"GET {url}{object_id[:20]!r}/change/: {answer.status_code}")
    assert not failures, "\n".join(failures)


def test_the_admin_job_form_and_agent_edit_refuse_hostile_json_and_text(world: World) -> None:
    browser = Client(raise_request_exception=False)
    browser.force_login(world.operator)
    jobs_before = Job.objects.count()
    for hostile in [*VALUES, *DOCUMENTS]:
        text = hostile.text.decode("utf-8", "replace") if isinstance(hostile.text, bytes) else hostile.text
        payload = text if isinstance(hostile.text, bytes) else '{"p": ' + text + "}"
        form = {"kind": "echo", "mode": "each", "payload": payload, "target_agent_ids": world.agent_id}
        for button in ("_preview", "_launch"):
            answer = browser.post("/admin/tasks/job/add/", {**form, button: "1"})
            assert answer.status_code == 200, (hostile.name, button, answer.status_code)
            assert b"errorlist" in answer.content, (hostile.name, button)
    assert Job.objects.count() == jobs_before
    before = world.snapshot()
    for name, labels in (("a\x00b", ""), ("ok", "zone=eu\x00"), ("ok", "k\x00=v")):
        answer = browser.post(f"/admin/registry/agent/{world.agent_id}/edit/", {"name": name, "labels": labels})
        assert answer.status_code < 500, (name, labels, answer.status_code)
    assert world.snapshot() == before


# --- item 7: an agent's report is capped like an MQTT message --------------------------------


def test_an_http_report_over_the_protocols_message_size_is_a_413_and_stores_nothing(world: World) -> None:
    url = f"{API}/agent/tasks/{world.task_id}/events/"
    big = {"type": "succeeded", "attempt": 1, "result": "x" * MAX_MESSAGE_BYTES}
    before = world.snapshot()
    answer = world.agent_client().post(url, big, format="json")
    assert answer.status_code == 413, answer.content[:200]
    assert answer.json()["error"]["code"] == "too_large"
    assert world.snapshot() == before
    for field, event in {
        "error.message": {"type": "failed", "attempt": 1, "error": {"code": "x", "message": "m" * 10_001}},
        "error.code": {"type": "failed", "attempt": 1, "error": {"code": "c" * 101, "message": "m"}},
    }.items():
        answer = world.agent_client().post(url, event, format="json")
        assert answer.status_code == 400, (field, answer.content[:200])
    assert world.snapshot() == before
    fits = {"type": "succeeded", "attempt": 1, "result": "x" * (MAX_MESSAGE_BYTES - 1024)}
    assert world.agent_client().post(url, fits, format="json").json()["status"] == "applied"


# --- the bridge: the same corpus through Mosquitto ------------------------------------------


@pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883")
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_the_bridge_logs_counts_and_drops_every_case_applies_nothing_and_keeps_working(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from broker.bridge import Bridge
    from tasks.dispatcher import Dispatcher
    from tests.test_bridge import FakeAgent

    settings.MQTT_SHARE_GROUP = f"bad{uuid.uuid4().hex[:8]}"  # other bridges on this broker don't take our messages
    settings.BRIDGE_OUTBOX_POLL_INTERVAL = 0.05
    bridge = Bridge("mqtt://127.0.0.1:1883", client_id=f"bridge-{uuid.uuid4().hex[:8]}")
    bridge.start()
    agent = FakeAgent(f"t-{uuid.uuid4().hex[:10]}")
    try:
        assert bridge.connected.wait(10), "bridge did not connect"
        assert bridge.subscribed.wait(10), "bridge did not subscribe"  # before it, a hello reaches no one
        agent.hello()
        wait_for(lambda: Agent.objects.filter(pk=agent.id).exists(), what="hello")
        job, _ = actions.submit_job(JobSpec(kind="echo", target_agent_ids=[agent.id]), Actor("tester"))
        Dispatcher().assign()
        task_id = agent.next_message()["task"]["id"]
        events_before = TaskEvent.objects.filter(task_id=task_id).count()
        before = mqtt_dropped()
        bridge_log = logging.getLogger("aegis.bridge")
        bridge_log.addHandler(caplog.handler)  # the project's logging config does not propagate "aegis.*" to root
        corpus = [*VALUES, *DOCUMENTS]
        for hostile in corpus:
            agent.send("events", mqtt_event(hostile, task_id))
        expected: dict[str, int] = {}
        for hostile in corpus:
            expected[hostile.mqtt_code] = expected.get(hostile.mqtt_code, 0) + 1

        def counted() -> bool:
            delta = mqtt_dropped() - before
            return all(delta[code] >= count for code, count in expected.items())

        wait_for(counted, what=f"drops counted: {expected}", timeout=30)
        logged = [r for r in caplog.records if r.getMessage() == "mqtt message dropped"]
        assert {getattr(r, "reason", None) for r in logged} >= set(expected)
        assert Task.objects.get(pk=task_id).state == "assigned"
        assert TaskEvent.objects.filter(task_id=task_id).count() == events_before
        assert bridge.is_alive() if hasattr(bridge, "is_alive") else bridge.connected.is_set()
        # Alive: a normal result after the garbage is applied.
        agent.send("events", envelope("task.succeeded", task_id=task_id, attempt=1, result={"ok": True}))
        wait_for(lambda: Job.objects.get(pk=job.pk).state == "succeeded", what="job succeeded after the corpus")
    finally:
        logging.getLogger("aegis.bridge").removeHandler(caplog.handler)
        agent.close()
        bridge.shutdown()
