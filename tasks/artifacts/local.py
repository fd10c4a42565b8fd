"""Artifacts in a local directory (the all-in-one's default), uploaded and downloaded through the web role.

The URLs it hands out carry a token signed with the site's ``SECRET_KEY`` (``django.core.signing``)
that names the object, the operation and, for an upload, the declared size and sha256; it works for
``TASK_ARTIFACT_URL_TTL`` seconds. The web role checks the token, writes the bytes to a temporary
file while hashing them, and keeps the file only when size and sha256 are the declared ones.
Several web replicas must share the directory (a volume); otherwise use the ``s3`` backend.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.core import signing
from django.urls import reverse

from aegis_site.core import clock
from tasks.artifacts.errors import ArtifactRefused
from tasks.artifacts.storage import READ_CHUNK_BYTES, Upload

SALT = "aegis.tasks.artifacts.local"


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: ``op`` (put or get) on ``key``; an upload's size and sha256, a download's name."""

    op: str
    key: str
    size: int = 0
    sha256: str = ""
    filename: str = ""


def sign(grant: Grant) -> str:
    payload = {"op": grant.op, "k": grant.key, "s": grant.size, "h": grant.sha256, "n": grant.filename}
    return signing.dumps(payload, salt=SALT, compress=True)


def verify(token: str, op: str) -> Grant:
    """The grant a token carries, if it is genuine, unexpired and for ``op``; a 403 refusal otherwise."""
    try:
        payload: dict[str, Any] = signing.loads(token, salt=SALT, max_age=settings.TASK_ARTIFACT_URL_TTL)
    except signing.SignatureExpired as expired:
        raise ArtifactRefused(
            "url_expired", "This artifact URL has expired; ask for a new one.", status=403
        ) from expired
    except signing.BadSignature as bad:
        raise ArtifactRefused("invalid_url", "This artifact URL is not valid.", status=403) from bad
    if payload.get("op") != op:
        raise ArtifactRefused("invalid_url", f"This artifact URL is not for {op}.", status=403)
    return Grant(op=op, key=payload["k"], size=payload["s"], sha256=payload["h"], filename=payload["n"])


@dataclass
class LocalStorage:
    root: Path
    name: str = "local"

    def path(self, key: str) -> Path:
        # Keys are the server's own (tasks/<id>/<random hex>), never an agent's name.
        return self.root / key

    def _url(self, base_url: str, grant: Grant) -> str:
        return base_url + reverse("v1-tasks:artifact-local", kwargs={"token": sign(grant)})

    def upload(self, key: str, size: int, sha256: str, base_url: str) -> Upload:
        url = self._url(base_url, Grant(op="put", key=key, size=size, sha256=sha256))
        expires_at = clock.now() + timedelta(seconds=settings.TASK_ARTIFACT_URL_TTL)
        return Upload(url=url, expires_at=expires_at, headers={"Content-Type": "application/octet-stream"})

    def download_url(self, key: str, filename: str, base_url: str) -> str:
        return self._url(base_url, Grant(op="get", key=key, filename=filename))

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, key: str) -> Iterator[bytes]:
        with self.path(key).open("rb") as stored:
            while chunk := stored.read(READ_CHUNK_BYTES):
                yield chunk

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def receive(self, grant: Grant, body: Readable) -> None:
        """Store an upload's bytes under the grant's key if they are exactly what was declared; refuse otherwise."""
        target = self.path(grant.key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.part-{secrets.token_hex(4)}")
        digest = hashlib.sha256()
        received = 0
        try:
            with partial.open("wb") as out:
                while chunk := body.read(READ_CHUNK_BYTES):
                    received += len(chunk)
                    if received > grant.size:
                        raise ArtifactRefused("size_mismatch", f"More than the declared {grant.size} bytes.")
                    digest.update(chunk)
                    out.write(chunk)
            if received != grant.size:
                raise ArtifactRefused("size_mismatch", f"Received {received} bytes, declared {grant.size}.")
            if digest.hexdigest() != grant.sha256:
                raise ArtifactRefused("checksum_mismatch", "The content's sha256 is not the declared one.")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
