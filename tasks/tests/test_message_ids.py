"""Message ids are the agents' own: a report is stored once per (agent, message id), never once across agents.

An agent chooses the ids of its reports. Were they unique across agents, agent B could
report first with an id agent A will use and have A's real result dropped as a duplicate.
"""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Job, JobState, Task, TaskEvent, TaskState

pytestmark = pytest.mark.django_db


@pytest.fixture
def held(make_agent, spec, operator, frozen_clock) -> dict[str, Task]:
    """One job, one task for each of agents a and b, each assigned to its agent (attempt 1)."""
    make_agent("a")
    make_agent("b")
    actions.submit_job(spec(target_agent_ids=["a", "b"]), operator)
    for agent_id in ("a", "b"):
        assert len(actions.claim_tasks(agent_id, 10)) == 1
    return {task.agent_id: task for task in Task.objects.all() if task.agent_id}


def test_another_agents_earlier_report_with_the_same_id_does_not_drop_a_result(held):
    taken = actions.report("b", Report("succeeded", held["b"].pk, 1, message_id="done-1", result={"by": "b"}))
    real = actions.report("a", Report("succeeded", held["a"].pk, 1, message_id="done-1", result={"by": "a"}))

    assert (taken.status, real.status) == ("applied", "applied")
    task = Task.objects.get(pk=held["a"].pk)
    assert (task.state, task.result) == (TaskState.SUCCEEDED, {"by": "a"})
    assert Job.objects.get(pk=task.job_id).state == JobState.SUCCEEDED
    assert sorted(TaskEvent.objects.filter(message_id="done-1").values_list("agent_id", flat=True)) == ["a", "b"]


def test_an_id_taken_by_another_agents_stale_report_does_not_drop_a_result(held):
    """A stale report writes its id too (to the history): it must not shadow another agent's id either."""
    stale = actions.report("b", Report("succeeded", held["b"].pk, 7, message_id="done-1", result={}))
    real = actions.report("a", Report("succeeded", held["a"].pk, 1, message_id="done-1", result={"by": "a"}))

    assert (stale.status, real.status) == ("stale", "applied")
    assert Task.objects.get(pk=held["a"].pk).state == TaskState.SUCCEEDED


def test_two_agents_with_the_same_id_in_one_batch_are_both_applied_the_same_agent_twice_is_a_duplicate(held):
    a, b = held["a"].pk, held["b"].pk
    batch = [
        ("b", Report("succeeded", b, 1, message_id="m", result={"by": "b"})),
        ("a", Report("succeeded", a, 1, message_id="m", result={"by": "a"})),
        ("a", Report("failed", a, 1, message_id="m", error={"code": "E", "message": "replayed"})),
    ]

    outcomes = actions.apply_agents_reports(batch)

    assert [o.status for o in outcomes] == ["applied", "applied", "duplicate"]
    assert Task.objects.get(pk=a).result == {"by": "a"}
    assert Task.objects.get(pk=b).result == {"by": "b"}


def test_an_id_stored_by_the_same_agent_in_an_earlier_batch_is_a_duplicate(held):
    actions.report("a", Report("accepted", held["a"].pk, 1, message_id="x"))

    outcomes = actions.apply_agents_reports(
        [
            ("b", Report("accepted", held["b"].pk, 1, message_id="x")),
            ("a", Report("accepted", held["a"].pk, 1, message_id="x")),
        ]
    )

    assert [o.status for o in outcomes] == ["applied", "duplicate"]


def test_the_database_refuses_a_second_row_for_one_agent_and_id_not_for_two_agents(held):
    """The index that makes deduplication hold across bridge replicas, scoped the same way."""
    now = held["a"].created_at
    row = {"task_id": held["a"].pk, "kind": "progress", "attempt": 1, "message_id": "same", "created_at": now}
    TaskEvent.objects.create(agent_id="a", **row)
    TaskEvent.objects.create(agent_id="b", **row)
    TaskEvent.objects.create(agent_id="a", **{**row, "message_id": None})
    TaskEvent.objects.create(agent_id="a", **{**row, "message_id": None})  # server rows carry no id
    with pytest.raises(IntegrityError), transaction.atomic():
        TaskEvent.objects.create(agent_id="a", **row)


def test_the_duplicate_check_is_one_query_whatever_the_number_of_agents(make_agent, spec, operator, frozen_clock):
    agents = [f"n-{i:02d}" for i in range(12)]
    for agent_id in agents:
        make_agent(agent_id)
    actions.submit_job(spec(target_agent_ids=agents), operator)
    tasks = {agent_id: actions.claim_tasks(agent_id, 1)[0].task_id for agent_id in agents}

    def cost(batch: list[tuple[str, Report]]) -> int:
        with CaptureQueriesContext(connection) as queries:
            actions.apply_agents_reports(batch)
        return sum("task_events" in q["sql"] and q["sql"].lstrip().upper().startswith("SELECT") for q in queries)

    one = cost([(agents[0], Report("accepted", tasks[agents[0]], 1, message_id="same"))])
    many = cost([(agent_id, Report("accepted", tasks[agent_id], 1, message_id="same")) for agent_id in agents[1:]])

    assert one == many == 1


def test_the_admin_finds_events_by_message_id_from_every_agent(admin_client, held):
    actions.report("b", Report("accepted", held["b"].pk, 1, message_id="look-for-me"))
    actions.report("a", Report("accepted", held["a"].pk, 1, message_id="look-for-me"))
    actions.report("a", Report("progress", held["a"].pk, 1, message_id="other", progress={}))

    page = admin_client.get(reverse("admin:tasks_taskevent_changelist"), {"q": "look-for-me"})

    found = page.context["cl"].result_list
    assert sorted((event.agent_id, event.message_id) for event in found) == [("a", "look-for-me"), ("b", "look-for-me")]


@pytest.mark.postgres
def test_lookups_by_message_id_read_the_unique_index(held):
    """The admin's search and the bridge's duplicate check stay index reads on a table of millions of rows."""
    by_id = TaskEvent.objects.filter(message_id="look-for-me")
    by_pairs = TaskEvent.objects.filter(message_id__in_array=["m-1", "m-2"], agent_id__in_array=["a", "b"])
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a few test rows: the planner would rightly scan them
        plans = [query.explain() for query in (by_id, by_pairs)]
    for plan in plans:
        assert "task_events_message_agent_uniq" in plan, plan
