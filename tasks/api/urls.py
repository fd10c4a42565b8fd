"""``/api/v1/jobs/``, ``/api/v1/tasks/`` and the agent's ``/api/v1/agent/tasks/`` (the ``v1-tasks`` namespace)."""

from __future__ import annotations

from django.urls import path, register_converter
from rest_framework.routers import SimpleRouter

from aegis_site.api.converters import IdConverter
from tasks.api import agent_views, output
from tasks.api.artifacts import (
    AgentArtifactCompleteView,
    AgentArtifactView,
    TaskArtifactDownloadView,
    TaskArtifactListView,
    local_object,
)
from tasks.api.views import JobViewSet, TaskViewSet

register_converter(IdConverter, "id")

router = SimpleRouter(use_regex_path=False)  # path converters: integer ids in the schema too
router.register("jobs", JobViewSet, basename="job")
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = [
    path("agent/tasks/", agent_views.AgentTaskListView.as_view(), name="agent-task-list"),
    path("agent/tasks/claim/", agent_views.claim, name="agent-claim"),  # async: a long poll holds no connection
    path("agent/tasks/<id:task_id>/", agent_views.AgentTaskDetailView.as_view(), name="agent-task-detail"),
    path("agent/tasks/<id:task_id>/events/", agent_views.AgentTaskEventView.as_view(), name="agent-task-events"),
    path("agent/tasks/<id:task_id>/artifacts/", AgentArtifactView.as_view(), name="agent-task-artifacts"),
    path(
        "agent/tasks/<id:task_id>/artifacts/<id:artifact_id>/complete/",
        AgentArtifactCompleteView.as_view(),
        name="agent-task-artifact-complete",
    ),
    path("tasks/<id:task_id>/artifacts/", TaskArtifactListView.as_view(), name="task-artifacts"),
    path(
        "tasks/<id:task_id>/artifacts/<id:artifact_id>/download/",
        TaskArtifactDownloadView.as_view(),
        name="task-artifact-download",
    ),
    path("artifacts/local/<str:token>/", local_object, name="artifact-local"),  # the local backend's signed URLs
    path("tasks/<id:pk>/logs/", output.logs, name="task-logs"),  # async: a follow holds no connection
    *router.urls,
]
