"""The claim's hot path on PostgreSQL: one network round trip, and the COMMIT.

In psycopg's pipeline mode these go to the server in one flight and run in order:

1. BEGIN (psycopg's for Django's open transaction, or our own);
2. lock the agent rows in id order (claims for one agent are serialised, so its
   capacity is never oversubscribed; the dispatcher passes over a row another
   transaction holds), and say whether any open job has rollout limits;
3. per agent, one statement: check the agent may take work, find the jobs
   whose target selects it (the SQL twin of ``targeting.matches``; a property
   test holds them together; a pinned task counts only while its job still
   selects its agent), pick the tasks ranked above every open rollout with room,
   assign, write history, start jobs and, in push mode, write the
   ``task.assign`` outbox messages;
4. for the dispatcher, which claims outside any other transaction: COMMIT, in a
   second flight: the jobs (3) started are told first (``jobs.tell_started``:
   ``signals.job_started``, whose receivers write notifications in this transaction).

Each statement takes its own snapshot in READ COMMITTED, so the capacity count
in (3) sees every claim committed before the lock in (2) was granted. Jobs with
rollout limits are left to ``claim._claim_general``. Raw SQL because this runs
for every assignment: building these queries with the ORM, and planning them
again on every call, cost more than the database's work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from django.db import connection

from aegis_site.core import counters
from broker import outbox
from broker.models import OutboxMessage
from broker.protocol import PROTOCOL_VERSION, inbox_topic
from tasks.engine import jobs
from tasks.engine.assignment import Assignment

_LOCK_SQL = """
SELECT a.id, EXISTS (
    SELECT 1 FROM jobs j WHERE j.state IN ('scheduled', 'running')
      AND (j.max_in_flight IS NOT NULL OR j.max_in_flight_percent IS NOT NULL OR j.rate_per_minute IS NOT NULL))
FROM agents a WHERE a.id = ANY(%(agents)s::text[]) ORDER BY a.id FOR UPDATE OF a
"""

# The dispatcher's variant: an agent another transaction holds (another dispatcher claiming for it, a heartbeat
# flush, a hello) is passed over instead of waited for. The ids it did lock go into a transaction-local setting
# that the claim statements check, so a claim runs only for an agent locked by this statement, before their
# snapshots: the capacity count still sees every claim committed before the lock was granted.
_LOCK_SKIP_SQL = """
WITH locked AS MATERIALIZED (
    SELECT a.id FROM agents a WHERE a.id = ANY(%(agents)s::text[]) ORDER BY a.id FOR UPDATE OF a SKIP LOCKED
)
SELECT l.id, EXISTS (
    SELECT 1 FROM jobs j WHERE j.state IN ('scheduled', 'running')
      AND (j.max_in_flight IS NOT NULL OR j.max_in_flight_percent IS NOT NULL OR j.rate_per_minute IS NOT NULL)),
    set_config('aegis.claimable', (SELECT string_agg(id, ',') FROM locked), true)
