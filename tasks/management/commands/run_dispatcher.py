import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aegis_site.core.roles import RoleFailed, serve_role_metrics
from tasks.dispatcher import Dispatcher


class Command(BaseCommand):
    help = "Run the dispatcher: expire leases, mark silent agents offline, assign queued tasks. Stops on SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--poll-interval", type=float, default=None)
        parser.add_argument("--once", action="store_true", help="Run every step once and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        dispatcher = Dispatcher(options["batch_size"], options["poll_interval"])
        if options["once"]:
            dispatcher.step()
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: dispatcher.stop.set())
        serve_role_metrics()
        try:
            dispatcher.run()
        except RoleFailed as error:
            # Exit non-zero: compose, Kubernetes or run_all restarts a dispatcher that cannot do its job.
            raise CommandError(f"dispatcher exiting: {error}", returncode=1) from error
