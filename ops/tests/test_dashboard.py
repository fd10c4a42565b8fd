"""The fleet dashboard (admin index): right numbers from a seeded fleet, bounded queries, staff only."""

from __future__ import annotations

import html
import re
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aegis_site.core import roles
from aegis_site.core.audit import Actor
from ops.dashboard import fleet
from registry import actions as registry_actions
from registry.models import AdminState
from tasks import actions as task_actions
from tasks.engine.reports import Report
from tasks.models import Task, TaskState
from tests.support import staff_user

pytestmark = pytest.mark.django_db

ERROR = {"code": "E", "message": "boom"}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def send(agent_id: str, kind: str, task_id: int, attempt: int, **fields: Any) -> None:
    task_actions.report(agent_id, Report(kind, task_id, attempt, message_id=uuid.uuid4().hex, **fields))


def finish(agent_id: str, how: str, count: int) -> list[int]:
    """Claim ``count`` tasks for the agent and end each one ``how`` (succeeded, failed, or running)."""
    done = []
    for assignment in task_actions.claim_tasks(agent_id, count):
        send(agent_id, "accepted", assignment.task_id, assignment.attempt)
        if how == "succeeded":
            send(agent_id, "succeeded", assignment.task_id, assignment.attempt, result={})
        elif how == "failed":
            send(agent_id, "failed", assignment.task_id, assignment.attempt, error=ERROR, retryable=False)
        done.append(assignment.task_id)
    return done


def submit(spec: Any, operator: Actor, clock: Any, **fields: Any) -> Any:
    """Submit through the action; ``created_at`` (auto_now_add, the wall clock) is set to the test's clock."""
    job, _ = task_actions.submit_job(spec(**fields), operator)
    Task.objects.filter(job=job).update(created_at=clock())
    return job


def tiles(page: str) -> dict[str, str]:
    """``data-count`` tile name -> the number it shows."""
    return {
        name: html.unescape(value).strip()
        for name, value in re.findall(r'data-count="([\w-]+)"><span class="n">([^<]*)</span>', page)
    }


def section(page: str, element_id: str) -> str:
    match = re.search(rf'<section id="{element_id}"[^>]*>(.*?)</section>', page, re.S)
    assert match, f"no section {element_id}"
    return match.group(0)


@pytest.fixture
def seeded(make_agent, spec, frozen_clock, operator):
    """4 online agents (one draining), 2 offline (one disabled); 2 succeeded, 1 failed, 1 running, 3 queued."""
    for agent_id in ("node-1", "node-2", "node-3", "node-4"):
        make_agent(agent_id)
    make_agent("node-5", online=False)
    make_agent("node-6", online=False)
    registry_actions.set_admin_state("node-4", AdminState.DRAINING, operator)
    registry_actions.set_admin_state("node-6", AdminState.DISABLED, operator)

    job = submit(spec, operator, frozen_clock, mode="any", task_count=6, max_attempts=1)
    frozen_clock.advance(90)
    urgent = submit(spec, operator, frozen_clock, mode="any", task_count=1, priority=5)
    finish("node-1", "succeeded", 1)  # the priority-5 task goes first
    frozen_clock.advance(60)
    finish("node-1", "succeeded", 1)
    finish("node-2", "failed", 1)
    finish("node-3", "running", 1)
    roles.record_role_heartbeat("bridge", "host:1", frozen_clock())
    return job, urgent


def test_dashboard_shows_the_fleet_numbers(admin_client, seeded):
    job, urgent = seeded

    page = admin_client.get(reverse("admin:index")).content.decode()

    shown = tiles(page)
    assert (shown["online"], shown["offline"], shown["draining"], shown["disabled"]) == ("4", "2", "1", "1")
    assert shown["dispatchable"] == "3"
    assert (shown["queued"], shown["assigned"], shown["running"]) == ("3", "0", "1")
    assert shown["oldest"] == "2 min"  # created 150 s ago, before the newer urgent job
    assert (shown["succeeded"], shown["failed"], shown["canceled"]) == ("2", "1", "0")
    assert shown["failure-rate"] == "33.3%"
    jobs = section(page, "dash-jobs")
    assert f'data-job="{job.pk}"' in jobs
    assert "2 / 6" in jobs
    assert f'data-job="{urgent.pk}"' not in jobs  # finished: no longer open
    audit = section(page, "dash-audit")
    assert "job.submit" in audit
    assert "agent.drain" in audit
    assert reverse("admin:tasks_job_change", args=[job.pk]) in audit
    health = section(page, "dash-health")
    assert re.search(r'class="good" data-role="bridge"', health)
    assert re.search(r'class="bad" data-role="dispatcher"', health)
    assert "never reported" in health
    assert re.search(r'class="good" data-role="broker"', health)


