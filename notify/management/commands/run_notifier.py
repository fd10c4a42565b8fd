import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aegis_site.core.roles import RoleFailed, serve_role_metrics
from notify.delivery import Notifier


class Command(BaseCommand):
    help = "Run the notifier: send due notifications (webhooks, Slack, e-mail), run the scans. Stops on SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=None, help="Default: NOTIFY_BATCH_SIZE")
        parser.add_argument("--poll-interval", type=float, default=None, help="Default: NOTIFY_POLL_INTERVAL_S")

    def handle(self, *args: Any, **options: Any) -> None:
        notifier = Notifier(options["poll_interval"], options["batch_size"])
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: notifier.stop.set())
        serve_role_metrics()
        try:
            notifier.run()
        except RoleFailed as error:
            # Exit non-zero: compose, Kubernetes or run_all restarts a notifier that cannot do its job.
            raise CommandError(f"notifier exiting: {error}", returncode=1) from error
