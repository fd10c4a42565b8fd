import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broker.management.broker_dir import broker_layout
from registry.pki.agents import current_agent_certs
from registry.pki.authorities import CaState, ca_standing, known_cas, load_state
from registry.pki.expiry import CertReport, expiring, expiry_report
from registry.pki.layout import CaLayout


class Command(BaseCommand):
    help = "List the broker directory's certificates and CRL with days left; exit 1 if any expires within --days."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", type=Path, default=None, help="broker directory (default: settings.BROKER_DIR)")
        parser.add_argument("--days", type=int, default=30, help="warn about what expires within this many days")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument(
            "--by-ca",
            action="store_true",
            help="also list the agents by the CA of their newest unrevoked, unexpired certificate",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        layout = broker_layout(options["dir"], need_key=False)
        reports = expiry_report(layout)
        failing = expiring(reports, options["days"])
        state = load_state(layout)
        by_ca = self._agents_by_ca(layout, state)
        if options["json"]:
            document = {
                "ca_state": {"phase": state.phase, "signing": state.signing, "trusted": state.trusted},
                "threshold_days": options["days"],
                "certificates": [report.as_json() for report in reports],
                "agents_by_ca": by_ca,
                "expiring": [report.path for report in failing],
                "ok": not failing,
            }
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self._table(reports, failing)
            self.stdout.write(f"CA rotation phase: {state.phase} (signing {state.signing})")
            if options["by_ca"]:
                self._by_ca_table(by_ca)
            old = [
                agent for entry in by_ca.values() if entry["standing"] == "trusted (old)" for agent in entry["agents"]
            ]
            if old:
                self.stdout.write(
                    self.style.WARNING(
                        f"{len(old)} agent(s) still on the old CA (re-issue before --drop-old-ca): {', '.join(old)}"
                    )
                )
            if failing:
                self.stdout.write(
                    self.style.ERROR(f"{len(failing)} expire(s) within {options['days']} days or already expired.")
                )
            else:
                self.stdout.write(self.style.SUCCESS(f"Nothing expires within {options['days']} days."))
        if failing:
            raise SystemExit(1)

    def _agents_by_ca(self, layout: CaLayout, state: CaState) -> dict[str, dict[str, Any]]:
        """Every CA (trusted, or holding agents) with the agents whose newest usable certificate it issued."""
        cas = known_cas(layout)
        holdings = current_agent_certs(layout)
        listed = [*state.trusted, *sorted({holding.issuer for holding in holdings} - set(state.trusted))]
        return {
            identifier: {
                "subject": cas[identifier].subject.rfc4514_string() if identifier in cas else "(unknown CA)",
                "standing": ca_standing(state, identifier) if identifier else "not trusted",
                "agents": [holding.agent_id for holding in holdings if holding.issuer == identifier],
            }
            for identifier in listed
        }

    def _by_ca_table(self, by_ca: dict[str, dict[str, Any]]) -> None:
        self.stdout.write("")
        self.stdout.write("Agents by issuing CA (each agent's newest unrevoked, unexpired certificate):")
        self._write_rows(
            ("CA", "STANDING", "CA SUBJECT", "AGENTS"),
            [
                (identifier or "-", entry["standing"], entry["subject"], ", ".join(entry["agents"]) or "-")
                for identifier, entry in by_ca.items()
            ],
        )

    def _table(self, reports: list[CertReport], failing: list[CertReport]) -> None:
        header = ("ROLE", "SUBJECT CN", "SERIAL", "ISSUER CA", "NOT AFTER (UTC)", "DAYS", "STATUS")
        rows = [
            (
                report.role,
                report.common_name,
                report.serial[:16] + ("…" if len(report.serial) > 16 else ""),
                report.issuer or "-",
                report.not_after.strftime("%Y-%m-%d %H:%M"),
                str(report.days_left),
                ("EXPIRED" if report.days_left < 0 else "EXPIRING") if report in failing else report.status,
            )
            for report in reports
        ]
        self._write_rows(header, rows)

    def _write_rows(self, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
        widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
