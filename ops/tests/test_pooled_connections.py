"""The long-running roles check a pooled connection out thousands of times: nothing may pile up per checkout."""

from __future__ import annotations

import pytest
from django.db import connection

from aegis_site.core import counters

CHECKOUTS = 2000  # the old code raised RecursionError after ~978


def _observed() -> float:
    return sum(
        sample.value
        for metric in counters.DB_QUERY_DURATION.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


@pytest.mark.django_db(transaction=True)
def test_two_thousand_checkouts_keep_one_query_timer():
    """Each ``close()`` hands the connection back (to the pool on PostgreSQL), each query checks one out again."""
    before = _observed()
    for _ in range(CHECKOUTS):
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    assert connection.execute_wrappers.count(counters._timed) == 1
    assert _observed() - before >= CHECKOUTS  # still timed: the wrapper is installed, once


@pytest.mark.postgres
def test_the_default_settings_use_the_pool():
    """The PostgreSQL pass runs what users run: the psycopg pool, not plain connections."""
    assert connection.settings_dict["OPTIONS"].get("pool"), "DB_POOL_SIZE was overridden for the test run"
