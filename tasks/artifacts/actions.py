"""Every change of an artifact row: ask to upload, complete (verify) an upload, delete with the tasks.

The object store is outside the database's transactions, so the order is chosen for a
crash at any point to leave nothing listed that is not stored: a row is ``pending`` until
``complete_upload`` has read the stored object back (size and sha256) and only then marks it
``available``; retention deletes objects before their rows (a leftover row points at nothing
and the next prune deletes it again; a leftover object is never listed).
"""

from __future__ import annotations

import hashlib
import secrets
from collections import defaultdict
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Sum

from aegis_site.core import clock
from aegis_site.core.errors import NotFound
from tasks.artifacts import storage
from tasks.artifacts.errors import ArtifactRefused
from tasks.artifacts.names import clean_name
from tasks.artifacts.storage import Upload
from tasks.models import ArtifactState, Task, TaskArtifact


def _held_task(agent_id: str, task_id: int, *, lock: bool = False) -> Task:
    """The task, if this agent holds it (any other task answers 404, like the other agent endpoints)."""
    tasks = Task.objects.select_for_update(no_key=True) if lock else Task.objects.all()
    task = tasks.only("id", "agent_id", "attempt", "state").filter(pk=task_id, agent_id=agent_id).first()
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    return task


def _stale(task: Task, attempt: int) -> ArtifactRefused:
    return ArtifactRefused(
        "stale_attempt", f"attempt {attempt} is not the task's current attempt ({task.attempt})", status=409
    )


def request_upload(
    agent_id: str, task_id: int, attempt: int, name: str, size: int, sha256: str, base_url: str
) -> tuple[TaskArtifact, Upload]:
    """A pending artifact of the task's current attempt and the pre-signed URL to PUT its bytes to.

    Limits (``TASK_ARTIFACT_MAX_BYTES``, ``..._PER_TASK``, ``TASK_ARTIFACT_MAX_COUNT_PER_TASK``)
    count every artifact of the task, pending ones too; the task row is locked so that two
    concurrent requests cannot both pass them. Asking again for a pending name replaces it
    (a new key, a new URL); an available name is a 409.
    """
    name = clean_name(name)
    if size > settings.TASK_ARTIFACT_MAX_BYTES:
        raise ArtifactRefused(
            "too_large", f"An artifact is at most {settings.TASK_ARTIFACT_MAX_BYTES} bytes.", field="size"
        )
    backend = storage.current()
    with transaction.atomic():
        task = _held_task(agent_id, task_id, lock=True)
        if attempt != task.attempt:
            raise _stale(task, attempt)
        others = TaskArtifact.objects.filter(task_id=task_id).exclude(attempt=attempt, name=name)
        if others.count() >= settings.TASK_ARTIFACT_MAX_COUNT_PER_TASK:
            raise ArtifactRefused(
                "too_many", f"A task has at most {settings.TASK_ARTIFACT_MAX_COUNT_PER_TASK} artifacts.", field="name"
            )
        total = others.aggregate(total=Sum("size"))["total"] or 0
        if total + size > settings.TASK_ARTIFACT_MAX_BYTES_PER_TASK:
            raise ArtifactRefused(
                "too_large",
                f"The task's artifacts would exceed {settings.TASK_ARTIFACT_MAX_BYTES_PER_TASK} bytes "
                f"({total} already).",
                field="size",
            )
        existing = TaskArtifact.objects.filter(task_id=task_id, attempt=attempt, name=name).first()
        if existing is not None and existing.state == ArtifactState.AVAILABLE:
            raise ArtifactRefused("exists", f"This attempt already has an artifact named {name!r}.", status=409)
        artifact = existing or TaskArtifact(task_id=task_id, attempt=attempt, agent_id=agent_id, name=name)
        old_key = (existing.storage, existing.key) if existing is not None else None
        artifact.size, artifact.sha256 = size, sha256
        artifact.storage, artifact.key = backend.name, f"tasks/{task_id}/{secrets.token_hex(16)}"
        artifact.created_at = clock.now()
        artifact.save()
        if old_key is not None:  # a replaced upload's object, if it was ever sent
            transaction.on_commit(lambda: storage.backend(old_key[0]).delete([old_key[1]]))
    return artifact, backend.upload(artifact.key, size, sha256, base_url)


def complete_upload(agent_id: str, task_id: int, artifact_id: int) -> TaskArtifact:
    """Verify the stored object (size, then sha256 by reading it back) and list the artifact.

    A mismatch deletes the object and leaves the artifact pending (the agent may ask for a new
    URL under the same name); completing an available artifact again changes nothing.
    """
    task = _held_task(agent_id, task_id)
    artifact = TaskArtifact.objects.filter(pk=artifact_id, task_id=task_id).first()
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} of task {task_id} does not exist")
    if artifact.state == ArtifactState.AVAILABLE:
        return artifact
    if artifact.attempt != task.attempt:
        raise _stale(task, artifact.attempt)
    backend = storage.backend(artifact.storage)
    stored = backend.size(artifact.key)
    if stored is None:
        raise ArtifactRefused("not_uploaded", "Nothing was uploaded for this artifact (yet).", status=409)
    if stored != artifact.size:
        backend.delete([artifact.key])
        raise ArtifactRefused("size_mismatch", f"The store holds {stored} bytes, {artifact.size} were declared.")
    digest = hashlib.sha256()
    for chunk in backend.read(artifact.key):
        digest.update(chunk)
    if digest.hexdigest() != artifact.sha256:
        backend.delete([artifact.key])
        raise ArtifactRefused("checksum_mismatch", "The stored content's sha256 is not the declared one.")
    # Conditional: a request that replaced the row (a new key) meanwhile keeps it pending.
    TaskArtifact.objects.filter(pk=artifact.pk, key=artifact.key, state=ArtifactState.PENDING).update(
        state=ArtifactState.AVAILABLE, completed_at=clock.now()
    )
    artifact.refresh_from_db()
    return artifact


def download_url(task_id: int, artifact_id: int, base_url: str) -> str:
    """A time-limited URL of an available artifact's bytes (the store's pre-signed GET, or the web role's)."""
    artifact = TaskArtifact.objects.filter(pk=artifact_id, task_id=task_id, state=ArtifactState.AVAILABLE).first()
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} of task {task_id} does not exist or is not uploaded yet")
    return storage.backend(artifact.storage).download_url(artifact.key, artifact.name, base_url)


def delete_for_tasks(task_ids: Iterable[int]) -> int:
    """Delete the objects, then the rows, of these tasks' artifacts (retention); the number of rows deleted."""
    rows = list(TaskArtifact.objects.filter(task_id__in=list(task_ids)).values_list("id", "storage", "key"))
    keys: dict[str, list[str]] = defaultdict(list)
    for _, backend_name, key in rows:
        keys[backend_name].append(key)
    for backend_name, backend_keys in keys.items():
        storage.backend(backend_name).delete(backend_keys)
    deleted, _ = TaskArtifact.objects.filter(id__in=[row[0] for row in rows]).delete()
    return deleted