FROM locked l ORDER BY l.id
"""

# ``selecting``: the jobs without rollout limits whose target selects the agent, ``targeting.matches`` in SQL: ids
# (empty = any), capabilities (a subset), labels (every key present and not null, equal to the wanted value or, for a
# list, one of its values). A pinned task counts only while its job's target still selects its agent.
# ``rollout_floor``: the highest priority among rollout-limited jobs that have claimable tasks and room (a conservative
# test: the general path decides exactly). Only tasks above it are taken here; the rest, limited or not, go through
# ``claim._claim_general`` in one priority order, so a limit that never binds never costs a job its place in line.
_CLAIM_SQL = """
WITH agent AS (
    SELECT a.id, a.labels, a.capabilities, a.max_concurrency FROM agents a
    WHERE a.id = %(agent)s AND a.admin_state = 'active'
      AND ((a.connectivity = 'online' AND a.transport = 'mqtt') OR NOT %(push)s)  -- push: MQTT agents only
      AND (NOT %(skip)s OR a.id = ANY(string_to_array(current_setting('aegis.claimable', true), ',')))
), selecting AS (
    SELECT j.id, j.mode FROM jobs j CROSS JOIN agent a
    WHERE j.state IN ('scheduled', 'running')
      AND j.max_in_flight IS NULL AND j.max_in_flight_percent IS NULL AND j.rate_per_minute IS NULL
      AND (j.target_agent_ids = '[]'::jsonb OR j.target_agent_ids ? a.id)
      AND (j.target_capabilities = '[]'::jsonb OR a.capabilities @> j.target_capabilities)
      AND NOT EXISTS (
          SELECT 1 FROM jsonb_each(j.target_labels) wanted(key, value)
          WHERE (jsonb_typeof(a.labels -> wanted.key) <> 'null' AND CASE
              WHEN jsonb_typeof(wanted.value) = 'array' THEN wanted.value @> jsonb_build_array(a.labels -> wanted.key)
              ELSE a.labels -> wanted.key = wanted.value END) IS NOT TRUE)
), rollout_floor AS (
    SELECT max(j.priority) AS priority FROM jobs j
    WHERE j.state IN ('scheduled', 'running')
      AND (j.max_in_flight IS NOT NULL OR j.max_in_flight_percent IS NOT NULL OR j.rate_per_minute IS NOT NULL)
      AND (j.max_in_flight IS NULL OR j.max_in_flight > (
          SELECT count(*) FROM tasks h WHERE h.job_id = j.id AND h.state IN ('assigned', 'running')))
      AND EXISTS (SELECT 1 FROM tasks q WHERE q.job_id = j.id AND q.state = 'queued' AND q.not_before <= %(now)s)
), picked AS (
    SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id
    WHERE t.state = 'queued' AND t.not_before <= %(now)s
      AND t.job_id IN (SELECT id FROM selecting)
      AND (t.agent_id = %(agent)s OR (t.agent_id IS NULL AND j.mode = 'any'))
      AND t.priority > COALESCE((SELECT priority FROM rollout_floor), -32769)
      AND j.state IN ('scheduled', 'running')
    ORDER BY t.priority DESC, t.id
    LIMIT GREATEST(0, LEAST(%(limit)s, COALESCE((SELECT max_concurrency FROM agent), 0) - (
        SELECT count(*) FROM tasks h WHERE h.agent_id = %(agent)s AND h.state IN ('assigned', 'running'))))
    FOR NO KEY UPDATE OF t SKIP LOCKED
), assigned AS (
    UPDATE tasks t SET state = 'assigned', agent_id = %(agent)s, attempt = t.attempt + 1, assigned_at = %(now)s,
        lease_expires_at = %(now)s + make_interval(secs => j.delivery_timeout_s), started_at = NULL,
        cancel_requested_at = NULL, progress = NULL, result = NULL, error = NULL, updated_at = %(now)s
    FROM picked, jobs j WHERE t.id = picked.id AND j.id = t.job_id
    RETURNING t.id, t.job_id, t.kind, t.attempt, t.priority, j.payload, j.execution_timeout_s, j.delivery_timeout_s,
        j.state AS job_state, EXTRACT(EPOCH FROM %(now)s - t.not_before)::float8 AS waited_s
), history AS (
    INSERT INTO task_events (task_id, kind, attempt, from_state, to_state, agent_id, message_id, data, created_at)
    SELECT id, 'assigned', attempt, 'queued', 'assigned', %(agent)s, NULL, NULL, %(now)s FROM assigned
), started AS (
    UPDATE jobs SET state = 'running', updated_at = %(now)s
    WHERE id IN (SELECT job_id FROM assigned WHERE job_state = 'scheduled') AND state = 'scheduled'
    RETURNING id
)
"""

_RETURN_ASSIGNED = """
SELECT id, job_id, kind, attempt, payload, execution_timeout_s, delivery_timeout_s, NULL, NULL, waited_s,
    job_id IN (SELECT id FROM started) FROM assigned
ORDER BY priority DESC, id
"""

# The envelope of ``broker.protocol.task_assign``, built in SQL so the same statement writes the outbox rows;
# tests/test_direct_publish.py checks it against the Python builder.
_PUSH_ASSIGNED = """
, messages AS (
    INSERT INTO outbox_messages (agent_id, topic, message_type, payload, created_at, sent_at, direct)
    SELECT %(agent)s, %(topic)s, 'task.assign', jsonb_build_object(
        'v', %(version)s::int, 'id', replace(gen_random_uuid()::text, '-', ''), 'ts', %(ts)s::text,
        'type', 'task.assign', 'task', jsonb_build_object(
            'id', id, 'attempt', attempt, 'job_id', job_id, 'kind', kind, 'payload', payload,
            'timeout_s', execution_timeout_s, 'lease_s', delivery_timeout_s)),
        %(now)s, NULL, %(direct)s
    FROM assigned ORDER BY priority DESC, id
    RETURNING id, payload
)
SELECT a.id, a.job_id, a.kind, a.attempt, a.payload, a.execution_timeout_s, a.delivery_timeout_s, m.id, m.payload,
    a.waited_s, a.job_id IN (SELECT id FROM started)
