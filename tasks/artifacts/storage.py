"""Which backend holds artifacts, and what every backend offers (``s3`` and ``local`` implement it).

A row records the backend that holds its object (``TaskArtifact.storage``), so the server
finds older objects again after ``TASK_ARTIFACT_STORAGE`` changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Protocol

from django.conf import settings

READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """Where and how the agent sends the bytes: ``method`` to ``url`` with exactly these ``headers``."""

    url: str
    expires_at: datetime
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "PUT"


class Storage(Protocol):
    name: str

    def upload(self, key: str, size: int, sha256: str, base_url: str) -> Upload:
        """A time-limited URL for one PUT of exactly ``size`` bytes whose sha256 (hex) is ``sha256``."""

    def download_url(self, key: str, filename: str, base_url: str) -> str:
        """A time-limited URL that answers the object's bytes as an attachment called ``filename``."""

    def size(self, key: str) -> int | None:
        """The stored object's size; None when there is none."""

    def read(self, key: str) -> Iterator[bytes]:
        """The stored object's bytes, in chunks."""

    def delete(self, keys: list[str]) -> None:
        """Delete these objects; a missing one is no error."""


def current() -> Storage:
    """The backend new artifacts go to (``TASK_ARTIFACT_STORAGE``)."""
    return backend(settings.TASK_ARTIFACT_STORAGE)


@cache
def backend(name: str) -> Storage:
    """One instance per backend and process (the S3 client is thread-safe and costly to build)."""
    if name == "s3":
        from tasks.artifacts.s3 import S3Storage

        return S3Storage.from_settings()
    if name == "local":
        from tasks.artifacts.local import LocalStorage

        return LocalStorage(settings.TASK_ARTIFACT_LOCAL_DIR)
    raise ValueError(f"unknown artifact storage {name!r}")
