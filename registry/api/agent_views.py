"""The agent side of the HTTP API: for agents that cannot hold an MQTT session.

An agent authenticates with its own token (or a JWT exchanged for it) and sees
only itself and its own tasks: any other task id answers 404, exactly like an id
that does not exist. Every write calls the same actions as the MQTT bridge.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponseBase
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotAuthenticated, Throttled
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from aegis_site.api import errors
from aegis_site.api.authentication import AgentTokenAuthentication, client_address
from aegis_site.api.exceptions import Conflict
from aegis_site.api.permissions import IsAgent
from aegis_site.api.principals import AgentPrincipal
from aegis_site.api.strict import refuse_body
from aegis_site.api.throttling import EndpointThrottle
from aegis_site.core import clock
from aegis_site.core.errors import NotFound
from broker.protocol import MAX_ERROR_CODE_CHARS, MAX_ERROR_MESSAGE_CHARS, MAX_MESSAGE_BYTES
from registry import actions as registry_actions
from registry.api.serializers import (
    AgentSerializer,
    ClaimAnswerSerializer,
    ClaimSerializer,
    EnrolSerializer,
    HeartbeatAnswerSerializer,
    HeartbeatSerializer,
    IssuedTokenSerializer,
    JwtPairSerializer,
)
from registry.models import Agent, Transport
from tasks import actions as task_actions
from tasks.engine.assignment import Assignment
from tasks.engine.longpoll import WAITS
from tasks.engine.reports import Report
from tasks.models import HELD_STATES, Task

log = logging.getLogger("aegis.api")


def principal(request: Request) -> AgentPrincipal:
    user = request.user
    if not isinstance(user, AgentPrincipal):  # IsAgent guarantees it; -O must not remove the check
        raise NotAuthenticated()
    return user


class AgentView(APIView):
    permission_classes = [IsAgent]
    max_body_bytes = MAX_MESSAGE_BYTES  # what an agent sends is capped like its MQTT message (parsers.body_limit)


class EnrolView(APIView):
    """Trade a bootstrap (enrolment) token for the agent's own token, shown once."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [EndpointThrottle]
    throttle_scope = "enrol"
    max_body_bytes = MAX_MESSAGE_BYTES

    @extend_schema(request=EnrolSerializer, responses={201: IssuedTokenSerializer}, auth=[])
    def post(self, request: Request) -> Response:
        body = EnrolSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            agent, credential, token = registry_actions.enrol(
                data["enrolment_token"],
                data["agent_id"],
                name=data["name"],
                labels=data["labels"],
                capabilities=data["capabilities"],
                max_concurrency=data.get("max_concurrency"),
                version=data["version"],
                transport=Transport(data["transport"]) if "transport" in data else None,
            )
        except registry_actions.EnrolmentRefused as refused:
            log.warning(
                "enrolment_refused",
                extra={
                    "event": "enrolment_refused",
                    "client": client_address(request),
                    "code": refused.code,
                    "agent_id": data["agent_id"],
                    "token_prefix": data["enrolment_token"][:8],
                    "fields": refused.fields,
                },
            )
            if not refused.fields:
                raise
            # Outside the token's policy: the usual error shape, with what was refused per field.
            return Response(errors.body(refused.code, str(refused), refused.fields), status=status.HTTP_403_FORBIDDEN)
        answer = {"agent_id": agent.pk, "credential_id": credential.pk, "token": token}
        return Response(IssuedTokenSerializer(answer).data, status=status.HTTP_201_CREATED)


class AgentTokenView(AgentView):
    """Exchange the agent's long-lived token for a short-lived JWT pair (revoked with the token)."""

    authentication_classes = [AgentTokenAuthentication]
    throttle_classes = [EndpointThrottle]
    throttle_scope = "auth"

    @extend_schema(request=None, responses={201: JwtPairSerializer})
    def post(self, request: Request) -> Response:
        refuse_body(request.data)
        me = principal(request)
        refresh = RefreshToken()
        refresh["agent_id"] = me.agent_id
        refresh["credential_id"] = me.credential_id
        body = {"access": str(refresh.access_token), "refresh": str(refresh)}
        return Response(JwtPairSerializer(body).data, status=status.HTTP_201_CREATED)


class MeView(AgentView):
    @extend_schema(responses=AgentSerializer)
    def get(self, request: Request) -> Response:
        return Response(AgentSerializer(Agent.objects.get(pk=principal(request).agent_id)).data)


class HeartbeatView(AgentView):
    """The agent is alive: online now, ``last_seen_at`` moved; the answer says whether it should drain."""

    @extend_schema(request=HeartbeatSerializer, responses=HeartbeatAnswerSerializer)
    def post(self, request: Request) -> Response:
        HeartbeatSerializer(data=request.data).is_valid(raise_exception=True)
        now = clock.now()
        # An HTTP heartbeat makes it an HTTP agent: the dispatcher stops pushing to its (unread) MQTT inbox.
        registry_actions.mark_online(principal(request).agent_id, now, transport=Transport.HTTP)
        agent = Agent.objects.only("admin_state").get(pk=principal(request).agent_id)
        return Response(HeartbeatAnswerSerializer({"admin_state": agent.admin_state, "server_time": now}).data)


