"""The backup options: read from the environment in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet
from django.conf import settings

from ops.backup import BackupError


@dataclass(frozen=True)
class BackupConfig:
    directory: Path
    encryption_key: bytes | None


def backup_config() -> BackupConfig:
    """``BACKUP_DIR`` (default ``DATA_DIR/backups``) and the Fernet key from
    ``BACKUP_ENCRYPTION_KEY`` or the file named by ``BACKUP_ENCRYPTION_KEY_FILE``."""
    directory = Path(os.environ.get("BACKUP_DIR") or Path(settings.DATA_DIR) / "backups")
    key = os.environ.get("BACKUP_ENCRYPTION_KEY", "").strip()
    key_file = os.environ.get("BACKUP_ENCRYPTION_KEY_FILE", "").strip()
    if not key and key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as error:
            raise BackupError(f"BACKUP_ENCRYPTION_KEY_FILE cannot be read: {error}") from error
    if not key:
        return BackupConfig(directory, None)
    try:
        Fernet(key)
    except ValueError as error:
        raise BackupError(
            "BACKUP_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded bytes); generate one with: "
            'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        ) from error
    return BackupConfig(directory, key.encode())
