from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broker.embedded import run


class Command(BaseCommand):
    help = "Run the embedded MQTT 3.1.1 broker (amqtt) of the all-in-one mode. Development only."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=18830)

    def handle(self, *args: Any, **options: Any) -> None:
        run(options["host"], options["port"])
