import sys
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from ops.allinone import Supervisor, ensure_admin, restrict_data_files, role_commands


class Command(BaseCommand):
    help = (
        "Run every role (web, dispatcher, bridge, an embedded broker without MQTT_URL, a few simulated agents) "
        "in one command for a laptop or a demo; prints an admin login."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-migrate", action="store_true")
        parser.add_argument("--agents", type=int, default=3, help="Simulated agents to start (0: none).")

    def handle(self, *args: Any, **options: Any) -> None:
        restrict_data_files()  # before migrate writes a byte, and again on every start for older files
        if not options["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        username, password = ensure_admin()
        url = f"http://{options['host']}:{options['port']}/admin/"
        self.stdout.write(self.style.SUCCESS(f"Aegis Event Bus is starting: {url}"))
        if password:
            self.stdout.write(self.style.SUCCESS(f"Admin login: user {username!r}, password {password!r}"))
        else:
            self.stdout.write(f"Admin user {username!r} exists; reset its password with: manage.py changepassword")
        sys.stdout.flush()
        commands, env = role_commands(options["host"], options["port"], options["agents"])
        sys.exit(Supervisor(commands, env).run())