def test_dashboard_chart_draws_each_minute_by_outcome(admin_client, seeded):
    chart = section(admin_client.get(reverse("admin:index")).content.decode(), "dash-throughput")

    bars = re.findall(r"<g><title>([^<]*)</title>(.*?)</g>", chart, re.S)
    assert len(bars) == fleet.WINDOW_MINUTES
    assert "2 succeeded" not in chart  # the two successes finished in different minutes
    assert "1 succeeded, 0 failed" in bars[-2][0]
    assert 'class="seg-succeeded"' in bars[-2][1]
    assert "1 succeeded, 1 failed" in bars[-1][0]
    assert 'class="seg-failed"' in bars[-1][1]
    assert all("<rect" not in drawn for _, drawn in bars[:-2])


def test_every_section_is_a_live_region(admin_client, seeded):
    page = admin_client.get(reverse("admin:index")).content.decode()

    for element_id in ("dash-agents", "dash-queue", "dash-throughput", "dash-jobs", "dash-audit", "dash-health"):
        assert re.search(rf'id="{element_id}"[^>]* data-live="[a-z ]+"', page), element_id
    assert 'id="live-status"' in page
    assert "aegis/live.js" in page
    assert '<script src="http' not in page
    assert "cdn" not in page.lower()
    assert reverse("admin:registry_agent_changelist") in page  # the app list stays, in the side column


def test_queue_depth_stops_counting_at_the_cap(admin_client, monkeypatch, make_agent, spec, frozen_clock, operator):
    monkeypatch.setattr(fleet, "QUEUE_CAP", 3)
    task_actions.submit_job(spec(mode="any", task_count=5), operator)

    assert tiles(admin_client.get(reverse("admin:index")).content.decode())["queued"] == "3+"


def test_throughput_reads_at_most_the_cap_of_finished_tasks(monkeypatch, make_agent, spec, frozen_clock, operator):
    make_agent("node-1")
    task_actions.submit_job(spec(mode="any", task_count=3), operator)
    for _ in range(3):
        finish("node-1", "succeeded", 1)
        frozen_clock.advance(60)
    monkeypatch.setattr(fleet, "THROUGHPUT_CAP", 2)

    counted = fleet.throughput(frozen_clock())

    assert counted.capped
    assert counted.succeeded == 2
    assert counted.counted_since == Task.objects.order_by("-finished_at").values_list("finished_at")[1][0]


def test_oldest_queued_task_is_found_across_priorities(make_agent, spec, frozen_clock, operator):
    submit(spec, operator, frozen_clock, mode="any", task_count=1, priority=1)
    oldest_at = frozen_clock()
    for priority in (9, -3, 4):
        frozen_clock.advance(10)
        submit(spec, operator, frozen_clock, mode="any", task_count=2, priority=priority)

    assert fleet.oldest_queued_at() == oldest_at
    assert fleet.queue_state(frozen_clock()).oldest_age_s == 30


def dashboard_queries(admin_client) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert admin_client.get(reverse("admin:index")).status_code == 200
    return len(captured.captured_queries)


