"""The admin task page's live tail: a websocket that sends a task's output as it is stored.

``ws/admin/tasks/{id}/output/?attempt=N&after_seq=M``: staff with ``tasks.view_task`` only (anyone
else: accepted, then closed with 4403, which the page tells from a network failure). The socket
sends the chunks after ``after_seq`` of the attempt (default: the task's current attempt when the
socket opens; at most ``BACKLOG_CHUNKS`` of what is already stored, the rest being in the download),
then each new chunk once it is stored. Between reads it waits on the same wakeups as the API's
``?follow=`` (``tasks.engine.output_waits``), holding no database connection.

Messages (JSON): ``{"type": "output", "chunks": [...], "after_seq", "attempt", "attempts",
"max_seq", "missing", "truncated_at", "dropped", "state", "skipped"}`` — chunks as in the API
(``data`` text, or base64 when ``encoding`` says so); ``skipped`` (first message only): chunks
before the backlog that were not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from aegis_site.core.errors import NotFound
from tasks.api.output import page_json
from tasks.engine import output_waits
from tasks.engine.output import OutputPage, read_output

log = logging.getLogger(__name__)

REFUSED = 4403  # as the live updates' socket: not staff, no permission, or logged out
NOT_FOUND = 4404
SERVER_ERROR = 1011  # the page reconnects, from its cursor, after a backoff
BACKLOG_CHUNKS = 500  # what a socket sends of the output stored before it opened; the download has it all
CHUNKS_PER_MESSAGE = 64  # at most 1 MiB of output per message
WAIT_S = 30.0  # one follow; the loop follows again at once


def may_view(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm("tasks.view_task")
    )


def number(params: dict[str, list[str]], name: str) -> int | None:
    """A non-negative integer query parameter; ``None`` when absent or not such a number (ignored)."""
    values = params.get(name)
    if not values or not values[0].isdigit() or len(values[0]) > 18:
        return None
    return int(values[0])


def start(task_id: int, attempt: int | None, after_seq: int | None) -> tuple[OutputPage, int]:
    """The attempt to tail (fixed now) and the cursor to start from: at most ``BACKLOG_CHUNKS`` behind its end."""
    try:
        summary = read_output(task_id, attempt, 2**62, 1)  # reads only the task and the summaries
    finally:
        output_waits.release_connection()
    backlog_start = max(summary.max_seq - BACKLOG_CHUNKS, 0)
    return summary, max(after_seq or 0, backlog_start)


class OutputTailConsumer(AsyncJsonWebsocketConsumer):
    """One socket, one reader task that follows the attempt until the socket closes."""

    reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        if not await database_sync_to_async(may_view)(self.scope.get("user")):
            await self.accept()
            await self.close(code=REFUSED)
            return
        task_id = int(self.scope["url_route"]["kwargs"]["task_id"])
        params = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        asked_after = number(params, "after_seq")
        try:
            summary, after_seq = await sync_to_async(start)(task_id, number(params, "attempt"), asked_after)
        except NotFound:
            await self.accept()
            await self.close(code=NOT_FOUND)
            return
        await self.accept()
        skipped = max(after_seq - (asked_after or 0), 0)
        self.reader = asyncio.create_task(self.tail_until_closed(task_id, summary.attempt, after_seq, skipped))

    async def disconnect(self, code: int) -> None:
        if self.reader is not None:
            reader, self.reader = self.reader, None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """The page only listens. A ``{"type": "ping"}`` gets a pong; anything else is ignored."""
        if not text_data or len(text_data) > 1024:
            return
        with contextlib.suppress(ValueError):
            message = json.loads(text_data)
            if isinstance(message, dict) and message.get("type") == "ping":
                await self.send_json({"type": "pong"})

    async def tail_until_closed(self, task_id: int, attempt: int, after_seq: int, skipped: int) -> None:
        """Tail; a task pruned meanwhile closes with 4404, a failure (database gone) with 1011: the page reconnects."""
        try:
            await self.tail(task_id, attempt, after_seq, skipped)
        except NotFound:
            await self.close(code=NOT_FOUND)
        except Exception:
            log.warning("output tail of task %s failed; the page reconnects", task_id, exc_info=True)
            await self.close(code=SERVER_ERROR)

    async def tail(self, task_id: int, attempt: int, after_seq: int, skipped: int) -> None:
        first, state = True, ""
        while True:

            def read(cursor: int = after_seq) -> OutputPage:
                return read_output(task_id, attempt, cursor, CHUNKS_PER_MESSAGE)

            # The first read answers at once (even with nothing stored): the page learns the state and attempts.
            page = await output_waits.follow(read, task_id, 0 if first else WAIT_S, until_end=False)
            if page.chunks or first or page.state != state:  # the task's end is news even without output
                await self.send_json({"type": "output", **page_json(page), "skipped": skipped if first else 0})
            first, state, after_seq = False, page.state, page.after_seq
