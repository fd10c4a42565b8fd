from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks import retention


class Command(BaseCommand):
    help = (
        "Delete finished tasks (with their events), finished jobs, audit rows, sent outbox messages and "
        "notification events whose deliveries ended."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, help="age cutoff: 30d, 12h or 90m")
        parser.add_argument("--batch-size", type=int, default=retention.DEFAULT_BATCH_SIZE)
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            older_than = retention.parse_duration(options["older_than"])
            counts = retention.prune(
                older_than,
                batch_size=options["batch_size"],
                dry_run=options["dry_run"],
                progress=lambda what, count: self.stdout.write(f"  {what}: {count} deleted so far"),
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(
            f"{verb}: {counts.tasks} tasks, {counts.task_events} task events, "
            f"{counts.task_log_chunks} output chunks, {counts.jobs} jobs, "
            f"{counts.audit_events} audit events, {counts.outbox_messages} sent outbox messages"
            + "".join(f", {count} {what}" for what, count in counts.others.items())
        )
