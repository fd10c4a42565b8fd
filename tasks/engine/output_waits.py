"""Readers following a task's output wait here, holding no database connection while they wait.

Owns the output channel: the bridge's batch (``tasks.engine.logs``) sends a NOTIFY on
``aegis_task_output`` naming the tasks it stored chunks for, at its commit; one LISTEN
thread per process (``tasks.engine.longpoll.Waits``, keyed by task id) wakes the followers
of those tasks, each of which reads again with a pooled connection held for that one read.
SQLite has no NOTIFY: followers poll every ``POLL_S``.

Used by the API's ``?follow=`` (``tasks.api.output``) and by the admin's live tail
(``tasks.live.output_tail``). ``FOLLOWERS`` caps how many follow at once in this process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection

from asgiref.sync import sync_to_async
from django.db import connection

from aegis_site.core import wakeup
from tasks.engine.longpoll import Waits, let_request_thread_go
from tasks.engine.output import OutputPage
from tasks.models import TERMINAL_STATES

CHANNEL = "aegis_task_output"
POLL_S = 0.25  # SQLite, or the LISTEN connection is being re-established
# Listening: a NOTIFY wakes a follower at once; this bounds how late it sees its task end (no NOTIFY says so).
RECHECK_S = 1.0

WAITS = Waits(channel=CHANNEL, recheck_s=RECHECK_S, poll_s=POLL_S, name="output")


def notify_on_commit(task_ids: Collection[int]) -> None:
    """Wake the followers of ``task_ids`` when the current transaction commits (past 50 ids: everyone looks again)."""
    wakeup.notify_on_commit(CHANNEL, {str(task_id) for task_id in task_ids})


class Followers:
    """A count of the followers of this process, capped: past the cap the caller refuses (503)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def reserve(self, limit: int) -> bool:
        with self._lock:
            if self._count >= limit:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


FOLLOWERS = Followers()


def release_connection() -> None:
    """Give this thread's database connection back (to the pool, when it is on) before a wait.

    Inside a transaction (a test's) the connection stays: closing it would end that transaction.
    """
    if not connection.in_atomic_block:
        connection.close()


def finished(page: OutputPage) -> bool:
    return page.state in TERMINAL_STATES


async def follow(
    read: Callable[[], OutputPage], task_id: int, timeout: float, until_end: bool = True, gather_s: float = 0.0
) -> OutputPage:
    """Read until the page has chunks, the task is in a final state, or ``timeout`` seconds have passed.

    ``read`` runs in a worker thread and gives its connection back after each read; between
    reads this coroutine awaits the task's wakeups, holding nothing. ``until_end=False`` (the
    admin's tail) keeps waiting past the task's end: a late chunk of its attempt may still come.
    ``gather_s``: chunks that come sooner than this after the follow began wait until then (unless
    they fill the page), so one answer carries every commit of that time: a reader of a busy task
    asks at most about 1/``gather_s`` times a second instead of once per bridge commit.
    """

    def read_and_release() -> OutputPage:
        try:
            return read()
        finally:
            release_connection()

    started = time.monotonic()
    deadline = started + timeout
    key = str(task_id)
    while True:
        mark = WAITS.mark()  # before reading: a NOTIFY between the read and the wait ends the wait at once
        page = await sync_to_async(read_and_release)()
        now = time.monotonic()
        remaining = deadline - now
        if page.chunks and not page.more and now - started < gather_s:
            await asyncio.sleep(started + gather_s - now)
            return await sync_to_async(read_and_release)()
        if page.chunks or (until_end and finished(page)) or remaining <= 0:
            return page
        let_request_thread_go()  # the connection went back in read_and_release: no thread held while waiting
        await WAITS.wait(key, mark, remaining)
