"""``/api/v1/jobs/`` and ``/api/v1/tasks/`` (included under the ``v1-tasks`` namespace)."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from tasks.api.views import JobViewSet, TaskViewSet

router = SimpleRouter(use_regex_path=False)  # path converters: integer ids in the schema too
router.register("jobs", JobViewSet, basename="job")
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = router.urls
