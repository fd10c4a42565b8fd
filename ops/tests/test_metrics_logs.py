"""/metrics, /metrics/system, /metrics/performance, the request id and slow_request log lines."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from aegis_site.core import counters
from aegis_site.logs import json_formatter, plain_formatter
from tasks import actions

pytestmark = pytest.mark.django_db


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text output."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))  # the exposition sorts them
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return None


def test_metrics_expose_requests_and_the_domain(make_agent, spec, operator):
    make_agent("m-1")
    make_agent("m-2", online=False)
    actions.submit_job(spec(mode="any", task_count=3), operator)
    Client().get("/healthz")
    text = Client().get("/metrics").content.decode()
    assert sample(text, "aegis_agents", connectivity="online", admin_state="active") == 1
    assert sample(text, "aegis_agents", connectivity="offline", admin_state="active") == 1
    assert sample(text, "aegis_queue_depth") == 3
    assert sample(text, "aegis_tasks", state="queued", kind="echo") == 3
    assert sample(text, "aegis_outbox_backlog") == 0
    assert sample(text, "aegis_disk_free_ratio") is not None
    assert "django_http_requests_total_by_method_total" in text
    assert "aegis_db_query_duration_seconds_bucket" in text
    families = {family.name for family in text_string_to_metric_families(text)}  # the exposition format parses
    assert {"aegis_agents", "aegis_tasks", "aegis_queue_depth"} <= families
    # Domain metrics follow the tasks: one claimed moves from queued to assigned.
    actions.claim_tasks("m-1", 1)
    moved = Client().get("/metrics").content.decode()
    assert sample(moved, "aegis_tasks", state="queued", kind="echo") == 2
    assert sample(moved, "aegis_tasks", state="assigned", kind="echo") == 1


def test_metrics_need_the_token_or_an_allowed_address(settings):
    settings.METRICS_TOKEN = "s3cret-for-tests"
    outsider = Client(REMOTE_ADDR="203.0.113.9")
    for path in ("/metrics", "/metrics/system", "/metrics/performance"):
        refused = outsider.get(path)
        assert refused.status_code == 403, path
        assert refused.json()["error"]["code"] == "permission_denied"
        assert outsider.get(path, HTTP_AUTHORIZATION="Bearer s3cret-for-tests").status_code == 200
        assert outsider.get(path, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    settings.METRICS_ALLOWED_NETWORKS = ["203.0.113.0/24"]
    assert outsider.get("/metrics/system").status_code == 200


def test_system_and_performance_are_json():
    for _ in range(3):
        Client().get("/healthz")
    system = Client().get("/metrics/system").json()
    assert {"cpu_percent", "memory", "disk", "process"} <= system.keys()
    assert system["process"]["uptime_s"] >= 0
    performance = Client().get("/metrics/performance").json()
    assert performance["http"]["requests"] >= 3
    assert performance["http"]["latency_ms"]["p50"] is not None
    assert performance["queue"]["tasks_finished_total"] == 0


def test_auth_failures_are_counted():
    before = counters.AUTH_FAILURES.labels("agent_token")._value.get()
    Client().get("/api/v1/agent/me/", HTTP_AUTHORIZATION="Bearer aeg_not-a-token")
    assert counters.AUTH_FAILURES.labels("agent_token")._value.get() == before + 1


@pytest.fixture
def json_log() -> Any:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


def test_every_line_of_a_request_carries_its_id_and_slow_requests_are_logged(settings, json_log):
    settings.SLOW_REQUEST_MS = 0.0001
    secret = "aeg_" + "x" * 43  # the shape of a real token: the log may show its first 8 characters only
    answer = Client().get("/api/v1/agent/me/", HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_REQUEST_ID="req-12345678")
    assert answer["X-Request-ID"] == "req-12345678"
    lines = json_log()
    auth = next(line for line in lines if line["event"] == "auth_failed")
    assert auth["request_id"] == "req-12345678"
    assert auth["client"] == "127.0.0.1"
    assert secret not in json.dumps(lines)  # never the secret
    assert auth["token_prefix"] == secret[:8]
    slow = next(line for line in lines if line["event"] == "slow_request")
    assert (slow["path"], slow["method"], slow["status"]) == ("/api/v1/agent/me/", "GET", 401)
    assert slow["request_id"] == "req-12345678"
    generated = Client().get("/healthz")["X-Request-ID"]
    assert len(generated) == 32


def test_transitions_are_logged_and_measured(make_agent, spec, operator, caplog):
    from tasks.engine.reports import Report

    make_agent("t-1")
    actions.submit_job(spec(target_agent_ids=["t-1"], max_attempts=2), operator)
    retries = counters.TASK_RETRIES._value.get()
    durations = counters.TASK_DURATION.labels("succeeded")._sum.get()
    (first,) = actions.claim_tasks("t-1", 1)
    actions.apply_reports("t-1", [Report("accepted", first.task_id, 1)])
    actions.apply_reports("t-1", [Report("failed", first.task_id, 1, error={"code": "x", "message": "y"})])
    assert counters.TASK_RETRIES._value.get() == retries + 1
    caplog.set_level(logging.INFO, logger="aegis.transitions")
    from tasks.models import Task

    Task.objects.filter(pk=first.task_id).update(not_before=first_seen_now())
    (second,) = actions.claim_tasks("t-1", 1)
    actions.apply_reports("t-1", [Report("accepted", second.task_id, 2), Report("succeeded", second.task_id, 2)])
    assert counters.TASK_DURATION.labels("succeeded")._sum.get() >= durations
    record = next(r for r in caplog.records if r.name == "aegis.transitions" and r.to_state == "succeeded")
    assert (record.task_id, record.agent_id, record.attempt, record.from_state) == (second.task_id, "t-1", 2, "running")
    assert record.job_id == Task.objects.get(pk=second.task_id).job_id


def first_seen_now() -> Any:
    from aegis_site.core import clock

    return clock.now()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_time_to_assignment_is_measured_on_the_claim_path(make_agent, spec, operator):
    make_agent("w-1")
    actions.submit_job(spec(target_agent_ids=["w-1"]), operator)
    before = counters.TIME_TO_ASSIGNMENT._sum.get(), sum(b.get() for b in counters.TIME_TO_ASSIGNMENT._buckets)
    assert len(actions.claim_for_agents(["w-1"], 5)["w-1"]) == 1
    after = sum(b.get() for b in counters.TIME_TO_ASSIGNMENT._buckets)
    assert after == before[1] + 1


def test_a_failed_login_is_an_auth_failed_event(json_log):
    from django.contrib.auth.models import User

    User.objects.create_user("ops", password="right-password-for-tests", is_staff=True)
    answer = Client().post(
        "/api/v1/auth/token/", {"username": "ops", "password": "wrong"}, content_type="application/json"
    )
    assert answer.status_code == 401
    Client().post("/admin/login/", {"username": "ops", "password": "wrong"})
    failures = [line for line in json_log() if line["event"] == "auth_failed"]
    assert [line["scheme"] for line in failures] == ["password", "password"]
    assert all(line["username"] == "ops" and line["client"] == "127.0.0.1" for line in failures)
    assert "wrong" not in json.dumps(failures)


def test_metrics_answer_when_data_dir_does_not_exist(settings, tmp_path, make_agent):
    # DATA_DIR pointed at a directory that was never created (a fresh host, a volume not mounted yet).
    settings.DATA_DIR = tmp_path / "never-created"
    make_agent("m-1")
    scrape = Client().get("/metrics")
    assert scrape.status_code == 200
    text = scrape.content.decode()
    assert sample(text, "aegis_agents", connectivity="online", admin_state="active") == 1
    assert sample(text, "aegis_disk_free_ratio") is None  # the one series that needs it is left out
    system = Client().get("/metrics/system")
    assert system.status_code == 200
    disk = system.json()["disk"]
    assert disk == {"path": str(settings.DATA_DIR), "error": "DATA_DIR cannot be read (does it exist?)"}
    assert system.json()["memory"]["total"] > 0


@pytest.fixture
def plain_log() -> Any:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(plain_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream.getvalue
    root.removeHandler(handler)


def test_a_username_with_a_newline_cannot_forge_a_plain_log_line(plain_log):
    forged = "2026-01-01T00:00:00.000000Z INFO aegis.api login_succeeded username=admin"
    Client().post("/admin/login/", {"username": f"nobody\n{forged}\u2028{forged}", "password": "wrong"})
    lines = plain_log().splitlines()
    failed = [line for line in lines if " auth_failed " in line]
    assert len(failed) == 1
    assert not any(line.startswith("2026-01-01T00:00:00") for line in lines)  # no line of its own
    assert "username=nobody\\n2026-01-01T00:00:00.000000Z INFO" in failed[0]  # shown, escaped


def test_a_plain_traceback_is_indented_under_its_record(plain_log):
    try:
        raise ValueError("bad input\n2026-01-01T00:00:00.000000Z INFO aegis.api forged")
    except ValueError:
        logging.getLogger("aegis.tests").exception("step failed")
    first, *rest = plain_log().splitlines()
    assert " ERROR aegis.tests step failed" in first
    assert rest
    assert all(line.startswith("    ") for line in rest)
