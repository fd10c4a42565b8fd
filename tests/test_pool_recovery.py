"""After PostgreSQL's backends are terminated (a failover, a restart), requests get live connections.

daphne runs as a process with the production defaults (the psycopg pool of
``DB_POOL_SIZE=4`` + ``DB_MAX_OVERFLOW=4``, ``DEBUG`` off): the test process kills
every backend of the test database it does not own, with the pool's idle
connections among them, and then asks the operator API and the agent API.
"""

from __future__ import annotations

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection

from aegis_site.core.audit import Actor
from ops import actions as ops_actions
from tests.roles import request

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

REQUESTS = 24  # three times what the pool can hold


def _terminate_backends() -> int:
    """Every backend of the test database but this test's own: what a failover does to a pool."""
    db = connection.settings_dict
    conninfo = f"host={db.get('HOST') or '127.0.0.1'} port={db.get('PORT') or 5432} user={db.get('USER') or 'postgres'}"
    with psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [db["NAME"]],
        ).fetchall()
    return len(rows)


def test_requests_after_the_backends_were_terminated_all_succeed(roles):
    user = User.objects.create_superuser("ops", password="unused-password")
    _token, secret = ops_actions.issue_api_token(user, "test", Actor("test"))
    base = roles.web()
    for _ in range(8):  # fill the pool with connections that served requests
        assert request(base, "GET", "/api/v1/agents/", token=secret)[0] == 200
    connection.close()  # ours too (given back to this process's pool): it is terminated with the rest
    assert _terminate_backends() >= 1

    statuses = [request(base, "GET", "/api/v1/agents/", token=secret)[0] for _ in range(REQUESTS)]
    statuses += [request(base, "GET", "/healthz/ready", token=secret)[0] for _ in range(4)]
    assert statuses == [200] * len(statuses), roles.log("web")[-3000:]
