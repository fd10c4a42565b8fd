"""The ground floor: helpers every app uses, importing no app.

Time (``clock``), domain errors with their HTTP status and code (``errors``),
database helpers and lookups (``db``), wakeup over LISTEN/NOTIFY (``wakeup``),
the Prometheus counters (``counters``) and token hashing (``tokens``). Modules
here import only the standard library, Django and third-party packages, never
``registry``, ``tasks``, ``broker`` or ``ops`` (tests/test_ground_floor.py checks it).
"""
