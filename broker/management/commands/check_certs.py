import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broker import certs
from broker.management.broker_dir import broker_layout


class Command(BaseCommand):
    help = "List the broker directory's certificates and CRL with days left; exit 1 if any expires within --days."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", type=Path, default=None, help="broker directory (default: settings.BROKER_DIR)")
        parser.add_argument("--days", type=int, default=30, help="warn about what expires within this many days")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        layout = broker_layout(options["dir"], need_key=False)
        reports = certs.expiry_report(layout)
        failing = certs.expiring(reports, options["days"])
        state = certs.load_state(layout)
        if options["json"]:
            document = {
                "ca_state": {"phase": state.phase, "signing": state.signing, "trusted": state.trusted},
                "threshold_days": options["days"],
                "certificates": [report.as_json() for report in reports],
                "expiring": [report.path for report in failing],
                "ok": not failing,
            }
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self._table(reports, failing)
            self.stdout.write(f"CA rotation phase: {state.phase} (signing {state.signing})")
            if failing:
                self.stdout.write(
                    self.style.ERROR(f"{len(failing)} expire(s) within {options['days']} days or already expired.")
                )
            else:
                self.stdout.write(self.style.SUCCESS(f"Nothing expires within {options['days']} days."))
        if failing:
            raise SystemExit(1)

    def _table(self, reports: list[certs.CertReport], failing: list[certs.CertReport]) -> None:
        header = ("ROLE", "SUBJECT CN", "SERIAL", "NOT AFTER (UTC)", "DAYS", "STATUS")
        rows = [
            (
                report.role,
                report.common_name,
                report.serial[:16] + ("…" if len(report.serial) > 16 else ""),
                report.not_after.strftime("%Y-%m-%d %H:%M"),
                str(report.days_left),
                ("EXPIRED" if report.days_left < 0 else "EXPIRING") if report in failing else report.status,
            )
            for report in reports
        ]
        widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
