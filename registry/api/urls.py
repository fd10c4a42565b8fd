from django.urls import path, register_converter
from rest_framework.routers import SimpleRouter

from aegis_site.api.converters import IdConverter
from registry.api import agent_views
from registry.api.views import AgentViewSet, EnrolmentTokenViewSet

register_converter(IdConverter, "id")

router = SimpleRouter()
router.register("agents", AgentViewSet, basename="agent")
router.register("enrolment-tokens", EnrolmentTokenViewSet, basename="enrolment-token")

urlpatterns = [
    path("agent/enrol/", agent_views.EnrolView.as_view(), name="agent-enrol"),
    path("agent/token/", agent_views.AgentTokenView.as_view(), name="agent-token"),
    path("agent/token/refresh/", agent_views.RefreshView.as_view(), name="agent-token-refresh"),
    path("agent/me/", agent_views.MeView.as_view(), name="agent-me"),
    path("agent/heartbeat/", agent_views.HeartbeatView.as_view(), name="agent-heartbeat"),
    path("agent/tasks/", agent_views.AgentTaskListView.as_view(), name="agent-task-list"),
    path("agent/tasks/claim/", agent_views.claim, name="agent-claim"),  # async: a long poll holds no connection
    path("agent/tasks/<id:task_id>/", agent_views.AgentTaskDetailView.as_view(), name="agent-task-detail"),
    path("agent/tasks/<id:task_id>/events/", agent_views.AgentTaskEventView.as_view(), name="agent-task-events"),
    path("auth/token/", agent_views.OperatorTokenView.as_view(), name="auth-token"),
    path("auth/token/refresh/", agent_views.RefreshView.as_view(), name="auth-token-refresh"),
    *router.urls,
]