def grow_fleet(start: int, count: int, make_agent, spec, operator) -> None:
    for n in range(start, start + count):
        make_agent(f"grow-{n}")
    task_actions.submit_job(spec(mode="any", task_count=count, max_attempts=1), operator)
    for n in range(start, start + count // 3):
        finish(f"grow-{n}", "succeeded", 1)
        finish(f"grow-{n}", "failed", 1)
    registry_actions.set_admin_state(f"grow-{start}", AdminState.DRAINING, operator)


def test_dashboard_queries_do_not_grow_with_the_fleet(admin_client, make_agent, spec, frozen_clock, operator):
    grow_fleet(0, 3, make_agent, spec, operator)
    few = dashboard_queries(admin_client)

    grow_fleet(3, 30, make_agent, spec, operator)
    many = dashboard_queries(admin_client)

    assert Task.objects.filter(state=TaskState.QUEUED).count() > 10
    assert many == few
    assert many <= 25


def test_dashboard_renders_for_an_empty_installation(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()

    assert tiles(page)["queued"] == "0"
    assert "No job is running." in page


def test_user_who_is_not_staff_is_sent_to_the_login_page(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("visitor", password="pw-visitor-1"))

    response = client.get(reverse("admin:index"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_anonymous_user_is_sent_to_the_login_page_and_gets_no_live_script(client):
    response = client.get(reverse("admin:index"))
    login = client.get(response["Location"]).content.decode()

    assert response.status_code == 302
    assert "live.js" not in login
    assert 'id="live-status"' not in login


def test_staff_without_view_permissions_gets_no_fleet_numbers(client, django_user_model, seeded):
    client.force_login(django_user_model.objects.create_user("watcher", password="pw-watcher-1", is_staff=True))

    page = client.get(reverse("admin:index")).content.decode()

    assert 'id="dash-forbidden"' in page
    assert 'id="dash-agents"' not in page
    assert 'id="dash-audit"' not in page


def test_staff_who_may_view_agents_and_tasks_sees_the_dashboard(client, seeded):
    client.force_login(staff_user("viewer", ("registry.view_agent", "tasks.view_task")))

    page = client.get(reverse("admin:index")).content.decode()

    assert tiles(page)["online"] == "4"


def test_change_lists_wrap_their_results_in_a_live_region(admin_client, seeded):
    agents = admin_client.get(reverse("admin:registry_agent_changelist")).content.decode()
    tasks = admin_client.get(reverse("admin:tasks_task_changelist")).content.decode()

    assert re.search(r'id="changelist-live" data-live="agents"', agents)
    assert re.search(r'id="changelist-live" data-live="[a-z ]*tasks', tasks)
    assert 'id="result_list"' in tasks


def test_jobs_and_audit_rows_need_their_own_view_permissions(client, seeded):
    job, _ = seeded
    client.force_login(staff_user("viewer", ("registry.view_agent", "tasks.view_task")))

    page = client.get(reverse("admin:index")).content.decode()

    assert tiles(page)["online"] == "4"
    assert 'id="dash-jobs"' not in page
    assert f'data-job="{job.pk}"' not in page
    assert 'id="dash-audit"' not in page
    assert "agent.drain" not in page
    assert "data-audit=" not in page


def test_jobs_and_audit_rows_show_with_their_view_permissions(client, seeded):
    job, _ = seeded
    perms = ("registry.view_agent", "tasks.view_task", "tasks.view_job", "core.view_auditevent")
    client.force_login(staff_user("auditor", perms))

    page = client.get(reverse("admin:index")).content.decode()

    assert f'data-job="{job.pk}"' in section(page, "dash-jobs")
    assert "data-audit=" in section(page, "dash-audit")


def test_timed_out_tasks_count_as_failed_and_say_so(admin_client, make_agent, spec, frozen_clock, operator):
    """One vocabulary (issue 15 item 3): the failed tile, the open job's row and the chart say "(N timed out)"."""
    make_agent("node-1")
    job = submit(spec, operator, frozen_clock, mode="any", task_count=3, max_attempts=1, delivery_timeout_s=5)
    task_actions.claim_tasks("node-1", 2)
    frozen_clock.advance(10)
    task_actions.expire_leases()

    page = admin_client.get(reverse("admin:index")).content.decode()

    assert tiles(page)["failed"] == "2"
    throughput = section(page, "dash-throughput")
    assert "failed (2 timed out)</span>" in throughput
    assert "2 failed (2 timed out)" in throughput  # the busiest bar's title
    assert "failed (error or timed out)" in throughput  # the legend
    failed_url = re.search(r'href="([^"]+)" data-count="failed"', page).group(1)
    listed = admin_client.get(html.unescape(failed_url)).context["cl"].result_list
    assert sorted(task.state for task in listed) == ["timed_out", "timed_out"]
    jobs = section(page, "dash-jobs")
    assert f'data-job="{job.pk}"' in jobs
    assert "2 failed (2 timed out)" in jobs
    assert ">running</span>" in jobs


def test_reconciliation_link_shows_how_many_tasks_are_stuck(admin_client, make_agent, spec, frozen_clock, operator):
    make_agent("node-1")
    make_agent("node-2")
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "Reconciliation: no task whose state contradicts reality" in section(page, "dash-queue")

    submit(spec, operator, frozen_clock, mode="any", task_count=3)
    finish("node-1", "running", 2)
    finish("node-2", "running", 1)
    registry_actions.mark_offline("node-1", "keepalive timeout")
    frozen_clock.advance(3600)  # every lease expired too: each task still counts once

    queue = section(admin_client.get(reverse("admin:index")).content.decode(), "dash-queue")

    assert re.search(r'<strong data-count="stuck">3</strong> tasks whose state contradicts reality', queue)
    assert reverse("admin:tasks_task_reconcile") in queue


def test_audit_rows_show_their_time_to_the_second(admin_client, seeded, frozen_clock):
    audit = section(admin_client.get(reverse("admin:index")).content.decode(), "dash-audit")

    times = re.findall(r'<span class="when" title="[^"]* ago">([^<]*)</span>', audit)
    assert times
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", when) for when in times), times
