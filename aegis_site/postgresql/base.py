"""``aegis_site.postgresql``: Django's PostgreSQL ``DatabaseWrapper`` whose pool sweeps itself on a dead connection."""

from __future__ import annotations

import logging
from typing import Any

from django.db.backends.postgresql import base

log = logging.getLogger("aegis.db")


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        pool = super().pool  # type: ignore[misc]  # django-stubs do not know the pool (Django 5.1+)
        if pool is not None and getattr(pool, "_aegis_sweeps", False) is False:
            # Django passed check=ConnectionPool.check_connection (CONN_HEALTH_CHECKS); wrap it, once per pool.
            pool._check = _sweeping_check(pool, pool._check)
            pool._aegis_sweeps = True
        return pool


def _sweeping_check(pool: Any, check: Any) -> Any:
    def sweeping_check(conn: Any) -> None:
        try:
            check(conn)
        except Exception:
            log.warning("dead pooled connection replaced; checking the pool's idle connections")
            try:
                pool.check()
            except Exception:  # the database is away altogether: getconn keeps trying until its timeout
                log.warning("could not check the pool's idle connections", exc_info=True)
            raise

    return sweeping_check
