import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aegis_site.core.roles import serve_role_metrics
from broker.bridge import Bridge


class Command(BaseCommand):
    help = "Run the MQTT bridge: agent messages into the database, outbox messages out to agents. Stops on SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default=None, help="Broker URL (default: MQTT_URL)")
        parser.add_argument("--client-id", default=None, help="MQTT client id (default: MQTT_CLIENT_ID)")

    def handle(self, *args: Any, **options: Any) -> None:
        serve_role_metrics()
        bridge = Bridge(options["url"], options["client_id"])
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: bridge.stop.set())
        if bridge.run():
            # Exit non-zero: compose, Kubernetes or run_all restarts a bridge that cannot do its job.
            raise CommandError("bridge exiting: a step kept failing (see the log above)", returncode=1)
