from argparse import BooleanOptionalAction
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops.backup import BackupError
from ops.backup.service import create_backup


class Command(BaseCommand):
    help = "Back up the configured database (pg_dump -Fc or SQLite's online backup) into one verified archive."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output",
            type=Path,
            help="Archive path (default: BACKUP_DIR/aegis-<engine>-<UTC time>.backup)",
        )
        parser.add_argument("--compress", action=BooleanOptionalAction, default=True, help="gzip the dump (default)")
        parser.add_argument("--encrypt", action="store_true", help="Fernet-encrypt with BACKUP_ENCRYPTION_KEY")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            path, manifest = create_backup(options["output"], options["compress"], options["encrypt"])
        except BackupError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(str(path))
        flags = [flag for flag, on in (("compressed", manifest.compressed), ("encrypted", manifest.encrypted)) if on]
        self.stdout.write(
            self.style.SUCCESS(
                f"{manifest.engine} database {manifest.database}: {len(manifest.row_counts)} tables, "
                f"{manifest.total_rows} rows, {path.stat().st_size} bytes{', ' if flags else ''}{', '.join(flags)}"
            )
        )
