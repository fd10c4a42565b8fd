"""Set-based seeding of a large fleet for ``bench/admin_scale.py``: one ``INSERT ... SELECT generate_series`` per table.

Rows are built from their ordinal ``i`` with a cheap multiplicative hash (``r``, ``a``), so a
run is reproducible and needs no Python loop. Ids are explicit and grow with time (task ``i``
is created ``span * (N - i) / N`` before the seed time), so "newest first" orderings on ids
match the timestamps. Foreign-key triggers are skipped while seeding
(``session_replication_role = replica``): the rows are consistent by construction, and checking
six million deferred foreign keys one by one would triple the time.

The data follows the model's rules: tasks of ``each`` jobs are pinned to their agent; a queued
task has no lease; terminal tasks have ``finished_at``; every task has a ``created`` event, an
``assigned`` event once it has an attempt, and a final event when it has ended; job counters
are computed from the tasks (timed out counts as failed) and a job whose tasks have all ended
is finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

KINDS = ("deploy", "backup", "shell", "restart", "upgrade", "collect-logs", "scan", "reboot")
ERROR_CODES = ("E_EXIT", "E_TIMEOUT", "E_NO_SPACE", "E_DOWNLOAD", "E_PERMISSION")
OPERATORS = ("alice", "bob", "carol")


@dataclass(frozen=True)
class Sizes:
    agents: int = 100_000
    jobs: int = 20_000
    tasks: int = 2_000_000
    audit: int = 200_000
    open_jobs: int = 200  # the newest jobs still have queued/assigned/running tasks
    days: int = 7  # tasks and audit rows spread over this many days before the seed time


def _hash(expr: str, salt: int, modulo: int) -> str:
    """SQL for a pseudo-random integer in [0, modulo) from an integer expression."""
    return f"((({expr}) * 2654435761 + {salt}) % 1000003) % {modulo}"


def _agent_id(expr: str) -> str:
    return f"'agent-' || lpad(({expr})::text, 6, '0')"


def _array(values: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join(f"'{value}'" for value in values) + "]"


def agents_sql(p: Literals) -> str:
    r = _hash("i", 11, 1000)
    return f"""
    INSERT INTO agents (id, name, labels, capabilities, version, max_concurrency, connectivity, last_seen_at,
                        disconnect_reason, admin_state, enrolled_at, updated_at, metadata)
    SELECT {_agent_id("i")}, 'host ' || i,
           jsonb_build_object('region', (ARRAY['eu-west', 'us-east', 'ap-south'])[i % 3 + 1],
                              'role', (ARRAY['web', 'db', 'cache', 'batch', 'edge'])[i % 5 + 1],
                              'rack', 'r' || (i % 200)),
           CASE WHEN i % 10 = 0 THEN '["shell", "docker", "gpu"]'::jsonb
                WHEN i % 2 = 0 THEN '["shell", "docker"]'::jsonb ELSE '["shell"]'::jsonb END,
           CASE WHEN {r} < 700 THEN '2.4.1' WHEN {r} < 900 THEN '2.3.0' WHEN {r} < 980 THEN '2.2.7'
                ELSE '1.' || (i % 9) || '.0' END,
           1 + i % 8,
           CASE WHEN {r} % 10 < 7 THEN 'online' ELSE 'offline' END,
           CASE WHEN {r} % 10 < 7 THEN {p.now} - make_interval(secs => i % 60)
                WHEN i % 97 = 0 THEN NULL
                ELSE {p.now} - make_interval(secs => 120 + (i * 7) % 2000000) END,
           CASE WHEN {r} % 10 < 7 THEN '' WHEN i % 3 = 0 THEN 'keepalive timeout' ELSE 'clean disconnect' END,
           CASE WHEN {r} % 100 < 95 THEN 'active' WHEN {r} % 100 < 98 THEN 'draining' ELSE 'disabled' END,
           {p.now} - make_interval(days => 60) + make_interval(secs => i * 30),
           {p.now}, '{{}}'::jsonb
    FROM generate_series(1, {p.agents}) AS i
    """


def credentials_sql(p: Literals) -> str:
    return f"""
    INSERT INTO agent_credentials (id, agent_id, kind, token_prefix, token_hash, cert_fingerprint, cert_serial,
                                   created_at, expires_at, revoked_at, last_used_at)
    SELECT i, {_agent_id(f"(i - 1) % {p.agents} + 1")},
           CASE WHEN i <= {p.agents} THEN 'token' ELSE 'certificate' END,
           CASE WHEN i <= {p.agents} THEN 'aet_' || substr(md5(i::text), 1, 6) ELSE '' END,
           CASE WHEN i <= {p.agents} THEN md5('token' || i) END,
           CASE WHEN i > {p.agents} THEN md5('cert' || i) END,
           CASE WHEN i > {p.agents} THEN to_hex(i) ELSE '' END,
           {p.now} - make_interval(days => 30) + make_interval(secs => i * 10),
           CASE WHEN i > {p.agents} THEN {p.now} + make_interval(days => 365) END,
           CASE WHEN i % 50 = 0 THEN {p.now} - make_interval(days => 1) END,
           {p.now} - make_interval(secs => i % 3600)
    FROM generate_series(1, {p.agents} + {p.agents} / 10) AS i
    """


def jobs_sql(p: Literals) -> str:
    """Jobs with zero counters; ``job_counters_sql`` fills them from the tasks."""
    return f"""
    INSERT INTO jobs (id, kind, payload, target_agent_ids, target_labels, target_capabilities, mode, task_count,
                      continuous, priority, max_attempts, backoff_base_s, backoff_cap_s, delivery_timeout_s,
                      execution_timeout_s, not_before, idempotency_key, max_in_flight, max_in_flight_percent,
                      rate_per_minute, abort_failure_ratio, abort_min_finished, state, tasks_total, tasks_succeeded,
                      tasks_failed, tasks_canceled, rate_window_start, rate_window_assigned, created_at, updated_at,
                      finished_at, created_by_id)
    SELECT j, ({_array(KINDS)})[j % {len(KINDS)} + 1],
           jsonb_build_object('script', 'run.sh', 'args', jsonb_build_array(j)),
           '[]'::jsonb,
           CASE WHEN j % 10 = 0 THEN '{{}}'::jsonb
                ELSE jsonb_build_object('role', (ARRAY['web', 'db', 'cache', 'batch', 'edge'])[j % 5 + 1]) END,
           CASE WHEN j % 7 = 0 THEN '["docker"]'::jsonb ELSE '[]'::jsonb END,
           CASE WHEN j % 10 = 0 THEN 'any' ELSE 'each' END,
           CASE WHEN j % 10 = 0 THEN {p.per_job} ELSE 1 END,
           j % 50 = 0, (j % 3) - 1, 3, 5.0, 600.0, 60, 600, NULL,
           CASE WHEN j % 4 = 0 THEN 'deploy-' || j END,
           CASE WHEN j % 5 = 0 THEN 20 END, NULL, CASE WHEN j % 9 = 0 THEN 100 END,
           CASE WHEN j % 6 = 0 THEN 0.2 END, 1,
           'running', 0, 0, 0, 0, NULL, 0,
           {p.now} - {p.span} * ({p.tasks} - ((j - 1) * {p.per_job} + 1))::float8 / {p.tasks},
           {p.now}, NULL,
           CASE WHEN j % 3 = 0 THEN (SELECT id FROM auth_user WHERE username = 'alice') END
    FROM generate_series(1, {p.jobs}) AS j
    """


def tasks_sql(p: Literals) -> str:
    r = _hash("i", 17, 1000)
    a = _hash("i", 29, p.agents)  # the agent of task i
    return f"""
    INSERT INTO tasks (id, job_id, agent_id, pinned, kind, state, priority, attempt, max_attempts, not_before,
                       lease_expires_at, cancel_requested_at, progress, result, error, created_at, assigned_at,
                       started_at, finished_at, updated_at)
    SELECT i, job_id,
           CASE WHEN pinned OR attempt > 0 THEN {_agent_id("a + 1")} END,
           pinned, ({_array(KINDS)})[job_id % {len(KINDS)} + 1], state, (job_id % 3) - 1, attempt, 3,
           CASE WHEN state = 'queued' AND attempt > 0 THEN {p.now} + make_interval(secs => r % 300) ELSE created END,
           CASE WHEN state = 'assigned' THEN {p.now} + make_interval(secs => 60)
                WHEN state = 'running' AND r % 50 = 0 THEN {p.now} - make_interval(secs => 30)
                WHEN state = 'running' THEN {p.now} + make_interval(secs => 600) END,
           CASE WHEN state = 'canceled' THEN created + make_interval(secs => 3) END,
           CASE WHEN state = 'running' THEN jsonb_build_object('percent', r % 100) END,
           CASE WHEN state = 'succeeded' THEN jsonb_build_object('exit_code', 0, 'duration_s', r % 300) END,
           CASE WHEN state = 'failed' THEN jsonb_build_object(
                    'code', ({_array(ERROR_CODES)})[r % {len(ERROR_CODES)} + 1],
                    'message', 'exit status ' || (r % 5 + 1))
                WHEN state = 'timed_out' THEN jsonb_build_object(
                    'code', 'execution_timeout', 'message', 'lease expired')
           END,
           created,
           CASE WHEN attempt > 0 THEN created + make_interval(secs => 1) END,
           CASE WHEN attempt > 0 AND state NOT IN ('queued', 'assigned') THEN created + make_interval(secs => 2) END,
           CASE WHEN state IN ('succeeded', 'failed', 'timed_out', 'canceled')
                THEN LEAST({p.now}, created + make_interval(secs => 5 + r % 300)) END,
           CASE WHEN state IN ('succeeded', 'failed', 'timed_out', 'canceled')
                THEN LEAST({p.now}, created + make_interval(secs => 5 + r % 300)) ELSE created END
    FROM (
        SELECT i, job_id, r, a, created, pinned, state,
               CASE WHEN state = 'queued' THEN (CASE WHEN r % 7 = 0 THEN 1 ELSE 0 END)
                    WHEN state IN ('failed', 'timed_out') THEN 3
                    WHEN state = 'canceled' THEN r % 2
                    WHEN state = 'succeeded' AND r % 20 = 0 THEN 2
                    ELSE 1 END AS attempt
        FROM (
            SELECT i, job_id, r, a, created, job_id % 10 <> 0 AS pinned,
                   CASE WHEN job_id > {p.jobs} - {p.open_jobs} THEN
                            CASE WHEN r < 400 THEN 'succeeded' WHEN r < 450 THEN 'failed' WHEN r < 700 THEN 'queued'
                                 WHEN r < 800 THEN 'assigned' ELSE 'running' END
                        WHEN job_id % 4 = 0 THEN  -- a job in four had failures
                            CASE WHEN r < 850 THEN 'succeeded' WHEN r < 950 THEN 'failed'
                                 WHEN r < 980 THEN 'timed_out' ELSE 'canceled' END
                        ELSE
                            CASE WHEN r < 990 THEN 'succeeded' ELSE 'canceled' END
                   END AS state
            FROM (
                SELECT i, (i - 1) / {p.per_job} + 1 AS job_id, {r} AS r, {a} AS a,
                       {p.now} - {p.span} * ({p.tasks} - i)::float8 / {p.tasks} AS created
                FROM generate_series(1, {p.tasks}) AS i
            ) AS numbered
        ) AS stated
    ) AS attempted
    """


def task_events_sql(p: Literals) -> str:
    """Ids ``4 * task + k``: in task order, so nearly in time order, as the engine writes them."""
    return """
    INSERT INTO task_events (id, task_id, kind, attempt, from_state, to_state, agent_id, message_id, data, created_at)
    SELECT t.id * 4 + e.k, t.id, e.kind, e.attempt, e.from_state, e.to_state, e.agent_id, e.message_id, e.data,
           e.created_at
    FROM tasks AS t
    CROSS JOIN LATERAL (VALUES
        (0, 'created', 0, '', 'queued', '', NULL, NULL::jsonb, t.created_at, true),
        (1, 'assigned', t.attempt, 'queued', 'assigned', COALESCE(t.agent_id, ''), NULL, NULL, t.assigned_at,
         t.attempt > 0),
        (2, CASE t.state WHEN 'timed_out' THEN 'execution_timeout' ELSE t.state END, t.attempt,
         CASE WHEN t.attempt > 0 THEN 'running' ELSE 'queued' END, t.state, COALESCE(t.agent_id, ''),
         CASE WHEN t.state IN ('succeeded', 'failed') THEN 'm-' || t.id || '-' || t.attempt END,
         COALESCE(t.result, t.error), t.finished_at,
         t.state IN ('succeeded', 'failed', 'timed_out', 'canceled'))
    ) AS e(k, kind, attempt, from_state, to_state, agent_id, message_id, data, created_at, present)
    WHERE e.present
    """


def job_counters_sql(p: Literals) -> str:
    return """
    UPDATE jobs AS j SET
        tasks_total = c.total, tasks_succeeded = c.succeeded, tasks_failed = c.failed, tasks_canceled = c.canceled,
        state = CASE WHEN c.succeeded + c.failed + c.canceled < c.total THEN
                          CASE WHEN j.id % 37 = 0 THEN 'paused' ELSE 'running' END
                     WHEN c.failed > 0 THEN 'failed' WHEN c.succeeded > 0 THEN 'succeeded' ELSE 'canceled' END,
        finished_at = CASE WHEN c.succeeded + c.failed + c.canceled = c.total THEN c.last_finished END,
        updated_at = COALESCE(c.last_finished, j.created_at)
    FROM (
        SELECT job_id, count(*) AS total,
               count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE state IN ('failed', 'timed_out')) AS failed,
               count(*) FILTER (WHERE state = 'canceled') AS canceled,
               max(finished_at) AS last_finished
        FROM tasks GROUP BY job_id
    ) AS c
    WHERE c.job_id = j.id
    """


def audit_sql(p: Literals) -> str:
    """Operators' actions on jobs, tasks and agents, and agents' own hellos, newest with the highest id."""
    return f"""
    INSERT INTO audit_events (id, actor_id, actor_label, action, object_type, object_id, data, created_at)
    SELECT i,
           CASE WHEN i % 4 = 3 THEN NULL ELSE (SELECT id FROM auth_user WHERE username =
                ({_array(OPERATORS)})[i % 4 + 1]) END,
           CASE WHEN i % 4 = 3 THEN 'agent:' || {_agent_id(f"i % {p.agents} + 1")}
                ELSE ({_array(OPERATORS)})[i % 4 + 1] END,
           action, split_part(action, '.', 1),
           CASE split_part(action, '.', 1) WHEN 'job' THEN (i % {p.jobs} + 1)::text
                WHEN 'task' THEN (i * 10 % {p.tasks} + 1)::text ELSE {_agent_id(f"i % {p.agents} + 1")} END,
           jsonb_build_object('seq', i),
           {p.now} - {p.span} * ({p.audit} - i)::float8 / {p.audit}
    FROM (
        SELECT i, CASE WHEN i % 4 = 3 THEN 'agent.hello'
                       ELSE (ARRAY['job.submit', 'job.cancel', 'job.pause', 'job.resume', 'job.retry_failed',
                                   'task.cancel', 'task.retry', 'agent.update', 'agent.register',
                                   'credential.issue'])[{_hash("i", 5, 10)} + 1] END AS action
        FROM generate_series(1, {p.audit}) AS i
    ) AS a
    """


def outbox_sql(p: Literals) -> str:
    """What the dispatcher sent to the agents of the newest tasks; the last few still unsent."""
    return f"""
    INSERT INTO outbox_messages (id, agent_id, topic, message_type, payload, created_at, sent_at, direct)
    SELECT row_number() OVER (ORDER BY t.id), t.agent_id, 'aegis/agents/' || t.agent_id || '/inbox', 'task.assign',
           jsonb_build_object('task', jsonb_build_object('id', t.id, 'attempt', t.attempt)), t.assigned_at,
           CASE WHEN t.state = 'assigned' AND t.id % 10 = 0 THEN NULL ELSE t.assigned_at END, true
    FROM tasks AS t
    WHERE t.id > {p.tasks} - 50000 AND t.attempt > 0
    """


STEPS = (
    ("agents", agents_sql),
    ("credentials", credentials_sql),
    ("jobs", jobs_sql),
    ("tasks", tasks_sql),
    ("task events", task_events_sql),
    ("job counters", job_counters_sql),
    ("audit events", audit_sql),
    ("outbox", outbox_sql),
)
SEQUENCES = ("agent_credentials", "jobs", "tasks", "task_events", "audit_events", "outbox_messages")


@dataclass(frozen=True)
class Literals:
    """The seed's parameters as SQL literals: the statements use ``%`` as modulo, so no driver placeholders."""

    now: str
    span: str
    agents: int
    jobs: int
    tasks: int
    audit: int
    open_jobs: int
    per_job: int


def seed(cursor: Any, sizes: Sizes) -> None:
    """Fill an empty, migrated database; prints each step's time. The operators' users must exist."""
    cursor.execute("SELECT now()::text")
    p = Literals(
        now=f"'{cursor.fetchone()[0]}'::timestamptz",
        span=f"interval '{sizes.days} days'",
        agents=sizes.agents,
        jobs=sizes.jobs,
        tasks=sizes.tasks,
        audit=sizes.audit,
        open_jobs=sizes.open_jobs,
        per_job=max(1, sizes.tasks // sizes.jobs),
    )
    cursor.execute("SET session_replication_role = replica")
    try:
        for name, sql in STEPS:
            started = time.perf_counter()
            cursor.execute(sql(p))
            print(
                f"  seeded {name:<14} {cursor.rowcount:>10,} rows in {time.perf_counter() - started:6.1f} s", flush=True
            )
    finally:
        cursor.execute("SET session_replication_role = DEFAULT")
    for table in SEQUENCES:
        next_id = f"(SELECT COALESCE(max(id), 0) + 1 FROM {table})"
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {next_id}, false)")
