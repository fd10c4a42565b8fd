"""The task page's artifacts: what the task uploaded, each with a download link (``{% task_artifacts task %}``).

The links go to the API's download (``/api/v1/tasks/{id}/artifacts/{aid}/download/``), which
the admin session authenticates and which checks ``tasks.view_task``, like the page itself;
it answers a 302 to the store's (or the local backend's) time-limited URL. One query per page.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import reverse

from tasks.models import ArtifactState, TaskArtifact

PAGE_LIMIT = 200  # the per-task count limit's default is 100: more only after the limit was raised


@dataclass(frozen=True)
class ArtifactRow:
    artifact: TaskArtifact
    download_url: str  # empty while the upload is not verified


def rows(task_id: int) -> tuple[list[ArtifactRow], bool]:
    """The task's artifacts, oldest first, and whether more than ``PAGE_LIMIT`` were left out."""
    artifacts = list(TaskArtifact.objects.filter(task_id=task_id).order_by("id")[: PAGE_LIMIT + 1])
    shown = [
        ArtifactRow(
            artifact,
            reverse("v1-tasks:task-artifact-download", kwargs={"task_id": task_id, "artifact_id": artifact.pk})
            if artifact.state == ArtifactState.AVAILABLE
            else "",
        )
        for artifact in artifacts[:PAGE_LIMIT]
    ]
    return shown, len(artifacts) > PAGE_LIMIT