FROM assigned a JOIN messages m ON (m.payload -> 'task' ->> 'id')::bigint = a.id
ORDER BY a.priority DESC, a.id
"""


def claim_agents(
    agent_ids: Sequence[str],
    limit: int,
    now: datetime,
    push: bool,
    commit: bool = False,
    sink: outbox.DirectSink | None = None,
    skip_locked: bool = False,
) -> tuple[dict[str, list[Assignment]], bool]:
    """Lock the agents and claim from jobs without rollout limits for each.

    Inside the caller's transaction; or, with ``commit`` (outside any
    transaction), in a transaction of its own whose BEGIN travels in the same
    flight as the statements and whose COMMIT follows once the jobs it started
    were told (``jobs.tell_started``): two round trips from the dispatcher's
    wake-up to assignments that are durable and may be published.

    Returns the assignments of every agent that exists (ids without an agent are
    left out) and whether some open job has rollout limits (then the caller runs
    the general path too). With ``skip_locked`` (the dispatcher's), an agent whose row another
    transaction holds is left out too, not waited for: replicas claiming for the same agents
    (every report wakes every dispatcher, naming the same agents) take turns instead of queuing.
    In push mode the outbox rows are written and handed to
    ``broker.outbox``, published once committed: by ``sink`` (the dispatcher's own
    publisher) when given, else by the bridge.
    """
    ids = sorted(set(agent_ids))
    direct = sink is not None
    connection.ensure_connection()
    if commit and (connection.in_atomic_block or not connection.get_autocommit()):
        raise RuntimeError("claim_agents(commit=True) runs its own transaction: call it outside atomic()")
    conn = connection.connection
    sql = _CLAIM_SQL + (_PUSH_ASSIGNED if push else _RETURN_ASSIGNED)
    with connection.wrap_database_errors:
        try:
            with conn.pipeline():
                if commit:
                    conn.execute("BEGIN")
                lock = psycopg.Cursor(conn)
                lock.execute(_LOCK_SKIP_SQL if skip_locked else _LOCK_SQL, {"agents": ids}, prepare=True)
                claims = []
                for agent_id in ids:
                    cursor = psycopg.Cursor(conn)
                    cursor.execute(sql, _params(agent_id, limit, now, push, direct, skip_locked), prepare=True)
                    claims.append((agent_id, cursor))
            locked = lock.fetchall()
            rows = {agent_id: cursor.fetchall() for agent_id, cursor in claims}
            # The jobs this claim started are told inside its transaction (their notifications commit with it),
            # so the COMMIT follows the results: one more round trip, not a second transaction.
            jobs.tell_started(sorted({row[1] for claimed in rows.values() for row in claimed if row[10]}), now)
            if commit:
                conn.execute("COMMIT")
        except Exception:
            if commit and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            raise
    existing = {row[0] for row in locked}
    limited = any(row[1] for row in locked)
    # Outside a transaction, Django runs on-commit callbacks (the outbox's publication) at once.
    claimed = {agent_id: _assignments(agent_id, rows[agent_id], now, push, sink) for agent_id in sorted(existing)}
    return claimed, limited


def _params(agent_id: str, limit: int, now: datetime, push: bool, direct: bool, skip: bool) -> dict[str, Any]:
    return {
        "now": now,
        "agent": agent_id,
        "push": push,
        "skip": skip,
        "limit": limit,
        "topic": inbox_topic(agent_id),
        "version": PROTOCOL_VERSION,
        "ts": now.isoformat(),
        "direct": direct,
    }


def _assignments(
    agent_id: str, rows: list[tuple[Any, ...]], now: datetime, push: bool, sink: outbox.DirectSink | None
) -> list[Assignment]:
    assignments = [Assignment(row[0], row[3], row[1], row[2], _json(row[4]), row[5], row[6]) for row in rows]
    for row in rows:
        counters.TIME_TO_ASSIGNMENT.observe(max(row[9], 0.0))
    if push and rows:
        topic = inbox_topic(agent_id)
        outbox.after_write(
            [
                OutboxMessage(
                    pk=row[7],
                    agent_id=agent_id,
                    topic=topic,
                    message_type="task.assign",
                    payload=_json(row[8]),
                    created_at=now,
                    direct=sink is not None,
                )
                for row in rows
            ],
            sink,
        )
    return assignments


def _json(value: Any) -> Any:
    """psycopg returns json decoded already; Django's cursor may hand back text."""
    return json.loads(value) if isinstance(value, str) else value
