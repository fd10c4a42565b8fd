"""Backups of the configured database, verified restores and the disaster-recovery drill.

An archive is a tar file with two members: ``manifest.json`` (what was saved, from which
code, with which row counts and checksums) and ``data`` (the engine's dump, optionally
gzip-compressed, then optionally Fernet-encrypted). See docs/ops-backup.md.
"""


class BackupError(Exception):
    """A backup, a restore or a drill cannot go on; the message tells the operator why."""
