"""The agent side of the HTTP API, for agents that cannot hold an MQTT session: enrol, tokens, me, heartbeat.

An agent authenticates with its own token (or a JWT exchanged for it) and sees
only itself; its task endpoints (claim, its tasks, events) build on ``AgentView``
in ``tasks.api.agent_views``. Every write calls the same actions as the MQTT bridge.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.views import TokenRefreshView

from aegis_site.api import errors
from aegis_site.api.authentication import client_address
from aegis_site.api.permissions import IsAgent
from aegis_site.api.strict import refuse_body
from aegis_site.api.throttling import EndpointThrottle
from aegis_site.core import clock
from registry import actions as registry_actions
from registry.api.authentication import AgentTokenAuthentication
from registry.api.principals import AgentPrincipal
from registry.api.serializers import (
    AgentSerializer,
    EnrolSerializer,
    HeartbeatAnswerSerializer,
    HeartbeatSerializer,
    IssuedTokenSerializer,
    JwtPairSerializer,
)
from registry.models import Agent, Transport

# An agent's MQTT message size, broker.protocol.MAX_MESSAGE_BYTES (registry imports no broker): what it sends
# over HTTP is capped the same. tests/test_bad_input.py posts reports just over and under the protocol's size,
# so the two cannot drift apart unnoticed.
AGENT_MAX_BODY_BYTES: Final = 256 * 1024

log = logging.getLogger("aegis.api")


def principal(request: Request) -> AgentPrincipal:
    user = request.user
    if not isinstance(user, AgentPrincipal):  # IsAgent guarantees it; -O must not remove the check
        raise NotAuthenticated()
    return user


class AgentView(APIView):
    permission_classes = [IsAgent]
    max_body_bytes = AGENT_MAX_BODY_BYTES  # what an agent sends is capped like its MQTT message (parsers.body_limit)


class EnrolView(APIView):
    """Trade a bootstrap (enrolment) token for the agent's own token, shown once."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [EndpointThrottle]
    throttle_scope = "enrol"
    max_body_bytes = AGENT_MAX_BODY_BYTES

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


class RefreshView(TokenRefreshView):
    """A refresh token (an operator's or an agent's) for a new access token."""

    throttle_classes = [EndpointThrottle]
    throttle_scope = "auth"
