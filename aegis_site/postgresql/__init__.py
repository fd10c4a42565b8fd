"""Django's PostgreSQL backend with a pool that recovers at once when its connections die (``ENGINE`` in settings).

Django builds the psycopg pool with ``check=ConnectionPool.check_connection``
when ``CONN_HEALTH_CHECKS`` is on. That check finds a dead connection, but the
pool then waits 1 s, 2 s, 4 s... before trying the next one: after a failover,
when every idle connection is dead, a request waits out ``DB_POOL_TIMEOUT`` and
answers 500. This backend's check makes the first dead connection found sweep
all the idle ones (``pool.check()``: dead ones are replaced in the background),
so the one retry that follows gets a live connection.
"""
