"""The agent side of the HTTP API: enrolment, me, heartbeat, claim, events; isolation between agents."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from aegis_site.core.audit import Actor
from registry import actions as registry_actions
from registry.models import AdminState, Agent, AgentCredential, Connectivity
from tasks import actions
from tasks.models import Task, TaskEvent

pytestmark = pytest.mark.django_db


def agent_client(agent_id: str, **fields: Any) -> tuple[APIClient, str]:
    if not Agent.objects.filter(pk=agent_id).exists():
        Agent.objects.create(pk=agent_id, max_concurrency=fields.pop("max_concurrency", 4), **fields)
    _credential, token = registry_actions.issue_token(agent_id, Actor("tester"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client, token


def claim_one(client: APIClient) -> dict[str, Any]:
    answer = client.post("/api/v1/agent/tasks/claim/", {"max_tasks": 1}, format="json")
    assert answer.status_code == 200, answer.content
    (task,) = answer.json()["tasks"]
    return task


def test_an_agent_using_only_http_enrols_claims_and_completes_a_task(spec, operator):
    _enrolment, bootstrap = registry_actions.create_enrolment_token(
        operator, fixed_labels={"site": "lab"}, allowed_capabilities=["echo"]
    )
    anonymous = APIClient()
    enrolled = anonymous.post(
        "/api/v1/agent/enrol/",
        {"enrolment_token": bootstrap, "agent_id": "http-1", "capabilities": ["echo"], "max_concurrency": 2},
        format="json",
    )
    assert enrolled.status_code == 201, enrolled.content
    token = enrolled.json()["token"]
    assert token.startswith("aeg_")
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    me = agent.get("/api/v1/agent/me/").json()
    assert (me["id"], me["labels"], me["capabilities"]) == ("http-1", {"site": "lab"}, ["echo"])
    assert agent.post("/api/v1/agent/heartbeat/", {}, format="json").json()["admin_state"] == "active"
    assert Agent.objects.get(pk="http-1").connectivity == Connectivity.ONLINE

    job, _ = actions.submit_job(spec(target_agent_ids=["http-1"], payload={"say": "hi"}), operator)
    task = claim_one(agent)
    assert (task["job_id"], task["payload"], task["attempt"]) == (job.pk, {"say": "hi"}, 1)
    url = f"/api/v1/agent/tasks/{task['id']}/events/"
    assert agent.post(url, {"type": "accepted", "attempt": 1, "event_id": "e1"}, format="json").json() == {
        "status": "applied",
        "state": "running",
    }
    done = agent.post(url, {"type": "succeeded", "attempt": 1, "event_id": "e2", "result": {"ok": 1}}, format="json")
    assert done.json() == {"status": "applied", "state": "succeeded"}
    again = agent.post(url, {"type": "succeeded", "attempt": 1, "event_id": "e2", "result": {"ok": 1}}, format="json")
    assert again.json()["status"] == "duplicate"  # a retried POST counts once
    job.refresh_from_db()
    assert (job.state, job.tasks_succeeded) == ("succeeded", 1)
    assert Task.objects.get(pk=task["id"]).result == {"ok": 1}


def test_enrolment_refuses_a_bad_token_a_used_one_and_an_existing_agent(operator):
    _e, single = registry_actions.create_enrolment_token(operator, uses=1)
    client = APIClient()
    body = {"enrolment_token": single, "agent_id": "e-1"}
    assert client.post("/api/v1/agent/enrol/", body, format="json").status_code == 201
    used = client.post("/api/v1/agent/enrol/", {**body, "agent_id": "e-2"}, format="json")
    assert used.status_code == 403
    assert used.json()["error"]["code"] == "enrolment_refused"
    wrong = client.post("/api/v1/agent/enrol/", {"enrolment_token": "aen_nope", "agent_id": "e-3"}, format="json")
    assert wrong.status_code == 403
    _e, unbound = registry_actions.create_enrolment_token(operator, uses=5)
    taken = client.post("/api/v1/agent/enrol/", {"enrolment_token": unbound, "agent_id": "e-1"}, format="json")
    assert taken.status_code == 403
    assert taken.json()["error"]["code"] == "agent_exists"
    assert not Agent.objects.filter(pk__in=["e-2", "e-3"]).exists()


def test_a_bound_enrolment_token_claims_the_agent_and_revokes_its_old_tokens(operator):
    old_client, _old_token = agent_client("claimed")
    _e, bound = registry_actions.create_enrolment_token(operator, agent_id="claimed")
    answer = APIClient().post("/api/v1/agent/enrol/", {"enrolment_token": bound, "agent_id": "claimed"}, format="json")
    assert answer.status_code == 201
    assert old_client.get("/api/v1/agent/me/").status_code == 401
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {answer.json()['token']}")
    assert fresh.get("/api/v1/agent/me/").status_code == 200


def test_enrol_validates_its_body():
    answer = APIClient().post("/api/v1/agent/enrol/", {"agent_id": "Not Valid!"}, format="json")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid"
    assert set(error["fields"]) == {"enrolment_token", "agent_id"}


def test_isolation_agent_a_gets_404_for_every_endpoint_with_b_s_task_and_nothing_changes(spec, operator):
    a, _ = agent_client("iso-a")
    b, _ = agent_client("iso-b")
    actions.submit_job(spec(target_agent_ids=["iso-b"]), operator)
    b_task = claim_one(b)
    before = list(Task.objects.values_list("id", "state", "attempt", "agent_id", "result"))
    events_before = TaskEvent.objects.count()
    task_id = b_task["id"]
    assert a.get(f"/api/v1/agent/tasks/{task_id}/").status_code == 404
    for body in (
        {"type": "accepted", "attempt": 1},
        {"type": "progress", "attempt": 1, "progress": {"pct": 50}},
        {"type": "succeeded", "attempt": 1, "result": {"stolen": True}},
        {"type": "failed", "attempt": 1, "error": {"code": "x", "message": "y"}},
        {"type": "rejected", "attempt": 1, "reason": "no"},
    ):
        answer = a.post(f"/api/v1/agent/tasks/{task_id}/events/", body, format="json")
        assert answer.status_code == 404, (body, answer.content)
        assert answer.json()["error"]["code"] == "not_found"
    assert all(task["id"] != task_id for task in a.get("/api/v1/agent/tasks/").json())
    assert a.post("/api/v1/agent/tasks/claim/", {"max_tasks": 10}, format="json").json() == {"tasks": []}
    assert list(Task.objects.values_list("id", "state", "attempt", "agent_id", "result")) == before
    assert TaskEvent.objects.count() == events_before
    # Operator endpoints are closed to agents.
    assert a.get("/api/v1/agents/").status_code == 403
    assert a.get("/api/v1/agents/iso-b/").status_code == 403


def test_a_late_result_for_an_old_attempt_answers_409_and_changes_nothing(spec, operator, frozen_clock):
    client, _ = agent_client("late")
    actions.submit_job(spec(target_agent_ids=["late"]), operator)
    task = claim_one(client)
    failed = {"type": "failed", "attempt": 1, "error": {"code": "boom", "message": "m"}, "retryable": True}
    assert client.post(f"/api/v1/agent/tasks/{task['id']}/events/", failed, format="json").json()["state"] == "queued"
    frozen_clock.advance(1000)  # past the retry backoff
    second = claim_one(client)
    assert second["attempt"] == 2
    stale = client.post(
        f"/api/v1/agent/tasks/{task['id']}/events/", {"type": "succeeded", "attempt": 1, "result": {}}, format="json"
    )
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "stale"
    assert Task.objects.get(pk=task["id"]).state == "assigned"


def test_a_revoked_or_unknown_token_answers_401_with_the_json_error(caplog):
    client, token = agent_client("revoked")
    credential = AgentCredential.objects.get(agent_id="revoked")
    registry_actions.revoke_credential(credential.pk, Actor("tester"))
    answer = client.get("/api/v1/agent/me/")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] in {"authentication_failed", "not_authenticated"}
    assert "auth_failed" in caplog.text
    assert token not in caplog.text  # the secret never reaches the log
    assert APIClient().get("/api/v1/agent/me/").status_code == 401


def test_a_disabled_agent_cannot_authenticate():
    client, _ = agent_client("off")
    registry_actions.set_admin_state("off", AdminState.DISABLED, Actor("tester"))
    assert client.get("/api/v1/agent/me/").status_code == 401


def test_claim_long_polls_until_work_arrives_or_the_wait_ends(settings):
    client, _ = agent_client("poller")
    answer = client.post("/api/v1/agent/tasks/claim/", {"max_tasks": 5, "wait_s": 0.3}, format="json")
    assert answer.json() == {"tasks": []}
    settings.API_CLAIM_MAX_WAIT = 1
    too_long = client.post("/api/v1/agent/tasks/claim/", {"wait_s": 5}, format="json")
    assert too_long.status_code == 400
    assert "wait_s" in too_long.json()["error"]["fields"]


def test_an_agent_jwt_works_until_its_token_is_rotated():
    client, _ = agent_client("jwt-agent")
    pair = client.post("/api/v1/agent/token/")
    assert pair.status_code == 201
    jwt_client = APIClient()
    jwt_client.credentials(HTTP_AUTHORIZATION=f"Bearer {pair.json()['access']}")
    assert jwt_client.get("/api/v1/agent/me/").json()["id"] == "jwt-agent"
    refreshed = APIClient().post("/api/v1/agent/token/refresh/", {"refresh": pair.json()["refresh"]}, format="json")
    assert refreshed.status_code == 200
    registry_actions.rotate_token("jwt-agent", Actor("tester"))
    assert jwt_client.get("/api/v1/agent/me/").status_code == 401  # revoked with the credential it came from
    assert client.get("/api/v1/agent/me/").status_code == 401


def test_event_bodies_are_validated():
    client, _ = agent_client("validator")
    url = "/api/v1/agent/tasks/1/events/"
    assert client.post(url, {"type": "exploded", "attempt": 1}, format="json").status_code == 400
    assert client.post(url, {"type": "failed", "attempt": 1}, format="json").status_code == 400
    assert client.post(url, {"type": "progress", "attempt": 0}, format="json").status_code == 400
    bad_id = client.post(url, {"type": "accepted", "attempt": 1, "event_id": "x" * 33}, format="json")
    assert bad_id.status_code == 400


def test_oversized_and_non_json_bodies_get_413_and_400_or_415(settings):
    settings.API_MAX_BODY_BYTES = 1000
    client, _ = agent_client("big")
    big = client.post("/api/v1/agent/heartbeat/", {"running": [], "pad": "x" * 2000}, format="json")
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "too_large"
    broken = client.post("/api/v1/agent/heartbeat/", "{nope", content_type="application/json")
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "parse_error"
    form = client.post("/api/v1/agent/heartbeat/", "a=b", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415


def test_enrolment_is_throttled_and_logged(monkeypatch, caplog):
    from django.core.cache import cache
    from rest_framework.throttling import SimpleRateThrottle

    cache.clear()
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {**SimpleRateThrottle.THROTTLE_RATES, "enrol": "2/min"})
    try:
        client = APIClient()
        codes = [
            client.post(
                "/api/v1/agent/enrol/", {"enrolment_token": "aen_x", "agent_id": "t"}, format="json"
            ).status_code
            for _ in range(3)
        ]
        assert codes == [403, 403, 429]
        assert "rate_limit" in caplog.text
    finally:
        cache.clear()


def test_unknown_api_paths_answer_json_404():
    answer = APIClient().get("/api/v1/nothing-here/")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
