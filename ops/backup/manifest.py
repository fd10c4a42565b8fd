"""The archive container: a tar of ``manifest.json`` and ``data``, and what the manifest records."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from ops.backup import BackupError

FORMAT_VERSION = 1
MANIFEST_MEMBER = "manifest.json"
DATA_MEMBER = "data"


@dataclass
class Manifest:
    format_version: int
    engine: str
    database: str
    django_version: str
    created_at: str
    migrations: dict[str, list[str]]
    row_counts: dict[str, int]
    data_sha256: str  # of the ``data`` member as stored (after compression and encryption)
    payload_sha256: str  # of the engine's dump itself, checked again after decrypting and decompressing
    compressed: bool
    encrypted: bool

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BackupError(f"the manifest is not valid JSON: {error}") from error
        if not isinstance(document, dict):
            raise BackupError("the manifest is not a JSON object")
        missing = sorted({field.name for field in fields(cls)} - set(document))
        if missing:
            raise BackupError(f"the manifest lacks {', '.join(missing)}")
        if document["format_version"] != FORMAT_VERSION:
            raise BackupError(
                f"archive format {document['format_version']!r} is not supported (this code reads {FORMAT_VERSION})"
            )
        return cls(**{field.name: document[field.name] for field in fields(cls)})

    @property
    def total_rows(self) -> int:
        return sum(self.row_counts.values())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_archive(path: Path, manifest: Manifest, data: bytes) -> None:
    """Written beside the target and renamed into place, so a crash never leaves half an archive.
    Owner-only permissions: the dump holds credential hashes and tokens."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream, tarfile.open(fileobj=stream, mode="w") as archive:
        for name, content in ((MANIFEST_MEMBER, manifest.to_json()), (DATA_MEMBER, data)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(content))
    os.replace(partial, path)


def read_archive(path: Path) -> tuple[Manifest, bytes]:
    """The manifest and the ``data`` member as stored, after checking the member's sha256."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            manifest = Manifest.from_json(_member(archive, MANIFEST_MEMBER))
            data = _member(archive, DATA_MEMBER)
    except (OSError, tarfile.TarError) as error:
        raise BackupError(f"{path} is not a readable backup archive: {error}") from error
    if sha256(data) != manifest.data_sha256:
        raise BackupError(f"{path}: the data does not match the manifest's sha256 (the archive is damaged or altered)")
    return manifest, data


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    try:
        stream = archive.extractfile(name)
    except KeyError:
        stream = None
    if stream is None:
        raise BackupError(f"the archive has no {name} member")
    return stream.read()
