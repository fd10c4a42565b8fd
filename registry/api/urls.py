"""``/api/v1/agent/`` (enrol, tokens, me, heartbeat), ``/api/v1/agents/`` and ``/api/v1/enrolment-tokens/``.

Included under the ``v1-registry`` namespace; the agent's task endpoints are in ``tasks.api.urls``.
"""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from registry.api import agent_views
from registry.api.views import AgentViewSet, EnrolmentTokenViewSet

router = SimpleRouter()
router.register("agents", AgentViewSet, basename="agent")
router.register("enrolment-tokens", EnrolmentTokenViewSet, basename="enrolment-token")

urlpatterns = [
    path("agent/enrol/", agent_views.EnrolView.as_view(), name="agent-enrol"),
    path("agent/token/", agent_views.AgentTokenView.as_view(), name="agent-token"),
    path("agent/token/refresh/", agent_views.RefreshView.as_view(), name="agent-token-refresh"),
    path("agent/me/", agent_views.MeView.as_view(), name="agent-me"),
    path("agent/heartbeat/", agent_views.HeartbeatView.as_view(), name="agent-heartbeat"),
    *router.urls,
]
