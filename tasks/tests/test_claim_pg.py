"""The claim's PostgreSQL hot path (``tasks/engine/claim_pg.py``): its SQL targeting and its own transactions."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_site.core import clock
from registry.models import Agent, Connectivity
from tasks.engine import claim_pg
from tasks.engine.targeting import Target, matches
from tasks.models import Job, JobMode, Task

KEYS = ("zone", "os", "tier")
VALUES = st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(0, 2), st.none())
CAPABILITIES = ("echo", "gpu", "shell")

agent_labels = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3)
selectors = st.dictionaries(
    st.sampled_from(KEYS), st.one_of(VALUES, st.lists(VALUES, min_size=1, max_size=3)), max_size=3
)
capability_sets = st.lists(st.sampled_from(CAPABILITIES), max_size=3, unique=True)


@pytest.mark.postgres
@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=agent_labels,
    capabilities=capability_sets,
    selector=selectors,
    wanted_capabilities=capability_sets,
    ids=st.sampled_from([[], ["sql-agent"], ["other-agent"], ["other-agent", "sql-agent"]]),
)
def test_sql_targeting_agrees_with_python(
    labels: dict[str, Any],
    capabilities: list[str],
    selector: dict[str, Any],
    wanted_capabilities: list[str],
    ids: list[str],
) -> None:
    expected = matches(Target(ids, selector, wanted_capabilities), "sql-agent", labels, capabilities)
    with transaction.atomic():
        Agent.objects.create(
            pk="sql-agent",
            labels=labels,
            capabilities=capabilities,
            max_concurrency=1,
            connectivity=Connectivity.ONLINE,
        )
        job = Job.objects.create(
            kind="echo",
            mode=JobMode.ANY,
            task_count=1,
            target_agent_ids=ids,
            target_labels=selector,
            target_capabilities=wanted_capabilities,
        )
        Task.objects.create(job=job, kind="echo", not_before=clock.now())
        claimed, _limited = claim_pg.claim_agents(["sql-agent"], 1, clock.now(), push=False)
        transaction.set_rollback(True)
    assert bool(claimed["sql-agent"]) == expected, (labels, capabilities, selector, wanted_capabilities, ids)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_committed_claim_commits_its_own_transaction_and_a_failed_one_leaves_nothing_open(make_agent, spec, operator):
    from django.db import DatabaseError, connection

    from tasks import actions

    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    with pytest.raises(DatabaseError):
        claim_pg.claim_agents(["a1"], "not a number", clock.now(), push=True, commit=True)
    assert connection.connection.info.transaction_status == 0  # IDLE: rolled back, no lock held
    assert Task.objects.get().state == "queued"
    claimed, limited = claim_pg.claim_agents(["a1", "ghost"], 10, clock.now(), push=False, commit=True)
    assert list(claimed) == ["a1"]  # an id without an agent is left out
    assert len(claimed["a1"]) == 1
    assert limited is False
    assert Task.objects.get().state == "assigned"  # committed: visible to this (autocommit) connection


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_committed_claim_refuses_to_run_inside_a_transaction(make_agent):
    make_agent("a1")
    with pytest.raises(RuntimeError, match="outside atomic"):
        claim_pg.claim_agents(["a1"], 1, clock.now(), push=False, commit=True)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_claim_that_starts_a_job_tells_it_once_inside_its_transaction(make_agent, spec, operator):
    """``signals.job_started`` from the one-flight claim: before its COMMIT, so a receiver's rows commit with it."""
    import psycopg
    from django.db import connection

    from tasks import actions, signals
    from tasks.models import JobState

    make_agent("a1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a1"], mode="any", task_count=2), operator)
    told: list[tuple[int, Any]] = []

    def receiver(sender: Any, *, job_id: int, at: Any, **kwargs: Any) -> None:
        told.append((job_id, connection.connection.info.transaction_status))

    signals.job_started.connect(receiver, dispatch_uid="test-claim-pg-started")
    try:
        claimed, _ = claim_pg.claim_agents(["a1"], 1, clock.now(), push=True, commit=True)
        claimed_again, _ = claim_pg.claim_agents(["a1"], 1, clock.now(), push=True, commit=True)
    finally:
        signals.job_started.disconnect(dispatch_uid="test-claim-pg-started")

    assert (len(claimed["a1"]), len(claimed_again["a1"])) == (1, 1)
    assert told == [(job.pk, psycopg.pq.TransactionStatus.INTRANS)]  # once, while the claim's transaction was open
    assert Job.objects.get(pk=job.pk).state == JobState.RUNNING
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # committed


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_of_job_started_rolls_the_claim_back(make_agent, spec, operator):
    from tasks import actions, signals
    from tasks.models import JobState

    make_agent("a1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a1"]), operator)

    def receiver(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("the notification could not be written")

    signals.job_started.connect(receiver, dispatch_uid="test-claim-pg-fails")
    try:
        with pytest.raises(RuntimeError, match="could not be written"):
            claim_pg.claim_agents(["a1"], 1, clock.now(), push=True, commit=True)
    finally:
        signals.job_started.disconnect(dispatch_uid="test-claim-pg-fails")

    assert Task.objects.get().state == "queued"  # nothing assigned, nothing left open
    assert Job.objects.get(pk=job.pk).state == JobState.SCHEDULED
