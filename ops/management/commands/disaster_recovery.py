import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops.backup import BackupError
from ops.backup.drill import DrillReport, drill, verify
from ops.backup.service import resolve


class Command(BaseCommand):
    help = (
        "Disaster-recovery drill. --verify checks an archive (checksums, key, compatibility); --restore also "
        "restores it into a scratch database, compares it with the manifest, queries it, and drops it. "
        "Prints PASS or FAIL; exits 1 on FAIL. The live database is never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--verify", metavar="PATH", help="Archive path or 'latest'")
        mode.add_argument("--restore", metavar="PATH", help="Archive path or 'latest'")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            path = resolve(options["verify"] or options["restore"])
        except BackupError as error:
            raise CommandError(str(error)) from error
        report = verify(path)[0] if options["verify"] else drill(path)
        self._print(report)
        if not report.passed:
            sys.exit(1)

    def _print(self, report: DrillReport) -> None:
        self.stdout.write(f"Drill on {report.path}")
        for name, ok, detail in report.checks:
            self.stdout.write(f"  [{'ok' if ok else 'FAILED'}] {name}{': ' + detail if detail else ''}")
        self.stdout.write(self.style.SUCCESS("PASS") if report.passed else self.style.ERROR("FAIL"))
