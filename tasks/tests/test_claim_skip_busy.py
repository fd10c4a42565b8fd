"""Dispatcher replicas pass over agents another transaction holds (``claim_pg``'s SKIP LOCKED) instead of queuing.

Another connection holds an agent's row as a second dispatcher's claim, a heartbeat
flush or a hello would; the claim must come back at once with the other agents served,
and the dispatcher must try the held agent again on its next pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Task, TaskState

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def hold_agent() -> Iterator[Any]:
    """``hold(agent_id)`` locks the agent's row from another connection until ``release()``."""
    params = connection.get_connection_params()
    for name in ("cursor_factory", "context", "prepare_threshold", "pool"):
        params.pop(name, None)
    other = psycopg.connect(**params)

    class Holder:
        def hold(self, agent_id: str) -> None:
            other.execute("SELECT id FROM agents WHERE id = %s FOR UPDATE", [agent_id])

        def release(self) -> None:
            other.rollback()

    with connection.cursor() as cursor:  # a regression would wait for the lock: fail instead of hanging
        cursor.execute("SET lock_timeout = '5s'")
    try:
        yield Holder()
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


def test_a_claim_passes_over_an_agent_another_transaction_holds(make_agent, spec, operator, hold_agent):
    make_agent("a1")
    make_agent("a2")
    actions.submit_job(spec(mode="any", task_count=4), operator)
    hold_agent.hold("a1")

    claimed = actions.claim_for_agents(["a1", "a2"], 2, skip_busy=True)

    assert list(claimed) == ["a2"]  # a1 left out, not waited for
    assert len(claimed["a2"]) == 2
    assert not Task.objects.filter(agent_id="a1").exists()
    hold_agent.release()
    assert len(actions.claim_for_agents(["a1", "a2"], 2, skip_busy=True)["a1"]) == 2


def test_a_claim_without_skip_busy_still_waits_for_the_agent(make_agent, spec, operator, hold_agent):
    from django.db import OperationalError

    make_agent("a1")
    actions.submit_job(spec(mode="any", task_count=1), operator)
    hold_agent.hold("a1")
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    with pytest.raises(OperationalError, match="lock timeout"):
        actions.claim_for_agents(["a1"], 1)
    hold_agent.release()
    assert Task.objects.get().state == TaskState.QUEUED


def test_the_dispatcher_tries_a_held_agent_once_more_then_leaves_it(make_agent, spec, operator, hold_agent):
    make_agent("a1", max_concurrency=1)
    make_agent("a2", max_concurrency=1)
    actions.submit_job(spec(mode="any", task_count=4), operator)
    dispatcher = Dispatcher(batch_size=10)
    hold_agent.hold("a1")

    assert dispatcher.assign() is True  # a2 served
    assert dispatcher.busy == {"a1"}
    assert dispatcher.assign() is False  # a1 held still (a2 is full): passed over again, and not retried after that
    assert dispatcher.busy == set()

    hold_agent.release()
    assert dispatcher.assign() is True  # free again: claimed for
    assert Task.objects.filter(agent_id="a1", state=TaskState.ASSIGNED).count() == 1
    assert Task.objects.filter(state=TaskState.ASSIGNED).count() == 2  # one each: capacity 1, never more
