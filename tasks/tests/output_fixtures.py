"""What the task output tests share: storing chunks of the ``running`` fixture's task (tasks/tests/conftest.py)."""

from __future__ import annotations

from django.db import transaction

from aegis_site.core import clock
from tasks.engine.logs import Caps, Chunk, store_chunks
from tasks.models import Task

BIG = Caps(per_attempt=10**9, per_task=10**9)


def store(task: Task, *chunks: tuple[int, str, bytes], caps: Caps = BIG) -> None:
    """Store ``(seq, stream, data)`` chunks of the task's current attempt from a1, in one transaction."""
    with transaction.atomic():
        store_chunks(
            [Chunk("a1", task.pk, task.attempt, seq, stream, data) for seq, stream, data in chunks], clock.now(), caps
        )