class PendingClaim(Response):
    """The answer of a claim that found nothing and may wait: ``claim`` (below) waits, claims again, fills it in."""

    def __init__(self, agent_id: str, max_tasks: int, deadline: float, mark: int) -> None:
        super().__init__({"tasks": []})
        self.agent_id = agent_id
        self.max_tasks = max_tasks
        self.deadline = deadline
        self.mark = mark


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
        if me.agent.transport != Transport.HTTP:
            registry_actions.use_transport(me.agent_id, Transport.HTTP)
        max_tasks, wait_s = body.validated_data["max_tasks"], body.validated_data["wait_s"]
        deadline = time.monotonic() + wait_s
        mark = WAITS.mark()
        assignments = task_actions.claim_tasks(me.agent_id, max_tasks)
        if assignments or wait_s <= 0:
            return Response(claim_answer(assignments))
        if not WAITS.reserve(me.agent_id, settings.API_CLAIM_MAX_WAITS_PER_AGENT):
            raise Throttled(wait=1, detail="Too many waiting claims of this agent; retry when one has answered.")
        release_connection()
        return PendingClaim(me.agent_id, max_tasks, deadline, mark)


def claim_answer(assignments: list[Assignment]) -> dict[str, Any]:
    return {"tasks": [assignment.as_message() for assignment in assignments]}


def release_connection() -> None:
    """Give this thread's database connection back (to the pool, when it is on) before a wait.

    Inside a transaction (a test's) the connection stays: closing it would end that transaction.
    """
    if not connection.in_atomic_block:
        connection.close()


def claim_again(agent_id: str, max_tasks: int) -> list[Assignment]:
    try:
        return task_actions.claim_tasks(agent_id, max_tasks)
    finally:
        release_connection()


_claim_view = ClaimView.as_view()


async def claim(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
    """``POST agent/tasks/claim/``: ``ClaimView`` answers, or hands back a ``PendingClaim`` to wait for.

    The wait is an ``await`` on the process's wakeups (``tasks.engine.longpoll``):
    no connection is held and no thread blocks. If the client goes away, Django
    cancels this coroutine and the ``finally`` frees the agent's wait slot.
    """
    response = await sync_to_async(_claim_view)(request, *args, **kwargs)
    if not isinstance(response, PendingClaim):
        return response
    try:
        mark = response.mark
        while time.monotonic() < response.deadline:
            mark = await WAITS.wait(response.agent_id, mark, response.deadline - time.monotonic())
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


class AgentTaskSerializer(serializers.ModelSerializer[Task]):
    """A task as its agent sees it (all read-only: the agent changes it by posting events)."""

    payload = serializers.JSONField(source="job.payload", read_only=True)

    class Meta:
        model = Task
        fields = [
            "id",
            "job_id",
            "kind",
            "state",
            "attempt",
            "payload",
            "progress",
            "result",
            "error",
            "assigned_at",
            "started_at",
            "finished_at",
            "lease_expires_at",
            "cancel_requested_at",
        ]
        read_only_fields = fields


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


class TaskEventSerializer(serializers.Serializer[Any]):
    """One report on one attempt. ``event_id`` makes a retried POST count once."""

    type = serializers.ChoiceField(choices=["accepted", "progress", "succeeded", "failed", "rejected"])
    attempt = serializers.IntegerField(min_value=1, max_value=32767)
    event_id = serializers.RegexField(r"^[A-Za-z0-9_-]{1,32}$", required=False)
    progress = serializers.DictField(required=False)
    result = serializers.JSONField(required=False)
    error = serializers.DictField(
        required=False,
        help_text=f'For failed: {{"code": 1-{MAX_ERROR_CODE_CHARS} characters, '
        f'"message": up to {MAX_ERROR_MESSAGE_CHARS}}}.',
    )
    retryable = serializers.BooleanField(default=True)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["type"] == "progress" and "progress" not in attrs:
            raise serializers.ValidationError({"progress": ["Required for a progress event."]})
        if attrs["type"] == "failed":
            error = attrs.get("error") or {}
            code, message = error.get("code"), error.get("message")
            if not isinstance(code, str) or not isinstance(message, str):
                raise serializers.ValidationError({"error": ["A failed event needs error.code and error.message."]})
            # The MQTT protocol's bounds (broker.protocol), so both transports store the same errors.
            if not 1 <= len(code) <= MAX_ERROR_CODE_CHARS or len(message) > MAX_ERROR_MESSAGE_CHARS:
                raise serializers.ValidationError(
                    {
                        "error": [
                            f"error.code: 1-{MAX_ERROR_CODE_CHARS} characters, error.message: at most "
                            f"{MAX_ERROR_MESSAGE_CHARS}."
                        ]
                    }
                )
        return attrs


class EventAnswerSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=["applied", "duplicate"], read_only=True)
    state = serializers.CharField(read_only=True, allow_blank=True)


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


class OperatorTokenView(TokenObtainPairView):
    """An operator's username and password for a short-lived JWT pair (throttled like every credential check)."""

    throttle_classes = [EndpointThrottle]
    throttle_scope = "auth"


class RefreshView(TokenRefreshView):
    """A refresh token (an operator's or an agent's) for a new access token."""

    throttle_classes = [EndpointThrottle]
    throttle_scope = "auth"
