"""The agent's task endpoints over HTTP: claim work (long poll), read its tasks, report on them.

Like the rest of the agent side (``registry.api.agent_views``), an agent sees
only its own tasks: any other task id answers 404, exactly like an id that does
not exist. Every write calls the same actions as the MQTT bridge.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponseBase
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.response import Response

from aegis_site.api.exceptions import Conflict
from aegis_site.core.errors import NotFound
from registry.api.agent_views import AgentView, principal
from tasks import actions as task_actions
from tasks.api.agent_serializers import (
    AgentTaskSerializer,
    ClaimAnswerSerializer,
    ClaimSerializer,
    EventAnswerSerializer,
    TaskEventSerializer,
)
from tasks.engine.assignment import Assignment
from tasks.engine.longpoll import WAITS, let_request_thread_go
from tasks.engine.reports import Report
from tasks.models import HELD_STATES, Task


class PendingClaim(Response):
    """The answer of a claim that found nothing and may wait: ``claim`` (below) waits, claims again, fills it in."""

    def __init__(self, agent_id: str, max_tasks: int, deadline: float, mark: int, released: bool) -> None:
        super().__init__({"tasks": []})
        self.agent_id = agent_id
        self.max_tasks = max_tasks
        self.deadline = deadline
        self.mark = mark
        self.released = released  # the connection went back: the request's thread may end while it waits


class ClaimView(AgentView):
    """Claim up to ``max_tasks``; with ``wait_s`` wait for work until the wait is over (long poll).

    Claiming over HTTP makes the caller an HTTP agent: the dispatcher no longer
    pushes its tasks to an MQTT inbox it does not read. An agent may have
    ``API_CLAIM_MAX_WAITS_PER_AGENT`` waiting claims at once; one more answers 429.
    """

    @extend_schema(request=ClaimSerializer, responses=ClaimAnswerSerializer)
    def post(self, request: Request) -> Response:
        body = ClaimSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        me = principal(request)
        max_tasks, wait_s = body.validated_data["max_tasks"], body.validated_data["wait_s"]
        deadline = time.monotonic() + wait_s
        mark = WAITS.mark()
        assignments = task_actions.claim_over_http(me.agent, max_tasks)
        if assignments or wait_s <= 0:
            return Response(claim_answer(assignments))
        if not WAITS.reserve(me.agent_id, settings.API_CLAIM_MAX_WAITS_PER_AGENT):
            raise Throttled(wait=1, detail="Too many waiting claims of this agent; retry when one has answered.")
        return PendingClaim(me.agent_id, max_tasks, deadline, mark, released=release_connection())


def claim_answer(assignments: list[Assignment]) -> dict[str, Any]:
    return {"tasks": [assignment.as_message() for assignment in assignments]}


def release_connection() -> bool:
    """Give this thread's database connection back (to the pool, when it is on) before a wait.

    Inside a transaction (a test's) the connection stays (``False``): closing it would end that transaction.
    """
    if connection.in_atomic_block:
        return False
    connection.close()
    return True


def claim_again(agent_id: str, max_tasks: int) -> list[Assignment]:
    try:
        return task_actions.claim_tasks(agent_id, max_tasks)
    finally:
        release_connection()


_claim_view = ClaimView.as_view()
_claim_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def claim_slots() -> asyncio.Semaphore:
    """How many claims of this process's event loop may be at the database at once (the pool's own size).

    Each claim runs in a thread of its request's own, with a connection from the pool for the
    transaction. A NOTIFY for work any agent may take wakes every waiting claim at once: a
    thousand threads then queued for the pool's eight connections, and those that waited
    past ``DB_POOL_TIMEOUT`` answered 500. Queued here, they wait in the event loop instead,
    holding neither a thread nor a place in the pool's queue, and leave the pool's overflow
    to the process's other requests.
    """
    loop = asyncio.get_running_loop()
    slots = _claim_slots.get(loop)
    if slots is None:
        pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
        size = int(pool.get("min_size", 4)) if isinstance(pool, dict) else 4
        slots = _claim_slots[loop] = asyncio.Semaphore(max(size, 1))
    return slots


async def claim(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
    """``POST agent/tasks/claim/``: ``ClaimView`` answers, or hands back a ``PendingClaim`` to wait for.

    The wait is an ``await`` on the process's wakeups (``tasks.engine.longpoll``):
    no connection is held, no thread blocks, and the request's sync thread ends
    before each wait (``let_request_thread_go``). If the client goes away, Django
    cancels this coroutine and the ``finally`` frees the agent's wait slot.
    """
    async with claim_slots():
        response = await sync_to_async(_claim_view)(request, *args, **kwargs)
    if not isinstance(response, PendingClaim):
        return response
    try:
        mark = response.mark
        while time.monotonic() < response.deadline:
            if response.released:
                let_request_thread_go()
            mark = await WAITS.wait(response.agent_id, mark, response.deadline - time.monotonic())
            async with claim_slots():
                assignments = await sync_to_async(claim_again)(response.agent_id, response.max_tasks)
            if assignments:
                response.data = claim_answer(assignments)
                break
    finally:
        WAITS.release(response.agent_id)
    return response


# What drf-spectacular and Django read off a view function.
claim.cls = ClaimView  # type: ignore[attr-defined]
claim.initkwargs = {}  # type: ignore[attr-defined]
claim.csrf_exempt = True  # type: ignore[attr-defined]


def own_task(agent_id: str, task_id: int) -> Task:
    task = Task.objects.select_related("job").filter(pk=task_id, agent_id=agent_id).first()
    if task is None:
        raise NotFound(f"task {task_id} does not exist")  # someone else's task: the same answer
    return task


class AgentTaskListView(AgentView):
    """The tasks this agent holds now (assigned or running), oldest first."""

    @extend_schema(responses=AgentTaskSerializer(many=True))
    def get(self, request: Request) -> Response:
        held = (
            Task.objects.select_related("job")
            .filter(agent_id=principal(request).agent_id, state__in=HELD_STATES)
            .order_by("id")[:1000]
        )
        return Response(AgentTaskSerializer(held, many=True).data)


class AgentTaskDetailView(AgentView):
    @extend_schema(responses=AgentTaskSerializer)
    def get(self, request: Request, task_id: int) -> Response:
        return Response(AgentTaskSerializer(own_task(principal(request).agent_id, task_id)).data)


class AgentTaskEventView(AgentView):
    """Report on a task this agent holds. Fenced by attempt: a report for an older attempt answers 409."""

    @extend_schema(request=TaskEventSerializer, responses=EventAnswerSerializer)
    def post(self, request: Request, task_id: int) -> Response:
        body = TaskEventSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        agent_id = principal(request).agent_id
        report = Report(
            kind=data["type"],
            task_id=task_id,
            attempt=data["attempt"],
            # The agent's own id, as over MQTT: stored once per (agent, id), so it never shadows another agent's.
            message_id=data.get("event_id"),
            progress=data.get("progress"),
            result=data.get("result"),
            error=data.get("error"),
            retryable=data["retryable"],
            reason=data["reason"],
        )
        outcome = task_actions.report(agent_id, report)
        if outcome.status == "not_found":
            raise NotFound(f"task {task_id} does not exist")
        if outcome.status == "stale":
            raise Conflict(outcome.detail or "stale report", code="stale")
        return Response(EventAnswerSerializer({"status": outcome.status, "state": outcome.state}).data)
