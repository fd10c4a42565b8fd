from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops.backup import BackupError
from ops.backup.service import resolve, restore


class Command(BaseCommand):
    help = (
        "Restore a backup archive: verify it, restore into a scratch database, check its row counts, "
        "swap it in atomically, then migrate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="Archive path, or 'latest' for the newest archive in BACKUP_DIR")
        parser.add_argument("--force", action="store_true", help="Replace a database that already holds rows")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            path: Path = resolve(options["path"])
            report = restore(path, options["force"])
        except BackupError as error:
            raise CommandError(str(error)) from error
        expected = report.manifest.row_counts
        self.stdout.write(f"Restored {path} ({report.manifest.engine}, made {report.manifest.created_at})")
        for table in sorted(set(expected) | set(report.row_counts)):
            before, after = expected.get(table, "-"), report.row_counts.get(table, "-")
            mark = "" if before == after else "  <- differs"
            self.stdout.write(f"  {table:40} manifest {before!s:>8}  restored {after!s:>8}{mark}")
        if report.migrated:
            self.stdout.write(f"Applied {len(report.migrated)} migration(s): {', '.join(report.migrated)}")
        if not report.ok:
            raise CommandError(
                "row counts after the restore differ from the manifest: " + "; ".join(report.differences)
            )
        self.stdout.write(self.style.SUCCESS("Restore complete."))
