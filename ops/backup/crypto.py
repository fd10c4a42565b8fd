"""Sealing the dump: gzip first (encrypted bytes do not compress), then Fernet (authenticated encryption)."""

from __future__ import annotations

import gzip

from cryptography.fernet import Fernet, InvalidToken

from ops.backup import BackupError
from ops.backup.manifest import Manifest, sha256


def seal(payload: bytes, compress: bool, key: bytes | None) -> bytes:
    data = gzip.compress(payload, compresslevel=6, mtime=0) if compress else payload
    return Fernet(key).encrypt(data) if key else data


def unseal(data: bytes, manifest: Manifest, key: bytes | None) -> bytes:
    """The engine's dump, or a BackupError saying which step failed."""
    if manifest.encrypted:
        if key is None:
            raise BackupError(
                "the archive is encrypted: set BACKUP_ENCRYPTION_KEY (or BACKUP_ENCRYPTION_KEY_FILE) to the key used"
            )
        try:
            data = Fernet(key).decrypt(data)
        except InvalidToken as error:
            raise BackupError("cannot decrypt the archive: wrong BACKUP_ENCRYPTION_KEY (or altered data)") from error
    if manifest.compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise BackupError(f"cannot decompress the archive's data: {error}") from error
    if sha256(data) != manifest.payload_sha256:
        raise BackupError("the decoded dump does not match the manifest's payload sha256")
    return data
