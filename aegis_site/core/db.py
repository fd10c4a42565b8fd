"""Transaction helpers shared by the engine's actions."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from django.db import OperationalError, connection, transaction
from django.db.models import Field, Lookup

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)

_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def _is_retryable(exc: OperationalError) -> bool:
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    return connection.vendor == "sqlite" and "database is locked" in str(exc)


_JOINED: ContextVar[bool] = ContextVar("aegis_joined_transaction", default=False)
_MEMO: ContextVar[dict[object, Any] | None] = ContextVar("aegis_transaction_memo", default=None)


@contextlib.contextmanager
def one_transaction() -> Iterator[None]:
    """A transaction the actions called inside join whole: no savepoint each, an error inside fails it all.

    For callers that never recover from an action's error inside their transaction (the
    bridge's batch is retried whole): each nested action saves a SAVEPOINT and a RELEASE
    round trip. Elsewhere nested actions keep their savepoint, so that a caller may catch
    an action's error and go on.
    """
    token = _JOINED.set(True)
    memo = _MEMO.set({})
    try:
        with transaction.atomic():
            yield
    finally:
        _JOINED.reset(token)
        _MEMO.reset(memo)


def transaction_memo() -> dict[object, Any] | None:
    """Inside ``one_transaction``: a dict that lives as long as it, for answers that hold for the whole batch
    (whether anyone subscribes to an event type: asked once per batch, not once per agent). Else None."""
    return _MEMO.get()


def atomic_with_retry(func: Callable[P, R], attempts: int = 5) -> Callable[P, R]:
    """Run ``func`` in one transaction; run it again if the database broke a lock cycle.

    Lock order is tasks before jobs almost everywhere, but an abort cancels queued
    rows that a concurrent claimer may hold, so PostgreSQL can report a deadlock;
    the loser simply runs again. Nested inside an outer transaction it runs once
    (inside ``one_transaction``: as part of it, with no savepoint).
    """

    @functools.wraps(func)
    def in_transaction(*args: P.args, **kwargs: P.kwargs) -> R:
        with transaction.atomic():
            return func(*args, **kwargs)

    retrying = retry_on_conflict(in_transaction, attempts)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if connection.in_atomic_block:
            with transaction.atomic(savepoint=not _JOINED.get()):
                return func(*args, **kwargs)
        return retrying(*args, **kwargs)

    return wrapper


def retry_on_conflict(func: Callable[P, R], attempts: int = 5) -> Callable[P, R]:
    """Call ``func`` (which runs whole transactions) again when the database broke a lock cycle."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, attempts + 1):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                if attempt == attempts or not _is_retryable(exc):
                    raise
                log.warning("retrying %s after %s (attempt %d)", func.__name__, exc, attempt)
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    return wrapper


def supports_skip_locked() -> bool:
    return bool(connection.features.has_select_for_update_skip_locked)


@Field.register_lookup
class InArray(Lookup):
    """``field__in_array=[...]``: ``= ANY(%s)`` with one array parameter on PostgreSQL.

    A plain ``__in`` renders one placeholder per value, so the SQL text changes with
    the batch size and psycopg parses it again every time (about a millisecond for
    a hundred ids); one array parameter keeps the text constant. Other databases
    get the ordinary ``IN (...)``.
    """

    lookup_name = "in_array"
    prepare_rhs = False

    def get_prep_lookup(self) -> list[Any]:
        return [self.lhs.output_field.get_prep_value(value) for value in self.rhs]

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = list(self.rhs)
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY(%s)", [*lhs_params, values]
        if not values:
            return "1 = 0", list(lhs_params)
        return f"{lhs} IN ({', '.join(['%s'] * len(values))})", [*lhs_params, *values]
